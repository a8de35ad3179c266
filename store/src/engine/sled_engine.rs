//! The sled engine: one sled tree whose keys are prefixed with the table id, so that
//! a whole [`WriteBatch`] — across tables — is one atomic `apply_batch`.

use super::{Engine, Op, ReadView, ScanFn, Table, WriteBatch};
use crate::error::{Result, StoreError};
use std::path::{Path, PathBuf};

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// sled-backed [`Engine`].
pub struct SledEngine {
    db: sled::Db,
    tree: sled::Tree,
    path: PathBuf,
}

fn prefixed(table: Table, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(table.id());
    k.extend_from_slice(key);
    k
}

/// The exclusive upper bound of `table` (or of `[from, to)` inside it).
fn upper(table: Table, to: Option<&[u8]>) -> Vec<u8> {
    match to {
        Some(to) => prefixed(table, to),
        None => vec![table.id() + 1],
    }
}

impl SledEngine {
    /// Open or create the database directory at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(256 << 20)
            // Cairn decides when to fsync (group commit); no background flusher.
            .flush_every_ms(None)
            .open()
            .map_err(err)?;
        let tree = db.open_tree("cairn").map_err(err)?;
        Ok(Self { db, tree, path: path.to_path_buf() })
    }
}

impl Engine for SledEngine {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(prefixed(table, key)).map_err(err)?.map(|v| v.to_vec()))
    }

    fn scan(&self, table: Table, from: &[u8], to: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        let (lo, hi) = (prefixed(table, from), upper(table, to));
        if hi <= lo {
            return Ok(());
        }
        for item in self.tree.range(lo..hi) {
            let (k, v) = item.map_err(err)?;
            if !f(&k[1..], &v)? {
                break;
            }
        }
        Ok(())
    }

    fn last(&self, table: Table) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let lo = vec![table.id()];
        let hi = upper(table, None);
        Ok(self.tree.range(lo..hi).next_back().transpose().map_err(err)?.map(|(k, v)| (k[1..].to_vec(), v.to_vec())))
    }

    fn write(&self, batch: WriteBatch, durable: bool) -> Result<()> {
        let mut b = sled::Batch::default();
        for op in batch.ops {
            match op {
                Op::Put(t, k, v) => b.insert(prefixed(t, &k), v),
                Op::Delete(t, k) => b.remove(prefixed(t, &k)),
                Op::DeleteRange(t, from, to) => {
                    let (lo, hi) = (prefixed(t, &from), upper(t, to.as_deref()));
                    if hi <= lo {
                        continue;
                    }
                    for k in self.tree.range(lo..hi).keys() {
                        b.remove(k.map_err(err)?);
                    }
                }
            }
        }
        self.tree.apply_batch(b).map_err(err)?;
        if durable {
            self.sync()?;
        }
        Ok(())
    }

    fn frozen_view(&self) -> Result<Option<Box<dyn ReadView>>> {
        // sled iterators see concurrent writes: no frozen view.
        Ok(None)
    }

    fn sync(&self) -> Result<()> {
        self.db.flush().map_err(err).map(|_| ())
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or_else(|_| dir_size(&self.path))
    }
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path).map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}
