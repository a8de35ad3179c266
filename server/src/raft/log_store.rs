//! The Raft log and vote, stored in the engine's `RaftLog` and `RaftState` tables.
//!
//! Group commit: `append` writes entries without fsync (they are readable at once) and
//! hands the completion callback to a flusher thread. The flusher takes every callback
//! queued so far, makes one `sync` — a single fsync covering all of them — and only
//! then reports the entries persisted, so openraft acknowledges nothing that is not
//! on disk. Under load one fsync covers many client writes.
//!
//! Votes, truncations and purges are written durably before returning.

use super::{decode, encode, storage_err, LogId, StorageError, TypeConfig};
use cairn_store::{Engine, Table, WriteBatch};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::Arc;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// Log storage over a shared engine. Cheap to clone (readers are clones).
#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn Engine>,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
}

fn idx_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

fn log_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    storage_err(ErrorSubject::Logs, verb, e)
}

impl LogStore {
    /// A log store on `engine`; starts the flusher thread.
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let e = engine.clone();
        std::thread::Builder::new()
            .name("cairn-log-flusher".into())
            .spawn(move || flusher(e, rx))
            .expect("spawning the log flusher thread");
        Self { engine, flusher: tx }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.engine.get(Table::RaftState, key).map_err(|e| log_err(ErrorVerb::Read, e))? {
            None => Ok(None),
            Some(b) => decode(&b).map(Some).map_err(|e| log_err(ErrorVerb::Read, e)),
        }
    }
}

/// Waits for completion callbacks, batches all that are queued, fsyncs once, and
/// completes them. Exits when every `LogStore` clone is dropped.
fn flusher(engine: Arc<dyn Engine>, rx: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let res = engine.sync().map_err(|e| std::io::Error::other(e.to_string()));
        for cb in waiting {
            cb.log_io_completed(res.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        let mut out = Vec::new();
        let end_key = end.map(idx_key);
        self.engine
            .scan(Table::RaftLog, &idx_key(start), end_key.as_ref().map(|k| k.as_slice()), &mut |_, v| {
                out.push(decode::<Entry<TypeConfig>>(v).map_err(|e| cairn_store::StoreError::Corrupt(e.to_string()))?);
                Ok(true)
            })
            .map_err(|e| log_err(ErrorVerb::Read, e))?;
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let last = match self.engine.last(Table::RaftLog).map_err(|e| log_err(ErrorVerb::Read, e))? {
            Some((_, v)) => {
                Some(*decode::<Entry<TypeConfig>>(&v).map_err(|e| log_err(ErrorVerb::Read, e))?.get_log_id())
            }
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id: last })
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

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced: openraft only uses it to re-apply faster after a restart; the
        // next fsync (any append) persists it.
        let mut b = WriteBatch::new();
        b.put(Table::RaftState, KEY_COMMITTED, encode(&committed));
        self.engine.write(b, false).map_err(|e| log_err(ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut b = WriteBatch::new();
        for e in entries {
            b.put(Table::RaftLog, idx_key(e.log_id.index).to_vec(), encode(&e));
        }
        self.engine.write(b, false).map_err(|e| log_err(ErrorVerb::Write, e))?;
        // The flusher completes the callback after the fsync that covers this write.
        self.flusher.send(callback).map_err(|_| log_err(ErrorVerb::Write, "log flusher thread has stopped"))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut b = WriteBatch::new();
        b.delete_range(Table::RaftLog, idx_key(log_id.index).to_vec(), None);
        self.engine.write(b, true).map_err(|e| log_err(ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Durable, and so it also persists every state-machine write before it: the
        // applied state never falls behind the purged log.
        let mut b = WriteBatch::new();
        b.put(Table::RaftState, KEY_PURGED, encode(&log_id));
        b.delete_range(Table::RaftLog, Vec::new(), Some(idx_key(log_id.index.saturating_add(1)).to_vec()));
        self.engine.write(b, true).map_err(|e| log_err(ErrorVerb::Delete, e))
    }
}
