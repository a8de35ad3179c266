//! Runtime membership and leadership transfer: etcd's MemberAdd/Remove/Update/Promote and
//! MoveLeader on top of openraft's joint consensus. Every change is executed by the
//! leader, one at a time (a follower forwards it over the peer port), after etcd's
//! checks: valid and unique peer URLs, enough started members to keep a quorum, at most
//! one learner, a learner promoted only once it is in sync.
//!
//! Also here: how a member started with `--initial-cluster-state existing` learns the id
//! `member add` gave it, and how a member notices it was removed (it stops, as etcd's do).

use crate::error::{msg, Error, Result};
use crate::raft::network::Contacts;
use crate::raft::Member;
use crate::replica::Replica;
use crate::router::{Hop, Retry, Router};
use cairn_api::cairnpb::cluster_change_request::Change;
use cairn_api::cairnpb::peer_client::PeerClient;
use cairn_api::cairnpb::{CampaignRequest, ClusterChangeRequest, ClusterChangeResponse, MembersRequest};
use cairn_store::ids;
use openraft::ChangeMembers;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// A member that answered a Raft RPC this recently counts as started (etcd's health interval).
const STARTED_WITHIN: Duration = Duration::from_secs(5);
/// etcd allows one learner at a time.
const MAX_LEARNERS: usize = 1;
/// A learner is in sync once it has this fraction of the leader's log (etcd's rule).
const LEARNER_READY: f64 = 0.9;

fn urls_ok(urls: &[String]) -> bool {
    !urls.is_empty()
        && urls.iter().all(|u| {
            (u.starts_with("http://") || u.starts_with("https://"))
                && u.parse::<tonic::codegen::http::Uri>().is_ok_and(|x| x.host().is_some() && x.port_u16().is_some())
        })
}

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// Timing the membership code follows.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `--election-timeout`.
    pub election_timeout: Duration,
    /// `--heartbeat-interval`.
    pub heartbeat: Duration,
    /// openraft's leader lease: followers refuse votes this long after a leader's last message.
    pub raft_lease: Duration,
}

/// Runtime membership of this member's cluster (see the module docs).
pub struct Membership {
    replica: Arc<Replica>,
    router: Arc<Router>,
    /// When each peer last answered a Raft RPC.
    contacts: Contacts,
    /// `--initial-cluster-token` (salt of new member ids).
    cluster_token: String,
    timing: Timing,
    /// Held while a change runs (one at a time).
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Membership {
    /// Membership changes made through `router`.
    pub fn new(
        replica: Arc<Replica>,
        router: Arc<Router>,
        contacts: Contacts,
        cluster_token: String,
        timing: Timing,
    ) -> Self {
        Membership { replica, router, contacts, cluster_token, timing, one_at_a_time: tokio::sync::Mutex::new(()) }
    }

    /// Execute `change` on the leader (forwarding it there from a follower) and wait until
    /// this member has applied it, so a MemberList here shows it.
    pub async fn change(&self, change: Change) -> Result<ClusterChangeResponse> {
        let deadline = self.router.deadline() + 2 * self.timing.election_timeout;
        let resp = self
            .router
            .to_leader(deadline, Retry::NotDone, |hop| {
                let change = change.clone();
                async move {
                    match hop {
                        Hop::Local => Ok(self.execute(change).await?),
                        Hop::Leader(mut c) => {
                            let mut r = tonic::Request::new(ClusterChangeRequest {
                                cluster_id: self.replica.cluster_id(),
                                change: Some(change),
                            });
                            r.set_timeout(deadline.saturating_duration_since(Instant::now()));
                            Ok(c.change_cluster(r).await?.into_inner())
                        }
                    }
                }
            })
            .await?;
        if resp.log_index > 0 {
            let _ = self.replica.wait_applied(resp.log_index, deadline, "member change").await;
        }
        Ok(resp)
    }

    /// Execute a change on this member, which must lead ([`Error::NotLeader`] if it does not).
    pub async fn execute(&self, change: Change) -> Result<ClusterChangeResponse> {
        let _one_at_a_time = self.one_at_a_time.lock().await;
        let m = self.replica.raft().metrics().borrow().clone();
        if m.current_leader != Some(self.replica.id()) {
            return Err(Error::NotLeader);
        }
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners: BTreeSet<u64> = membership.learner_ids().collect();
        let nodes: BTreeMap<u64, Member> = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let started = |id: &u64| {
            *id == self.replica.id()
                || self
                    .contacts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(id)
                    .is_some_and(|t| t.elapsed() < STARTED_WITHIN)
        };
        let url_taken = |urls: &[String], except: u64| {
            nodes.iter().any(|(id, n)| *id != except && n.peer_urls.iter().any(|u| urls.contains(u)))
        };
        let not_found = || Error::etcd(Code::NotFound, msg::MEMBER_NOT_FOUND);
        let mut member_id = 0;
        let res = match change {
            Change::Add(r) => {
                if !urls_ok(&r.peer_ur_ls) {
                    return Err(Error::etcd(Code::InvalidArgument, msg::BAD_MEMBER_URLS));
                }
                if url_taken(&r.peer_ur_ls, 0) {
                    return Err(Error::etcd(Code::FailedPrecondition, msg::PEER_URL_EXISTS));
                }
                if r.is_learner && learners.len() >= MAX_LEARNERS {
                    return Err(Error::etcd(Code::FailedPrecondition, msg::TOO_MANY_LEARNERS));
                }
                // The new voter has not started: the members up now must still be a quorum.
                if !r.is_learner && voters.iter().filter(|id| started(id)).count() < quorum(voters.len() + 1) {
                    return Err(Error::etcd(Code::FailedPrecondition, msg::NOT_ENOUGH_STARTED));
                }
                let salt = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs())
                    .max(1);
                member_id = ids::member_id(&r.peer_ur_ls, &self.cluster_token, salt);
                if nodes.contains_key(&member_id) {
                    return Err(Error::etcd(Code::FailedPrecondition, msg::MEMBER_EXISTS));
                }
                let member = Member { name: String::new(), peer_urls: r.peer_ur_ls.clone() };
                tracing::info!(id = %format!("{member_id:x}"), urls = ?r.peer_ur_ls, learner = r.is_learner, "adding member");
                if r.is_learner {
                    self.replica.raft().add_learner(member_id, member, false).await
                } else {
                    self.replica
                        .raft()
                        .change_membership(ChangeMembers::AddVoters(BTreeMap::from([(member_id, member)])), true)
                        .await
                }
            }
            Change::Remove(r) => {
                if !nodes.contains_key(&r.id) {
                    return Err(not_found());
                }
                tracing::info!(id = %format!("{:x}", r.id), "removing member");
                if voters.contains(&r.id) {
                    let left = voters.iter().filter(|id| **id != r.id && started(id)).count();
                    if left < quorum(voters.len() - 1) {
                        return Err(Error::etcd(Code::FailedPrecondition, msg::NOT_ENOUGH_STARTED));
                    }
                    self.replica
                        .raft()
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([r.id])), false)
                        .await
                } else {
                    self.replica
                        .raft()
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([r.id])), false)
                        .await
                }
            }
            Change::Update(r) => {
                let Some(old) = nodes.get(&r.id) else { return Err(not_found()) };
                if !urls_ok(&r.peer_ur_ls) {
                    return Err(Error::etcd(Code::InvalidArgument, msg::BAD_MEMBER_URLS));
                }
                if url_taken(&r.peer_ur_ls, r.id) {
                    return Err(Error::etcd(Code::FailedPrecondition, msg::PEER_URL_EXISTS));
                }
                let member = Member { name: old.name.clone(), peer_urls: r.peer_ur_ls.clone() };
                tracing::info!(id = %format!("{:x}", r.id), urls = ?r.peer_ur_ls, "updating member");
                self.replica
                    .raft()
                    .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(r.id, member)])), true)
                    .await
            }
            Change::Promote(r) => {
                if !nodes.contains_key(&r.id) {
                    return Err(not_found());
                }
                if voters.contains(&r.id) {
                    return Err(Error::etcd(Code::FailedPrecondition, msg::NOT_LEARNER));
                }
                let leader_match = m.last_log_index.unwrap_or(0) as f64;
                let learner_match =
                    m.replication.as_ref().and_then(|rep| rep.get(&r.id).cloned().flatten()).map_or(0, |l| l.index)
                        as f64;
                if learner_match < leader_match * LEARNER_READY {
                    return Err(Error::etcd(Code::FailedPrecondition, msg::LEARNER_NOT_READY));
                }
                tracing::info!(id = %format!("{:x}", r.id), "promoting learner");
                self.replica.raft().change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([r.id])), true).await
            }
            Change::MoveLeader(r) => {
                self.move_leader(r.target_id, &voters).await?;
                return Ok(ClusterChangeResponse::default());
            }
        };
        match res {
            Ok(w) => Ok(ClusterChangeResponse { member_id, log_index: w.log_id.index }),
            Err(e) => {
                tracing::warn!("membership change failed: {e}");
                Err(match e.forward_to_leader() {
                    Some(_) => Error::NotLeader,
                    None => Error::etcd(Code::FailedPrecondition, &format!("etcdserver: {e}")),
                })
            }
        }
    }

    /// Hand leadership to `target` (a voter) and return once it leads.
    ///
    /// openraft 0.9 has no transfer call, so the leader does it by hand: it stops taking new
    /// proposals and reads (they wait and then go to the new leader), waits until `target`
    /// has its whole log, stops heartbeats so the followers' leader lease lapses, and asks
    /// `target` to campaign: with the longest log and no live lease anywhere it wins. The
    /// pause is about 1.5 election timeouts.
    async fn move_leader(&self, target: u64, voters: &BTreeSet<u64>) -> Result<()> {
        if target == self.replica.id() {
            return Ok(());
        }
        if !voters.contains(&target) {
            return Err(Error::etcd(Code::FailedPrecondition, msg::BAD_TRANSFEREE));
        }
        let mut client = self.router.client(target).ok_or(Error::NoLeader)?;
        struct Resume<'a>(&'a Replica);
        impl Drop for Resume<'_> {
            fn drop(&mut self) {
                self.0.raft().runtime_config().heartbeat(true);
                self.0.pause(false);
            }
        }
        let et = self.timing.election_timeout;
        tracing::info!(target = %format!("{target:x}"), "moving leadership");
        self.replica.pause(true);
        let _resume = Resume(&self.replica);
        // 1. The transferee catches up with everything proposed before the pause.
        let caught_up = Instant::now() + 2 * et;
        loop {
            let m = self.replica.raft().metrics().borrow().clone();
            let matched = m.replication.as_ref().and_then(|r| r.get(&target).cloned().flatten()).map(|l| l.index);
            if matched.is_some() && matched == m.last_log_index {
                break;
            }
            if Instant::now() >= caught_up {
                return Err(Error::etcd(Code::Unavailable, msg::LEADER_TRANSFER_TIMEOUT));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // 2. Let the leader lease lapse everywhere.
        self.replica.raft().runtime_config().heartbeat(false);
        tokio::time::sleep(self.timing.raft_lease + et / 5).await;
        // 3. The transferee campaigns.
        let mut r = tonic::Request::new(CampaignRequest { cluster_id: self.replica.cluster_id(), target });
        r.set_timeout(et);
        client.campaign(r).await.map_err(Error::from)?;
        let won =
            self.replica.raft().wait(Some(3 * et)).metrics(|m| m.current_leader == Some(target), "leader moved").await;
        match won {
            Ok(_) => {
                tracing::info!(target = %format!("{target:x}"), "leadership moved");
                Ok(())
            }
            Err(_) => Err(Error::etcd(Code::Unavailable, msg::LEADER_TRANSFER_TIMEOUT)),
        }
    }

    /// Stop this member once it is no longer in the cluster (etcd: "the member has been
    /// permanently removed from the cluster"). It learns so from a committed membership
    /// without it or, as the leader stops replicating to a removed member before it sees the
    /// final membership, from the other members once it has been without a leader for a
    /// while. A member joining sees older memberships without itself first, so only a
    /// removal after it was a member counts.
    pub async fn watch_removal(self: Arc<Self>, shutdown: CancellationToken) {
        let mut was_member = false;
        let mut leaderless_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let is_member =
                self.replica.with_state(|st| st.membership.membership().get_node(&self.replica.id()).is_some());
            let removed = if is_member {
                was_member = true;
                leaderless_since = match self.replica.leader() {
                    Some(_) => None,
                    None => leaderless_since.or(Some(Instant::now())),
                };
                match leaderless_since {
                    Some(t) if t.elapsed() > 3 * self.timing.election_timeout => {
                        leaderless_since = Some(Instant::now());
                        self.removed_per_peers().await
                    }
                    _ => false,
                }
            } else {
                was_member
            };
            if removed {
                tracing::warn!("the member has been permanently removed from the cluster; stopping");
                // Let the final heartbeats carry the commit to the remaining members first.
                tokio::time::sleep(4 * self.timing.heartbeat).await;
                shutdown.cancel();
                return;
            }
        }
    }

    /// Whether another member of this cluster, with a membership at least as new as this
    /// member's, says this member is not in it.
    async fn removed_per_peers(&self) -> bool {
        let m = self.replica.raft().metrics().borrow().membership_config.clone();
        let mine = m.log_id().map_or(0, |l| l.index);
        for (_, mut c) in self.router.peers() {
            let mut req = tonic::Request::new(MembersRequest {});
            req.set_timeout(Duration::from_secs(1));
            if let Ok(r) = c.members(req).await {
                let r = r.into_inner();
                if r.cluster_id == self.replica.cluster_id() && r.membership_index > mine {
                    return !r.members.iter().any(|m| m.id == self.replica.id());
                }
            }
        }
        false
    }

    /// Start an election on this member now (the transferee's side of MoveLeader).
    pub async fn campaign(&self) -> Result<()> {
        self.replica.raft().trigger().elect().await.map_err(|e| Error::Internal(e.to_string()))
    }
}

/// The id `member add` gave this member and the cluster's id, asked of the members of
/// `--initial-cluster` (for `--initial-cluster-state existing`).
pub async fn discover(config: &crate::Config) -> anyhow::Result<(u64, u64)> {
    let mut mine = config.advertise_peer_urls.clone();
    mine.sort();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last_err = String::from("no other member in --initial-cluster");
    let dial = crate::raft::network::PeerDial::of(config)?;
    loop {
        for urls in config.initial_cluster.values() {
            let mut theirs = urls.clone();
            theirs.sort();
            if theirs == mine {
                continue;
            }
            let member = Member { name: String::new(), peer_urls: urls.clone() };
            let Some(ch) = crate::raft::network::peer_channel(&member, &dial) else {
                continue;
            };
            let mut req = tonic::Request::new(MembersRequest {});
            req.set_timeout(Duration::from_secs(2));
            match PeerClient::new(ch).members(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    for m in &r.members {
                        let mut urls = m.peer_urls.clone();
                        urls.sort();
                        if urls == mine {
                            return Ok((m.id, r.cluster_id));
                        }
                    }
                    anyhow::bail!(
                        "this member ({}) is not in the cluster; add it first: etcdctl member add {} --peer-urls={}",
                        config.name,
                        config.name,
                        config.advertise_peer_urls.join(",")
                    );
                }
                Err(e) => last_err = format!("{}: {}", urls.join(","), e.message()),
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!("could not reach a member of --initial-cluster to join the cluster ({last_err})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
