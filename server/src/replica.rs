//! This member's copy of the replicated state: Raft, the state machine over the MVCC
//! store, the batcher (group commit, shared read-index rounds) and the read floor.
//!
//! A [`Replica`] acts on this member only: [`Replica::propose_local`] and
//! [`Replica::read_index_local`] succeed on the leader and say [`Refused::NotLeader`]
//! elsewhere; reaching the leader from a follower is the [`crate::router`]'s job. State is
//! read through [`Replica::with_state`]; status readers (health, metrics, streams that
//! require a leader) see only the [`RaftStatus`] trait.

use crate::batch::{Batcher, NotDone};
use crate::error::{Error, Result};
use crate::lease::Lessor;
use crate::raft::state_machine::StateMachine;
use crate::raft::{Member, Raft};
use crate::state::{Headers, SmState};
use crate::watch::WatchHub;
use cairn_api::cairnpb::{RaftRequest, RaftResponse};
use cairn_api::etcdserverpb::{HashKvResponse, RangeRequest, RangeResponse, ResponseHeader};
use cairn_store::{Engine, Table};
use std::io::Seek;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why this member did not do what only the leader does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Another member leads (if known: its id and how to reach it), or leadership is moving.
    NotLeader(Option<(u64, Member)>),
    /// The member is shutting down or Raft stopped.
    Stopped,
    /// Not committed (no quorum, a leader change under way): may be tried again.
    Unavailable(String),
}

/// What status readers may know of Raft (as etcd's `RaftStatusGetter`).
pub trait RaftStatus: Send + Sync {
    /// The current leader's id, if one is known.
    fn leader(&self) -> Option<u64>;
    /// The index of the last applied log entry.
    fn applied_index(&self) -> u64;
}

/// This member's replica (see the module docs).
pub struct Replica {
    raft: Raft,
    sm: StateMachine,
    engine: Arc<dyn Engine>,
    batcher: Batcher,
    headers: Headers,
    snap_dir: PathBuf,
    /// Set while leadership is being handed over: new proposals and reads wait.
    paused: AtomicBool,
}

impl RaftStatus for Replica {
    fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    fn applied_index(&self) -> u64 {
        self.raft.metrics().borrow().last_applied.map_or(0, |l| l.index)
    }
}

impl Replica {
    /// The replica over `raft` and its state machine `sm`.
    pub fn new(
        raft: Raft,
        sm: StateMachine,
        engine: Arc<dyn Engine>,
        batcher: Batcher,
        headers: Headers,
        snap_dir: PathBuf,
    ) -> Replica {
        Replica { raft, sm, engine, batcher, headers, snap_dir, paused: AtomicBool::new(false) }
    }

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.headers.member_id()
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.headers.cluster_id()
    }

    /// The Raft instance (for the peer port's Raft RPCs and membership changes).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The watch hub fed by the state machine.
    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.sm.hub
    }

    /// The lessor fed by the state machine.
    pub fn lessor(&self) -> &Arc<Lessor> {
        &self.sm.lessor
    }

    /// The storage engine (sizes, defragmentation).
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Publishes the store revision after every applied batch.
    pub fn revisions(&self) -> tokio::sync::watch::Receiver<i64> {
        self.sm.revision_tx.subscribe()
    }

    /// Run `f` on the replicated state under its read lock (short: applies wait).
    pub fn with_state<T>(&self, f: impl FnOnce(&SmState) -> T) -> T {
        let st = self.sm.state.read().unwrap_or_else(|p| p.into_inner());
        f(&st)
    }

    /// A response header at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        self.headers.at(revision)
    }

    /// A response header at the current revision.
    pub fn current_header(&self) -> ResponseHeader {
        self.header(self.with_state(|st| st.mvcc.current_revision()))
    }

    /// The current leader's id, if known.
    pub fn leader(&self) -> Option<u64> {
        RaftStatus::leader(self)
    }

    /// Member `id` as Raft knows it (its peer URLs), if it is in the membership.
    pub fn member(&self, id: u64) -> Option<Member> {
        self.raft.metrics().borrow().membership_config.membership().get_node(&id).cloned()
    }

    /// Hold new proposals and reads back (`true`) while leadership moves, or let them go.
    pub fn pause(&self, on: bool) {
        self.paused.store(on, Ordering::SeqCst);
    }

    fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Propose a write on this member, which must lead; its applied result.
    pub async fn propose_local(&self, req: RaftRequest) -> std::result::Result<RaftResponse, Refused> {
        if self.paused() {
            return Err(Refused::NotLeader(None));
        }
        self.batcher.propose(req).await.map_err(refused)
    }

    /// The log index a linearizable read must observe, as the leader sees it now.
    pub async fn read_index_local(&self) -> std::result::Result<u64, Refused> {
        if self.paused() {
            return Err(Refused::NotLeader(None));
        }
        self.batcher.read_index().await.map_err(refused)
    }

    /// Wait until this member has applied log index `index` (bounded by `deadline`).
    ///
    /// Every linearizable read and forwarded write comes here, mostly with `index` applied
    /// already: the applied index is read in place from openraft's metrics channel.
    /// (openraft's own `Wait` clones the whole `RaftMetrics` — membership, replication
    /// progress — on every look: a dozen allocations per read on a busy member.)
    pub async fn wait_applied(&self, index: u64, deadline: Instant, why: &str) -> Result<()> {
        let mut metrics = self.raft.metrics();
        loop {
            if metrics.borrow_and_update().last_applied.is_some_and(|l| l.index >= index) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Stopped),
                Err(_) => {
                    tracing::debug!(index, why, "not applied before the deadline");
                    return Err(Error::Timeout);
                }
            }
        }
    }

    /// A range read from the local store. The key revisions come from the index under the
    /// store's lock; a large result's values are then read from a frozen view of the engine
    /// taken under the same lock, after releasing it, so writers are not held back while
    /// thousands of values load.
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse> {
        /// Below this many values, loading them under the lock is cheaper than a view.
        const LARGE: usize = 256;
        enum Planned {
            Done(RangeResponse),
            Load(cairn_store::mvcc::RangeKeys, Box<dyn cairn_store::engine::ReadView>),
        }
        let planned = self.with_state(|st| -> Result<Planned> {
            let keys = st.mvcc.range_keys_at(r)?;
            if keys.len() >= LARGE {
                // (sled has no frozen view: then the values load under the lock.)
                if let Some(view) = self.engine.frozen_view()? {
                    return Ok(Planned::Load(keys, view));
                }
            }
            Ok(Planned::Done(st.mvcc.finish_range(keys)?))
        })?;
        match planned {
            Planned::Done(resp) => Ok(resp),
            Planned::Load(keys, view) => Ok(keys.finish(&|rev| cairn_store::mvcc::load_from(view.as_ref(), rev))?),
        }
    }

    /// A CRC-32 of the MVCC history up to `revision` (0: the current one) — every
    /// revision of every key not compacted away — with the compact revision and the
    /// current revision. Members that applied the same log agree on it (HashKV, the basis
    /// of corruption checks). Read from a frozen view, so writes go on meanwhile.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64)> {
        let (view, compacted, current) =
            self.with_state(|st| (self.engine.frozen_view(), st.mvcc.compact_revision(), st.mvcc.current_revision()));
        let view = view?;
        let at = if revision > 0 { revision } else { current };
        if at > current {
            return Err(cairn_store::StoreError::FutureRev.into());
        }
        if revision > 0 && revision < compacted {
            return Err(cairn_store::StoreError::Compacted.into());
        }
        let end = cairn_store::Revision { main: at + 1, sub: 0 }.to_bytes();
        let mut h = crc32fast::Hasher::new();
        h.update(&compacted.to_be_bytes());
        let mut visit = |k: &[u8], v: &[u8]| {
            h.update(k);
            h.update(v);
            Ok(true)
        };
        match view {
            Some(v) => v.scan(Table::Kv, &[], Some(&end), &mut visit)?,
            // No frozen view (sled): scan under the state lock so no apply interleaves.
            None => self.with_state(|_| self.engine.scan(Table::Kv, &[], Some(&end), &mut visit))?,
        }
        Ok((h.finalize(), compacted, current))
    }

    /// HashKV at `revision` (0: the current one) as etcd answers it.
    pub fn hash_kv_response(&self, revision: i64) -> Result<HashKvResponse> {
        let (hash, compact_revision, current) = self.hash_kv(revision)?;
        let hash_revision = if revision > 0 { revision } else { current };
        Ok(HashKvResponse { header: Some(self.header(current)), hash, compact_revision, hash_revision })
    }

    /// Write a backup of the store (as `Maintenance.Snapshot` streams it) to an unnamed
    /// file under the snapshot directory; returns it rewound, its size and the revision.
    pub fn write_backup(&self) -> Result<(std::fs::File, u64, i64)> {
        use std::os::unix::fs::OpenOptionsExt;
        let internal = |e: std::io::Error| Error::Internal(format!("snapshot: {e}"));
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = self.snap_dir.join(format!("backup-{nanos}.tmp"));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(internal)?;
        // Unlinked at once: the open file is all that is needed, and nothing is left behind.
        let _ = std::fs::remove_file(&path);
        let position = |st: &SmState| st.last_applied.map(|l| (l.index, l.leader_id.term));
        let (view, rev, applied) =
            self.with_state(|st| (self.engine.frozen_view(), st.mvcc.current_revision(), position(st)));
        let size = match view? {
            Some(v) => cairn_store::backup::write(v.as_ref(), &mut file, applied)?,
            // No frozen view (sled): hold applies back while the backup is written.
            None => self.with_state(|st| {
                let live = cairn_store::engine::Live(self.engine.as_ref());
                cairn_store::backup::write(&live, &mut file, position(st))
            })?,
        };
        file.rewind().map_err(internal)?;
        Ok((file, size, rev))
    }

    /// Defragment this member's engine file.
    pub async fn defragment(&self) -> Result<()> {
        let engine = self.engine.clone();
        let before = engine.size_on_disk();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || engine.defragment())
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        let after = self.engine.size_on_disk();
        tracing::info!(before, after, took = ?started.elapsed(), "defragmented");
        Ok(())
    }

    /// Keep response headers' term current and count leader changes, until `shutdown`.
    pub async fn follow_terms(self: Arc<Self>, leader_changes: prometheus::IntCounter, shutdown: CancellationToken) {
        // Server metrics change with the vote, leader or membership only; the full metrics
        // change with every write, and waking this task per write costs the write path.
        let mut m = self.raft.server_metrics();
        let mut leader = None;
        let mut leaderless = true;
        loop {
            let (term, now) = {
                let m = m.borrow();
                (m.vote.leader_id().term, m.current_leader)
            };
            self.headers.set_term(term);
            // A new leader id counts (the first one too), a lost one does not.
            if now.is_some() && now != leader {
                leader_changes.inc();
                let fmt = |l: Option<u64>| l.map_or_else(|| "none".to_string(), |l| format!("{l:x}"));
                tracing::info!("leader changed from {} to {} at term {term}", fmt(leader), fmt(now));
                leader = now;
            } else if now.is_none() && !leaderless {
                if let Some(l) = leader {
                    tracing::warn!("lost the leader {l:x} at term {term}");
                }
            }
            leaderless = now.is_none();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = m.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Stop Raft and the watch hub (the last step of a member's shutdown).
    pub async fn stop(&self) {
        self.sm.hub.stop().await;
        let _ = self.raft.shutdown().await;
    }
}

fn refused(e: NotDone) -> Refused {
    match e {
        NotDone::Forward(leader) => Refused::NotLeader(leader.map(|b| *b)),
        NotDone::Stopped => Refused::Stopped,
        NotDone::Other(e) => Refused::Unavailable(e),
    }
}
