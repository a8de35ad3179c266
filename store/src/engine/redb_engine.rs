//! The redb engine: one redb table per [`Table`], one redb write transaction per batch.

use super::{Engine, Op, ReadView, ScanFn, Table, WriteBatch};
use crate::error::{Result, StoreError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::ops::Bound;
use std::path::{Path, PathBuf};

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

const KV: Def = TableDefinition::new("kv");
const META: Def = TableDefinition::new("meta");
const RAFT_STATE: Def = TableDefinition::new("raft_state");
const LEASE: Def = TableDefinition::new("lease");

fn def(table: Table) -> Def {
    match table {
        Table::Kv => KV,
        Table::Meta => META,
        Table::RaftState => RAFT_STATE,
        Table::Lease => LEASE,
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// redb-backed [`Engine`].
pub struct RedbEngine {
    db: Database,
    path: PathBuf,
}

impl RedbEngine {
    /// Open or create the database file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::builder()
            // Hot pages of the key space stay cached; the MVCC index itself is in memory.
            .set_cache_size(32 << 20)
            .create(path)
            .map_err(err)?;
        // Create every table up front so readers never meet a missing table.
        let txn = db.begin_write().map_err(err)?;
        for t in Table::ALL {
            txn.open_table(def(t)).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(Self { db, path: path.to_path_buf() })
    }
}

/// A redb read transaction: a snapshot of the database at the time it began.
struct Frozen(redb::ReadTransaction);

impl ReadView for Frozen {
    fn scan(&self, table: Table, from: &[u8], to: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        scan_in(&self.0, table, from, to, f)
    }
}

fn scan_in(
    txn: &redb::ReadTransaction,
    table: Table,
    from: &[u8],
    to: Option<&[u8]>,
    f: &mut ScanFn<'_>,
) -> Result<()> {
    if to.is_some_and(|to| to <= from) {
        return Ok(());
    }
    let t = txn.open_table(def(table)).map_err(err)?;
    for item in t.range::<&[u8]>(bounds(from, to)).map_err(err)? {
        let (k, v) = item.map_err(err)?;
        if !f(k.value(), v.value())? {
            break;
        }
    }
    Ok(())
}

fn bounds<'a>(from: &'a [u8], to: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (Bound::Included(from), to.map_or(Bound::Unbounded, Bound::Excluded))
}

impl Engine for RedbEngine {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(def(table)).map_err(err)?;
        Ok(t.get(key).map_err(err)?.map(|v| v.value().to_vec()))
    }

    fn scan(&self, table: Table, from: &[u8], to: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        scan_in(&self.db.begin_read().map_err(err)?, table, from, to, f)
    }

    fn frozen_view(&self) -> Result<Option<Box<dyn ReadView>>> {
        Ok(Some(Box::new(Frozen(self.db.begin_read().map_err(err)?))))
    }

    fn last(&self, table: Table) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(def(table)).map_err(err)?;
        let last = t.last().map_err(err)?.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()));
        Ok(last)
    }

    fn write(&self, batch: WriteBatch, durable: bool) -> Result<()> {
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_durability(if durable { Durability::Immediate } else { Durability::None }).map_err(err)?;
        {
            let mut open = Vec::with_capacity(Table::ALL.len());
            for t in Table::ALL {
                open.push(txn.open_table(def(t)).map_err(err)?);
            }
            let idx = |t: Table| Table::ALL.iter().position(|x| *x == t).unwrap_or(0);
            for op in batch.ops {
                match op {
                    Op::Put(t, k, v) => {
                        open[idx(t)].insert(k.as_slice(), v.as_slice()).map_err(err)?;
                    }
                    Op::Delete(t, k) => {
                        open[idx(t)].remove(k.as_slice()).map_err(err)?;
                    }
                    Op::DeleteRange(t, from, to) => {
                        if to.as_deref().is_some_and(|to| to <= from.as_slice()) {
                            continue;
                        }
                        open[idx(t)].retain_in::<&[u8], _>(bounds(&from, to.as_deref()), |_, _| false).map_err(err)?;
                    }
                }
            }
        }
        txn.commit().map_err(err)
    }

    fn sync(&self) -> Result<()> {
        // An empty durable commit persists every earlier non-durable one.
        self.write(WriteBatch::new(), true)
    }

    fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}
