//! The redb engine: one redb table per [`Table`], one redb write transaction per batch.

use super::{Engine, Op, ReadView, ScanFn, Table, WriteBatch};
use crate::error::{Result, StoreError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

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
///
/// Defragmenting is online: the tables are copied from a frozen view into a new file while
/// writes go on (each batch committed meanwhile is also kept in a journal), the journal is
/// replayed onto the copy, and only the last few batches are replayed with every operation
/// held back before the new file replaces the old one. Batches are blind writes (put,
/// delete, delete-range), so replaying one the copy already holds changes nothing.
pub struct RedbEngine {
    // Every operation shares the lock; a defragment takes it exclusively for the swap.
    // Shared with frozen views, so a view taken before a defragment stays readable after it.
    db: RwLock<Arc<Database>>,
    path: PathBuf,
    // While a defragment copies, every committed batch, in commit order. Lock order:
    // `journal` before `db`.
    journal: Mutex<Option<Vec<WriteBatch>>>,
    defragmenting: Mutex<()>,
    // Free bytes inside the file, and when they were measured (see `size_in_use`).
    fragmented: Mutex<Option<(std::time::Instant, u64)>>,
}

/// How long a measurement of the free space inside the file is used.
const FRAGMENTATION_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

fn create(path: &Path) -> Result<Database> {
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
    Ok(db)
}

/// Apply `batch` to `db` in one write transaction.
fn commit(db: &Database, batch: WriteBatch, durable: bool) -> Result<()> {
    let mut txn = db.begin_write().map_err(err)?;
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

/// Rows copied per write transaction while defragmenting.
const COPY_CHUNK: usize = 20_000;
/// Catch-up rounds without holding writers back before the final swap.
const CATCH_UP_ROUNDS: usize = 8;

impl RedbEngine {
    /// Open or create the database file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        // A defragment interrupted by a crash leaves its unfinished copy behind.
        let _ = std::fs::remove_file(Self::copy_path(path));
        Ok(Self {
            db: RwLock::new(Arc::new(create(path)?)),
            path: path.to_path_buf(),
            journal: Mutex::new(None),
            defragmenting: Mutex::new(()),
            fragmented: Mutex::new(None),
        })
    }

    fn copy_path(path: &Path) -> PathBuf {
        path.with_extension("defrag")
    }

    fn journal(&self) -> MutexGuard<'_, Option<Vec<WriteBatch>>> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copy every table of a frozen view into `new`, journaling the writes made meanwhile.
    fn copy_into(&self, new: &Database) -> Result<()> {
        let view = {
            let mut j = self.journal();
            let view = self.db().begin_read().map_err(err)?;
            *j = Some(Vec::new());
            view
        };
        for t in Table::ALL {
            let table = view.open_table(def(t)).map_err(err)?;
            let mut batch = WriteBatch::new();
            for item in table.iter().map_err(err)? {
                let (k, v) = item.map_err(err)?;
                batch.put(t, k.value().to_vec(), v.value().to_vec());
                if batch.len() >= COPY_CHUNK {
                    commit(new, std::mem::take(&mut batch), false)?;
                }
            }
            commit(new, batch, false)?;
        }
        // Catch up with the writes made during the copy while they go on.
        for _ in 0..CATCH_UP_ROUNDS {
            let pending = std::mem::take(self.journal().get_or_insert_with(Vec::new));
            if pending.is_empty() {
                break;
            }
            for b in pending {
                commit(new, b, false)?;
            }
        }
        Ok(())
    }
}

/// A redb read transaction: a snapshot of the database at the time it began (holding the
/// database it belongs to, which a defragment may have replaced since).
struct Frozen {
    txn: redb::ReadTransaction,
    // Dropped after `txn` (fields drop in order).
    _db: Arc<Database>,
}

impl ReadView for Frozen {
    fn scan(&self, table: Table, from: &[u8], to: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        scan_in(&self.txn, table, from, to, f)
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

impl RedbEngine {
    fn db(&self) -> RwLockReadGuard<'_, Arc<Database>> {
        // A panic while holding the lock leaves redb itself consistent (its commits are atomic).
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine for RedbEngine {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let txn = self.db().begin_read().map_err(err)?;
        let t = txn.open_table(def(table)).map_err(err)?;
        Ok(t.get(key).map_err(err)?.map(|v| v.value().to_vec()))
    }

    fn scan(&self, table: Table, from: &[u8], to: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        scan_in(&self.db().begin_read().map_err(err)?, table, from, to, f)
    }

    fn frozen_view(&self) -> Result<Option<Box<dyn ReadView>>> {
        let db = self.db().clone();
        Ok(Some(Box::new(Frozen { txn: db.begin_read().map_err(err)?, _db: db })))
    }

    fn last(&self, table: Table) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let txn = self.db().begin_read().map_err(err)?;
        let t = txn.open_table(def(table)).map_err(err)?;
        let last = t.last().map_err(err)?.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()));
        Ok(last)
    }

    fn write(&self, batch: WriteBatch, durable: bool) -> Result<()> {
        let mut journal = self.journal();
        let copy = journal.is_some().then(|| batch.clone());
        commit(&self.db(), batch, durable)?;
        if let (Some(j), Some(b)) = (journal.as_mut(), copy) {
            j.push(b);
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        // An empty durable commit persists every earlier non-durable one.
        self.write(WriteBatch::new(), true)
    }

    fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    fn size_in_use(&self) -> u64 {
        // redb's stats walk every page inside a write transaction (writers wait), so the
        // free space is measured at most once a minute and the file size tracked between.
        let mut cached = self.fragmented.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = cached.is_some_and(|(at, _)| at.elapsed() < FRAGMENTATION_MAX_AGE);
        if !fresh {
            let measured = self.db().begin_write().and_then(|t| {
                let s = t.stats().map(|s| s.fragmented_bytes());
                t.abort()?;
                Ok(s?)
            });
            *cached = Some((std::time::Instant::now(), measured.unwrap_or(0)));
        }
        self.size_on_disk().saturating_sub(cached.map_or(0, |(_, f)| f))
    }

    fn defragment(&self) -> Result<()> {
        let _one_at_a_time = self.defragmenting.lock().unwrap_or_else(|p| p.into_inner());
        let tmp = Self::copy_path(&self.path);
        let _ = std::fs::remove_file(&tmp);
        let new = create(&tmp)?;
        let copied = self.copy_into(&new);
        // The swap: hold every operation back, replay the last batches, make the copy
        // durable and put it in place of the old file.
        let mut journal = self.journal();
        let swapped = copied.and_then(|()| {
            let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
            for b in journal.take().unwrap_or_default() {
                commit(&new, b, false)?;
            }
            commit(&new, WriteBatch::new(), true)?;
            std::fs::rename(&tmp, &self.path).map_err(err)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
            }
            *db = Arc::new(new);
            // The copy is dense: measure again when next asked.
            *self.fragmented.lock().unwrap_or_else(|p| p.into_inner()) = None;
            Ok(())
        });
        *journal = None;
        drop(journal);
        if swapped.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        swapped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Live;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn count(e: &dyn ReadView, table: Table) -> usize {
        let mut n = 0;
        e.scan(table, &[], None, &mut |_, _| {
            n += 1;
            Ok(true)
        })
        .unwrap();
        n
    }

    #[test]
    fn defragment_is_online_and_gives_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let e = std::sync::Arc::new(RedbEngine::open(&dir.path().join("db")).unwrap());
        let value = vec![7u8; 1024];
        for chunk in 0..20u32 {
            let mut b = WriteBatch::new();
            for i in 0..500u32 {
                b.put(Table::Kv, (chunk * 500 + i).to_be_bytes().to_vec(), value.clone());
            }
            e.write(b, false).unwrap();
        }
        let mut b = WriteBatch::new();
        b.delete_range(Table::Kv, 100u32.to_be_bytes().to_vec(), None);
        e.write(b, true).unwrap();
        let before = e.size_on_disk();
        assert!(e.size_in_use() < before, "{} < {before}", e.size_in_use());
        // A view taken before stays readable across the swap.
        let view = e.frozen_view().unwrap().unwrap();
        // Writes (puts and deletes) go on during the defragment and all of them survive it.
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (e2, s2) = (e.clone(), stop.clone());
        let writer = std::thread::spawn(move || {
            let mut n = 0u32;
            while !s2.load(Ordering::SeqCst) || n < 200 {
                let mut b = WriteBatch::new();
                b.put(Table::Lease, n.to_be_bytes().to_vec(), vec![1u8; 10]);
                if n.is_multiple_of(10) {
                    b.delete(Table::Kv, (n / 10).to_be_bytes().to_vec());
                }
                e2.write(b, false).unwrap();
                n += 1;
                std::thread::sleep(std::time::Duration::from_micros(500));
            }
            n
        });
        e.defragment().unwrap();
        stop.store(true, Ordering::SeqCst);
        let written = writer.join().unwrap();
        assert_eq!(count(view.as_ref(), Table::Kv), 100);
        drop(view);
        let live = Live(e.as_ref());
        assert_eq!(count(&live, Table::Lease), written as usize);
        let deleted = (written.div_ceil(10)).min(100) as usize;
        assert_eq!(count(&live, Table::Kv), 100 - deleted);
        let after = e.size_on_disk();
        assert!(after < before / 2, "defragment: {before} -> {after} bytes");
        assert!(!RedbEngine::copy_path(&dir.path().join("db")).exists(), "no copy left behind");
        // The engine works on as before, and reopens.
        e.sync().unwrap();
        drop(e);
        let e = RedbEngine::open(&dir.path().join("db")).unwrap();
        assert_eq!(count(&Live(&e), Table::Lease), written as usize);
    }
}
