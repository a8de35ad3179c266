//! Leases: grant, revoke, time-to-live, list, keep-alive in the background, and
//! [`Session`] — a lease kept alive for as long as the program holds it, with a signal
//! when it is lost (like etcd's `concurrency.Session`).

use crate::client::{Client, Inner};
use crate::error::{Error, Result};
use crate::kv::Header;
use cairn_api::etcdserverpb as pb;
use cairn_api::etcdserverpb::lease_client::LeaseClient;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrantResponse {
    /// Who answered.
    pub header: Header,
    /// The lease's ID.
    pub id: i64,
    /// The TTL the server granted (it may raise a too-small TTL to its minimum).
    pub ttl: i64,
}

/// What the server knows of a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTimeToLiveResponse {
    /// Who answered.
    pub header: Header,
    /// The lease's ID.
    pub id: i64,
    /// Seconds left; -1 if the lease does not exist (expired, revoked or never granted).
    pub ttl: i64,
    /// The TTL it was granted with.
    pub granted_ttl: i64,
    /// The attached keys, if asked for.
    pub keys: Vec<Vec<u8>>,
}

fn lease(ch: crate::client::AuthChannel) -> LeaseClient<crate::client::AuthChannel> {
    LeaseClient::new(ch)
}

impl Client {
    /// Grant a lease of `ttl` seconds with a server-chosen ID. Keys put with the lease
    /// are deleted when it expires or is revoked.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_sdk::Client) -> cairn_sdk::Result<()> {
    /// use cairn_sdk::PutOptions;
    /// let lease = client.lease_grant(10).await?;
    /// client.put("/services/api/1", "10.0.0.7:80", PutOptions::new().with_lease(lease.id)).await?;
    /// let _alive = client.lease_keep_alive(lease.id); // renewed until dropped
    /// # Ok(()) }
    /// ```
    pub async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrantResponse> {
        self.lease_grant_with_id(ttl, 0).await
    }

    /// Grant a lease of `ttl` seconds with the given ID (0: the server picks one).
    pub async fn lease_grant_with_id(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse> {
        let req = pb::LeaseGrantRequest { ttl, id };
        let r = self.unary(false, |ch| async move { lease(ch).lease_grant(req).await }).await?;
        if !r.error.is_empty() {
            return Err(Error::Server { code: crate::error::Code::Unknown, message: r.error });
        }
        Ok(LeaseGrantResponse { header: r.header.into(), id: r.id, ttl: r.ttl })
    }

    /// Revoke a lease: its keys are deleted.
    pub async fn lease_revoke(&self, id: i64) -> Result<Header> {
        let r = self
            .unary(false, |ch| {
                let req = pb::LeaseRevokeRequest { id };
                async move { lease(ch).lease_revoke(req).await }
            })
            .await?;
        Ok(r.header.into())
    }

    /// A lease's remaining time (and, with `keys`, its attached keys).
    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        let req = pb::LeaseTimeToLiveRequest { id, keys };
        let mut r = self.unary(true, |ch| async move { lease(ch).lease_time_to_live(req).await }).await?;
        if let Some(ns) = &self.ns {
            ns.lease_keys(&mut r.keys);
        }
        Ok(LeaseTimeToLiveResponse {
            header: r.header.into(),
            id: r.id,
            ttl: r.ttl,
            granted_ttl: r.granted_ttl,
            keys: r.keys,
        })
    }

    /// The IDs of every live lease.
    pub async fn leases(&self) -> Result<Vec<i64>> {
        Ok(self.leases_with_header().await?.1)
    }

    /// The IDs of every live lease, with the header of the member that answered.
    pub async fn leases_with_header(&self) -> Result<(Header, Vec<i64>)> {
        let r = self
            .unary(true, |ch| {
                let req = pb::LeaseLeasesRequest {};
                async move { lease(ch).lease_leases(req).await }
            })
            .await?;
        Ok((r.header.into(), r.leases.into_iter().map(|l| l.id).collect()))
    }

    /// Renew a lease once; returns its new TTL. A lease that no longer exists gives
    /// [`Error::LeaseNotFound`].
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<i64> {
        Ok(self.lease_keep_alive_once_with_header(id).await?.1)
    }

    /// [`Client::lease_keep_alive_once`], with the header of the member that answered.
    pub async fn lease_keep_alive_once_with_header(&self, id: i64) -> Result<(Header, i64)> {
        let conn = self.inner.conn().await?;
        let once = keep_alive_round(&conn.channel, id);
        let r = match self.inner.opts.request_timeout {
            Some(t) => tokio::time::timeout(t, once).await.map_err(|_| Error::Timeout(t))?,
            None => once.await,
        };
        if let Err(Error::Unavailable(_)) = &r {
            self.inner.failed(&conn);
        }
        match r? {
            (_, ttl) if ttl <= 0 => Err(Error::LeaseNotFound),
            answer => Ok(answer),
        }
    }

    /// Keep a lease alive in the background (renewing at a third of its TTL, failing over
    /// between members) until the returned handle is dropped or the lease is lost.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_sdk::Client) -> cairn_sdk::Result<()> {
    /// use cairn_sdk::LeaseState;
    /// let lease = client.lease_grant(5).await?;
    /// let alive = client.lease_keep_alive(lease.id);
    /// let mut state = alive.subscribe();
    /// while state.changed().await.is_ok() {
    ///     if *state.borrow() == LeaseState::Lost {
    ///         eprintln!("lease lost: register again");
    ///         break;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn lease_keep_alive(&self, id: i64) -> KeepAlive {
        let (state_tx, state_rx) = watch::channel(LeaseState::Alive { ttl: None });
        let task = tokio::spawn(keep_alive_loop(self.inner.clone(), id, state_tx));
        KeepAlive { id, state: state_rx, task }
    }
}

/// A lease's state as its keep-alive sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Renewed; `ttl` is the TTL of the last renewal (`None` before the first).
    Alive {
        /// Seconds granted by the last renewal.
        ttl: Option<i64>,
    },
    /// The lease expired or was revoked, or no member could renew it before it would
    /// have expired. Keys attached to it are gone (or about to be).
    Lost,
}

/// A background keep-alive. Dropping it stops renewing (the lease then expires after its
/// TTL unless revoked).
#[derive(Debug)]
pub struct KeepAlive {
    id: i64,
    state: watch::Receiver<LeaseState>,
    task: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    /// The lease's ID.
    pub fn id(&self) -> i64 {
        self.id
    }
    /// The latest state.
    pub fn state(&self) -> LeaseState {
        *self.state.borrow()
    }
    /// A receiver of state changes (for `select!` loops).
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }
    /// Resolves when the lease is lost.
    pub async fn lost(&self) {
        let mut rx = self.state.clone();
        // An error means the keep-alive task is gone, which only happens once it has
        // recorded `Lost` (or the handle was dropped, and then nobody awaits this).
        let _ = rx.wait_for(|s| *s == LeaseState::Lost).await;
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request-response on a fresh keep-alive stream: the TTL the server answered.
async fn keep_alive_round(channel: &crate::client::AuthChannel, id: i64) -> Result<(Header, i64)> {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.send(pb::LeaseKeepAliveRequest { id }).await;
    let mut s = LeaseClient::new(channel.clone()).lease_keep_alive(ReceiverStream::new(rx)).await?.into_inner();
    match s.message().await? {
        Some(r) => Ok((r.header.into(), r.ttl)),
        None => Err(Error::Unavailable("keep-alive stream closed".into())),
    }
}

async fn keep_alive_loop(inner: Arc<Inner>, id: i64, state: watch::Sender<LeaseState>) {
    // Until the first renewal we do not know the TTL; assume the lease may be short.
    let mut deadline: Option<Instant> = None;
    let mut delays = inner.opts.retry.delays();
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            state.send_replace(LeaseState::Lost);
            return;
        }
        let conn = match inner.conn().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%e, lease = id, "keep-alive: no member reachable");
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
                continue;
            }
        };
        let (req_tx, req_rx) = mpsc::channel(1);
        if req_tx.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
            return;
        }
        let req = crate::client::stream_request(ReceiverStream::new(req_rx), inner.opts.require_leader);
        let stream = LeaseClient::new(conn.channel.clone()).lease_keep_alive(req).await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) => {
                tracing::debug!(%s, lease = id, "keep-alive stream failed; failing over");
                let refused = s.code() == tonic::Code::Unauthenticated && inner.token_refused();
                if !refused {
                    inner.failed(&conn);
                }
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
                continue;
            }
        };
        loop {
            let sent = Instant::now();
            // A renewal that takes longer than what is left of the lease is as good as lost.
            let wait = deadline.map_or(Duration::from_secs(5), |d| d.saturating_duration_since(sent));
            let answer = tokio::time::timeout(wait.max(Duration::from_millis(500)), stream.message()).await;
            match answer {
                Ok(Ok(Some(r))) if r.ttl <= 0 => {
                    state.send_replace(LeaseState::Lost);
                    return;
                }
                Ok(Ok(Some(r))) => {
                    delays = inner.opts.retry.delays();
                    deadline = Some(sent + Duration::from_secs(r.ttl as u64));
                    state.send_replace(LeaseState::Alive { ttl: Some(r.ttl) });
                    let pause = Duration::from_millis((r.ttl as u64 * 1000 / 3).max(100));
                    tokio::time::sleep(pause).await;
                    if req_tx.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
                        break;
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    tracing::debug!(lease = id, "keep-alive stream broke; failing over");
                    inner.failed(&conn);
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
                    break;
                }
            }
        }
    }
}

/// A lease kept alive in the background for as long as the session lives, the basis of
/// registrations, locks and elections.
///
/// [`Session::close`] revokes the lease (deleting its keys at once); dropping the session
/// does the same in the background. [`Session::lost`] resolves if the lease is lost anyway
/// (expired during a partition, or revoked by someone else).
///
/// ```no_run
/// # async fn demo(client: cairn_sdk::Client) -> cairn_sdk::Result<()> {
/// use cairn_sdk::{PutOptions, Session};
/// let session = Session::new(&client, 10).await?;
/// client.put("/services/api/1", "10.0.0.1:8080", PutOptions::new().with_lease(session.lease_id())).await?;
/// session.lost().await; // the registration is gone: re-register
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Session {
    client: Client,
    keep_alive: Option<KeepAlive>,
    id: i64,
    ttl: i64,
}

impl Session {
    /// Grant a lease of `ttl` seconds and keep it alive.
    pub async fn new(client: &Client, ttl: i64) -> Result<Session> {
        let granted = client.lease_grant(ttl).await?;
        Ok(Self::from_lease(client, granted.id, granted.ttl))
    }

    /// Keep an existing lease alive as a session.
    pub fn from_lease(client: &Client, id: i64, ttl: i64) -> Session {
        let keep_alive = client.lease_keep_alive(id);
        Session { client: client.clone(), keep_alive: Some(keep_alive), id, ttl }
    }

    /// The lease's ID (attach keys to it with [`crate::PutOptions::with_lease`]).
    pub fn lease_id(&self) -> i64 {
        self.id
    }

    /// The lease's granted TTL in seconds.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// The client the session was made with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the lease has been lost.
    pub fn is_lost(&self) -> bool {
        self.keep_alive.as_ref().is_none_or(|k| k.state() == LeaseState::Lost)
    }

    /// Resolves when the lease is lost.
    pub async fn lost(&self) {
        if let Some(k) = &self.keep_alive {
            k.lost().await;
        }
    }

    /// A receiver of the lease's state, for `select!` loops.
    pub fn subscribe(&self) -> Option<watch::Receiver<LeaseState>> {
        self.keep_alive.as_ref().map(KeepAlive::subscribe)
    }

    /// Stop renewing and revoke the lease, deleting its keys now.
    pub async fn close(mut self) -> Result<()> {
        self.keep_alive.take();
        match self.client.lease_revoke(self.id).await {
            Ok(_) | Err(Error::LeaseNotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.keep_alive.take().is_some() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let (client, id) = (self.client.clone(), self.id);
                rt.spawn(async move {
                    let _ = client.lease_revoke(id).await;
                });
            }
        }
    }
}
