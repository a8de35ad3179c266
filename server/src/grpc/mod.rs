//! The client port: one file per etcd service. Handlers validate requests (etcd's
//! checks and messages), send writes through [`Node::propose`] and read the store after
//! [`Node::read_barrier`] (linearizable) or directly (serializable).
//!
//! Lock and Election are built on the KV, Lease and Watch handlers through [`local`], as
//! etcd builds them on its in-process client. Every handler identifies its caller
//! ([`Node::identify`]) and, with auth on, checks the caller's permissions.

pub mod auth;
pub mod cluster;
pub mod election;
pub mod kv;
pub mod lease;
pub mod local;
pub mod lock;
pub mod maintenance;
pub mod validate;
pub mod watch;

use crate::metrics::{Metrics, RpcId};
use crate::node::Node;
use cairn_api::etcdserverpb::auth_server::AuthServer;
use cairn_api::etcdserverpb::cluster_server::ClusterServer;
use cairn_api::etcdserverpb::kv_server::KvServer;
use cairn_api::etcdserverpb::lease_server::LeaseServer;
use cairn_api::etcdserverpb::maintenance_server::MaintenanceServer;
use cairn_api::etcdserverpb::watch_server::WatchServer;
use cairn_api::v3electionpb::election_server::ElectionServer;
use cairn_api::v3lockpb::lock_server::LockServer;
use std::sync::Arc;
use tokio::net::TcpListener;

/// gRPC's own framing overhead on top of the largest request (etcd allows 512 KiB).
const GRPC_OVERHEAD: usize = 512 * 1024;

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

/// One member's handlers, shared by the gRPC server and the JSON gateway.
pub struct Services {
    /// KV.
    pub kv: Arc<kv::KvService>,
    /// Watch.
    pub watch: Arc<watch::WatchService>,
    /// Lease.
    pub lease: Arc<lease::LeaseService>,
    /// Cluster.
    pub cluster: Arc<cluster::ClusterService>,
    /// Maintenance.
    pub maintenance: Arc<maintenance::MaintenanceService>,
    /// Auth.
    pub auth: Arc<auth::AuthService>,
    /// Lock.
    pub lock: Arc<lock::LockService>,
    /// Election.
    pub election: Arc<election::ElectionService>,
}

impl Services {
    /// Every handler of `node`.
    pub fn new(node: &Arc<Node>) -> Services {
        Services {
            kv: Arc::new(kv::KvService::new(node.clone())),
            watch: Arc::new(watch::WatchService::new(node.clone())),
            lease: Arc::new(lease::LeaseService::new(node.clone())),
            cluster: Arc::new(cluster::ClusterService::new(node.clone())),
            maintenance: Arc::new(maintenance::MaintenanceService::new(node.clone())),
            auth: Arc::new(auth::AuthService::new(node.clone())),
            lock: Arc::new(lock::LockService::new(node.clone())),
            election: Arc::new(election::ElectionService::new(node.clone())),
        }
    }
}

/// The gRPC services of `node` as a router.
fn grpc_router(node: &Arc<Node>, s: &Services) -> axum::Router {
    let max = node.config.max_request_bytes + GRPC_OVERHEAD;
    macro_rules! limits {
        ($svc:expr) => {
            $svc.max_decoding_message_size(max).max_encoding_message_size(usize::MAX)
        };
    }
    tonic::service::Routes::new(limits!(KvServer::from_arc(s.kv.clone())))
        .add_service(limits!(MaintenanceServer::from_arc(s.maintenance.clone())))
        .add_service(limits!(ClusterServer::from_arc(s.cluster.clone())))
        .add_service(limits!(WatchServer::from_arc(s.watch.clone())))
        .add_service(limits!(LeaseServer::from_arc(s.lease.clone())))
        .add_service(limits!(AuthServer::from_arc(s.auth.clone())))
        .add_service(limits!(LockServer::from_arc(s.lock.clone())))
        .add_service(limits!(ElectionServer::from_arc(s.election.clone())))
        .prepare()
        .into_axum_router()
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

/// The gRPC metadata a client sets to require a leader (clientv3's `WithRequireLeader`;
/// etcdctl's watch sets it).
const REQUIRE_LEADER: &str = "hasleader";

/// Whether `headers` (a request's gRPC metadata) require a leader.
pub fn requires_leader(headers: &tonic::codegen::http::HeaderMap) -> bool {
    headers.get(REQUIRE_LEADER).is_some_and(|v| v.as_bytes() == b"true")
}

/// Resolves once this member has had no leader for three election timeouts in a row (as
/// etcd's monitorLeader): a stream that requires a leader then ends with `etcdserver: no
/// leader`, so its client moves to a member that has one instead of going quiet.
pub async fn leader_lost(node: &Node) {
    let mut tick = tokio::time::interval(node.config.election_timeout);
    let mut missing = 0;
    loop {
        tick.tick().await;
        missing = if node.leader().is_none() { missing + 1 } else { 0 };
        if missing >= 3 {
            return;
        }
    }
}

fn is_grpc<B>(req: &tonic::codegen::http::Request<B>) -> bool {
    req.headers()
        .get(tonic::codegen::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Serve `svc` (HTTP/1.1 and HTTP/2) on `listener` until the member shuts down.
async fn serve_http<S, F>(
    node: &Node,
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
    let token = node.shutdown.clone();
    let limits = node.config.http2;
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

/// Serve the client port on `listener` until the member shuts down: gRPC (by its
/// content type) and, for everything else, the JSON gateway and observability routes.
pub async fn serve(node: Arc<Node>, listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) {
    use tower::ServiceExt;
    let services = Services::new(&node);
    let grpc = grpc_router(&node, &services);
    let http = crate::gateway::router(node.clone(), &services);
    let metrics = node.metrics.clone();
    let member = node.clone();
    let by_content_type = tower::service_fn(move |req: HttpRequest| {
        let (grpc, http, metrics, node) = (grpc.clone(), http.clone(), metrics.clone(), member.clone());
        async move {
            if is_grpc(&req) {
                // A request that requires a leader is refused at once by a member without
                // one (etcd's interceptors), unary or stream.
                if requires_leader(req.headers()) && node.leader().is_none() {
                    return Ok(tonic::Status::unavailable(crate::error::msg::NO_LEADER).into_http::<axum::body::Body>());
                }
                Ok(count_rpc(metrics, grpc, req).await)
            } else {
                http.oneshot(req).await
            }
        }
    });
    serve_http(&node, "client", by_content_type, listener, tls).await;
}

/// Serve only the observability endpoints (`--listen-metrics-urls`).
pub async fn serve_metrics(node: Arc<Node>, listener: TcpListener) {
    let router = crate::gateway::observe::router(node.clone()).fallback(crate::gateway::not_found);
    serve_http(&node, "metrics", router, listener, None).await;
}
