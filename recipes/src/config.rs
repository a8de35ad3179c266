//! Configuration subscription: a key (or every key under a prefix) read into a typed
//! `serde` value, then kept current by a [`PrefixCache`] of its keys. Each new publication
//! is parsed and validated; one that fails is reported and the last good value stays in
//! force. The watch resumes where it left off after reconnects (the SDK's watch does that)
//! and, if the history it needs was compacted, the configuration is read afresh.
//!
//! A prefix becomes a JSON object: `<prefix>log/level = "debug"` and
//! `<prefix>limits/max_conns = 100` read as `{"log":{"level":"debug"},"limits":{"max_conns":100}}`.
//! Every value (of a key or under a prefix) is JSON if it parses as JSON, else a string.

use crate::cache::PrefixCache;
use crate::error::{Error, Result};
use cairn_sdk::{Client, KeyValue};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

type Validator<T> = Arc<dyn Fn(&T) -> std::result::Result<(), String> + Send + Sync>;

/// What to subscribe to, and how to check it.
///
/// ```no_run
/// # async fn demo(client: cairn_sdk::Client) -> cairn_recipes::Result<()> {
/// use cairn_recipes::{Config, ConfigUpdate};
/// #[derive(serde::Deserialize)]
/// struct Settings { log_level: String, max_conns: u32 }
///
/// let mut config = Config::<Settings>::key("/app/config")
///     .validate(|s| if s.max_conns > 0 { Ok(()) } else { Err("max_conns must be positive".into()) })
///     .subscribe(&client)
///     .await?;
/// println!("starting with log level {}", config.current().log_level);
/// while let Some(update) = config.next().await {
///     match update {
///         ConfigUpdate::Applied { value, .. } => println!("log level now {}", value.log_level),
///         ConfigUpdate::Rejected { reason, .. } => eprintln!("ignored a bad publication: {reason}"),
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Config<T> {
    key: String,
    prefix: bool,
    validate: Option<Validator<T>>,
}

/// One outcome of a publication.
#[derive(Debug)]
pub enum ConfigUpdate<T> {
    /// A new value passed parsing and validation and is now current.
    Applied {
        /// The value.
        value: Arc<T>,
        /// The revision it was published at.
        revision: i64,
    },
    /// A publication was refused; the previous value stays current.
    Rejected {
        /// Why (parse or validation error).
        reason: String,
        /// The revision of the refused publication.
        revision: i64,
    },
}

/// A subscription: the current value, and the updates as they happen. Dropping it stops
/// watching.
pub struct ConfigWatch<T> {
    current: watch::Receiver<(Arc<T>, i64)>,
    updates: mpsc::Receiver<ConfigUpdate<T>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T> std::fmt::Debug for ConfigWatch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatch").field("revision", &self.current.borrow().1).finish_non_exhaustive()
    }
}

/// How many unread updates are kept; [`ConfigWatch::current`] is always up to date.
const UPDATES: usize = 256;

impl<T: DeserializeOwned + Send + Sync + 'static> Config<T> {
    /// The configuration stored at `key`.
    pub fn key(key: impl Into<String>) -> Config<T> {
        Config { key: key.into(), prefix: false, validate: None }
    }

    /// The configuration stored under `prefix`, one field per key.
    pub fn prefix(prefix: impl Into<String>) -> Config<T> {
        Config { key: prefix.into(), prefix: true, validate: None }
    }

    /// Refuse values for which `check` returns an error.
    pub fn validate(
        mut self,
        check: impl Fn(&T) -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> Config<T> {
        self.validate = Some(Arc::new(check));
        self
    }

    /// Read the configuration and start following it. Fails if the current one is missing
    /// or invalid: there is no last good value to fall back on yet.
    pub async fn subscribe(self, client: &Client) -> Result<ConfigWatch<T>> {
        let raw = |_: &str, kv: &KeyValue| Some(kv.value.clone());
        let cache = if self.prefix {
            PrefixCache::start(client, &self.key, raw).await?
        } else {
            PrefixCache::key(client, &self.key, raw).await?
        };
        let revision = cache.revision();
        let doc = document(self.prefix, &cache.entries());
        let value = self.validate_doc(&doc).map_err(|reason| Error::Invalid { key: self.key.clone(), reason })?;
        let (current_tx, current) = watch::channel((Arc::new(value), revision));
        let (updates_tx, updates) = mpsc::channel(UPDATES);
        let follower = Follower { check: self, doc, current: current_tx, updates: updates_tx };
        let task = tokio::spawn(follower.run(cache));
        Ok(ConfigWatch { current, updates, task })
    }

    fn validate_doc(&self, doc: &Option<Value>) -> std::result::Result<T, String> {
        let doc = doc.clone().ok_or_else(|| "no configuration is stored there".to_string())?;
        let value: T = serde_json::from_value(doc).map_err(|e| e.to_string())?;
        if let Some(check) = &self.validate {
            check(&value)?;
        }
        Ok(value)
    }
}

impl<T> ConfigWatch<T> {
    /// The value in force.
    pub fn current(&self) -> Arc<T> {
        self.current.borrow().0.clone()
    }

    /// The revision the value in force was published at.
    pub fn revision(&self) -> i64 {
        self.current.borrow().1
    }

    /// A receiver of the value in force, for tasks that only need the latest value.
    pub fn subscribe(&self) -> watch::Receiver<(Arc<T>, i64)> {
        self.current.clone()
    }

    /// The next update (applied or rejected). Up to 256 unread updates are kept; later ones
    /// are dropped until some are read ([`ConfigWatch::current`] is always up to date).
    pub async fn next(&mut self) -> Option<ConfigUpdate<T>> {
        self.updates.recv().await
    }
}

impl<T> Drop for ConfigWatch<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A stored value as JSON: itself if it is JSON, else a JSON string.
fn leaf(raw: &[u8]) -> Value {
    serde_json::from_slice(raw).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(raw).into_owned()))
}

/// The stored configuration as one JSON document (`None` if nothing is stored): the value
/// of the key, or the keys under the prefix (relative) as nested objects.
fn document(prefix: bool, raw: &BTreeMap<String, Vec<u8>>) -> Option<Value> {
    if !prefix {
        return raw.get("").map(|v| leaf(v));
    }
    if raw.is_empty() {
        return None;
    }
    let mut root = Value::Object(Default::default());
    for (key, raw) in raw {
        let parts: Vec<&str> = key.split('/').filter(|p| !p.is_empty()).collect();
        let Some((last, parents)) = parts.split_last() else { continue };
        let mut node = &mut root;
        for p in parents {
            if !node.get(*p).is_some_and(Value::is_object) {
                node[*p] = Value::Object(Default::default());
            }
            node = &mut node[*p];
        }
        node[*last] = leaf(raw);
    }
    Some(root)
}

struct Follower<T> {
    check: Config<T>,
    /// The last document judged (applied or rejected), to report each publication once.
    doc: Option<Value>,
    current: watch::Sender<(Arc<T>, i64)>,
    updates: mpsc::Sender<ConfigUpdate<T>>,
}

impl<T: DeserializeOwned + Send + Sync + 'static> Follower<T> {
    /// Judge the stored document whenever the cache of its keys changes (the cache reads
    /// again after a compaction or a lost watch); ends when nobody holds the subscription.
    async fn run(mut self, cache: PrefixCache<Vec<u8>>) {
        let mut view = cache.subscribe();
        while !self.current.is_closed() && view.changed().await.is_ok() {
            let entries = view.borrow_and_update().clone();
            self.judge(&entries, cache.revision());
        }
    }

    /// Parse and validate the stored document if it changed; apply or report it.
    fn judge(&mut self, raw: &BTreeMap<String, Vec<u8>>, revision: i64) {
        let doc = document(self.check.prefix, raw);
        if doc == self.doc {
            return;
        }
        let update = match self.check.validate_doc(&doc) {
            Ok(value) => {
                let value = Arc::new(value);
                self.current.send_replace((value.clone(), revision));
                ConfigUpdate::Applied { value, revision }
            }
            Err(reason) => {
                tracing::warn!(key = self.check.key, revision, reason, "refused a config publication");
                ConfigUpdate::Rejected { reason, revision }
            }
        };
        self.doc = doc;
        if self.updates.try_send(update).is_err() {
            tracing::debug!(key = self.check.key, "config update not queued: nobody reads updates");
        }
    }
}
