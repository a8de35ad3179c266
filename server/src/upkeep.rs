//! Background upkeep run by the leader: auto-compaction (`--auto-compaction-mode`,
//! `--auto-compaction-retention`) and the periodic cross-member corruption check
//! (`--experimental-corrupt-check-time`) and its start-up form
//! (`--experimental-initial-corrupt-check`), learner auto-promotion
//! (`--experimental-learner-auto-promote`), plus clearing a NOSPACE alarm once the store
//! fits its quota again.

use crate::config::Retention;
use crate::membership::Membership;
use crate::replica::Replica;
use crate::router::Router;
use crate::write::Writer;
use cairn_api::cairnpb::{raft_request, HashKvPeerRequest, RaftRequest};
use cairn_api::etcdserverpb::alarm_request::AlarmAction;
use cairn_api::etcdserverpb::{AlarmRequest, AlarmType, CompactionRequest};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The leader's background upkeep of one member.
pub struct Upkeep {
    replica: Arc<Replica>,
    router: Arc<Router>,
    writer: Arc<Writer>,
    membership: Arc<Membership>,
}

impl Upkeep {
    /// Upkeep of `replica`, writing through `writer`.
    pub fn new(replica: Arc<Replica>, router: Arc<Router>, writer: Arc<Writer>, membership: Arc<Membership>) -> Self {
        Upkeep { replica, router, writer, membership }
    }

    fn leads(&self) -> bool {
        self.replica.leader() == Some(self.replica.id())
    }

    async fn compact(&self, revision: i64) {
        if revision <= self.replica.with_state(|st| st.mvcc.compact_revision()) {
            return;
        }
        let req =
            RaftRequest::internal(raft_request::Request::Compaction(CompactionRequest { revision, physical: false }));
        match self.writer.propose(req).await {
            Ok(_) => tracing::info!(revision, "auto-compacted"),
            Err(e) => tracing::warn!(revision, "auto-compaction: {e}"),
        }
    }

    /// Auto-compaction on the leader. Periodic: the revision is sampled every tenth of the
    /// period (at most 1 h, as etcd) and the store compacted to the newest sample older than
    /// the retention, at most once a period. Revision: every `interval`, compact to the
    /// current revision minus the retention.
    pub async fn auto_compact(self: Arc<Self>, retention: Retention, interval: Duration, shutdown: CancellationToken) {
        let (tick, keep) = match retention {
            Retention::None => return,
            Retention::Period(p) => (p.min(Duration::from_secs(3600)) / 10, p),
            Retention::Revisions(_) => (interval, Duration::ZERO),
        };
        let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
        let mut last_compaction = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(tick.max(Duration::from_millis(10))) => {}
            }
            let rev = self.replica.with_state(|st| st.mvcc.current_revision());
            match retention {
                Retention::Revisions(n) if self.leads() => self.compact(rev - n).await,
                Retention::Period(_) => {
                    let now = Instant::now();
                    samples.push_back((now, rev));
                    // The front becomes the newest sample at least `keep` old.
                    while samples.len() >= 2 && now.duration_since(samples[1].0) >= keep {
                        samples.pop_front();
                    }
                    if let Some(&(t, r)) = samples.front() {
                        let due = now.duration_since(last_compaction) >= keep.min(Duration::from_secs(3600));
                        if now.duration_since(t) >= keep && due && self.leads() {
                            self.compact(r).await;
                            last_compaction = now;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// The leader's corruption check: every `every`, compare this member's HashKV with each
    /// other member's at the same revision; a member whose hash differs while its compact
    /// revision is the same has diverged, and a CORRUPT alarm is raised for it (every member
    /// then refuses writes until an operator disarms it). Members that have not applied the
    /// revision yet are skipped this round.
    pub async fn corruption_check(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        if every.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if !self.leads() || self.replica.with_state(|st| st.corrupt()) {
                continue;
            }
            if let Err(e) = self.check_once().await {
                tracing::warn!("corruption check: {e}");
            }
        }
    }

    /// Each peer's `(hash, compact revision)` of its store at revision `rev`, or why it
    /// could not tell (down, not there yet, compacted past it).
    async fn peer_hashes(&self, rev: i64) -> Vec<(u64, Result<(u32, i64), String>)> {
        let mut out = Vec::new();
        for (id, mut c) in self.router.peers() {
            let mut req =
                tonic::Request::new(HashKvPeerRequest { cluster_id: self.replica.cluster_id(), revision: rev });
            req.set_timeout(Duration::from_secs(5));
            let got = c.hash_kv(req).await.map(|r| r.into_inner()).map(|r| (r.hash, r.compact_revision));
            out.push((id, got.map_err(|e| e.message().to_string())));
        }
        out
    }

    /// `--experimental-initial-corrupt-check`: before this member serves clients, compare
    /// its HashKV with every peer's at its own revision. A peer with the same compact
    /// revision and another hash means the data diverged, and the start stops (as etcd:
    /// "found data inconsistency with peers"); peers that cannot tell are skipped with a
    /// warning, so a member can still start while others are down.
    pub async fn initial_check(&self) -> anyhow::Result<()> {
        let (hash, compacted, rev) = self.replica.hash_kv(0)?;
        let mut diverged = Vec::new();
        let mut agreed = 0;
        let hashes = self.peer_hashes(rev).await;
        let peers = hashes.len();
        for (id, theirs) in hashes {
            let peer = format!("{id:x}");
            match theirs {
                Ok((h, c)) if c == compacted && h != hash => {
                    tracing::error!(%peer, revision = rev, ours = hash, theirs = h, "initial corruption check: HashKV differs");
                    diverged.push(peer);
                }
                Ok((_, c)) if c != compacted => {
                    tracing::warn!(%peer, ours = compacted, theirs = c, "initial corruption check: compacted differently, skipped")
                }
                Ok(_) => agreed += 1,
                Err(e) => tracing::warn!(%peer, "initial corruption check: cannot compare: {e}"),
            }
        }
        if !diverged.is_empty() {
            anyhow::bail!(
                "found data inconsistency with peers {} at revision {rev} (--experimental-initial-corrupt-check)",
                diverged.join(", ")
            );
        }
        tracing::info!("initial corruption check passed: {agreed} of {peers} peers agree at revision {rev}");
        Ok(())
    }

    async fn check_once(&self) -> crate::error::Result<()> {
        let (hash, compacted, rev) = self.replica.hash_kv(0)?;
        for (id, theirs) in self.peer_hashes(rev).await {
            let Ok((their_hash, their_compacted)) = theirs else { continue };
            if their_compacted == compacted && their_hash != hash {
                tracing::error!(
                    member = %format!("{id:x}"), revision = rev, ours = hash, theirs = their_hash,
                    "HashKV mismatch: raising CORRUPT"
                );
                let alarm = AlarmRequest {
                    action: AlarmAction::Activate as i32,
                    member_id: id,
                    alarm: AlarmType::Corrupt as i32,
                };
                self.writer.propose(RaftRequest::internal(raft_request::Request::Alarm(alarm))).await?;
            }
        }
        Ok(())
    }

    /// Promote each learner as soon as it is in sync with the leader (the check MemberPromote
    /// makes), checked every second on the leader.
    pub async fn auto_promote(self: Arc<Self>, shutdown: CancellationToken) {
        use cairn_api::cairnpb::cluster_change_request::Change;
        use cairn_api::etcdserverpb::MemberPromoteRequest;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if !self.leads() {
                continue;
            }
            let learners: Vec<u64> =
                self.replica.raft().metrics().borrow().membership_config.membership().learner_ids().collect();
            for id in learners {
                match self.membership.execute(Change::Promote(MemberPromoteRequest { id })).await {
                    Ok(_) => tracing::info!(id = %format!("{id:x}"), "learner caught up: promoted"),
                    Err(e) => tracing::debug!(id = %format!("{id:x}"), "not promoting yet: {e}"),
                }
            }
        }
    }

    /// Clear this member's NOSPACE alarm once its store is back under the quota (after a
    /// compaction and defragment), checked every few seconds.
    pub async fn clear_no_space(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            if let Err(e) = self.writer.clear_no_space().await {
                tracing::debug!("clearing NOSPACE: {e}");
            }
        }
    }
}
