//! `cairn-chaos`: one seeded chaos run against a fresh local cluster (see README, docs/RELIABILITY.md).

use cairn_chaos::runner::{run_chaos, Config, Fault};
use clap::Parser;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cairn-chaos",
    about = "Kill, pause, partition, slow and replace cairn members and move their leadership under load; check the history is linearizable"
)]
struct Args {
    /// Seed of every random choice (printed on failure, to rerun).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Cluster size.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Keys shared by the clients.
    #[arg(long, default_value_t = 8)]
    keys: usize,
    /// How long the clients run.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Faults to inject (comma-separated; empty for none).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kill,pause,partition,loss,delay,replace,move-leader"
    )]
    faults: Vec<Fault>,
    /// Inject no faults at all.
    #[arg(long)]
    no_faults: bool,
    /// Time between faults.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    fault_interval: Duration,
    /// Serializable reads (a negative control: expected to FAIL under faults).
    #[arg(long)]
    serializable_reads: bool,
    /// Run the members with `--experimental-lease-reads`.
    #[arg(long)]
    lease_reads: bool,
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let cfg = Config {
        seed: a.seed,
        members: a.members,
        clients: a.clients,
        keys: a.keys,
        duration: a.duration,
        faults: if a.no_faults { vec![] } else { a.faults },
        fault_interval: a.fault_interval,
        serializable_reads: a.serializable_reads,
        lease_reads: a.lease_reads,
        ..Config::default()
    };
    let report = run_chaos(&cfg).await;
    print!("{report}");
    std::process::exit(if report.passed() { 0 } else { 1 });
}
