//! Prompt elections after a leader stops.
//!
//! openraft's followers refuse votes for its leader lease (`election_timeout_max`: one
//! election timeout, 1.5 with lease reads; `member.rs`) after the last message from a
//! leader, and campaign only after that lease *plus* a random election timeout, so a killed
//! leader was replaced after 2.5-3 election timeouts where etcd takes 1-2. This task
//! campaigns as soon as the lease has run out, plus its turn ([`stagger`]: voters take
//! turns by id over a fifth of the lease, so two followers do not split the vote) — but
//! only when a majority of the voters, this member included, has not heard from any leader
//! for that long either, asked over the peer port (`LeaderContact`), and none answers that
//! it leads: the check etcd's pre-vote makes, so a member merely cut off from a live leader
//! does not disrupt it, and a leadership transfer (which holds heartbeats back on purpose)
//! does not go astray. A vote granted counts as hearing from a leader: a follower that voted
//! for a candidate waits for it instead of campaigning against it. openraft's own timer
//! stays as the fallback; this only moves a campaign earlier, and Raft's safety never
//! depends on timing.

use crate::replica::Replica;
use crate::router::Router;
use cairn_api::cairnpb::{LeaderContactRequest, LeaderContactResponse};
use rand::Rng;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// When this member last took an AppendEntries (heartbeats included) from a leader, or
/// granted a vote; the peer service records it, the failover task and the `LeaderContact`
/// answer read it.
#[derive(Default)]
pub struct Contact {
    last: Mutex<Option<Instant>>,
}

impl Contact {
    /// A leader's AppendEntries was just taken, or a vote granted.
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
/// openraft's leader lease, `tick` how often to look while a leader is heard.
pub async fn run(
    replica: Arc<Replica>,
    router: Arc<Router>,
    contact: Arc<Contact>,
    lease: Duration,
    tick: Duration,
    shutdown: CancellationToken,
) {
    let mut wait_until = Instant::now();
    let mut nap = tick;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(nap) => {}
        }
        nap = tick;
        let Some(silent) = contact.silent_for() else { continue };
        let voters = {
            let m = replica.raft().metrics();
            let m = m.borrow();
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            if m.state != openraft::ServerState::Follower || !voters.contains(&replica.id()) {
                continue;
            }
            voters
        };
        // Woken at the moment this member's turn comes, not at the next tick.
        let due = lease + stagger(lease, replica.id(), &voters);
        if silent < due {
            nap = (due - silent).min(tick);
            continue;
        }
        if Instant::now() < wait_until {
            continue;
        }
        let asked = tokio::select! {
            _ = shutdown.cancelled() => return,
            asked = ask_peers(&replica, &router, &voters, lease, lease / 4) => asked,
        };
        let (quiet, voters) = (1 + asked.quiet, voters.len());
        // A member that answers as leader is alive (a leadership transfer holds heartbeats
        // back on purpose); a majority that still hears a leader (or cannot be asked) is not
        // ours to overrule.
        if asked.leader_answered || quiet * 2 <= voters {
            continue;
        }
        // A vote granted while asking: someone else's campaign is under way.
        if contact.silent_for().is_some_and(|s| s < silent) {
            continue;
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
    }
}

/// How long after the lease this member campaigns: voters take turns by id, a fifth of the
/// lease apart in all (so two followers rarely split the vote by campaigning at once; the
/// first to ask wins the others' votes, and a vote granted holds a follower back), plus a
/// little randomness for voters whose turns coincide.
fn stagger(lease: Duration, me: u64, voters: &[u64]) -> Duration {
    let rank = voters.iter().filter(|v| **v < me).count() as f64;
    let turn = lease.mul_f64(0.2 * rank / voters.len().max(1) as f64);
    turn + lease.mul_f64(rand::rng().random_range(0.0..0.02))
}

/// What the other voters said.
struct Asked {
    /// How many have heard from no leader for at least the lease.
    quiet: usize,
    /// Whether one answered that it leads.
    leader_answered: bool,
}

/// Ask the other voters how long they have not heard from a leader; those that do not
/// answer within `limit` are not counted.
async fn ask_peers(replica: &Replica, router: &Router, voters: &[u64], lease: Duration, limit: Duration) -> Asked {
    let mut asks = tokio::task::JoinSet::new();
    for (id, mut c) in router.peers() {
        if !voters.contains(&id) {
            continue;
        }
        let mut req = tonic::Request::new(LeaderContactRequest { cluster_id: replica.cluster_id() });
        req.set_timeout(limit);
        asks.spawn(tokio::time::timeout(limit, async move { c.leader_contact(req).await.map(|r| r.into_inner()) }));
    }
    let mut asked = Asked { quiet: 0, leader_answered: false };
    while let Some(answer) = asks.join_next().await {
        if let Ok(Ok(Ok(r))) = answer {
            asked.leader_answered |= r.leader;
            if !r.leader && r.silent_ms >= lease.as_millis() as u64 {
                asked.quiet += 1;
            }
        }
    }
    asked
}
