//! `cairn grpc-proxy start`: etcd's gRPC proxy, for running on every machine that has
//! clients, so they talk to localhost and the cluster sees one proxy instead of every
//! process. Every etcd v3 service is served; watches on the same range are coalesced into
//! one upstream watch ([`watch`]), the rest is passed through ([`forward`]) over one
//! balanced channel to the cluster ([`upstream`]), with the caller's token.
//!
//! The proxy is its own role of the `cairn` binary: it uses only the foundations
//! (`logging`, `tls`, `conn`) and nothing of a member.

mod cache;
mod forward;
mod lease;
pub mod mode;
mod namespace;
mod read_only;
mod upstream;
mod watch;

use clap::Parser;
use prometheus::{IntCounter, IntGauge, Registry};
use std::sync::Arc;
use std::time::Duration;

/// `cairn grpc-proxy start` flags: etcd's names and defaults.
#[derive(Debug, Parser)]
#[command(name = "cairn grpc-proxy start", about = "Serve etcd's gRPC API in front of a cluster, coalescing watches")]
pub struct Flags {
    /// Comma-separated client URLs of the cluster's members (`host:port` or URLs).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub endpoints: String,
    /// Where the proxy serves gRPC, the JSON-free HTTP endpoints `/health` and `/metrics`.
    #[arg(long, default_value = "127.0.0.1:23790")]
    pub listen_addr: String,
    /// A second address serving only `/health` and `/metrics`.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Largest request the proxy accepts from a client (bytes).
    #[arg(long, default_value_t = 1536 * 1024)]
    pub max_recv_bytes: usize,
    /// Largest response the proxy sends to a client (bytes; etcd's default: unlimited).
    #[arg(long, default_value_t = usize::MAX)]
    pub max_send_bytes: usize,
    /// How long dialing a member may take.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub dial_timeout: Duration,
    /// Log level: debug, info, warn, error.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// A key prefix the clients see as the whole key space (etcd's `--namespace`).
    #[arg(long, default_value = "")]
    pub namespace: String,
    /// CA bundle the members' certificates must chain to (TLS to the cluster; endpoints
    /// without a scheme become https://).
    #[arg(long)]
    pub cacert: Option<std::path::PathBuf>,
    /// Certificate the proxy presents to the members.
    #[arg(long, requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// Its private key.
    #[arg(long, requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// Certificate the proxy serves its clients with (TLS on --listen-addr).
    #[arg(long, requires = "key_file")]
    pub cert_file: Option<std::path::PathBuf>,
    /// Its private key.
    #[arg(long, requires = "cert_file")]
    pub key_file: Option<std::path::PathBuf>,
    /// CA bundle client certificates must chain to (then every client needs one).
    #[arg(long, requires = "cert_file")]
    pub trusted_ca_file: Option<std::path::PathBuf>,
    /// Refuse every request that would change something (`cairn --proxy=readonly`).
    #[arg(skip)]
    pub read_only: bool,
}

/// A PEM file named by the flag that gave it (for errors).
type FlagFile<'a> = (&'a str, &'a std::path::Path);

/// TLS towards other servers: the CA bundle to trust and the certificate and key to present,
/// read from PEM files (an unreadable one is an error naming its flag).
fn client_tls(
    ca: Option<FlagFile>,
    identity: Option<(FlagFile, FlagFile)>,
) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |(flag, p): FlagFile| std::fs::read(p).map_err(|e| anyhow::anyhow!("--{flag} {}: {e}", p.display()));
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}

impl Flags {
    /// TLS towards the cluster, if asked for.
    fn upstream_tls(&self) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
        if self.cacert.is_none() && self.cert.is_none() {
            return Ok(None);
        }
        let ca = self.cacert.as_deref().map(|p| ("cacert", p));
        let identity = self.cert.as_deref().zip(self.key.as_deref()).map(|(c, k)| (("cert", c), ("key", k)));
        client_tls(ca, identity).map(Some)
    }

    /// TLS towards the clients, if asked for.
    fn client_tls(&self) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
        if self.cert_file.is_none() {
            return Ok(None);
        }
        let files = crate::tls::TlsFiles {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            trusted_ca: self.trusted_ca_file.clone(),
            client_cert_auth: self.trusted_ca_file.is_some(),
            policy: crate::tls::Policy::parse("", "", "").map_err(anyhow::Error::msg)?,
            ..Default::default()
        };
        Ok(Some(files.server("").map_err(anyhow::Error::msg)?))
    }
}

/// The proxy's own series (beside the process metrics).
#[derive(Clone)]
pub(crate) struct ProxyMetrics {
    registry: Registry,
    /// Watch streams open to the cluster (one per coalesced range).
    upstream_watch_streams: IntGauge,
    /// Client watchers served.
    client_watchers: IntGauge,
    /// Client watchers that joined an upstream watch someone else opened.
    coalesced_total: IntCounter,
    /// Upstream watch streams re-opened after they broke.
    upstream_rewatches_total: IntCounter,
    /// Client watchers moved to their own upstream watch because their client was slow.
    slow_watchers_moved_total: IntCounter,
    /// Client keepalives sent on to the cluster.
    keepalives_forwarded_total: IntCounter,
    /// Client keepalives answered from the cluster's last answer.
    keepalives_answered_total: IntCounter,
    /// Keepalive streams open to the cluster (one per caller credentials).
    upstream_keepalive_streams: IntGauge,
    /// Serializable ranges answered from the cache, and not.
    range_cache_hits_total: IntCounter,
    range_cache_misses_total: IntCounter,
    /// The newest revision the cache's watch has seen.
    range_cache_revision: IntGauge,
}

impl ProxyMetrics {
    fn new() -> Result<ProxyMetrics, prometheus::Error> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let m = ProxyMetrics {
            upstream_watch_streams: gauge(
                "cairn_proxy_upstream_watch_streams",
                "Watch streams the proxy holds open to the cluster (one per coalesced key range).",
            )?,
            client_watchers: gauge(
                "etcd_grpc_proxy_watchers_coalescing_total",
                "Client watchers served by the proxy.",
            )?,
            coalesced_total: counter(
                "cairn_proxy_watchers_coalesced_total",
                "Client watchers that joined an upstream watch already open for the same range.",
            )?,
            upstream_rewatches_total: counter(
                "cairn_proxy_upstream_rewatches_total",
                "Upstream watches re-opened after their stream or member failed.",
            )?,
            slow_watchers_moved_total: counter(
                "cairn_proxy_slow_watchers_moved_total",
                "Client watchers moved to an upstream watch of their own because their client did not keep up.",
            )?,
            keepalives_forwarded_total: counter(
                "cairn_proxy_keepalives_forwarded_total",
                "Lease keepalives the proxy sent on to the cluster.",
            )?,
            keepalives_answered_total: counter(
                "cairn_proxy_keepalives_answered_total",
                "Lease keepalives the proxy answered without a keepalive of their own to the cluster.",
            )?,
            upstream_keepalive_streams: gauge(
                "cairn_proxy_upstream_keepalive_streams",
                "Lease keepalive streams the proxy holds open to the cluster.",
            )?,
            range_cache_hits_total: counter(
                "cairn_proxy_range_cache_hits_total",
                "Serializable ranges the proxy answered from its cache.",
            )?,
            range_cache_misses_total: counter(
                "cairn_proxy_range_cache_misses_total",
                "Serializable ranges the proxy's cache could not answer.",
            )?,
            range_cache_revision: gauge(
                "cairn_proxy_range_cache_revision",
                "The newest revision the range cache's watch has seen (no cached answer is older).",
            )?,
            registry,
        };
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(m)
    }

    fn text(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Run `cairn grpc-proxy <args>` until SIGINT/SIGTERM (`args` after `grpc-proxy`).
pub async fn main(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    let mut args = args.into_iter();
    match args.next().and_then(|a| a.into_string().ok()).as_deref() {
        Some("start") => {}
        other => {
            let what = other.map_or("nothing".to_string(), |o| format!("{o:?}"));
            anyhow::bail!("cairn grpc-proxy: expected `start`, got {what} (cairn grpc-proxy start --help)")
        }
    }
    let flags = Flags::parse_from(std::iter::once("cairn grpc-proxy start".into()).chain(args));
    crate::logging::init(&flags.log_level, false, &[crate::logging::Output::Stderr]).map_err(anyhow::Error::msg)?;
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
        signal.cancel();
    });
    serve(flags, stop).await
}

/// Serve the proxy as `flags` say until `stop`.
pub async fn serve(flags: Flags, stop: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    let metrics = ProxyMetrics::new()?;
    let upstream = Arc::new(upstream::Upstream::new(&flags.endpoints, flags.dial_timeout, flags.upstream_tls()?)?);
    let client_tls = flags.client_tls()?;
    let listener = tokio::net::TcpListener::bind(addr(&flags.listen_addr)).await?;
    tracing::info!(
        listen = %listener.local_addr()?,
        endpoints = %upstream.endpoints().join(","),
        "grpc-proxy serving etcd's v3 API; watches on the same range share one upstream watch"
    );
    let grpc = forward::routes(
        &upstream,
        namespace::Namespace::new(&flags.namespace),
        &metrics,
        flags.max_recv_bytes,
        flags.max_send_bytes,
        flags.read_only,
        &stop,
    );
    let http = observe(metrics.clone(), upstream.clone());
    let mut app = grpc.merge(http.clone()).fallback(http_to_cluster(upstream.clone(), !flags.namespace.is_empty()));
    if flags.read_only {
        app = app.layer(axum::middleware::from_fn(read_only::refuse_writes));
    }
    if let Some(m) = &flags.metrics_addr {
        let l = tokio::net::TcpListener::bind(addr(m)).await?;
        let stop = stop.clone();
        tokio::spawn(async move {
            let incoming = crate::conn::plain(l, Duration::from_secs(5));
            let mut server = crate::tls::server_builder(LIMITS).accept_http1(true);
            let routes = tonic::service::Routes::from(http);
            if let Err(e) =
                server.add_routes(routes).serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await
            {
                tracing::error!("metrics server: {e}");
            }
        });
    }
    let mut server = crate::tls::server_builder(LIMITS).accept_http1(true);
    let routes = tonic::service::Routes::from(app);
    let min_time = LIMITS.keepalive_min_time;
    match client_tls {
        Some(tls) => {
            let incoming = crate::conn::tls(listener, tls, min_time);
            server.add_routes(routes).serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await?;
        }
        None => {
            let incoming = crate::conn::plain(listener, min_time);
            server.add_routes(routes).serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await?;
        }
    }
    Ok(())
}

/// etcd's HTTP/2 defaults for the proxy's listeners.
const LIMITS: crate::tls::Http2Limits = crate::tls::Http2Limits {
    max_concurrent_streams: u32::MAX,
    keepalive_interval: Duration::from_secs(2 * 60 * 60),
    keepalive_timeout: Duration::from_secs(20),
    keepalive_min_time: Duration::from_secs(5),
};

/// `host:port`, with or without a URL scheme.
fn addr(s: &str) -> String {
    s.split_once("://").map_or(s, |(_, rest)| rest).trim_end_matches('/').to_string()
}

/// Every other HTTP request (etcd's JSON gateway `/v3/...`, the keys API `/kv/...`, the
/// console) goes to a member over the balanced channel, streamed both ways, so curl and
/// HTTP-only clients work through the proxy too. Not under `--namespace`: those routes
/// would see the whole key space, so they are refused.
fn http_to_cluster(up: Arc<upstream::Upstream>, namespaced: bool) -> axum::routing::MethodRouter {
    use tower::ServiceExt;
    axum::routing::any(move |req: axum::extract::Request| {
        let channel = up.channel();
        async move {
            if namespaced {
                let why = r#"{"error":"this proxy has a --namespace; its HTTP routes would not be namespaced: use gRPC","code":12}"#;
                let mut r = axum::response::Response::new(axum::body::Body::from(why));
                *r.status_mut() = axum::http::StatusCode::NOT_IMPLEMENTED;
                return r;
            }
            let (parts, body) = req.into_parts();
            let req = axum::http::Request::from_parts(parts, tonic::body::Body::new(body));
            match channel.oneshot(req).await {
                Ok(resp) => resp.map(axum::body::Body::new),
                Err(e) => {
                    let body = serde_json::json!({"error": format!("no member answered: {e}"), "code": 14}).to_string();
                    let mut r = axum::response::Response::new(axum::body::Body::from(body));
                    *r.status_mut() = axum::http::StatusCode::BAD_GATEWAY;
                    r
                }
            }
        }
    })
}

/// `/health` (healthy when a member answers a serializable read) and `/metrics`.
fn observe(metrics: ProxyMetrics, upstream: Arc<upstream::Upstream>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.text() }
            }),
        )
        .route(
            "/health",
            get(move || {
                let u = upstream.clone();
                async move {
                    let (status, body) = match u.health().await {
                        Ok(()) => (axum::http::StatusCode::OK, r#"{"health":"true","reason":""}"#.to_string()),
                        Err(why) => (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            serde_json::json!({"health": "false", "reason": why}).to_string(),
                        ),
                    };
                    (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body)
                }
            }),
        )
}
