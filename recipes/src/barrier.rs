//! Barriers, as etcd's `contrib/recipes`: a [`Barrier`] holds everyone back until it is
//! released; a [`DoubleBarrier`] lets a group start together once all have arrived and
//! leave together once all are done.

use crate::error::{Error, Result};
use crate::mutex::create_unique;
use crate::wait::{wait_delete, wait_event, Lease};
use cairn_sdk::{Client, EventType, GetOptions, KeyValue, Session};

/// A barrier on one key: while the key exists, [`Barrier::wait`] blocks.
#[derive(Debug, Clone)]
pub struct Barrier {
    client: Client,
    key: String,
}

impl Barrier {
    /// The barrier at `key`.
    pub fn new(client: &Client, key: impl AsRef<str>) -> Barrier {
        Barrier { client: client.clone(), key: key.as_ref().to_string() }
    }

    /// Raise the barrier (waiters block from now on).
    pub async fn hold(&self) -> Result<()> {
        self.client.put(self.key.as_str(), "", None).await?;
        Ok(())
    }

    /// Lower the barrier, letting every waiter through.
    pub async fn release(&self) -> Result<()> {
        self.client.delete(self.key.as_str(), None).await?;
        Ok(())
    }

    /// Wait until the barrier is released (at once if it is not held).
    pub async fn wait(&self) -> Result<()> {
        let resp = self.client.get(self.key.as_str(), None).await?;
        match resp.kvs.first() {
            None => Ok(()),
            Some(kv) => wait_delete(&self.client, &kv.key, kv.create_revision, resp.header.revision).await,
        }
    }
}

/// A barrier for a group of `count`: [`enter`](DoubleBarrier::enter) returns once
/// `count` participants have entered, [`leave`](DoubleBarrier::leave) once all of them
/// have left. Participants are keys `<key>/waiters/<nanos>` on their session leases, so a
/// participant that dies does not block the others for longer than its TTL.
#[derive(Debug)]
pub struct DoubleBarrier {
    lease: Lease,
    key: String,
    count: usize,
    mine: Option<String>,
}

impl DoubleBarrier {
    /// The double barrier at `key` for `count` participants.
    pub fn new(session: &Session, key: impl AsRef<str>, count: usize) -> DoubleBarrier {
        DoubleBarrier { lease: Lease::of(session), key: key.as_ref().to_string(), count, mine: None }
    }

    fn waiters(&self) -> String {
        format!("{}/waiters", self.key)
    }

    fn ready(&self) -> String {
        format!("{}/ready", self.key)
    }

    async fn participants(&self) -> Result<(Vec<KeyValue>, i64)> {
        let resp = self.lease.client.get(format!("{}/", self.waiters()), GetOptions::new().with_prefix()).await?;
        Ok((resp.kvs, resp.header.revision))
    }

    /// Arrive, and wait until `count` participants have.
    pub async fn enter(&mut self) -> Result<()> {
        let (key, revision, _) = self.lease.guard(create_unique(&self.lease, &self.waiters(), "")).await?;
        self.mine = Some(key.clone());
        let (all, _) = self.participants().await?;
        if all.len() > self.count {
            self.mine = None;
            self.lease.client.delete(key, None).await?;
            return Err(Error::TooManyClients);
        }
        if all.len() == self.count {
            self.lease.client.put(self.ready(), "", None).await?;
            return Ok(());
        }
        let ready = self.ready();
        loop {
            let put = wait_event(&self.lease.client, &ready, false, revision, EventType::Put);
            if self.lease.guard(put).await?.is_some() {
                return Ok(());
            }
            // The history was compacted: is the barrier open?
            if self.lease.client.get(ready.as_str(), None).await?.count > 0 {
                return Ok(());
            }
        }
    }

    /// Finish, and wait until every participant has.
    pub async fn leave(&mut self) -> Result<()> {
        let client = self.lease.client.clone();
        loop {
            let (all, rev) = self.participants().await?;
            let (Some(lowest), Some(highest)) =
                (all.iter().min_by_key(|k| k.mod_revision), all.iter().max_by_key(|k| k.mod_revision))
            else {
                self.mine = None;
                return Ok(());
            };
            let mine = self.mine.clone().unwrap_or_default();
            if !all.iter().any(|k| k.key == mine.as_bytes()) {
                // Already out: wait for the lowest, the last to go.
                self.lease.guard(wait_delete(&client, &lowest.key, lowest.create_revision, rev)).await?;
                continue;
            }
            if all.len() == 1 {
                // The last one out closes the barrier for the next round.
                client.delete(self.ready(), None).await?;
                client.delete(mine, None).await?;
                self.mine = None;
                return Ok(());
            }
            // The lowest waits for the highest; everyone else leaves and waits for the
            // lowest. A participant that dies is removed by its lease, so nobody waits forever.
            if lowest.key == mine.as_bytes() {
                self.lease.guard(wait_delete(&client, &highest.key, highest.create_revision, rev)).await?;
            } else {
                client.delete(mine, None).await?;
                self.mine = None;
                self.lease.guard(wait_delete(&client, &lowest.key, lowest.create_revision, rev)).await?;
            }
        }
    }
}
