//! Software transactional memory: clientv3 `concurrency.NewSTM`'s semantics. A closure
//! reads and writes keys through an [`Stm`] handle; the writes are buffered and committed
//! in one transaction that checks the reads are still current (per the isolation level);
//! on a conflict the closure runs again on fresh data. The closure must do nothing but
//! compute (it may run several times).
//!
//! Isolation levels, as etcd's:
//! - [`Isolation::SerializableSnapshot`] (the default): every read at one revision (the
//!   first read's), and the commit fails if any key read *or written* changed after it —
//!   no write skew.
//! - [`Isolation::Serializable`]: reads at one revision; the commit checks the keys read.
//! - [`Isolation::RepeatableReads`]: each key read once (later reads of it repeat the
//!   first), from the newest data; the commit checks the keys read.
//! - [`Isolation::ReadCommitted`]: reads see the newest data each time; no checks.

use crate::error::Result;
use cairn_sdk::{Client, Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// How strictly a transaction is isolated from concurrent ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// One snapshot for all reads; reads and writes checked at commit.
    #[default]
    SerializableSnapshot,
    /// One snapshot for all reads; reads checked at commit.
    Serializable,
    /// Each key read once; reads checked at commit.
    RepeatableReads,
    /// Nothing checked.
    ReadCommitted,
}

/// What one run of the closure read and wrote.
#[derive(Default)]
struct State {
    /// The snapshot revision (serializable levels), set by the first read.
    revision: Option<i64>,
    /// Keys read, with what was read (None: absent).
    reads: BTreeMap<Vec<u8>, Option<KeyValue>>,
    /// Buffered writes (None: delete).
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// The handle a transaction's closure reads and writes through. Cheap to clone.
#[derive(Clone)]
pub struct Stm {
    client: Client,
    isolation: Isolation,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Stm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stm").field("isolation", &self.isolation).finish_non_exhaustive()
    }
}

impl Stm {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value of `key` as this transaction sees it (its own writes included).
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        Ok(self.get_kv(key.as_ref()).await?.map(|kv| kv.value))
    }

    /// `key`'s value as UTF-8 text.
    pub async fn get_string(&self, key: impl AsRef<[u8]>) -> Result<Option<String>> {
        Ok(self.get(key).await?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The mod revision of `key` as read (0 if absent or written by this transaction).
    pub async fn revision(&self, key: impl AsRef<[u8]>) -> Result<i64> {
        Ok(self.get_kv(key.as_ref()).await?.map_or(0, |kv| kv.mod_revision))
    }

    async fn get_kv(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let (cached, revision) = {
            let st = self.state();
            if let Some(w) = st.writes.get(key) {
                return Ok(w.clone().map(|value| KeyValue { key: key.to_vec(), value, ..Default::default() }));
            }
            let cached = match self.isolation {
                Isolation::ReadCommitted => None,
                _ => st.reads.get(key).cloned(),
            };
            (cached, st.revision)
        };
        if let Some(kv) = cached {
            return Ok(kv);
        }
        let snapshot = matches!(self.isolation, Isolation::Serializable | Isolation::SerializableSnapshot);
        let mut opts = GetOptions::new();
        if let (true, Some(rev)) = (snapshot, revision) {
            opts = opts.with_revision(rev);
        }
        let r = self.client.get(key, opts).await?;
        let kv = r.kvs.into_iter().next();
        let mut st = self.state();
        if snapshot && st.revision.is_none() {
            st.revision = Some(r.header.revision);
        }
        st.reads.entry(key.to_vec()).or_insert_with(|| kv.clone());
        Ok(kv)
    }

    /// Write `key` = `value` when the transaction commits.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl Into<Vec<u8>>) {
        self.state().writes.insert(key.as_ref().to_vec(), Some(value.into()));
    }

    /// Delete `key` when the transaction commits.
    pub fn delete(&self, key: impl AsRef<[u8]>) {
        self.state().writes.insert(key.as_ref().to_vec(), None);
    }

    /// Commit the buffered writes if the reads are still current; whether it did.
    async fn commit(&self) -> Result<bool> {
        let txn = {
            let st = self.state();
            let mut compares = Vec::new();
            if self.isolation != Isolation::ReadCommitted {
                for (key, kv) in &st.reads {
                    let rev = kv.as_ref().map_or(0, |kv| kv.mod_revision);
                    compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, rev));
                }
            }
            if let (Isolation::SerializableSnapshot, Some(rev)) = (self.isolation, st.revision) {
                for key in st.writes.keys().filter(|k| !st.reads.contains_key(*k)) {
                    compares.push(Compare::mod_revision(key.clone(), CompareOp::Less, rev + 1));
                }
            }
            let ops = st.writes.iter().map(|(k, v)| match v {
                Some(v) => TxnOp::put(k.clone(), v.clone(), None),
                None => TxnOp::delete(k.clone(), None),
            });
            Txn::new().when(compares).and_then(ops.collect::<Vec<_>>())
        };
        Ok(self.client.txn(txn).await?.succeeded)
    }
}

/// Run `f` as a transaction at `isolation`, again until it commits; `f`'s result. `f`
/// gets a fresh [`Stm`] handle each run.
///
/// ```no_run
/// # async fn demo(client: cairn_sdk::Client) -> cairn_recipes::Result<()> {
/// use cairn_recipes::{stm, Isolation};
/// // Move 10 from one account to another, atomically with respect to every other STM.
/// stm(&client, Isolation::default(), |tx| async move {
///     let from: i64 = tx.get_string("/acct/a").await?.and_then(|v| v.parse().ok()).unwrap_or(0);
///     let to: i64 = tx.get_string("/acct/b").await?.and_then(|v| v.parse().ok()).unwrap_or(0);
///     tx.put("/acct/a", (from - 10).to_string());
///     tx.put("/acct/b", (to + 10).to_string());
///     Ok(())
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn stm<T, F, Fut>(client: &Client, isolation: Isolation, mut f: F) -> Result<T>
where
    F: FnMut(Stm) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    loop {
        let tx = Stm { client: client.clone(), isolation, state: Arc::default() };
        let out = f(tx.clone()).await?;
        if tx.commit().await? {
            return Ok(out);
        }
    }
}
