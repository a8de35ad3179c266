//! The lessor: when each lease expires. Owns expiry times; the leader's duties that go
//! through Raft — renewing on keepalive, proposing revocations of expired leases (paced),
//! checkpointing remaining TTLs — are in [`leader`]. Must not touch the store directly:
//! lease records and attached keys change only by applying Raft entries.
//!
//! Every member tracks every lease (from the state machine's change feed), but only the
//! leader has expiry times and answers keepalives. On losing leadership a lessor stops
//! expiring at once.
//!
//! The bound across leader changes. Every member keeps, per lease, a *floor*: the latest
//! of `apply time + remaining` over the lease's records it applied (grant: TTL + slack,
//! checkpoints: their remaining TTL), on its own monotonic clock. A leader answers a
//! keepalive at `k` only once a committed checkpoint of `TTL + slack` proposed at some
//! `p >= k - slack` exists ("covered"), proposing one and waiting for it when not. Any
//! member applied that record at `a >= p`, so its floor is at least `k + TTL`: a new leader
//! that expires every lease at its floor never expires one early, and expires one that
//! nobody keeps alive at most `slack` (plus commit latency) after `last keepalive + TTL`,
//! however long the election took. `slack = max(1 s, TTL/10)` (whole seconds), so a lease
//! kept alive every TTL/3 costs one small Raft record per keepalive at most, and one per
//! `slack` when kept alive faster. Periodic checkpoints (`--lease-checkpoint-interval`) of
//! the remaining TTL only matter after a whole-cluster restart, where the persisted
//! remaining TTL is counted from startup.

pub mod leader;

use crate::state::LeaseChange;
use cairn_api::cairnpb::LeaseRecord;
use cairn_api::etcdserverpb::LeaseCheckpoint;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The largest TTL etcd accepts, in seconds.
pub const MAX_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone)]
struct Lease {
    ttl: i64,
    /// Checkpointed remaining TTL (0: none).
    remaining: i64,
    /// No leader may expire the lease before this (see the module docs).
    floor: Instant,
    /// Leader only: when it expires.
    expiry: Option<Instant>,
    /// Leader only: keepalives up to this instant are covered by a committed record.
    covered: Option<Instant>,
}

/// How much later than `last keepalive + TTL` a lease may be revoked after a leader change
/// (whole seconds, at most max(1 s, TTL/10)).
pub fn slack(ttl: i64) -> i64 {
    (ttl / 10).max(1)
}

/// What the leader's lessor says of a keepalive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    /// The lease's TTL (what the keepalive answers).
    pub ttl: i64,
    /// A checkpoint of [`Renewal::record_ttl`] must commit before the keepalive is answered;
    /// then call [`Lessor::covered`] with `at`.
    pub needs_record: bool,
    /// When the renewal was made (the record's proposal time is no earlier).
    pub at: Instant,
}

impl Renewal {
    /// The remaining TTL the covering checkpoint carries.
    pub fn record_ttl(&self) -> i64 {
        self.ttl.saturating_add(slack(self.ttl))
    }
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
                    // The grant was proposed before any member applies it, and answered after.
                    let floor = far(if remaining_ttl > 0 { remaining_ttl } else { ttl.saturating_add(slack(ttl)) });
                    s.leases.insert(id, Lease { ttl, remaining: remaining_ttl, floor, expiry, covered: None });
                }
                LeaseChange::Revoked(id) => {
                    s.leases.remove(&id);
                    s.revoking.remove(&id);
                }
                LeaseChange::Checkpointed(id, remaining) => {
                    if let Some(l) = s.leases.get_mut(&id) {
                        l.remaining = remaining;
                        // The latest bound wins: a checkpoint proposed before a renewal but
                        // applied after its record must not pull the floor back.
                        l.floor = l.floor.max(far(remaining));
                        // A keepalive's record (TTL + slack; periodic checkpoints are below
                        // TTL) may be for a renewal another member's lessor answered — the
                        // old leader, while leadership moved here — and commit after this
                        // lessor was promoted: the renewal happened before this apply, so
                        // the lease lives at least TTL from now.
                        if remaining > l.ttl {
                            l.expiry = l.expiry.map(|e| e.max(far(l.ttl)));
                        }
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

    /// This member became leader: every lease expires at its floor (never before the last
    /// keepalive the old leader answered + TTL; see the module docs).
    pub fn promote(&self) {
        let mut s = self.lock();
        s.leader = true;
        s.revoking.clear();
        for l in s.leases.values_mut() {
            l.expiry = Some(l.floor);
            l.covered = None;
        }
    }

    /// This member is no longer leader: stop expiring.
    pub fn demote(&self) {
        let mut s = self.lock();
        s.leader = false;
        s.revoking.clear();
        for l in s.leases.values_mut() {
            l.expiry = None;
            l.covered = None;
        }
    }

    /// Whether this lessor acts as the leader's.
    pub fn is_leader(&self) -> bool {
        self.lock().leader
    }

    /// Lower floors to what another member reports, for every lease whose floor is still
    /// `mine` (taken before asking): a member restarted recently re-applied its records at
    /// startup, so its floors are late; one that applied at least as far as this one knows
    /// every record this one does, so its floors are never early. Called before `promote`.
    pub fn lower_floors(&self, mine: &HashMap<i64, Instant>, reported: &[(i64, Instant)]) -> usize {
        let mut s = self.lock();
        let mut lowered = 0;
        for (id, theirs) in reported {
            let Some(l) = s.leases.get_mut(id) else { continue };
            if mine.get(id) == Some(&l.floor) && *theirs < l.floor {
                l.floor = *theirs;
                lowered += 1;
            }
        }
        lowered
    }

    /// Every lease's floor (what [`Lessor::lower_floors`] compares with, and what a new
    /// leader asks its peers for).
    pub fn floors(&self) -> HashMap<i64, Instant> {
        self.lock().leases.iter().map(|(id, l)| (*id, l.floor)).collect()
    }

    /// Leader: renew `id`; `None` if the lease is unknown or already expired.
    pub fn renew(&self, id: i64) -> Option<Renewal> {
        let mut s = self.lock();
        let now = Instant::now();
        let l = s.leases.get_mut(&id)?;
        if l.expiry.is_some_and(|e| e <= now) {
            return None;
        }
        l.expiry = Some(far(l.ttl));
        Some(Renewal { ttl: l.ttl, needs_record: l.covered.is_none_or(|c| now > c), at: now })
    }

    /// Leader: a record for a renewal made at `at` committed; keepalives until `at + slack`
    /// need no other.
    pub fn covered(&self, id: i64, at: Instant) {
        let mut s = self.lock();
        if let Some(l) = s.leases.get_mut(&id) {
            let until = at + Duration::from_secs(slack(l.ttl) as u64);
            l.covered = Some(l.covered.map_or(until, |c| c.max(until)));
        }
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
    async fn a_keepalive_record_committed_after_promotion_extends_the_expiry() {
        let l = Lessor::new(Duration::from_millis(1000));
        l.apply(vec![LeaseChange::Granted(LeaseRecord { id: 1, ttl: 2, remaining_ttl: 0 })]);
        l.promote();
        tokio::time::advance(Duration::from_millis(1500)).await;
        // The old leader renewed at about this moment; its record (TTL + slack) commits now.
        l.apply(vec![LeaseChange::Checkpointed(1, 3)]);
        tokio::time::advance(Duration::from_millis(1900)).await;
        assert!(l.take_expired(10).is_empty(), "alive until TTL after the record");
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(l.take_expired(10), vec![1]);
        // A periodic checkpoint (below TTL) does not move the expiry.
        l.apply(vec![LeaseChange::Granted(LeaseRecord { id: 2, ttl: 10, remaining_ttl: 0 })]);
        l.promote();
        let before = l.time_to_live(2);
        l.apply(vec![LeaseChange::Checkpointed(2, 9)]);
        assert_eq!(l.time_to_live(2), before);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_leader_expires_and_a_new_one_keeps_the_floor() {
        let l = Lessor::new(Duration::from_millis(1000));
        l.apply(vec![LeaseChange::Granted(LeaseRecord { id: 1, ttl: 10, remaining_ttl: 0 })]);
        l.apply(vec![LeaseChange::Granted(LeaseRecord { id: 2, ttl: 10, remaining_ttl: 0 })]);
        // A checkpoint proposed earlier than the grant's bound does not pull the floor back.
        l.apply(vec![LeaseChange::Checkpointed(2, 3)]);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(l.take_expired(10).is_empty(), "followers never expire leases");
        // The old leader renewed lease 1 and committed a record of TTL + slack.
        l.apply(vec![LeaseChange::Checkpointed(1, 11)]);
        l.promote();
        assert_eq!(l.time_to_live(1), Some((10, 11)));
        assert_eq!(l.time_to_live(2), Some((10, 6)), "grant + TTL + slack, counted from the grant");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(l.take_expired(10), vec![2]);
        assert!(l.take_expired(10).is_empty(), "not proposed twice");
        // A keepalive extends; it needs a covering record unless one was committed for a
        // renewal at most `slack` (1 s for TTL 10) before it.
        let r = l.renew(1).expect("renewed");
        assert_eq!((r.ttl, r.needs_record, r.record_ttl()), (10, true, 11));
        l.covered(1, r.at);
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(!l.renew(1).expect("renewed").needs_record, "covered");
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(l.renew(1).expect("renewed").needs_record, "past the covered window");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(l.take_expired(10).is_empty());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(l.take_expired(10), vec![1]);
        assert_eq!(l.renew(1), None, "an expired lease cannot be renewed");
        l.demote();
        l.revoke_failed(1);
        assert!(l.take_expired(10).is_empty(), "a demoted lessor stops expiring at once");
    }

    /// A restarted member's late floors are lowered to an up-to-date peer's, but never a
    /// floor that moved since it was read (a record applied meanwhile), and never raised.
    #[tokio::test(start_paused = true)]
    async fn floors_are_lowered_only_where_unchanged() {
        let l = Lessor::new(Duration::from_millis(1000));
        for id in 1..=3 {
            l.apply(vec![LeaseChange::Granted(LeaseRecord { id, ttl: 10, remaining_ttl: 0 })]);
        }
        let mine = l.floors();
        let now = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        l.apply(vec![LeaseChange::Checkpointed(3, 11)]);
        let reported = [(1, now + Duration::from_secs(5)), (2, now + Duration::from_secs(20)), (3, now)];
        assert_eq!(l.lower_floors(&mine, &reported), 1);
        l.promote();
        assert_eq!(l.time_to_live(1), Some((10, 4)), "lowered");
        assert_eq!(l.time_to_live(2), Some((10, 10)), "never raised");
        assert_eq!(l.time_to_live(3), Some((10, 11)), "a record applied meanwhile is kept");
    }

    /// The promise: after a leader change, a lease nobody keeps alive expires no earlier than
    /// its last keepalive + TTL and no later than that + slack, whatever the election took.
    #[tokio::test(start_paused = true)]
    async fn a_new_leader_expires_within_slack_of_the_last_keepalive() {
        for ttl in [2i64, 10, 16, 60] {
            let (old, new) = (Lessor::new(Duration::from_millis(1000)), Lessor::new(Duration::from_millis(1000)));
            let grant = vec![LeaseChange::Granted(LeaseRecord { id: 1, ttl, remaining_ttl: 0 })];
            old.apply(grant.clone());
            new.apply(grant);
            old.promote();
            tokio::time::advance(Duration::from_millis(700)).await;
            // Keepalives every 300 ms for a while; records as the leader would commit them
            // (applied on both members 5 ms after their proposal).
            let mut last = Instant::now();
            for _ in 0..20 {
                let r = old.renew(1).expect("alive");
                last = r.at;
                if r.needs_record {
                    tokio::time::advance(Duration::from_millis(5)).await;
                    let cp = vec![LeaseChange::Checkpointed(1, r.record_ttl())];
                    old.apply(cp.clone());
                    new.apply(cp);
                    old.covered(1, r.at);
                }
                tokio::time::advance(Duration::from_millis(300)).await;
            }
            // The leader dies; the election takes anywhere from no time to many seconds.
            for election in [0u64, 3_000] {
                tokio::time::advance(Duration::from_millis(election)).await;
                new.promote();
                let expiry = new.lock().leases[&1].expiry.expect("leader");
                let (earliest, latest) = (
                    last + Duration::from_secs(ttl as u64),
                    last + Duration::from_secs((ttl + slack(ttl)) as u64) + Duration::from_millis(10),
                );
                assert!(expiry >= earliest, "TTL {ttl}: early by {:?}", earliest - expiry);
                assert!(expiry <= latest, "TTL {ttl}: late by {:?}", expiry - latest);
                new.demote();
            }
        }
    }
}
