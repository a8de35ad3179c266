//! `cairnctl check perf`: etcdctl's pass/fail load check. Puts of 256-byte keys and 1 KiB
//! values under a prefix at the load's rate from the load's number of clients for a
//! minute, then PASS or FAIL on throughput (above 90% of the rate), the slowest request
//! (at most 0.5 s) and the standard deviation (at most 0.1 s), as etcdctl judges them; the
//! keys are deleted afterwards.

use crate::{BadArgs, Cli};
use clap::{Args, Subcommand, ValueEnum};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum CheckCmd {
    /// Check the cluster's write performance under a load (etcdctl's `check perf`): exit
    /// code 0 when every check passes, 1 otherwise.
    Perf(PerfArgs),
}

/// etcdctl's workload models: rate of puts per second and clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Load {
    /// 150 puts/s from 50 clients.
    #[value(name = "s", alias = "small")]
    Small,
    /// 1,000 puts/s from 200 clients.
    #[value(name = "m", alias = "medium")]
    Medium,
    /// 8,000 puts/s from 500 clients.
    #[value(name = "l", alias = "large")]
    Large,
    /// 15,000 puts/s from 1,000 clients.
    #[value(name = "xl", alias = "xLarge")]
    XLarge,
}

impl Load {
    fn rate_and_clients(self) -> (u32, usize) {
        match self {
            Load::Small => (150, 50),
            Load::Medium => (1000, 200),
            Load::Large => (8000, 500),
            Load::XLarge => (15000, 1000),
        }
    }
}

#[derive(Args)]
pub struct PerfArgs {
    /// The workload model.
    #[arg(long, value_enum, default_value = "s")]
    load: Load,
    /// The prefix the check writes under (it must hold no keys).
    #[arg(long, default_value = "/etcdctl-check-perf/")]
    prefix: String,
    /// Compact the store to the last revision when done.
    #[arg(long)]
    auto_compact: bool,
    /// Defragment every endpoint when done.
    #[arg(long)]
    auto_defrag: bool,
    /// How long the load runs (etcdctl: always a minute).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

/// Latencies and errors of the puts.
#[derive(Default)]
struct Tally {
    latencies: Vec<f64>,
    errors: std::collections::BTreeMap<String, usize>,
}

pub async fn check(cli: &Cli, cmd: &CheckCmd) -> anyhow::Result<()> {
    let CheckCmd::Perf(a) = cmd;
    let (rate, clients) = a.load.rate_and_clients();
    let first = cli.client().await?;
    let existing = first.get(a.prefix.as_str(), cairn_sdk::GetOptions::new().with_prefix().with_limit(1)).await?;
    if !existing.kvs.is_empty() {
        return Err(BadArgs(format!(
            "prefix {:?} has keys. Delete with 'cairnctl del --prefix {}' first",
            a.prefix, a.prefix
        ))
        .into());
    }
    let mut pool = vec![first.clone()];
    for _ in 1..clients {
        pool.push(cli.client().await?);
    }

    let bar = indicatif::ProgressBar::new(a.duration.as_secs().max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{pos} / {len} [{bar:40}] {percent}% {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let tally = Arc::new(Mutex::new(Tally::default()));
    // At most one put in flight per client, as etcdctl's workers.
    let slots = Arc::new(tokio::sync::Semaphore::new(clients));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let start = Instant::now();
    let value = vec![0u8; 1024];
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0usize;
    while start.elapsed() < a.duration {
        ticks.tick().await;
        bar.set_position(start.elapsed().as_secs());
        let Ok(slot) = slots.clone().acquire_owned().await else { break };
        let mut key = a.prefix.clone().into_bytes();
        let mut suffix = [0u8; 256];
        suffix[..8].copy_from_slice(&rand::random::<u64>().to_le_bytes());
        key.extend_from_slice(&suffix);
        let (c, tally, value) = (pool[n % clients].clone(), tally.clone(), value.clone());
        n += 1;
        tasks.spawn(async move {
            let sent = Instant::now();
            let r = c.put(key, value, None).await;
            let took = sent.elapsed().as_secs_f64();
            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
            t.latencies.push(took);
            if let Err(e) = r {
                *t.errors.entry(e.to_string()).or_default() += 1;
            }
            drop(slot);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // Clean up as etcdctl: delete the keys, then compact and defragment if asked.
    let deleted = first.delete(a.prefix.as_str(), cairn_sdk::DeleteOptions::new().with_prefix()).await?;
    if a.auto_compact {
        first.compact(deleted.header.revision, true).await?;
    }
    if a.auto_defrag {
        for ep in first.endpoints() {
            cli.client_to(std::slice::from_ref(&ep)).await?.defragment().await?;
        }
    }

    let t = tally.lock().unwrap_or_else(|p| p.into_inner());
    let ok_count = t.latencies.len() - t.errors.values().sum::<usize>();
    let rps = ok_count as f64 / elapsed;
    let slowest = t.latencies.iter().copied().fold(0.0, f64::max);
    let mean = t.latencies.iter().sum::<f64>() / t.latencies.len().max(1) as f64;
    let var = t.latencies.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / t.latencies.len().max(1) as f64;
    let stddev = var.sqrt();
    let mut ok = true;
    if !t.errors.is_empty() {
        println!("FAIL: too many errors");
        for (e, n) in &t.errors {
            println!("FAIL: ERROR({e}) -> {n}");
        }
        ok = false;
    }
    if rps / f64::from(rate) <= 0.9 {
        println!("FAIL: Throughput too low: {} writes/s", rps as i64 + 1);
        ok = false;
    } else {
        println!("PASS: Throughput is {} writes/s", rps as i64 + 1);
    }
    if slowest > 0.5 {
        println!("Slowest request took too long: {slowest:.6}s");
        ok = false;
    } else {
        println!("PASS: Slowest request took {slowest:.6}s");
    }
    if stddev > 0.1 {
        println!("Stddev too high: {stddev:.6}s");
        ok = false;
    } else {
        println!("PASS: Stddev is {stddev:.6}s");
    }
    if ok {
        println!("PASS");
        Ok(())
    } else {
        println!("FAIL");
        std::process::exit(1)
    }
}
