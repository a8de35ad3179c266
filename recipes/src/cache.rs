//! [`PrefixCache`]: a typed, always-current local copy of every key under a prefix, with
//! change events — Curator's `CuratorCache`, clientv3's `mirror`. It reads the prefix,
//! then follows a watch from the revision of that read (nothing missed in between); after
//! a compaction or a lost watch it reads again and reports what changed meanwhile.
//! [`crate::Discovery`] is one, of service instances; [`crate::Config`] follows one over
//! its key or prefix ([`PrefixCache::key`] follows a single key).

use crate::error::Result;
use crate::wait::{next, recoverable};
use cairn_sdk::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// The entries of a cache: key (without the prefix) -> value.
pub type Entries<T> = Arc<BTreeMap<String, T>>;

/// A change seen by a [`PrefixCache`].
#[derive(Debug, Clone, PartialEq)]
pub enum CacheEvent<T> {
    /// `key` was written (created or changed): its new value and the old one, if any.
    Put {
        /// The key, without the prefix.
        key: String,
        /// The new value.
        value: T,
        /// The value before, if the key existed.
        prev: Option<T>,
    },
    /// `key` was deleted (or expired with its lease).
    Delete {
        /// The key, without the prefix.
        key: String,
        /// Its last value.
        prev: T,
    },
}

/// How a stored value becomes a `T` (`None`: skip the key, e.g. it does not parse).
type Decode<T> = Arc<dyn Fn(&str, &KeyValue) -> Option<T> + Send + Sync>;

/// A live copy of the keys under a prefix, decoded as `T`. Cheap to read (no call to the
/// cluster); dropping it stops following.
///
/// ```no_run
/// # async fn demo(client: cairn_sdk::Client) -> cairn_recipes::Result<()> {
/// #[derive(serde::Deserialize, Clone, PartialEq, Debug)]
/// struct Flag { enabled: bool }
/// let flags = cairn_recipes::PrefixCache::<Flag>::json(&client, "/flags/").await?;
/// let on = flags.get("new-ui").is_some_and(|f| f.enabled);
/// let mut events = flags.events();
/// while let Ok(ev) = events.recv().await {
///     println!("{ev:?}");
/// }
/// # Ok(()) }
/// ```
pub struct PrefixCache<T> {
    view: watch::Receiver<Entries<T>>,
    revision: Arc<AtomicI64>,
    events: broadcast::Sender<CacheEvent<T>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T> std::fmt::Debug for PrefixCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixCache").field("revision", &self.revision.load(Ordering::Acquire)).finish_non_exhaustive()
    }
}

impl<T: Clone + PartialEq + Send + Sync + 'static> PrefixCache<T> {
    /// Follow the keys under `prefix`, decoding each with `decode(key without prefix, kv)`;
    /// keys it answers `None` for are left out.
    pub async fn start(
        client: &Client,
        prefix: impl AsRef<str>,
        decode: impl Fn(&str, &KeyValue) -> Option<T> + Send + Sync + 'static,
    ) -> Result<PrefixCache<T>> {
        Self::follow_scope(client, Scope { key: prefix.as_ref().to_string(), prefix: true }, Arc::new(decode)).await
    }

    /// Follow the single key `key` (its entry is named `""`), decoding it with `decode`.
    pub async fn key(
        client: &Client,
        key: impl AsRef<str>,
        decode: impl Fn(&str, &KeyValue) -> Option<T> + Send + Sync + 'static,
    ) -> Result<PrefixCache<T>> {
        Self::follow_scope(client, Scope { key: key.as_ref().to_string(), prefix: false }, Arc::new(decode)).await
    }

    async fn follow_scope(client: &Client, prefix: Scope, decode: Decode<T>) -> Result<PrefixCache<T>> {
        let (map, rev) = read_all(client, &prefix, &decode).await?;
        let (tx, view) = watch::channel(Arc::new(map));
        let revision = Arc::new(AtomicI64::new(rev));
        let (events, _) = broadcast::channel(1024);
        let follower = Follower {
            client: client.clone(),
            prefix,
            decode,
            view: tx,
            revision: revision.clone(),
            events: events.clone(),
        };
        let task = tokio::spawn(follower.run(rev));
        Ok(PrefixCache { view, revision, events, task })
    }

    /// Follow the keys under `prefix` holding JSON `T`s (keys that do not parse are left
    /// out).
    pub async fn json(client: &Client, prefix: impl AsRef<str>) -> Result<PrefixCache<T>>
    where
        T: serde::de::DeserializeOwned,
    {
        Self::start(client, prefix, |key, kv| match serde_json::from_slice(&kv.value) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!(key, %e, "prefix cache: left out a value that does not parse");
                None
            }
        })
        .await
    }

    /// The value of `key` (without the prefix).
    pub fn get(&self, key: &str) -> Option<T> {
        self.view.borrow().get(key).cloned()
    }

    /// Every entry now.
    pub fn entries(&self) -> Entries<T> {
        self.view.borrow().clone()
    }

    /// The store revision the cache is current to (at least); when a receiver of
    /// [`PrefixCache::subscribe`] sees a change, this already covers it.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }

    /// A receiver of the entries: `changed().await` resolves on every change.
    pub fn subscribe(&self) -> watch::Receiver<Entries<T>> {
        self.view.clone()
    }

    /// The changes from now on, in order. (A receiver more than 1,024 changes behind gets
    /// `Lagged` and should re-read [`PrefixCache::entries`].)
    pub fn events(&self) -> broadcast::Receiver<CacheEvent<T>> {
        self.events.subscribe()
    }
}

impl<T> Drop for PrefixCache<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a cache follows: every key under `key`, or `key` alone.
struct Scope {
    key: String,
    prefix: bool,
}

impl Scope {
    fn get(&self) -> GetOptions {
        if self.prefix {
            GetOptions::new().with_prefix()
        } else {
            GetOptions::new()
        }
    }

    fn watch(&self, from: i64) -> WatchOptions {
        let opts = WatchOptions::new().with_start_revision(from);
        if self.prefix {
            opts.with_prefix()
        } else {
            opts
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key)
    }
}

async fn read_all<T>(client: &Client, scope: &Scope, decode: &Decode<T>) -> Result<(BTreeMap<String, T>, i64)> {
    let resp = client.get(scope.key.as_str(), scope.get()).await?;
    let mut map = BTreeMap::new();
    for kv in &resp.kvs {
        let key = relative(&scope.key, &kv.key);
        if let Some(v) = decode(&key, kv) {
            map.insert(key, v);
        }
    }
    Ok((map, resp.header.revision))
}

fn relative(prefix: &str, key: &[u8]) -> String {
    String::from_utf8_lossy(key.strip_prefix(prefix.as_bytes()).unwrap_or(key)).into_owned()
}

struct Follower<T> {
    client: Client,
    prefix: Scope,
    decode: Decode<T>,
    view: watch::Sender<Entries<T>>,
    revision: Arc<AtomicI64>,
    events: broadcast::Sender<CacheEvent<T>>,
}

impl<T: Clone + PartialEq + Send + Sync + 'static> Follower<T> {
    /// Apply the watch; after a compaction or a failed watch, read again (and report the
    /// difference as events).
    async fn run(self, mut revision: i64) {
        loop {
            match self.follow(revision).await {
                Ok(()) => return, // nobody looks at the cache any more
                Err(e) if recoverable(&e) => {
                    tracing::debug!(%e, prefix = %self.prefix, "cache watch ended; reading again")
                }
                Err(e) => {
                    tracing::warn!(%e, prefix = %self.prefix, "cache watch failed; reading again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            match read_all(&self.client, &self.prefix, &self.decode).await {
                Ok((map, rev)) => {
                    revision = rev;
                    self.revision.store(rev, Ordering::Release);
                    self.replace(map);
                }
                Err(e) => {
                    tracing::warn!(%e, prefix = %self.prefix, "cache read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn follow(&self, revision: i64) -> Result<()> {
        let mut w = self.client.watch(self.prefix.key.as_str(), self.prefix.watch(revision + 1)).await?;
        loop {
            if self.view.is_closed() {
                return Ok(());
            }
            let resp = next(&mut w).await?;
            let mut changes = Vec::new();
            // Before the view changes, so a reader woken by the change sees its revision.
            self.revision.store(resp.header.revision, Ordering::Release);
            self.view.send_if_modified(|v| {
                let map = Arc::make_mut(v);
                for ev in &resp.events {
                    let kv = ev.kv.clone().unwrap_or_default();
                    let key = relative(&self.prefix.key, &kv.key);
                    let new = match ev.r#type() {
                        EventType::Put => (self.decode)(&key, &kv),
                        EventType::Delete => None,
                    };
                    let prev = match &new {
                        Some(v) => map.insert(key.clone(), v.clone()),
                        None => map.remove(&key),
                    };
                    match (new, prev) {
                        (Some(value), prev) if prev.as_ref() != Some(&value) => {
                            changes.push(CacheEvent::Put { key, value, prev })
                        }
                        (None, Some(prev)) => changes.push(CacheEvent::Delete { key, prev }),
                        _ => {}
                    }
                }
                !changes.is_empty()
            });
            for c in changes {
                let _ = self.events.send(c);
            }
        }
    }

    /// Install a fresh read, reporting the differences.
    fn replace(&self, map: BTreeMap<String, T>) {
        let old = self.view.borrow().clone();
        let mut changes = Vec::new();
        for (k, v) in &map {
            if old.get(k) != Some(v) {
                changes.push(CacheEvent::Put { key: k.clone(), value: v.clone(), prev: old.get(k).cloned() });
            }
        }
        for (k, v) in old.iter() {
            if !map.contains_key(k) {
                changes.push(CacheEvent::Delete { key: k.clone(), prev: v.clone() });
            }
        }
        if !changes.is_empty() {
            self.view.send_replace(Arc::new(map));
            for c in changes {
                let _ = self.events.send(c);
            }
        }
    }
}
