//! The services the proxy passes through: each call goes to the cluster over the
//! balanced channel with the caller's credentials, and its answer (or error, code and
//! message as the member gave them) comes back unchanged. Watch is not here: it is
//! coalesced ([`super::watch`]).

use super::cache::RangeCache;
use super::lease::KeepAlives;
use super::namespace::{Namespace, Namespaced};
use super::upstream::{pass, Upstream};
use super::ProxyMetrics;
use cairn_api::etcdserverpb::auth_client::AuthClient;
use cairn_api::etcdserverpb::auth_server::{Auth, AuthServer};
use cairn_api::etcdserverpb::cluster_client::ClusterClient;
use cairn_api::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::kv_server::{Kv, KvServer};
use cairn_api::etcdserverpb::lease_client::LeaseClient;
use cairn_api::etcdserverpb::lease_server::{Lease, LeaseServer};
use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_api::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use cairn_api::etcdserverpb::watch_server::WatchServer;
use cairn_api::etcdserverpb::*;
use cairn_api::v3electionpb::election_client::ElectionClient;
use cairn_api::v3electionpb::election_server::{Election, ElectionServer};
use cairn_api::v3electionpb::*;
use cairn_api::v3lockpb::lock_client::LockClient;
use cairn_api::v3lockpb::lock_server::{Lock, LockServer};
use cairn_api::v3lockpb::*;
use std::sync::Arc;
use tokio_stream::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

/// Passes calls through to the cluster.
#[derive(Clone)]
pub struct Forward {
    up: Arc<Upstream>,
    ns: Arc<Namespace>,
    keepalives: Arc<KeepAlives>,
    cache: Arc<RangeCache>,
    /// `--proxy=readonly`: refuse txns that write (other writes never get here).
    read_only: bool,
}

/// A client of `$client` over the balanced channel, with no size limit of its own (the
/// member's limits apply; the proxy's are on the client side).
macro_rules! client {
    ($self:ident, $client:ident) => {
        $client::new($self.up.channel()).max_decoding_message_size(usize::MAX).max_encoding_message_size(usize::MAX)
    };
}

/// An impl of a service trait whose unary methods pass through, plus `$extra` items.
macro_rules! unary {
    ($trait:ident, $client:ident, [$( $method:ident : $req:ident => $resp:ident ),* $(,)?] $($extra:tt)*) => {
        #[tonic::async_trait]
        impl $trait for Forward {
            $(
                async fn $method(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                    let (meta, _, mut msg) = req.into_parts();
                    msg.enter(&self.ns);
                    let mut resp = client!(self, $client).$method(pass(&meta, msg)).await?;
                    resp.get_mut().leave(&self.ns);
                    Ok(resp)
                }
            )*
            $($extra)*
        }
    };
}

unary!(Kv, KvClient, [
    put: PutRequest => PutResponse,
    delete_range: DeleteRangeRequest => DeleteRangeResponse,
    compact: CompactionRequest => CompactionResponse,
]
    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        if self.read_only && super::read_only::txn_writes(req.get_ref()) {
            return Err(Status::unimplemented("read-only proxy: /etcdserverpb.KV/Txn: the txn puts or deletes"));
        }
        let (meta, _, mut msg) = req.into_parts();
        msg.enter(&self.ns);
        let mut resp = client!(self, KvClient).txn(pass(&meta, msg)).await?;
        resp.get_mut().leave(&self.ns);
        Ok(resp)
    }

    /// Serializable reads may come from the cache ([`RangeCache`]).
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let (meta, _, mut msg) = req.into_parts();
        msg.enter(&self.ns);
        if let Some(mut hit) = self.cache.get(&meta, &msg) {
            hit.leave(&self.ns);
            return Ok(Response::new(hit));
        }
        let mut resp = client!(self, KvClient).range(pass(&meta, msg.clone())).await?;
        self.cache.put(&meta, &msg, resp.get_ref());
        resp.get_mut().leave(&self.ns);
        Ok(resp)
    }
);

unary!(Lease, LeaseClient, [
    lease_grant: LeaseGrantRequest => LeaseGrantResponse,
    lease_revoke: LeaseRevokeRequest => LeaseRevokeResponse,
    lease_time_to_live: LeaseTimeToLiveRequest => LeaseTimeToLiveResponse,
    lease_leases: LeaseLeasesRequest => LeaseLeasesResponse,
]

    /// Coalesced: see [`KeepAlives`].
    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<BoxStream<LeaseKeepAliveResponse>>, Status> {
        let (meta, _, inbound) = req.into_parts();
        Ok(Response::new(self.keepalives.serve(meta, inbound)))
    }
);

unary!(Cluster, ClusterClient, [
    member_add: MemberAddRequest => MemberAddResponse,
    member_remove: MemberRemoveRequest => MemberRemoveResponse,
    member_update: MemberUpdateRequest => MemberUpdateResponse,
    member_list: MemberListRequest => MemberListResponse,
    member_promote: MemberPromoteRequest => MemberPromoteResponse,
]);

unary!(Maintenance, MaintenanceClient, [
    alarm: AlarmRequest => AlarmResponse,
    status: StatusRequest => StatusResponse,
    defragment: DefragmentRequest => DefragmentResponse,
    hash: HashRequest => HashResponse,
    hash_kv: HashKvRequest => HashKvResponse,
    move_leader: MoveLeaderRequest => MoveLeaderResponse,
    downgrade: DowngradeRequest => DowngradeResponse,
]

    async fn snapshot(&self, req: Request<SnapshotRequest>) -> Result<Response<BoxStream<SnapshotResponse>>, Status> {
        let (meta, _, msg) = req.into_parts();
        let out = client!(self, MaintenanceClient).snapshot(pass(&meta, msg)).await?;
        Ok(Response::new(Box::pin(out.into_inner())))
    }
);

unary!(Auth, AuthClient, [
    auth_enable: AuthEnableRequest => AuthEnableResponse,
    auth_disable: AuthDisableRequest => AuthDisableResponse,
    auth_status: AuthStatusRequest => AuthStatusResponse,
    authenticate: AuthenticateRequest => AuthenticateResponse,
    user_add: AuthUserAddRequest => AuthUserAddResponse,
    user_get: AuthUserGetRequest => AuthUserGetResponse,
    user_list: AuthUserListRequest => AuthUserListResponse,
    user_delete: AuthUserDeleteRequest => AuthUserDeleteResponse,
    user_change_password: AuthUserChangePasswordRequest => AuthUserChangePasswordResponse,
    user_grant_role: AuthUserGrantRoleRequest => AuthUserGrantRoleResponse,
    user_revoke_role: AuthUserRevokeRoleRequest => AuthUserRevokeRoleResponse,
    role_add: AuthRoleAddRequest => AuthRoleAddResponse,
    role_get: AuthRoleGetRequest => AuthRoleGetResponse,
    role_list: AuthRoleListRequest => AuthRoleListResponse,
    role_delete: AuthRoleDeleteRequest => AuthRoleDeleteResponse,
    role_grant_permission: AuthRoleGrantPermissionRequest => AuthRoleGrantPermissionResponse,
    role_revoke_permission: AuthRoleRevokePermissionRequest => AuthRoleRevokePermissionResponse,
]);

unary!(Lock, LockClient, [
    lock: LockRequest => LockResponse,
    unlock: UnlockRequest => UnlockResponse,
]);

unary!(Election, ElectionClient, [
    campaign: CampaignRequest => CampaignResponse,
    proclaim: ProclaimRequest => ProclaimResponse,
    leader: LeaderRequest => LeaderResponse,
    resign: ResignRequest => ResignResponse,
]

    async fn observe(&self, req: Request<LeaderRequest>) -> Result<Response<BoxStream<LeaderResponse>>, Status> {
        let (meta, _, mut msg) = req.into_parts();
        msg.enter(&self.ns);
        let out = client!(self, ElectionClient).observe(pass(&meta, msg)).await?;
        let ns = self.ns.clone();
        let stripped = out.into_inner().map(move |r| {
            r.map(|mut r| {
                r.leave(&ns);
                r
            })
        });
        Ok(Response::new(Box::pin(stripped)))
    }
);

/// Every etcd v3 service of the proxy as gRPC routes: requests up to `max_recv` bytes,
/// responses up to `max_send`.
pub fn routes(
    up: &Arc<Upstream>,
    ns: Namespace,
    metrics: &ProxyMetrics,
    max_recv: usize,
    max_send: usize,
    read_only: bool,
    stop: &tokio_util::sync::CancellationToken,
) -> axum::Router {
    let ns = Arc::new(ns);
    let keepalives = super::lease::KeepAlives::new(up.clone(), metrics.clone());
    let cache = super::cache::RangeCache::start(up.clone(), metrics.clone(), stop.clone());
    let f = Forward { up: up.clone(), ns: ns.clone(), keepalives, cache, read_only };
    let watch = super::watch::WatchProxy::new(up.clone(), ns, metrics.clone(), stop.clone());
    macro_rules! limits {
        ($svc:expr) => {
            $svc.max_decoding_message_size(max_recv).max_encoding_message_size(max_send)
        };
    }
    tonic::service::Routes::new(limits!(KvServer::new(f.clone())))
        .add_service(limits!(WatchServer::new(watch)))
        .add_service(limits!(LeaseServer::new(f.clone())))
        .add_service(limits!(ClusterServer::new(f.clone())))
        .add_service(limits!(MaintenanceServer::new(f.clone())))
        .add_service(limits!(AuthServer::new(f.clone())))
        .add_service(limits!(LockServer::new(f.clone())))
        .add_service(limits!(ElectionServer::new(f)))
        .prepare()
        .into_axum_router()
}
