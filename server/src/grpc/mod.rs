//! The client port's handlers: one file per etcd service. Handlers validate requests
//! (etcd's checks and messages), send writes through [`Writer::propose`] and read the
//! store after [`Router::read_barrier`] (linearizable) or directly (serializable).
//!
//! Lock and Election are built on the KV, Lease and Watch handlers through [`local`], as
//! etcd builds them on its in-process client. Every handler identifies its caller
//! ([`AuthGate::identify`]) and, with auth on, checks the caller's permissions. Serving
//! the port (gRPC beside the JSON gateway) is [`crate::serve`]'s.

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

use crate::auth::gate::AuthGate;
use crate::lease::leader::Leases;
use crate::membership::Membership;
use crate::replica::{RaftStatus, Replica};
use crate::router::Router;
use crate::write::Writer;
use cairn_api::etcdserverpb::auth_server::AuthServer;
use cairn_api::etcdserverpb::cluster_server::ClusterServer;
use cairn_api::etcdserverpb::kv_server::KvServer;
use cairn_api::etcdserverpb::lease_server::LeaseServer;
use cairn_api::etcdserverpb::maintenance_server::MaintenanceServer;
use cairn_api::v3electionpb::election_server::ElectionServer;
use cairn_api::v3lockpb::lock_server::LockServer;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// gRPC's own framing overhead on top of the largest request (etcd allows 512 KiB).
const GRPC_OVERHEAD: usize = 512 * 1024;

/// The request limits handlers apply.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// `--bcrypt-cost` for new passwords.
    pub bcrypt_cost: u32,
    /// `--election-timeout` (how long streams that require a leader wait without one).
    pub election_timeout: Duration,
}

/// What the client-port handlers use of their member: its layers, each behind a narrow
/// handle, never the member itself.
#[derive(Clone)]
pub struct Ctx {
    /// Local state, headers, this member's Raft status.
    pub replica: Arc<Replica>,
    /// Linearizable read points.
    pub router: Arc<Router>,
    /// Writes.
    pub writer: Arc<Writer>,
    /// Callers and permissions.
    pub gate: Arc<AuthGate>,
    /// Keepalives and TTL queries.
    pub leases: Arc<Leases>,
    /// Member changes and leadership transfer.
    pub membership: Arc<Membership>,
    /// Request limits.
    pub limits: Limits,
    /// Where stream tasks run (so shutdown waits for them).
    pub tasks: TaskTracker,
    /// Cancelled when the member stops.
    pub shutdown: CancellationToken,
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
    /// Every handler, over `ctx`.
    pub fn new(ctx: &Ctx) -> Services {
        Services {
            kv: Arc::new(kv::KvService::new(ctx)),
            watch: Arc::new(watch::WatchService::new(ctx)),
            lease: Arc::new(lease::LeaseService::new(ctx)),
            cluster: Arc::new(cluster::ClusterService::new(ctx)),
            maintenance: Arc::new(maintenance::MaintenanceService::new(ctx)),
            auth: Arc::new(auth::AuthService::new(ctx)),
            lock: Arc::new(lock::LockService::new(ctx)),
            election: Arc::new(election::ElectionService::new(ctx)),
        }
    }

    /// The gRPC services as a router, taking requests up to `max_request_bytes`.
    pub fn grpc_router(&self, max_request_bytes: usize) -> axum::Router {
        let s = self;
        let max = max_request_bytes + GRPC_OVERHEAD;
        macro_rules! limits {
            ($svc:expr) => {
                $svc.max_decoding_message_size(max).max_encoding_message_size(usize::MAX)
            };
        }
        tonic::service::Routes::new(limits!(KvServer::from_arc(s.kv.clone())))
            .add_service(limits!(MaintenanceServer::from_arc(s.maintenance.clone())))
            .add_service(limits!(ClusterServer::from_arc(s.cluster.clone())))
            .add_service(watch::WatchServer::new(s.watch.clone(), max))
            .add_service(limits!(LeaseServer::from_arc(s.lease.clone())))
            .add_service(limits!(AuthServer::from_arc(s.auth.clone())))
            .add_service(limits!(LockServer::from_arc(s.lock.clone())))
            .add_service(limits!(ElectionServer::from_arc(s.election.clone())))
            .prepare()
            .into_axum_router()
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
pub async fn leader_lost(status: &dyn RaftStatus, election_timeout: Duration) {
    let mut tick = tokio::time::interval(election_timeout);
    let mut missing = 0;
    loop {
        tick.tick().await;
        missing = if status.leader().is_none() { missing + 1 } else { 0 };
        if missing >= 3 {
            return;
        }
    }
}
