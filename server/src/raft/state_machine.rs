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

use super::{decode, encode, storage_err, LogId, Member, StorageError, StoredMembership, TypeConfig};
use crate::apply::apply;
use crate::lease::Lessor;
use crate::watch::WatchHub;
use cairn_api::cairnpb::{LeaseRecord, MemberAttributes, RaftResponse};
use cairn_store::engine::{Live, ReadView};
use cairn_store::fsutil::sync_dir;
use cairn_store::{snapshot, Engine, Mvcc, Table, WriteBatch};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, SnapshotMeta};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, BufWriter, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

const KEY_APPLIED: &[u8] = b"raft_applied";
const KEY_MEMBERSHIP: &[u8] = b"raft_membership";
const ATTR_PREFIX: &[u8] = b"member_attr/";
const ALARM_PREFIX: &[u8] = b"alarm/";

/// Everything the state machine owns, behind one lock.
pub struct SmState {
    /// The MVCC key-value store.
    pub mvcc: Mvcc,
    /// The last applied log id.
    pub last_applied: Option<LogId>,
    /// The last applied membership.
    pub membership: StoredMembership,
    /// Published member attributes (name, client URLs) by member id.
    pub attrs: BTreeMap<u64, MemberAttributes>,
    /// Leases by id.
    pub leases: BTreeMap<i64, LeaseRecord>,
    /// Raised alarms: (member id, `AlarmType` value).
    pub alarms: BTreeSet<(u64, i32)>,
    /// Users, roles, auth on or off, simple tokens.
    pub auth: crate::auth::AuthState,
    /// Lease changes since the lessor last took them.
    lease_changes: Vec<LeaseChange>,
    /// Staged changes to write with the next commit (member attributes, leases).
    staged: WriteBatch,
}

/// A change to the lease table, for the lessor (which keeps expiry times).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseChange {
    /// Granted (or replaced by a snapshot): the record as stored.
    Granted(LeaseRecord),
    /// Revoked.
    Revoked(i64),
    /// A new checkpointed remaining TTL.
    Checkpointed(i64, i64),
}

impl SmState {
    /// Record a member's published attributes.
    pub fn publish(&mut self, attrs: MemberAttributes) {
        let mut key = ATTR_PREFIX.to_vec();
        key.extend_from_slice(&attrs.id.to_be_bytes());
        self.staged.put(Table::Meta, key, attrs.encode_to_vec());
        self.attrs.insert(attrs.id, attrs);
    }

    /// Raise (`on`) or clear an alarm; whether that changed anything.
    pub fn set_alarm(&mut self, member: u64, alarm: i32, on: bool) -> bool {
        let mut key = ALARM_PREFIX.to_vec();
        key.extend_from_slice(&member.to_be_bytes());
        key.extend_from_slice(&alarm.to_be_bytes());
        if on {
            self.staged.put(Table::Meta, key, Vec::new());
            self.alarms.insert((member, alarm))
        } else {
            self.staged.delete(Table::Meta, key);
            self.alarms.remove(&(member, alarm))
        }
    }

    /// Whether a NOSPACE alarm is raised (writes that add data are refused).
    pub fn no_space(&self) -> bool {
        self.alarms.iter().any(|(_, a)| *a == cairn_api::etcdserverpb::AlarmType::Nospace as i32)
    }

    /// Whether a CORRUPT alarm is raised (no data changes are applied).
    pub fn corrupt(&self) -> bool {
        self.alarms.iter().any(|(_, a)| *a == cairn_api::etcdserverpb::AlarmType::Corrupt as i32)
    }

    /// Stage a write (`Some`) or delete of a meta-table key with the next commit.
    pub fn stage_meta(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        match value {
            Some(v) => self.staged.put(Table::Meta, key, v),
            None => self.staged.delete(Table::Meta, key),
        }
    }

    /// Store a new or changed lease record.
    pub fn put_lease(&mut self, rec: LeaseRecord) {
        self.staged.put(Table::Lease, rec.id.to_be_bytes().to_vec(), rec.encode_to_vec());
        self.leases.insert(rec.id, rec);
    }

    /// Remove a lease record.
    pub fn remove_lease(&mut self, id: i64) -> Option<LeaseRecord> {
        self.staged.delete(Table::Lease, id.to_be_bytes().to_vec());
        self.leases.remove(&id)
    }

    /// Note a lease change for the lessor.
    pub fn lease_changed(&mut self, c: LeaseChange) {
        self.lease_changes.push(c);
    }

    /// Take the lease changes since the last call.
    pub fn take_lease_changes(&mut self) -> Vec<LeaseChange> {
        std::mem::take(&mut self.lease_changes)
    }

    fn load_meta(&mut self) -> Result<(), cairn_store::StoreError> {
        let engine = self.mvcc.engine().clone();
        let corrupt = |e: postcard::Error| cairn_store::StoreError::Corrupt(e.to_string());
        self.last_applied = match engine.get(Table::Meta, KEY_APPLIED)? {
            Some(b) => decode(&b).map_err(corrupt)?,
            None => None,
        };
        self.membership = match engine.get(Table::Meta, KEY_MEMBERSHIP)? {
            Some(b) => decode(&b).map_err(corrupt)?,
            None => StoredMembership::default(),
        };
        let mut attrs = BTreeMap::new();
        let mut end = ATTR_PREFIX.to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        engine.scan(Table::Meta, ATTR_PREFIX, Some(&end), &mut |_, v| {
            let a = MemberAttributes::decode(v)?;
            attrs.insert(a.id, a);
            Ok(true)
        })?;
        self.attrs = attrs;
        let mut alarms = BTreeSet::new();
        let mut end = ALARM_PREFIX.to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        engine.scan(Table::Meta, ALARM_PREFIX, Some(&end), &mut |k, _| {
            let k = &k[ALARM_PREFIX.len()..];
            if let (Some(m), Some(a)) = (k.get(..8), k.get(8..12)) {
                let member = u64::from_be_bytes(m.try_into().unwrap_or_default());
                let alarm = i32::from_be_bytes(a.try_into().unwrap_or_default());
                alarms.insert((member, alarm));
            }
            Ok(true)
        })?;
        self.alarms = alarms;
        crate::auth::load(engine.as_ref(), &mut self.auth)?;
        let mut leases = BTreeMap::new();
        engine.scan(Table::Lease, &[], None, &mut |_, v| {
            let l = LeaseRecord::decode(v)?;
            leases.insert(l.id, l);
            Ok(true)
        })?;
        self.leases = leases;
        self.lease_changes = self.leases.values().cloned().map(LeaseChange::Granted).collect();
        Ok(())
    }

    fn applied_batch(&mut self) -> WriteBatch {
        let mut b = std::mem::take(&mut self.staged);
        b.put(Table::Meta, KEY_APPLIED, encode(&self.last_applied));
        b.put(Table::Meta, KEY_MEMBERSHIP, encode(&self.membership));
        b
    }
}

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
    /// Lease expiry, fed with every applied lease change.
    pub lessor: Arc<Lessor>,
    snap_dir: PathBuf,
    current: Arc<Mutex<Option<CurrentSnapshot>>>,
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
    /// fragmented at `max_response_bytes`.
    pub fn open(
        engine: Arc<dyn Engine>,
        snap_dir: PathBuf,
        max_response_bytes: usize,
        lessor: Arc<Lessor>,
    ) -> Result<Self, cairn_store::StoreError> {
        remove_stale_snapshots(&snap_dir)?;
        let mut st = SmState {
            mvcc: Mvcc::open(engine)?,
            last_applied: None,
            membership: StoredMembership::default(),
            attrs: BTreeMap::new(),
            leases: BTreeMap::new(),
            alarms: BTreeSet::new(),
            auth: Default::default(),
            lease_changes: Vec::new(),
            staged: WriteBatch::new(),
        };
        st.load_meta()?;
        st.lease_changes.clear();
        lessor.reset(st.leases.values().cloned());
        let rev = st.mvcc.current_revision();
        let (revision_tx, _) = watch::channel(rev);
        let state = Arc::new(RwLock::new(st));
        Ok(Self {
            hub: WatchHub::new(state.clone(), rev, max_response_bytes),
            lessor,
            state,
            revision_tx: Arc::new(revision_tx),
            snap_dir,
            current: Arc::new(Mutex::new(None)),
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

    fn build(&self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let st = self.read();
        let last = st.last_applied;
        let id = match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "0-0-0".to_string(),
        };
        let meta = SnapshotMeta { last_log_id: last, last_membership: st.membership.clone(), snapshot_id: id.clone() };
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
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.build()).await.map_err(|e| snap_err(ErrorVerb::Write, e))?
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
        let (rev, events, lease_changes, auth_changed) = {
            let mut st = self.write();
            let auth_before = (st.auth.enabled, st.auth.revision);
            for entry in entries {
                let log_id = *entry.get_log_id();
                st.last_applied = Some(log_id);
                let resp = match entry.payload {
                    EntryPayload::Blank => RaftResponse::default(),
                    EntryPayload::Normal(req) => apply(&mut st, &req.0).map_err(|e| sm_err(ErrorVerb::Write, e))?,
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
            (st.mvcc.current_revision(), st.mvcc.take_events(), st.take_lease_changes(), auth_changed)
        };
        if auth_changed {
            // Before these events go out: a watcher its user may no longer read gets none.
            let denied = {
                let st = self.read();
                self.hub.revoke(&|user, key, end| st.auth.check(user, key, end, crate::auth::Need::Read).is_ok())
            };
            self.hub.tell_denied(denied);
        }
        self.lessor.apply(lease_changes);
        self.hub.notify(rev, events);
        self.publish_revision(rev);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.snap_dir.join("incoming.snap.tmp");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
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
            st.lease_changes.clear();
            this.lessor.reset(st.leases.values().cloned());
            let path = this.snap_dir.join(format!("{}.snap", meta.snapshot_id));
            std::fs::rename(this.snap_dir.join("incoming.snap.tmp"), &path)
                .map_err(|e| snap_err(ErrorVerb::Write, e))?;
            sync_dir(&this.snap_dir).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            let rev = st.mvcc.current_revision();
            drop(st);
            this.set_current(meta, path);
            Ok(rev)
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))??;
        self.hub.resync(rev);
        self.publish_revision(rev);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let cur = self.current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match cur {
            Some((meta, path)) => {
                let f = tokio::fs::File::open(&path).await.map_err(|e| snap_err(ErrorVerb::Read, e))?;
                Ok(Some(Snapshot { meta, snapshot: Box::new(f) }))
            }
            // No snapshot since this member started: build one from the current state.
            None if self.read().last_applied.is_some() => self.build_snapshot().await.map(Some),
            None => Ok(None),
        }
    }
}
