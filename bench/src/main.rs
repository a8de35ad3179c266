//! cairn-bench: a load generator for any etcd v3 endpoint — Cairn or etcd — and a
//! side-by-side comparison of the two (`cairn-bench compare`).
//!
//! Every run is bounded: by `--total` operations or `--duration` seconds, and always by
//! `--max-seconds`.

mod compare;
mod floor;
mod runner;
mod workloads;

use clap::{Args, Parser, Subcommand, ValueEnum};
use runner::Report;

/// Options shared by every workload.
#[derive(Debug, Clone, Args)]
pub struct Opts {
    /// Comma-separated host:port endpoints.
    #[arg(long, global = true, default_value = "127.0.0.1:2379")]
    pub endpoints: String,
    /// Log in as `name:password` (a cluster with auth on); every request carries the token.
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// gRPC connections (clients are spread over them).
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Concurrent clients.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Total operations (ignored with --duration).
    #[arg(long, global = true, default_value_t = 10_000)]
    pub total: u64,
    /// Run for this many seconds instead of --total operations.
    #[arg(long, global = true)]
    pub duration: Option<u64>,
    /// Hard cap on any run, in seconds.
    #[arg(long, global = true, default_value_t = 600)]
    pub max_seconds: u64,
    /// Key size in bytes.
    #[arg(long, global = true, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, global = true, default_value_t = 8)]
    pub val_size: usize,
    /// Number of distinct keys.
    #[arg(long, global = true, default_value_t = 1)]
    pub key_space_size: u64,
    /// Use keys in order instead of at random.
    #[arg(long, global = true)]
    pub sequential_keys: bool,
    /// Maximum operations per second over all clients (0 = unlimited).
    #[arg(long, global = true, default_value_t = 0.0)]
    pub rate: f64,
    /// Send everything to the leader's endpoint only.
    #[arg(long, global = true)]
    pub target_leader: bool,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// Server processes (pids, comma-separated) whose CPU time per operation over the
    /// measured window the report gives, as `server_cpu_us_per_op` (`compare` names the
    /// servers it started).
    #[arg(long = "server-pids", global = true, value_delimiter = ',')]
    pub cpu_of: Vec<u32>,
}

/// Read consistency.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable (read index).
    L,
    /// Serializable (local).
    S,
}

#[derive(Debug, Parser)]
#[command(name = "cairn-bench", version, about = "Load generator for etcd v3 endpoints (Cairn or etcd)")]
struct Cli {
    #[command(flatten)]
    opts: Opts,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Puts of --val-size values over the key space.
    Put,
    /// Ranges of single keys from the key space (filled first, not measured).
    Range {
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
    },
    /// Txns of --txn-ops puts each.
    TxnPut {
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
    },
    /// Reads (ranges) and writes (txn puts) mixed at --rw-ratio reads per write.
    TxnMixed {
        #[arg(long, default_value_t = 1.0)]
        rw_ratio: f64,
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
    },
    /// N watchers on one prefix while the clients put under it: events/s delivered and
    /// put-to-event latency.
    Watch {
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        #[arg(long, default_value_t = 10)]
        streams: usize,
    },
    /// Put-to-event latency of one watcher at a steady --rate (default 100/s).
    WatchLatency,
    /// Each client renews its own lease over a keepalive stream.
    LeaseKeepalive,
    /// Grant a lease, then revoke it (both calls are one operation).
    LeaseGrantRevoke,
    /// Grant --leases leases of the minimum TTL, then put (for --duration, default 10 s)
    /// while they all expire; reports the puts and when the last lease was revoked.
    LeaseStorm {
        #[arg(long, default_value_t = 20_000)]
        leases: u64,
    },
    /// --leases leases of --ttl seconds, each renewed every TTL/3 (paced) for --duration
    /// (default 20 s); reports keepalives/s and the Raft entries committed meanwhile.
    LeaseFleet {
        #[arg(long, default_value_t = 10_000)]
        leases: u64,
        #[arg(long, default_value_t = 10)]
        ttl: i64,
    },
    /// Run the same workloads against etcd and Cairn and print one table of ratios.
    Compare(compare::CompareArgs),
    /// Serve etcd's KV and Lease APIs storing nothing, answering at once: the gRPC
    /// transport's own cost per request, the floor under any server's (`bench/floor.sh`).
    Floor {
        /// host:port to listen on.
        #[arg(long, default_value = "127.0.0.1:23790")]
        listen: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report: Report = match cli.cmd {
        Cmd::Put => workloads::put(&cli.opts).await?,
        Cmd::Range { consistency } => workloads::range(&cli.opts, consistency).await?,
        Cmd::TxnPut { txn_ops } => workloads::txn_put(&cli.opts, txn_ops).await?,
        Cmd::TxnMixed { rw_ratio, consistency } => workloads::txn_mixed(&cli.opts, rw_ratio, consistency).await?,
        Cmd::Watch { watchers, streams } => workloads::watch(&cli.opts, watchers, streams, "watch").await?,
        Cmd::WatchLatency => {
            let mut o = cli.opts.clone();
            if o.rate <= 0.0 {
                o.rate = 100.0;
            }
            if o.duration.is_none() && o.total == 10_000 {
                o.total = 1_000;
            }
            workloads::watch(&o, 1, 1, "watch-latency").await?
        }
        Cmd::LeaseKeepalive => workloads::lease_keepalive(&cli.opts).await?,
        Cmd::LeaseGrantRevoke => workloads::lease_grant_revoke(&cli.opts).await?,
        Cmd::LeaseStorm { leases } => workloads::lease_storm(&cli.opts, leases).await?,
        Cmd::LeaseFleet { leases, ttl } => workloads::lease_fleet(&cli.opts, leases, ttl).await?,
        Cmd::Compare(args) => return compare::run(args, cli.opts).await,
        Cmd::Floor { listen } => return floor::serve(&listen, cli.opts.val_size).await,
    };
    if cli.opts.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print();
    }
    if report.ops == 0 {
        anyhow::bail!("no operation succeeded");
    }
    Ok(())
}
