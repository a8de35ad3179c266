//! The storage-engine boundary: a few ordered byte tables written in atomic batches.
//!
//! Everything Cairn persists except the Raft log (see [`crate::wal`]) — MVCC revisions,
//! store metadata and Raft's vote — lives in one engine instance, so one batch can update several tables
//! atomically (data and `last_applied` together). Two engines implement the trait:
//! [`redb`](RedbEngine) (the default) and [`sled`](SledEngine).
//!
//! Durability model: `write(batch, durable=false)` makes the batch visible to readers
//! and atomic with respect to crashes (after a crash the engine holds a prefix of the
//! batches), but may not be on disk yet; `write(batch, durable=true)` and [`Engine::sync`]
//! return only once every earlier batch is on disk. The state machine commits cheaply and
//! makes its state durable at checkpoints.

mod redb_engine;
mod sled_engine;

pub use redb_engine::RedbEngine;
pub use sled_engine::SledEngine;

use crate::error::Result;
use std::path::Path;
use std::str::FromStr;

/// The tables of the keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// MVCC revisions: 16-byte revision -> encoded entry (see `mvcc`).
    Kv,
    /// Store metadata: current and compacted revision, applied log id, members.
    Meta,
    /// Raft's own state: vote, committed and purged log ids, cluster id.
    RaftState,
    /// Leases: 8-byte big-endian id -> encoded lease record.
    Lease,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 4] = [Table::Kv, Table::Meta, Table::RaftState, Table::Lease];

    /// Stable one-byte id of the table (used as a key prefix by engines with one keyspace).
    pub fn id(self) -> u8 {
        match self {
            Table::Kv => 1,
            Table::Meta => 2,
            Table::RaftState => 4,
            Table::Lease => 5,
        }
    }
}

/// One change inside a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or overwrite a key.
    Put(Table, Vec<u8>, Vec<u8>),
    /// Remove a key (no error if absent).
    Delete(Table, Vec<u8>),
    /// Remove every key in `[from, to)`; `to = None` means to the end of the table.
    DeleteRange(Table, Vec<u8>, Option<Vec<u8>>),
}

/// An ordered list of changes applied atomically.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<Op>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }
    /// Queue a put.
    pub fn put(&mut self, table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(table, key.into(), value.into()));
    }
    /// Queue a delete.
    pub fn delete(&mut self, table: Table, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(table, key.into()));
    }
    /// Queue a range delete of `[from, to)`.
    pub fn delete_range(&mut self, table: Table, from: impl Into<Vec<u8>>, to: Option<Vec<u8>>) {
        self.ops.push(Op::DeleteRange(table, from.into(), to));
    }
    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Number of queued changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// Drop every change queued after the first `len` (undo of a failed write).
    pub fn truncate(&mut self, len: usize) {
        self.ops.truncate(len);
    }
    /// Append every change of `other`.
    pub fn extend(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }
}

/// Visitor for [`Engine::scan`]: return `Ok(false)` to stop early.
pub type ScanFn<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// A read-only view of the engine.
pub trait ReadView: Send {
    /// Visit keys in `[from, to)` in ascending order (`to = None`: to the end).
    fn scan(&self, table: Table, from: &[u8], to: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()>;

    /// The value stored under exactly `key`.
    fn get_one(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut end = key.to_vec();
        end.push(0);
        let mut found = None;
        self.scan(table, key, Some(&end), &mut |_, v| {
            found = Some(v.to_vec());
            Ok(false)
        })?;
        Ok(found)
    }
}

/// The live engine as a [`ReadView`] (sees later writes).
pub struct Live<'a>(pub &'a dyn Engine);

impl ReadView for Live<'_> {
    fn scan(&self, table: Table, from: &[u8], to: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        self.0.scan(table, from, to, f)
    }
}

/// An ordered, transactional key-value engine.
pub trait Engine: Send + Sync + 'static {
    /// Read one key.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Visit keys in `[from, to)` in ascending order (`to = None`: to the end) from one
    /// consistent view.
    fn scan(&self, table: Table, from: &[u8], to: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()>;
    /// The last key of a table and its value.
    fn last(&self, table: Table) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
    /// Apply a batch atomically; with `durable` it is on disk (with all earlier batches)
    /// before this returns.
    fn write(&self, batch: WriteBatch, durable: bool) -> Result<()>;
    /// Make every earlier batch durable.
    fn sync(&self) -> Result<()>;
    /// A view frozen at this moment that later batches do not change, if the engine can
    /// give one (`None`: the caller must keep writers out while it reads).
    fn frozen_view(&self) -> Result<Option<Box<dyn ReadView>>>;
    /// Bytes the engine occupies on disk.
    fn size_on_disk(&self) -> u64;
    /// Bytes of that holding live data (the rest is free space a defragment gives back);
    /// may be measured less often than it is asked for (redb: once a minute).
    fn size_in_use(&self) -> u64 {
        self.size_on_disk()
    }
    /// Give the space of deleted data back to the file system (etcd's defragment).
    /// Writers wait while it runs; frozen views taken before must be dropped first.
    fn defragment(&self) -> Result<()> {
        Ok(())
    }
}

/// Which engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// redb: copy-on-write B+tree with checksummed, fsynced commits (default).
    #[default]
    Redb,
    /// sled 0.34: log-structured; see docs/ for how it compares.
    Sled,
}

impl FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "redb" => Ok(EngineKind::Redb),
            "sled" => Ok(EngineKind::Sled),
            other => Err(format!("unknown storage engine {other:?} (expected redb or sled)")),
        }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Redb => "redb",
            EngineKind::Sled => "sled",
        })
    }
}

/// Open (or create) an engine of `kind` in directory `dir`.
pub fn open(kind: EngineKind, dir: &Path) -> Result<std::sync::Arc<dyn Engine>> {
    crate::fsutil::create_private_dir(dir).map_err(|e| crate::StoreError::Engine(format!("{}: {e}", dir.display())))?;
    Ok(match kind {
        EngineKind::Redb => std::sync::Arc::new(RedbEngine::open(&dir.join("cairn.redb"))?),
        EngineKind::Sled => std::sync::Arc::new(SledEngine::open(&dir.join("sled"))?),
    })
}
