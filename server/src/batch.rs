//! Batching on the leader: group commit for writes and shared read-index rounds.
//!
//! openraft 0.9 appends (and fsyncs) each proposal before it takes the next, so one
//! client write per entry would mean one fsync per write. The write loop instead takes
//! every request queued while earlier batches are in flight and proposes them as one
//! entry (`RaftRequest.batch`), applied in order with a revision each: one fsync, and one
//! replication round, covers the whole batch. Two batches may be in flight, so applying
//! one overlaps appending the next.
//!
//! Linearizable reads likewise share rounds: every read waiting when a round starts is
//! served by that round's read index; reads arriving during a round wait for the next,
//! so each read's index is taken after the read arrived.
//!
//! A member that led when it stopped comes back as leader of the same term (openraft
//! restores it without an election), with its commit index at its last checkpoint: the
//! commit index is not stored. openraft's read index is then the larger of that stale
//! commit index and the term's first entry, both possibly older than writes acknowledged
//! before the crash. While the member leads in that restored term, the read index is
//! therefore raised to the last log index it started with ([`ReadFloor`]): every entry
//! committed before the crash is in the leader's log, and the leader of that term commits
//! its whole log. A later term's first entry already lies past everything committed
//! before it, so the floor applies to the restored term only.

use crate::raft::{Member, Raft, Request};
use cairn_api::cairnpb::{raft_request, raft_response, RaftBatch, RaftRequest, RaftResponse};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use prost::Message;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most requests in one batch.
const MAX_BATCH: usize = 1024;
/// Most encoded bytes in one batch (a request alone may be larger).
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Batches in flight at once.
const IN_FLIGHT: usize = 2;

/// Why a batched proposal or read index did not complete here.
#[derive(Debug, Clone)]
pub enum NotDone {
    /// This member is not the leader; the leader, if known.
    Forward(Option<Box<(u64, Member)>>),
    /// Raft has stopped.
    Stopped,
    /// Anything else (for example no quorum); the message says what.
    Other(String),
}

type WriteReply = oneshot::Sender<Result<RaftResponse, NotDone>>;
type ReadReply = oneshot::Sender<Result<u64, NotDone>>;

/// The least read index while this member leads in the term it was leading when it
/// started (see the module notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadFloor {
    /// The term restored at startup.
    pub term: u64,
    /// The last log index at startup.
    pub index: u64,
}

/// Handle to the batching loops of one member.
#[derive(Clone)]
pub struct Batcher {
    writes: mpsc::Sender<(RaftRequest, WriteReply)>,
    reads: mpsc::Sender<ReadReply>,
}

impl Batcher {
    /// Start the loops on `tasks`; they end with `shutdown`.
    pub fn start(raft: Raft, floor: Option<ReadFloor>, tasks: &TaskTracker, shutdown: CancellationToken) -> Batcher {
        let (wtx, wrx) = mpsc::channel(8192);
        let (rtx, rrx) = mpsc::channel(8192);
        tasks.spawn(write_loop(raft.clone(), wrx, tasks.clone(), shutdown.clone()));
        tasks.spawn(read_loop(raft, floor, rrx, shutdown));
        Batcher { writes: wtx, reads: rtx }
    }

    /// Propose `req` (possibly together with others) and wait for its applied result.
    pub async fn propose(&self, req: RaftRequest) -> Result<RaftResponse, NotDone> {
        let (tx, rx) = oneshot::channel();
        self.writes.send((req, tx)).await.map_err(|_| NotDone::Stopped)?;
        rx.await.map_err(|_| NotDone::Stopped)?
    }

    /// A read index (log index) obtained after this call began.
    pub async fn read_index(&self) -> Result<u64, NotDone> {
        let (tx, rx) = oneshot::channel();
        self.reads.send(tx).await.map_err(|_| NotDone::Stopped)?;
        rx.await.map_err(|_| NotDone::Stopped)?
    }
}

fn forward(leader_id: Option<u64>, leader_node: Option<Member>) -> NotDone {
    NotDone::Forward(leader_id.zip(leader_node).map(Box::new))
}

async fn write_loop(
    raft: Raft,
    mut rx: mpsc::Receiver<(RaftRequest, WriteReply)>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let mut bytes = first.0.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(m) => {
                    bytes += m.0.encoded_len();
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let (mut reqs, replies): (Vec<RaftRequest>, Vec<WriteReply>) = batch.into_iter().unzip();
            let single = reqs.len() == 1;
            let entry = match reqs.pop() {
                Some(r) if single => r,
                last => {
                    reqs.extend(last);
                    RaftRequest::internal(raft_request::Request::Batch(RaftBatch { requests: reqs }))
                }
            };
            let result = match raft.client_write(Request(entry)).await {
                Ok(r) => Ok((r.log_id.index, r.data.0)),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Err(forward(f.leader_id, f.leader_node))
                }
                Err(RaftError::APIError(e)) => Err(NotDone::Other(e.to_string())),
                Err(RaftError::Fatal(_)) => Err(NotDone::Stopped),
            };
            match result {
                Ok((index, mut resp)) if single => {
                    if let Some(tx) = replies.into_iter().next() {
                        resp.log_index = index;
                        let _ = tx.send(Ok(resp));
                    }
                }
                Ok((index, RaftResponse { response: Some(raft_response::Response::Batch(b)), .. }))
                    if b.responses.len() == replies.len() =>
                {
                    for (tx, mut r) in replies.into_iter().zip(b.responses) {
                        r.log_index = index;
                        let _ = tx.send(Ok(r));
                    }
                }
                Ok((_, other)) => {
                    let e = NotDone::Other(format!("unexpected batch result {other:?}"));
                    for tx in replies {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for tx in replies {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

async fn read_loop(
    raft: Raft,
    mut floor: Option<ReadFloor>,
    mut rx: mpsc::Receiver<ReadReply>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let mut waiting = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiting.push(w);
        }
        if let Some(f) = floor {
            // The term before asking: if it is the restored term, so was the read's. Once
            // the term moved on or the floor is applied, it is dropped for good.
            let m = raft.metrics();
            let m = m.borrow();
            if m.current_term != f.term || m.last_applied.map_or(0, |l| l.index) >= f.index {
                floor = None;
            }
        }
        let result = match raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map_or(0, |l| l.index).max(floor.map_or(0, |f| f.index))),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(forward(f.leader_id, f.leader_node))
            }
            Err(RaftError::APIError(e)) => Err(NotDone::Other(e.to_string())),
            Err(RaftError::Fatal(_)) => Err(NotDone::Stopped),
        };
        for w in waiting {
            let _ = w.send(result.clone());
        }
    }
}
