//! A Cairn member: opens the data directory, runs Raft, serves the peer and client
//! ports, and offers the two primitives every handler builds on — [`Node::propose`]
//! (a write through Raft, forwarded to the leader from a follower) and
//! [`Node::read_barrier`] (a linearizable read point by read index).

use crate::batch::{Batcher, NotDone};
use crate::config::Config;
use crate::error::{msg, Error, Result};
use crate::lease::Lessor;
use crate::metrics::Metrics;
use crate::raft::log_store::LogStore;
use crate::raft::network::{peer_channel, Contacts, Network};
use crate::raft::state_machine::{SmState, StateMachine};
use crate::raft::{Member, Raft};
use cairn_api::cairnpb::peer_client::PeerClient;
use cairn_api::cairnpb::{
    raft_request, raft_response, LeaseRenewRequest, LeaseTtlRequest, MemberAttributes, ProposeRequest, RaftRequest,
    RaftResponse, ReadIndexRequest,
};
use cairn_api::etcdserverpb::alarm_request::AlarmAction;
use cairn_api::etcdserverpb::{
    AlarmRequest, AlarmType, LeaseCheckpoint, LeaseCheckpointRequest, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    RangeRequest, RangeResponse, ResponseHeader,
};
use cairn_store::{ids, Engine, Table, WriteBatch};
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

/// How long to wait between retries while no leader is known.
const RETRY: Duration = Duration::from_millis(50);

/// A running member.
pub struct Node {
    /// The validated configuration.
    pub config: Config,
    /// This member's id.
    pub id: u64,
    /// The cluster's id.
    pub cluster_id: u64,
    /// The Raft instance.
    pub raft: Raft,
    /// The state machine (and through it the MVCC store).
    pub sm: StateMachine,
    /// The storage engine.
    pub engine: Arc<dyn Engine>,
    /// Cancelled when the member shuts down.
    pub shutdown: CancellationToken,
    /// Group commit and shared read-index rounds.
    batcher: Batcher,
    /// Every task of this member.
    pub tasks: TaskTracker,
    /// Lease expiry (acts only on the leader).
    pub lessor: Arc<Lessor>,
    peer_clients: Mutex<HashMap<u64, (Member, PeerClient<Channel>)>>,
    /// This member's metrics.
    pub metrics: Arc<Metrics>,
    /// When each peer last answered a Raft RPC.
    pub contacts: Contacts,
    /// Held while a membership change runs (one at a time).
    pub member_change: tokio::sync::Mutex<()>,
    /// Set while leadership is being handed over: new proposals and reads wait.
    pub transferring: AtomicBool,
    free_disk: Mutex<Option<(Instant, u64)>>,
    /// How to call other members (TLS for https:// peer URLs, source address).
    pub peer_dial: crate::raft::network::PeerDial,
    /// Set when Raft stopped on a storage failure (the process should exit non-zero).
    pub failed: AtomicBool,
    /// How auth tokens are made and checked.
    pub tokens: crate::auth::token::TokenKind,
    /// Whether auth is on (the state machine's flag, read without its lock).
    pub auth_on: Arc<AtomicBool>,
}

/// Resolve `http://host:port` to socket addresses.
pub async fn resolve(url: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let uri: tonic::codegen::http::Uri = url.parse()?;
    let host = uri.host().ok_or_else(|| anyhow::anyhow!("{url}: no host"))?;
    let host = host.to_string();
    let port = uri.port_u16().ok_or_else(|| anyhow::anyhow!("{url}: no port"))?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(format!("{host}:{port}")).await?.collect();
    Ok(addrs)
}

/// A started member: the node plus its bound addresses and tasks.
pub struct NodeHandle {
    /// The member.
    pub node: Arc<Node>,
    /// Bound client addresses.
    pub client_addrs: Vec<SocketAddr>,
    /// Bound peer addresses.
    pub peer_addrs: Vec<SocketAddr>,
    /// Bound metrics-only addresses (`--listen-metrics-urls`).
    pub metrics_addrs: Vec<SocketAddr>,
    tasks: TaskTracker,
}

impl NodeHandle {
    /// Stop serving, shut Raft down and wait for every task.
    pub async fn stop(self) {
        self.node.shutdown.cancel();
        self.tasks.close();
        self.node.sm.hub.stop().await;
        let _ = self.node.raft.shutdown().await;
        self.tasks.wait().await;
    }

    /// Wait until the member is asked to stop (by [`Node::shutdown`]), then stop.
    pub async fn run_until_stopped(self) {
        self.node.shutdown.cancelled().await;
        self.stop().await;
    }
}

impl Node {
    /// Open the data directory and start serving.
    pub async fn start(config: Config) -> anyhow::Result<NodeHandle> {
        let ids: BTreeMap<u64, Member> = config
            .initial_cluster
            .iter()
            .map(|(name, urls)| {
                (ids::member_id(urls, &config.cluster_token, 0), Member { name: name.clone(), peer_urls: urls.clone() })
            })
            .collect();
        crate::data_dir::prepare(&config.data_dir, config.allow_shared_data_dir)?;
        let engine = cairn_store::engine::open(config.engine, &config.data_dir.join("member"))?;
        let (id, cluster_id) = identify(&config, engine.as_ref(), &ids).await?;
        let metrics = Metrics::new(id);
        let log =
            LogStore::open(engine.clone(), &config.data_dir.join("member").join("wal"), metrics.wal_fsync.clone())?;
        let lessor = Arc::new(Lessor::new(config.election_timeout));
        let sm =
            StateMachine::open(engine.clone(), config.data_dir.join("snap"), config.max_request_bytes, lessor.clone())?;
        sm.hub.set_max_watchers_per_stream(config.max_watchers_per_stream);
        let et = config.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: config.cluster_token.clone(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: et,
            election_timeout_max: et * 3 / 2,
            install_snapshot_timeout: 10_000.max(et * 10),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            // Keep some entries after a snapshot so a briefly lagging follower catches up
            // from the log rather than by a full snapshot (etcd keeps 5,000).
            max_in_snapshot_log_to_keep: 5_000.min(config.snapshot_count),
            max_payload_entries: 1024,
            ..Default::default()
        }
        .validate()?;
        let auth_on = sm.state.read().unwrap_or_else(|p| p.into_inner()).auth.on.clone();
        let contacts = Contacts::default();
        let peer_dial = crate::raft::network::PeerDial::of(&config)?;
        let network = Network { cluster_id, contacts: contacts.clone(), dial: peer_dial.clone() };
        let floor = read_floor(id, &mut log.clone()).await?;
        let raft = Raft::new(id, Arc::new(raft_config), network, log, sm.clone()).await?;
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let batcher = Batcher::start(raft.clone(), floor, &tasks, shutdown.clone());
        let node = Arc::new(Node {
            config: config.clone(),
            id,
            cluster_id,
            raft,
            sm,
            engine,
            shutdown,
            batcher,
            tasks: tasks.clone(),
            lessor,
            peer_clients: Mutex::new(HashMap::new()),
            metrics,
            contacts,
            member_change: tokio::sync::Mutex::new(()),
            transferring: AtomicBool::new(false),
            free_disk: Mutex::new(None),
            peer_dial,
            failed: AtomicBool::new(false),
            tokens: config.auth_token.clone(),
            auth_on,
        });
        node.read(|st| st.auth.tokens.set_ttl(config.auth_token_ttl));
        {
            let n = Arc::downgrade(&node);
            node.sm.hub.set_header(Box::new(move |rev| match n.upgrade() {
                Some(n) => n.header(rev),
                None => ResponseHeader { revision: rev, ..Default::default() },
            }));
        }
        tasks.spawn(node.sm.hub.clone().run_progress(config.watch_progress_notify_interval));

        let mut peer_addrs = Vec::new();
        for url in &config.listen_peer_urls {
            for addr in resolve(url).await? {
                let l = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("listen on {url}: {e}"))?;
                peer_addrs.push(l.local_addr()?);
                let tls = tls_for(url, &config.peer_tls, "peer-")?;
                warn_if_exposed(url, tls.is_some(), "peer");
                tasks.spawn(crate::raft::peer::serve(node.clone(), l, tls));
            }
        }

        if config.new_cluster && !node.raft.is_initialized().await? {
            if !ids.contains_key(&id) {
                anyhow::bail!("this member ({}) is not in --initial-cluster", config.name);
            }
            // Every member of a new cluster initializes with the same membership, which
            // openraft allows; the first election decides the leader.
            if let Err(e) = node.raft.initialize(ids.clone()).await {
                tracing::info!("initialize: {e}");
            }
        }

        let mut client_addrs = Vec::new();
        for url in &config.listen_client_urls {
            for addr in resolve(url).await? {
                let l = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("listen on {url}: {e}"))?;
                client_addrs.push(l.local_addr()?);
                let tls = tls_for(url, &config.client_tls, "")?;
                warn_if_exposed(url, tls.is_some(), "client");
                tasks.spawn(crate::grpc::serve(node.clone(), l, tls));
            }
        }
        let mut metrics_addrs = Vec::new();
        for url in &config.listen_metrics_urls {
            for addr in resolve(url).await? {
                let l = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("listen on {url}: {e}"))?;
                metrics_addrs.push(l.local_addr()?);
                tasks.spawn(crate::grpc::serve_metrics(node.clone(), l));
            }
        }
        tasks.spawn(publish_attributes(node.clone()));
        tasks.spawn(crate::lease::run_leadership(node.clone()));
        tasks.spawn(crate::lease::run_expiry(node.clone(), config.lease_revoke_rate));
        tasks.spawn(crate::lease::run_checkpoints(node.clone(), config.lease_checkpoint_interval));
        tasks.spawn(checkpoint(node.clone()));
        tasks.spawn(crate::metrics::track_leader(node.clone()));
        tasks.spawn(crate::membership::watch_removal(node.clone()));
        tasks.spawn(watch_fatal(node.clone()));
        tasks.spawn(crate::upkeep::auto_compact(node.clone(), config.auto_compaction, config.auto_compaction_interval));
        tasks.spawn(crate::upkeep::corruption_check(node.clone(), config.corrupt_check_interval));
        tasks.spawn(crate::upkeep::clear_no_space(node.clone()));
        if config.learner_auto_promote {
            tasks.spawn(crate::upkeep::auto_promote(node.clone()));
        }
        tracing::info!(
            name = %config.name, id = %format!("{id:x}"), cluster = %format!("{cluster_id:x}"),
            data_dir = %config.data_dir.display(), engine = %config.engine,
            client = ?client_addrs, peer = ?peer_addrs, metrics = ?metrics_addrs, "cairn member started"
        );
        Ok(NodeHandle { node, client_addrs, peer_addrs, metrics_addrs, tasks })
    }

    /// Run `f` on the state machine under its read lock.
    pub fn read<T>(&self, f: impl FnOnce(&SmState) -> T) -> T {
        let st = self.sm.state.read().unwrap_or_else(|p| p.into_inner());
        f(&st)
    }

    /// A range read from the local store. The key revisions come from the index under the
    /// store's lock; a large result's values are then read from a frozen view of the engine
    /// taken under the same lock, after releasing it, so writers are not held back while
    /// thousands of values load.
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse> {
        /// Below this many values, loading them under the lock is cheaper than a view.
        const LARGE: usize = 256;
        enum Planned {
            Done(RangeResponse),
            Load(cairn_store::mvcc::RangeKeys, Box<dyn cairn_store::engine::ReadView>),
        }
        let planned = self.read(|st| -> Result<Planned> {
            let keys = st.mvcc.range_keys_at(r)?;
            if keys.len() >= LARGE {
                // (sled has no frozen view: then the values load under the lock.)
                if let Some(view) = self.engine.frozen_view()? {
                    return Ok(Planned::Load(keys, view));
                }
            }
            Ok(Planned::Done(st.mvcc.finish_range(keys)?))
        })?;
        match planned {
            Planned::Done(resp) => Ok(resp),
            Planned::Load(keys, view) => Ok(keys.finish(&|rev| cairn_store::mvcc::load_from(view.as_ref(), rev))?),
        }
    }

    /// A response header: cluster, member, `revision` and the current Raft term.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.id,
            revision,
            raft_term: self.raft.metrics().borrow().current_term,
        }
    }

    /// A CRC-32 of the MVCC history up to `revision` (0: the current one) — every
    /// revision of every key not compacted away — with the compact revision and the
    /// current revision. Members that applied the same log agree on it (HashKV, the basis
    /// of corruption checks). Read from a frozen view, so writes go on meanwhile.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64)> {
        let (view, compacted, current) =
            self.read(|st| (self.engine.frozen_view(), st.mvcc.compact_revision(), st.mvcc.current_revision()));
        let view = view?;
        let at = if revision > 0 { revision } else { current };
        if at > current {
            return Err(cairn_store::StoreError::FutureRev.into());
        }
        if revision > 0 && revision < compacted {
            return Err(cairn_store::StoreError::Compacted.into());
        }
        let end = cairn_store::Revision { main: at + 1, sub: 0 }.to_bytes();
        let mut h = crc32fast::Hasher::new();
        h.update(&compacted.to_be_bytes());
        let mut visit = |k: &[u8], v: &[u8]| {
            h.update(k);
            h.update(v);
            Ok(true)
        };
        match view {
            Some(v) => v.scan(Table::Kv, &[], Some(&end), &mut visit)?,
            // No frozen view (sled): scan under the state lock so no apply interleaves.
            None => self.read(|_| self.engine.scan(Table::Kv, &[], Some(&end), &mut visit))?,
        }
        Ok((h.finalize(), compacted, current))
    }

    /// The current leader's id, if known.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// A (cached) client of member `id`'s peer port.
    pub fn peer_client(&self, id: u64, member: &Member) -> Option<PeerClient<Channel>> {
        let mut cache = self.peer_clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((m, c)) = cache.get(&id) {
            // A member whose peer URLs changed (MemberUpdate) gets a new connection.
            if m.peer_urls == member.peer_urls {
                return Some(c.clone());
            }
        }
        let c = PeerClient::new(peer_channel(member, &self.peer_dial)?).max_decoding_message_size(64 << 20);
        cache.insert(id, (member.clone(), c.clone()));
        Some(c)
    }

    /// Whether a leadership transfer holds new proposals and reads back.
    fn paused(&self) -> bool {
        self.transferring.load(Ordering::SeqCst)
    }

    /// Propose a write on this member only (the leader, for writes forwarded to it).
    pub async fn propose_local(&self, req: RaftRequest) -> std::result::Result<RaftResponse, tonic::Status> {
        if self.paused() {
            return Err(tonic::Status::failed_precondition(crate::error::msg::NOT_LEADER));
        }
        match self.batcher.propose(req).await {
            Ok(r) => Ok(r),
            Err(NotDone::Forward(_)) => Err(tonic::Status::failed_precondition(crate::error::msg::NOT_LEADER)),
            Err(NotDone::Stopped) => Err(tonic::Status::unavailable(crate::error::msg::STOPPED)),
            Err(NotDone::Other(e)) => Err(tonic::Status::unavailable(e)),
        }
    }

    /// Replicate a write through Raft and return its applied result. From a follower
    /// the write is forwarded to the leader. Apply errors come back as `Err`.
    pub async fn propose(&self, req: RaftRequest) -> Result<RaftResponse> {
        if req.encoded_len() > self.config.max_request_bytes {
            return Err(Error::InvalidArgument(crate::error::msg::REQUEST_TOO_LARGE));
        }
        if crate::apply::adds_data(&req) {
            self.check_quota().await?;
        }
        if crate::apply::changes_data(&req) && self.read(|st| st.corrupt()) {
            return Err(Error::etcd(tonic::Code::DataLoss, msg::CORRUPT));
        }
        // Counted down when done or when the caller gives up (the future is dropped).
        struct Pending<'a>(&'a prometheus::IntGauge);
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        self.metrics.proposals_pending.inc();
        let _pending = Pending(&self.metrics.proposals_pending);
        let res = self.propose_inner(req).await;
        if matches!(res, Err(Error::Timeout | Error::NoLeader | Error::ConnectionLost | Error::Stopped)) {
            self.metrics.proposals_failed.inc();
        }
        res
    }

    /// Refuse a write that adds data once the store is over `--quota-backend-bytes`,
    /// raising this member's NOSPACE alarm (through Raft, so every member refuses such
    /// writes until it is disarmed), as etcd's quota check does.
    async fn check_quota(&self) -> Result<()> {
        let no_space = || Error::Remote { code: tonic::Code::ResourceExhausted as i32, message: msg::NO_SPACE.into() };
        if self.read(|st| st.no_space()) {
            return Err(no_space());
        }
        let size = self.engine.size_on_disk();
        let free = self.free_disk();
        if size <= self.config.quota_backend_bytes && free >= self.config.min_free_disk_bytes {
            return Ok(());
        }
        tracing::warn!(
            size,
            quota = self.config.quota_backend_bytes,
            free_disk = free,
            min_free = self.config.min_free_disk_bytes,
            "backend over quota or disk almost full: raising NOSPACE"
        );
        let alarm =
            AlarmRequest { action: AlarmAction::Activate as i32, member_id: self.id, alarm: AlarmType::Nospace as i32 };
        if let Err(e) = self.propose_inner(RaftRequest::internal(raft_request::Request::Alarm(alarm))).await {
            tracing::warn!("raising NOSPACE: {e}");
        }
        Err(no_space())
    }

    /// Free bytes on the data directory's file system (checked at most every 250 ms;
    /// `u64::MAX` if it cannot be read).
    pub fn free_disk(&self) -> u64 {
        let mut cached = self.free_disk.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, free)) = *cached {
            if at.elapsed() < Duration::from_millis(250) {
                return free;
            }
        }
        let free =
            rustix::fs::statvfs(&self.config.data_dir).map_or(u64::MAX, |s| s.f_bavail.saturating_mul(s.f_frsize));
        *cached = Some((Instant::now(), free));
        free
    }

    async fn propose_inner(&self, req: RaftRequest) -> Result<RaftResponse> {
        let deadline = Instant::now() + self.config.request_timeout();
        loop {
            let proposed = if self.paused() {
                Err(NotDone::Other("leadership is moving".into()))
            } else {
                self.batcher.propose(req.clone()).await
            };
            match proposed {
                Ok(r) => return into_result(r),
                Err(NotDone::Forward(leader)) => {
                    if let Some((lid, member)) = leader.map(|b| *b) {
                        if let Some(mut client) = self.peer_client(lid, &member) {
                            let mut r = tonic::Request::new(ProposeRequest {
                                cluster_id: self.cluster_id,
                                request: Some(req.clone()),
                            });
                            r.set_timeout(deadline.saturating_duration_since(Instant::now()));
                            match client.propose(r).await {
                                Ok(resp) => {
                                    // As etcd, answer once this member has applied the write too:
                                    // what the client does next here sees it.
                                    let resp = resp.into_inner();
                                    let wait = deadline.saturating_duration_since(Instant::now());
                                    let _ = self
                                        .raft
                                        .wait(Some(wait))
                                        .applied_index_at_least(Some(resp.log_index), "forwarded write")
                                        .await;
                                    return into_result(resp);
                                }
                                // The leader moved before it proposed, or the request never
                                // reached it (connection refused): safe to retry.
                                Err(s) if s.message() == crate::error::msg::NOT_LEADER || never_sent(&s) => {}
                                // The outcome is unknown: never retry a write blindly.
                                Err(s)
                                    if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Cancelled =>
                                {
                                    return Err(Error::ConnectionLost)
                                }
                                Err(s) if s.code() == tonic::Code::DeadlineExceeded => return Err(Error::Timeout),
                                Err(s) => return Err(s.into()),
                            }
                        }
                    }
                }
                // No quorum or a leader change under way: retry until the deadline.
                Err(NotDone::Other(e)) => tracing::debug!("proposal not committed, retrying: {e}"),
                Err(NotDone::Stopped) => return Err(Error::Stopped),
            }
            if Instant::now() >= deadline {
                return Err(if self.leader().is_none() { Error::NoLeader } else { Error::Timeout });
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// The log index a linearizable read must observe, as the leader sees it now.
    pub async fn read_index_local(&self) -> std::result::Result<u64, tonic::Status> {
        if self.paused() {
            return Err(tonic::Status::failed_precondition(crate::error::msg::NOT_LEADER));
        }
        match self.batcher.read_index().await {
            Ok(index) => Ok(index),
            Err(NotDone::Forward(_)) => Err(tonic::Status::failed_precondition(crate::error::msg::NOT_LEADER)),
            Err(NotDone::Stopped) => Err(tonic::Status::unavailable(crate::error::msg::STOPPED)),
            Err(NotDone::Other(e)) => Err(tonic::Status::unavailable(e)),
        }
    }

    /// Wait until this member has applied everything committed before the call, as
    /// confirmed by the leader (read index): after it, a local read is linearizable.
    pub async fn read_barrier(&self) -> Result<()> {
        let deadline = Instant::now() + self.config.request_timeout();
        loop {
            let read = if self.paused() {
                Err(NotDone::Other("leadership is moving".into()))
            } else {
                self.batcher.read_index().await
            };
            let index = match read {
                Ok(index) => Some(index),
                Err(NotDone::Forward(Some(leader))) => match self.peer_client(leader.0, &leader.1) {
                    Some(mut c) => {
                        let mut r = tonic::Request::new(ReadIndexRequest { cluster_id: self.cluster_id });
                        r.set_timeout(deadline.saturating_duration_since(Instant::now()));
                        c.read_index(r).await.ok().map(|r| r.into_inner().index)
                    }
                    None => None,
                },
                Err(NotDone::Forward(None)) | Err(NotDone::Other(_)) => None,
                Err(NotDone::Stopped) => return Err(Error::Stopped),
            };
            if let Some(index) = index {
                let wait = deadline.saturating_duration_since(Instant::now());
                return match self.raft.wait(Some(wait)).applied_index_at_least(Some(index), "read barrier").await {
                    Ok(_) => Ok(()),
                    Err(openraft::metrics::WaitError::Timeout(..)) => Err(Error::Timeout),
                    Err(openraft::metrics::WaitError::ShuttingDown) => Err(Error::Stopped),
                };
            }
            if Instant::now() >= deadline {
                return Err(if self.leader().is_none() { Error::NoLeader } else { Error::Timeout });
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Whether a failed call never reached the other side (the connection could not be made),
/// so that retrying it cannot apply a write twice.
pub fn never_sent(s: &tonic::Status) -> bool {
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        src = e.source();
    }
    false
}

impl Node {
    /// Wait (bounded) until this member's lessor acts as leader, if Raft says it leads;
    /// returns the leader to forward to otherwise.
    async fn lease_leader(&self) -> Result<Option<(u64, Member)>> {
        let deadline = Instant::now() + self.config.request_timeout();
        loop {
            if self.lessor.is_leader() {
                return Ok(None);
            }
            let m = self.raft.metrics().borrow().clone();
            match m.current_leader {
                Some(l) if l != self.id => {
                    if let Some(member) = m.membership_config.membership().get_node(&l) {
                        return Ok(Some((l, member.clone())));
                    }
                }
                // This member leads but has not promoted its lessor yet, or no leader.
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(if m.current_leader.is_none() { Error::NoLeader } else { Error::Timeout });
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Renew lease `id` (a keepalive): its TTL, or 0 if it does not exist or expired.
    /// From a follower the renewal is forwarded to the leader; while the leader is dying or
    /// moving it is re-sent (renewing twice is harmless) until the request timeout, as etcd
    /// does, so keepalives ride through an election.
    pub async fn lease_renew(&self, id: i64) -> Result<i64> {
        let deadline = Instant::now() + self.config.request_timeout();
        loop {
            match self.lease_leader().await? {
                None => {
                    return match self.lessor.renew(id) {
                        Some(r) => {
                            if r.needs_record {
                                // Answered only once every member's floor covers it, so no
                                // later leader expires the lease before this keepalive + TTL.
                                let cp = LeaseCheckpointRequest {
                                    checkpoints: vec![LeaseCheckpoint { id, remaining_ttl: r.record_ttl() }],
                                };
                                self.propose(RaftRequest::internal(raft_request::Request::LeaseCheckpoint(cp))).await?;
                                self.lessor.covered(id, r.at);
                            }
                            Ok(r.ttl)
                        }
                        None => Ok(0),
                    };
                }
                Some((lid, member)) => {
                    let mut c = self.peer_client(lid, &member).ok_or(Error::NoLeader)?;
                    match c.lease_renew(LeaseRenewRequest { cluster_id: self.cluster_id, id }).await {
                        Ok(r) => return Ok(r.into_inner().ttl),
                        Err(s) if leader_moving(&s) && Instant::now() < deadline => {}
                        Err(s) => return Err(s.into()),
                    }
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// A lease's granted and remaining TTL (TTL -1 if it does not exist, as etcd). Asked
    /// of the leader, again after a leader change, until the request timeout.
    pub async fn lease_time_to_live(&self, req: LeaseTimeToLiveRequest) -> Result<LeaseTimeToLiveResponse> {
        let deadline = Instant::now() + self.config.request_timeout();
        loop {
            match self.lease_leader().await? {
                None => {
                    let rev = self.read(|st| st.mvcc.current_revision());
                    return Ok(match self.lessor.time_to_live(req.id) {
                        Some((granted, remaining)) => LeaseTimeToLiveResponse {
                            header: Some(self.header(rev)),
                            id: req.id,
                            ttl: remaining,
                            granted_ttl: granted,
                            keys: if req.keys { self.read(|st| st.mvcc.lease_keys(req.id)) } else { vec![] },
                        },
                        None => LeaseTimeToLiveResponse {
                            header: Some(self.header(rev)),
                            id: req.id,
                            ttl: -1,
                            ..Default::default()
                        },
                    });
                }
                Some((lid, member)) => {
                    let mut c = self.peer_client(lid, &member).ok_or(Error::NoLeader)?;
                    let ask = LeaseTtlRequest { cluster_id: self.cluster_id, request: Some(req) };
                    match c.lease_time_to_live(ask).await {
                        Ok(r) => {
                            let mut r = r.into_inner();
                            let rev = r.header.as_ref().map_or(0, |h| h.revision);
                            r.header = Some(self.header(rev));
                            return Ok(r);
                        }
                        Err(s) if leader_moving(&s) && Instant::now() < deadline => {}
                        Err(s) => return Err(s.into()),
                    }
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Whether a call forwarded to the leader failed because the leader is gone or no longer
/// leads (so a read-like call may be asked again of the next leader).
fn leader_moving(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled)
        || s.message() == crate::error::msg::NOT_LEADER
        || never_sent(s)
}

fn into_result(r: RaftResponse) -> Result<RaftResponse> {
    match r.response {
        Some(raft_response::Response::Error(e)) => Err(Error::Remote { code: e.code, message: e.message }),
        _ => Ok(r),
    }
}

/// How often applied state is made durable. Between checkpoints it is recoverable from
/// the WAL, which is never purged past a durable checkpoint.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Make the state machine's writes durable once a second when anything was applied, so
/// a restart re-applies at most about a second of the log.
async fn checkpoint(node: Arc<Node>) {
    let mut rev = node.sm.revision_tx.subscribe();
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => break,
            changed = rev.changed() => if changed.is_err() { break },
        }
        let engine = node.engine.clone();
        let timer = node.metrics.backend_commit.clone();
        let synced = tokio::task::spawn_blocking(move || {
            let _t = timer.start_timer();
            engine.sync()
        });
        if let Ok(Err(e)) = synced.await {
            tracing::error!("checkpointing the store: {e}");
        }
        tokio::select! {
            _ = node.shutdown.cancelled() => break,
            _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
        }
    }
    // Final checkpoint on shutdown.
    let engine = node.engine.clone();
    let _ = tokio::task::spawn_blocking(move || engine.sync()).await;
}

/// The read-index floor of a member that led when it stopped: openraft restores it as
/// leader of the same term with a commit index as old as its last checkpoint (see
/// [`crate::batch`]).
async fn read_floor(id: u64, log: &mut LogStore) -> anyhow::Result<Option<crate::batch::ReadFloor>> {
    use openraft::storage::RaftLogStorage;
    let Some(vote) = log.read_vote().await? else { return Ok(None) };
    if !vote.is_committed() || vote.leader_id().voted_for() != Some(id) {
        return Ok(None);
    }
    let last = log.get_log_state().await?.last_log_id.map_or(0, |l| l.index);
    Ok(Some(crate::batch::ReadFloor { term: vote.leader_id().term, index: last }))
}

/// Publish this member's name and client URLs through Raft (as etcd does), retrying
/// until they are applied, so every member can list them.
async fn publish_attributes(node: Arc<Node>) {
    let want = MemberAttributes {
        id: node.id,
        name: node.config.name.clone(),
        client_urls: node.config.advertise_client_urls.clone(),
    };
    loop {
        if node.read(|st| st.attrs.get(&node.id) == Some(&want)) {
            return;
        }
        let req = RaftRequest::internal(raft_request::Request::Publish(want.clone()));
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            r = node.propose(req) => match r {
                Ok(_) => return,
                Err(e) => tracing::debug!("publishing member attributes: {e}"),
            },
        }
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// The server TLS for a listen URL: for https:// ones.
fn tls_for(url: &str, files: &crate::tls::TlsFiles, prefix: &str) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    if !crate::tls::is_https(url) {
        return Ok(None);
    }
    files.server(prefix).map(Some).map_err(|e| anyhow::anyhow!(e))
}

/// Warn loudly about a port open beyond this machine without TLS.
fn warn_if_exposed(url: &str, tls: bool, what: &str) {
    if !tls && !crate::tls::is_loopback(url) {
        tracing::warn!(
            url,
            "the {what} port listens on a non-loopback address WITHOUT TLS: anyone who can reach it can read and \
             change every key; use https:// URLs with --{}cert-file/--{}key-file",
            if what == "peer" { "peer-" } else { "" },
            if what == "peer" { "peer-" } else { "" }
        );
    }
}

/// This member's id and its cluster's: stored on first start; for a new cluster derived
/// from `--initial-cluster`, for a member joining a running one asked of its members.
async fn identify(config: &Config, engine: &dyn Engine, initial: &BTreeMap<u64, Member>) -> anyhow::Result<(u64, u64)> {
    let stored = (ids::load_id(engine, ids::KEY_MEMBER_ID)?, ids::load_id(engine, ids::KEY_CLUSTER_ID)?);
    let (id, cluster_id) = match stored {
        (Some(id), Some(cid)) => return Ok((id, cid)),
        // A data directory from before member ids were stored.
        (None, Some(cid)) => (ids::member_id(&config.advertise_peer_urls, &config.cluster_token, 0), cid),
        _ if config.new_cluster => (
            ids::member_id(&config.advertise_peer_urls, &config.cluster_token, 0),
            ids::cluster_id(initial.keys().copied()),
        ),
        _ => crate::membership::discover(config).await?,
    };
    let mut wb = WriteBatch::new();
    ids::store_id(&mut wb, ids::KEY_MEMBER_ID, id);
    ids::store_id(&mut wb, ids::KEY_CLUSTER_ID, cluster_id);
    engine.write(wb, true)?;
    Ok((id, cluster_id))
}

/// Stop the member when Raft has stopped on a storage failure (a write to the log or the
/// store failed, e.g. the disk is full): it can no longer serve, and etcd exits too, so a
/// supervisor restarts it once the cause is fixed. Nothing acknowledged is lost: an entry
/// is acknowledged only after it is on disk.
async fn watch_fatal(node: Arc<Node>) {
    let mut m = node.raft.metrics();
    loop {
        let failed = m.borrow().running_state.clone().err();
        if let Some(e) = failed {
            tracing::error!("raft stopped: {e}; this member cannot go on (is the disk full?), stopping");
            node.failed.store(true, Ordering::SeqCst);
            node.shutdown.cancel();
            return;
        }
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            changed = m.changed() => if changed.is_err() { return },
        }
    }
}
