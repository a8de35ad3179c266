//! Batching on the leader: group commit for writes and shared read-index rounds.
//!
//! openraft 0.9 appends (and fsyncs) each proposal before it takes the next, so one
//! client write per entry would mean one fsync per write. The write loop instead takes
//! every request queued while the batch before is in flight and proposes them as one
//! entry (`RaftRequest.batch`), applied in order with a revision each: one fsync, and one
//! replication round, covers the whole batch. One batch is in flight at a time. openraft
//! 0.9's core appends one entry at a time and waits for the disk each time, so a second
//! batch in flight did not overlap anything: it only split the waiting writes into two
//! smaller batches, each paying the core's append and turnaround (measured with 16
//! writers on one member: 12,500 puts/s with two in flight, 17,700 with one;
//! docs/PERFORMANCE.md, "One batch in flight"). A write that finds the slot free proposes
//! itself from its caller's task, without passing through the loop: a lone client's write
//! then costs no task hand-off before Raft (measured: a fifth more single-client puts per
//! second).
//!
//! Most clients wait for each answer before their next write, so the writers a batch
//! answered come back a moment after it frees the slot, just too late for the batch
//! proposed at once from what queued meanwhile: the writers then alternate in two half-size
//! batches, each paying the flush. So after a batch of 2 to [`MAX_AWAITED`] writes, the next
//! waits until as many are queued, for at most as long as that batch took in Raft (longer
//! could not beat proposing at once and again after it), and a write finding the slot free
//! meanwhile goes through the loop rather than alone (measured with 16 writers: 7.7 writes
//! per batch before, 11-15 after, and 10-17% more puts a second; docs/PERFORMANCE.md,
//! "Waiting for the writers a batch answered"). Larger batches are not waited for: there a
//! batch's own apply and answers cost more than the flush a bigger one would share (64
//! clients lost 5% when they were).
//!
//! Linearizable reads likewise share rounds: every read waiting when a round starts is
//! served by that round's read index; reads arriving during a round wait for the next,
//! so each read's index is taken after the read arrived.
//!
//! With `--experimental-lease-reads` a successful round also wins a *leader lease*: the
//! round's heartbeats were sent after it started at `t0` and a quorum answered them, and
//! openraft's followers refuse to vote for anyone until `election_timeout_max` after the
//! last heartbeat they received, so no other leader can exist before `t0 +
//! election_timeout_max`. Until `t0 + election_timeout_min` (a third less, the margin for
//! clocks running at different rates) reads are served without a round, at the leader's
//! last log index (every entry committed so far is in its log; the read waits until that
//! index is applied), as long as Raft still reports this member leading in the same term
//! and membership. A member restarted with its data refuses votes and does not campaign
//! for `election_timeout_max` (`member.rs`), since it forgot the heartbeats it had seen.
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
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most requests in one batch.
const MAX_BATCH: usize = 1024;
/// Most encoded bytes in one batch (a request alone may be larger).
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Batches in flight at once (see the module notes for why one).
const IN_FLIGHT: usize = 1;
/// The largest batch whose writers the next batch waits for (see `write_loop`).
const MAX_AWAITED: usize = 16;

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

/// Where Raft last reported this member to stand: what the read floor and a leader lease
/// are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standing {
    /// The current term.
    pub term: u64,
    /// The last applied log index.
    pub applied: u64,
    /// Whether this member leads.
    pub leading: bool,
    /// The last log index.
    pub last_log: u64,
    /// The log index of the membership in effect.
    pub membership: Option<u64>,
}

impl Standing {
    /// Whether this member still leads in the term and membership of `won`.
    fn continues(&self, won: &Standing) -> bool {
        self.leading && self.term == won.term && self.membership == won.membership
    }
}

/// What the batching loops need of Raft (openraft's [`Raft`]; a scripted fake in tests).
pub trait Consensus: Clone + Send + Sync + 'static {
    /// Propose one entry; its log index and applied result.
    fn write(&self, entry: RaftRequest) -> impl Future<Output = Result<(u64, RaftResponse), NotDone>> + Send;
    /// The log index a linearizable read must wait for, confirmed by a quorum now.
    fn read_index(&self) -> impl Future<Output = Result<u64, NotDone>> + Send;
    /// Where this member stands now.
    fn standing(&self) -> Standing;
}

impl Consensus for Raft {
    async fn write(&self, entry: RaftRequest) -> Result<(u64, RaftResponse), NotDone> {
        match self.client_write(Request(entry)).await {
            Ok(r) => Ok((r.log_id.index, r.data.0)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(forward(f.leader_id, f.leader_node)),
            Err(RaftError::APIError(e)) => Err(NotDone::Other(e.to_string())),
            Err(RaftError::Fatal(_)) => Err(NotDone::Stopped),
        }
    }

    async fn read_index(&self) -> Result<u64, NotDone> {
        match self.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(forward(f.leader_id, f.leader_node))
            }
            Err(RaftError::APIError(e)) => Err(NotDone::Other(e.to_string())),
            Err(RaftError::Fatal(_)) => Err(NotDone::Stopped),
        }
    }

    fn standing(&self) -> Standing {
        let m = self.metrics();
        let m = m.borrow();
        Standing {
            term: m.current_term,
            applied: m.last_applied.map_or(0, |l| l.index),
            leading: m.current_leader == Some(m.id),
            last_log: m.last_log_index.unwrap_or(0),
            membership: m.membership_config.log_id().map(|l| l.index),
        }
    }
}

/// Handle to the batching loops of one member.
#[derive(Clone)]
pub struct Batcher<C: Consensus = Raft> {
    writes: mpsc::Sender<(RaftRequest, WriteReply)>,
    reads: mpsc::Sender<ReadReply>,
    raft: C,
    /// The batch slot, shared by the loop and direct proposals.
    slot: Slot,
    shutdown: CancellationToken,
}

impl<C: Consensus> Batcher<C> {
    /// Start the loops on `tasks`; they end with `shutdown`. With `lease` (the election
    /// timeout's lower bound), a read-index round wins a leader lease that long (see the
    /// module notes).
    pub fn start(
        raft: C,
        floor: Option<ReadFloor>,
        lease: Option<Duration>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Batcher<C> {
        let (wtx, wrx) = mpsc::channel(8192);
        let (rtx, rrx) = mpsc::channel(8192);
        let slot = Slot { in_flight: Arc::new(Semaphore::new(IN_FLIGHT)), last: Arc::new(LastBatch::new()) };
        tasks.spawn(write_loop(raft.clone(), slot.clone(), wrx, tasks.clone(), shutdown.clone()));
        tasks.spawn(read_loop(raft.clone(), floor, lease, rrx, shutdown.clone()));
        Batcher { writes: wtx, reads: rtx, raft, slot, shutdown }
    }

    /// Propose `req` (possibly together with others) and wait for its applied result.
    pub async fn propose(&self, req: RaftRequest) -> Result<RaftResponse, NotDone> {
        // A free slot means no batch is in flight and nothing waits for one: a released
        // slot goes to the loop first if it is waiting with queued writes. A write finding
        // it free just after a batch answered several writers joins the loop too, to go
        // with the others on their way back (see `write_loop`).
        if self.shutdown.is_cancelled() {
            return Err(NotDone::Stopped);
        }
        let alone = self.slot.last.awaited().is_none();
        if let Some(_slot) = alone.then(|| self.slot.in_flight.try_acquire().ok()).flatten() {
            let started = Instant::now();
            let written = self.raft.write(req).await;
            self.slot.last.record(1, started);
            let (index, mut resp) = written?;
            resp.log_index = index;
            return Ok(resp);
        }
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

/// What the batch that last held the slot left behind: how many writers it answered, and
/// until when more writes are worth waiting for (see `write_loop`).
#[derive(Debug)]
struct LastBatch {
    base: Instant,
    answered: AtomicUsize,
    /// Microseconds after `base` until which to wait.
    until_us: AtomicU64,
}

impl LastBatch {
    fn new() -> LastBatch {
        LastBatch { base: Instant::now(), answered: AtomicUsize::new(0), until_us: AtomicU64::new(0) }
    }

    /// Record a batch of `answered` writes proposed at `started` and answered now, before
    /// it frees the slot: its writers are awaited for as long again as it took.
    fn record(&self, answered: usize, started: Instant) {
        let now = Instant::now();
        let until = now + (now - started);
        self.answered.store(answered, Ordering::Relaxed);
        self.until_us.store((until - self.base).as_micros() as u64, Ordering::Relaxed);
    }

    /// How many writes the next batch should wait for, and until when; `None` if it should
    /// not wait (the batch before answered one writer or more than [`MAX_AWAITED`], or its
    /// window has passed).
    fn awaited(&self) -> Option<(usize, Instant)> {
        let answered = self.answered.load(Ordering::Relaxed);
        let until = self.base + Duration::from_micros(self.until_us.load(Ordering::Relaxed));
        ((2..=MAX_AWAITED).contains(&answered) && Instant::now() < until).then_some((answered, until))
    }
}

/// The batch slot and what its last holder left behind.
#[derive(Clone)]
struct Slot {
    in_flight: Arc<Semaphore>,
    last: Arc<LastBatch>,
}

/// The writes gathered for one batch, and their encoded size.
#[derive(Default)]
struct Gathered {
    writes: Vec<(RaftRequest, WriteReply)>,
    bytes: usize,
}

impl Gathered {
    fn push(&mut self, w: (RaftRequest, WriteReply)) {
        self.bytes += w.0.encoded_len();
        self.writes.push(w);
    }

    /// Whether the batch takes no more writes ([`MAX_BATCH`], [`MAX_BATCH_BYTES`]).
    fn full(&self) -> bool {
        self.writes.len() >= MAX_BATCH || self.bytes >= MAX_BATCH_BYTES
    }
}

async fn write_loop<C: Consensus>(
    raft: C,
    slot: Slot,
    mut rx: mpsc::Receiver<(RaftRequest, WriteReply)>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        // Writes queue only while the slot is taken; the first one waits for it, and every
        // write queued until it is free goes into the same batch.
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = slot.in_flight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let mut batch = Gathered::default();
        batch.push(first);
        while !batch.full() {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        // The writers the batch before just answered are likely on their way back (most
        // clients wait for an answer before their next write) and arrive a moment after the
        // slot is free: proposed now, the batch would leave without them, and they would
        // make the next one — two half batches, each paying the disk's flush and Raft's
        // turnaround, instead of one. So while fewer are queued than it answered, wait for
        // more, for at most as long as it took in Raft after it answered (waiting longer
        // could not beat proposing now and again after it).
        if let Some((expected, deadline)) = slot.last.awaited() {
            while batch.writes.len() < expected && !batch.full() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline) => break,
                    m = rx.recv() => match m {
                        Some(m) => batch.push(m),
                        None => break,
                    },
                }
            }
        }
        let raft = raft.clone();
        let last = slot.last.clone();
        tasks.spawn(async move {
            let started = Instant::now();
            let (mut reqs, replies): (Vec<RaftRequest>, Vec<WriteReply>) = batch.writes.into_iter().unzip();
            let single = reqs.len() == 1;
            let entry = match reqs.pop() {
                Some(r) if single => r,
                last => {
                    reqs.extend(last);
                    RaftRequest::internal(raft_request::Request::Batch(RaftBatch { requests: reqs }))
                }
            };
            let answered = replies.len();
            match raft.write(entry).await {
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
            last.record(answered, started);
            drop(permit);
        });
    }
}

async fn read_loop<C: Consensus>(
    raft: C,
    mut floor: Option<ReadFloor>,
    lease_len: Option<Duration>,
    mut rx: mpsc::Receiver<ReadReply>,
    shutdown: CancellationToken,
) {
    // The standing a lease was won in, and when it ends.
    let mut lease: Option<(Standing, Instant)> = None;
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let mut waiting = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiting.push(w);
        }
        let now = raft.standing();
        if let Some(f) = floor {
            // The term before asking: if it is the restored term, so was the read's. Once
            // a newer term began or the floor is applied, it is dropped for good. A term
            // *below* the floor's is not a newer one: Raft's metrics start at term 0 and
            // catch up only once its core has read the storage, and a read can arrive
            // first (found by the chaos suite: a restarted leader answered from its
            // checkpoint with the floor already dropped).
            if now.term > f.term || now.term == f.term && now.applied >= f.index {
                floor = None;
            }
        }
        let leased = lease.filter(|(won, until)| Instant::now() < *until && now.continues(won));
        let result = match leased {
            Some(_) => Ok(now.last_log),
            None => {
                let started = Instant::now();
                let read = raft.read_index().await;
                // The round's heartbeats left after `started`, within one term and membership.
                lease = match lease_len {
                    Some(len) if read.is_ok() && raft.standing().continues(&now) => Some((now, started + len)),
                    _ => None,
                };
                read
            }
        };
        let result = result.map(|read| read.max(floor.map_or(0, |f| f.index)));
        for w in waiting {
            let _ = w.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::etcdserverpb::PutRequest;
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::sync::Notify;

    /// A scripted Raft: every entry is kept as it arrives, then waits for `go` (one permit
    /// per write),
    /// and each request of a batch is answered with its position; read indexes count up.
    #[derive(Clone)]
    struct Fake {
        entries: Arc<Mutex<Vec<RaftRequest>>>,
        go: Arc<Semaphore>,
        reads: Arc<Mutex<u64>>,
        read_go: Arc<Notify>,
        hold_reads: Arc<std::sync::atomic::AtomicBool>,
        standing: Arc<Mutex<Standing>>,
    }

    impl Default for Fake {
        /// Writes go through at once unless a test takes the permits away.
        fn default() -> Fake {
            Fake {
                entries: Arc::default(),
                go: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS / 2)),
                reads: Arc::default(),
                read_go: Arc::default(),
                hold_reads: Arc::default(),
                standing: Arc::new(Mutex::new(Standing {
                    term: 2,
                    applied: 0,
                    leading: true,
                    last_log: 40,
                    membership: Some(1),
                })),
            }
        }
    }

    fn answer(i: usize) -> RaftResponse {
        RaftResponse { revision: i as i64 + 1, ..Default::default() }
    }

    impl Consensus for Fake {
        async fn write(&self, entry: RaftRequest) -> Result<(u64, RaftResponse), NotDone> {
            let index = {
                let mut e = self.entries.lock().unwrap();
                e.push(entry.clone());
                e.len() as u64
            };
            let permit = self.go.acquire().await.map_err(|_| NotDone::Stopped)?;
            permit.forget();
            let resp = match entry.request {
                Some(raft_request::Request::Batch(b)) => RaftResponse {
                    response: Some(raft_response::Response::Batch(cairn_api::cairnpb::RaftBatchResponse {
                        responses: (0..b.requests.len()).map(answer).collect(),
                    })),
                    ..Default::default()
                },
                _ => answer(0),
            };
            Ok((index, resp))
        }

        async fn read_index(&self) -> Result<u64, NotDone> {
            if self.hold_reads.load(std::sync::atomic::Ordering::SeqCst) {
                self.read_go.notified().await;
            }
            let mut r = self.reads.lock().unwrap();
            *r += 1;
            Ok(*r)
        }

        fn standing(&self) -> Standing {
            *self.standing.lock().unwrap()
        }
    }

    fn put(k: &str) -> RaftRequest {
        RaftRequest::internal(raft_request::Request::Put(PutRequest { key: k.into(), ..Default::default() }))
    }

    fn start(fake: &Fake, floor: Option<ReadFloor>) -> (Batcher<Fake>, TaskTracker, CancellationToken) {
        start_leased(fake, floor, None)
    }

    fn start_leased(
        fake: &Fake,
        floor: Option<ReadFloor>,
        lease: Option<Duration>,
    ) -> (Batcher<Fake>, TaskTracker, CancellationToken) {
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        (Batcher::start(fake.clone(), floor, lease, &tasks, stop.clone()), tasks, stop)
    }

    fn rounds(fake: &Fake) -> u64 {
        *fake.reads.lock().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_serves_reads_at_the_last_log_index_without_rounds_until_it_ends() {
        let fake = Fake::default();
        let (b, _tasks, _stop) = start_leased(&fake, None, Some(Duration::from_secs(1)));
        assert_eq!(b.read_index().await.unwrap(), 1, "the first read asks a quorum");
        for _ in 0..5 {
            assert_eq!(b.read_index().await.unwrap(), 40, "then the last log index, no round");
        }
        fake.standing.lock().unwrap().last_log = 45;
        assert_eq!(b.read_index().await.unwrap(), 45, "entries appended since are waited for");
        assert_eq!(rounds(&fake), 1);
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(b.read_index().await.unwrap(), 2, "an ended lease takes a round again");
        assert_eq!(b.read_index().await.unwrap(), 45, "which wins a new lease");
        assert_eq!(rounds(&fake), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_term_membership_or_lost_leadership_ends_the_lease() {
        let fake = Fake::default();
        let (b, _tasks, _stop) = start_leased(&fake, None, Some(Duration::from_secs(60)));
        let changes: [fn(&mut Standing); 3] = [|s| s.term += 1, |s| s.membership = Some(9), |s| s.leading = !s.leading];
        for (i, change) in changes.iter().enumerate() {
            b.read_index().await.unwrap();
            let before = rounds(&fake);
            change(&mut fake.standing.lock().unwrap());
            b.read_index().await.unwrap();
            assert_eq!(rounds(&fake), before + 1, "change {i} did not end the lease");
            fake.standing.lock().unwrap().leading = true;
        }
        // Without the option every read takes a round.
        let plain = Fake::default();
        let (b, _tasks, _stop) = start(&plain, None);
        for _ in 0..3 {
            b.read_index().await.unwrap();
        }
        assert_eq!(rounds(&plain), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_that_saw_the_term_change_wins_no_lease() {
        let fake = Fake::default();
        fake.hold_reads.store(true, std::sync::atomic::Ordering::SeqCst);
        let (b, _tasks, _stop) = start_leased(&fake, None, Some(Duration::from_secs(60)));
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.read_index().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        fake.standing.lock().unwrap().term = 3;
        fake.hold_reads.store(false, std::sync::atomic::Ordering::SeqCst);
        fake.read_go.notify_one();
        first.await.unwrap().unwrap();
        b.read_index().await.unwrap();
        assert_eq!(rounds(&fake), 2, "the term moved during the round: no lease from it");
        b.read_index().await.unwrap();
        assert_eq!(rounds(&fake), 2, "the second round, in one term, won one");
    }

    /// Wait until `n` entries have been proposed.
    async fn proposed(fake: &Fake, n: usize) {
        while fake.entries.lock().unwrap().len() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn writes_queued_behind_the_batch_in_flight_become_one_entry_answered_in_order() {
        let fake = Fake { go: Arc::new(Semaphore::new(0)), ..Default::default() };
        let (b, _tasks, _stop) = start(&fake, None);
        // One write in flight, held by the fake until released.
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.propose(put("a")).await }
        });
        proposed(&fake, 1).await;
        // Five more queue behind it (the loop waits for the slot).
        let queued: Vec<_> = (0..5)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.propose(put(&format!("q{i}"))).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.entries.lock().unwrap().len(), 1, "nothing more proposed while one is in flight");
        fake.go.add_permits(2);
        assert!(first.await.unwrap().is_ok());
        let mut rest = Vec::new();
        for q in queued {
            rest.push(q.await.unwrap());
        }
        let entries = fake.entries.lock().unwrap().clone();
        assert_eq!(entries.len(), 2, "one single entry, then one batch: {entries:?}");
        let Some(raft_request::Request::Batch(batch)) = &entries[1].request else { panic!("a batch: {entries:?}") };
        assert_eq!(batch.requests.len(), 5);
        // Each caller gets its own answer (its position in the batch) and the batch's index.
        let revisions: Vec<i64> = rest.iter().map(|r| r.as_ref().expect("applied").revision).collect();
        let mut sorted = revisions.clone();
        sorted.sort();
        assert_eq!(sorted, vec![1, 2, 3, 4, 5]);
        assert!(rest.iter().all(|r| r.as_ref().is_ok_and(|r| r.log_index == 2)));
        // With nothing in flight the loop does not hold the slot, so a lone write finds it
        // free and proposes itself.
        assert_eq!(b.slot.in_flight.available_permits(), IN_FLIGHT, "the slot is free again");
        fake.go.add_permits(1);
        b.propose(put("alone")).await.unwrap();
        assert_eq!(fake.entries.lock().unwrap().len(), 3);
    }

    /// A lone write, `n` queued behind it, then the batch of those `n`, which Raft takes
    /// 100 ms over (for a fake whose writes wait for `go`).
    async fn answer_a_batch_of(b: &Batcher<Fake>, fake: &Fake, n: usize) {
        let spawn = |k: String| {
            let b = b.clone();
            tokio::spawn(async move { b.propose(put(&k)).await })
        };
        let first = spawn("a".into());
        proposed(fake, 1).await;
        let queued: Vec<_> = (0..n).map(|i| spawn(format!("b{i}"))).collect();
        tokio::time::sleep(Duration::from_millis(1)).await;
        fake.go.add_permits(1);
        first.await.unwrap().unwrap();
        proposed(fake, 2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        fake.go.add_permits(1);
        for t in queued {
            t.await.unwrap().unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn writers_answered_together_are_awaited_and_proposed_together() {
        let fake = Fake { go: Arc::new(Semaphore::new(0)), ..Default::default() };
        let (b, _tasks, _stop) = start(&fake, None);
        let spawn = |k: String| {
            let b = b.clone();
            tokio::spawn(async move { b.propose(put(&k)).await })
        };
        let entries = || fake.entries.lock().unwrap().clone();
        answer_a_batch_of(&b, &fake, 3).await;
        // Its writers come back one by one, 10 ms apart: the first finds the slot free but
        // does not propose alone, and the three go as one entry.
        let mut back = Vec::new();
        for i in 0..3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(entries().len(), 2, "nothing proposed before the third is back");
            back.push(spawn(format!("c{i}")));
        }
        proposed(&fake, 3).await;
        let Some(raft_request::Request::Batch(batch)) = &entries()[2].request else {
            panic!("a batch: {:?}", entries())
        };
        assert_eq!(batch.requests.len(), 3);
        // That batch takes 20 ms; then only one writer comes back. It waits for the others
        // no longer than the batch took, and goes alone.
        tokio::time::sleep(Duration::from_millis(20)).await;
        fake.go.add_permits(1);
        for t in back {
            t.await.unwrap().unwrap();
        }
        let answered = Instant::now();
        fake.go.add_permits(1);
        spawn("d".into()).await.unwrap().unwrap();
        let waited = answered.elapsed();
        assert!(waited >= Duration::from_millis(19) && waited < Duration::from_millis(30), "waited {waited:?}");
        assert_eq!(entries().len(), 4);
        assert!(matches!(entries()[3].request, Some(raft_request::Request::Put(_))), "alone: {:?}", entries()[3]);
        // One writer answered last: the next lone write proposes itself at once.
        fake.go.add_permits(1);
        let t = Instant::now();
        b.propose(put("e")).await.unwrap();
        assert_eq!(t.elapsed(), Duration::ZERO);
        assert_eq!(entries().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn writers_of_a_batch_larger_than_the_awaited_are_not_waited_for() {
        let fake = Fake { go: Arc::new(Semaphore::new(0)), ..Default::default() };
        let (b, _tasks, _stop) = start(&fake, None);
        answer_a_batch_of(&b, &fake, MAX_AWAITED + 1).await;
        // Past that size a batch's own apply and answers outweigh the flush a bigger one
        // would share: the next write proposes itself at once.
        fake.go.add_permits(1);
        let t = Instant::now();
        b.propose(put("next")).await.unwrap();
        assert_eq!(t.elapsed(), Duration::ZERO);
        let entries = fake.entries.lock().unwrap().clone();
        assert_eq!(entries.len(), 3);
        assert!(matches!(entries[2].request, Some(raft_request::Request::Put(_))));
    }

    #[tokio::test]
    async fn the_read_floor_holds_in_the_restored_term_until_applied() {
        let fake = Fake::default();
        let set = |term, applied| *fake.standing.lock().unwrap() = Standing { term, applied, ..Default::default() };
        set(7, 10);
        let (b, _tasks, _stop) = start(&fake, Some(ReadFloor { term: 7, index: 50 }));
        // Raft's own read index (1) is below what was acknowledged before the restart.
        assert_eq!(b.read_index().await.unwrap(), 50);
        // A new term: its first entry lies past everything before it, the floor is gone.
        set(8, 10);
        assert_eq!(b.read_index().await.unwrap(), 2);
        set(7, 10);
        assert_eq!(b.read_index().await.unwrap(), 3, "dropped for good");
    }

    #[tokio::test]
    async fn the_read_floor_holds_before_raft_reports_its_term() {
        let fake = Fake::default();
        let set = |term, applied| *fake.standing.lock().unwrap() = Standing { term, applied, ..Default::default() };
        // Just restarted: Raft's metrics still say term 0, nothing applied.
        set(0, 0);
        let (b, _tasks, _stop) = start(&fake, Some(ReadFloor { term: 7, index: 50 }));
        assert_eq!(b.read_index().await.unwrap(), 50, "the floor holds while the term is unknown");
        set(7, 10);
        assert_eq!(b.read_index().await.unwrap(), 50, "and in the restored term");
        set(7, 50);
        assert_eq!(b.read_index().await.unwrap(), 3, "until applied");
    }

    #[tokio::test]
    async fn the_floor_is_dropped_once_applied_past_it() {
        let fake = Fake::default();
        *fake.standing.lock().unwrap() = Standing { term: 7, applied: 60, ..Default::default() };
        let (b, _tasks, _stop) = start(&fake, Some(ReadFloor { term: 7, index: 50 }));
        assert_eq!(b.read_index().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn reads_arriving_during_a_round_wait_for_the_next_one() {
        let fake = Fake::default();
        fake.hold_reads.store(true, std::sync::atomic::Ordering::SeqCst);
        let (b, _tasks, _stop) = start(&fake, None);
        let early = tokio::spawn({
            let b = b.clone();
            async move { b.read_index().await }
        });
        // The first round is now waiting on the fake; these arrive during it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let late: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { b.read_index().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        fake.hold_reads.store(false, std::sync::atomic::Ordering::SeqCst);
        fake.read_go.notify_one();
        assert_eq!(early.await.unwrap().unwrap(), 1);
        for l in late {
            assert_eq!(l.await.unwrap().unwrap(), 2, "one shared round after the one they missed");
        }
    }

    #[tokio::test]
    async fn a_stopped_batcher_says_so() {
        let fake = Fake::default();
        let (b, tasks, stop) = start(&fake, None);
        stop.cancel();
        tasks.close();
        tasks.wait().await;
        assert!(matches!(b.propose(put("x")).await, Err(NotDone::Stopped)));
        assert!(matches!(b.read_index().await, Err(NotDone::Stopped)));
    }
}
