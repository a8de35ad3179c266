//! The wiring of one member, and the only place that knows every layer: bind every
//! listener, open storage and Raft, build the layers bottom-up
//! ([`Replica`] -> [`Router`] -> [`Writer`] -> leases, membership, auth gate, upkeep ->
//! handlers), serve the ports and start the background tasks. Nothing else names the
//! member; each layer gets the handles it needs (docs/ARCHITECTURE.md draws the graph).
//! A failure after Raft started stops everything started so far.

use crate::auth::gate::AuthGate;
use crate::batch::{Batcher, ReadFloor};
use crate::config::Config;
use crate::gateway::observe::Observed;
use crate::lease::leader::Leases;
use crate::lease::Lessor;
use crate::membership::{Membership, Timing};
use crate::metrics::Metrics;
use crate::peer::PeerService;
use crate::raft::log_store::LogStore;
use crate::raft::network::{Contacts, Network, PeerChannels, PeerDial};
use crate::raft::state_machine::StateMachine;
use crate::raft::{Member, Raft};
use crate::replica::Replica;
use crate::router::Router;
use crate::serve::Serving;
use crate::state::Headers;
use crate::upkeep::Upkeep;
use crate::watch::WatchMetrics;
use crate::write::Writer;
use cairn_api::cairnpb::{raft_request, MemberAttributes, RaftRequest};
use cairn_store::{ids, Engine, WriteBatch};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Resolve `http://host:port` to socket addresses.
pub async fn resolve(url: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let uri: tonic::codegen::http::Uri = url.parse()?;
    let host = uri.host().ok_or_else(|| anyhow::anyhow!("{url}: no host"))?;
    let host = host.to_string();
    let port = uri.port_u16().ok_or_else(|| anyhow::anyhow!("{url}: no port"))?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(format!("{host}:{port}")).await?.collect();
    Ok(addrs)
}

/// A started member: its bound addresses, and how to stop it.
pub struct MemberHandle {
    /// Bound client addresses.
    pub client_addrs: Vec<SocketAddr>,
    /// Bound peer addresses.
    pub peer_addrs: Vec<SocketAddr>,
    /// Bound metrics-only addresses (`--listen-metrics-urls`).
    pub metrics_addrs: Vec<SocketAddr>,
    shutdown: CancellationToken,
    failed: Arc<AtomicBool>,
    tasks: TaskTracker,
    replica: Arc<Replica>,
    leases: Arc<Leases>,
}

impl MemberHandle {
    /// Cancelling it stops the member (as SIGTERM does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Set when Raft stopped on a storage failure (the process should exit non-zero);
    /// readable after the handle is consumed by [`MemberHandle::run_until_stopped`].
    pub fn failed_flag(&self) -> Arc<AtomicBool> {
        self.failed.clone()
    }

    /// The current leader's id, if known.
    pub fn leader(&self) -> Option<u64> {
        self.replica.leader()
    }

    /// How many leases the member tracks.
    pub fn lease_count(&self) -> usize {
        self.leases.count()
    }

    /// How many of the member's tasks run (streams, background work).
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// The watch hub's counters.
    pub fn watch_metrics(&self) -> &WatchMetrics {
        &self.replica.hub().metrics
    }

    /// Stop serving, shut Raft down and wait for every task.
    pub async fn stop(self) {
        stop(&self.shutdown, &self.tasks, &self.replica).await;
    }

    /// Wait until the member is asked to stop (by [`MemberHandle::shutdown_token`]), then stop.
    pub async fn run_until_stopped(self) {
        self.shutdown.cancelled().await;
        self.stop().await;
    }
}

/// How long a stop waits for Raft and every task to finish before giving up on them.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Stop gracefully, within [`STOP_GRACE`]: what has not finished by then (a client stream
/// held open, a call to a peer that does not answer) is abandoned and logged, as etcd's
/// graceful gRPC stop turns into a hard stop after a timeout. Nothing acknowledged depends on
/// it: every acknowledged write is in the fsynced WAL, replayed at the next start.
async fn stop(shutdown: &CancellationToken, tasks: &TaskTracker, replica: &Replica) {
    shutdown.cancel();
    tasks.close();
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    if tokio::time::timeout_at(deadline, replica.stop()).await.is_err() {
        tracing::warn!(grace = ?STOP_GRACE, "Raft did not stop in time; stopping anyway");
        return;
    }
    if tokio::time::timeout_at(deadline, tasks.wait()).await.is_err() {
        tracing::warn!(grace = ?STOP_GRACE, unfinished = tasks.len(), "tasks did not stop in time; stopping anyway");
    }
}

/// A listener bound for one URL.
struct Bound {
    url: String,
    listener: TcpListener,
}

/// Bind every address `urls` resolve to; the bound addresses are appended to `addrs`.
async fn bind_all(urls: &[String], addrs: &mut Vec<SocketAddr>) -> anyhow::Result<Vec<Bound>> {
    let mut out = Vec::new();
    for url in urls {
        for addr in resolve(url).await? {
            let listener = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("listen on {url}: {e}"))?;
            addrs.push(listener.local_addr()?);
            out.push(Bound { url: url.clone(), listener });
        }
    }
    Ok(out)
}

/// Port 0 in a listen URL binds any free port; an advertise URL naming port 0 on the same
/// scheme and host then advertises the port bound (so a test or an embedding program
/// starts a member on free ports with no bind-release-rebind race). This member's own
/// entry in the initial cluster follows its advertised peer URLs.
fn fill_bound_ports(config: &mut Config, client: &[Bound], peer: &[Bound]) {
    fn fill(urls: &mut [String], bound: &[Bound]) {
        for u in urls.iter_mut() {
            let Some(base) = u.strip_suffix(":0") else { continue };
            let port = bound.iter().find(|b| b.url.strip_suffix(":0") == Some(base));
            if let Some(addr) = port.and_then(|b| b.listener.local_addr().ok()) {
                *u = format!("{base}:{}", addr.port());
            }
        }
    }
    fill(&mut config.advertise_client_urls, client);
    let mut before = config.advertise_peer_urls.clone();
    fill(&mut config.advertise_peer_urls, peer);
    before.sort();
    if let Some(mine) = config.initial_cluster.get_mut(&config.name) {
        // (The initial cluster's URLs are kept sorted.)
        if *mine == before {
            mine.clone_from(&config.advertise_peer_urls);
            mine.sort();
        }
    }
}

/// Open the data directory and start serving.
pub async fn start(mut config: Config) -> anyhow::Result<MemberHandle> {
    // 1. Every listener first: a port in use fails the start before anything runs.
    let (mut client_addrs, mut peer_addrs, mut metrics_addrs) = (Vec::new(), Vec::new(), Vec::new());
    let peer_ports = bind_all(&config.listen_peer_urls, &mut peer_addrs).await?;
    let client_ports = bind_all(&config.listen_client_urls, &mut client_addrs).await?;
    let http_ports = bind_all(&config.listen_client_http_urls, &mut Vec::new()).await?;
    let metrics_ports = bind_all(&config.listen_metrics_urls, &mut metrics_addrs).await?;
    fill_bound_ports(&mut config, &client_ports, &peer_ports);
    if let Some(years) = config.auto_tls {
        if client_ports.iter().chain(&http_ports).any(|b| crate::tls::is_https(&b.url)) {
            let hosts =
                url_hosts(&[config.listen_client_urls.clone(), config.listen_client_http_urls.clone()].concat());
            let dir = config.data_dir.join("fixtures").join("client");
            crate::data_dir::prepare(&config.data_dir, config.allow_shared_data_dir)?;
            let (cert, key) = crate::tls::self_signed(&dir, &hosts, years).map_err(anyhow::Error::msg)?;
            config.client_tls.cert = Some(cert);
            config.client_tls.key = Some(key);
        }
    }
    if let Some(years) = config.peer_auto_tls {
        if crate::tls::peer_tls_needed(&config) {
            let hosts = url_hosts(&config.listen_peer_urls);
            let dir = config.data_dir.join("fixtures").join("peer");
            crate::data_dir::prepare(&config.data_dir, config.allow_shared_data_dir)?;
            let (cert, key) = crate::tls::self_signed(&dir, &hosts, years).map_err(anyhow::Error::msg)?;
            config.peer_tls.cert = Some(cert);
            config.peer_tls.key = Some(key);
            config.peer_tls.self_signed = true;
        }
    }
    let peer_tls: Vec<_> =
        peer_ports.iter().map(|b| tls_for(&b.url, &config.peer_tls, "peer-")).collect::<anyhow::Result<_>>()?;
    let client_tls: Vec<_> =
        client_ports.iter().map(|b| tls_for(&b.url, &config.client_tls, "")).collect::<anyhow::Result<_>>()?;
    let http_tls: Vec<_> =
        http_ports.iter().map(|b| tls_for(&b.url, &config.client_tls, "")).collect::<anyhow::Result<_>>()?;

    if let Some((domain, service)) = config.discovery_srv.clone() {
        config.initial_cluster =
            crate::discovery::srv::cluster(&domain, &service, &config.name, &config.advertise_peer_urls).await?;
        // Every member knows this one by its URLs in DNS; its id comes from them too.
        if let Some(mine) = config.initial_cluster.get(&config.name) {
            config.advertise_peer_urls.clone_from(mine);
        }
    }

    // 2. Storage and Raft.
    crate::data_dir::prepare(&config.data_dir, config.allow_shared_data_dir)?;
    let engine = cairn_store::engine::open(config.engine, &config.data_dir.join("member"))?;
    if let Some((url, proxy)) = config.discovery.clone() {
        // Only a new member asks; a restarted one has its cluster in its data.
        if config.new_cluster && ids::load_id(engine.as_ref(), ids::KEY_MEMBER_ID)?.is_none() {
            let dir = crate::discovery::url::Directory::new(&url, proxy.as_deref())?;
            let id = ids::member_id(&config.advertise_peer_urls, &config.cluster_token, 0);
            config.initial_cluster =
                crate::discovery::url::join(&dir, id, &config.name, &config.advertise_peer_urls).await?;
        }
    }
    let initial: BTreeMap<u64, Member> = config
        .initial_cluster
        .iter()
        .map(|(name, urls)| {
            (ids::member_id(urls, &config.cluster_token, 0), Member { name: name.clone(), peer_urls: urls.clone() })
        })
        .collect();
    let (id, cluster_id) = member_ids(&config, engine.as_ref(), &initial).await?;
    let metrics = Metrics::new(id);
    let wal_dir = match &config.wal_dir {
        Some(dir) => {
            crate::data_dir::prepare(dir, config.allow_shared_data_dir)?;
            dir.clone()
        }
        None => config.data_dir.join("member").join("wal"),
    };
    let log = LogStore::open_for(engine.clone(), &wal_dir, id, metrics.wal_fsync.clone())?;
    let lessor = Arc::new(Lessor::new(config.election_timeout));
    let headers = Headers::new(cluster_id, id);
    let snap_dir = config.data_dir.join("snap");
    let mut sm =
        StateMachine::open(engine.clone(), snap_dir.clone(), config.max_request_bytes, lessor, headers.clone())?;
    sm.slow_apply = config.warning_apply_duration;
    sm.pace.every = config.snapshot_count;
    sm.pace.saved = Some(metrics.snap_save.clone());
    let snapshot_due = sm.pace.due.clone();
    sm.hub.set_max_watchers_per_stream(config.max_watchers_per_stream);
    let contacts = Contacts::default();
    let channels = Arc::new(PeerChannels::new(PeerDial::of(&config)?));
    let network = Network {
        cluster_id,
        contacts: contacts.clone(),
        metrics: metrics.peer.clone(),
        id,
        channels: channels.clone(),
    };
    metrics.quota_backend_bytes.set(config.quota_backend_bytes as i64);
    if config.force_new_cluster {
        let mut peer_urls = config.advertise_peer_urls.clone();
        peer_urls.sort();
        let me = Member { name: config.name.clone(), peer_urls };
        crate::raft::force::force_new_cluster(id, me, &mut log.clone(), &mut sm.clone()).await?;
    }
    let floor = read_floor(id, &mut log.clone()).await?;
    let raft = Raft::new(id, Arc::new(raft_config(&config)?), network, log, sm.clone()).await?;

    // 3. The layers; from here on a failure stops what started.
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let lease = config.lease_reads.then_some(config.election_timeout);
    let batcher = Batcher::start(raft.clone(), floor, lease, &tasks, shutdown.clone());
    let quiet_until = quiet_start(&config, &raft, &tasks).await?;
    tasks.spawn(snapshot_by_requests(raft.clone(), snapshot_due, shutdown.clone()));
    let replica = Arc::new(Replica::new(raft, sm, engine, batcher, headers, snap_dir));
    let layers = Layers::build(&config, replica.clone(), channels, contacts, metrics, &tasks, &shutdown);
    let contact = Arc::new(crate::failover::Contact::default());
    tasks.spawn(crate::failover::run(
        replica.clone(),
        layers.ctx.router.clone(),
        contact.clone(),
        raft_lease(&config),
        config.heartbeat,
        shutdown.clone(),
    ));
    let started = async {
        let serving = Serving { http2: config.http2, shutdown: shutdown.clone() };
        for (b, tls) in peer_ports.into_iter().zip(peer_tls) {
            warn_if_exposed(&b.url, tls.is_some(), "peer");
            let service = PeerService::new(replica.clone(), layers.leases.clone(), layers.membership.clone())
                .received_failures(layers.metrics.peer.received_failures.clone())
                .quiet_until(quiet_until)
                .contact(contact.clone());
            tasks.spawn(crate::peer::serve(service, b.listener, tls, config.http2, shutdown.clone()));
        }
        if config.new_cluster && !replica.raft().is_initialized().await? {
            if !initial.contains_key(&id) {
                anyhow::bail!("this member ({}) is not in --initial-cluster", config.name);
            }
            // Every member of a new cluster initializes with the same membership, which
            // openraft allows; the first election decides the leader.
            if let Err(e) = replica.raft().initialize(initial.clone()).await {
                tracing::info!("initialize: {e}");
            }
        }
        if config.initial_corrupt_check {
            layers.upkeep.initial_check().await?;
        }
        use crate::serve::ClientTraffic;
        let grpc = if http_ports.is_empty() { ClientTraffic::All } else { ClientTraffic::Grpc };
        let ports = client_ports.into_iter().zip(client_tls).map(|p| (p, grpc));
        let http = http_ports.into_iter().zip(http_tls).map(|p| (p, ClientTraffic::Http));
        for ((b, tls), traffic) in ports.chain(http) {
            warn_if_exposed(&b.url, tls.is_some(), "client");
            let port = crate::serve::client_port(
                layers.ctx.clone(),
                layers.observed.clone(),
                serving.clone(),
                b.listener,
                tls,
                crate::gateway::access::Access::new(&config.cors, &config.host_whitelist).with_ui(config.enable_ui),
                traffic,
            );
            tasks.spawn(port);
        }
        for b in metrics_ports {
            tasks.spawn(crate::serve::metrics_port(layers.observed.clone(), serving.clone(), b.listener));
        }
        Ok(())
    };
    if let Err(e) = started.await {
        stop(&shutdown, &tasks, &replica).await;
        return Err(e);
    }
    let failed = Arc::new(AtomicBool::new(false));
    layers.spawn(&config, &tasks, &shutdown, &failed);
    tracing::info!(
        name = %config.name, id = %format!("{id:x}"), cluster = %format!("{cluster_id:x}"),
        data_dir = %config.data_dir.display(), engine = %config.engine,
        client = ?client_addrs, peer = ?peer_addrs, metrics = ?metrics_addrs, "cairn member started"
    );
    Ok(MemberHandle {
        client_addrs,
        peer_addrs,
        metrics_addrs,
        shutdown,
        failed,
        tasks,
        leases: layers.leases,
        replica,
    })
}

/// openraft's configuration from the member's flags.
/// With lease reads, a member restarted on its data neither votes nor campaigns for the
/// longest election timeout: it has forgotten the heartbeats it acknowledged, and a leader
/// may still be serving reads under a lease that counted on them (`batch.rs`). Returns
/// when the quiet period ends, if there is one.
async fn quiet_start(config: &Config, raft: &Raft, tasks: &TaskTracker) -> anyhow::Result<Option<Instant>> {
    if !config.lease_reads || !raft.is_initialized().await? {
        return Ok(None);
    }
    let quiet = config.election_timeout * 3 / 2;
    raft.runtime_config().elect(false);
    let raft = raft.clone();
    tasks.spawn(async move {
        tokio::time::sleep(quiet).await;
        raft.runtime_config().elect(true);
    });
    Ok(Some(Instant::now() + quiet))
}

/// Ask openraft for a snapshot whenever the state machine says `--snapshot-count` requests
/// have applied on a lone member (`SnapshotPace`); openraft then purges the log.
async fn snapshot_by_requests(raft: Raft, due: Arc<tokio::sync::Notify>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = due.notified() => {}
        }
        if let Err(e) = raft.trigger().snapshot().await {
            tracing::debug!("snapshot by request count: {e}");
            return;
        }
    }
}

/// openraft's leader lease: followers refuse votes this long after a leader's last message
/// (openraft 0.9 takes it from `election_timeout_max`). One election timeout, as etcd's
/// followers wait before campaigning; with lease reads 1.5, so that a leader serving reads
/// under its lease of one election timeout (`batch.rs`) is never outlived by a new leader.
fn raft_lease(config: &Config) -> std::time::Duration {
    if config.lease_reads {
        config.election_timeout * 3 / 2
    } else {
        config.election_timeout
    }
}

fn raft_config(config: &Config) -> anyhow::Result<openraft::Config> {
    let et = config.election_timeout.as_millis() as u64;
    let lease = raft_lease(config).as_millis() as u64;
    Ok(openraft::Config {
        cluster_name: config.cluster_token.clone(),
        heartbeat_interval: config.heartbeat.as_millis() as u64,
        // openraft campaigns after the lease plus a random time in [min, max): its own timer,
        // the fallback behind `failover.rs`, which campaigns right after the lease.
        election_timeout_min: if lease > et { et } else { et * 3 / 4 },
        election_timeout_max: lease,
        install_snapshot_timeout: 10_000.max(et * 10),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_count),
        // Keep some entries after a snapshot so a briefly lagging follower catches up
        // from the log rather than by a full snapshot (etcd keeps 5,000).
        max_in_snapshot_log_to_keep: 5_000.min(config.snapshot_count),
        max_payload_entries: 1024,
        ..Default::default()
    }
    .validate()?)
}

/// The layers above the replica, built once.
struct Layers {
    replica: Arc<Replica>,
    writer: Arc<Writer>,
    leases: Arc<Leases>,
    membership: Arc<Membership>,
    upkeep: Arc<Upkeep>,
    ctx: crate::grpc::Ctx,
    observed: Observed,
    metrics: Arc<Metrics>,
}

impl Layers {
    fn build(
        config: &Config,
        replica: Arc<Replica>,
        channels: Arc<PeerChannels>,
        contacts: Contacts,
        metrics: Arc<Metrics>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Layers {
        let router = Arc::new(Router::new(replica.clone(), channels, config.request_timeout()));
        let limits = crate::write::Limits {
            max_request_bytes: config.max_request_bytes,
            quota_backend_bytes: config.quota_backend_bytes,
            min_free_disk_bytes: config.min_free_disk_bytes,
            data_dir: config.data_dir.clone(),
        };
        let writer = Arc::new(Writer::new(router.clone(), replica.clone(), metrics.clone(), limits));
        let leases = Arc::new(Leases::new(replica.clone(), router.clone(), writer.clone(), config.election_timeout));
        let timing = Timing {
            election_timeout: config.election_timeout,
            heartbeat: config.heartbeat,
            raft_lease: raft_lease(config),
        };
        let membership =
            Arc::new(Membership::new(replica.clone(), router.clone(), contacts, config.cluster_token.clone(), timing));
        replica.with_state(|st| st.auth.tokens.set_ttl(config.auth_token_ttl));
        let gate = Arc::new(AuthGate::new(
            replica.clone(),
            router.clone(),
            config.auth_token.clone(),
            config.client_tls.client_cert_auth,
        ));
        let upkeep = Arc::new(Upkeep::new(replica.clone(), router.clone(), writer.clone(), membership.clone()));
        let ctx = crate::grpc::Ctx {
            replica: replica.clone(),
            router: router.clone(),
            writer: writer.clone(),
            gate,
            leases: leases.clone(),
            membership: membership.clone(),
            limits: crate::grpc::Limits {
                max_request_bytes: config.max_request_bytes,
                max_txn_ops: config.max_txn_ops,
                bcrypt_cost: config.bcrypt_cost,
                election_timeout: config.election_timeout,
            },
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
        };
        let observed = Observed {
            replica: replica.clone(),
            router,
            metrics: metrics.clone(),
            probe_limit: config.request_timeout(),
        };
        Layers { replica, writer, leases, membership, upkeep, ctx, observed, metrics }
    }

    /// Every background task of the member, in `tasks`.
    fn spawn(&self, config: &Config, tasks: &TaskTracker, shutdown: &CancellationToken, failed: &Arc<AtomicBool>) {
        let (r, s) = (&self.replica, shutdown);
        tasks.spawn(r.hub().clone().run_progress(config.watch_progress_notify_interval));
        tasks.spawn(r.clone().follow_terms(self.metrics.leader_changes.clone(), s.clone()));
        let me = MemberAttributes {
            id: r.id(),
            name: config.name.clone(),
            client_urls: config.advertise_client_urls.clone(),
        };
        tasks.spawn(publish_attributes(r.clone(), self.writer.clone(), me, s.clone()));
        tasks.spawn(self.leases.clone().run_leadership(s.clone()));
        tasks.spawn(self.leases.clone().run_expiry(config.lease_revoke_rate, s.clone()));
        tasks.spawn(self.leases.clone().run_checkpoints(config.lease_checkpoint_interval, s.clone()));
        tasks.spawn(checkpoint(r.clone(), self.metrics.backend_commit.clone(), s.clone()));
        tasks.spawn(self.membership.clone().watch_removal(s.clone()));
        tasks.spawn(watch_fatal(r.clone(), failed.clone(), s.clone()));
        let u = &self.upkeep;
        tasks.spawn(u.clone().auto_compact(config.auto_compaction, config.auto_compaction_interval, s.clone()));
        tasks.spawn(u.clone().corruption_check(config.corrupt_check_interval, s.clone()));
        tasks.spawn(u.clone().clear_no_space(s.clone()));
        if config.learner_auto_promote {
            tasks.spawn(u.clone().auto_promote(s.clone()));
        }
    }
}

/// How often applied state is made durable. Between checkpoints it is recoverable from
/// the WAL, which is never purged past a durable checkpoint.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Make the state machine's writes durable once a second when anything was applied, so
/// a restart re-applies at most about a second of the log.
async fn checkpoint(replica: Arc<Replica>, timer: prometheus::Histogram, shutdown: CancellationToken) {
    let mut rev = replica.revisions();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = rev.changed() => if changed.is_err() { break },
        }
        let engine = replica.engine().clone();
        let timer = timer.clone();
        let synced = tokio::task::spawn_blocking(move || {
            let _t = timer.start_timer();
            engine.sync()
        });
        if let Ok(Err(e)) = synced.await {
            tracing::error!("checkpointing the store: {e}");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
        }
    }
    // Final checkpoint on shutdown.
    let engine = replica.engine().clone();
    let _ = tokio::task::spawn_blocking(move || engine.sync()).await;
}

/// The read-index floor of a member that led when it stopped: openraft restores it as
/// leader of the same term with a commit index as old as its last checkpoint (see
/// [`crate::batch`]).
async fn read_floor(id: u64, log: &mut LogStore) -> anyhow::Result<Option<ReadFloor>> {
    use openraft::storage::RaftLogStorage;
    let Some(vote) = log.read_vote().await? else { return Ok(None) };
    if !vote.is_committed() || vote.leader_id().voted_for() != Some(id) {
        return Ok(None);
    }
    let last = log.get_log_state().await?.last_log_id.map_or(0, |l| l.index);
    Ok(Some(ReadFloor { term: vote.leader_id().term, index: last }))
}

/// Publish this member's name and client URLs through Raft (as etcd does), retrying
/// until they are applied, so every member can list them.
async fn publish_attributes(
    replica: Arc<Replica>,
    writer: Arc<Writer>,
    want: MemberAttributes,
    shutdown: CancellationToken,
) {
    loop {
        if replica.with_state(|st| st.attrs.get(&want.id) == Some(&want)) {
            return;
        }
        let req = RaftRequest::internal(raft_request::Request::Publish(want.clone()));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = writer.propose(req) => match r {
                Ok(_) => return,
                Err(e) => tracing::debug!("publishing member attributes: {e}"),
            },
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
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

/// The hosts of `urls` (for a self-signed certificate's names), `localhost` always among them.
fn url_hosts(urls: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = urls
        .iter()
        .filter_map(|u| u.parse::<tonic::codegen::http::Uri>().ok())
        .filter_map(|u| u.host().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string()))
        .collect();
    hosts.push("localhost".into());
    hosts.sort();
    hosts.dedup();
    hosts
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
async fn member_ids(
    config: &Config,
    engine: &dyn Engine,
    initial: &BTreeMap<u64, Member>,
) -> anyhow::Result<(u64, u64)> {
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
async fn watch_fatal(replica: Arc<Replica>, failed: Arc<AtomicBool>, shutdown: CancellationToken) {
    // Woken by the server metrics, which change rarely (not with every write), and for the
    // last time when Raft's core ends and drops their sender; the reason it stopped is in
    // the full metrics by then.
    let mut m = replica.raft().server_metrics();
    loop {
        let core_ended = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            changed = m.changed() => changed.is_err(),
        };
        let stopped = replica.raft().metrics().borrow().running_state.clone().err();
        // Raft stops as the last step of a clean shutdown too: that is no failure.
        if let Some(e) = stopped.filter(|_| !shutdown.is_cancelled()) {
            tracing::error!("raft stopped: {e}; this member cannot go on (is the disk full?), stopping");
            failed.store(true, Ordering::SeqCst);
            shutdown.cancel();
            return;
        }
        if core_ended {
            return;
        }
    }
}
