//! Service registration: an instance announces itself under `<service>/<instance id>`
//! on a lease it keeps alive, re-registers if the lease is ever lost (a partition longer
//! than the TTL), and disappears when it stops or dies.
//!
//! The value is the JSON etcd's `clientv3/naming/endpoints` writes
//! (`{"Addr":"host:port","Metadata":...}`), so Go gRPC clients using etcd's resolver find
//! instances registered here, and [`Discovery`](crate::Discovery) finds theirs.

use crate::error::{Error, Result};
use cairn_sdk::{Client, PutOptions, Session};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// The stored form of an instance: etcd's `naming/endpoints.Endpoint`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    #[serde(rename = "Addr")]
    pub addr: String,
    #[serde(rename = "Metadata", default)]
    pub metadata: serde_json::Value,
}

/// Registers instances of services, each under its own lease.
///
/// ```no_run
/// # async fn demo(client: cairn_sdk::Client) -> cairn_recipes::Result<()> {
/// use cairn_recipes::Registry;
/// let registration = Registry::new(&client)
///     .with_ttl(5)
///     .register("/services/greeter", "instance-1", "127.0.0.1:50051", serde_json::json!({"zone": "a"}))
///     .await?;
/// // ... serve ...
/// registration.deregister().await?; // or just drop it
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Registry {
    client: Client,
    ttl: i64,
}

/// Whether a registration is currently in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationState {
    /// Registered under `lease`.
    Registered {
        /// The lease the key is attached to.
        lease: i64,
    },
    /// The lease was lost; registering again (retried until it succeeds).
    Lost,
}

/// A live registration. Dropping it deregisters in the background;
/// [`Registration::deregister`] does so and waits.
#[derive(Debug)]
pub struct Registration {
    client: Client,
    key: String,
    /// The stored record (what a re-registration after a lease loss writes).
    record: Arc<Mutex<Record>>,
    state: watch::Receiver<RegistrationState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl Registry {
    /// A registry using `client`, with a 10 s lease TTL.
    pub fn new(client: &Client) -> Registry {
        Registry { client: client.clone(), ttl: 10 }
    }

    /// The lease TTL in seconds: how long a dead instance stays visible at most.
    pub fn with_ttl(mut self, ttl: i64) -> Registry {
        self.ttl = ttl;
        self
    }

    /// Register `instance_id` of `service` at `endpoint`. Returns once registered; keeps
    /// the registration alive (and restores it after a lease loss) until dropped.
    pub async fn register(
        &self,
        service: impl AsRef<str>,
        instance_id: impl AsRef<str>,
        endpoint: impl Into<String>,
        metadata: serde_json::Value,
    ) -> Result<Registration> {
        let key = format!("{}/{}", service.as_ref(), instance_id.as_ref());
        let record = Arc::new(Mutex::new(Record { addr: endpoint.into(), metadata }));
        let session = register_once(&self.client, self.ttl, &key, &record).await?;
        let (state_tx, state) = watch::channel(RegistrationState::Registered { lease: session.lease_id() });
        let (stop, stop_rx) = oneshot::channel();
        let upkeep = Upkeep {
            client: self.client.clone(),
            ttl: self.ttl,
            key: key.clone(),
            record: record.clone(),
            state: state_tx,
        };
        let task = tokio::spawn(upkeep.run(session, stop_rx));
        Ok(Registration { client: self.client.clone(), key, record, state, stop: Some(stop), task: Some(task) })
    }

    /// [`Registry::register`] with typed metadata (any `serde` type; read back with
    /// [`crate::Instance::metadata_as`]).
    pub async fn register_typed<M: Serialize>(
        &self,
        service: impl AsRef<str>,
        instance_id: impl AsRef<str>,
        endpoint: impl Into<String>,
        metadata: &M,
    ) -> Result<Registration> {
        let metadata = serde_json::to_value(metadata)
            .map_err(|e| Error::Invalid { key: service.as_ref().to_string(), reason: e.to_string() })?;
        self.register(service, instance_id, endpoint, metadata).await
    }
}

fn stored(record: &Mutex<Record>) -> String {
    serde_json::to_string(&*record.lock().unwrap_or_else(|p| p.into_inner())).unwrap_or_default()
}

async fn register_once(client: &Client, ttl: i64, key: &str, record: &Mutex<Record>) -> Result<Session> {
    let session = Session::new(client, ttl).await?;
    client.put(key, stored(record), PutOptions::new().with_lease(session.lease_id())).await?;
    Ok(session)
}

struct Upkeep {
    client: Client,
    ttl: i64,
    key: String,
    record: Arc<Mutex<Record>>,
    state: watch::Sender<RegistrationState>,
}

impl Upkeep {
    async fn run(self, mut session: Session, mut stop: oneshot::Receiver<()>) -> Result<()> {
        loop {
            tokio::select! {
                _ = session.lost() => {}
                // Stopped, or the registration was dropped: deregister.
                _ = &mut stop => {
                    let closed = session.close().await;
                    if let Err(e) = &closed {
                        tracing::warn!(%e, key = self.key, "deregistering failed; the lease will expire");
                    }
                    return closed.map_err(Error::from);
                }
            }
            tracing::warn!(key = self.key, "registration lost with its lease; registering again");
            self.state.send_replace(RegistrationState::Lost);
            let mut delays = self.client.options().retry().delays();
            session = loop {
                let attempt = tokio::select! {
                    r = register_once(&self.client, self.ttl, &self.key, &self.record) => r,
                    _ = &mut stop => return Ok(()),
                };
                match attempt {
                    Ok(s) => break s,
                    Err(e) => {
                        tracing::debug!(%e, key = self.key, "registering again failed; retrying");
                        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
                    }
                }
            };
            tracing::info!(key = self.key, lease = session.lease_id(), "registered again");
            self.state.send_replace(RegistrationState::Registered { lease: session.lease_id() });
        }
    }
}

impl Registration {
    /// The registered key (`<service>/<instance id>`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The current state.
    pub fn state(&self) -> RegistrationState {
        *self.state.borrow()
    }

    /// A receiver of state changes (lost, registered again).
    pub fn subscribe(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// Change the registration in place — a new endpoint (`Some`) and/or metadata — under
    /// the same lease: watchers see one update, not a leave and a join. A re-registration
    /// after a lease loss writes the new values too.
    pub async fn update(&self, endpoint: Option<String>, metadata: serde_json::Value) -> Result<()> {
        {
            let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = endpoint {
                r.addr = e;
            }
            r.metadata = metadata;
        }
        self.rewrite().await
    }

    /// Set the instance's weight (`"weight": n` in its metadata), which
    /// [`crate::Strategy::Weighted`] balancers pick it in proportion to.
    pub async fn set_weight(&self, weight: u64) -> Result<()> {
        self.set_flag("weight", serde_json::Value::from(weight)).await
    }

    /// Mark the instance as draining (`"drain": true` in its metadata): [`crate::Balancer`]s
    /// stop picking it while others are up, so it can finish its work and deregister.
    pub async fn drain(&self) -> Result<()> {
        self.set_flag("drain", serde_json::Value::Bool(true)).await
    }

    /// Set one field of the metadata (made an object if it was not) and write it.
    async fn set_flag(&self, name: &str, value: serde_json::Value) -> Result<()> {
        {
            let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
            if !r.metadata.is_object() {
                r.metadata = serde_json::json!({});
            }
            if let Some(m) = r.metadata.as_object_mut() {
                m.insert(name.into(), value);
            }
        }
        self.rewrite().await
    }

    /// Write the current record under the current lease (if registered now; otherwise the
    /// re-registration in progress writes it).
    async fn rewrite(&self) -> Result<()> {
        if let RegistrationState::Registered { lease } = self.state() {
            let value = stored(&self.record);
            self.client.put(self.key.as_str(), value, PutOptions::new().with_lease(lease)).await?;
        }
        Ok(())
    }

    /// Remove the registration now and wait until it is gone.
    pub async fn deregister(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Dropping `stop` tells the upkeep task to revoke the lease and end.
        self.stop.take();
    }
}
