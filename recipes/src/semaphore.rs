//! [`Semaphore`]: at most N holders at once (Curator's `InterProcessSemaphoreV2`), in
//! arrival order, each permit held through a session so a dead holder's permit comes back.
//!
//! Layout: `<name>/<nanos>` = the holder's value, on the holder's session lease. A permit
//! is held by the key among the first N (by create revision) under `<name>/`; a waiter
//! watches for a delete under the prefix and counts again.

use crate::error::Result;
use crate::mutex::create_unique;
use crate::wait::{delete_exact, delete_in_background, wait_event, Lease};
use cairn_sdk::{EventType, GetOptions, Session};

/// A counting semaphore named `name` with `permits` places.
///
/// ```no_run
/// # async fn demo(client: cairn_sdk::Client) -> cairn_recipes::Result<()> {
/// let session = cairn_sdk::Session::new(&client, 10).await?;
/// let downloads = cairn_recipes::Semaphore::new(&session, "/limits/downloads", 3);
/// let permit = downloads.acquire().await?; // waits while 3 others hold one
/// // ... at most three of these at a time, cluster-wide ...
/// permit.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Semaphore {
    lease: Lease,
    prefix: String,
    permits: usize,
}

/// A place in a [`Semaphore`]; released by [`Permit::release`], or in the background when
/// dropped, or when its session's lease ends.
#[derive(Debug)]
pub struct Permit {
    lease: Lease,
    key: String,
    revision: i64,
    released: bool,
}

impl Semaphore {
    /// The semaphore `name` with `permits` places (at least one), for `session`.
    pub fn new(session: &Session, name: impl AsRef<str>, permits: usize) -> Semaphore {
        Semaphore { lease: Lease::of(session), prefix: name.as_ref().to_string(), permits: permits.max(1) }
    }

    /// Wait for a place. Fails with [`crate::Error::SessionLost`] if the session's lease is
    /// lost first; if the future is dropped while waiting, the place in line is given up.
    pub async fn acquire(&self) -> Result<Permit> {
        let (key, revision, _) = self.lease.guard(create_unique(&self.lease, &self.prefix, "")).await?;
        // Until acquired, dropping the future drops `waiting`, which gives the place up.
        let waiting = Permit { lease: self.lease.clone(), key, revision, released: false };
        loop {
            let (ahead, at) = self.lease.guard(self.ahead_of(revision)).await?;
            if ahead < self.permits {
                return Ok(waiting);
            }
            self.lease
                .guard(wait_event(&self.lease.client, &format!("{}/", self.prefix), true, at, EventType::Delete))
                .await?;
        }
    }

    /// Take a place if one is free now, else `None` (and no place in line is kept).
    pub async fn try_acquire(&self) -> Result<Option<Permit>> {
        let (key, revision, _) = self.lease.guard(create_unique(&self.lease, &self.prefix, "")).await?;
        let permit = Permit { lease: self.lease.clone(), key, revision, released: false };
        if self.ahead_of(revision).await?.0 < self.permits {
            return Ok(Some(permit));
        }
        permit.release().await?;
        Ok(None)
    }

    /// How many keys were created before `revision` (holders and waiters ahead; counted up
    /// to `permits`), and the revision of that read. (Not `count_only`: etcd's count
    /// ignores the create-revision filter; its limit is applied after it.)
    async fn ahead_of(&self, revision: i64) -> Result<(usize, i64)> {
        let opts = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_create_revision_range(0, revision - 1)
            .with_limit(self.permits as i64);
        let r = self.lease.client.get(format!("{}/", self.prefix), opts).await?;
        Ok((r.kvs.len(), r.header.revision))
    }

    /// How many hold or wait for a place now.
    pub async fn queued(&self) -> Result<usize> {
        let opts = GetOptions::new().with_prefix().with_count_only();
        Ok(self.lease.client.get(format!("{}/", self.prefix), opts).await?.count as usize)
    }
}

impl Permit {
    /// The key that holds the place.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Give the place back.
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        delete_exact(&self.lease.client, &self.key, self.revision).await
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.released {
            delete_in_background(&self.lease.client, self.key.clone(), self.revision);
        }
    }
}
