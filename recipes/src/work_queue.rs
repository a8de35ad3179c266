//! [`WorkQueue`]: an at-least-once work queue. A consumer takes an item by claiming it
//! under its session's lease; the item stays in the queue until the consumer acknowledges
//! it. If the consumer dies (or is cut off longer than its TTL) before that, its claim
//! expires with the lease and the item is handed out again. ([`crate::Queue`], by
//! contrast, deletes an item as it hands it out: at most once.)
//!
//! Layout under `<name>/`: items `items/<nanos>` = payload (taken oldest first, by create
//! revision); claims `claims/<nanos>` = the consumer's lease ID in hex, on that lease. A
//! claim is made by a transaction that checks the item is there and unclaimed; an ack
//! deletes the item and its claim together, checking the claim is still the consumer's.

use crate::error::{Error, Result};
use crate::mutex::create_unique;
use crate::wait::{next, recoverable, Lease};
use cairn_sdk::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Session, SortOrder, SortTarget, Txn, TxnOp,
    WatchOptions,
};

/// An at-least-once queue named `name`.
///
/// ```no_run
/// # async fn demo(client: cairn_sdk::Client) -> cairn_recipes::Result<()> {
/// use cairn_recipes::WorkQueue;
/// let jobs = WorkQueue::new(&client, "/jobs");
/// jobs.push("resize photo 17").await?;
/// // A worker: if it dies before `ack`, the job comes back after its session's TTL.
/// let session = cairn_sdk::Session::new(&client, 10).await?;
/// let job = jobs.take(&session).await?;
/// println!("working on {}", String::from_utf8_lossy(job.payload()));
/// job.ack().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct WorkQueue {
    client: Client,
    name: String,
}

/// An item a consumer has claimed: [`Job::ack`] when done, [`Job::release`] to hand it
/// back now. Dropped without either, it stays claimed until the session ends.
#[derive(Debug)]
pub struct Job {
    client: Client,
    item: String,
    claim: String,
    lease: i64,
    payload: Vec<u8>,
}

impl WorkQueue {
    /// The queue `name`.
    pub fn new(client: &Client, name: impl AsRef<str>) -> WorkQueue {
        WorkQueue { client: client.clone(), name: name.as_ref().to_string() }
    }

    fn items(&self) -> String {
        format!("{}/items/", self.name)
    }

    fn claim_of(&self, item: &str) -> String {
        let id = item.rsplit('/').next().unwrap_or_default();
        format!("{}/claims/{id}", self.name)
    }

    /// Add an item.
    pub async fn push(&self, payload: impl AsRef<str>) -> Result<()> {
        let items = format!("{}/items", self.name);
        create_unique(&Lease::none(&self.client), &items, payload.as_ref()).await?;
        Ok(())
    }

    /// Claim the oldest unclaimed item for `session`, waiting until there is one.
    pub async fn take(&self, session: &Session) -> Result<Job> {
        let lease = Lease::of(session);
        loop {
            let (job, revision) = lease.guard(self.try_claim(&lease)).await?;
            if let Some(job) = job {
                return Ok(job);
            }
            // Nothing free: wait for a new item or a claim to go (released, acked, expired).
            lease.guard(self.wait_change(revision)).await?;
        }
    }

    /// Claim the oldest unclaimed item for `session` if there is one now.
    pub async fn try_take(&self, session: &Session) -> Result<Option<Job>> {
        Ok(self.try_claim(&Lease::of(session)).await?.0)
    }

    /// One pass over the items: a claimed job, or none and the revision of the reads.
    async fn try_claim(&self, lease: &Lease) -> Result<(Option<Job>, i64)> {
        let items = self.items();
        let opts = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend);
        let listed = self.client.get(items.as_str(), opts.clone()).await?;
        let claims = self
            .client
            .get(
                format!("{}/claims/", self.name),
                GetOptions::new().with_prefix().with_keys_only().with_revision(listed.header.revision),
            )
            .await?;
        let claimed: std::collections::BTreeSet<Vec<u8>> = claims.kvs.into_iter().map(|kv| kv.key).collect();
        for kv in listed.kvs {
            let item = String::from_utf8_lossy(&kv.key).into_owned();
            let claim = self.claim_of(&item);
            if claimed.contains(claim.as_bytes()) {
                continue;
            }
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(item.as_str(), CompareOp::Equal, kv.mod_revision),
                    Compare::create_revision(claim.as_str(), CompareOp::Equal, 0),
                ])
                .and_then([TxnOp::put(
                    claim.as_str(),
                    format!("{:x}", lease.id),
                    PutOptions::new().with_lease(lease.id),
                )]);
            if self.client.txn(txn).await?.succeeded {
                let job = Job { client: self.client.clone(), item, claim, lease: lease.id, payload: kv.value };
                return Ok((Some(job), listed.header.revision));
            }
        }
        Ok((None, listed.header.revision))
    }

    /// Wait for a put of an item or a delete of a claim after `revision`.
    async fn wait_change(&self, revision: i64) -> Result<()> {
        let opts = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut w = self.client.watch(format!("{}/", self.name), opts).await?;
        let items = self.items();
        loop {
            match next(&mut w).await {
                Ok(resp) => {
                    let wakes = resp.events.iter().any(|e| {
                        let key = e.kv.as_ref().map(|kv| kv.key.as_slice()).unwrap_or_default();
                        match e.r#type() {
                            EventType::Put => key.starts_with(items.as_bytes()),
                            EventType::Delete => !key.starts_with(items.as_bytes()),
                        }
                    });
                    if wakes {
                        return Ok(());
                    }
                }
                Err(e) if recoverable(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Items waiting or being worked on.
    pub async fn len(&self) -> Result<i64> {
        Ok(self.client.get(self.items(), GetOptions::new().with_prefix().with_count_only()).await?.count)
    }

    /// Whether the queue holds no item.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }
}

impl Job {
    /// The item's payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The item's key.
    pub fn key(&self) -> &str {
        &self.item
    }

    /// Done: remove the item. Fails with [`Error::SessionLost`] if the claim was lost
    /// meanwhile (the session expired): the item may be handed to another consumer.
    pub async fn ack(self) -> Result<()> {
        let txn = Txn::new()
            .when([Compare::lease(self.claim.as_str(), CompareOp::Equal, self.lease)])
            .and_then([TxnOp::delete(self.item.as_str(), None), TxnOp::delete(self.claim.as_str(), None)]);
        if self.client.txn(txn).await?.succeeded {
            Ok(())
        } else {
            Err(Error::SessionLost)
        }
    }

    /// Hand the item back for another consumer now.
    pub async fn release(self) -> Result<()> {
        let txn = Txn::new()
            .when([Compare::lease(self.claim.as_str(), CompareOp::Equal, self.lease)])
            .and_then([TxnOp::delete(self.claim.as_str(), None)]);
        self.client.txn(txn).await?;
        Ok(())
    }
}
