//! The Raft log in a segmented write-ahead log ([`cairn_store::wal`]), and Raft's vote,
//! committed and purged ids in the engine's `RaftState` table.
//!
//! `append` writes the entries to the WAL — one direct, synchronous write where the file
//! system allows it, else a write and an `fdatasync` of the segments it touched — and only
//! then reports them persisted: openraft acknowledges nothing that is not on disk. The
//! sync runs inline on the caller's task: openraft 0.9's core waits for each append's
//! callback before it does anything else, so handing the sync to another thread (as an
//! earlier version did) only added two thread wake-ups per write. Batching happens before
//! Raft, in [`crate::batch`]: one append carries every write queued meanwhile.
//!
//! Votes, truncations and purges are durable before they return. A purge first makes the
//! engine durable, so the state machine is on disk at or past every purged entry.

use super::{decode, encode, storage_err, LogId, StorageError, TypeConfig};
use cairn_store::wal::{read_located, Wal};
use cairn_store::{Engine, Table, WriteBatch};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, OptionalSend, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

const KEY_VOTE: &[u8] = b"vote";
/// The file in the WAL directory naming the member whose log it is.
const WAL_OWNER: &str = "member.id";
const KEY_PURGED: &[u8] = b"last_purged";

/// Log storage. Cheap to clone (readers are clones).
#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn Engine>,
    wal: Arc<Mutex<Wal>>,
    fsync: prometheus::Histogram,
}

fn log_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    storage_err(ErrorSubject::Logs, verb, e)
}

impl LogStore {
    /// Open the WAL in `wal_dir` (Raft state in `engine`); `fsync` times each sync.
    pub fn open(
        engine: Arc<dyn Engine>,
        wal_dir: &Path,
        fsync: prometheus::Histogram,
    ) -> Result<Self, cairn_store::StoreError> {
        Self::open_with_segments(engine, wal_dir, fsync, cairn_store::wal::SEGMENT_BYTES)
    }

    /// [`LogStore::open`] for member `id`, after checking that `wal_dir` holds this
    /// member's log (`--wal-dir` may put it anywhere). A marker file names the member; a
    /// directory without one is adopted if it holds segments or the member has no Raft
    /// state yet. A member with Raft state whose log is not there refuses to start: its
    /// log was moved or lost, and starting would silently drop entries not yet applied.
    pub fn open_for(
        engine: Arc<dyn Engine>,
        wal_dir: &Path,
        id: u64,
        fsync: prometheus::Histogram,
    ) -> anyhow::Result<Self> {
        let marker = wal_dir.join(WAL_OWNER);
        let me = format!("{id:x}");
        match std::fs::read_to_string(&marker) {
            Ok(owner) if owner.trim() == me => {}
            Ok(owner) => anyhow::bail!(
                "the write-ahead log in {} belongs to member {}, not to this member ({me}); check --wal-dir",
                wal_dir.display(),
                owner.trim()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let has_segments = std::fs::read_dir(wal_dir)
                    .map(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "wal")))
                    .unwrap_or(false);
                let has_state = engine.get(Table::RaftState, KEY_VOTE)?.is_some();
                if has_state && !has_segments {
                    anyhow::bail!(
                        "this member has Raft state but its write-ahead log is not in {}: if the log was moved, \
                         start with --wal-dir set to where it is now",
                        wal_dir.display()
                    );
                }
                cairn_store::fsutil::create_private_dir(wal_dir)?;
                let mut f = std::fs::File::create(&marker)?;
                std::io::Write::write_all(&mut f, format!("{me}\n").as_bytes())?;
                f.sync_all()?;
                cairn_store::fsutil::sync_dir(wal_dir)?;
            }
            Err(e) => anyhow::bail!("reading {}: {e}", marker.display()),
        }
        Ok(Self::open(engine, wal_dir, fsync)?)
    }

    /// [`LogStore::open`] with WAL segments of `segment_bytes` (small ones for tests).
    pub fn open_with_segments(
        engine: Arc<dyn Engine>,
        wal_dir: &Path,
        fsync: prometheus::Histogram,
        segment_bytes: u64,
    ) -> Result<Self, cairn_store::StoreError> {
        let mut wal = Wal::open(wal_dir, segment_bytes)?;
        if let Some(b) = engine.get(Table::RaftState, KEY_PURGED)? {
            let purged: LogId = decode(&b).map_err(|e| cairn_store::StoreError::Corrupt(e.to_string()))?;
            wal.purge(purged.index)?;
        }
        Ok(Self { engine, wal: Arc::new(Mutex::new(wal)), fsync })
    }

    /// Append `entries` and make them durable at once — for changes made before Raft
    /// starts (`--force-new-cluster`); Raft itself appends through [`RaftLogStorage`].
    pub fn append_now(&self, entries: &[Entry<TypeConfig>]) -> anyhow::Result<()> {
        let files = self.write(entries.iter())?;
        files.iter().try_for_each(|f| f.sync_data())?;
        Ok(())
    }

    /// Write `entries` to the WAL; the files to sync to make them durable.
    fn write<'a>(
        &self,
        entries: impl Iterator<Item = &'a Entry<TypeConfig>>,
    ) -> Result<Vec<Arc<std::fs::File>>, cairn_store::StoreError> {
        let records: Vec<(u64, Vec<u8>)> = entries.map(|e| (e.log_id.index, encode(e))).collect();
        let mut wal = self.wal();
        wal.append(&records)?;
        Ok(wal.sync_handles())
    }

    fn wal(&self) -> std::sync::MutexGuard<'_, Wal> {
        // Only bookkeeping happens under the lock; a poisoned lock still holds a usable log.
        self.wal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.engine.get(Table::RaftState, key).map_err(|e| log_err(ErrorVerb::Read, e))? {
            None => Ok(None),
            Some(b) => decode(&b).map(Some).map_err(|e| log_err(ErrorVerb::Read, e)),
        }
    }

    fn read(&self, from: u64, to: u64) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let located = self.wal().locate(from, to);
        read_located(located)
            .map_err(|e| log_err(ErrorVerb::Read, e))?
            .into_iter()
            .map(|(_, b)| decode::<Entry<TypeConfig>>(&b).map_err(|e| log_err(ErrorVerb::Read, e)))
            .collect()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.read(start, end)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let last_index = self.wal().last_index();
        let last_log_id = match last_index {
            Some(i) => self.read(i, i + 1)?.pop().map(|e| e.log_id).or(last_purged_log_id),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let mut b = WriteBatch::new();
        b.put(Table::RaftState, KEY_VOTE, encode(vote));
        self.engine.write(b, true).map_err(|e| storage_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    // `save_committed` / `read_committed` keep openraft's defaults (not stored): a
    // restarted member re-applies past its checkpoint once the leader confirms the
    // commit index, and the hot path saves an engine write per commit.

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        // Timed from the write: a direct write is synchronous (see `cairn_store::wal`).
        let timer = self.fsync.start_timer();
        let files = self.write(entries.iter()).map_err(|e| log_err(ErrorVerb::Write, e))?;
        let synced = files.iter().try_for_each(|f| f.sync_data());
        timer.observe_duration();
        callback.log_io_completed(synced);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.wal().truncate(log_id.index).map_err(|e| log_err(ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // One durable engine write: records the purge and persists every earlier
        // state-machine write, so the applied state never falls behind the purged log.
        let mut b = WriteBatch::new();
        b.put(Table::RaftState, KEY_PURGED, encode(&log_id));
        self.engine.write(b, true).map_err(|e| log_err(ErrorVerb::Delete, e))?;
        self.wal().purge(log_id.index).map_err(|e| log_err(ErrorVerb::Delete, e))
    }
}
