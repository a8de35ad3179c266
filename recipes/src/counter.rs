//! [`Counter`]: a shared integer (Curator's `DistributedAtomicLong`), and
//! [`AtomicValue`]: a shared typed value with compare-and-set — each one key, changed only
//! by transactions that check it did not change since it was read.
//!
//! The counter's key holds the number in decimal (so `etcdctl get` shows it and other
//! clients can write it); an absent key is 0. The typed value's key holds JSON.

use crate::error::{Error, Result};
use cairn_sdk::{Client, Compare, CompareOp, Txn, TxnOp};
use serde::{de::DeserializeOwned, Serialize};

/// A shared counter at one key.
///
/// ```no_run
/// # async fn demo(client: cairn_sdk::Client) -> cairn_recipes::Result<()> {
/// let visits = cairn_recipes::Counter::new(&client, "/stats/visits");
/// let now = visits.increment().await?;
/// visits.add(-2).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Counter {
    client: Client,
    key: String,
}

impl Counter {
    /// The counter at `key`.
    pub fn new(client: &Client, key: impl AsRef<str>) -> Counter {
        Counter { client: client.clone(), key: key.as_ref().to_string() }
    }

    /// The value and the key's mod revision (0 when absent).
    async fn read(&self) -> Result<(i64, i64)> {
        let r = self.client.get(self.key.as_str(), None).await?;
        match r.kvs.first() {
            None => Ok((0, 0)),
            Some(kv) => {
                let text = String::from_utf8_lossy(&kv.value);
                let n = text.trim().parse::<i64>().map_err(|e| Error::Invalid {
                    key: self.key.clone(),
                    reason: format!("{text:?} is not an integer: {e}"),
                })?;
                Ok((n, kv.mod_revision))
            }
        }
    }

    /// The current value.
    pub async fn get(&self) -> Result<i64> {
        Ok(self.read().await?.0)
    }

    /// Write `new` if the value was read at `revision` (0: absent); whether it was.
    async fn write_if(&self, revision: i64, new: i64) -> Result<bool> {
        let txn = Txn::new()
            .when([Compare::mod_revision(self.key.as_str(), CompareOp::Equal, revision)])
            .and_then([TxnOp::put(self.key.as_str(), new.to_string(), None)]);
        Ok(self.client.txn(txn).await?.succeeded)
    }

    /// Add `delta` (retrying if others change it meanwhile); the new value.
    pub async fn add(&self, delta: i64) -> Result<i64> {
        loop {
            let (n, rev) = self.read().await?;
            let new = n
                .checked_add(delta)
                .ok_or_else(|| Error::Invalid { key: self.key.clone(), reason: format!("{n} + {delta} overflows") })?;
            if self.write_if(rev, new).await? {
                return Ok(new);
            }
        }
    }

    /// Add one; the new value.
    pub async fn increment(&self) -> Result<i64> {
        self.add(1).await
    }

    /// Set `new` if the value is `expected` now; whether it was.
    pub async fn compare_and_set(&self, expected: i64, new: i64) -> Result<bool> {
        loop {
            let (n, rev) = self.read().await?;
            if n != expected {
                return Ok(false);
            }
            if self.write_if(rev, new).await? {
                return Ok(true);
            }
        }
    }
}

/// A shared value of type `T` (JSON at one key) that changes only by compare-and-set.
///
/// ```no_run
/// # async fn demo(client: cairn_sdk::Client) -> cairn_recipes::Result<()> {
/// let limits = cairn_recipes::AtomicValue::<Vec<String>>::new(&client, "/config/allowed");
/// limits.update(|mut v| { v.push("10.0.0.7".into()); v }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AtomicValue<T> {
    client: Client,
    key: String,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned + Default> AtomicValue<T> {
    /// The value at `key` (`T::default()` while absent).
    pub fn new(client: &Client, key: impl AsRef<str>) -> AtomicValue<T> {
        AtomicValue { client: client.clone(), key: key.as_ref().to_string(), _t: std::marker::PhantomData }
    }

    async fn read(&self) -> Result<(T, i64)> {
        let r = self.client.get(self.key.as_str(), None).await?;
        match r.kvs.first() {
            None => Ok((T::default(), 0)),
            Some(kv) => {
                let v = serde_json::from_slice(&kv.value)
                    .map_err(|e| Error::Invalid { key: self.key.clone(), reason: e.to_string() })?;
                Ok((v, kv.mod_revision))
            }
        }
    }

    /// The current value.
    pub async fn get(&self) -> Result<T> {
        Ok(self.read().await?.0)
    }

    async fn write_if(&self, revision: i64, v: &T) -> Result<bool> {
        let json =
            serde_json::to_vec(v).map_err(|e| Error::Invalid { key: self.key.clone(), reason: e.to_string() })?;
        let txn = Txn::new()
            .when([Compare::mod_revision(self.key.as_str(), CompareOp::Equal, revision)])
            .and_then([TxnOp::put(self.key.as_str(), json, None)]);
        Ok(self.client.txn(txn).await?.succeeded)
    }

    /// Replace the value with `f(current)`, calling `f` again on a newer value if someone
    /// changed it meanwhile; the value written.
    pub async fn update(&self, mut f: impl FnMut(T) -> T) -> Result<T> {
        loop {
            let (v, rev) = self.read().await?;
            let new = f(v);
            if self.write_if(rev, &new).await? {
                return Ok(new);
            }
        }
    }

    /// Set `new` if the value equals `expected` now; whether it did.
    pub async fn compare_and_set(&self, expected: &T, new: &T) -> Result<bool>
    where
        T: PartialEq,
    {
        loop {
            let (v, rev) = self.read().await?;
            if v != *expected {
                return Ok(false);
            }
            if self.write_if(rev, new).await? {
                return Ok(true);
            }
        }
    }
}
