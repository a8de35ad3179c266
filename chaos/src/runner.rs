//! One chaos run: a cluster of real `cairn` processes, concurrent clients recording a
//! history, a nemesis injecting faults, then recovery and the checks.

use crate::checker::{self, Verdict};
use crate::history::{Call, Op, Outcome};
use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_api::etcdserverpb::{
    request_op, Compare, DeleteRangeRequest, HashKvRequest, PutRequest, RangeRequest, RequestOp, StatusRequest,
    TxnRequest,
};
use cairn_server::testing::Cluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// A fault the nemesis injects, one at a time, each healed before the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// kill -9 a member (the leader half of the time), restart it a moment later.
    Kill,
    /// SIGSTOP a member (the leader half of the time), SIGCONT it a moment later.
    Pause,
    /// Cut a minority (with the leader half of the time) off from the other members with
    /// iptables rules on their 127.x addresses (clients still reach every member), then heal.
    Partition,
    /// Drop 30% of the packets between a member and the others (iptables `statistic`).
    Loss,
}

/// iptables rules this run added, removed when healed or dropped.
#[derive(Default)]
struct Firewall {
    /// (from, to, probability of a drop: 1 for all).
    rules: Vec<(String, String, f64)>,
}

impl Firewall {
    fn iptables(action: &str, from: &str, to: &str, p: f64) -> std::io::Result<std::process::ExitStatus> {
        let mut cmd = std::process::Command::new("iptables");
        cmd.args([action, "INPUT", "-s", from, "-d", to]);
        if p < 1.0 {
            cmd.args(["-m", "statistic", "--mode", "random", "--probability", &format!("{p:.2}")]);
        }
        cmd.args(["-j", "DROP"]).stderr(std::process::Stdio::null()).status()
    }

    /// Whether this machine lets us add rules (root, iptables installed, netfilter).
    fn usable() -> Result<(), String> {
        let probe = ("127.254.254.1", "127.254.254.2");
        match Self::iptables("-I", probe.0, probe.1, 0.5) {
            Ok(s) if s.success() => {
                let _ = Self::iptables("-D", probe.0, probe.1, 0.5);
                Ok(())
            }
            Ok(s) => Err(format!("iptables exited with {s} (root and netfilter are needed)")),
            Err(e) => Err(format!("iptables: {e}")),
        }
    }

    /// Drop packets between `a` and `b` with probability `p` (1: all), both ways.
    fn cut(&mut self, a: &str, b: &str, p: f64) {
        for (from, to) in [(a, b), (b, a)] {
            if Self::iptables("-I", from, to, p).is_ok_and(|s| s.success()) {
                self.rules.push((from.to_string(), to.to_string(), p));
            }
        }
    }

    fn heal(&mut self) {
        for (from, to, p) in self.rules.drain(..) {
            let _ = Self::iptables("-D", &from, &to, p);
        }
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.heal();
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seeds every random choice (keys, operations, faults, victims).
    pub seed: u64,
    /// Cluster size.
    pub members: usize,
    /// Concurrent clients (spread over the members).
    pub clients: usize,
    /// Keys the clients share.
    pub keys: usize,
    /// How long the clients run.
    pub duration: Duration,
    /// Faults to choose from (none: a fault-free run).
    pub faults: Vec<Fault>,
    /// Time between faults (and how long each lasts, at most).
    pub fault_interval: Duration,
    /// A client gives up on a request after this long (its outcome is then unknown).
    pub op_timeout: Duration,
    /// Serializable reads (served from the member's own state): NOT linearizable under
    /// faults; the checker's negative control.
    pub serializable_reads: bool,
    /// Bound on the checker's search per key.
    pub check_budget: usize,
    /// Count a write nobody made as acknowledged (a self-test: the watch check must
    /// report it missing).
    pub phantom_write: bool,
    /// Clients that take a lock (etcd's Lock service, on a 3 s lease they do not keep
    /// alive) and write a key guarded by the lock key's create revision (the fencing token).
    pub lock_clients: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 1,
            members: 3,
            clients: 6,
            keys: 8,
            duration: Duration::from_secs(30),
            faults: vec![Fault::Kill, Fault::Pause, Fault::Partition, Fault::Loss],
            fault_interval: Duration::from_secs(4),
            op_timeout: Duration::from_secs(2),
            serializable_reads: false,
            check_budget: 2_000_000,
            phantom_write: false,
            lock_clients: 2,
        }
    }
}

/// What happened and what the checks found.
#[derive(Debug, Default)]
pub struct Report {
    /// The seed (to rerun).
    pub seed: u64,
    /// Operations recorded: total, ok, definitely failed, unknown.
    pub ops: (usize, usize, usize, usize),
    /// The faults injected, in order.
    pub faults: Vec<String>,
    /// Every problem found (empty: the run passed).
    pub problems: Vec<String>,
    /// Where the history and the members' logs were kept (when there were problems).
    pub kept: Option<PathBuf>,
    /// Why partitions were asked for but not injected (no root, no iptables).
    pub partitions_skipped: Option<String>,
    /// Writes made under the lock (checked for fencing).
    pub locked_writes: usize,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (total, ok, fail, info) = self.ops;
        writeln!(
            f,
            "seed {}: {total} ops ({ok} ok, {fail} failed, {info} unknown), {} writes under the lock",
            self.seed, self.locked_writes
        )?;
        writeln!(f, "faults: {}", if self.faults.is_empty() { "none".to_string() } else { self.faults.join(", ") })?;
        if let Some(why) = &self.partitions_skipped {
            writeln!(f, "PARTITIONS SKIPPED: {why}")?;
        }
        if self.problems.is_empty() {
            writeln!(
                f,
                "PASS: linearizable, revisions monotonic, members converged, every member's watch \
                 stream identical, ordered and complete, lock fencing held"
            )?;
        }
        for p in &self.problems {
            writeln!(f, "FAIL: {p}")?;
        }
        if let Some(k) = &self.kept {
            writeln!(f, "history and member logs kept in {}", k.display())?;
        }
        Ok(())
    }
}

async fn channel(url: &str) -> Option<Channel> {
    let e = Endpoint::from_shared(url.to_string()).ok()?.connect_timeout(Duration::from_millis(500)).tcp_nodelay(true);
    e.connect().await.ok()
}

/// The value a read returned (values are decimal u64 strings).
fn value_of(kvs: &[cairn_api::mvccpb::KeyValue]) -> Option<u64> {
    kvs.first().and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
}

/// Whether a failed request certainly did not apply: it never reached a member.
fn never_sent(s: &tonic::Status) -> bool {
    let m = s.message();
    s.code() == tonic::Code::Unavailable
        && (m.contains("tcp connect error")
            || m.contains("Connection refused")
            || m.contains("error trying to connect"))
}

/// One recorded operation and the header revision of its answer (0: none).
struct Recorded {
    op: Op,
    revision: i64,
}

struct Client {
    id: usize,
    url: String,
    kv: Option<KvClient<Channel>>,
    rng: StdRng,
    next_value: u64,
    /// The value this client last read per key: what its compare-and-sets expect.
    seen: std::collections::HashMap<String, Option<u64>>,
}

impl Client {
    async fn kv(&mut self) -> Option<KvClient<Channel>> {
        if self.kv.is_none() {
            self.kv = channel(&self.url).await.map(KvClient::new);
        }
        self.kv.clone()
    }

    /// Invoke one random operation and record how it ended.
    async fn step(&mut self, cfg: &Config, start: Instant) -> Recorded {
        let key = format!("k{}", self.rng.random_range(0..cfg.keys));
        let call = match self.rng.random_range(0..10) {
            0..=3 => Call::Read,
            4..=6 => {
                self.next_value += 1;
                Call::Write(((self.id as u64) << 40) | self.next_value)
            }
            7..=8 => {
                self.next_value += 1;
                let expect = self.seen.get(&key).copied().flatten();
                Call::Cas { expect, new: ((self.id as u64) << 40) | self.next_value }
            }
            _ => Call::Delete,
        };
        let invoked = start.elapsed().as_nanos() as u64;
        let result = match self.kv().await {
            None => Err(tonic::Status::unavailable("tcp connect error")),
            Some(kv) => {
                match tokio::time::timeout(cfg.op_timeout, run(kv, &key, &call, cfg.serializable_reads)).await {
                    Ok(r) => r,
                    Err(_) => Err(tonic::Status::deadline_exceeded("client timeout")),
                }
            }
        };
        let completed = start.elapsed().as_nanos() as u64;
        let (outcome, revision, completed) = match result {
            Ok((outcome, rev)) => {
                if let (Call::Read, Outcome::Ok(v)) = (&call, &outcome) {
                    self.seen.insert(key.clone(), *v);
                }
                (outcome, rev, completed)
            }
            Err(s) if never_sent(&s) || call == Call::Read => {
                if never_sent(&s) {
                    self.kv = None;
                }
                (Outcome::Fail, 0, completed)
            }
            Err(s) => {
                if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::DeadlineExceeded {
                    self.kv = None;
                }
                (Outcome::Info, 0, u64::MAX)
            }
        };
        Recorded { op: Op { client: self.id, key, call, outcome, invoked, completed }, revision }
    }
}

/// Send `call` on `key`; the outcome and the answer's revision.
async fn run(
    mut kv: KvClient<Channel>,
    key: &str,
    call: &Call,
    serializable: bool,
) -> Result<(Outcome, i64), tonic::Status> {
    let k = key.as_bytes().to_vec();
    let rev = |h: Option<cairn_api::etcdserverpb::ResponseHeader>| h.map_or(0, |h| h.revision);
    match call {
        Call::Read => {
            let r = kv.range(RangeRequest { key: k, serializable, ..Default::default() }).await?.into_inner();
            Ok((Outcome::Ok(value_of(&r.kvs)), rev(r.header)))
        }
        Call::Write(v) => {
            let r = kv.put(PutRequest { key: k, value: v.to_string().into_bytes(), ..Default::default() }).await?;
            Ok((Outcome::Ok(None), rev(r.into_inner().header)))
        }
        Call::Delete => {
            let r = kv.delete_range(DeleteRangeRequest { key: k, ..Default::default() }).await?;
            Ok((Outcome::Ok(None), rev(r.into_inner().header)))
        }
        Call::Cas { expect, new } => {
            let compare = match expect {
                Some(v) => Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Value as i32,
                    key: k.clone(),
                    target_union: Some(TargetUnion::Value(v.to_string().into_bytes())),
                    range_end: vec![],
                },
                None => Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Create as i32,
                    key: k.clone(),
                    target_union: Some(TargetUnion::CreateRevision(0)),
                    range_end: vec![],
                },
            };
            let put = PutRequest { key: k, value: new.to_string().into_bytes(), ..Default::default() };
            let txn = TxnRequest {
                compare: vec![compare],
                success: vec![RequestOp { request: Some(request_op::Request::RequestPut(put)) }],
                failure: vec![],
            };
            let r = kv.txn(txn).await?.into_inner();
            Ok((Outcome::Swapped(r.succeeded), rev(r.header)))
        }
    }
}

/// Take the lock `kz-lock` on a fresh 3 s lease (not kept alive, so a holder that
/// stalls loses it), write `kz-fenced` only if the lock key still has the create revision it
/// had when taken (the fencing token), release. The (token, revision of the write) if the
/// write happened.
async fn locked_write(url: &str, client: usize) -> Result<Option<(i64, i64)>, tonic::Status> {
    use cairn_api::etcdserverpb::lease_client::LeaseClient;
    use cairn_api::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
    use cairn_api::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
    let ch = channel(url).await.ok_or_else(|| tonic::Status::unavailable("tcp connect error"))?;
    let lease = LeaseClient::new(ch.clone()).lease_grant(LeaseGrantRequest { ttl: 3, id: 0 }).await?.into_inner().id;
    let key =
        LockClient::new(ch.clone()).lock(LockRequest { name: b"kz-lock".to_vec(), lease }).await?.into_inner().key;
    let mut kv = KvClient::new(ch.clone());
    let held = kv.range(RangeRequest { key: key.clone(), ..Default::default() }).await?.into_inner();
    let Some(token) = held.kvs.first().map(|kv| kv.create_revision) else {
        return Ok(None);
    };
    let compare = Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::CreateRevision(token)),
        range_end: vec![],
    };
    let put = PutRequest {
        key: b"kz-fenced".to_vec(),
        value: format!("{token}:{client}").into_bytes(),
        ..Default::default()
    };
    let txn = TxnRequest {
        compare: vec![compare],
        success: vec![RequestOp { request: Some(request_op::Request::RequestPut(put)) }],
        failure: vec![],
    };
    let r = kv.txn(txn).await?.into_inner();
    let _ = LockClient::new(ch.clone()).unlock(UnlockRequest { key }).await;
    let _ = LeaseClient::new(ch).lease_revoke(LeaseRevokeRequest { id: lease }).await;
    Ok(r.succeeded.then(|| (token, r.header.map_or(0, |h| h.revision))))
}

/// The index of the member that leads, if one answers.
async fn leader(c: &Cluster) -> Option<usize> {
    for (i, m) in c.members.iter().enumerate() {
        let Some(ch) = channel(&m.client_url).await else { continue };
        let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(500), MaintenanceClient::new(ch).status(StatusRequest {})).await
        else {
            continue;
        };
        let s = s.into_inner();
        if s.leader != 0 && s.header.is_some_and(|h| h.member_id == s.leader) {
            return Some(i);
        }
    }
    None
}

/// Inject faults until `until`, healing each before the next; the faults injected.
async fn nemesis(cluster: Arc<tokio::sync::Mutex<Cluster>>, cfg: Config, until: Instant) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut done = Vec::new();
    let mut firewall = Firewall::default();
    if cfg.faults.is_empty() {
        return done;
    }
    loop {
        let wait = cfg.fault_interval / 2
            + Duration::from_millis(rng.random_range(0..=cfg.fault_interval.as_millis() as u64 / 2));
        if Instant::now() + wait >= until {
            return done;
        }
        tokio::time::sleep(wait).await;
        let fault = cfg.faults[rng.random_range(0..cfg.faults.len())];
        let target_leader = rng.random_bool(0.5);
        let lasts = Duration::from_millis(rng.random_range(300..=cfg.fault_interval.as_millis().max(301) as u64 / 2));
        let mut c = cluster.lock().await;
        let victim = match (target_leader, leader(&c).await) {
            (true, Some(l)) => l,
            _ => rng.random_range(0..c.members.len()),
        };
        let name = c.members[victim].name.clone();
        match fault {
            Fault::Kill => {
                c.members[victim].kill();
                done.push(format!("kill {name} ({} ms)", lasts.as_millis()));
                tokio::time::sleep(lasts).await;
                c.members[victim].start();
            }
            Fault::Pause => {
                c.members[victim].pause();
                done.push(format!("pause {name} ({} ms)", lasts.as_millis()));
                tokio::time::sleep(lasts).await;
                c.members[victim].resume();
            }
            Fault::Partition => {
                // The victim and, in larger clusters, one more: always a minority.
                let n = c.members.len();
                let mut side = vec![victim];
                if n >= 5 {
                    side.push((victim + 1 + rng.random_range(0..n - 1)) % n);
                }
                let hosts: Vec<String> = c.members.iter().map(|m| m.host()).collect();
                for &v in &side {
                    for o in (0..n).filter(|o| !side.contains(o)) {
                        firewall.cut(&hosts[v], &hosts[o], 1.0);
                    }
                }
                let names: Vec<&str> = side.iter().map(|&i| c.members[i].name.as_str()).collect();
                done.push(format!("partition {} ({} ms)", names.join("+"), lasts.as_millis()));
                tokio::time::sleep(lasts).await;
                firewall.heal();
            }
            Fault::Loss => {
                let hosts: Vec<String> = c.members.iter().map(|m| m.host()).collect();
                for o in (0..hosts.len()).filter(|&o| o != victim) {
                    firewall.cut(&hosts[victim], &hosts[o], 0.3);
                }
                done.push(format!("30% loss at {name} ({} ms)", lasts.as_millis()));
                tokio::time::sleep(lasts).await;
                firewall.heal();
            }
        }
    }
}

/// Run `cfg` end to end: cluster up, clients and nemesis for `duration`, recovery, checks.
pub async fn run_chaos(cfg: &Config) -> Report {
    let mut cfg = cfg.clone();
    let mut skipped = None;
    if cfg.faults.iter().any(|f| matches!(f, Fault::Partition | Fault::Loss)) {
        if let Err(why) = Firewall::usable() {
            eprintln!("\n*** cairn-chaos: SKIPPING PARTITIONS AND PACKET LOSS: {why} ***\n");
            cfg.faults.retain(|f| !matches!(f, Fault::Partition | Fault::Loss));
            skipped = Some(why);
        }
    }
    let cfg = &cfg;
    let cluster = Cluster::start_on_own_addresses(cfg.members, &["--log-level", "info"]).await;
    let urls: Vec<String> = cluster.members.iter().map(|m| m.client_url.clone()).collect();
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let start = Instant::now();
    let until = start + cfg.duration;
    let recorded = Arc::new(Mutex::new(Vec::<Recorded>::new()));
    let mut tasks = Vec::new();
    for id in 0..cfg.clients {
        let (cfg, recorded) = (cfg.clone(), recorded.clone());
        let mut client = Client {
            id,
            url: urls[id % urls.len()].clone(),
            kv: None,
            rng: StdRng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003).wrapping_add(id as u64)),
            next_value: 0,
            seen: Default::default(),
        };
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let r = client.step(&cfg, start).await;
                let failed_fast = r.op.outcome == Outcome::Fail;
                recorded.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                if failed_fast {
                    // A member that is down: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    let fenced = Arc::new(Mutex::new(Vec::<(i64, i64)>::new()));
    for id in 0..cfg.lock_clients {
        let (cfg, urls, fenced) = (cfg.clone(), urls.clone(), fenced.clone());
        tasks.push(tokio::spawn(async move {
            let mut turn = id;
            while Instant::now() < until {
                let url = &urls[turn % urls.len()];
                turn += 1;
                match tokio::time::timeout(cfg.op_timeout * 3, locked_write(url, id)).await {
                    Ok(Ok(Some(w))) => fenced.lock().unwrap_or_else(|p| p.into_inner()).push(w),
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }));
    }
    let faults = nemesis(cluster.clone(), cfg.clone(), until).await;
    for t in tasks {
        let _ = t.await;
    }
    let mut report = Report { seed: cfg.seed, faults, partitions_skipped: skipped, ..Default::default() };

    // Recovery: everything running, every member caught up; then read every key from every
    // member (linearizable reads, part of the history) and compare the members' hashes.
    let mut c = cluster.lock().await;
    for m in &mut c.members {
        m.resume();
        if !m.is_running() {
            m.start();
        }
    }
    c.start_all().await;
    let mut history: Vec<Recorded> = std::mem::take(&mut *recorded.lock().unwrap_or_else(|p| p.into_inner()));
    for (i, url) in urls.iter().enumerate() {
        for k in 0..cfg.keys {
            let key = format!("k{k}");
            let invoked = start.elapsed().as_nanos() as u64;
            let mut got = None;
            for _ in 0..50 {
                if let Some(ch) = channel(url).await {
                    let req = RangeRequest { key: key.clone().into_bytes(), ..Default::default() };
                    if let Ok(r) = KvClient::new(ch).range(req).await {
                        got = Some(r.into_inner());
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let Some(r) = got else {
                report.problems.push(format!("member {i} did not answer a read of {key} after recovery"));
                continue;
            };
            let completed = start.elapsed().as_nanos() as u64;
            let op = Op {
                client: cfg.clients + i,
                key,
                call: Call::Read,
                outcome: Outcome::Ok(value_of(&r.kvs)),
                invoked,
                completed,
            };
            history.push(Recorded { op, revision: r.header.map_or(0, |h| h.revision) });
        }
    }
    if let Some(p) = converged(&urls).await {
        report.problems.push(p);
    }
    let mut acked: Vec<(String, u64)> = history
        .iter()
        .filter_map(|r| match (&r.op.call, &r.op.outcome) {
            (Call::Write(v), Outcome::Ok(_)) => Some((r.op.key.clone(), *v)),
            (Call::Cas { new, .. }, Outcome::Swapped(true)) => Some((r.op.key.clone(), *new)),
            _ => None,
        })
        .collect();
    if cfg.phantom_write {
        acked.push(("k0".into(), u64::MAX));
    }
    report.problems.extend(watch_streams(&urls, &acked).await);

    let ops: Vec<Op> = history.iter().map(|r| r.op.clone()).collect();
    let revisions: Vec<i64> = history.iter().map(|r| r.revision).collect();
    let count = |o: fn(&Outcome) -> bool| ops.iter().filter(|op| o(&op.outcome)).count();
    report.ops = (
        ops.len(),
        count(|o| matches!(o, Outcome::Ok(_) | Outcome::Swapped(_))),
        count(|o| *o == Outcome::Fail),
        count(|o| *o == Outcome::Info),
    );
    for (key, verdict) in checker::linearizable(&ops, cfg.check_budget) {
        match verdict {
            Verdict::NotLinearizable { around } => {
                let lines: Vec<String> = around.iter().take(20).map(|o| format!("    {o:?}")).collect();
                report.problems.push(format!(
                    "key {key} is not linearizable; around the first op that fits nowhere:\n{}",
                    lines.join("\n")
                ));
            }
            Verdict::Unknown(states) => {
                report.problems.push(format!("key {key}: checker gave up after {states} states"));
            }
        }
    }
    if let Err(e) = checker::revisions_monotonic(&ops, &revisions) {
        report.problems.push(e);
    }
    let mut fenced = std::mem::take(&mut *fenced.lock().unwrap_or_else(|p| p.into_inner()));
    if let Err(e) = checker::fencing(&mut fenced) {
        report.problems.push(e);
    }
    report.locked_writes = fenced.len();
    if !report.problems.is_empty() {
        report.kept = keep(&c, &ops, cfg.seed);
    }
    report
}

/// Whether every member reports the same HashKV at the same revision (waiting for
/// followers to catch up); a problem if not.
async fn converged(urls: &[String]) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut hashes = Vec::new();
        let mut revision = 0;
        for url in urls {
            let Some(ch) = channel(url).await else { break };
            let Ok(s) = MaintenanceClient::new(ch.clone()).status(StatusRequest {}).await else { break };
            let rev = s.into_inner().header.map_or(0, |h| h.revision);
            revision = if revision == 0 { rev } else { revision.min(rev) };
            hashes.push(ch);
        }
        if hashes.len() == urls.len() && revision > 0 {
            let mut seen = Vec::new();
            for ch in hashes {
                match MaintenanceClient::new(ch).hash_kv(HashKvRequest { revision }).await {
                    Ok(h) => seen.push(h.into_inner().hash),
                    Err(e) => seen.push(u32::MAX - e.code() as u32),
                }
            }
            if seen.windows(2).all(|w| w[0] == w[1]) {
                return None;
            }
            last = format!("HashKV at revision {revision} differs between members: {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Some(if last.is_empty() { "members did not all answer Status after recovery".into() } else { last })
}

/// Every event under the test's keys (`k...`, the lock's `kz-` keys included, so every
/// revision is one of them) from revision 1, as one member's watch delivers it:
/// (revision, key, value or None for a delete).
async fn replay(url: &str) -> Result<Vec<(i64, String, Option<u64>)>, String> {
    use cairn_api::etcdserverpb::watch_client::WatchClient;
    use cairn_api::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest};
    let ch = channel(url).await.ok_or_else(|| format!("{url}: no connection"))?;
    let status = MaintenanceClient::new(ch.clone()).status(StatusRequest {}).await.map_err(|e| e.to_string())?;
    let until = status.into_inner().header.map_or(0, |h| h.revision);
    let create =
        WatchCreateRequest { key: b"k".to_vec(), range_end: b"l".to_vec(), start_revision: 1, ..Default::default() };
    let req = WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) };
    let mut stream = WatchClient::new(ch)
        .watch(tokio_stream_once(req))
        .await
        .map_err(|e| format!("{url}: watch: {e}"))?
        .into_inner();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while events.last().map_or(until > 1, |(rev, _, _): &(i64, String, Option<u64>)| *rev < until) {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, stream.message()).await.map_err(|_| format!("{url}: watch stalled"))?;
        let Some(resp) = msg.map_err(|e| format!("{url}: watch: {e}"))? else {
            return Err(format!("{url}: watch ended"));
        };
        for e in resp.events {
            let kv = e.kv.unwrap_or_default();
            let value = (e.r#type == 0).then(|| value_of(std::slice::from_ref(&kv))).flatten();
            events.push((kv.mod_revision, String::from_utf8_lossy(&kv.key).into_owned(), value));
        }
    }
    Ok(events)
}

/// A request stream of one message that stays open (closing it would end the watch).
fn tokio_stream_once<T: Send + 'static>(first: T) -> impl tokio_stream::Stream<Item = T> + Send + 'static {
    use tokio_stream::StreamExt;
    tokio_stream::once(first).chain(tokio_stream::pending())
}

/// Watch guarantees, replayed from revision 1 on every member after recovery: each stream
/// is in revision order without duplicates, every member delivers the same stream, and
/// every acknowledged write (`acked`: key and value) is in it.
async fn watch_streams(urls: &[String], acked: &[(String, u64)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut first: Option<Vec<(i64, String, Option<u64>)>> = None;
    for (i, url) in urls.iter().enumerate() {
        let events = match replay(url).await {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("member {i}: {e}"));
                continue;
            }
        };
        if let Some(w) = events.windows(2).find(|w| (w[1].0, &w[1].1) <= (w[0].0, &w[0].1)) {
            problems.push(format!("member {i}'s watch went out of order or repeated: {:?} then {:?}", w[0], w[1]));
        }
        match &first {
            None => {
                let puts: std::collections::HashSet<(&str, u64)> =
                    events.iter().filter_map(|(_, k, v)| v.map(|v| (k.as_str(), v))).collect();
                let missing: Vec<_> = acked.iter().filter(|(k, v)| !puts.contains(&(k.as_str(), *v))).take(5).collect();
                if !missing.is_empty() {
                    problems.push(format!("acknowledged writes missing from the watch history: {missing:?}"));
                }
                first = Some(events);
            }
            Some(f) if *f != events => {
                let at = f.iter().zip(&events).position(|(a, b)| a != b).unwrap_or(f.len().min(events.len()));
                problems.push(format!(
                    "member {i}'s watch stream differs from member 0's at event {at} ({} vs {} events)",
                    events.len(),
                    f.len()
                ));
            }
            Some(_) => {}
        }
    }
    problems
}

/// Copy the history and the members' logs somewhere that outlives the run.
fn keep(c: &Cluster, ops: &[Op], seed: u64) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cairn-chaos-seed{seed}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let json = serde_json::to_string_pretty(ops).ok()?;
    std::fs::write(dir.join("history.json"), json).ok()?;
    for m in &c.members {
        let _ = std::fs::copy(c.dir().join(format!("{}.log", m.name)), dir.join(format!("{}.log", m.name)));
    }
    Some(dir)
}
