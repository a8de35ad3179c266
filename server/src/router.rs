//! The one way to reach the leader. [`Router::to_leader`] runs an operation where the
//! leader is — on this member's [`Replica`] when it leads, else over the peer port with a
//! cached client — and tries again after a leader change, as the operation's [`Retry`]
//! policy allows, until the request timeout. Writes ([`Router::propose`]), linearizable
//! read points ([`Router::read_barrier`]), lease renewals and TTL queries, and
//! membership changes all go through it.
//!
//! The peer protocol says "not the leader" with a typed refusal in the status details
//! ([`Error::NotLeader`], [`is_not_leader`]), never in message text.

use crate::error::{is_not_leader, Error, Result};
use crate::raft::network::PeerChannels;
use crate::raft::Member;
use crate::replica::{Refused, Replica};
use crate::rounds::SharedCalls;
use cairn_api::cairnpb::peer_client::PeerClient;
use cairn_api::cairnpb::{raft_response, ProposeRequest, RaftRequest, RaftResponse, ReadIndexRequest};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Status;

/// How long to wait between tries while no leader is known or it just moved.
const RETRY: Duration = Duration::from_millis(50);

/// Where an operation runs.
pub enum Hop {
    /// This member leads.
    Local,
    /// Another member leads: call it with this client.
    Leader(PeerClient<Channel>),
}

/// How one try of an operation ended, when it did not succeed.
pub enum Failed {
    /// Not done, and safe to try again: this member or the one called does not lead (any
    /// more), or the call never reached it.
    NotDone,
    /// The call to the leader was cut off: it may or may not have happened.
    Lost(Error),
    /// A final answer.
    Err(Error),
}

/// Which failures an operation may be tried again after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Only what certainly did not happen (writes: never apply one twice).
    NotDone,
    /// Also a lost call (reads, renewals: doing them twice is harmless).
    Lost,
}

impl From<Status> for Failed {
    fn from(s: Status) -> Failed {
        if is_not_leader(&s) || never_sent(&s) {
            Failed::NotDone
        } else if s.code() == tonic::Code::DeadlineExceeded {
            Failed::Err(Error::Timeout)
        } else if transport_failed(&s) || matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled) {
            // The connection to the leader broke with the call under way: it may or may
            // not have happened.
            Failed::Lost(Error::ConnectionLost)
        } else {
            Failed::Err(s.into())
        }
    }
}

/// Whether the call failed in this member's own HTTP/2 stack (reset, broken pipe), not
/// with a status the other member sent.
fn transport_failed(s: &Status) -> bool {
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        if e.is::<tonic::transport::Error>() || e.is::<hyper::Error>() {
            return true;
        }
        src = e.source();
    }
    false
}

impl From<Refused> for Failed {
    fn from(r: Refused) -> Failed {
        match r {
            Refused::NotLeader(_) => Failed::NotDone,
            Refused::Unavailable(e) => {
                tracing::debug!("not committed, trying again: {e}");
                Failed::NotDone
            }
            Refused::Stopped => Failed::Err(Error::Stopped),
        }
    }
}

impl From<Error> for Failed {
    fn from(e: Error) -> Failed {
        match e {
            Error::NotLeader => Failed::NotDone,
            e => Failed::Err(e),
        }
    }
}

impl From<Refused> for Status {
    fn from(r: Refused) -> Status {
        match r {
            Refused::NotLeader(_) => Error::NotLeader.into(),
            Refused::Stopped => Status::unavailable(crate::error::msg::STOPPED),
            Refused::Unavailable(e) => Status::unavailable(e),
        }
    }
}

/// Whether a failed call never reached the other side — the connection could not be made,
/// or hyper canceled the request before writing it (the connection closed while it was
/// queued) — so that trying it again cannot apply a write twice.
pub fn never_sent(s: &Status) -> bool {
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        if e.is::<tonic::ConnectError>() || e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled) {
            return true;
        }
        src = e.source();
    }
    false
}

/// `work` until `deadline`, else [`Error::Timeout`].
async fn bounded<T>(deadline: Instant, work: impl Future<Output = T>) -> std::result::Result<T, Failed> {
    tokio::time::timeout_at(deadline, work).await.map_err(|_| Failed::Err(Error::Timeout))
}

/// An applied write's result: its apply error as `Err`.
fn applied(resp: RaftResponse) -> Result<RaftResponse> {
    match resp.response {
        Some(raft_response::Response::Error(e)) => Err(Error::Remote { code: e.code, message: e.message }),
        _ => Ok(resp),
    }
}

/// Reaches the leader (see the module docs).
#[derive(Clone)]
pub struct Router {
    replica: Arc<Replica>,
    /// The connections to the other members (shared with Raft's network).
    channels: Arc<PeerChannels>,
    request_timeout: Duration,
    /// A follower's read-index calls to the leader, shared by the reads waiting when one
    /// starts (`rounds.rs`).
    reads: Arc<SharedCalls<Result<u64>>>,
}

impl Router {
    /// A router for `replica`, calling other members over `channels`, giving up on an
    /// operation after `request_timeout`.
    pub fn new(replica: Arc<Replica>, channels: Arc<PeerChannels>, request_timeout: Duration) -> Router {
        Router { replica, channels, request_timeout, reads: Arc::default() }
    }

    /// When an operation started now gives up.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.request_timeout
    }

    /// A (cached) client of member `id`'s peer port, if it is in the membership.
    pub fn client(&self, id: u64) -> Option<PeerClient<Channel>> {
        let member = self.replica.member(id)?;
        self.client_of(id, &member)
    }

    /// A client of member `id` at `member`'s peer URLs (over the shared connection).
    pub fn client_of(&self, id: u64, member: &Member) -> Option<PeerClient<Channel>> {
        self.channels.client(id, member)
    }

    /// Every other member with a client: `(id, client)`.
    pub fn peers(&self) -> Vec<(u64, PeerClient<Channel>)> {
        let me = self.replica.id();
        let membership = self.replica.raft().metrics().borrow().membership_config.clone();
        membership
            .membership()
            .nodes()
            .filter(|(id, _)| **id != me)
            .filter_map(|(id, m)| Some((*id, self.client_of(*id, m)?)))
            .collect()
    }

    /// Run `op` where the leader is, trying again after a leader change as `retry`
    /// allows, until `deadline`. Gives up with NO_LEADER if no leader is known then,
    /// else with a timeout.
    pub async fn to_leader<T, F, Fut>(&self, deadline: Instant, retry: Retry, mut op: F) -> Result<T>
    where
        F: FnMut(Hop) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failed>>,
    {
        loop {
            let hop = match self.replica.leader() {
                Some(l) if l == self.replica.id() => Some(Hop::Local),
                Some(l) => self.client(l).map(Hop::Leader),
                None => None,
            };
            if let Some(hop) = hop {
                match op(hop).await {
                    Ok(v) => return Ok(v),
                    Err(Failed::NotDone) => {}
                    Err(Failed::Lost(_)) if retry == Retry::Lost && Instant::now() < deadline => {}
                    Err(Failed::Lost(e) | Failed::Err(e)) => return Err(e),
                }
            }
            if Instant::now() >= deadline {
                return Err(if self.replica.leader().is_none() { Error::NoLeader } else { Error::Timeout });
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Replicate a write through Raft and return its applied result (apply errors come
    /// back as `Err`). From a follower the write goes to the leader, and is answered once
    /// this member has applied it too (as etcd), so what the client does next here sees it.
    pub async fn propose(&self, req: RaftRequest) -> Result<RaftResponse> {
        let deadline = self.deadline();
        let resp = self
            .to_leader(deadline, Retry::NotDone, |hop| {
                let req = req.clone();
                async move {
                    match hop {
                        // A leader cut off from its quorum commits nothing: give up at the
                        // deadline, as etcd (the write may still commit later).
                        Hop::Local => Ok(bounded(deadline, self.replica.propose_local(req)).await??),
                        Hop::Leader(mut c) => {
                            let mut r = tonic::Request::new(ProposeRequest {
                                cluster_id: self.replica.cluster_id(),
                                request: Some(req),
                            });
                            r.set_timeout(deadline.saturating_duration_since(Instant::now()));
                            let resp = c.propose(r).await?.into_inner();
                            let _ = self.replica.wait_applied(resp.log_index, deadline, "forwarded write").await;
                            Ok(resp)
                        }
                    }
                }
            })
            .await?;
        applied(resp)
    }

    /// Replicate a write of this member's leader-only duties (revoking expired leases) only
    /// if this member leads: refused ([`Error::NotLeader`]) rather than forwarded, so a duty
    /// still running on leadership already lost can never reach the new leader.
    pub async fn propose_as_leader(&self, req: RaftRequest) -> Result<RaftResponse> {
        let deadline = self.deadline();
        let resp = match bounded(deadline, self.replica.propose_local(req)).await.map_err(|_| Error::Timeout)? {
            Ok(resp) => resp,
            Err(_) => return Err(Error::NotLeader),
        };
        applied(resp)
    }

    /// Wait until this member has applied everything committed before the call, as
    /// confirmed by the leader (read index): after it, a local read is linearizable.
    pub async fn read_barrier(&self) -> Result<()> {
        let deadline = self.deadline();
        let index = if self.replica.leader() == Some(self.replica.id()) {
            self.read_index(deadline).await?
        } else {
            self.shared_read_index(deadline).await?
        };
        self.replica.wait_applied(index, deadline, "read barrier").await
    }

    /// A read index from a call to the leader shared with the other reads waiting here
    /// ([`SharedCalls`]).
    async fn shared_read_index(&self, deadline: Instant) -> Result<u64> {
        let router = self.clone();
        let call = move || {
            let router = router.clone();
            async move { router.read_index(router.deadline()).await }
        };
        match tokio::time::timeout_at(deadline, self.reads.join(call)).await {
            Ok(Some(index)) => index,
            Ok(None) => Err(Error::Stopped),
            // As `to_leader` says it.
            Err(_) if self.replica.leader().is_none() => Err(Error::NoLeader),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// The leader's read index, obtained after the call (from this member's own rounds when
    /// it leads).
    async fn read_index(&self, deadline: Instant) -> Result<u64> {
        self.to_leader(deadline, Retry::Lost, |hop| async move {
            match hop {
                Hop::Local => Ok(bounded(deadline, self.replica.read_index_local()).await??),
                Hop::Leader(mut c) => {
                    let mut r = tonic::Request::new(ReadIndexRequest { cluster_id: self.replica.cluster_id() });
                    r.set_timeout(deadline.saturating_duration_since(Instant::now()));
                    Ok(c.read_index(r).await?.into_inner().index)
                }
            }
        })
        .await
    }
}
