//! Work queues: [`Queue`] (first in, first out) and [`PriorityQueue`], with etcd's
//! `contrib/recipes` key layouts. Items are keys; a consumer takes one by deleting it in a
//! transaction that checks it is still there, so exactly one consumer gets each item.

use crate::error::Result;
use crate::mutex::create_unique;
use crate::wait::{wait_event, Lease};
use cairn_sdk::{Client, Compare, CompareOp, EventType, GetOptions, SortOrder, SortTarget, Txn, TxnOp};

/// A FIFO queue under `<name>/`: items are `<name>/<nanos>`, taken in the order they were
/// written (by mod revision).
///
/// ```no_run
/// # async fn demo(client: cairn_sdk::Client) -> cairn_recipes::Result<()> {
/// let jobs = cairn_recipes::Queue::new(&client, "/jobs");
/// jobs.enqueue("resize photo 17").await?;
/// let job = jobs.dequeue().await?; // waits while the queue is empty
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Queue {
    client: Client,
    name: String,
}

impl Queue {
    /// The queue `name`.
    pub fn new(client: &Client, name: impl AsRef<str>) -> Queue {
        Queue { client: client.clone(), name: name.as_ref().to_string() }
    }

    /// Add an item at the tail.
    pub async fn enqueue(&self, value: impl AsRef<str>) -> Result<()> {
        create_unique(&Lease::none(&self.client), &self.name, value.as_ref()).await?;
        Ok(())
    }

    /// Take the item at the head, waiting until there is one.
    pub async fn dequeue(&self) -> Result<Vec<u8>> {
        let first = GetOptions::new().with_prefix().with_sort(SortTarget::Mod, SortOrder::Ascend).with_limit(1);
        take_first(&self.client, &format!("{}/", self.name), first).await
    }

    /// How many items are waiting.
    pub async fn len(&self) -> Result<i64> {
        Ok(self.client.get(format!("{}/", self.name), GetOptions::new().with_prefix().with_count_only()).await?.count)
    }

    /// Whether no item is waiting.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }
}

/// A priority queue under `<name>/`: items are `<name>/<priority, 5 digits>/<sequence>`;
/// the lowest priority number is taken first, and items of one priority in order.
#[derive(Debug, Clone)]
pub struct PriorityQueue {
    client: Client,
    name: String,
}

impl PriorityQueue {
    /// The priority queue `name`.
    pub fn new(client: &Client, name: impl AsRef<str>) -> PriorityQueue {
        PriorityQueue { client: client.clone(), name: name.as_ref().to_string() }
    }

    /// Add an item; `priority` 0 is taken first.
    pub async fn enqueue(&self, value: impl AsRef<str>, priority: u16) -> Result<()> {
        let prefix = format!("{}/{priority:05}", self.name);
        // A sequence number one past the last key of this priority. The marker key
        // `__<prefix>` is rewritten by every enqueue, so a transaction whose read is stale
        // (someone enqueued since) fails and retries instead of reusing a number.
        let marker = format!("__{prefix}");
        loop {
            let last = GetOptions::new().with_prefix().with_sort(SortTarget::Key, SortOrder::Descend).with_limit(1);
            let resp = self.client.get(format!("{prefix}/"), last).await?;
            let seq = resp.kvs.first().map_or(0, |kv| {
                let key = String::from_utf8_lossy(&kv.key);
                key.rsplit('/').next().and_then(|n| n.parse::<u64>().ok()).map_or(0, |n| n + 1)
            });
            let key = format!("{prefix}/{seq:016}");
            let txn = Txn::new()
                .when([Compare::mod_revision(marker.as_str(), CompareOp::Less, resp.header.revision + 1)])
                .and_then([TxnOp::put(marker.as_str(), "", None), TxnOp::put(key, value.as_ref(), None)]);
            if self.client.txn(txn).await?.succeeded {
                return Ok(());
            }
        }
    }

    /// Take the most urgent item, waiting until there is one.
    pub async fn dequeue(&self) -> Result<Vec<u8>> {
        let first = GetOptions::new().with_prefix().with_sort(SortTarget::Key, SortOrder::Ascend).with_limit(1);
        take_first(&self.client, &format!("{}/", self.name), first).await
    }
}

/// Delete and return the first key `order` finds under `prefix`, waiting for one to appear.
async fn take_first(client: &Client, prefix: &str, order: GetOptions) -> Result<Vec<u8>> {
    loop {
        let resp = client.get(prefix, order.clone()).await?;
        match resp.kvs.into_iter().next() {
            Some(kv) => {
                // Ours only if nobody took it first.
                let txn = Txn::new()
                    .when([Compare::mod_revision(kv.key.clone(), CompareOp::Equal, kv.mod_revision)])
                    .and_then([TxnOp::delete(kv.key, None)]);
                if client.txn(txn).await?.succeeded {
                    return Ok(kv.value);
                }
            }
            None => {
                wait_event(client, prefix, true, resp.header.revision, EventType::Put).await?;
            }
        }
    }
}
