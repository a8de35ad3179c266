//! `--force-new-cluster`: restart a member from its data as a one-member cluster — the
//! documented way out of a lost quorum.
//!
//! Before Raft starts, a membership entry naming only this member (with its name and peer
//! URLs) is appended to the end of its log. Raft takes the last membership in the log as the
//! one in force, so the member is the only voter: it elects itself, and its first commit
//! commits everything before the new entry too. Unlike etcd, which drops the entries past
//! its commit index, every entry in the log is kept: an entry the old leader had not
//! committed either was never acknowledged (applying it is the outcome Raft allows for a
//! write whose answer was lost) or was acknowledged and must not be lost. The cluster id and
//! every key, revision and lease stay; the other members are gone from the membership and
//! must be wiped before they are added again (`member add`), as with etcd.

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::{Member, TypeConfig};
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::{Entry, EntryPayload, LogId, Membership};
use std::collections::{BTreeMap, BTreeSet};

/// What [`force_new_cluster`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Forced {
    /// No data yet: the member bootstraps as usual.
    Empty,
    /// The member was already the only voter, with no learners.
    AlreadyAlone,
    /// A membership of this member alone was appended at this log index.
    At(u64),
}

/// Make member `id` (named `me` if the membership does not know it) the only member.
pub async fn force_new_cluster(
    id: u64,
    me: Member,
    log: &mut LogStore,
    sm: &mut StateMachine,
) -> anyhow::Result<Forced> {
    let state = log.get_log_state().await?;
    let (applied, applied_membership) = sm.applied_state().await?;
    let Some(last) = state.last_log_id.or(applied) else { return Ok(Forced::Empty) };
    // The membership in force: the last one in the log, else the applied one.
    let first = state.last_purged_log_id.map_or(0, |l| l.index + 1);
    let mut current = applied_membership.membership().clone();
    for e in log.try_get_log_entries(first..=last.index).await? {
        if let EntryPayload::Membership(m) = e.payload {
            current = m;
        }
    }
    let voters: BTreeSet<u64> = current.voter_ids().collect();
    let alone = voters == BTreeSet::from([id]) && current.learner_ids().next().is_none();
    if alone {
        return Ok(Forced::AlreadyAlone);
    }
    let node = current.get_node(&id).cloned().unwrap_or(me);
    let membership = Membership::<u64, Member>::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, node)]));
    let entry = Entry::<TypeConfig> {
        log_id: LogId::new(last.leader_id, last.index + 1),
        payload: EntryPayload::Membership(membership),
    };
    let index = entry.log_id.index;
    log.append_now(&[entry])?;
    let dropped: Vec<String> =
        voters.iter().copied().chain(current.learner_ids()).filter(|m| *m != id).map(|m| format!("{m:x}")).collect();
    tracing::warn!(
        index,
        ?dropped,
        "--force-new-cluster: this member is now a one-member cluster; wipe the others before adding them again"
    );
    Ok(Forced::At(index))
}
