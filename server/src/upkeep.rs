//! Background upkeep run by the leader: auto-compaction (`--auto-compaction-mode`,
//! `--auto-compaction-retention`) and the periodic cross-member corruption check
//! (`--experimental-corrupt-check-time`), learner auto-promotion
//! (`--experimental-learner-auto-promote`), plus clearing a NOSPACE alarm once the store
//! fits its quota again.

use crate::node::Node;
use cairn_api::cairnpb::peer_client::PeerClient;
use cairn_api::cairnpb::{raft_request, HashKvPeerRequest, RaftRequest};
use cairn_api::etcdserverpb::alarm_request::AlarmAction;
use cairn_api::etcdserverpb::{AlarmRequest, AlarmType, CompactionRequest};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;

/// How much history auto-compaction keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Off.
    None,
    /// Keep the revisions of the last period (etcd's `periodic` mode).
    Period(Duration),
    /// Keep this many revisions (etcd's `revision` mode).
    Revisions(i64),
}

impl Retention {
    /// Parse etcd's flags: `periodic` takes a duration (`1h`, `30m`) or a number of hours,
    /// `revision` a number of revisions; `0` turns it off.
    pub fn parse(mode: &str, retention: &str) -> Result<Retention, String> {
        let r = retention.trim();
        match mode {
            "periodic" => {
                let d = match r.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours * 3600),
                    Err(_) => {
                        humantime::parse_duration(r).map_err(|e| format!("--auto-compaction-retention {r:?}: {e}"))?
                    }
                };
                Ok(if d.is_zero() { Retention::None } else { Retention::Period(d) })
            }
            "revision" => {
                let n: i64 = r
                    .parse()
                    .map_err(|_| format!("--auto-compaction-retention {r:?}: expected a number of revisions"))?;
                Ok(if n <= 0 { Retention::None } else { Retention::Revisions(n) })
            }
            other => Err(format!("--auto-compaction-mode must be periodic or revision, not {other:?}")),
        }
    }
}

fn leads(node: &Node) -> bool {
    node.leader() == Some(node.id)
}

async fn compact(node: &Node, revision: i64) {
    if revision <= node.read(|st| st.mvcc.compact_revision()) {
        return;
    }
    let req = RaftRequest::internal(raft_request::Request::Compaction(CompactionRequest { revision, physical: false }));
    match node.propose(req).await {
        Ok(_) => tracing::info!(revision, "auto-compacted"),
        Err(e) => tracing::warn!(revision, "auto-compaction: {e}"),
    }
}

/// Auto-compaction on the leader. Periodic: the revision is sampled every tenth of the
/// period (at most 1 h, as etcd) and the store compacted to the newest sample older than
/// the retention, at most once a period. Revision: every `interval`, compact to the
/// current revision minus the retention.
pub async fn auto_compact(node: Arc<Node>, retention: Retention, interval: Duration) {
    let (tick, keep) = match retention {
        Retention::None => return,
        Retention::Period(p) => (p.min(Duration::from_secs(3600)) / 10, p),
        Retention::Revisions(_) => (interval, Duration::ZERO),
    };
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    let mut last_compaction = Instant::now();
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick.max(Duration::from_millis(10))) => {}
        }
        let rev = node.read(|st| st.mvcc.current_revision());
        match retention {
            Retention::Revisions(n) if leads(&node) => compact(&node, rev - n).await,
            Retention::Period(_) => {
                let now = Instant::now();
                samples.push_back((now, rev));
                // The front becomes the newest sample at least `keep` old.
                while samples.len() >= 2 && now.duration_since(samples[1].0) >= keep {
                    samples.pop_front();
                }
                if let Some(&(t, r)) = samples.front() {
                    let due = now.duration_since(last_compaction) >= keep.min(Duration::from_secs(3600));
                    if now.duration_since(t) >= keep && due && leads(&node) {
                        compact(&node, r).await;
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
pub async fn corruption_check(node: Arc<Node>, every: Duration) {
    if every.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if !leads(&node) || node.read(|st| st.corrupt()) {
            continue;
        }
        if let Err(e) = check_once(&node).await {
            tracing::warn!("corruption check: {e}");
        }
    }
}

async fn check_once(node: &Node) -> crate::error::Result<()> {
    let (hash, compacted, rev) = node.hash_kv(0)?;
    let m = node.raft.metrics().borrow().membership_config.clone();
    for (id, member) in m.membership().nodes() {
        if *id == node.id {
            continue;
        }
        let Some(mut c): Option<PeerClient<Channel>> = node.peer_client(*id, member) else { continue };
        let mut req = tonic::Request::new(HashKvPeerRequest { cluster_id: node.cluster_id, revision: rev });
        req.set_timeout(Duration::from_secs(5));
        let Ok(theirs) = c.hash_kv(req).await else { continue };
        let theirs = theirs.into_inner();
        if theirs.compact_revision == compacted && theirs.hash != hash {
            tracing::error!(
                member = %format!("{id:x}"), revision = rev, ours = hash, theirs = theirs.hash,
                "HashKV mismatch: raising CORRUPT"
            );
            let alarm =
                AlarmRequest { action: AlarmAction::Activate as i32, member_id: *id, alarm: AlarmType::Corrupt as i32 };
            node.propose(RaftRequest::internal(raft_request::Request::Alarm(alarm))).await?;
        }
    }
    Ok(())
}

/// Promote each learner as soon as it is in sync with the leader (the check MemberPromote
/// makes), checked every second on the leader.
pub async fn auto_promote(node: Arc<Node>) {
    use cairn_api::cairnpb::cluster_change_request::Change;
    use cairn_api::etcdserverpb::MemberPromoteRequest;
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if !leads(&node) {
            continue;
        }
        let learners: Vec<u64> = node.raft.metrics().borrow().membership_config.membership().learner_ids().collect();
        for id in learners {
            match crate::membership::execute(&node, Change::Promote(MemberPromoteRequest { id })).await {
                Ok(_) => tracing::info!(id = %format!("{id:x}"), "learner caught up: promoted"),
                Err(e) => tracing::debug!(id = %format!("{id:x}"), "not promoting yet: {e}"),
            }
        }
    }
}

/// Clear this member's NOSPACE alarm once its store is back under the quota (after a
/// compaction and defragment), checked every few seconds.
pub async fn clear_no_space(node: Arc<Node>) {
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        if let Err(e) = node.clear_no_space().await {
            tracing::debug!("clearing NOSPACE: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_flags() {
        assert_eq!(Retention::parse("periodic", "0"), Ok(Retention::None));
        assert_eq!(Retention::parse("periodic", "1"), Ok(Retention::Period(Duration::from_secs(3600))));
        assert_eq!(Retention::parse("periodic", "30m"), Ok(Retention::Period(Duration::from_secs(1800))));
        assert_eq!(Retention::parse("revision", "1000"), Ok(Retention::Revisions(1000)));
        assert!(Retention::parse("revision", "1h").is_err());
        assert!(Retention::parse("sometimes", "1").is_err());
    }
}
