//! The lessor: when each lease expires. Owns expiry times and the leader's duties —
//! renewing on keepalive, proposing revocations of expired leases (paced), and
//! checkpointing remaining TTLs through Raft. Must not touch the store directly: lease
//! records and attached keys change only by applying Raft entries.
//!
//! Every member tracks every lease (from the state machine's change feed), but only the
//! leader has expiry times. On becoming leader it gives each lease its checkpointed
//! remaining TTL (or the full TTL if none) from that moment, so no lease expires early
//! because of the election; on losing leadership it stops expiring at once.
//!
//! A keepalive after a checkpoint proposes a checkpoint of the full TTL, so a later
//! leader never honours a remaining TTL older than the last keepalive.

use crate::node::Node;
use crate::raft::state_machine::LeaseChange;
use cairn_api::cairnpb::{raft_request, LeaseRecord, RaftRequest};
use cairn_api::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The largest TTL etcd accepts, in seconds.
pub const MAX_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone)]
struct Lease {
    ttl: i64,
    /// Checkpointed remaining TTL (0: none).
    remaining: i64,
    /// Leader only: when it expires.
    expiry: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    leases: HashMap<i64, Lease>,
    leader: bool,
    /// Revocations proposed and not yet applied.
    revoking: HashSet<i64>,
}

/// The lessor of one member.
#[derive(Debug)]
pub struct Lessor {
    state: Mutex<State>,
    /// Smallest TTL granted (etcd: 1.5 election timeouts, rounded up to a second).
    pub min_ttl: i64,
}

fn far(secs: i64) -> Instant {
    Instant::now() + Duration::from_secs(secs.clamp(0, MAX_TTL) as u64)
}

impl Lessor {
    /// A lessor for an election timeout of `election`.
    pub fn new(election: Duration) -> Lessor {
        let min_ttl = ((election.as_millis() as i64 * 3 / 2) + 999) / 1000;
        Lessor { state: Mutex::new(State::default()), min_ttl: min_ttl.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply the state machine's lease changes.
    pub fn apply(&self, changes: Vec<LeaseChange>) {
        let mut s = self.lock();
        for c in changes {
            match c {
                LeaseChange::Granted(LeaseRecord { id, ttl, remaining_ttl }) => {
                    let expiry = s.leader.then(|| far(if remaining_ttl > 0 { remaining_ttl } else { ttl }));
                    s.leases.insert(id, Lease { ttl, remaining: remaining_ttl, expiry });
                }
                LeaseChange::Revoked(id) => {
                    s.leases.remove(&id);
                    s.revoking.remove(&id);
                }
                LeaseChange::Checkpointed(id, remaining) => {
                    if let Some(l) = s.leases.get_mut(&id) {
                        l.remaining = remaining;
                    }
                }
            }
        }
    }

    /// Replace everything (after a snapshot was installed).
    pub fn reset(&self, records: impl IntoIterator<Item = LeaseRecord>) {
        let mut s = self.lock();
        s.leases.clear();
        s.revoking.clear();
        drop(s);
        self.apply(records.into_iter().map(LeaseChange::Granted).collect());
    }

    /// This member became leader: start every lease's clock from now.
    pub fn promote(&self) {
        let mut s = self.lock();
        s.leader = true;
        s.revoking.clear();
        for l in s.leases.values_mut() {
            l.expiry = Some(far(if l.remaining > 0 { l.remaining } else { l.ttl }));
        }
    }

    /// This member is no longer leader: stop expiring.
    pub fn demote(&self) {
        let mut s = self.lock();
        s.leader = false;
        s.revoking.clear();
        for l in s.leases.values_mut() {
            l.expiry = None;
        }
    }

    /// Whether this lessor acts as the leader's.
    pub fn is_leader(&self) -> bool {
        self.lock().leader
    }

    /// Leader: renew `id`. Returns its TTL, and whether a checkpoint of the full TTL
    /// should be proposed; `None` if the lease is unknown or already expired.
    pub fn renew(&self, id: i64) -> Option<(i64, bool)> {
        let mut s = self.lock();
        let now = Instant::now();
        let l = s.leases.get_mut(&id)?;
        if l.expiry.is_some_and(|e| e <= now) {
            return None;
        }
        l.expiry = Some(far(l.ttl));
        let reset = l.remaining > 0 && l.remaining < l.ttl;
        if reset {
            // Optimistically, so a burst of keepalives proposes one checkpoint.
            l.remaining = l.ttl;
        }
        Some((l.ttl, reset))
    }

    /// Leader: (granted TTL, remaining seconds) of `id`.
    pub fn time_to_live(&self, id: i64) -> Option<(i64, i64)> {
        let s = self.lock();
        let l = s.leases.get(&id)?;
        let remaining = match l.expiry {
            Some(e) => {
                let left = e.saturating_duration_since(Instant::now());
                // etcd rounds up.
                (left.as_millis() as i64 + 999) / 1000
            }
            None => l.ttl,
        };
        Some((l.ttl, remaining))
    }

    /// Leader: up to `max` expired leases not already being revoked (now marked so).
    fn take_expired(&self, max: usize) -> Vec<i64> {
        let mut s = self.lock();
        if !s.leader {
            return vec![];
        }
        let now = Instant::now();
        let mut out: Vec<(Instant, i64)> = s
            .leases
            .iter()
            .filter_map(|(id, l)| l.expiry.filter(|e| *e <= now).map(|e| (e, *id)))
            .filter(|(_, id)| !s.revoking.contains(id))
            .collect();
        out.sort();
        out.truncate(max);
        let ids: Vec<i64> = out.into_iter().map(|(_, id)| id).collect();
        s.revoking.extend(ids.iter().copied());
        ids
    }

    fn revoke_failed(&self, id: i64) {
        self.lock().revoking.remove(&id);
    }

    /// Leader: checkpoints of every lease's remaining TTL.
    fn checkpoints(&self) -> Vec<LeaseCheckpoint> {
        let s = self.lock();
        if !s.leader {
            return vec![];
        }
        let now = Instant::now();
        s.leases
            .iter()
            .filter_map(|(id, l)| {
                let e = l.expiry?;
                let left = (e.saturating_duration_since(now).as_millis() as i64 + 999) / 1000;
                (left < l.ttl).then_some(LeaseCheckpoint { id: *id, remaining_ttl: left.max(1) })
            })
            .collect()
    }

    /// Number of leases known.
    pub fn len(&self) -> usize {
        self.lock().leases.len()
    }

    /// Whether no lease is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Follow Raft leadership: promote on becoming leader, demote on losing it.
pub async fn run_leadership(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    let mut was_leader = false;
    loop {
        let is_leader = metrics.borrow().current_leader == Some(node.id);
        if is_leader != was_leader {
            if is_leader {
                // Wait until this term's first entry is applied, so the lease table holds
                // everything committed before the election.
                let _ = node.read_barrier().await;
                node.lessor.promote();
                tracing::info!(leases = node.lessor.len(), "lessor promoted: this member now expires leases");
            } else {
                node.lessor.demote();
            }
            was_leader = is_leader;
        }
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

/// How often the leader looks for expired leases.
const EXPIRY_TICK: Duration = Duration::from_millis(50);

/// Leader: revoke expired leases through Raft, at most `rate` per second.
pub async fn run_expiry(node: Arc<Node>, rate: u32) {
    let per_tick = ((rate as u64 * EXPIRY_TICK.as_millis() as u64) / 1000).max(1) as usize;
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ids = node.lessor.take_expired(per_tick);
        if ids.is_empty() {
            continue;
        }
        let mut proposals = tokio::task::JoinSet::new();
        for id in ids {
            let n = node.clone();
            proposals.spawn(async move {
                let req = RaftRequest::internal(raft_request::Request::LeaseRevoke(LeaseRevokeRequest { id }));
                match n.propose(req).await {
                    Ok(_) => {}
                    // Already gone (revoked by a client): the apply removed it.
                    Err(e) if e.message() == crate::error::msg::LEASE_NOT_FOUND => {}
                    Err(e) => {
                        tracing::debug!(lease = id, "revoking an expired lease failed, will retry: {e}");
                        n.lessor.revoke_failed(id);
                    }
                }
            });
        }
        // The next tick's revocations wait for these, so the rate holds even when Raft is slow.
        while proposals.join_next().await.is_some() {}
    }
}

/// Leader: checkpoint remaining TTLs every `interval`.
pub async fn run_checkpoints(node: Arc<Node>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for chunk in node.lessor.checkpoints().chunks(1000) {
            let cp = LeaseCheckpointRequest { checkpoints: chunk.to_vec() };
            let req = RaftRequest::internal(raft_request::Request::LeaseCheckpoint(cp));
            if let Err(e) = node.propose(req).await {
                tracing::debug!("lease checkpoint not committed: {e}");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ttl_follows_the_election_timeout() {
        assert_eq!(Lessor::new(Duration::from_millis(1000)).min_ttl, 2);
        assert_eq!(Lessor::new(Duration::from_millis(500)).min_ttl, 1);
        assert_eq!(Lessor::new(Duration::from_millis(3000)).min_ttl, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_leader_expires_and_promotion_honours_checkpoints() {
        let l = Lessor::new(Duration::from_millis(1000));
        l.apply(vec![LeaseChange::Granted(LeaseRecord { id: 1, ttl: 10, remaining_ttl: 0 })]);
        l.apply(vec![LeaseChange::Granted(LeaseRecord { id: 2, ttl: 10, remaining_ttl: 0 })]);
        l.apply(vec![LeaseChange::Checkpointed(2, 3)]);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(l.take_expired(10).is_empty(), "followers never expire leases");
        l.promote();
        assert_eq!(l.time_to_live(1), Some((10, 10)));
        assert_eq!(l.time_to_live(2), Some((10, 3)), "checkpointed remaining TTL honoured");
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(l.take_expired(10), vec![2]);
        assert!(l.take_expired(10).is_empty(), "not proposed twice");
        // A keepalive extends, and asks for a checkpoint reset after a checkpoint.
        l.apply(vec![LeaseChange::Checkpointed(1, 5)]);
        assert_eq!(l.renew(1), Some((10, true)));
        assert_eq!(l.renew(1), Some((10, false)));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(l.take_expired(10).is_empty());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(l.take_expired(10), vec![1]);
        assert_eq!(l.renew(1), None, "an expired lease cannot be renewed");
        l.demote();
        l.revoke_failed(1);
        assert!(l.take_expired(10).is_empty(), "a demoted lessor stops expiring at once");
    }
}
