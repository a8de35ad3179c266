//! Distributed locks: [`Mutex`] (etcd's `concurrency.Mutex`, the key layout `etcdctl lock`
//! and the server's Lock service use) and [`RwMutex`] (etcd's `contrib/recipes` layout).
//!
//! A lock is a key under the lock's name, attached to the holder's session lease. Waiters
//! are served in the order their keys were created, and each waits only for the key just
//! ahead of it, so a release wakes one waiter. If the holder dies, its lease expires, its
//! key goes, and the next waiter proceeds — within the session TTL.

use crate::error::{Error, Result};
use crate::wait::{delete_exact, delete_in_background, unique_key, wait_delete, wait_deletes, Lease};
use cairn_sdk::{
    Compare, CompareOp, GetOptions, Header, KeyValue, PutOptions, Session, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};

/// A held lock: the key that holds it and its revision, which is a fencing token (it only
/// grows from one holder to the next). Dropping the guard releases the lock in the
/// background; [`LockGuard::unlock`] releases it and waits for the answer.
#[derive(Debug)]
pub struct LockGuard {
    lease: Lease,
    key: String,
    revision: i64,
    header: Header,
    released: bool,
}

impl LockGuard {
    /// The key holding the lock (`<name>/<lease id in hex>` for a [`Mutex`]).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lock key's create revision: a fencing token that grows with every new holder.
    pub fn fencing_token(&self) -> i64 {
        self.revision
    }

    /// The header of the answer that granted the lock.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// A comparison that holds only while this guard still owns the lock: put it in a
    /// transaction's `when` so a write happens only under the lock, even if the lease has
    /// expired without this process noticing yet.
    pub fn is_owner(&self) -> Compare {
        Compare::create_revision(self.key.as_str(), CompareOp::Equal, self.revision)
    }

    /// Resolves if the session's lease is lost, which releases the lock.
    pub async fn lost(&self) {
        self.lease.lost().await
    }

    /// Release the lock.
    pub async fn unlock(mut self) -> Result<()> {
        self.released = true;
        self.lease.client.delete(self.key.as_str(), None).await?;
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.released {
            delete_in_background(&self.lease.client, std::mem::take(&mut self.key), self.revision);
        }
    }
}

/// A key we created (or found) while trying to lock: deleted unless it turns into a guard,
/// so a lock attempt that fails or is cancelled leaves nothing behind.
struct Attempt {
    lease: Lease,
    key: Option<String>,
    revision: i64,
}

impl Attempt {
    fn into_guard(mut self, header: Header) -> LockGuard {
        let key = self.key.take().unwrap_or_default();
        LockGuard { lease: self.lease.clone(), key, revision: self.revision, header, released: false }
    }

    /// Withdraw now (and wait for it).
    async fn withdraw(mut self) -> Result<()> {
        match self.key.take() {
            Some(key) => delete_exact(&self.lease.client, &key, self.revision).await,
            None => Ok(()),
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            delete_in_background(&self.lease.client, key, self.revision);
        }
    }
}

/// A mutual-exclusion lock named `name`, held through a [`Session`].
///
/// Its key is `<name>/<lease id in hex>`, as in etcd's `clientv3/concurrency`, so it
/// excludes Go programs using `concurrency.NewMutex`, `etcdctl lock <name>` and the Lock
/// service on the same name. One session holds a given name at most once: locking again
/// from the same session finds its own key and succeeds at once (as in etcd), so give each
/// concurrent worker its own session.
///
/// ```no_run
/// # async fn demo(client: cairn_sdk::Client) -> cairn_recipes::Result<()> {
/// use cairn_recipes::Mutex;
/// use cairn_sdk::{Session, Txn, TxnOp};
/// let session = Session::new(&client, 10).await?;
/// let guard = Mutex::new(&session, "/locks/report").lock().await?;
/// // Write only while still holding the lock (fenced by the lock key's revision).
/// let txn = Txn::new().when([guard.is_owner()]).and_then([TxnOp::put("/report/owner", "me", None)]);
/// client.txn(txn).await?;
/// guard.unlock().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Mutex {
    lease: Lease,
    prefix: String,
}

impl Mutex {
    /// The mutex `name` for `session`.
    pub fn new(session: &Session, name: impl AsRef<str>) -> Mutex {
        Mutex { lease: Lease::of(session), prefix: format!("{}/", name.as_ref()) }
    }

    /// This session's key for the lock.
    pub fn key(&self) -> String {
        format!("{}{:x}", self.prefix, self.lease.id)
    }

    /// Create our key if absent; answer it (with its create revision), the current owner
    /// and the header.
    async fn enqueue(&self) -> Result<(Attempt, Option<KeyValue>, Header)> {
        let key = self.key();
        let owner = TxnOp::get(
            self.prefix.as_str(),
            GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1),
        );
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), "", PutOptions::new().with_lease(self.lease.id)), owner.clone()])
            .or_else([TxnOp::get(key.as_str(), None), owner]);
        let resp = self.lease.client.txn(txn).await?;
        let mut gets = resp.responses.into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let revision = if resp.succeeded {
            resp.header.revision
        } else {
            let mine = gets.next().and_then(|g| g.kvs.into_iter().next());
            mine.map_or(resp.header.revision, |kv| kv.create_revision)
        };
        let owner = gets.next().and_then(|g| g.kvs.into_iter().next());
        let attempt = Attempt { lease: self.lease.clone(), key: Some(key), revision };
        Ok((attempt, owner, resp.header))
    }

    /// Wait until the lock is ours. Fails with [`Error::SessionLost`] if the session's
    /// lease is lost first; if the returned future is dropped, our place in line is given up.
    pub async fn lock(&self) -> Result<LockGuard> {
        let client = &self.lease.client;
        loop {
            let (attempt, owner, header) = self.lease.guard(self.enqueue()).await?;
            let revision = attempt.revision;
            if owner.is_none_or(|o| o.create_revision == revision) {
                return Ok(attempt.into_guard(header));
            }
            self.lease.guard(wait_deletes(client, &self.prefix, revision - 1)).await?;
            // Our key must still be there: if the lease expired while we waited, it is not.
            let mine = client.get(self.key(), None).await?;
            match mine.kvs.first() {
                Some(kv) if kv.create_revision == revision => return Ok(attempt.into_guard(mine.header)),
                // Deleted by someone else (an unlock of the same session's key): queue again.
                _ if client.lease_time_to_live(self.lease.id, false).await?.ttl > 0 => continue,
                _ => return Err(Error::SessionLost),
            }
        }
    }

    /// Take the lock if nobody holds it, else fail at once with [`Error::Locked`].
    pub async fn try_lock(&self) -> Result<LockGuard> {
        let (attempt, owner, header) = self.lease.guard(self.enqueue()).await?;
        if owner.is_none_or(|o| o.create_revision == attempt.revision) {
            return Ok(attempt.into_guard(header));
        }
        attempt.withdraw().await?;
        Err(Error::Locked)
    }
}

/// A readers-writer lock named `name`: many readers or one writer, in arrival order.
///
/// The layout is etcd's `contrib/recipes` RWMutex: readers create `<name>/read/<nanos>`,
/// writers `<name>/write/<nanos>`, on the session lease. A reader waits for the writers
/// ahead of it; a writer waits for everyone ahead of it.
#[derive(Debug, Clone)]
pub struct RwMutex {
    lease: Lease,
    prefix: String,
}

impl RwMutex {
    /// The readers-writer lock `name` for `session`.
    pub fn new(session: &Session, name: impl AsRef<str>) -> RwMutex {
        RwMutex { lease: Lease::of(session), prefix: format!("{}/", name.as_ref()) }
    }

    /// Wait until no writer is ahead of us; several readers may hold the lock together.
    pub async fn read_lock(&self) -> Result<LockGuard> {
        self.acquire("read", "write").await
    }

    /// Wait until nobody is ahead of us; a writer holds the lock alone.
    pub async fn write_lock(&self) -> Result<LockGuard> {
        self.acquire("write", "").await
    }

    async fn acquire(&self, kind: &str, blocked_by: &str) -> Result<LockGuard> {
        let (key, revision, header) =
            self.lease.guard(create_unique(&self.lease, &format!("{}{kind}", self.prefix), "")).await?;
        let attempt = Attempt { lease: self.lease.clone(), key: Some(key), revision };
        let blockers = format!("{}{blocked_by}", self.prefix);
        let client = &self.lease.client;
        loop {
            let opts = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Mod, SortOrder::Descend)
                .with_limit(1)
                .with_mod_revision_range(0, revision - 1);
            let ahead = self.lease.guard(async { Ok(client.get(blockers.as_str(), opts).await?) }).await?;
            let Some(kv) = ahead.kvs.first() else {
                return Ok(attempt.into_guard(header));
            };
            self.lease.guard(wait_delete(client, &kv.key, kv.create_revision, ahead.header.revision)).await?;
        }
    }
}

/// Create `<prefix>/<unique>` = `value` on the lease (none if `lease.id` is 0), retrying on
/// a name collision: its key, revision and the header.
pub(crate) async fn create_unique(lease: &Lease, prefix: &str, value: &str) -> Result<(String, i64, Header)> {
    loop {
        let key = unique_key(prefix);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value, PutOptions::new().with_lease(lease.id))]);
        let resp = lease.client.txn(txn).await?;
        if resp.succeeded {
            return Ok((key, resp.header.revision, resp.header));
        }
    }
}
