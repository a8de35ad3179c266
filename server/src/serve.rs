//! Serving the client port: gRPC by content type beside the JSON gateway and the
//! observability routes on one listener (HTTP/1.1 and HTTP/2, TLS or not), with RPC
//! metrics and etcd's require-leader interceptor; and the metrics-only port.

use crate::gateway::observe::Observed;
use crate::grpc::{requires_leader, Ctx, Services};
use crate::metrics::{Metrics, RpcId};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// tonic refuses a message over the receive limit with OUT_OF_RANGE; grpc-go, and so
/// etcd, with RESOURCE_EXHAUSTED "grpc: received message larger than max". Clients
/// match on the code, so answer as etcd does.
fn grpc_go_size_error<B>(mut resp: tonic::codegen::http::Response<B>) -> tonic::codegen::http::Response<B> {
    use tonic::codegen::http::HeaderValue;
    let h = resp.headers_mut();
    let too_large = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| m.replace("%20", " ").starts_with("Error, decoded message length too large"));
    if too_large {
        h.insert("grpc-status", HeaderValue::from_static("8"));
        h.insert("grpc-message", HeaderValue::from_static("grpc:%20received%20message%20larger%20than%20max"));
    }
    resp
}

type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
type HttpResponse = tonic::codegen::http::Response<axum::body::Body>;

/// Call `grpc` with `req`, recording the RPC's start, bytes, end and gRPC code (from the
/// trailers, or from the headers of a trailers-only error; a call dropped mid-way counts
/// as Canceled).
async fn count_rpc(m: Arc<Metrics>, grpc: axum::Router, req: HttpRequest) -> HttpResponse {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut parts = req.uri().path().trim_start_matches('/').splitn(2, '/');
    let id = m.rpc(parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let Some(id) = id else {
        return grpc.oneshot(req).await.unwrap_or_else(|never| match never {});
    };
    let mut done = Handled { m: m.clone(), id, start: std::time::Instant::now(), finished: false };
    m.rpc_started(id);
    let received = m;
    let req = req.map(|b| {
        b.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                received.received_bytes.inc_by(d.len() as u64);
            }
            f
        })
    });
    let resp = grpc.oneshot(req).await.unwrap_or_else(|never| match never {});
    if let Some(code) = grpc_code(resp.headers()) {
        done.finish(code);
        return resp;
    }
    resp.map(|b| {
        axum::body::Body::new(b.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                done.m.sent_bytes.inc_by(d.len() as u64);
            } else if let Some(t) = f.trailers_ref() {
                done.finish(grpc_code(t).unwrap_or(tonic::Code::Unknown));
            }
            f
        }))
    })
}

fn grpc_code(h: &tonic::codegen::http::HeaderMap) -> Option<tonic::Code> {
    let v = h.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(v))
}

/// Records an RPC as handled once: at its end, or as Canceled if dropped before.
struct Handled {
    m: Arc<Metrics>,
    id: RpcId,
    start: std::time::Instant,
    finished: bool,
}

impl Handled {
    fn finish(&mut self, code: tonic::Code) {
        if !std::mem::replace(&mut self.finished, true) {
            self.m.rpc_handled(self.id, code, self.start.elapsed());
        }
    }
}

impl Drop for Handled {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

fn is_grpc<B>(req: &tonic::codegen::http::Request<B>) -> bool {
    req.headers()
        .get(tonic::codegen::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// How a port is served: HTTP/2 limits and when to stop.
#[derive(Clone)]
pub struct Serving {
    /// HTTP/2 and keepalive limits.
    pub http2: crate::tls::Http2Limits,
    /// Cancelled when the member stops.
    pub shutdown: CancellationToken,
}

/// Serve `svc` (HTTP/1.1 and HTTP/2) on `listener` until the member shuts down.
async fn serve_http<S, F>(
    serving: &Serving,
    what: &str,
    svc: S,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) where
    S: tower::Service<HttpRequest, Response = HttpResponse, Error = std::convert::Infallible, Future = F>
        + Clone
        + Send
        + 'static,
    F: std::future::Future<Output = Result<HttpResponse, std::convert::Infallible>> + Send + 'static,
{
    let token = serving.shutdown.clone();
    let limits = serving.http2;
    let builder = crate::tls::server_builder(limits)
        .accept_http1(true)
        .layer(tower::util::MapResponseLayer::new(grpc_go_size_error));
    let res = match tls {
        Some(tls) => {
            let incoming = crate::conn::tls(listener, tls, limits.keepalive_min_time);
            builder.serve_with_incoming_shutdown(svc, incoming, token.cancelled_owned()).await
        }
        None => {
            let incoming = crate::conn::plain(listener, limits.keepalive_min_time);
            builder.serve_with_incoming_shutdown(svc, incoming, token.cancelled_owned()).await
        }
    };
    if let Err(e) = res {
        tracing::error!("{what} server: {e}");
    }
}

/// What a client port serves (`--listen-client-http-urls` splits gRPC from HTTP, as etcd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTraffic {
    /// gRPC and the HTTP routes (the default).
    All,
    /// gRPC only (a client URL when HTTP-only URLs are given).
    Grpc,
    /// The JSON gateway and observability routes only (an HTTP-only URL).
    Http,
}

/// Serve the client port on `listener` until the member shuts down: gRPC (by its
/// content type) and, for everything else, the JSON gateway and observability routes —
/// or one of the two (`traffic`).
pub async fn client_port(
    ctx: Ctx,
    observed: Observed,
    serving: Serving,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    access: crate::gateway::access::Access,
    traffic: ClientTraffic,
) {
    use tower::ServiceExt;
    let services = Services::new(&ctx);
    let grpc = services.grpc_router(ctx.limits.max_request_bytes);
    let metrics = observed.metrics.clone();
    let gateway = crate::gateway::Gateway {
        body_limit: 2 * ctx.limits.max_request_bytes + 512 * 1024,
        metrics: metrics.clone(),
        shutdown: ctx.shutdown.clone(),
    };
    let http = crate::gateway::router(gateway, &services, observed, access);
    let replica = ctx.replica.clone();
    let by_content_type = tower::service_fn(move |req: HttpRequest| {
        let (grpc, http, metrics, replica) = (grpc.clone(), http.clone(), metrics.clone(), replica.clone());
        async move {
            match (is_grpc(&req), traffic) {
                (true, ClientTraffic::Http) => {
                    let why = "this URL serves HTTP only (--listen-client-http-urls); gRPC is on --listen-client-urls";
                    Ok(tonic::Status::unimplemented(why).into_http::<axum::body::Body>())
                }
                // A request that requires a leader is refused at once by a member without
                // one (etcd's interceptors), unary or stream.
                (true, _) if requires_leader(req.headers()) && replica.leader().is_none() => {
                    Ok(tonic::Status::unavailable(crate::error::msg::NO_LEADER).into_http::<axum::body::Body>())
                }
                (true, _) => Ok(count_rpc(metrics, grpc, req).await),
                (false, ClientTraffic::Grpc) => Ok(crate::gateway::not_found().await),
                (false, _) => http.oneshot(req).await,
            }
        }
    });
    serve_http(&serving, "client", by_content_type, listener, tls).await;
}

/// Serve only the observability endpoints (`--listen-metrics-urls`).
pub async fn metrics_port(observed: Observed, serving: Serving, listener: TcpListener) {
    let router = crate::gateway::observe::router(observed).fallback(crate::gateway::not_found);
    serve_http(&serving, "metrics", router, listener, None).await;
}
