//! Connecting to a cluster: the endpoint list, failover, and the retry policy every call
//! goes through.
//!
//! By default the client spreads its calls over the members: each unary call and each new
//! watch or keep-alive stream goes to the next endpoint in turn (one HTTP/2 connection per
//! member, dialled when first needed), skipping members that just failed. With
//! `with_spread(false)` or `with_prefer_leader(true)` it keeps one connection, to one member
//! (the first of the list, or the leader) until that fails. When a member stops answering
//! (connection refused or broken, or it has no leader), calls go to the next endpoint. Reads
//! are retried there; writes only when they certainly were not applied (the connection could
//! not be made, or the member had no leader) — like etcd's clientv3.
//!
//! With [`ConnectOptions::with_user`] the client logs in (`Authenticate`) when it
//! connects and sends the token with every call; when the server says the token is no
//! longer valid (expired, or issued by a member that restarted) it logs in again and
//! retries, as clientv3 does.

use crate::error::{Error, Result};
use cairn_api::etcdserverpb::auth_client::AuthClient;
use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_api::etcdserverpb::{AuthenticateRequest, StatusRequest};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How to connect and how long to wait. `ConnectOptions::default()` suits most programs;
/// the `with_*` builders change one setting each (new settings come as new builders, so
/// code that builds options keeps compiling).
#[derive(Clone)]
pub struct ConnectOptions {
    // How long to wait for one endpoint's connection before trying the next (default 5 s).
    pub(crate) dial_timeout: Duration,
    // The longest a unary call may take, retries included (default 15 s); `None` waits
    // forever. Watch and keep-alive streams are not limited by it.
    pub(crate) request_timeout: Option<Duration>,
    // HTTP/2 keep-alive ping interval, which detects a dead or paused member under an
    // otherwise quiet watch (default 10 s).
    pub(crate) keep_alive_interval: Duration,
    // How long a keep-alive ping may go unanswered before the connection is dropped and
    // the client fails over (default 5 s).
    pub(crate) keep_alive_timeout: Duration,
    // Connect to the current leader when (re)connecting, so writes and linearizable reads
    // skip the follower's forwarding hop (default off).
    pub(crate) prefer_leader: bool,
    // Spread calls over the members (default on): each unary call and each new stream goes
    // to the next healthy endpoint in turn, starting at a random one, so neither one
    // client's calls nor the clients of many processes all load the first member. Off (or
    // with `prefer_leader`), the client stays on one member — the first of the list — until
    // a failure moves it to the next.
    pub(crate) spread: bool,
    // TLS (rustls; [`ConnectOptions::with_tls_pem`], [`ConnectOptions::with_tls_files`],
    // [`ConnectOptions::with_system_roots`]): endpoints without a scheme then use
    // `https://` (default none).
    pub(crate) tls: Option<ClientTlsConfig>,
    // Accept any server certificate (etcdctl's --insecure-skip-tls-verify), with this
    // client certificate and key (PEM) if any.
    pub(crate) insecure: Option<Option<(Vec<u8>, Vec<u8>)>>,
    // User name and password for a cluster with auth enabled (default none).
    pub(crate) user: Option<(String, String)>,
    // How calls and streams wait between attempts, and how many attempts a unary call
    // makes (default: [`RetryPolicy::default`]).
    pub(crate) retry: crate::RetryPolicy,
    // Replace the endpoint list with the members' client URLs this often (clientv3's
    // `AutoSyncInterval`), so a client given one member finds the others, and follows
    // members added and removed (default off).
    pub(crate) auto_sync_interval: Option<Duration>,
    // Open watch and keep-alive streams with etcd's require-leader (`hasleader`
    // metadata, clientv3's `WithRequireLeader`): a member cut off from the majority ends
    // them with `etcdserver: no leader`, and the client resumes them on another member
    // instead of waiting quietly on one that will see no more writes (default on).
    pub(crate) require_leader: bool,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("dial_timeout", &self.dial_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keep_alive_interval", &self.keep_alive_interval)
            .field("keep_alive_timeout", &self.keep_alive_timeout)
            .field("prefer_leader", &self.prefer_leader)
            .field("spread", &self.spread)
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("require_leader", &self.require_leader)
            .field("auto_sync_interval", &self.auto_sync_interval)
            .field("retry", &self.retry)
            .finish()
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            dial_timeout: Duration::from_secs(5),
            request_timeout: Some(Duration::from_secs(15)),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            prefer_leader: false,
            spread: true,
            tls: None,
            insecure: None,
            user: None,
            require_leader: true,
            auto_sync_interval: None,
            retry: crate::RetryPolicy::default(),
        }
    }
}

impl ConnectOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// How long to wait for one endpoint's connection before trying the next (default 5 s).
    pub fn with_dial_timeout(mut self, t: Duration) -> Self {
        self.dial_timeout = t;
        self
    }
    /// The longest a unary call may take, retries included (default 15 s); `None` waits
    /// forever. Watch and keep-alive streams are not limited by it.
    pub fn with_request_timeout(mut self, t: Option<Duration>) -> Self {
        self.request_timeout = t;
        self
    }
    /// HTTP/2 keep-alive ping interval, which detects a dead or paused member under an
    /// otherwise quiet watch (default 10 s).
    ///
    /// And how long a keep-alive ping may go unanswered before the connection is dropped and
    /// the client fails over (default 5 s).
    pub fn with_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive_interval = interval;
        self.keep_alive_timeout = timeout;
        self
    }
    /// Connect to the current leader when (re)connecting, so writes and linearizable reads
    /// skip the follower's forwarding hop (default off).
    pub fn with_prefer_leader(mut self, on: bool) -> Self {
        self.prefer_leader = on;
        self
    }
    /// Spread calls over the members (default on): each unary call and each new stream goes
    /// to the next healthy endpoint in turn, starting at a random one, so neither one
    /// client's calls nor the clients of many processes all load the first member. Off (or
    /// with `prefer_leader`), the client stays on one member — the first of the list — until
    /// a failure moves it to the next.
    pub fn with_spread(mut self, on: bool) -> Self {
        self.spread = on;
        self
    }
    /// How calls and streams wait between attempts, and how many attempts a unary call
    /// makes (default: [`crate::RetryPolicy::default`]).
    pub fn with_retry(mut self, policy: crate::RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
    /// Replace the endpoint list with the members' client URLs this often (clientv3's
    /// `AutoSyncInterval`), so a client given one member finds the others, and follows
    /// members added and removed (default off).
    pub fn with_auto_sync(mut self, every: Duration) -> Self {
        self.auto_sync_interval = Some(every);
        self
    }
    /// Open watch and keep-alive streams with etcd's require-leader (`hasleader`
    /// metadata, clientv3's `WithRequireLeader`): a member cut off from the majority ends
    /// them with `etcdserver: no leader`, and the client resumes them on another member
    /// instead of waiting quietly on one that will see no more writes (default on).
    pub fn with_require_leader(mut self, on: bool) -> Self {
        self.require_leader = on;
        self
    }
    /// Log in as `name` with `password` (etcdctl's `--user name:password`).
    pub fn with_user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }
    /// TLS trusting the system's root certificates (a cluster whose certificates a public
    /// or company-wide CA signed), as etcdctl does without `--cacert`.
    pub fn with_system_roots(mut self) -> Self {
        self.tls = Some(ClientTlsConfig::new().with_native_roots());
        self
    }
    /// TLS from PEM text: trust the CA certificate(s) `ca` (the system's roots when `None`)
    /// and, for client-certificate auth, present `cert` with its `key`.
    pub fn with_tls_pem(mut self, ca: Option<&[u8]>, cert_and_key: Option<(&[u8], &[u8])>) -> Self {
        let mut tls = match ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let Some((cert, key)) = cert_and_key {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        self.tls = Some(tls);
        self
    }
    /// TLS that accepts any server certificate, as etcdctl's `--insecure-skip-tls-verify`
    /// (still encrypted, but anyone on the path can pose as the server: for test clusters
    /// with self-signed certificates only), presenting `cert_and_key` (PEM) if given.
    pub fn with_insecure_skip_verify(mut self, cert_and_key: Option<(&[u8], &[u8])>) -> Self {
        self.tls = Some(ClientTlsConfig::new());
        self.insecure = Some(cert_and_key.map(|(c, k)| (c.to_vec(), k.to_vec())));
        self
    }
    /// TLS from PEM files, as etcdctl's `--cacert`, `--cert` and `--key`: trust `ca` (the
    /// CA that signed the server's certificate) and, for client-certificate auth, present
    /// `cert` with `key`.
    pub fn with_tls_files(self, ca: &Path, cert_and_key: Option<(&Path, &Path)>) -> Result<Self> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| Error::InvalidArgument(format!("{}: {e}", p.display())));
        let ca = read(ca)?;
        let identity = match cert_and_key {
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
            None => None,
        };
        Ok(self.with_tls_pem(Some(&ca), identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()))))
    }

    /// The retry policy ([`ConnectOptions::with_retry`]).
    pub fn retry(&self) -> crate::RetryPolicy {
        self.retry
    }

    /// How long a unary call may take ([`ConnectOptions::with_request_timeout`]).
    pub fn request_timeout(&self) -> Option<Duration> {
        self.request_timeout
    }
}

/// A connection to a Cairn (or etcd) cluster. Cheap to clone; clones share the connection.
///
/// ```no_run
/// # async fn demo() -> cairn_sdk::Result<()> {
/// use cairn_sdk::{Client, ConnectOptions};
/// let client = Client::connect(["127.0.0.1:2379", "127.0.0.1:22379"], ConnectOptions::default()).await?;
/// client.put("greeting", "hello", None).await?;
/// let resp = client.get("greeting", None).await?;
/// assert_eq!(resp.kvs[0].value, b"hello");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    /// The key prefix of [`Client::with_namespace`], if any.
    pub(crate) ns: Option<crate::namespace::Namespace>,
    /// The request timeout of [`Client::with_timeout`], if set.
    pub(crate) timeout: Option<Option<Duration>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("endpoints", &self.endpoints()).finish()
    }
}

pub(crate) struct Inner {
    pub(crate) opts: ConnectOptions,
    conn: Mutex<Conn>,
    token: Mutex<Token>,
}

/// What the client knows about its auth token.
#[derive(Clone)]
enum Token {
    /// Not asked yet (or the last one was refused).
    Unknown,
    /// No user configured, or the cluster has auth off.
    NotNeeded,
    /// Sent as the `token` metadata of every call.
    Valid(AsciiMetadataValue),
}

/// Adds the auth token to each call.
#[derive(Clone)]
pub(crate) struct WithToken(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for WithToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("token", t.clone());
        }
        Ok(req)
    }
}

/// The channel every call goes through: the connection plus the caller's token.
pub(crate) type AuthChannel = InterceptedService<Channel, WithToken>;

struct Conn {
    /// Staying on one member: the endpoint in use (or to try first). Spreading: the
    /// endpoint the next call starts looking from.
    index: usize,
    /// The endpoint the last call went to.
    last: usize,
    /// One per endpoint, in the list's order.
    slots: Vec<Slot>,
    /// Bumped on every new connection, so a failure reported for an old one is ignored.
    generation: u64,
}

/// One endpoint: its URL, its connection if any, and whether it failed just now.
struct Slot {
    url: String,
    channel: Option<Channel>,
    generation: u64,
    /// After a failure, calls avoid this endpoint until then (while others answer).
    avoid_until: Option<Instant>,
    /// Failures in a row: each doubles how long the endpoint is passed over.
    failures: u32,
}

/// How long an endpoint whose connection failed is passed over while others answer, after
/// `failures` failures in a row: 2 s, doubling, at most a minute (a dead member's dial
/// timeout is then paid by one call a minute, not one every two seconds).
fn avoid_for(failures: u32) -> Duration {
    Duration::from_secs(2u64 << failures.min(5)).min(Duration::from_secs(60))
}

/// A connection handed to one call, with what to report a failure against.
#[derive(Clone)]
pub(crate) struct CallConn {
    pub(crate) channel: AuthChannel,
    slot: usize,
    generation: u64,
}

/// A connection before the token is attached.
struct Raw {
    channel: Channel,
    slot: usize,
    generation: u64,
}

/// Largest response the client accepts (etcd's clientv3 default: 2 GiB - 1).
pub(crate) const MAX_DECODE: usize = i32::MAX as usize;

impl Client {
    /// Connect to a cluster. `endpoints` are `host:port` or `http://host:port`; at least one
    /// must answer within [`ConnectOptions::with_dial_timeout`].
    pub async fn connect<E, S>(endpoints: E, opts: ConnectOptions) -> Result<Client>
    where
        E: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Vec::new();
        for e in endpoints {
            let e = e.as_ref().trim();
            if e.is_empty() {
                continue;
            }
            if e.starts_with("https://") && opts.tls.is_none() {
                return Err(Error::InvalidArgument(format!("{e}: https:// needs ConnectOptions::with_tls")));
            }
            let scheme = if opts.tls.is_some() { "https" } else { "http" };
            let uri = if e.contains("://") { e.to_string() } else { format!("{scheme}://{e}") };
            Endpoint::from_shared(uri.clone()).map_err(|err| Error::InvalidArgument(format!("endpoint {e}: {err}")))?;
            list.push(uri);
        }
        if list.is_empty() {
            return Err(Error::InvalidArgument("no endpoints given".into()));
        }
        let token = Mutex::new(if opts.user.is_some() { Token::Unknown } else { Token::NotNeeded });
        let first = if opts.spread && !opts.prefer_leader { random_below(list.len()) } else { 0 };
        let slots = list.into_iter().map(Slot::new).collect();
        let conn = Mutex::new(Conn { index: first, last: first, slots, generation: 0 });
        let inner = Inner { opts, conn, token };
        let client = Client { inner: Arc::new(inner), ns: None, timeout: None };
        client.inner.conn().await?;
        if let Some(every) = client.inner.opts.auto_sync_interval {
            tokio::spawn(auto_sync(Arc::downgrade(&client.inner), every));
        }
        Ok(client)
    }

    /// A client (sharing this one's connections) whose unary calls give up after `timeout`
    /// (retries included) instead of [`ConnectOptions::with_request_timeout`]; `None` waits
    /// as long as it takes.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_sdk::Client) -> cairn_sdk::Result<()> {
    /// use std::time::Duration;
    /// let quick = client.with_timeout(Some(Duration::from_millis(300)));
    /// let _ = quick.get("/config/level", None).await; // Err(Error::Timeout(_)) if slow
    /// # Ok(()) }
    /// ```
    pub fn with_timeout(&self, timeout: Option<Duration>) -> Client {
        Client { inner: self.inner.clone(), ns: self.ns.clone(), timeout: Some(timeout) }
    }

    /// A unary call with the retry policy and this client's timeout.
    pub(crate) async fn unary<T, F, Fut>(&self, idempotent: bool, call: F) -> Result<T>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let timeout = self.timeout.unwrap_or(self.inner.opts.request_timeout);
        self.inner.unary(timeout, idempotent, call).await
    }

    /// The options the client was connected with.
    pub fn options(&self) -> &ConnectOptions {
        &self.inner.opts
    }

    /// The endpoints in use (as URLs): those given, or the members' client URLs once
    /// [`ConnectOptions::with_auto_sync`] synced them.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.lock().slots.iter().map(|s| s.url.clone()).collect()
    }

    /// The endpoint the client's last call went to (staying on one member: the one in use).
    pub fn current_endpoint(&self) -> String {
        let c = self.inner.lock();
        c.slots.get(c.last).map(|s| s.url.clone()).unwrap_or_default()
    }
}

/// Every `every`, replace the client's endpoints with its members' client URLs (while the
/// client lives). Connections to members still listed are kept.
async fn auto_sync(inner: std::sync::Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let client = Client { inner, ns: None, timeout: None };
        let members = match client.member_list().await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%e, "auto-sync: no member list; keeping the endpoints");
                continue;
            }
        };
        let mut urls: Vec<String> = members.into_iter().flat_map(|m| m.client_ur_ls).collect();
        urls.sort();
        urls.dedup();
        if urls.is_empty() {
            continue;
        }
        let mut c = client.inner.lock();
        let mut current: Vec<String> = c.slots.iter().map(|s| s.url.clone()).collect();
        current.sort();
        if current == urls {
            continue;
        }
        tracing::debug!(?urls, "auto-sync: new endpoints");
        let mut old: Vec<Slot> = std::mem::take(&mut c.slots);
        c.slots = urls
            .into_iter()
            .map(|u| match old.iter().position(|s| s.url == u) {
                Some(i) => old.swap_remove(i),
                None => Slot::new(u),
            })
            .collect();
        let n = c.slots.len();
        c.index %= n;
        c.last %= n;
    }
}

/// A number in `0..n` that differs between clients and processes (std's randomly seeded
/// hasher keys; a new `RandomState` per call).
fn random_below(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() % n.max(1) as u64) as usize
}

impl Conn {
    /// The connection to `url` for a call, if there is one.
    fn existing_for(&mut self, url: &str) -> Option<Raw> {
        let i = self.slots.iter().position(|s| s.url == url)?;
        self.existing(i)
    }

    /// Slot `i`'s connection for a call, if it has one.
    fn existing(&mut self, i: usize) -> Option<Raw> {
        let s = &self.slots[i];
        let raw = Raw { channel: s.channel.clone()?, slot: i, generation: s.generation };
        self.last = i;
        Some(raw)
    }
}

impl Slot {
    fn new(url: String) -> Slot {
        Slot { url, channel: None, generation: 0, avoid_until: None, failures: 0 }
    }

    fn avoided(&self, now: Instant) -> bool {
        self.avoid_until.is_some_and(|t| t > now)
    }

    fn avoid(&mut self) {
        self.avoid_until = Some(Instant::now() + avoid_for(self.failures));
        self.failures = self.failures.saturating_add(1);
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Conn> {
        // The lock is only held for a few field updates; a panic there cannot leave the
        // struct half-written, so recovering from poisoning is safe.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn endpoint(&self, url: &str) -> Result<Endpoint> {
        let o = &self.opts;
        let mut e = Endpoint::from_shared(url.to_string())
            .map_err(|err| Error::InvalidArgument(format!("endpoint {url}: {err}")))?;
        if let (Some(tls), true) = (&o.tls, url.starts_with("https://")) {
            e = e.tls_config(tls.clone()).map_err(|err| Error::InvalidArgument(format!("endpoint {url}: {err}")))?;
        }
        Ok(e.connect_timeout(o.dial_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(o.keep_alive_interval)
            .keep_alive_timeout(o.keep_alive_timeout)
            .keep_alive_while_idle(true))
    }

    async fn dial(&self, url: &str) -> Result<Channel> {
        tracing::debug!(endpoint = %url, "dialling");
        let connect = match (&self.opts.insecure, url.strip_prefix("https://")) {
            // Our own TLS under a plain http:// endpoint (tonic would insist on its own).
            (Some(identity), Some(rest)) => {
                let tls = crate::insecure::config(identity.as_ref())?;
                // An http:// endpoint: tonic adds no TLS of its own to it.
                let e = self.endpoint(&format!("http://{rest}"))?;
                let connector = crate::insecure::connector(tls, self.opts.dial_timeout);
                Box::pin(async move { e.connect_with_connector(connector).await })
                    as std::pin::Pin<
                        Box<dyn Future<Output = std::result::Result<Channel, tonic::transport::Error>> + Send>,
                    >
            }
            _ => {
                let e = self.endpoint(url)?;
                Box::pin(async move { e.connect().await })
            }
        };
        match tokio::time::timeout(self.opts.dial_timeout, connect).await {
            Ok(Ok(ch)) => {
                tracing::debug!(endpoint = %url, "connected");
                Ok(ch)
            }
            Ok(Err(err)) => {
                tracing::debug!(endpoint = %url, %err, "dial failed");
                Err(err.into())
            }
            Err(_) => Err(Error::Unavailable(format!(
                "error trying to connect: timed out after {:?}",
                self.opts.dial_timeout
            ))),
        }
    }

    /// The connection in use (dialled if needed, see [`Inner::raw_conn`]) with the auth
    /// token, logging in first if a user is configured and there is no token yet.
    pub(crate) async fn conn(&self) -> Result<CallConn> {
        let raw = self.raw_conn().await?;
        let token = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let token = match token {
            Token::NotNeeded => None,
            Token::Valid(t) => Some(t),
            Token::Unknown => self.log_in(&raw.channel).await?,
        };
        let channel = InterceptedService::new(raw.channel, WithToken(token));
        Ok(CallConn { channel, slot: raw.slot, generation: raw.generation })
    }

    /// Authenticate as the configured user over `channel`; the token (none if the
    /// cluster has auth off, as clientv3 treats it).
    async fn log_in(&self, channel: &Channel) -> Result<Option<AsciiMetadataValue>> {
        let Some((name, password)) = self.opts.user.clone() else { return Ok(None) };
        let req = AuthenticateRequest { name, password };
        let state = match AuthClient::new(channel.clone()).authenticate(req).await {
            Ok(r) => {
                let token = r.into_inner().token;
                let value = token
                    .parse::<AsciiMetadataValue>()
                    .map_err(|_| Error::InvalidArgument("the server sent a token that is not ASCII".into()))?;
                Token::Valid(value)
            }
            Err(s) if s.message() == "etcdserver: authentication is not enabled" => Token::NotNeeded,
            Err(s) => return Err(s.into()),
        };
        let token = match &state {
            Token::Valid(t) => Some(t.clone()),
            _ => None,
        };
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = state;
        Ok(token)
    }

    /// Forget the token (the server refused it, or auth was turned on): the next call logs
    /// in again. Whether a retry can help (a user is configured).
    pub(crate) fn token_refused(&self) -> bool {
        if self.opts.user.is_none() {
            return false;
        }
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Token::Unknown;
        true
    }

    /// Whether calls spread over the members ([`ConnectOptions::with_spread`]).
    fn spreading(&self) -> bool {
        self.opts.spread && !self.opts.prefer_leader
    }

    /// A connection for the next call: spreading, the next endpoint in turn that has not
    /// just failed (dialled if need be); otherwise the connection in use, dialling
    /// endpoints in turn (from the current one) if there is none — with `prefer_leader`,
    /// the leader's endpoint wins when it is among them.
    async fn raw_conn(&self) -> Result<Raw> {
        let spreading = self.spreading();
        let (n, order) = {
            let mut c = self.lock();
            let n = c.slots.len();
            let now = Instant::now();
            let start = c.index;
            if spreading {
                c.index = (start + 1) % n;
                let next = (0..n).map(|k| (start + k) % n).find(|i| !c.slots[*i].avoided(now));
                if let Some(raw) = next.and_then(|i| c.existing(i)) {
                    return Ok(raw);
                }
            } else if let Some(raw) = c.existing(start) {
                return Ok(raw);
            }
            // Endpoints to dial: those that did not just fail first, the others after.
            let (fresh, avoided): (Vec<usize>, Vec<usize>) =
                (0..n).map(|k| (start + k) % n).partition(|i| !c.slots[*i].avoided(now));
            let order: Vec<(usize, String)> =
                fresh.into_iter().chain(avoided).map(|i| (i, c.slots[i].url.clone())).collect();
            (n, order)
        };
        let mut errors = Vec::new();
        let mut reachable = Vec::new();
        for (i, url) in order {
            if spreading {
                if let Some(raw) = self.lock().existing_for(&url) {
                    return Ok(raw);
                }
            }
            match self.dial(&url).await {
                Ok(ch) => {
                    if !self.opts.prefer_leader || n == 1 {
                        return Ok(self.install(&url, ch));
                    }
                    if is_leader(ch.clone(), self.opts.dial_timeout).await {
                        return Ok(self.install(&url, ch));
                    }
                    reachable.push((url, ch));
                }
                Err(e) => {
                    if let Some(slot) = self.lock().slots.get_mut(i).filter(|s| s.url == url) {
                        slot.avoid();
                    }
                    errors.push(format!("{url}: {e}"));
                }
            }
        }
        if let Some((url, ch)) = reachable.into_iter().next() {
            return Ok(self.install(&url, ch));
        }
        Err(Error::Unavailable(format!("no endpoint reachable ({})", errors.join("; "))))
    }

    /// Keep `ch` as the connection to `url` (unless another call connected meanwhile: then
    /// share that one).
    fn install(&self, url: &str, ch: Channel) -> Raw {
        let spreading = self.spreading();
        let mut c = self.lock();
        let Some(i) = c.slots.iter().position(|s| s.url == url) else {
            // Synced away meanwhile: use it for this call only.
            return Raw { channel: ch, slot: usize::MAX, generation: 0 };
        };
        let current = if spreading { i } else { c.index };
        if let Some(raw) = c.existing(current) {
            return raw;
        }
        if !spreading {
            c.index = i;
        }
        c.generation += 1;
        c.last = i;
        let generation = c.generation;
        c.slots[i] = Slot { channel: Some(ch.clone()), generation, ..Slot::new(url.to_string()) };
        Raw { channel: ch, slot: i, generation }
    }

    /// Report that a call's connection failed: it is dropped, its endpoint passed over for
    /// a moment, and (staying on one member) the next endpoint becomes current.
    pub(crate) fn failed(&self, conn: &CallConn) {
        let spreading = self.spreading();
        let mut c = self.lock();
        let n = c.slots.len();
        let Some(slot) = c.slots.get_mut(conn.slot) else { return };
        if slot.generation == conn.generation && slot.channel.is_some() {
            slot.channel = None;
            slot.avoid();
            tracing::debug!(failed = %slot.url, "failing over");
            if !spreading && c.index == conn.slot {
                c.index = (conn.slot + 1) % n;
            }
        }
    }

    /// Run a unary call with the retry policy: `idempotent` calls are retried on transient
    /// errors; others only when they certainly did not apply. Bounded by `timeout` (the
    /// client's request timeout, or a per-call one) and the policy's attempts.
    pub(crate) async fn unary<T, F, Fut>(&self, timeout: Option<Duration>, idempotent: bool, mut call: F) -> Result<T>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let attempts = async {
            let mut delays = self.opts.retry.delays();
            let max_attempts = self.opts.retry.max_attempts();
            let mut attempt = 0;
            loop {
                attempt += 1;
                let (err, conn) = match self.conn().await {
                    Ok(conn) => match call(conn.channel.clone()).await {
                        Ok(r) => return Ok(r.into_inner()),
                        Err(s) => (Error::from(s), Some(conn)),
                    },
                    Err(e) => (e, None),
                };
                if matches!(err, Error::Unavailable(_) | Error::NoLeader) {
                    if let Some(conn) = &conn {
                        self.failed(conn);
                    }
                }
                // A refused token (or none, with auth turned on meanwhile): log in again.
                // The request was refused before it could apply, so any call may retry.
                let relogin = matches!(err, Error::InvalidAuthToken | Error::UserEmpty) && self.token_refused();
                let retry = relogin || if idempotent { err.is_transient() } else { err.is_safe_to_retry() };
                if !retry || attempt >= max_attempts {
                    return Err(err);
                }
                tracing::debug!(%err, attempt, "retrying");
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
            }
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, attempts).await.map_err(|_| Error::Timeout(t))?,
            None => attempts.await,
        }
    }
}

/// A request for a watch or keep-alive stream, with require-leader metadata if asked
/// ([`ConnectOptions::with_require_leader`]).
pub(crate) fn stream_request<T>(body: T, require_leader: bool) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    if require_leader {
        req.metadata_mut().insert("hasleader", AsciiMetadataValue::from_static("true"));
    }
    req
}

async fn is_leader(ch: Channel, timeout: Duration) -> bool {
    let status = tokio::time::timeout(timeout, MaintenanceClient::new(ch).status(StatusRequest {})).await;
    match status {
        Ok(Ok(s)) => {
            let s = s.into_inner();
            s.leader != 0 && s.header.is_some_and(|h| h.member_id == s.leader)
        }
        _ => false,
    }
}

impl Client {
    /// A client (sharing this one's connection) whose key space is `prefix`: `get("a")`
    /// reads `<prefix>a`, a prefix read of `""` lists the namespace, keys come back without
    /// the prefix. For tenants or applications sharing a cluster; recipes built on a
    /// namespaced client keep their keys inside it. Namespaces nest: the prefixes join.
    /// Not a security boundary (use auth roles for that).
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_sdk::Client) -> cairn_sdk::Result<()> {
    /// let tenant = client.with_namespace("/tenant-a/");
    /// tenant.put("config", "v1", None).await?; // writes /tenant-a/config
    /// let r = tenant.get("config", None).await?;
    /// assert_eq!(r.kvs[0].key, b"config");
    /// # Ok(()) }
    /// ```
    pub fn with_namespace(&self, prefix: impl AsRef<[u8]>) -> Client {
        let mut full = self.ns.as_ref().map_or_else(Vec::new, |n| n.0.to_vec());
        full.extend_from_slice(prefix.as_ref());
        let ns = if full.is_empty() { None } else { Some(crate::namespace::Namespace(full.into())) };
        Client { inner: self.inner.clone(), ns, timeout: self.timeout }
    }

    /// The prefix this client's keys live under (empty without a namespace).
    pub fn namespace(&self) -> &[u8] {
        self.ns.as_ref().map_or(&[], |n| &n.0)
    }
}
