//! The lease duties that go through Raft or to the leader: keepalives and TTL queries
//! (answered by the leader's lessor, forwarded there from a follower through the
//! [`Router`]), and the leader's background tasks — following leadership, revoking
//! expired leases (paced), checkpointing remaining TTLs.

use super::Lessor;
use crate::error::{Error, Result};
use crate::replica::{RaftStatus, Replica};
use crate::router::{Failed, Hop, Retry, Router};
use crate::write::Writer;
use cairn_api::cairnpb::{
    raft_request, LeaseFloor, LeaseFloorsResponse, LeaseRenewRequest, LeaseTtlRequest, RaftRequest,
};
use cairn_api::etcdserverpb::{
    LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Leases as handlers and the peer port see them.
pub struct Leases {
    lessor: Arc<Lessor>,
    replica: Arc<Replica>,
    router: Arc<Router>,
    writer: Arc<Writer>,
    /// How long a new leader waits for peers' lease floors.
    election_timeout: Duration,
}

impl Leases {
    /// The lease duties of `replica`'s lessor.
    pub fn new(replica: Arc<Replica>, router: Arc<Router>, writer: Arc<Writer>, election_timeout: Duration) -> Leases {
        Leases { lessor: replica.lessor().clone(), replica, router, writer, election_timeout }
    }

    /// The smallest TTL granted (etcd's minimum, from the election timeout).
    pub fn min_ttl(&self) -> i64 {
        self.lessor.min_ttl
    }

    /// How many leases this member tracks.
    pub fn count(&self) -> usize {
        self.lessor.len()
    }

    /// Renew lease `id` (a keepalive): its TTL, or 0 if it does not exist or expired.
    /// From a follower the renewal is forwarded to the leader; while the leader is dying or
    /// moving it is re-sent (renewing twice is harmless) until the request timeout, as etcd
    /// does, so keepalives ride through an election.
    pub async fn renew(&self, id: i64) -> Result<i64> {
        self.router
            .to_leader(self.router.deadline(), Retry::Lost, |hop| async move {
                match hop {
                    Hop::Local => Ok(self.renew_local(id).await?),
                    Hop::Leader(mut c) => {
                        let req = LeaseRenewRequest { cluster_id: self.replica.cluster_id(), id };
                        Ok(c.lease_renew(req).await?.into_inner().ttl)
                    }
                }
            })
            .await
    }

    /// Renew lease `id` on this member, whose lessor must act as leader.
    pub async fn renew_local(&self, id: i64) -> std::result::Result<i64, Failed> {
        if !self.lessor.is_leader() {
            // Leads in Raft but has not promoted its lessor yet, or lost leadership.
            return Err(Failed::NotDone);
        }
        match self.lessor.renew(id) {
            Some(r) => {
                if r.needs_record {
                    // Answered only once every member's floor covers it, so no later
                    // leader expires the lease before this keepalive + TTL.
                    let cp = LeaseCheckpointRequest {
                        checkpoints: vec![LeaseCheckpoint { id, remaining_ttl: r.record_ttl() }],
                    };
                    self.writer.propose(RaftRequest::internal(raft_request::Request::LeaseCheckpoint(cp))).await?;
                    self.lessor.covered(id, r.at);
                }
                Ok(r.ttl)
            }
            None => Ok(0),
        }
    }

    /// A lease's granted and remaining TTL (TTL -1 if it does not exist, as etcd). Asked
    /// of the leader, again after a leader change, until the request timeout.
    pub async fn time_to_live(&self, req: LeaseTimeToLiveRequest) -> Result<LeaseTimeToLiveResponse> {
        self.router
            .to_leader(self.router.deadline(), Retry::Lost, |hop| async move {
                match hop {
                    Hop::Local => self.time_to_live_local(&req),
                    Hop::Leader(mut c) => {
                        let ask = LeaseTtlRequest { cluster_id: self.replica.cluster_id(), request: Some(req) };
                        let mut r = c.lease_time_to_live(ask).await?.into_inner();
                        let rev = r.header.as_ref().map_or(0, |h| h.revision);
                        r.header = Some(self.replica.header(rev));
                        Ok(r)
                    }
                }
            })
            .await
    }

    /// [`Leases::time_to_live`] on this member, whose lessor must act as leader.
    pub fn time_to_live_local(
        &self,
        req: &LeaseTimeToLiveRequest,
    ) -> std::result::Result<LeaseTimeToLiveResponse, Failed> {
        if !self.lessor.is_leader() {
            return Err(Failed::NotDone);
        }
        let header = Some(self.replica.current_header());
        Ok(match self.lessor.time_to_live(req.id) {
            Some((granted, remaining)) => LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: remaining,
                granted_ttl: granted,
                keys: if req.keys { self.replica.with_state(|st| st.mvcc.lease_keys(req.id)) } else { vec![] },
            },
            None => LeaseTimeToLiveResponse { header, id: req.id, ttl: -1, ..Default::default() },
        })
    }

    /// [`Leases::floors`] once this member has applied `index` (a new leader's applied
    /// index: the leader skips floors older than its own, and a follower learns that the
    /// new term's first entry committed only with the leader's next message, so answering
    /// at once would often be skipped and leave the leader with its own floors — late by
    /// however long ago it restarted). Waits at most half an election timeout (the leader
    /// gives up on an answer after a whole one).
    pub async fn floors_after(&self, index: u64) -> LeaseFloorsResponse {
        if index > self.replica.applied_index() {
            let deadline = Instant::now() + self.election_timeout / 2;
            // Answered either way: the leader decides what an older answer is worth.
            let _ = self.replica.wait_applied(index, deadline, "lease floors").await;
        }
        self.floors()
    }

    /// This member's lease floors as remaining time, with the index they are as new as
    /// (the peer port's answer to a new leader).
    pub fn floors(&self) -> LeaseFloorsResponse {
        // The applied index first: floors read after it include at least its records.
        let applied_index = self.replica.applied_index();
        let now = Instant::now();
        let floors = self
            .lessor
            .floors()
            .into_iter()
            .map(|(id, floor)| {
                let left = floor.saturating_duration_since(now);
                LeaseFloor { id, remaining_ms: left.as_millis().min(i64::MAX as u128) as i64 }
            })
            .collect();
        LeaseFloorsResponse { applied_index, floors }
    }

    /// Follow Raft leadership: promote the lessor on becoming leader, demote it on losing
    /// leadership.
    pub async fn run_leadership(self: Arc<Self>, shutdown: CancellationToken) {
        // Server metrics: they change with leadership, not with every write.
        let mut metrics = self.replica.raft().server_metrics();
        let mut was_leader = false;
        loop {
            let (is_leader, term) = {
                let m = metrics.borrow();
                (m.current_leader == Some(self.replica.id()), m.vote.leader_id().get_term())
            };
            if is_leader != was_leader {
                if is_leader {
                    // Wait until this term's first entry is applied, so the lease table
                    // holds everything committed before the election.
                    let _ = self.router.read_barrier().await;
                    self.lower_floors_from_peers().await;
                    // Leadership may have moved on during those waits (a quick election):
                    // a lessor promoted then would expire leases on floors that miss the
                    // new leader's renewals. Look again instead.
                    let still = {
                        let m = metrics.borrow();
                        m.current_leader == Some(self.replica.id()) && m.vote.leader_id().get_term() == term
                    };
                    if !still {
                        tracing::info!(term, "leadership moved on before the lessor was promoted");
                        continue;
                    }
                    self.lessor.promote();
                    tracing::info!(leases = self.lessor.len(), "lessor promoted: this member now expires leases");
                } else {
                    self.lessor.demote();
                }
                was_leader = is_leader;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Before promoting: take the lower floors of peers that applied at least as far as
    /// this member (see [`Lessor::lower_floors`]); peers that do not answer within an
    /// election timeout are left out (this member's own floors are never early).
    async fn lower_floors_from_peers(&self) {
        use cairn_api::cairnpb::LeaseFloorsRequest;
        if self.lessor.is_empty() {
            return;
        }
        let mine = self.lessor.floors();
        let applied = self.replica.applied_index();
        let mut asks = tokio::task::JoinSet::new();
        for (_, mut c) in self.router.peers() {
            let mut req = tonic::Request::new(LeaseFloorsRequest {
                cluster_id: self.replica.cluster_id(),
                applied_index: applied,
            });
            req.set_timeout(self.election_timeout);
            asks.spawn(async move {
                let r = c.lease_floors(req).await;
                // Taken after the answer arrived: the peer measured its remaining time no
                // later than this, so `received + remaining` is never before its floor.
                let received = Instant::now();
                r.map(|r| (received, r.into_inner()))
            });
        }
        let mut lowered = 0;
        while let Some(answer) = asks.join_next().await {
            let Ok(Ok((received, r))) = answer else { continue };
            if r.applied_index < applied {
                continue;
            }
            // Counted from when the answer arrived (late by the answer's travel time, never
            // early; counting from when the question left made a slow answer expire a lease
            // early by that much). The peer rounds down to whole milliseconds: one more.
            let theirs: Vec<(i64, Instant)> = r
                .floors
                .iter()
                .map(|f| (f.id, received + Duration::from_millis(f.remaining_ms.max(0) as u64 + 1)))
                .collect();
            lowered += self.lessor.lower_floors(&mine, &theirs);
        }
        if lowered > 0 {
            tracing::info!(leases = lowered, "lease floors lowered to what up-to-date members know");
        }
    }

    /// Leader: revoke expired leases through Raft, at most `rate` per second.
    pub async fn run_expiry(self: Arc<Self>, rate: u32, shutdown: CancellationToken) {
        let per_tick = ((rate as u64 * EXPIRY_TICK.as_millis() as u64) / 1000).max(1) as usize;
        let mut tick = tokio::time::interval(EXPIRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let ids = self.lessor.take_expired(per_tick);
            if ids.is_empty() {
                continue;
            }
            let mut proposals = tokio::task::JoinSet::new();
            for id in ids {
                let this = self.clone();
                proposals.spawn(async move {
                    let req = RaftRequest::internal(raft_request::Request::LeaseRevoke(LeaseRevokeRequest { id }));
                    // Never forwarded: a lessor that has just lost leadership must not
                    // have the new leader revoke on its (possibly stale) expiry.
                    match this.router.propose_as_leader(req).await {
                        Ok(_) => {}
                        // Already gone (revoked by a client): the apply removed it.
                        Err(e) if is_lease_not_found(&e) => {}
                        Err(e) => {
                            tracing::debug!(lease = id, "revoking an expired lease failed, will retry: {e}");
                            this.lessor.revoke_failed(id);
                        }
                    }
                });
            }
            // The next tick's revocations wait for these, so the rate holds even when Raft is slow.
            while proposals.join_next().await.is_some() {}
        }
    }

    /// Leader: checkpoint remaining TTLs every `interval`.
    pub async fn run_checkpoints(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for chunk in self.lessor.checkpoints().chunks(1000) {
                let cp = LeaseCheckpointRequest { checkpoints: chunk.to_vec() };
                let req = RaftRequest::internal(raft_request::Request::LeaseCheckpoint(cp));
                if let Err(e) = self.writer.propose(req).await {
                    tracing::debug!("lease checkpoint not committed: {e}");
                    break;
                }
            }
        }
    }
}

/// How often the leader looks for expired leases.
const EXPIRY_TICK: Duration = Duration::from_millis(50);

/// Whether a revocation failed because the lease is already gone: the only NOT_FOUND a
/// revocation's apply gives.
fn is_lease_not_found(e: &Error) -> bool {
    e.code() == tonic::Code::NotFound
}
