//! openraft's state machine over the MVCC store.
//!
//! Each `apply` call takes the store's write lock once, applies every entry of the
//! batch ([`crate::apply`]), and commits the store mutations together with the new
//! `last_applied` log id and membership in one atomic engine batch (not fsynced: the
//! Raft log is the durable record, and after a crash the entries after the persisted
//! `last_applied` are applied again).
//!
//! Snapshots are files under `<data-dir>/snap/`: a dump of the `Kv` and `Meta` tables
//! taken under the store's read lock, so it matches `last_applied` exactly.
//!
//! The store itself is the durable state, so openraft's periodic "build a snapshot" (which
//! lets it purge the log) needs no dump: [`StateMachine`] records the applied position as
//! the snapshot's metadata (`marker`) and dumps only when a snapshot must be *sent*
//! (`get_current_snapshot`, for a follower missing purged entries). A member alone in its
//! membership therefore never writes a dump unless a member is added (and then holds its
//! applies while it dumps); a member with peers dumps when openraft builds (a spawned task,
//! so applies go on), so a lagging follower finds one ready. Purging is safe without a
//! dump: [`super::log_store::LogStore`]'s purge makes the store durable first. At startup
//! nothing is dumped unless openraft builds because its log had been purged.

use super::{encode, storage_err, LogId, Member, StorageError, StoredMembership, TypeConfig};
use crate::apply::apply;
use crate::lease::Lessor;
use crate::state::{Headers, SmState, KEY_APPLIED, KEY_MEMBERSHIP};
use crate::watch::publish::Publisher;
use crate::watch::WatchHub;
use cairn_api::cairnpb::RaftResponse;
use cairn_store::engine::{Live, ReadView};
use cairn_store::fsutil::sync_dir;
use cairn_store::{snapshot, Engine, Table, WriteBatch};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, SnapshotMeta};
use std::io::{BufReader, BufWriter, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use tokio::sync::watch;

/// An applied batch slower than this is logged by default (etcd: "apply request took too
/// long", and its default).
pub const SLOW_APPLY: std::time::Duration = std::time::Duration::from_millis(100);

/// The newest snapshot file and its metadata.
type CurrentSnapshot = (SnapshotMeta<u64, Member>, PathBuf);

/// The state machine handed to openraft; clones share the same state.
#[derive(Clone)]
pub struct StateMachine {
    /// The shared state; gRPC handlers read the store through it.
    pub state: Arc<RwLock<SmState>>,
    /// Publishes the store revision after every applied batch.
    pub revision_tx: Arc<watch::Sender<i64>>,
    /// The watchers of this member, notified of every applied batch's events.
    pub hub: Arc<WatchHub>,
    /// Hands the events to the hub's own task (started at the first apply).
    publisher: Arc<OnceLock<Publisher>>,
    /// Lease expiry, fed with every applied lease change.
    pub lessor: Arc<Lessor>,
    snap_dir: PathBuf,
    /// The newest dump.
    current: Arc<Mutex<Option<CurrentSnapshot>>>,
    /// The newest snapshot openraft built (or installed): the position a dump it is sent
    /// must reach.
    marker: Arc<Mutex<Option<SnapshotMeta<u64, Member>>>>,
    /// An applied batch slower than this is logged (`--experimental-warning-apply-duration`).
    pub slow_apply: std::time::Duration,
    /// Paces snapshots by client requests as well as by Raft entries (see [`SnapshotPace`]).
    pub pace: SnapshotPace,
}

/// Snapshots paced by client requests, as etcd's `--snapshot-count` counts them.
///
/// openraft counts Raft entries, and group commit folds many requests into one entry
/// (about 14 under 64 clients), so its `LogsSinceLast(snapshot_count)` alone let the log
/// grow to ten times what etcd keeps before it was purged. A member alone in its membership
/// builds a snapshot at no cost (the store is the snapshot; see the module notes), so there
/// it is also built once `snapshot_count` requests have applied: `due` is notified and the
/// member's task asks openraft to build. A member with peers dumps its store when it builds,
/// so it stays paced by entries only.
#[derive(Clone, Default)]
pub struct SnapshotPace {
    /// Requests between snapshots; 0 = by entries only.
    pub every: u64,
    /// Requests applied since the last snapshot was built.
    since: Arc<std::sync::atomic::AtomicU64>,
    /// Notified when `every` requests have applied on a lone member.
    pub due: Arc<tokio::sync::Notify>,
    /// Observes how long each snapshot took to build (etcd's snapshot-save series).
    pub saved: Option<prometheus::Histogram>,
}

impl SnapshotPace {
    fn applied(&self, requests: u64, alone: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let since = self.since.fetch_add(requests, Relaxed) + requests;
        if alone && self.every > 0 && since >= self.every {
            self.due.notify_one();
        }
    }

    fn built(&self) {
        self.since.store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Client requests in an entry: a group-committed batch counts each of its requests.
fn requests_in(req: &cairn_api::cairnpb::RaftRequest) -> u64 {
    match &req.request {
        Some(cairn_api::cairnpb::raft_request::Request::Batch(b)) => b.requests.len() as u64,
        _ => 1,
    }
}

/// Create the snapshot directory, or empty it of Raft snapshot files left by an earlier run:
/// nothing reads them after a restart (a snapshot is built anew from the store when one is
/// needed), and a half-written or half-received one is garbage.
fn remove_stale_snapshots(dir: &std::path::Path) -> Result<(), cairn_store::StoreError> {
    let err = |e: std::io::Error| cairn_store::StoreError::Engine(format!("{}: {e}", dir.display()));
    cairn_store::fsutil::create_private_dir(dir).map_err(err)?;
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".snap") || name.ends_with(".snap.tmp") || name.starts_with("backup-") {
            std::fs::remove_file(&path).map_err(err)?;
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(dir = %dir.display(), removed, "removed snapshot files left by an earlier run");
        sync_dir(dir).map_err(err)?;
    }
    Ok(())
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    storage_err(ErrorSubject::StateMachine, verb, e)
}

fn snap_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    storage_err(ErrorSubject::Snapshot(None), verb, e)
}

impl StateMachine {
    /// Open the state machine on `engine`; snapshots go to `snap_dir`; watch responses are
    /// fragmented at `max_response_bytes` and headed by `headers`.
    pub fn open(
        engine: Arc<dyn Engine>,
        snap_dir: PathBuf,
        max_response_bytes: usize,
        lessor: Arc<Lessor>,
        headers: Headers,
    ) -> Result<Self, cairn_store::StoreError> {
        remove_stale_snapshots(&snap_dir)?;
        let st = SmState::open(engine)?;
        lessor.reset(st.leases.values().cloned());
        let rev = st.mvcc.current_revision();
        let (revision_tx, _) = watch::channel(rev);
        let state = Arc::new(RwLock::new(st));
        Ok(Self {
            hub: WatchHub::new(state.clone(), rev, max_response_bytes, headers),
            publisher: Arc::default(),
            lessor,
            state,
            revision_tx: Arc::new(revision_tx),
            snap_dir,
            current: Arc::new(Mutex::new(None)),
            marker: Arc::new(Mutex::new(None)),
            slow_apply: SLOW_APPLY,
            pace: SnapshotPace::default(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, SmState> {
        // A poisoned lock means a panic mid-apply; the data on disk is still consistent
        // (batches are atomic), so keep serving what is there.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SmState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The snapshot metadata of the state `st` holds.
    fn meta_of(st: &SmState) -> SnapshotMeta<u64, Member> {
        let last = st.last_applied;
        let id = match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "0-0-0".to_string(),
        };
        SnapshotMeta { last_log_id: last, last_membership: st.membership.clone(), snapshot_id: id }
    }

    /// Create (or empty) `name` in the snapshot directory, private, for reading and writing.
    fn scratch_file(&self, name: &str) -> Result<std::fs::File, StorageError> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.snap_dir.join(name))
            .map_err(|e| snap_err(ErrorVerb::Write, e))
    }

    fn set_marker(&self, meta: &SnapshotMeta<u64, Member>) {
        let mut m = self.marker.lock().unwrap_or_else(|p| p.into_inner());
        if m.as_ref().is_none_or(|old| old.last_log_id <= meta.last_log_id) {
            *m = Some(meta.clone());
        }
    }

    /// The newest dump if it reaches `marker`.
    fn dump_reaching(&self, marker: &SnapshotMeta<u64, Member>) -> Option<CurrentSnapshot> {
        let cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.clone().filter(|(meta, _)| meta.last_log_id >= marker.last_log_id)
    }

    /// Dump the store now (on a blocking thread).
    async fn dump(&self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.build()).await.map_err(|e| snap_err(ErrorVerb::Write, e))?
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let st = self.read();
        let meta = Self::meta_of(&st);
        let id = meta.snapshot_id.clone();
        let tmp = self.snap_dir.join(format!("{id}.snap.tmp"));
        let path = self.snap_dir.join(format!("{id}.snap"));
        // Applies commit before they release the lock, so the engine now holds exactly the
        // state `meta` describes. A frozen view (redb) keeps it while applies go on, and the
        // lock is released before the dump; without one (sled) writes wait for the dump.
        let engine = st.mvcc.engine().clone();
        let frozen = engine.frozen_view().map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let held = if frozen.is_some() {
            drop(st);
            None
        } else {
            Some(st)
        };
        {
            let live = Live(engine.as_ref());
            let view: &dyn ReadView = match &frozen {
                Some(v) => v.as_ref(),
                None => &live,
            };
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            let mut w = BufWriter::new(f);
            snapshot::write(view, &mut w).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            let f = w.into_inner().map_err(|e| snap_err(ErrorVerb::Write, e))?;
            f.sync_all().map_err(|e| snap_err(ErrorVerb::Write, e))?;
        }
        drop(held);
        std::fs::rename(&tmp, &path).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        sync_dir(&self.snap_dir).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let file = std::fs::File::open(&path).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        self.set_current(meta.clone(), path);
        Ok(Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) })
    }

    /// Make `path` the current snapshot and delete older snapshot files.
    fn set_current(&self, meta: SnapshotMeta<u64, Member>, path: PathBuf) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, old)) = cur.take() {
            if old != path {
                let _ = std::fs::remove_file(old);
            }
        }
        *cur = Some((meta, path));
    }

    fn publish_revision(&self, rev: i64) {
        self.revision_tx.send_replace(rev);
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// openraft uses only the metadata of what this returns (to purge the log); the data
    /// of a snapshot it sends comes from `get_current_snapshot`. See the module notes.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.pace.built();
        let _timer = self.pace.saved.as_ref().map(|h| h.start_timer());
        let (meta, alone) = {
            let st = self.read();
            (Self::meta_of(&st), st.membership.membership().nodes().count() <= 1)
        };
        if !alone {
            let snap = self.dump().await?;
            self.set_marker(&snap.meta);
            return Ok(snap);
        }
        self.set_marker(&meta);
        // No data: an empty file stands in for it.
        let empty = self.scratch_file("empty.snap.tmp")?;
        Ok(Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(empty)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = self.read();
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<super::Response>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        let mut requests = 0;
        let (rev, events, lease_changes, auth_changed, alone) = {
            let mut st = self.write();
            let auth_before = (st.auth.enabled, st.auth.revision);
            for entry in entries {
                let log_id = *entry.get_log_id();
                st.last_applied = Some(log_id);
                let resp = match entry.payload {
                    EntryPayload::Blank => RaftResponse::default(),
                    EntryPayload::Normal(req) => {
                        requests += requests_in(&req.0);
                        apply(&mut st, &req.0).map_err(|e| sm_err(ErrorVerb::Write, e))?
                    }
                    EntryPayload::Membership(m) => {
                        st.membership = StoredMembership::new(Some(log_id), m);
                        RaftResponse::default()
                    }
                };
                out.push(super::Response(resp));
            }
            let extra = st.applied_batch();
            st.mvcc.commit(extra, false).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            let auth_changed = auth_before != (st.auth.enabled, st.auth.revision);
            let alone = st.membership.membership().nodes().nth(1).is_none();
            (st.mvcc.current_revision(), st.mvcc.take_events(), st.take_lease_changes(), auth_changed, alone)
        };
        self.pace.applied(requests, alone);
        let publisher = self.publisher.get_or_init(|| Publisher::start(&self.hub));
        if auth_changed {
            // After the events published before, and before these go out: a watcher its
            // user may no longer read gets none.
            publisher.drained().await;
            let denied = {
                let st = self.read();
                self.hub.revoke(&|user, key, end| st.auth.check(user, key, end, crate::auth::Need::Read).is_ok())
            };
            self.hub.tell_denied(denied);
        }
        let took = started.elapsed();
        if took > self.slow_apply {
            // etcd's warning.
            tracing::warn!(?took, expected = ?self.slow_apply, entries = out.len(), revision = rev, "apply request took too long");
        }
        self.lessor.apply(lease_changes);
        publisher.publish(rev, events).await;
        self.publish_revision(rev);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let f = self.scratch_file("incoming.snap.tmp")?;
        Ok(Box::new(tokio::fs::File::from_std(f)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let mut file = snapshot.into_std().await;
        let this = self.clone();
        let meta = meta.clone();
        let rev = tokio::task::spawn_blocking(move || -> Result<i64, StorageError> {
            file.flush().map_err(|e| snap_err(ErrorVerb::Read, e))?;
            file.rewind().map_err(|e| snap_err(ErrorVerb::Read, e))?;
            let mut st = this.write();
            let engine = st.mvcc.engine().clone();
            st.last_applied = meta.last_log_id;
            st.membership = meta.last_membership.clone();
            let mut extra = WriteBatch::new();
            extra.put(Table::Meta, KEY_APPLIED, encode(&meta.last_log_id));
            extra.put(Table::Meta, KEY_MEMBERSHIP, encode(&meta.last_membership));
            snapshot::load(engine.as_ref(), &mut BufReader::new(file), extra)
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            st.mvcc.reload().map_err(|e| snap_err(ErrorVerb::Write, e))?;
            st.load_meta().map_err(|e| snap_err(ErrorVerb::Write, e))?;
            this.lessor.reset(st.leases.values().cloned());
            let path = this.snap_dir.join(format!("{}.snap", meta.snapshot_id));
            std::fs::rename(this.snap_dir.join("incoming.snap.tmp"), &path)
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            sync_dir(&this.snap_dir).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            let rev = st.mvcc.current_revision();
            drop(st);
            this.set_marker(&meta);
            this.set_current(meta, path);
            Ok(rev)
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))??;
        if let Some(p) = self.publisher.get() {
            p.drained().await;
        }
        self.hub.resync(rev);
        self.publish_revision(rev);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        // Nothing built since this member started (openraft asks at startup, and builds
        // one if it had purged the log).
        let Some(marker) = self.marker.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(None);
        };
        if let Some((meta, path)) = self.dump_reaching(&marker) {
            let f = tokio::fs::File::open(&path).await.map_err(|e| snap_err(ErrorVerb::Read, e))?;
            return Ok(Some(Snapshot { meta, snapshot: Box::new(f) }));
        }
        // A snapshot is to be sent and no dump reaches the built position: dump now.
        self.dump().await.map(Some)
    }
}
