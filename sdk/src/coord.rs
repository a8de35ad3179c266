//! Clients of the server's Lock and Election services (etcd's `v3lock` and `v3election`,
//! what `etcdctl lock`/`elect` and grpc-gateway users call): the lock or election runs in
//! the member, under a lease the caller keeps alive (a [`crate::Session`]'s).
//!
//! The recipes crate builds the same on plain KV (clientv3's `concurrency` package); these
//! are for programs that want the server's versions, or to interoperate with clients that
//! use them. `lock` and `campaign` wait for as long as it takes (no request timeout): wrap
//! them in `tokio::time::timeout` to give up; giving up (dropping the future) withdraws the
//! attempt on the member.

use crate::client::AuthChannel;
use crate::error::{Error, Result};
use crate::kv::Header;
use crate::Client;
use cairn_api::mvccpb::KeyValue;
use cairn_api::v3electionpb as epb;
use cairn_api::v3electionpb::election_client::ElectionClient;
use cairn_api::v3lockpb as lpb;
use cairn_api::v3lockpb::lock_client::LockClient;
use std::future::Future;

/// Who leads an election after [`Client::campaign`]: pass it to [`Client::proclaim`] and
/// [`Client::resign`].
pub type LeaderKey = epb::LeaderKey;

impl Client {
    /// A call that may wait indefinitely (a lock or a campaign): once, on the current
    /// member, without the request timeout.
    async fn waiting<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnOnce(AuthChannel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let conn = self.inner.conn().await?;
        match call(conn.channel.clone()).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => {
                let e = Error::from(s);
                if matches!(e, Error::Unavailable(_) | Error::NoLeader) {
                    self.inner.failed(&conn);
                }
                Err(e)
            }
        }
    }

    fn ns_key(&self, key: &[u8]) -> Vec<u8> {
        self.ns.as_ref().map_or_else(|| key.to_vec(), |ns| ns.key(key))
    }

    fn ns_strip(&self, key: &mut Vec<u8>) {
        if let Some(ns) = &self.ns {
            ns.strip(key);
        }
    }

    /// Take the lock `name` (etcd's Lock service), waiting while others hold it. The lock is
    /// held until [`Client::unlock`] or until `lease` ends. Returns the key that holds it
    /// (`<name>/<lease in hex>`), which [`Client::unlock`] takes.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_sdk::Client) -> cairn_sdk::Result<()> {
    /// let session = cairn_sdk::Session::new(&client, 10).await?;
    /// let key = client.lock("/locks/deploy", session.lease_id()).await?;
    /// // ... only one holder at a time here ...
    /// client.unlock(key).await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock(&self, name: impl AsRef<[u8]>, lease: i64) -> Result<Vec<u8>> {
        let req = lpb::LockRequest { name: self.ns_key(name.as_ref()), lease };
        let mut r = self.waiting(|ch| async move { LockClient::new(ch).lock(req).await }).await?;
        self.ns_strip(&mut r.key);
        Ok(r.key)
    }

    /// Release a lock taken with [`Client::lock`] (its key).
    pub async fn unlock(&self, key: impl AsRef<[u8]>) -> Result<Header> {
        let req = lpb::UnlockRequest { key: self.ns_key(key.as_ref()) };
        let r = self
            .unary(false, |ch| {
                let req = req.clone();
                async move { LockClient::new(ch).unlock(req).await }
            })
            .await?;
        Ok(r.header.into())
    }

    /// Campaign in the election `name` (etcd's Election service) with `value`, waiting
    /// until elected. Leadership lasts until [`Client::resign`] or the end of `lease`.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_sdk::Client) -> cairn_sdk::Result<()> {
    /// let session = cairn_sdk::Session::new(&client, 10).await?;
    /// let me = client.campaign("/elections/scheduler", session.lease_id(), "node-1").await?;
    /// client.proclaim(&me, "node-1, now at 10.0.0.7").await?;
    /// client.resign(&me).await?;
    /// # Ok(()) }
    /// ```
    pub async fn campaign(&self, name: impl AsRef<[u8]>, lease: i64, value: impl Into<Vec<u8>>) -> Result<LeaderKey> {
        let req = epb::CampaignRequest { name: self.ns_key(name.as_ref()), lease, value: value.into() };
        let r = self.waiting(|ch| async move { ElectionClient::new(ch).campaign(req).await }).await?;
        let mut leader = r.leader.ok_or_else(|| Error::Unavailable("campaign answered without a leader key".into()))?;
        self.ns_strip(&mut leader.name);
        self.ns_strip(&mut leader.key);
        Ok(leader)
    }

    /// The server's copy of a leader key, with this client's namespace put back.
    fn ns_leader(&self, leader: &LeaderKey) -> LeaderKey {
        LeaderKey { name: self.ns_key(&leader.name), key: self.ns_key(&leader.key), ..leader.clone() }
    }

    /// Change the value the leader `leader` announces (it must still lead).
    pub async fn proclaim(&self, leader: &LeaderKey, value: impl Into<Vec<u8>>) -> Result<Header> {
        let req = epb::ProclaimRequest { leader: Some(self.ns_leader(leader)), value: value.into() };
        let r = self
            .unary(false, |ch| {
                let req = req.clone();
                async move { ElectionClient::new(ch).proclaim(req).await }
            })
            .await?;
        Ok(r.header.into())
    }

    /// Step down as `leader`; the next campaigner is elected.
    pub async fn resign(&self, leader: &LeaderKey) -> Result<Header> {
        let req = epb::ResignRequest { leader: Some(self.ns_leader(leader)) };
        let r = self
            .unary(false, |ch| {
                let req = req.clone();
                async move { ElectionClient::new(ch).resign(req).await }
            })
            .await?;
        Ok(r.header.into())
    }

    /// The current leader's key and value in the election `name`; `None` if nobody leads.
    pub async fn leader(&self, name: impl AsRef<[u8]>) -> Result<Option<KeyValue>> {
        let req = epb::LeaderRequest { name: self.ns_key(name.as_ref()) };
        let r = self
            .unary(true, |ch| {
                let req = req.clone();
                async move { ElectionClient::new(ch).leader(req).await }
            })
            .await;
        match r {
            Ok(r) => Ok(r.kv.map(|mut kv| {
                self.ns_strip(&mut kv.key);
                kv
            })),
            Err(Error::Server { message, .. }) if message == "election: no leader" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Follow the election `name`: the leader's key and value now (once there is one) and
    /// at every change of leader or of its value, as etcd's `Observe`. The stream ends
    /// with an error if the member goes away; observe again to go on. (etcd answers an
    /// observe only once there is a leader: the stream is opened in the background, so
    /// this returns at once either way.)
    pub fn observe(&self, name: impl AsRef<[u8]>) -> Observe {
        let req = epb::LeaderRequest { name: self.ns_key(name.as_ref()) };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let client = self.clone();
        let task = tokio::spawn(async move {
            let opened = client.waiting(|ch| async move { ElectionClient::new(ch).observe(req).await }).await;
            let mut stream = match opened {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            loop {
                let next = match stream.message().await {
                    Ok(Some(r)) => {
                        let mut kv = r.kv.unwrap_or_default();
                        client.ns_strip(&mut kv.key);
                        Ok(kv)
                    }
                    Ok(None) => return,
                    Err(s) => Err(Error::from(s)),
                };
                let end = next.is_err();
                if tx.send(next).await.is_err() || end {
                    return;
                }
            }
        });
        Observe { rx, task }
    }
}

/// Leaders of an election as they change ([`Client::observe`]). Dropping it stops
/// observing.
#[derive(Debug)]
pub struct Observe {
    rx: tokio::sync::mpsc::Receiver<Result<KeyValue>>,
    task: tokio::task::JoinHandle<()>,
}

impl Observe {
    /// The next leader (key and value); `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Result<KeyValue>> {
        self.rx.recv().await
    }
}

impl Drop for Observe {
    fn drop(&mut self) {
        self.task.abort();
    }
}
