//! Command-line flags, named and defaulted as etcd's, each with an `ETCD_*`
//! environment fallback, validated into one [`Config`].

use cairn_store::EngineKind;
use clap::Parser;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The `cairn` server's flags.
#[derive(Debug, Clone, Parser)]
#[command(name = "cairn", version = crate::version::describe(), about = "Cairn: a distributed, reliable key-value store that speaks etcd's v3 API")]
pub struct Flags {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory [default: ${name}.cairn].
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Dedicated directory for the write-ahead log (another disk, say) [default:
    /// ${data-dir}/member/wal].
    #[arg(long, env = "ETCD_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(long, env = "ETCD_LISTEN_CLIENT_URLS", default_value = "http://127.0.0.1:2379")]
    pub listen_client_urls: String,
    /// URLs to listen on for HTTP-only client traffic (the JSON gateway, /health, /metrics);
    /// when set, --listen-client-urls serve gRPC only (as etcd).
    #[arg(long, env = "ETCD_LISTEN_CLIENT_HTTP_URLS", default_value = "")]
    pub listen_client_http_urls: String,
    /// Client URLs advertised to the rest of the cluster (comma-separated).
    #[arg(long, env = "ETCD_ADVERTISE_CLIENT_URLS", default_value = "http://127.0.0.1:2379")]
    pub advertise_client_urls: String,
    /// URLs to listen on for peer traffic (comma-separated).
    #[arg(long, env = "ETCD_LISTEN_PEER_URLS", default_value = "http://127.0.0.1:2380")]
    pub listen_peer_urls: String,
    /// This member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, env = "ETCD_INITIAL_ADVERTISE_PEER_URLS", default_value = "http://127.0.0.1:2380")]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping: name1=url1,name2=url2,...
    /// [default: ${name}=${initial-advertise-peer-urls}].
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Origins that get CORS headers from the HTTP gateway (comma-separated; `*`: all).
    #[arg(long, env = "ETCD_CORS", default_value = "*")]
    pub cors: String,
    /// Host names plain-HTTP requests may name (comma-separated; `*`: all); others get 421.
    #[arg(long, env = "ETCD_HOST_WHITELIST", default_value = "*")]
    pub host_whitelist: String,
    /// Who the web console (`/ui/` on the client port) answers: `loopback` (requests from
    /// this machine only), `true` (everyone who can reach the port; auth still applies) or
    /// `false` (nobody).
    #[arg(long, env = "CAIRN_ENABLE_UI", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "loopback", value_parser = parse_ui)]
    pub enable_ui: UiExposure,
    /// Bootstrap from the DNS SRV records of this domain instead of --initial-cluster
    /// (`_etcd-server-ssl._tcp.<domain>` for https://, `_etcd-server._tcp.<domain>` for http://).
    #[arg(long, env = "ETCD_DISCOVERY_SRV", conflicts_with = "initial_cluster")]
    pub discovery_srv: Option<String>,
    /// Bootstrap through a discovery service instead of --initial-cluster: the URL of a
    /// directory of etcd's v2 keys API holding `_config/size` (as discovery.etcd.io hands out).
    #[arg(long, env = "ETCD_DISCOVERY", conflicts_with_all = ["initial_cluster", "discovery_srv"])]
    pub discovery: Option<String>,
    /// HTTP proxy to reach the --discovery service through (`host:port` or a URL).
    #[arg(long, env = "ETCD_DISCOVERY_PROXY", default_value = "")]
    pub discovery_proxy: String,
    /// What to do when --discovery finds the cluster full: `exit`, or `proxy` (serve as
    /// `--proxy=on` in front of the cluster found, as etcd).
    #[arg(long, env = "ETCD_DISCOVERY_FALLBACK", default_value = "proxy", value_parser = ["exit", "proxy"])]
    pub discovery_fallback: String,
    /// etcd's proxy mode: `off` (run a member), `on` (no member: serve etcd's v3 API on
    /// --listen-client-urls in front of the cluster named by --initial-cluster, as
    /// `cairn grpc-proxy start` does) or `readonly` (the same, refusing every request that
    /// would change something).
    #[arg(long, env = "ETCD_PROXY", default_value = "off", value_parser = ["off", "on", "readonly"])]
    pub proxy: String,
    /// Proxy mode: how long dialing a member may take (milliseconds).
    #[arg(long, env = "ETCD_PROXY_DIAL_TIMEOUT", default_value_t = 1000)]
    pub proxy_dial_timeout: u64,
    /// Suffix of the SRV service names: `_etcd-server[-ssl]-<name>._tcp.<domain>`.
    #[arg(long, env = "ETCD_DISCOVERY_SRV_NAME", default_value = "")]
    pub discovery_srv_name: String,
    /// Initial cluster state: `new` (bootstrap) or `existing` (join a running cluster).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    /// Initial cluster token; members of different clusters never talk to each other.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_TOKEN", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Number of committed requests between snapshots (after which the log is purged).
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// Maximum number of concurrent HTTP/2 streams on one client or peer connection.
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = 10_000)]
    pub max_concurrent_streams: u32,
    /// How often the server pings an idle client connection (etcd's default: 2h).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_INTERVAL", default_value = "2h", value_parser = humantime::parse_duration)]
    pub grpc_keepalive_interval: Duration,
    /// A client pinging more often than this with no request in between is cut off after
    /// its third such ping (grpc-go's server policy; etcd's default 5s).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_MIN_TIME", default_value = "5s", value_parser = humantime::parse_duration)]
    pub grpc_keepalive_min_time: Duration,
    /// How long the server waits for a ping's answer before closing the connection.
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub grpc_keepalive_timeout: Duration,
    /// Watchers one watch stream may hold (Cairn's; etcd sets no limit). A create past it
    /// is canceled with a reason.
    #[arg(long, env = "CAIRN_MAX_WATCHERS_PER_STREAM", default_value_t = 100_000)]
    pub max_watchers_per_stream: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Raise an alarm when the backend size exceeds this many bytes (0 = default 2 GiB).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Log level: debug, info, warn, error (or a tracing filter such as `info,cairn_server=debug`).
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// etcd's logger choice; Cairn has one logger and accepts both names.
    #[arg(long, env = "ETCD_LOGGER", default_value = "zap", value_parser = ["zap", "capnslog"])]
    pub logger: String,
    /// Where logs go (comma-separated): `default` or `stderr`, `stdout`, `systemd/journal`
    /// (stderr, which systemd keeps in its journal), or file paths (appended to).
    #[arg(long, env = "ETCD_LOG_OUTPUTS", default_value = "default")]
    pub log_outputs: String,
    /// Log format: `text` (human-readable) or `json` (one object per line).
    #[arg(long, env = "CAIRN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Extra URLs to serve /metrics, /health, /livez, /readyz and /version on (comma-separated).
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,
    /// Interval of watch progress notifications (e.g. 10m, 500ms).
    #[arg(long, env = "ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL", alias = "experimental-watch-progress-notify-interval", default_value = "10m", value_parser = humantime::parse_duration)]
    pub watch_progress_notify_interval: Duration,
    /// How often the leader checkpoints remaining lease TTLs through Raft.
    #[arg(long, env = "ETCD_LEASE_CHECKPOINT_INTERVAL", alias = "experimental-lease-checkpoint-interval", default_value = "5m", value_parser = humantime::parse_duration)]
    pub lease_checkpoint_interval: Duration,
    /// Most expired leases revoked per second (revocation storms are paced).
    #[arg(long, env = "CAIRN_LEASE_REVOKE_RATE", default_value_t = 1000)]
    pub lease_revoke_rate: u32,
    /// Storage engine: redb (default) or sled.
    #[arg(long, env = "CAIRN_STORAGE_ENGINE", default_value = "redb")]
    pub storage_engine: EngineKind,
    /// Auto-compaction: `periodic` (keep a time window) or `revision` (keep a number of revisions).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// History auto-compaction keeps: a duration or hours (periodic), revisions (revision); 0 = off.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// How often revision-mode auto-compaction runs (etcd: 5 minutes).
    #[arg(long, env = "CAIRN_AUTO_COMPACTION_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub auto_compaction_interval: Duration,
    /// An applied batch slower than this is logged ("apply request took too long").
    #[arg(long, env = "ETCD_EXPERIMENTAL_WARNING_APPLY_DURATION", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub experimental_warning_apply_duration: Duration,
    /// How often the leader compares every member's HashKV (0 = never); a mismatch raises CORRUPT.
    #[arg(long, env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", alias = "corrupt-check-time", default_value = "0s", value_parser = humantime::parse_duration)]
    pub experimental_corrupt_check_time: Duration,
    /// Before serving clients, compare this member's HashKV with its peers'; a mismatch stops
    /// the start ("found data inconsistency with peers").
    #[arg(long, env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", alias = "initial-corrupt-check", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub experimental_initial_corrupt_check: bool,
    /// Client port certificate (PEM); serves TLS on https:// client URLs.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Client port private key (PEM).
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA bundle (PEM) client certificates must chain to.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Certificate revocation list (PEM): client certificates it revokes are refused.
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,
    /// Client certificates must name this host among their alternative names.
    #[arg(long, env = "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME")]
    pub client_cert_allowed_hostname: Option<String>,
    /// Require a client certificate signed by --trusted-ca-file.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,
    /// Serve https:// client URLs with a self-signed certificate made at first start (kept in
    /// ${data-dir}/fixtures/client) when no --cert-file/--key-file are given.
    #[arg(long, env = "ETCD_AUTO_TLS", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub auto_tls: bool,
    /// Years an --auto-tls certificate is valid.
    #[arg(long, env = "ETCD_SELF_SIGNED_CERT_VALIDITY", default_value_t = 1)]
    pub self_signed_cert_validity: u32,
    /// Lowest TLS version the ports accept: TLS1.2 or TLS1.3 (empty: TLS1.2).
    #[arg(long, env = "ETCD_TLS_MIN_VERSION", default_value = "")]
    pub tls_min_version: String,
    /// Highest TLS version the ports accept: TLS1.2 or TLS1.3 (empty: TLS1.3).
    #[arg(long, env = "ETCD_TLS_MAX_VERSION", default_value = "")]
    pub tls_max_version: String,
    /// TLS 1.2 cipher suites the ports accept (comma-separated IANA names, as Go's); TLS 1.3's
    /// are always on. Empty: rustls' defaults.
    #[arg(long, env = "ETCD_CIPHER_SUITES", default_value = "")]
    pub cipher_suites: String,
    /// Peer port certificate (PEM), also presented to other members; for https:// peer URLs.
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer port private key (PEM).
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA bundle (PEM) members' certificates must chain to.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Certificate revocation list (PEM): peer certificates it revokes are refused.
    #[arg(long, env = "ETCD_PEER_CRL_FILE")]
    pub peer_crl_file: Option<PathBuf>,
    /// Peer certificates must carry one of these common names (comma-separated).
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN", default_value = "")]
    pub peer_cert_allowed_cn: String,
    /// Peer certificates must name this host among their alternative names.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_HOSTNAME")]
    pub peer_cert_allowed_hostname: Option<String>,
    /// Require peers to present a certificate signed by --peer-trusted-ca-file.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,
    /// Certificate (PEM) presented when calling other members, if not --peer-cert-file.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_FILE", requires = "peer_client_key_file")]
    pub peer_client_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "ETCD_PEER_CLIENT_KEY_FILE", requires = "peer_client_cert_file")]
    pub peer_client_key_file: Option<PathBuf>,
    /// Serve https:// peer URLs with a self-signed certificate made at first start (kept in
    /// ${data-dir}/fixtures/peer) when no --peer-cert-file/--peer-key-file are given; as
    /// etcd, members then encrypt their links but do not verify each other's certificates.
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub peer_auto_tls: bool,
    /// Refuse writes that add data (NOSPACE) while the data directory's file system has
    /// less free space than this (Cairn's; a full disk must not stop the member).
    #[arg(long, env = "CAIRN_MIN_FREE_DISK_BYTES", default_value_t = 160 << 20)]
    pub min_free_disk_bytes: u64,
    /// Start even when other users may read the data directory (Cairn's; by default a data
    /// directory with any group or other permission bits is refused).
    #[arg(long, env = "CAIRN_ALLOW_SHARED_DATA_DIR", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub allow_shared_data_dir: bool,
    /// Restart this member from its data as a one-member cluster, keeping every key: the way
    /// out of a lost quorum. The other members must be wiped before they are added again.
    #[arg(long, env = "ETCD_FORCE_NEW_CLUSTER", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub force_new_cluster: bool,
    /// Promote a learner to a voter by itself once it has caught up (Cairn's; etcd has none).
    #[arg(long, env = "CAIRN_EXPERIMENTAL_LEARNER_AUTO_PROMOTE", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub experimental_learner_auto_promote: bool,
    /// Serve linearizable reads on the leader under a leader lease (one heartbeat round per
    /// election timeout instead of one per read; Cairn's, etcd always asks a quorum).
    /// Assumes clocks that run at about the same rate and do not stand still while a
    /// machine is paused; docs/OPERATIONS.md, "Lease reads".
    #[arg(long, env = "CAIRN_EXPERIMENTAL_LEASE_READS", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub experimental_lease_reads: bool,
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Member name.
    pub name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Write-ahead log directory, when not inside the data directory.
    pub wal_dir: Option<PathBuf>,
    /// Start on a data directory other users may read.
    pub allow_shared_data_dir: bool,
    /// HTTP/2 limits of the client and peer listeners.
    pub http2: crate::tls::Http2Limits,
    /// Watchers one watch stream may hold.
    pub max_watchers_per_stream: usize,
    /// `--cors` (the HTTP gateway's allowed origins, as given).
    pub cors: String,
    /// `--host-whitelist` (the Host names plain-HTTP requests may name, as given).
    pub host_whitelist: String,
    /// `--enable-ui`.
    pub enable_ui: UiExposure,
    /// Client listen URLs.
    pub listen_client_urls: Vec<String>,
    /// HTTP-only client listen URLs (`--listen-client-http-urls`); when any, the client
    /// listen URLs serve gRPC only.
    pub listen_client_http_urls: Vec<String>,
    /// Advertised client URLs.
    pub advertise_client_urls: Vec<String>,
    /// Peer listen URLs.
    pub listen_peer_urls: Vec<String>,
    /// This member's advertised peer URLs.
    pub advertise_peer_urls: Vec<String>,
    /// name -> peer URLs of the initial cluster.
    pub initial_cluster: BTreeMap<String, Vec<String>>,
    /// `true` for `--initial-cluster-state new`.
    pub new_cluster: bool,
    /// Cluster token.
    pub cluster_token: String,
    /// `--discovery-srv` and `--discovery-srv-name`: the initial cluster comes from DNS at
    /// start ([`crate::discovery`]).
    pub discovery_srv: Option<(String, String)>,
    /// `--discovery` and `--discovery-proxy`: the initial cluster comes from a discovery
    /// service at start ([`crate::discovery::url`]); the URL is also the cluster token.
    pub discovery: Option<(String, Option<String>)>,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout.
    pub election_timeout: Duration,
    /// Entries between snapshots.
    pub snapshot_count: u64,
    /// Maximum request size.
    pub max_request_bytes: usize,
    /// Maximum ops in a txn.
    pub max_txn_ops: usize,
    /// Backend quota in bytes.
    pub quota_backend_bytes: u64,
    /// Log level.
    pub log_level: String,
    /// `true` for JSON logs.
    pub log_json: bool,
    /// Where logs go.
    pub log_outputs: Vec<crate::logging::Output>,
    /// Metrics-only listen URLs.
    pub listen_metrics_urls: Vec<String>,
    /// Storage engine.
    pub engine: EngineKind,
    /// Interval of watch progress notifications.
    pub watch_progress_notify_interval: Duration,
    /// Interval of lease checkpoints.
    pub lease_checkpoint_interval: Duration,
    /// Most lease revocations per second.
    pub lease_revoke_rate: u32,
    /// Auto-compaction retention.
    pub auto_compaction: Retention,
    /// Interval of revision-mode auto-compaction.
    pub auto_compaction_interval: Duration,
    /// Interval of the corruption check (zero: off).
    pub corrupt_check_interval: Duration,
    /// Compare HashKV with the peers before serving clients.
    pub initial_corrupt_check: bool,
    /// Applied batches slower than this are logged.
    pub warning_apply_duration: Duration,
    /// Promote caught-up learners automatically.
    pub learner_auto_promote: bool,
    /// Start as a one-member cluster from this member's data.
    pub force_new_cluster: bool,
    /// Serve linearizable reads under a leader lease.
    pub lease_reads: bool,
    /// Least free disk space before writes that add data are refused.
    pub min_free_disk_bytes: u64,
    /// Client port TLS.
    pub client_tls: crate::tls::TlsFiles,
    /// `--auto-tls`: years of validity of a self-signed client certificate to make when
    /// https:// client URLs have no certificate files.
    pub auto_tls: Option<u32>,
    /// Peer port TLS.
    pub peer_tls: crate::tls::TlsFiles,
    /// `--peer-auto-tls`: years of validity of a self-signed peer certificate to make when
    /// https:// peer URLs have no certificate files.
    pub peer_auto_tls: Option<u32>,
    /// Auth token kind (`--auth-token`).
    pub auth_token: crate::auth::token::TokenKind,
    /// How long an unused simple token lives.
    pub auth_token_ttl: Duration,
    /// bcrypt cost of new password hashes.
    pub bcrypt_cost: u32,
}

/// Who the web console answers (`--enable-ui`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UiExposure {
    /// Nobody (404).
    Off,
    /// Requests from a loopback address (127.0.0.0/8, ::1).
    Loopback,
    /// Everyone who reaches the client port.
    On,
}

fn parse_ui(s: &str) -> Result<UiExposure, String> {
    if s == "loopback" {
        return Ok(UiExposure::Loopback);
    }
    parse_bool(s)
        .map(|on| if on { UiExposure::On } else { UiExposure::Off })
        .map_err(|_| format!("{s:?}: expected loopback, true or false"))
}

/// A boolean flag's value: `--flag`, `--flag=true`, `--flag=false`, in the spellings of
/// Go's `strconv.ParseBool`, which etcd's boolean flags use.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(format!("{other:?} is not a boolean (true or false)")),
    }
}

fn split(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

fn check_urls(flag: &str, urls: &[String]) -> Result<(), String> {
    if urls.is_empty() {
        return Err(format!("--{flag} must not be empty"));
    }
    for u in urls {
        if !(u.starts_with("http://") || u.starts_with("https://")) || u.parse::<tonic::codegen::http::Uri>().is_err() {
            return Err(format!("--{flag}: {u:?} is not a valid URL (expected http://host:port)"));
        }
    }
    Ok(())
}

impl Config {
    /// Validate flags into a config.
    pub fn from_flags(f: Flags) -> Result<Config, String> {
        let advertise_peer_urls = split(&f.initial_advertise_peer_urls);
        let initial =
            f.initial_cluster.clone().unwrap_or_else(|| format!("{}={}", f.name, advertise_peer_urls.join(",")));
        let mut initial_cluster: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for part in split(&initial) {
            let (name, url) =
                part.split_once('=').ok_or_else(|| format!("--initial-cluster: {part:?} is not name=url"))?;
            initial_cluster.entry(name.to_string()).or_default().push(url.to_string());
        }
        for urls in initial_cluster.values_mut() {
            urls.sort();
        }
        let mut mine = advertise_peer_urls.clone();
        mine.sort();
        match initial_cluster.get(&f.name) {
            Some(urls) if *urls == mine => {}
            Some(urls) => {
                return Err(format!(
                    "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
                    f.name,
                    urls.join(","),
                    mine.join(",")
                ))
            }
            None => return Err(format!("--initial-cluster has no member named {:?} (--name)", f.name)),
        }
        let new_cluster = match f.initial_cluster_state.as_str() {
            "new" => true,
            "existing" => false,
            other => return Err(format!("--initial-cluster-state must be new or existing, not {other:?}")),
        };
        if f.heartbeat_interval == 0 || f.election_timeout < 5 * f.heartbeat_interval {
            return Err("--election-timeout must be at least 5 times --heartbeat-interval".into());
        }
        let tls_policy = crate::tls::Policy::parse(&f.tls_min_version, &f.tls_max_version, &f.cipher_suites)?;
        let c = Config {
            data_dir: f.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.cairn", f.name))),
            wal_dir: f.wal_dir.clone().filter(|d| !d.as_os_str().is_empty()),
            allow_shared_data_dir: f.allow_shared_data_dir,
            http2: crate::tls::Http2Limits {
                max_concurrent_streams: f.max_concurrent_streams.max(1),
                keepalive_interval: f.grpc_keepalive_interval.max(Duration::from_secs(1)),
                keepalive_timeout: f.grpc_keepalive_timeout.max(Duration::from_secs(1)),
                keepalive_min_time: f.grpc_keepalive_min_time,
            },
            max_watchers_per_stream: f.max_watchers_per_stream.max(1),
            cors: f.cors.clone(),
            host_whitelist: f.host_whitelist.clone(),
            enable_ui: f.enable_ui,
            name: f.name,
            listen_client_urls: split(&f.listen_client_urls),
            listen_client_http_urls: split(&f.listen_client_http_urls),
            advertise_client_urls: split(&f.advertise_client_urls),
            listen_peer_urls: split(&f.listen_peer_urls),
            advertise_peer_urls,
            initial_cluster,
            new_cluster,
            // As etcd: with a discovery URL, the URL is the token member ids come from.
            cluster_token: f.discovery.clone().filter(|d| !d.is_empty()).unwrap_or(f.initial_cluster_token),
            discovery: f
                .discovery
                .filter(|d| !d.is_empty())
                .map(|d| (d, Some(f.discovery_proxy).filter(|p| !p.is_empty()))),
            discovery_srv: f.discovery_srv.filter(|d| !d.is_empty()).map(|d| (d, f.discovery_srv_name)),
            heartbeat: Duration::from_millis(f.heartbeat_interval),
            election_timeout: Duration::from_millis(f.election_timeout),
            snapshot_count: f.snapshot_count.max(1),
            max_request_bytes: f.max_request_bytes,
            max_txn_ops: f.max_txn_ops,
            quota_backend_bytes: if f.quota_backend_bytes == 0 { 2 << 30 } else { f.quota_backend_bytes },
            log_level: f.log_level,
            log_json: f.log_format == "json",
            log_outputs: crate::logging::Output::parse_list(&f.log_outputs)?,
            listen_metrics_urls: split(&f.listen_metrics_urls),
            engine: f.storage_engine,
            watch_progress_notify_interval: f.watch_progress_notify_interval.max(Duration::from_millis(10)),
            lease_checkpoint_interval: f.lease_checkpoint_interval.max(Duration::from_millis(100)),
            lease_revoke_rate: f.lease_revoke_rate.max(1),
            auto_compaction: Retention::parse(&f.auto_compaction_mode, &f.auto_compaction_retention)?,
            auto_compaction_interval: f.auto_compaction_interval.max(Duration::from_millis(10)),
            corrupt_check_interval: f.experimental_corrupt_check_time,
            initial_corrupt_check: f.experimental_initial_corrupt_check,
            warning_apply_duration: f.experimental_warning_apply_duration,
            learner_auto_promote: f.experimental_learner_auto_promote,
            force_new_cluster: f.force_new_cluster,
            lease_reads: f.experimental_lease_reads,
            min_free_disk_bytes: f.min_free_disk_bytes,
            auto_tls: (f.auto_tls && f.cert_file.is_none() && f.key_file.is_none())
                .then_some(f.self_signed_cert_validity),
            peer_auto_tls: (f.peer_auto_tls && f.peer_cert_file.is_none() && f.peer_key_file.is_none())
                .then_some(f.self_signed_cert_validity),
            client_tls: crate::tls::TlsFiles {
                cert: f.cert_file,
                key: f.key_file,
                trusted_ca: f.trusted_ca_file,
                client_cert_auth: f.client_cert_auth,
                crl: f.client_crl_file.filter(|p| !p.as_os_str().is_empty()),
                allowed_cn: Vec::new(),
                allowed_hostname: f.client_cert_allowed_hostname.filter(|h| !h.is_empty()),
                policy: tls_policy.clone(),
                client_cert: None,
                self_signed: false,
            },
            peer_tls: crate::tls::TlsFiles {
                cert: f.peer_cert_file,
                key: f.peer_key_file,
                trusted_ca: f.peer_trusted_ca_file,
                client_cert_auth: f.peer_client_cert_auth,
                crl: f.peer_crl_file.filter(|p| !p.as_os_str().is_empty()),
                allowed_cn: split(&f.peer_cert_allowed_cn),
                allowed_hostname: f.peer_cert_allowed_hostname.filter(|h| !h.is_empty()),
                policy: tls_policy,
                client_cert: f.peer_client_cert_file.zip(f.peer_client_key_file),
                self_signed: false,
            },
            auth_token: crate::auth::token::TokenKind::parse(&f.auth_token)?,
            auth_token_ttl: Duration::from_secs(f.auth_token_ttl.max(1)),
            bcrypt_cost: f.bcrypt_cost,
        };
        check_urls("listen-client-urls", &c.listen_client_urls)?;
        if !c.listen_client_http_urls.is_empty() {
            check_urls("listen-client-http-urls", &c.listen_client_http_urls)?;
        }
        if let Some(both) = c.listen_client_http_urls.iter().find(|u| c.listen_client_urls.contains(u)) {
            return Err(format!(
                "cannot bind both --listen-client-urls and --listen-client-http-urls on the same url {both}"
            ));
        }
        check_urls("advertise-client-urls", &c.advertise_client_urls)?;
        check_urls("listen-peer-urls", &c.listen_peer_urls)?;
        if !c.listen_metrics_urls.is_empty() {
            check_urls("listen-metrics-urls", &c.listen_metrics_urls)?;
        }
        for urls in c.initial_cluster.values() {
            check_urls("initial-cluster", urls)?;
        }
        // TLS files are read now, so a bad one stops the start with a clear message.
        let client_urls = c.listen_client_urls.iter().chain(&c.listen_client_http_urls);
        if client_urls.clone().any(|u| crate::tls::is_https(u)) && c.auto_tls.is_none() {
            c.client_tls.server("")?;
        }
        if crate::tls::peer_tls_needed(&c) && c.peer_auto_tls.is_none() {
            c.peer_tls.server("peer-")?;
            c.peer_tls.client("peer-")?;
        }
        Ok(c)
    }

    /// Parse from an argument list in clap's syntax (first item is the program name); the
    /// `cairn` binary first brings etcd's syntax to it ([`crate::etcd_flags::prepare`]).
    pub fn parse_from<I, T>(args: I) -> Result<Config, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let flags = Flags::try_parse_from(args).map_err(|e| e.to_string())?;
        Config::from_flags(flags)
    }

    /// How long a client request may wait for Raft (etcd: 5 s plus two election timeouts).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + 2 * self.election_timeout
    }
}

/// How much history auto-compaction keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Off.
    None,
    /// Keep the revisions of the last period (etcd's `periodic` mode).
    Period(Duration),
    /// Keep this many revisions (etcd's `revision` mode).
    Revisions(i64),
}

impl Retention {
    /// Parse etcd's flags: `periodic` takes a duration (`1h`, `30m`) or a number of hours,
    /// `revision` a number of revisions; `0` turns it off.
    pub fn parse(mode: &str, retention: &str) -> Result<Retention, String> {
        let r = retention.trim();
        match mode {
            "periodic" => {
                let d = match r.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours * 3600),
                    Err(_) => {
                        humantime::parse_duration(r).map_err(|e| format!("--auto-compaction-retention {r:?}: {e}"))?
                    }
                };
                Ok(if d.is_zero() { Retention::None } else { Retention::Period(d) })
            }
            "revision" => {
                let n: i64 = r
                    .parse()
                    .map_err(|_| format!("--auto-compaction-retention {r:?}: expected a number of revisions"))?;
                Ok(if n <= 0 { Retention::None } else { Retention::Revisions(n) })
            }
            other => Err(format!("--auto-compaction-mode must be periodic or revision, not {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_a_single_etcd_member() {
        let c = Config::parse_from(["cairn"]).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.cairn"));
        assert_eq!(c.listen_client_urls, vec!["http://127.0.0.1:2379"]);
        assert_eq!(c.initial_cluster.len(), 1);
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.max_txn_ops, 128);
        assert!(c.new_cluster);
    }

    #[test]
    fn etcd_environment_variables_are_fallbacks() {
        // nextest runs each test in its own process, so the environment is ours.
        std::env::set_var("ETCD_NAME", "from-env");
        std::env::set_var("ETCD_MAX_TXN_OPS", "7");
        std::env::set_var("ETCD_INITIAL_CLUSTER", "from-env=http://127.0.0.1:2380");
        let c = Config::parse_from(["cairn"]).unwrap();
        assert_eq!((c.name.as_str(), c.max_txn_ops), ("from-env", 7));
        assert_eq!(c.data_dir, PathBuf::from("from-env.cairn"));
        // A flag wins over the environment.
        let c = Config::parse_from(["cairn", "--max-txn-ops", "9"]).unwrap();
        assert_eq!(c.max_txn_ops, 9);
        for v in ["ETCD_NAME", "ETCD_MAX_TXN_OPS", "ETCD_INITIAL_CLUSTER"] {
            std::env::remove_var(v);
        }
    }

    #[test]
    fn rejects_inconsistent_cluster_flags() {
        let e = Config::parse_from(["cairn", "--name", "a", "--initial-cluster", "b=http://127.0.0.1:1"]).unwrap_err();
        assert!(e.contains("no member named"), "{e}");
        let e = Config::parse_from(["cairn", "--initial-cluster-state", "maybe"]).unwrap_err();
        assert!(e.contains("new or existing"), "{e}");
        let e = Config::parse_from(["cairn", "--listen-client-urls", "127.0.0.1:2379"]).unwrap_err();
        assert!(e.contains("not a valid URL"), "{e}");
    }

    #[test]
    fn retention_flags() {
        assert_eq!(Retention::parse("periodic", "0"), Ok(Retention::None));
        assert_eq!(Retention::parse("periodic", "1"), Ok(Retention::Period(Duration::from_secs(3600))));
        assert_eq!(Retention::parse("periodic", "30m"), Ok(Retention::Period(Duration::from_secs(1800))));
        assert_eq!(Retention::parse("revision", "1000"), Ok(Retention::Revisions(1000)));
        assert!(Retention::parse("revision", "1h").is_err());
        assert!(Retention::parse("sometimes", "1").is_err());
    }
}
