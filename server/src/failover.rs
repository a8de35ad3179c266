//! Prompt elections after a leader stops.
//!
//! openraft's followers refuse votes for its leader lease (`election_timeout_max`) after the
//! last message from a leader, and campaign only after that lease *plus* a random election
//! timeout, so a killed leader was replaced after 2.5-3 election timeouts where etcd takes
//! 1-2. This task campaigns as soon as the lease has run out — but only when a majority of
//! the voters (this member included) has not heard from any leader for that long either,
//! asked over the peer port (`LeaderContact`): the check etcd's pre-vote makes, so a member
//! merely cut off from a live leader does not disrupt it this way. A small random delay keeps
//! followers from campaigning at the same instant. openraft's own timer stays as the
//! fallback; this only moves a campaign earlier, and Raft's safety never depends on timing.

use crate::replica::Replica;
use crate::router::Router;
use cairn_api::cairnpb::{LeaderContactRequest, LeaderContactResponse};
use rand::Rng;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// When this member last took an AppendEntries (heartbeats included) from a leader; the
/// peer service records it, the failover task and the `LeaderContact` answer read it.
#[derive(Default)]
pub struct Contact {
    last: Mutex<Option<Instant>>,
}

impl Contact {
    /// A leader's AppendEntries was just taken.
    pub fn heard(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// How long since then (`None`: never, since this process started).
    pub fn silent_for(&self) -> Option<Duration> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed())
    }

    /// The answer to a peer's `LeaderContact`.
    pub fn answer(&self, leader: bool) -> LeaderContactResponse {
        let silent_ms = self.silent_for().map_or(u64::MAX, |d| d.as_millis().min(u64::MAX as u128) as u64);
        LeaderContactResponse { silent_ms, leader }
    }
}

/// Watch for a silent leader and campaign promptly (see the module notes). `lease` is
/// openraft's leader lease, `tick` how often to look (the heartbeat interval).
pub async fn run(
    replica: Arc<Replica>,
    router: Arc<Router>,
    contact: Arc<Contact>,
    lease: Duration,
    tick: Duration,
    shutdown: CancellationToken,
) {
    let mut wait_until = Instant::now();
    let mut jitter = random_jitter(lease);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let Some(silent) = contact.silent_for() else { continue };
        if silent < lease + jitter || Instant::now() < wait_until {
            continue;
        }
        let voters = {
            let m = replica.raft().metrics();
            let m = m.borrow();
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            if m.state != openraft::ServerState::Follower || !voters.contains(&replica.id()) {
                continue;
            }
            voters
        };
        let quiet = 1 + quiet_peers(&replica, &router, &voters, lease, lease / 4).await;
        let voters = voters.len();
        if quiet * 2 <= voters {
            continue; // a majority still hears a leader (or cannot be asked): not ours to end
        }
        tracing::info!(
            silent_ms = silent.as_millis() as u64,
            quiet,
            voters,
            "no leader heard by a majority for the leader lease: campaigning"
        );
        if let Err(e) = replica.raft().trigger().elect().await {
            tracing::debug!("campaign: {e}");
            return;
        }
        // One try per lease; openraft's own timer covers a campaign that went nowhere.
        wait_until = Instant::now() + lease;
        jitter = random_jitter(lease);
    }
}

fn random_jitter(lease: Duration) -> Duration {
    lease.mul_f64(rand::rng().random_range(0.0..0.2))
}

/// How many other voters have heard from no leader for at least `lease` (the rest, and
/// those that do not answer within `limit`, are not counted).
async fn quiet_peers(replica: &Replica, router: &Router, voters: &[u64], lease: Duration, limit: Duration) -> usize {
    let mut asks = tokio::task::JoinSet::new();
    for (id, mut c) in router.peers() {
        if !voters.contains(&id) {
            continue;
        }
        let mut req = tonic::Request::new(LeaderContactRequest { cluster_id: replica.cluster_id() });
        req.set_timeout(limit);
        asks.spawn(async move { c.leader_contact(req).await.map(|r| r.into_inner()) });
    }
    let mut quiet = 0;
    while let Some(answer) = asks.join_next().await {
        if let Ok(Ok(r)) = answer {
            if !r.leader && r.silent_ms >= lease.as_millis() as u64 {
                quiet += 1;
            }
        }
    }
    quiet
}
