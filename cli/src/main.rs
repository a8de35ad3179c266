//! cairnctl: the command-line client for Cairn (and etcd) — etcdctl's commands, flags and
//! output formats for what the server supports.
//!
//! Exit codes: 0 success; 1 the cluster answered with an error or could not be reached;
//! 2 an invalid command line or input.

mod auth;
mod check;
mod coord;
mod examples;
mod mirror;
mod ops;
mod output;
mod txn;

use anyhow::Context as _;
use cairn_sdk::{
    AlarmType, Client, ConnectOptions, DeleteOptions, Error, GetOptions, GetResponse, PutOptions, SortOrder,
    SortTarget, WatchOptions,
};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use output::{lease_hex, Format};
use std::io::Read;
use std::time::{Duration, Instant};

/// Bad input on the command line or stdin (exit code 128, etcdctl's `ExitBadArgs`).
#[derive(Debug)]
pub struct BadArgs(pub String);

impl std::fmt::Display for BadArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadArgs {}

#[derive(Parser)]
#[command(name = "cairnctl", version, about = "Command-line client for Cairn and etcd (etcdctl's commands and flags)")]
struct Cli {
    /// gRPC endpoints, comma-separated.
    #[arg(long, env = "CAIRNCTL_ENDPOINTS", default_value = "127.0.0.1:2379", value_delimiter = ',', global = true)]
    endpoints: Vec<String>,
    /// Timeout for establishing a connection.
    #[arg(long, env = "CAIRNCTL_DIAL_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    dial_timeout: Duration,
    /// Timeout for short-running commands (everything but watch and keep-alive).
    #[arg(long, env = "CAIRNCTL_COMMAND_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    command_timeout: Duration,
    /// Keys per request when reading a large range (read in pages at one revision).
    #[arg(long, env = "CAIRNCTL_PAGE_SIZE", default_value_t = 10_000, global = true)]
    page_size: i64,
    /// Output format.
    #[arg(short = 'w', long, env = "CAIRNCTL_WRITE_OUT", value_enum, default_value = "simple", global = true)]
    write_out: Format,
    /// CA bundle (PEM) to verify the server's certificate: connect over TLS.
    #[arg(long, env = "CAIRNCTL_CACERT", global = true)]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for servers with --client-cert-auth.
    #[arg(long = "cert", id = "tls_cert", env = "CAIRNCTL_CERT", global = true, requires = "tls_key")]
    cert: Option<std::path::PathBuf>,
    /// Client private key (PEM).
    #[arg(long = "key", id = "tls_key", env = "CAIRNCTL_KEY", global = true, requires = "tls_cert")]
    key: Option<std::path::PathBuf>,
    /// User name for a cluster with auth on, as `name:password` (or give --password).
    #[arg(long, env = "CAIRNCTL_USER", global = true)]
    user: Option<String>,
    /// Password for --user (when --user has none).
    #[arg(long, env = "CAIRNCTL_PASSWORD", global = true, hide_env_values = true)]
    password: Option<String>,
    /// Print keys and values as hex-escaped bytes (`\x66\x6f\x6f`), as etcdctl's --hex.
    #[arg(long, env = "CAIRNCTL_HEX", global = true)]
    hex: bool,
    /// etcdctl's switch for plain connections to endpoints without a scheme (accepted for
    /// scripts: cairnctl uses TLS when an endpoint is https:// or a TLS flag is given).
    #[arg(long, env = "CAIRNCTL_INSECURE_TRANSPORT", global = true, num_args = 0..=1, default_missing_value = "true", default_value = "true", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    insecure_transport: bool,
    /// Accept any server certificate (still encrypted, but unauthenticated: anyone on the
    /// path can pose as the server). For test clusters with self-signed certificates only.
    #[arg(long, env = "CAIRNCTL_INSECURE_SKIP_TLS_VERIFY", global = true)]
    insecure_skip_tls_verify: bool,
    /// Log what the client does (connections, endpoints, retries) on stderr.
    #[arg(long, env = "CAIRNCTL_DEBUG", global = true)]
    debug: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// How to reach and log in to a cluster.
struct Creds<'a> {
    cacert: Option<&'a std::path::Path>,
    cert: Option<&'a std::path::Path>,
    key: Option<&'a std::path::Path>,
    user: Option<&'a str>,
    password: Option<&'a str>,
    /// `--insecure-skip-tls-verify`.
    insecure: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Get a key or a range of keys.
    Get(GetArgs),
    /// Put a key (the value is read from stdin if not given).
    Put(PutArgs),
    /// Delete a key or a range of keys.
    Del(DelArgs),
    /// Run a transaction read from stdin (etcdctl's syntax; -i prompts for each part).
    Txn {
        /// Prompt for compares, success and failure requests.
        #[arg(short, long)]
        interactive: bool,
    },
    /// Watch a key or range and print its events until interrupted.
    Watch(WatchArgs),
    /// Discard the history before a revision.
    Compaction {
        /// The revision to compact up to.
        revision: i64,
        /// Wait until the space is reclaimed.
        #[arg(long)]
        physical: bool,
    },
    /// Lease commands.
    #[command(subcommand)]
    Lease(LeaseCmd),
    /// Membership commands.
    #[command(subcommand)]
    Member(ops::MemberCmd),
    /// Hand leadership to another member (hex id).
    MoveLeader {
        /// The member to lead next (hex ID, from `member list`).
        target: String,
    },
    /// Give the space of deleted data back to the file system, one member at a time.
    Defrag {
        /// Defragment every member (from the member list).
        #[arg(long)]
        cluster: bool,
    },
    /// Copy a prefix to another cluster and keep it in sync (etcdctl's make-mirror): every
    /// key first, then every change as it happens, until interrupted.
    MakeMirror(mirror::MirrorArgs),
    /// Backup commands: save, status, restore.
    #[command(subcommand)]
    Snapshot(ops::SnapshotCmd),
    /// Per-endpoint commands.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Alarm commands.
    #[command(subcommand)]
    Alarm(AlarmCmd),
    /// Acquire a named lock (etcdctl's `lock`): print its key and hold it until interrupted,
    /// or run a command while holding it.
    Lock {
        /// The lock's name.
        name: String,
        /// A command (and its arguments) to run while holding the lock.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
        /// Session TTL in seconds: how long the lock outlives this process if it dies.
        #[arg(long, default_value_t = 10)]
        ttl: i64,
    },
    /// Campaign in a leader election, or observe it with -l (etcdctl's `elect`).
    Elect {
        /// The election's name.
        name: String,
        /// The value to proclaim once elected.
        proposal: Option<String>,
        /// Observe: print each leader's key and value.
        #[arg(short, long)]
        listen: bool,
        /// Session TTL in seconds.
        #[arg(long, default_value_t = 10)]
        ttl: i64,
    },
    /// Auth on, off, status.
    #[command(subcommand)]
    Auth(auth::AuthCmd),
    /// User commands: add, delete, get, list, passwd, grant-role, revoke-role.
    #[command(subcommand)]
    User(auth::UserCmd),
    /// Role commands: add, delete, get, list, grant-permission, revoke-permission.
    #[command(subcommand)]
    Role(auth::RoleCmd),
    /// Checks of the cluster: `check perf`.
    #[command(subcommand)]
    Check(check::CheckCmd),
    /// Print cairnctl's version.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell), e.g.
    /// `source <(cairnctl completion bash)` or into /etc/bash_completion.d/cairnctl.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Order {
    #[value(name = "ASCEND", alias = "ascend")]
    Ascend,
    #[value(name = "DESCEND", alias = "descend")]
    Descend,
}

#[derive(Clone, Copy, ValueEnum)]
enum SortBy {
    #[value(name = "KEY", alias = "key")]
    Key,
    #[value(name = "VERSION", alias = "version")]
    Version,
    #[value(name = "CREATE", alias = "create")]
    Create,
    #[value(name = "MODIFY", alias = "modify")]
    Modify,
    #[value(name = "VALUE", alias = "value")]
    Value,
}

/// The keys a get, del or watch covers: etcdctl's `key [range_end]`, `--prefix`, `--from-key`.
#[derive(Args)]
pub struct RangeArgs {
    /// The key (or the range start).
    key: String,
    /// The range end (exclusive).
    range_end: Option<String>,
    /// Every key with the prefix `key`.
    #[arg(long)]
    prefix: bool,
    /// Every key from `key` on.
    #[arg(long)]
    from_key: bool,
}

impl RangeArgs {
    /// Whether more than one key is covered.
    fn is_range(&self) -> bool {
        self.prefix || self.from_key || self.range_end.is_some()
    }

    /// Apply the flags to an SDK options builder, refusing contradictory ones.
    fn apply<O>(
        &self,
        o: O,
        with_prefix: fn(O) -> O,
        with_from_key: fn(O) -> O,
        with_range: fn(O, Vec<u8>) -> O,
    ) -> anyhow::Result<O> {
        match (&self.range_end, self.prefix, self.from_key) {
            (Some(_), true, _) | (Some(_), _, true) => {
                Err(BadArgs("too many arguments: a range end with --prefix or --from-key".into()).into())
            }
            (_, true, true) => Err(BadArgs("--prefix and --from-key cannot be set at the same time".into()).into()),
            (Some(e), false, false) => Ok(with_range(o, e.clone().into_bytes())),
            (None, true, false) => Ok(with_prefix(o)),
            (None, false, true) => Ok(with_from_key(o)),
            (None, false, false) => Ok(o),
        }
    }

    /// The end of the covered range (for a range).
    fn end(&self) -> Vec<u8> {
        match &self.range_end {
            Some(e) => e.clone().into_bytes(),
            None if self.prefix => cairn_sdk::prefix_end(self.key.as_bytes()),
            None => vec![0],
        }
    }
}

#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    range: RangeArgs,
    /// Read at this revision.
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// At most this many keys.
    #[arg(long, default_value_t = 0)]
    limit: i64,
    /// Sort order.
    #[arg(long, value_enum)]
    order: Option<Order>,
    /// Sort target.
    #[arg(long, value_enum)]
    sort_by: Option<SortBy>,
    /// Print keys only.
    #[arg(long)]
    keys_only: bool,
    /// Print only the number of keys.
    #[arg(long)]
    count_only: bool,
    /// Print values only.
    #[arg(long)]
    print_value_only: bool,
    /// Linearizable reads (`l`) see every write acknowledged before them; serializable ones
    /// (`s`) are answered by the member from what it has, without asking the leader.
    #[arg(long, value_enum, default_value = "l")]
    consistency: Consistency,
    /// Only keys modified at or after this revision.
    #[arg(long, default_value_t = 0)]
    min_mod_rev: i64,
    /// Only keys modified at or before this revision.
    #[arg(long, default_value_t = 0)]
    max_mod_rev: i64,
    /// Only keys created at or after this revision.
    #[arg(long, default_value_t = 0)]
    min_create_rev: i64,
    /// Only keys created at or before this revision.
    #[arg(long, default_value_t = 0)]
    max_create_rev: i64,
}

impl GetArgs {
    fn sorted(&self) -> bool {
        self.order.is_some() || self.sort_by.is_some()
    }

    pub fn options(&self) -> anyhow::Result<(String, GetOptions)> {
        let mut o = GetOptions::new()
            .with_revision(self.rev)
            .with_limit(self.limit)
            .with_mod_revision_range(self.min_mod_rev, self.max_mod_rev)
            .with_create_revision_range(self.min_create_rev, self.max_create_rev);
        o = self.range.apply(o, GetOptions::with_prefix, GetOptions::with_from_key, GetOptions::with_range)?;
        if self.sorted() {
            let target = match self.sort_by.unwrap_or(SortBy::Key) {
                SortBy::Key => SortTarget::Key,
                SortBy::Version => SortTarget::Version,
                SortBy::Create => SortTarget::Create,
                SortBy::Modify => SortTarget::Mod,
                SortBy::Value => SortTarget::Value,
            };
            let order = match self.order.unwrap_or(Order::Ascend) {
                Order::Ascend => SortOrder::Ascend,
                Order::Descend => SortOrder::Descend,
            };
            o = o.with_sort(target, order);
        }
        if self.keys_only {
            o = o.with_keys_only();
        }
        if self.count_only {
            o = o.with_count_only();
        }
        if self.consistency == Consistency::S {
            o = o.with_serializable();
        }
        Ok((self.range.key.clone(), o))
    }
}

/// `get --consistency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Consistency {
    /// Linearizable: confirmed with the leader.
    L,
    /// Serializable: the member's local data, possibly behind.
    S,
}

#[derive(Args)]
pub struct PutArgs {
    /// The key.
    key: String,
    /// The value (read from stdin if left out).
    value: Option<String>,
    /// Attach the key to this lease (hex ID).
    #[arg(long)]
    lease: Option<String>,
    /// Print the previous pair.
    #[arg(long)]
    prev_kv: bool,
    /// Keep the current value.
    #[arg(long)]
    ignore_value: bool,
    /// Keep the current lease.
    #[arg(long)]
    ignore_lease: bool,
}

fn parse_lease(s: &str) -> anyhow::Result<i64> {
    i64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| BadArgs(format!("bad lease ID {s:?} (hex expected)")).into())
}

impl PutArgs {
    pub fn options(&self) -> anyhow::Result<(String, Option<String>, PutOptions)> {
        let mut o = PutOptions::new();
        if let Some(l) = &self.lease {
            o = o.with_lease(parse_lease(l)?);
        }
        if self.prev_kv {
            o = o.with_prev_kv();
        }
        if self.ignore_lease {
            o = o.with_ignore_lease();
        }
        let mut value = self.value.clone();
        if self.ignore_value {
            o = o.with_ignore_value();
            value.get_or_insert_with(String::new);
        }
        Ok((self.key.clone(), value, o))
    }
}

#[derive(Args)]
pub struct DelArgs {
    #[command(flatten)]
    range: RangeArgs,
    /// Print the deleted pairs.
    #[arg(long)]
    prev_kv: bool,
}

impl DelArgs {
    pub fn options(&self) -> anyhow::Result<(String, DeleteOptions)> {
        let mut o = DeleteOptions::new();
        if self.prev_kv {
            o = o.with_prev_kv();
        }
        let o =
            self.range.apply(o, DeleteOptions::with_prefix, DeleteOptions::with_from_key, DeleteOptions::with_range)?;
        Ok((self.range.key.clone(), o))
    }
}

#[derive(Args)]
struct WatchArgs {
    /// The key (or the range start); with -i, given on each line instead.
    #[arg(required_unless_present = "interactive")]
    key: Option<String>,
    /// The range end (exclusive).
    range_end: Option<String>,
    /// Every key with the prefix `key`.
    #[arg(long)]
    prefix: bool,
    /// Every key from `key` on.
    #[arg(long)]
    from_key: bool,
    /// Read watch requests from stdin, one per line (`watch KEY [RANGE_END] [-- COMMAND]`,
    /// flags as on the command line), and `progress` to ask every watch for a progress
    /// notification; the command line's flags apply to every line.
    #[arg(short, long)]
    interactive: bool,
    /// Replay events from this revision.
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// Print each event's previous pair.
    #[arg(long)]
    prev_kv: bool,
    /// Ask for progress notifications.
    #[arg(long)]
    progress_notify: bool,
    /// After `--`: a command to run for each event (etcdctl's exec-watch), with
    /// ETCD_WATCH_REVISION, ETCD_WATCH_EVENT_TYPE, ETCD_WATCH_KEY and ETCD_WATCH_VALUE set.
    #[arg(last = true, value_name = "COMMAND")]
    exec: Vec<String>,
}

#[derive(Subcommand)]
enum LeaseCmd {
    /// Grant a lease of TTL seconds.
    Grant {
        /// Seconds the lease lives without a keep-alive.
        ttl: i64,
    },
    /// Revoke a lease (its keys are deleted).
    Revoke {
        /// The lease's ID (hex, as printed by `lease grant`).
        id: String,
    },
    /// A lease's remaining TTL.
    Timetolive {
        /// The lease's ID (hex).
        id: String,
        /// Also list the attached keys.
        #[arg(long)]
        keys: bool,
    },
    /// List live leases.
    List,
    /// Keep a lease alive until interrupted.
    KeepAlive {
        /// The lease's ID (hex).
        id: String,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// Status of each endpoint.
    Status {
        /// Use every member's client URLs (from the member list) as endpoints.
        #[arg(long)]
        cluster: bool,
    },
    /// Whether each endpoint can commit a linearizable read.
    Health {
        /// Use every member's client URLs (from the member list) as endpoints.
        #[arg(long)]
        cluster: bool,
    },
    /// Each endpoint's hash of its key-value history (equal on healthy members).
    Hashkv {
        /// Use every member's client URLs (from the member list) as endpoints.
        #[arg(long)]
        cluster: bool,
        /// The revision to hash up to (0: the current one).
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
}

#[derive(Subcommand)]
enum AlarmCmd {
    /// List active alarms.
    List,
    /// Clear every alarm.
    Disarm,
}

/// Accept etcdctl's environment variables (ETCDCTL_ENDPOINTS, ...) where no CAIRNCTL_ one is set.
fn adopt_etcdctl_env() {
    for name in [
        "ENDPOINTS",
        "DIAL_TIMEOUT",
        "COMMAND_TIMEOUT",
        "WRITE_OUT",
        "CACERT",
        "CERT",
        "KEY",
        "USER",
        "PASSWORD",
        "HEX",
        "DEBUG",
        "INSECURE_SKIP_TLS_VERIFY",
        "INSECURE_TRANSPORT",
    ] {
        let ours = format!("CAIRNCTL_{name}");
        if std::env::var_os(&ours).is_none() {
            if let Some(v) = std::env::var_os(format!("ETCDCTL_{name}")) {
                // Single-threaded here: no runtime or other thread exists yet.
                std::env::set_var(ours, v);
            }
        }
    }
}

/// etcdctl's exit code for bad arguments.
const EXIT_BAD_ARGS: i32 = 128;

fn main() {
    adopt_etcdctl_env();
    let parsed = examples::attach(Cli::command()).try_get_matches().and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            // etcdctl's exit codes, so ported scripts keep working: a missing argument is
            // ExitBadArgs (128), an unknown flag or a bad value cobra's usage error (1).
            let code = match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
                ErrorKind::MissingRequiredArgument | ErrorKind::TooFewValues | ErrorKind::WrongNumberOfValues => {
                    EXIT_BAD_ARGS
                }
                _ => 1,
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if cli.debug {
        let filter = tracing_subscriber::EnvFilter::new("debug,h2=info,hyper=info,hyper_util=info,tower=info");
        tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).init();
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("Error: {e:#}");
        let code = if e.downcast_ref::<BadArgs>().is_some() { EXIT_BAD_ARGS } else { 1 };
        std::process::exit(code);
    }
}

impl Cli {
    async fn client(&self) -> anyhow::Result<Client> {
        self.client_to(&self.endpoints).await
    }

    async fn client_to(&self, endpoints: &[String]) -> anyhow::Result<Client> {
        let creds = Creds {
            cacert: self.cacert.as_deref(),
            cert: self.cert.as_deref(),
            key: self.key.as_deref(),
            user: self.user.as_deref(),
            password: self.password.as_deref(),
            insecure: self.insecure_skip_tls_verify,
        };
        self.connect(endpoints, &creds, "").await
    }

    /// A client to `endpoints` with `creds`; `flag` prefixes the flag names in messages
    /// (`dest-` for make-mirror's destination).
    async fn connect(&self, endpoints: &[String], creds: &Creds<'_>, flag: &str) -> anyhow::Result<Client> {
        let mut opts = ConnectOptions::default()
            .with_dial_timeout(self.dial_timeout)
            .with_request_timeout(Some(self.command_timeout));
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let identity = match (creds.cert, creds.key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        let identity = identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()));
        if creds.insecure {
            opts = opts.with_insecure_skip_verify(identity);
        } else if let Some(ca) = creds.cacert {
            opts = opts.with_tls_pem(Some(&read(ca)?), identity);
        } else if identity.is_some() || endpoints.iter().any(|e| e.starts_with("https://")) {
            // As etcdctl: https:// without --cacert trusts the system's root certificates.
            opts = opts.with_tls_pem(None, identity);
        }
        if let Some(user) = creds.user {
            let (name, password) = match (user.split_once(':'), creds.password) {
                (Some((name, password)), None) => (name.to_string(), password.to_string()),
                (None, Some(password)) => (user.to_string(), password.to_string()),
                (Some(_), Some(_)) => {
                    return Err(BadArgs(format!("--{flag}user has a password and --{flag}password is given too")).into())
                }
                // As etcdctl: ask on the terminal; without one, say how to give it.
                (None, None) if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
                    let password = rpassword::prompt_password("Password: ").context("reading the password")?;
                    (user.to_string(), password)
                }
                (None, None) => {
                    return Err(BadArgs(format!(
                        "--{flag}user needs a password: --{flag}user name:password or --{flag}password"
                    ))
                    .into())
                }
            };
            opts = opts.with_user(name, password);
        }
        Ok(Client::connect(endpoints, opts).await?)
    }

    /// The endpoints to visit one by one: the given ones, or with `cluster` every member's.
    async fn each_endpoint(&self, cluster: bool) -> anyhow::Result<Vec<String>> {
        if !cluster {
            return Ok(self.endpoints.clone());
        }
        let members = self.client().await?.member_list().await?;
        Ok(members.iter().flat_map(|m| m.client_ur_ls.iter().cloned()).collect())
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let w = cli.write_out;
    output::set_hex(cli.hex);
    match &cli.cmd {
        Cmd::Version => {
            println!("cairnctl version: {}", env!("CARGO_PKG_VERSION"));
            println!("API version: 3.5");
        }
        Cmd::Completion { shell } => {
            clap_complete::generate(*shell, &mut examples::attach(Cli::command()), "cairnctl", &mut std::io::stdout());
        }
        Cmd::Get(a) => {
            let (key, opts) = a.options()?;
            let c = cli.client().await?;
            let paged = a.range.is_range() && a.limit == 0 && !a.count_only && !a.sorted();
            let r = if paged {
                get_paged(&c, &key, opts, a.range.end(), cli.page_size.max(1)).await?
            } else {
                c.get(key, opts).await?
            };
            output::print_get(&r, w, a.print_value_only, a.count_only);
        }
        Cmd::Put(a) => {
            let (key, value, opts) = a.options()?;
            let value = match value {
                Some(v) => v,
                None => {
                    let mut v = String::new();
                    std::io::stdin().read_to_string(&mut v).context("reading the value from stdin")?;
                    v
                }
            };
            let r = cli.client().await?.put(key, value, opts).await?;
            output::print_put(&r, w);
        }
        Cmd::Del(a) => {
            let (key, opts) = a.options()?;
            let r = cli.client().await?.delete(key, opts).await?;
            output::print_del(&r, w);
        }
        Cmd::Txn { interactive } => {
            let t = txn::read(std::io::stdin().lock(), *interactive)?;
            let r = cli.client().await?.txn(t).await?;
            output::print_txn(&r, w);
        }
        Cmd::Compaction { revision, physical } => {
            cli.client().await?.compact(*revision, *physical).await?;
            println!("compacted revision {revision}");
        }
        Cmd::Watch(a) => watch(&cli, a).await?,
        Cmd::Lease(l) => lease(&cli, l).await?,
        Cmd::Member(m) => ops::member(&cli, m).await?,
        Cmd::Auth(a) => auth::auth(&cli, a).await?,
        Cmd::User(u) => auth::user(&cli, u).await?,
        Cmd::Role(r) => auth::role(&cli, r).await?,
        Cmd::MoveLeader { target } => ops::move_leader(&cli, target).await?,
        Cmd::Defrag { cluster } => ops::defrag(&cli, *cluster).await?,
        Cmd::Snapshot(s) => ops::snapshot(&cli, s).await?,
        Cmd::MakeMirror(m) => mirror::make_mirror(&cli, m).await?,
        Cmd::Check(c) => check::check(&cli, c).await?,
        Cmd::Endpoint(EndpointCmd::Status { cluster }) => {
            let mut rows = Vec::new();
            let mut failed = Vec::new();
            for ep in cli.each_endpoint(*cluster).await? {
                match async { anyhow::Ok(cli.client_to(std::slice::from_ref(&ep)).await?.status().await?) }.await {
                    Ok(s) => rows.push((ep, s)),
                    Err(e) => failed.push(format!("failed to get the status of endpoint {ep} ({e})")),
                }
            }
            match w {
                Format::Json => {
                    let v: Vec<_> = rows.iter().map(|(ep, s)| output::status_json(ep, s)).collect();
                    println!("{}", serde_json::Value::Array(v));
                }
                Format::Table => {
                    let mut t = output::table(&output::STATUS_HEADERS);
                    rows.iter().for_each(|(ep, s)| {
                        t.add_row(output::status_row(ep, s));
                    });
                    println!("{t}");
                }
                Format::Fields => rows.iter().for_each(|(ep, s)| output::status_fields(ep, s)),
                Format::Simple => rows.iter().for_each(|(ep, s)| println!("{}", output::status_row(ep, s).join(", "))),
            }
            if !failed.is_empty() {
                anyhow::bail!("{}", failed.join("; "));
            }
        }
        Cmd::Endpoint(EndpointCmd::Hashkv { cluster, rev }) => {
            let mut rows = Vec::new();
            for ep in cli.each_endpoint(*cluster).await? {
                let c = cli.client_to(std::slice::from_ref(&ep)).await?;
                rows.push((ep, c.hash_kv(*rev).await?));
            }
            match w {
                Format::Json => {
                    let v: Vec<_> = rows
                        .iter()
                        .map(|(ep, h)| {
                            serde_json::json!({"Endpoint": ep, "HashKV": {"header": output::header_json(&h.header.into()),
                                "hash": h.hash, "compact_revision": h.compact_revision, "hash_revision": h.hash_revision}})
                        })
                        .collect();
                    println!("{}", serde_json::Value::Array(v));
                }
                Format::Table => {
                    let mut t = output::table(&["ENDPOINT", "HASH", "HASH REVISION", "COMPACT REVISION"]);
                    for (ep, h) in &rows {
                        t.add_row(vec![
                            ep.clone(),
                            h.hash.to_string(),
                            h.hash_revision.to_string(),
                            h.compact_revision.to_string(),
                        ]);
                    }
                    println!("{t}");
                }
                Format::Fields => {
                    for (ep, h) in &rows {
                        output::fields_header(&h.header.into());
                        output::field("Endpoint", output::go_quote(ep.as_bytes()));
                        output::field("Hash", h.hash);
                        println!();
                    }
                }
                Format::Simple => rows.iter().for_each(|(ep, h)| println!("{ep}, {}", h.hash)),
            }
        }
        Cmd::Endpoint(EndpointCmd::Health { cluster }) => {
            let mut unhealthy = 0;
            let mut rows = Vec::new();
            for ep in cli.each_endpoint(*cluster).await? {
                let start = Instant::now();
                let r =
                    async { anyhow::Ok(cli.client_to(std::slice::from_ref(&ep)).await?.get("health", None).await?) }
                        .await;
                let took = start.elapsed();
                // As etcd: a permission error still proves the member commits reads.
                let err = match r {
                    Ok(_) => None,
                    Err(e) if e.downcast_ref::<Error>() == Some(&Error::PermissionDenied) => None,
                    Err(e) => Some(e.to_string()),
                };
                unhealthy += err.is_some() as usize;
                rows.push((ep, err, took));
            }
            match w {
                Format::Json => {
                    let v: Vec<_> = rows
                        .iter()
                        .map(|(ep, err, took)| {
                            serde_json::json!({"endpoint": ep, "health": err.is_none(), "took": format!("{took:?}"), "error": err})
                        })
                        .collect();
                    println!("{}", serde_json::Value::Array(v));
                }
                Format::Table => {
                    let mut t = output::table(&["ENDPOINT", "HEALTH", "TOOK", "ERROR"]);
                    for (ep, err, took) in &rows {
                        t.add_row(vec![
                            ep.clone(),
                            err.is_none().to_string(),
                            format!("{took:?}"),
                            err.clone().unwrap_or_default(),
                        ]);
                    }
                    println!("{t}");
                }
                Format::Fields => {
                    for (ep, err, took) in &rows {
                        output::field("Endpoint", output::go_quote(ep.as_bytes()));
                        output::field("Health", err.is_none());
                        output::field("Took", format!("{took:?}"));
                        output::field("Error", err.as_deref().unwrap_or("<nil>"));
                        println!();
                    }
                }
                Format::Simple => {
                    for (ep, err, took) in &rows {
                        match err {
                            None => println!("{ep} is healthy: successfully committed proposal: took = {took:?}"),
                            Some(e) => println!("{ep} is unhealthy: failed to commit proposal: {e}"),
                        }
                    }
                }
            }
            if unhealthy > 0 {
                anyhow::bail!("unhealthy cluster");
            }
        }
        Cmd::Lock { name, command, ttl } => coord::lock(&cli.client().await?, name, *ttl, command).await?,
        Cmd::Elect { name, proposal, listen, ttl } => {
            coord::elect(&cli.client().await?, name, proposal.as_deref(), *listen, *ttl).await?
        }
        Cmd::Alarm(a) => {
            let c = cli.client().await?;
            let (header, alarms) = match a {
                AlarmCmd::List => c.alarms_with_header().await?,
                AlarmCmd::Disarm => c.alarm_disarm_with_header(0, AlarmType::None).await?,
            };
            let name =
                |al: &cairn_sdk::AlarmMember| AlarmType::try_from(al.alarm).map_or("UNKNOWN", |t| t.as_str_name());
            match cli.write_out {
                Format::Json => {
                    let items = alarms
                        .iter()
                        .map(|al| serde_json::json!({"memberID": al.member_id, "alarm": al.alarm}))
                        .collect();
                    println!("{}", output::list_json(&header, "alarms", items));
                }
                Format::Fields => {
                    output::fields_header(&header);
                    for al in &alarms {
                        output::field("MemberID", al.member_id);
                        output::field("AlarmType", name(al));
                        println!();
                    }
                }
                _ => alarms.iter().for_each(|al| println!("memberID:{} alarm:{}", al.member_id, name(al))),
            }
        }
    }
    Ok(())
}

/// Read a large range (`key` up to `end`) in pages of `page` keys, all at the first page's
/// revision (so the result is one consistent snapshot), with a progress bar on a terminal.
async fn get_paged(c: &Client, key: &str, opts: GetOptions, end: Vec<u8>, page: i64) -> anyhow::Result<GetResponse> {
    let first = c.get(key, opts.clone().with_limit(page)).await?;
    if !first.more {
        return Ok(first);
    }
    let rev = first.header.revision;
    let total = first.count;
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} keys [{bar:30}] {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(first.kvs.len() as u64);
    let mut all = first;
    while let Some(last) = all.kvs.last() {
        let mut next = last.key.clone();
        next.push(0);
        // The rest of the range, from just after the last key, with the same options.
        let page_opts = opts.clone().with_range(end.clone()).with_revision(rev).with_limit(page);
        let page = c.get(next, page_opts).await?;
        bar.inc(page.kvs.len() as u64);
        let more = page.more;
        all.kvs.extend(page.kvs);
        if !more {
            break;
        }
    }
    bar.finish_and_clear();
    all.more = false;
    all.count = total;
    Ok(all)
}

async fn watch(cli: &Cli, a: &WatchArgs) -> anyhow::Result<()> {
    let c = cli.client().await?;
    if a.interactive {
        return watch_interactive(&c, a, cli.write_out).await;
    }
    let s = open_watch(&c, a).await?;
    print_watch(s, &a.exec, cli.write_out, None).await
}

/// Open the watch `a` asks for.
async fn open_watch(c: &Client, a: &WatchArgs) -> anyhow::Result<cairn_sdk::WatchStream> {
    let range = RangeArgs {
        key: a.key.clone().unwrap_or_default(),
        range_end: a.range_end.clone(),
        prefix: a.prefix,
        from_key: a.from_key,
    };
    let mut o = WatchOptions::new().with_start_revision(a.rev);
    o = range.apply(o, WatchOptions::with_prefix, WatchOptions::with_from_key, WatchOptions::with_range)?;
    if a.prev_kv {
        o = o.with_prev_kv();
    }
    if a.progress_notify {
        o = o.with_progress_notify();
    }
    Ok(c.watch(range.key, o).await?)
}

/// Print a watch's events (and run `exec` for each) until it ends; with `progress`, ask
/// for a progress notification whenever it fires.
async fn print_watch(
    mut s: cairn_sdk::WatchStream,
    exec: &[String],
    w: Format,
    mut progress: Option<tokio::sync::broadcast::Receiver<()>>,
) -> anyhow::Result<()> {
    loop {
        let r = tokio::select! {
            r = s.message() => r,
            Some(Ok(())) = async { Some(progress.as_mut()?.recv().await) } => {
                s.request_progress();
                continue;
            }
        };
        let Some(r) = r else { break };
        let r = r?;
        if r.is_progress_notify() {
            println!("progress notify: {}", r.header.revision);
        } else {
            output::print_events(&r.header, &r.events, w);
        }
        if let Some((program, args)) = exec.split_first() {
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            for ev in &r.events {
                let kv = ev.kv.clone().unwrap_or_default();
                let kind = if ev.r#type == 1 { "DELETE" } else { "PUT" };
                // As etcdctl: the type, key and value Go-quoted (%q).
                let status = tokio::process::Command::new(program)
                    .args(args)
                    .env("ETCD_WATCH_REVISION", r.header.revision.to_string())
                    .env("ETCD_WATCH_EVENT_TYPE", format!("\"{kind}\""))
                    .env("ETCD_WATCH_KEY", output::go_quote(&kv.key))
                    .env("ETCD_WATCH_VALUE", output::go_quote(&kv.value))
                    .status()
                    .await;
                match status {
                    Ok(s) if s.success() => {}
                    Ok(s) => anyhow::bail!("command {exec:?} error ({s})"),
                    Err(e) => anyhow::bail!("command {exec:?} error ({e})"),
                }
            }
        }
    }
    Ok(())
}

/// A line of `watch -i`.
#[derive(Parser)]
#[command(no_binary_name = true)]
struct WatchLine {
    #[command(subcommand)]
    cmd: WatchLineCmd,
}

#[derive(Subcommand)]
enum WatchLineCmd {
    /// Open a watch.
    Watch(WatchArgs),
    /// Ask every open watch for a progress notification.
    Progress,
}

/// `watch -i`: watches opened from stdin lines, all printing as their events come. At the
/// end of stdin the open watches go on until interrupted (etcdctl exits there).
async fn watch_interactive(c: &Client, outer: &WatchArgs, w: Format) -> anyhow::Result<()> {
    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let (progress, _) = tokio::sync::broadcast::channel(16);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let line = tokio::select! {
            line = lines.recv() => line,
            Some(done) = tasks.join_next() => {
                if let Ok(Err(e)) = done {
                    eprintln!("Error: {e:#}");
                    std::process::exit(1);
                }
                continue;
            }
        };
        let Some(line) = line else { break };
        let args = shlex::split(&line).unwrap_or_default();
        if args.is_empty() {
            eprintln!("Invalid command: {line} (watch and progress supported)");
            continue;
        }
        let parsed = match WatchLine::try_parse_from(&args) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("Invalid command {line} ({})", e.kind());
                continue;
            }
        };
        match parsed.cmd {
            WatchLineCmd::Progress => {
                let _ = progress.send(());
            }
            WatchLineCmd::Watch(mut a) => {
                // The command line's flags apply to every line.
                a.prefix |= outer.prefix;
                a.from_key |= outer.from_key;
                a.prev_kv |= outer.prev_kv;
                a.progress_notify |= outer.progress_notify;
                if a.rev == 0 {
                    a.rev = outer.rev;
                }
                if a.exec.is_empty() {
                    a.exec.clone_from(&outer.exec);
                }
                match open_watch(c, &a).await {
                    Ok(s) => {
                        let rx = progress.subscribe();
                        tasks.spawn(async move { print_watch(s, &a.exec, w, Some(rx)).await });
                    }
                    Err(e) => eprintln!("Invalid command {line} ({e:#})"),
                }
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            anyhow::bail!(e);
        }
    }
    Ok(())
}

async fn lease(cli: &Cli, l: &LeaseCmd) -> anyhow::Result<()> {
    let c = cli.client().await?;
    let w = cli.write_out;
    match l {
        LeaseCmd::Grant { ttl } => {
            let r = c.lease_grant(*ttl).await?;
            match w {
                Format::Json => println!(
                    "{}",
                    serde_json::json!({"header": output::header_json(&r.header), "ID": r.id, "TTL": r.ttl})
                ),
                Format::Fields => {
                    output::fields_header(&r.header);
                    output::field("ID", r.id);
                    output::field("TTL", r.ttl);
                }
                _ => println!("lease {} granted with TTL({}s)", lease_hex(r.id), r.ttl),
            }
        }
        LeaseCmd::Revoke { id } => {
            let id = parse_lease(id)?;
            let h = c.lease_revoke(id).await?;
            output::print_done(w, &h, || println!("lease {} revoked", lease_hex(id)));
        }
        LeaseCmd::Timetolive { id, keys } => {
            let id = parse_lease(id)?;
            let r = c.lease_time_to_live(id, *keys).await?;
            if w == Format::Json {
                let ks: Vec<String> = r.keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
                println!(
                    "{}",
                    serde_json::json!({"header": output::header_json(&r.header), "id": r.id, "ttl": r.ttl, "granted-ttl": r.granted_ttl, "keys": ks})
                );
            } else if w == Format::Fields {
                output::fields_header(&r.header);
                output::field("ID", r.id);
                output::field("TTL", r.ttl);
                output::field("GrantedTTL", r.granted_ttl);
                r.keys.iter().for_each(|k| output::field("Key", output::go_quote(k)));
            } else if r.ttl == -1 {
                println!("lease {} already expired", lease_hex(id));
            } else {
                let mut line =
                    format!("lease {} granted with TTL({}s), remaining({}s)", lease_hex(id), r.granted_ttl, r.ttl);
                if *keys {
                    let ks: Vec<String> = r.keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
                    line.push_str(&format!(", attached keys([{}])", ks.join(" ")));
                }
                println!("{line}");
            }
        }
        LeaseCmd::List => {
            let (h, ids) = c.leases_with_header().await?;
            match w {
                Format::Json => {
                    let leases: Vec<_> = ids.iter().map(|id| serde_json::json!({ "id": id })).collect();
                    println!("{}", output::inline_header_json(&h, serde_json::json!({ "leases": leases })))
                }
                Format::Fields => {
                    output::fields_header(&h);
                    ids.iter().for_each(|id| output::field("ID", id));
                }
                _ => {
                    println!("found {} leases", ids.len());
                    ids.iter().for_each(|id| println!("{}", lease_hex(*id)));
                }
            }
        }
        LeaseCmd::KeepAlive { id, once } => {
            let id = parse_lease(id)?;
            if *once {
                let (h, ttl) = c.lease_keep_alive_once_with_header(id).await?;
                match w {
                    Format::Fields => {
                        output::fields_header(&h);
                        output::field("ID", id);
                        output::field("TTL", ttl);
                    }
                    Format::Json => {
                        println!("{}", output::inline_header_json(&h, serde_json::json!({ "ID": id, "TTL": ttl })))
                    }
                    _ => println!("lease {} keepalived with TTL({ttl})", lease_hex(id)),
                }
                return Ok(());
            }
            let ka = c.lease_keep_alive(id);
            let mut states = ka.subscribe();
            loop {
                if states.changed().await.is_err() {
                    break;
                }
                let st = *states.borrow_and_update();
                match st {
                    cairn_sdk::LeaseState::Alive { ttl: Some(ttl) } => {
                        println!("lease {} keepalived with TTL({ttl})", lease_hex(id))
                    }
                    cairn_sdk::LeaseState::Alive { ttl: None } => {}
                    cairn_sdk::LeaseState::Lost => break,
                }
            }
            println!("lease {} expired or revoked.", lease_hex(id));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command a user can run, with its path (`cairnctl lease grant`).
    fn leaves(c: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        let path = format!("{path} {}", c.get_name());
        if c.get_subcommands().next().is_none() {
            out.push((path.clone(), c.clone()));
        }
        for s in c.get_subcommands() {
            leaves(s, path.clone(), out);
        }
    }

    #[test]
    fn every_argument_has_help_and_every_command_an_example() {
        let mut cmd = super::examples::attach(super::Cli::command());
        cmd.build();
        let mut all = Vec::new();
        leaves(&cmd, String::new(), &mut all);
        let mut missing = Vec::new();
        for (path, c) in &all {
            if c.get_name() == "help" || path.contains(" help ") {
                continue;
            }
            for a in c.get_arguments().filter(|a| !a.is_hide_set() && !a.is_global_set()) {
                if a.get_help().is_none() && !matches!(a.get_id().as_str(), "help" | "version") {
                    missing.push(format!("{path}: <{}> has no help", a.get_id()));
                }
            }
            if c.get_after_help().is_none() {
                missing.push(format!("{path}: no example (after_help)"));
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
