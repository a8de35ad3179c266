//! The client port: one file per etcd service. Handlers validate requests (etcd's
//! checks and messages), send writes through [`Node::propose`] and read the store after
//! [`Node::read_barrier`] (linearizable) or directly (serializable).
//!
//! Lock and Election are built on the KV, Lease and Watch handlers through [`local`], as
//! etcd builds them on its in-process client. Auth, which a later issue implements,
//! answers UNIMPLEMENTED until then.

pub mod cluster;
pub mod election;
pub mod kv;
pub mod lease;
pub mod local;
pub mod lock;
pub mod maintenance;
pub mod validate;
pub mod watch;

use crate::node::Node;
use cairn_api::etcdserverpb::auth_server::{Auth, AuthServer};
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

/// Services not implemented yet: every RPC answers UNIMPLEMENTED.
pub struct NotYet;
impl Auth for NotYet {}

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

/// Accepted connections with Nagle's algorithm off: small gRPC frames must not wait for
/// a delayed ACK (that costs 40 ms a request on Linux).
pub fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serve the client port on `listener` until the member shuts down.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let max = node.config.max_request_bytes + GRPC_OVERHEAD;
    let token = node.shutdown.clone();
    macro_rules! limits {
        ($svc:expr) => {
            $svc.max_decoding_message_size(max).max_encoding_message_size(usize::MAX)
        };
    }
    let res = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(grpc_go_size_error))
        .add_service(limits!(KvServer::new(kv::KvService::new(node.clone()))))
        .add_service(limits!(MaintenanceServer::new(maintenance::MaintenanceService::new(node.clone()))))
        .add_service(limits!(ClusterServer::new(cluster::ClusterService::new(node.clone()))))
        .add_service(limits!(WatchServer::new(watch::WatchService::new(
            node.sm.hub.clone(),
            node.tasks.clone(),
            node.shutdown.clone()
        ))))
        .add_service(limits!(LeaseServer::new(lease::LeaseService::new(node.clone()))))
        .add_service(limits!(AuthServer::new(NotYet)))
        .add_service(limits!(LockServer::new(lock::LockService::new(node.clone()))))
        .add_service(limits!(ElectionServer::new(election::ElectionService::new(node.clone()))))
        .serve_with_incoming_shutdown(incoming(listener), token.cancelled_owned())
        .await;
    if let Err(e) = res {
        tracing::error!("client server: {e}");
    }
}
