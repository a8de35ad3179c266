//! Prometheus metrics of one member, served at `/metrics` in the text format.
//!
//! Each member owns its [`Metrics`] (its own registry, nothing global), so several
//! members in one process report separately. Names follow etcd's where etcd has the
//! series (so etcd's dashboards and alerts work unchanged); Cairn's own series start
//! with `cairn_`. Counters move as things happen; gauges that mirror state (Raft
//! indexes, sizes, counts) are read when scraped ([`Metrics::refresh`]).

use crate::replica::Replica;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Every RPC Cairn serves: service, method and streaming kind (go-grpc-prometheus' labels).
const RPCS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("etcdserverpb.Maintenance", "Downgrade", "unary"),
    ("etcdserverpb.Auth", "AuthEnable", "unary"),
    ("etcdserverpb.Auth", "AuthDisable", "unary"),
    ("etcdserverpb.Auth", "AuthStatus", "unary"),
    ("etcdserverpb.Auth", "Authenticate", "unary"),
    ("etcdserverpb.Auth", "UserAdd", "unary"),
    ("etcdserverpb.Auth", "UserGet", "unary"),
    ("etcdserverpb.Auth", "UserList", "unary"),
    ("etcdserverpb.Auth", "UserDelete", "unary"),
    ("etcdserverpb.Auth", "UserChangePassword", "unary"),
    ("etcdserverpb.Auth", "UserGrantRole", "unary"),
    ("etcdserverpb.Auth", "UserRevokeRole", "unary"),
    ("etcdserverpb.Auth", "RoleAdd", "unary"),
    ("etcdserverpb.Auth", "RoleGet", "unary"),
    ("etcdserverpb.Auth", "RoleList", "unary"),
    ("etcdserverpb.Auth", "RoleDelete", "unary"),
    ("etcdserverpb.Auth", "RoleGrantPermission", "unary"),
    ("etcdserverpb.Auth", "RoleRevokePermission", "unary"),
    ("v3lockpb.Lock", "Lock", "unary"),
    ("v3lockpb.Lock", "Unlock", "unary"),
    ("v3electionpb.Election", "Campaign", "unary"),
    ("v3electionpb.Election", "Proclaim", "unary"),
    ("v3electionpb.Election", "Leader", "unary"),
    ("v3electionpb.Election", "Observe", "server_stream"),
    ("v3electionpb.Election", "Resign", "unary"),
];

/// One RPC's series, resolved once so a call costs no label lookups.
struct RpcSeries {
    labels: [&'static str; 3],
    started: IntCounter,
    handling: Histogram,
    ok: IntCounter,
}

/// An RPC known to [`Metrics::rpc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcId(usize);

/// The metrics of one member.
pub struct Metrics {
    /// The member's registry; `/metrics` gathers it.
    pub registry: Registry,
    grpc_handled: IntCounterVec,
    rpcs: Vec<RpcSeries>,
    rpc_ids: HashMap<(&'static str, &'static str), RpcId>,
    /// Bytes received from clients (request messages).
    pub received_bytes: IntCounter,
    /// Bytes sent to clients (response messages).
    pub sent_bytes: IntCounter,
    has_leader: IntGauge,
    is_leader: IntGauge,
    is_learner: IntGauge,
    /// `--quota-backend-bytes` (set once at start).
    pub quota_backend_bytes: IntGauge,
    /// Peer traffic (failures and heartbeat round trips), recorded by the Raft network.
    pub peer: crate::raft::network::PeerMetrics,
    /// Leader changes seen by this member.
    pub leader_changes: IntCounter,
    term: IntGauge,
    last_index: IntGauge,
    committed: IntGauge,
    applied: IntGauge,
    /// Proposals waiting to be committed.
    pub proposals_pending: IntGauge,
    /// Proposals that failed (no leader, timeout, lost connection to the leader).
    pub proposals_failed: IntCounter,
    /// WAL fdatasync latency.
    pub wal_fsync: Histogram,
    /// Latency of making the backend's applied state durable.
    pub backend_commit: Histogram,
    /// Time to build a Raft snapshot (one observation per snapshot).
    pub snap_save: Histogram,
    db_size: IntGauge,
    db_size_in_use: IntGauge,
    keys: IntGauge,
    revision: IntGauge,
    compact_revision: IntGauge,
    watchers: IntGauge,
    slow_watchers: IntGauge,
    watch_stalls: IntGauge,
    events_sent: IntGauge,
    leases: IntGauge,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Only a programming error (a bad name or a duplicate) fails here.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Metrics {
    /// A fresh registry with every series of a member.
    pub fn new(member_id: u64) -> Arc<Metrics> {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| must(registry.register(c));
        macro_rules! gauge {
            ($name:literal, $help:literal) => {{
                let g = must(IntGauge::new($name, $help));
                reg(Box::new(g.clone()));
                g
            }};
        }
        macro_rules! counter {
            ($name:literal, $help:literal) => {{
                let c = must(IntCounter::new($name, $help));
                reg(Box::new(c.clone()));
                c
            }};
        }
        macro_rules! histogram {
            ($name:literal, $help:literal, $buckets:expr) => {{
                let h = must(Histogram::with_opts(HistogramOpts::new($name, $help).buckets($buckets)));
                reg(Box::new(h.clone()));
                h
            }};
        }
        let rpc_labels = ["grpc_type", "grpc_service", "grpc_method"];
        let grpc_started = must(IntCounterVec::new(
            Opts::new("grpc_server_started_total", "Total number of RPCs started on the server."),
            &rpc_labels,
        ));
        let grpc_handled = must(IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        ));
        let grpc_handling = must(HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &rpc_labels,
        ));
        reg(Box::new(grpc_started.clone()));
        reg(Box::new(grpc_handled.clone()));
        reg(Box::new(grpc_handling.clone()));
        let disk = || must(exponential_buckets(0.001, 2.0, 14));
        // Every RPC's series exist from the start (at zero), as go-grpc-prometheus does.
        let rpcs: Vec<RpcSeries> = RPCS
            .iter()
            .map(|&(service, method, kind)| {
                let labels = [kind, service, method];
                RpcSeries {
                    labels,
                    started: grpc_started.with_label_values(&labels),
                    handling: grpc_handling.with_label_values(&labels),
                    ok: grpc_handled.with_label_values(&[kind, service, method, "OK"]),
                }
            })
            .collect();
        let rpc_ids = RPCS.iter().enumerate().map(|(i, &(service, method, _))| ((service, method), RpcId(i))).collect();
        let m = Metrics {
            grpc_handled,
            rpcs,
            rpc_ids,
            received_bytes: counter!(
                "etcd_network_client_grpc_received_bytes_total",
                "The total number of bytes received from grpc clients."
            ),
            sent_bytes: counter!(
                "etcd_network_client_grpc_sent_bytes_total",
                "The total number of bytes sent to grpc clients."
            ),
            has_leader: gauge!("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not."),
            is_leader: gauge!("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise."),
            is_learner: gauge!(
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise."
            ),
            quota_backend_bytes: gauge!(
                "etcd_server_quota_backend_bytes",
                "Current backend storage quota size in bytes."
            ),
            peer: {
                let p = must(crate::raft::network::PeerMetrics::new());
                reg(Box::new(p.sent_failures.clone()));
                reg(Box::new(p.round_trip.clone()));
                reg(Box::new(p.received_failures.clone()));
                p
            },
            leader_changes: counter!("etcd_server_leader_changes_seen_total", "The number of leader changes seen."),
            term: gauge!("cairn_raft_term", "The current Raft term."),
            last_index: gauge!("cairn_raft_last_log_index", "The index of the last entry in this member's Raft log."),
            committed: gauge!(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed."
            ),
            applied: gauge!("etcd_server_proposals_applied_total", "The total number of consensus proposals applied."),
            proposals_pending: gauge!(
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit."
            ),
            proposals_failed: counter!(
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen."
            ),
            wal_fsync: histogram!(
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                disk()
            ),
            backend_commit: histogram!(
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
                disk()
            ),
            snap_save: histogram!(
                "etcd_debugging_snap_save_total_duration_seconds",
                "The total latency distributions of save called by snapshot.",
                disk()
            ),
            db_size: gauge!(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes."
            ),
            db_size_in_use: gauge!(
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes."
            ),
            keys: gauge!("etcd_debugging_mvcc_keys_total", "Total number of keys."),
            revision: gauge!("etcd_debugging_mvcc_current_revision", "The current revision of store."),
            compact_revision: gauge!(
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store."
            ),
            watchers: gauge!("etcd_debugging_mvcc_watcher_total", "Total number of watchers."),
            slow_watchers: gauge!("etcd_debugging_mvcc_slow_watcher_total", "Total number of unsynced slow watchers."),
            watch_stalls: gauge!(
                "cairn_watch_slow_events_total",
                "Times a watcher was moved aside because its client was not keeping up."
            ),
            events_sent: gauge!("etcd_debugging_mvcc_events_total", "Total number of events sent by this member."),
            leases: gauge!("cairn_lease_active", "Number of leases currently granted."),
            registry,
        };
        let id = must(IntGaugeVec::new(
            Opts::new("etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label."),
            &["server_id"],
        ));
        id.with_label_values(&[&format!("{member_id:x}")]).set(1);
        must(m.registry.register(Box::new(id)));
        let version = must(IntGaugeVec::new(
            Opts::new(
                "etcd_server_version",
                "Which version is running. 1 for 'server_version' label with current version.",
            ),
            &["server_version"],
        ));
        version.with_label_values(&[crate::version::ETCD_API]).set(1);
        must(m.registry.register(Box::new(version)));
        #[cfg(target_os = "linux")]
        must(m.registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())));
        Arc::new(m)
    }

    /// The RPC `method` of `service` (as `etcdserverpb.KV`, `Range`), if Cairn serves it.
    pub fn rpc(&self, service: &str, method: &str) -> Option<RpcId> {
        self.rpc_ids.get(&(service, method)).copied()
    }

    /// An RPC began.
    pub fn rpc_started(&self, id: RpcId) {
        self.rpcs[id.0].started.inc();
    }

    /// An RPC ended with gRPC `code` after `elapsed`.
    pub fn rpc_handled(&self, id: RpcId, code: tonic::Code, elapsed: Duration) {
        let s = &self.rpcs[id.0];
        if code == tonic::Code::Ok {
            s.ok.inc();
        } else {
            let [kind, service, method] = s.labels;
            self.grpc_handled.with_label_values(&[kind, service, method, code_name(code)]).inc();
        }
        s.handling.observe(elapsed.as_secs_f64());
    }

    /// Read the gauges that mirror state from `replica`.
    pub fn refresh(&self, replica: &Replica) {
        let m = replica.raft().metrics().borrow().clone();
        self.has_leader.set(m.current_leader.is_some() as i64);
        self.is_leader.set((m.current_leader == Some(replica.id())) as i64);
        self.is_learner.set(m.membership_config.membership().learner_ids().any(|l| l == replica.id()) as i64);
        self.term.set(m.current_term as i64);
        self.last_index.set(m.last_log_index.unwrap_or(0) as i64);
        // openraft does not publish the commit index; an entry is applied right after
        // it commits, so the applied index Raft reports is the committed index we know.
        self.committed.set(m.last_applied.map_or(0, |l| l.index) as i64);
        let (applied, keys, rev, compacted, leases) = replica.with_state(|st| {
            (
                st.last_applied.map_or(0, |l| l.index),
                st.mvcc.key_count(),
                st.mvcc.current_revision(),
                st.mvcc.compact_revision(),
                st.leases.len(),
            )
        });
        self.applied.set(applied as i64);
        self.keys.set(keys as i64);
        self.revision.set(rev);
        self.compact_revision.set(compacted);
        let size = replica.engine().size_on_disk() as i64;
        self.db_size.set(size);
        self.db_size_in_use.set(replica.engine().size_in_use() as i64);
        let w = &replica.hub().metrics;
        self.watchers.set(w.watchers.load(Ordering::Relaxed) as i64);
        self.slow_watchers.set(w.catching_up.load(Ordering::Relaxed) as i64);
        self.watch_stalls.set(w.slow_events.load(Ordering::Relaxed) as i64);
        self.events_sent.set(w.events_sent.load(Ordering::Relaxed) as i64);
        self.leases.set(leases as i64);
    }

    /// The registry in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }
}

/// The name go-grpc-prometheus gives a code (`OK`, `NotFound`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}
