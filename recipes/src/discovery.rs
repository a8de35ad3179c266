//! Service discovery: a live view of a service's instances — a [`PrefixCache`] of their
//! registrations (a prefix watch from the revision of the initial read, read again after
//! compaction).
//! On top of the view: pickers ([`Balancer`]), a [`tower::discover::Discover`] stream
//! ([`Discovery::discover`]) and a load-balanced tonic channel ([`Discovery::channel`]).

use crate::cache::PrefixCache;
use crate::error::Result;
use crate::registry::Record;
use cairn_sdk::{Client, KeyValue};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tower::discover::Change;

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The instance id (the key after `<service>/`).
    pub id: String,
    /// Where it serves (`Addr` of the registration).
    pub endpoint: String,
    /// What it registered besides its address.
    pub metadata: serde_json::Value,
    /// The lease keeping it registered.
    pub lease: i64,
    /// The revision of its registration.
    pub revision: i64,
}

impl Instance {
    /// The metadata as a `T` (the type it was registered with, see
    /// [`crate::Registry::register_typed`]).
    pub fn metadata_as<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.metadata.clone())
            .map_err(|e| crate::Error::Invalid { key: self.id.clone(), reason: e.to_string() })
    }

    /// Its endpoint as a URL: as registered if it has a scheme (`https://...`), else
    /// `http://<endpoint>`.
    pub fn url(&self) -> String {
        if self.endpoint.contains("://") {
            self.endpoint.clone()
        } else {
            format!("http://{}", self.endpoint)
        }
    }

    /// Its weight for [`Strategy::Weighted`]: `"weight"` in its metadata
    /// ([`crate::Registration::set_weight`]), 1 if absent.
    pub fn weight(&self) -> u64 {
        self.metadata.get("weight").and_then(|w| w.as_u64()).unwrap_or(1)
    }

    /// Whether it asked to get no new work ([`crate::Registration::drain`]).
    pub fn is_draining(&self) -> bool {
        self.metadata.get("drain").and_then(|d| d.as_bool()).unwrap_or(false)
    }
}

/// The instances of a service, by id.
pub type Instances = Arc<BTreeMap<String, Instance>>;

fn instance(id: &str, kv: &KeyValue) -> Instance {
    let id = id.to_string();
    // Registrations made with a plain address as the value are accepted too.
    let (endpoint, metadata) = match serde_json::from_slice::<Record>(&kv.value) {
        Ok(r) => (r.addr, r.metadata),
        Err(_) => (String::from_utf8_lossy(&kv.value).into_owned(), serde_json::Value::Null),
    };
    Instance { id, endpoint, metadata, lease: kv.lease, revision: kv.mod_revision }
}

/// A live view of the instances of one service. Dropping it stops the watch (and ends the
/// streams and channels made from it).
///
/// ```no_run
/// # async fn demo(client: cairn_sdk::Client) -> cairn_recipes::Result<()> {
/// use cairn_recipes::{Discovery, Strategy};
/// let greeters = Discovery::start(&client, "/services/greeter").await?;
/// let balancer = greeters.balancer(Strategy::PowerOfTwoChoices);
/// if let Some(picked) = balancer.pick() {
///     println!("calling {}", picked.instance.endpoint); // in flight until `picked` drops
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Discovery {
    cache: PrefixCache<Instance>,
}

impl Discovery {
    /// Read the instances of `service` (keys under `<service>/`) and keep the view current.
    pub async fn start(client: &Client, service: impl AsRef<str>) -> Result<Discovery> {
        let prefix = format!("{}/", service.as_ref());
        let cache = PrefixCache::start(client, prefix, |id, kv| Some(instance(id, kv))).await?;
        Ok(Discovery { cache })
    }

    /// The instances now.
    pub fn instances(&self) -> Vec<Instance> {
        self.cache.entries().values().cloned().collect()
    }

    /// A receiver of the view: `changed().await` resolves on every change.
    pub fn subscribe(&self) -> watch::Receiver<Instances> {
        self.cache.subscribe()
    }

    /// The underlying cache: its revision and its change events (instances joining,
    /// changing and leaving).
    pub fn cache(&self) -> &PrefixCache<Instance> {
        &self.cache
    }

    /// A picker over the live instances.
    pub fn balancer(&self, strategy: Strategy) -> Balancer {
        Balancer { view: self.subscribe(), strategy, next: AtomicUsize::new(0), load: Mutex::default() }
    }

    /// The view as a stream of [`Change`]s, which is a [`tower::discover::Discover`]: each
    /// instance is turned into a service with `make` (e.g. a tonic client for its endpoint)
    /// and a tower balancer spreads requests across them.
    pub fn discover<S, F>(&self, make: F) -> DiscoverStream<S>
    where
        S: Send + 'static,
        F: FnMut(&Instance) -> Option<S> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(feed(self.subscribe(), make, tx));
        DiscoverStream { rx }
    }

    /// A tonic channel that balances calls across the live instances (connecting to their
    /// endpoint if it is a URL, else `http://<endpoint>`); instances that leave stop
    /// receiving calls. (https:// instances need TLS settings: [`Discovery::channel_with`].)
    pub fn channel(&self) -> tonic::transport::Channel {
        self.channel_with(|i| tonic::transport::Endpoint::from_shared(i.url()).ok())
    }

    /// [`Discovery::channel`] with your own endpoint settings (TLS, timeouts, ...).
    pub fn channel_with<F>(&self, make: F) -> tonic::transport::Channel
    where
        F: FnMut(&Instance) -> Option<tonic::transport::Endpoint> + Send + 'static,
    {
        let (channel, changes) = tonic::transport::Channel::balance_channel(64);
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(feed(self.subscribe(), make, tx));
        tokio::spawn(async move {
            while let Some(Ok(change)) = rx.recv().await {
                // tonic has its own `Change` type for its balancer.
                let change = match change {
                    Change::Insert(k, e) => tonic::transport::channel::Change::Insert(k, e),
                    Change::Remove(k) => tonic::transport::channel::Change::Remove(k),
                };
                if changes.send(change).await.is_err() {
                    return;
                }
            }
        });
        channel
    }
}

/// Turn successive views into insert/remove changes.
async fn feed<S, F>(mut view: watch::Receiver<Instances>, mut make: F, tx: mpsc::Sender<Result<Change<String, S>>>)
where
    F: FnMut(&Instance) -> Option<S>,
{
    let mut known: BTreeMap<String, Instance> = BTreeMap::new();
    loop {
        let now = view.borrow_and_update().clone();
        let gone: Vec<String> = known.keys().filter(|id| !now.contains_key(*id)).cloned().collect();
        for id in gone {
            known.remove(&id);
            if tx.send(Ok(Change::Remove(id))).await.is_err() {
                return;
            }
        }
        for (id, i) in now.iter() {
            if known.get(id) == Some(i) {
                continue;
            }
            known.insert(id.clone(), i.clone());
            match make(i) {
                Some(svc) => {
                    if tx.send(Ok(Change::Insert(id.clone(), svc))).await.is_err() {
                        return;
                    }
                }
                None => tracing::warn!(id, endpoint = i.endpoint, "cannot make a service for this instance"),
            }
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

/// A stream of insert/remove [`Change`]s: a [`tower::discover::Discover`] for a tower
/// balancer (e.g. `tower::balance::p2c::Balance::new(stream)`).
#[derive(Debug)]
pub struct DiscoverStream<S> {
    rx: mpsc::Receiver<Result<Change<String, S>>>,
}

impl<S> tokio_stream::Stream for DiscoverStream<S> {
    type Item = Result<Change<String, S>>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// How a [`Balancer`] picks an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Each instance in turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// The less loaded (fewer picks in flight) of two chosen at random.
    PowerOfTwoChoices,
    /// At random, in proportion to each instance's weight ([`Instance::weight`]).
    Weighted,
}

/// Picks among the live instances of a [`Discovery`].
#[derive(Debug)]
pub struct Balancer {
    view: watch::Receiver<Instances>,
    strategy: Strategy,
    next: AtomicUsize,
    load: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

/// A picked instance; it counts as in flight (for [`Strategy::PowerOfTwoChoices`]) until
/// dropped.
#[derive(Debug)]
pub struct Picked {
    /// The instance to call.
    pub instance: Instance,
    load: Arc<AtomicUsize>,
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    /// An instance to call, or `None` while the service has none. Draining instances are
    /// picked only when no other is up.
    pub fn pick(&self) -> Option<Picked> {
        let view = self.view.borrow().clone();
        let mut all: Vec<&Instance> = view.values().filter(|i| !i.is_draining()).collect();
        if all.is_empty() {
            all = view.values().collect();
        }
        if all.is_empty() {
            return None;
        }
        // Poisoning needs a panic under this short lock; the map is still usable then.
        let mut load = self.load.lock().unwrap_or_else(|p| p.into_inner());
        load.retain(|id, _| view.contains_key(id));
        let mut counter = |i: &Instance| load.entry(i.id.clone()).or_default().clone();
        let chosen = match self.strategy {
            Strategy::RoundRobin => all[self.next.fetch_add(1, Ordering::Relaxed) % all.len()],
            Strategy::Random => all[rand::random_range(0..all.len())],
            Strategy::Weighted => {
                let total: u64 = all.iter().map(|i| i.weight()).sum();
                if total == 0 {
                    all[rand::random_range(0..all.len())]
                } else {
                    let mut at = rand::random_range(0..total);
                    let mut chosen = all[all.len() - 1];
                    for i in &all {
                        if at < i.weight() {
                            chosen = i;
                            break;
                        }
                        at -= i.weight();
                    }
                    chosen
                }
            }
            Strategy::PowerOfTwoChoices => {
                let a = all[rand::random_range(0..all.len())];
                let b = all[rand::random_range(0..all.len())];
                if counter(a).load(Ordering::Relaxed) <= counter(b).load(Ordering::Relaxed) {
                    a
                } else {
                    b
                }
            }
        };
        let c = counter(chosen);
        c.fetch_add(1, Ordering::Relaxed);
        Some(Picked { instance: chosen.clone(), load: c })
    }
}
