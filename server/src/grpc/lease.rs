//! etcd's Lease service: Grant, Revoke, KeepAlive (a stream), TimeToLive, Leases.
//! Grants and revocations go through Raft; keepalives and TTL queries are answered by the
//! leader's lessor (a follower forwards them).

use super::Ctx;
use crate::auth::gate::Credentials;
use crate::auth::Need;
use crate::error::{msg, Error};
use crate::lease::MAX_TTL;
use cairn_api::cairnpb::{raft_request, raft_response};
use cairn_api::etcdserverpb::lease_server::Lease;
use cairn_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

/// Responses buffered per keepalive stream.
const KEEPALIVE_BUFFER: usize = 64;

/// The Lease service of one member.
pub struct LeaseService {
    ctx: Ctx,
}

impl LeaseService {
    /// The Lease service of the member behind `ctx`.
    pub fn new(ctx: &Ctx) -> Self {
        Self { ctx: ctx.clone() }
    }

    fn revision(&self) -> i64 {
        self.ctx.replica.with_state(|st| st.mvcc.current_revision())
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, req: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let who = self.ctx.gate.identify(&req).await?;
        let mut r = req.into_inner();
        if r.ttl > MAX_TTL {
            return Err(Status::out_of_range(msg::LEASE_TTL_TOO_LARGE));
        }
        // As etcd: anything below the minimum TTL (zero and negatives included) is raised to it.
        r.ttl = r.ttl.max(self.ctx.leases.min_ttl());
        let chosen = r.id != 0;
        if r.id < 0 {
            return Err(Status::invalid_argument("etcdserver: lease id must be positive"));
        }
        loop {
            if !chosen {
                // A random positive id; a collision is refused at apply and retried here.
                r.id = (rand::random::<u64>() >> 1).max(1) as i64;
            }
            let req = self.ctx.gate.client_request(&who, raft_request::Request::LeaseGrant(r))?;
            match self.ctx.writer.propose(req).await {
                Ok(resp) => {
                    let rev = resp.revision;
                    return match resp.response {
                        Some(raft_response::Response::LeaseGrant(mut g)) => {
                            g.header = Some(self.ctx.replica.header(rev));
                            Ok(Response::new(g))
                        }
                        other => Err(Status::internal(format!("etcdserver: unexpected apply result {other:?}"))),
                    };
                }
                Err(Error::Remote { message, .. }) if !chosen && message == msg::LEASE_EXISTS => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn lease_revoke(&self, req: Request<LeaseRevokeRequest>) -> Result<Response<LeaseRevokeResponse>, Status> {
        let who = self.ctx.gate.identify(&req).await?;
        let req = self.ctx.gate.client_request(&who, raft_request::Request::LeaseRevoke(req.into_inner()))?;
        let resp = self.ctx.writer.propose(req).await?;
        Ok(Response::new(LeaseRevokeResponse { header: Some(self.ctx.replica.header(resp.revision)) }))
    }

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<BoxStream<LeaseKeepAliveResponse>>, Status> {
        let require_leader = super::requires_leader(req.metadata().as_ref());
        Ok(Response::new(self.keep_alive(Credentials::of(&req), require_leader, req.into_inner())))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let who = self.ctx.gate.identify(&req).await?;
        let r = req.into_inner();
        // As etcd: the TTL of a lease is shown to whoever may read every key it holds.
        self.ctx.replica.with_state(|st| {
            let mvcc = &st.mvcc;
            st.auth.check_lease_keys(&who.user, r.id, Need::Read, &|id| mvcc.lease_keys(id))
        })?;
        Ok(Response::new(self.ctx.leases.time_to_live(r).await?))
    }

    async fn lease_leases(&self, req: Request<LeaseLeasesRequest>) -> Result<Response<LeaseLeasesResponse>, Status> {
        // Beyond etcd (which lists every lease to anyone): with auth on, only an
        // authenticated user may list leases.
        let who = self.ctx.gate.identify(&req).await?;
        if !who.open {
            self.ctx.replica.with_state(|st| st.auth.check_authenticated(&who.user))?;
        }
        self.ctx.router.read_barrier().await?;
        let leases = self.ctx.replica.with_state(|st| st.leases.keys().map(|id| LeaseStatus { id: *id }).collect());
        Ok(Response::new(LeaseLeasesResponse { header: Some(self.ctx.replica.header(self.revision())), leases }))
    }
}

impl LeaseService {
    /// Serve one keepalive stream: a response per request on `inbound` (a gRPC stream,
    /// or the gateway's JSON) from the client with `credentials`; the stream ends with the
    /// requests or at the first error.
    ///
    /// Beyond etcd (which renews any lease for anyone): with auth on, each renewal needs an
    /// authenticated caller with write permission on every key attached to the lease — the
    /// rule for revoking it — so nobody can keep a dead client's lock or election alive.
    /// The caller is resolved for every renewal (auth may be turned on meanwhile).
    ///
    /// With `require_leader` the stream ends with `etcdserver: no leader` once this member
    /// has been without a leader for three election timeouts (as a watch does).
    pub fn keep_alive<S>(
        &self,
        credentials: Credentials,
        require_leader: bool,
        mut inbound: S,
    ) -> BoxStream<LeaseKeepAliveResponse>
    where
        S: Stream<Item = Result<LeaseKeepAliveRequest, Status>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(KEEPALIVE_BUFFER);
        let ctx = self.ctx.clone();
        self.ctx.tasks.spawn(async move {
            let leader_lost = super::leader_lost(ctx.replica.as_ref(), ctx.limits.election_timeout);
            tokio::pin!(leader_lost);
            loop {
                let msg = tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = tx.closed() => break,
                    _ = &mut leader_lost, if require_leader => {
                        let _ = tx.send(Err(Status::unavailable(crate::error::msg::NO_LEADER))).await;
                        break;
                    }
                    m = inbound.next() => m.transpose(),
                };
                // The stream ends (or breaks): nothing is kept for it.
                let Ok(Some(ka)) = msg else { break };
                let allowed = match ctx.gate.identify_by(credentials.clone()).await {
                    Ok(who) if who.open => Ok(()),
                    Ok(who) => ctx.replica.with_state(|st| {
                        st.auth.check_authenticated(&who.user)?;
                        st.auth.check_lease_keys(&who.user, ka.id, Need::Write, &|id| st.mvcc.lease_keys(id))
                    }),
                    Err(e) => Err(e),
                };
                if let Err(e) = allowed {
                    let _ = tx.send(Err(Status::from(e))).await;
                    break;
                }
                let reply = match ctx.leases.renew(ka.id).await {
                    Ok(ttl) => {
                        let rev = ctx.replica.with_state(|st| st.mvcc.current_revision());
                        Ok(LeaseKeepAliveResponse { header: Some(ctx.replica.header(rev)), id: ka.id, ttl })
                    }
                    Err(e) => Err(Status::from(e)),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}
