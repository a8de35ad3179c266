//! One chaos run: a cluster of real `cairn` processes, concurrent clients recording a
//! history, a nemesis injecting faults, then recovery and the checks.

use crate::checker::{self, Verdict};
use crate::delay::{Delays, Front};
use crate::history::{elapsed_ns, Call, Op, Outcome};
use crate::watch::Live;
use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_api::etcdserverpb::{
    request_op, Compare, DeleteRangeRequest, HashKvRequest, PutRequest, RangeRequest, RequestOp, StatusRequest,
    TxnRequest,
};
use cairn_testing::Cluster;
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
    /// Delay every byte to and from a member's peers by 20-250 ms each way (the relays in
    /// front of the peer ports, [`crate::delay`]).
    Delay,
    /// Replace a member, as an operator replaces a machine: `member remove` (the member
    /// stops itself), wipe its data, run one member short for a moment, `member add` on the
    /// same peer URL (every other time as a learner, the first time included, promoted once
    /// in sync), start it as a new member that catches up from the others.
    Replace,
    /// Hand leadership to another member (etcd's MoveLeader, sent to the leader) under load:
    /// the leader pauses proposals and reads, lets its followers' leases lapse and has the
    /// transferee campaign. Not a failure, but the path where two members may both believe
    /// they lead for a moment.
    MoveLeader,
}

/// iptables rules this run added, removed when healed or dropped.
#[derive(Default)]
pub struct Firewall {
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
    pub fn usable() -> Result<(), String> {
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
    pub fn cut(&mut self, a: &str, b: &str, p: f64) {
        for (from, to) in [(a, b), (b, a)] {
            if Self::iptables("-I", from, to, p).is_ok_and(|s| s.success()) {
                self.rules.push((from.to_string(), to.to_string(), p));
            }
        }
    }

    /// Remove every rule added.
    pub fn heal(&mut self) {
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
    /// Members serve linearizable reads under a leader lease (`--experimental-lease-reads`).
    pub lease_reads: bool,
    /// Bound on the checker's search per key.
    pub check_budget: usize,
    /// Count a write nobody made as acknowledged (a self-test: the watch check must
    /// report it missing).
    pub phantom_write: bool,
    /// Clients that take a lock (etcd's Lock service, on a 3 s lease they do not keep
    /// alive) and write a key guarded by the lock key's create revision (the fencing token).
    pub lock_clients: usize,
    /// Clients that put keys on short leases and watch them expire ([`crate::lease`]).
    pub lease_clients: usize,
    /// Record the lease clients' TTLs as three times what was granted (a self-test: the
    /// lease check must report early expiries).
    pub overstate_lease_ttl: bool,
    /// Drop one event from member 0's live watch stream (a self-test: the watch check must
    /// report the gap).
    pub drop_live_event: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 1,
            members: 3,
            clients: 6,
            keys: 8,
            duration: Duration::from_secs(30),
            faults: vec![
                Fault::Kill,
                Fault::Pause,
                Fault::Partition,
                Fault::Loss,
                Fault::Delay,
                Fault::Replace,
                Fault::MoveLeader,
            ],
            fault_interval: Duration::from_secs(4),
            op_timeout: Duration::from_secs(2),
            serializable_reads: false,
            lease_reads: false,
            check_budget: 2_000_000,
            phantom_write: false,
            lock_clients: 2,
            lease_clients: 2,
            overstate_lease_ttl: false,
            drop_live_event: false,
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
    /// Leases granted, used and watched to expiry.
    pub leases: usize,
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
            "seed {}: {total} ops ({ok} ok, {fail} failed, {info} unknown), {} writes under the lock, {} leases",
            self.seed, self.locked_writes, self.leases
        )?;
        writeln!(f, "faults: {}", if self.faults.is_empty() { "none".to_string() } else { self.faults.join(", ") })?;
        if let Some(why) = &self.partitions_skipped {
            writeln!(f, "PARTITIONS SKIPPED: {why}")?;
        }
        if self.problems.is_empty() {
            writeln!(
                f,
                "PASS: linearizable, revisions monotonic, members converged, every member's watch \
                 stream identical, ordered and complete (live ones too), lock fencing held, no lease \
                 expired early or outlived its TTL"
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

pub(crate) async fn channel(url: &str) -> Option<Channel> {
    let e = Endpoint::from_shared(url.to_string()).ok()?.connect_timeout(Duration::from_millis(500)).tcp_nodelay(true);
    e.connect().await.ok()
}

/// The value a read returned (values are decimal u64 strings).
pub(crate) fn value_of(kvs: &[cairn_api::mvccpb::KeyValue]) -> Option<u64> {
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
        let invoked = elapsed_ns(start);
        let result = match self.kv().await {
            None => Err(tonic::Status::unavailable("tcp connect error")),
            Some(kv) => {
                match tokio::time::timeout(cfg.op_timeout, run(kv, &key, &call, cfg.serializable_reads)).await {
                    Ok(r) => r,
                    Err(_) => Err(tonic::Status::deadline_exceeded("client timeout")),
                }
            }
        };
        let completed = elapsed_ns(start);
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

/// The member's Status, if it answers within half a second.
async fn status(url: &str) -> Option<cairn_api::etcdserverpb::StatusResponse> {
    let ch = channel(url).await?;
    let mut client = MaintenanceClient::new(ch);
    let answer = tokio::time::timeout(Duration::from_millis(500), client.status(StatusRequest {})).await;
    Some(answer.ok()?.ok()?.into_inner())
}

/// The index of the member that leads, if one answers.
async fn leader(c: &Cluster) -> Option<usize> {
    for (i, m) in c.members.iter().enumerate() {
        let Some(s) = status(&m.client_url).await else { continue };
        if s.leader != 0 && s.header.is_some_and(|h| h.member_id == s.leader) {
            return Some(i);
        }
    }
    None
}

/// What the nemesis did.
struct Nemesis {
    /// The faults injected, in order.
    faults: Vec<String>,
    /// When each lasted (ns since the run started).
    windows: Vec<(u64, u64)>,
    /// Operations of the nemesis itself that should have worked and did not.
    problems: Vec<String>,
}

/// Replace member `victim` with a new member on the same URLs (see [`Fault::Replace`]),
/// the cluster running one member short for `short` in between, and wait until the new
/// member serves; `as_learner`: added as a learner and promoted once it is in sync, as
/// etcd advises for a new member of a loaded cluster.
async fn replace(c: &mut Cluster, victim: usize, short: Duration, as_learner: bool) -> Result<(), String> {
    use cairn_api::etcdserverpb::cluster_client::ClusterClient;
    use cairn_api::etcdserverpb::{MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest};
    let deadline = Instant::now() + Duration::from_secs(20);
    let others: Vec<String> =
        (0..c.members.len()).filter(|&i| i != victim).map(|i| c.members[i].client_url.clone()).collect();
    let victim_url = c.members[victim].client_url.clone();
    let id = status(&victim_url)
        .await
        .and_then(|s| s.header)
        .map(|h| h.member_id)
        .ok_or("the member to replace does not answer Status")?;
    // Remove it, through any other member, until done (NotFound: an earlier try applied).
    let mut turn = 0;
    loop {
        let url = &others[turn % others.len()];
        turn += 1;
        if let Some(ch) = channel(url).await {
            match ClusterClient::new(ch).member_remove(MemberRemoveRequest { id }).await {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::NotFound => break,
                Err(s) if Instant::now() >= deadline => return Err(format!("member remove: {s}")),
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A removed member stops by itself.
    let m = &mut c.members[victim];
    if !m.wait_exit(Duration::from_secs(10)).await {
        m.kill();
        return Err("the removed member kept running for 10 s".into());
    }
    let initial: Vec<String> = c.members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect();
    let peer_url = c.members[victim].peer_url.clone();
    c.members[victim].rejoin_as_new(&initial.join(",")).map_err(|e| format!("wiping the data: {e}"))?;
    tokio::time::sleep(short).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = &others[turn % others.len()];
        turn += 1;
        if let Some(ch) = channel(url).await {
            let add = MemberAddRequest { peer_ur_ls: vec![peer_url.clone()], is_learner: as_learner };
            match ClusterClient::new(ch).member_add(add).await {
                Ok(_) => break,
                // An earlier try applied.
                Err(s) if s.message().contains("Peer URLs already exists") => break,
                Err(s) if Instant::now() >= deadline => return Err(format!("member add: {s}")),
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.members[victim].start();
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_id = loop {
        if let Some(s) = status(&victim_url).await {
            match s.header {
                Some(h) if s.leader != 0 && h.member_id != id => break h.member_id,
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("the new member did not serve within 30 s; log:\n{}", c.members[victim].log()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if !as_learner {
        return Ok(());
    }
    // Promote it once it is in sync (refused until then), through any other member; done
    // once the member list shows it as a voter (an earlier try may have applied unanswered).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = "no member answered for 30 s".to_string();
    loop {
        let url = &others[turn % others.len()];
        turn += 1;
        if let Some(ch) = channel(url).await {
            let mut client = ClusterClient::new(ch);
            match client.member_promote(MemberPromoteRequest { id: new_id }).await {
                Ok(_) => return Ok(()),
                Err(s) => last = s.to_string(),
            }
            let list = client.member_list(MemberListRequest { linearizable: true }).await;
            if list.is_ok_and(|r| r.into_inner().members.iter().any(|m| m.id == new_id && !m.is_learner)) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("member promote: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ask the leader to hand leadership to member `to` (the next one if `to` leads); what
/// happened, in words. A refusal (the target not caught up in time, a leader change on the
/// way) is not a problem: only the histories judge.
async fn move_leader(c: &Cluster, to: usize) -> String {
    use cairn_api::etcdserverpb::MoveLeaderRequest;
    let Some(from) = leader(c).await else { return "no leader answered".into() };
    // Drawn as the leader: the next member instead.
    let to = if from == to { (to + 1) % c.members.len() } else { to };
    let target_id = match status(&c.members[to].client_url).await.and_then(|s| s.header) {
        Some(h) => h.member_id,
        None => return "it does not answer Status".into(),
    };
    let Some(ch) = channel(&c.members[from].client_url).await else { return "the leader is unreachable".into() };
    let asked = Instant::now();
    let mut request = tonic::Request::new(MoveLeaderRequest { target_id });
    request.set_timeout(Duration::from_secs(10));
    match MaintenanceClient::new(ch).move_leader(request).await {
        Ok(_) => format!("{} to {} in {} ms", c.members[from].name, c.members[to].name, asked.elapsed().as_millis()),
        Err(s) => format!("{} to {} refused: {}", c.members[from].name, c.members[to].name, s.message()),
    }
}

/// Inject faults until `until`, healing each before the next; the faults injected.
async fn nemesis(
    cluster: Arc<tokio::sync::Mutex<Cluster>>,
    delays: Delays,
    cfg: Config,
    start: Instant,
    until: Instant,
) -> Nemesis {
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x9e37_79b9_7f4a_7c15);
    let (mut done, mut windows, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    let mut firewall = Firewall::default();
    // Replacements alternate: as a learner (promoted once in sync), then as a voter.
    let mut learner_next = true;
    if cfg.faults.is_empty() {
        return Nemesis { faults: done, windows, problems };
    }
    loop {
        let wait = cfg.fault_interval / 2
            + Duration::from_millis(rng.random_range(0..=cfg.fault_interval.as_millis() as u64 / 2));
        if Instant::now() + wait >= until {
            return Nemesis { faults: done, windows, problems };
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
        let began = elapsed_ns(start);
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
            Fault::Replace => {
                let as_learner = learner_next;
                learner_next = !learner_next;
                let how = if as_learner { ", added as a learner, then promoted" } else { "" };
                done.push(format!("replace {name} ({} ms one member short{how})", lasts.as_millis()));
                if let Err(e) = replace(&mut c, victim, lasts, as_learner).await {
                    done.push(format!("REPLACING {name} FAILED: {e}"));
                    problems.push(format!("replacing {name} (member remove, wipe, member add, start) failed: {e}"));
                }
            }
            Fault::MoveLeader => {
                done.push(format!("move leader: {}", move_leader(&c, victim).await));
            }
            Fault::Delay => {
                let by = Duration::from_millis(rng.random_range(20..=250));
                if let Ok(ip) = c.members[victim].host().parse() {
                    delays.set(ip, by);
                }
                done.push(format!("{} ms delay at {name} ({} ms)", by.as_millis(), lasts.as_millis()));
                tokio::time::sleep(lasts).await;
                delays.clear();
            }
        }
        windows.push((began, elapsed_ns(start)));
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
    // Members talk to each other through relays (which add the Delay fault's latency):
    // member i listens for peers on 127.a.b.(10+i) and advertises 127.a.b.(40+i).
    // Lease checkpoints every second (etcd's default is 5 minutes): leader changes then
    // restart lease clocks from recent checkpoints, racing keepalives.
    let mut flags = vec!["--log-level", "info", "--lease-checkpoint-interval", "1s"];
    if cfg.lease_reads {
        flags.push("--experimental-lease-reads");
    }
    let mut cluster = Cluster::prepare_on_own_addresses(cfg.members, &flags, front_url);
    let delays = Delays::default();
    let mut fronts = Vec::new();
    for m in &cluster.members {
        let (Some(front), Some(listen)) = (socket_addr(&m.peer_url), socket_addr(&m.listen_peer_url)) else {
            panic!("peer URLs {} / {} are not ip:port", m.peer_url, m.listen_peer_url);
        };
        let relay = Front::start(front, listen, delays.clone()).await;
        fronts.push(relay.unwrap_or_else(|e| panic!("relay on {front}: {e}")));
    }
    cluster.start_all().await;
    let urls: Vec<String> = cluster.members.iter().map(|m| m.client_url.clone()).collect();
    let live: Vec<Live> = urls.iter().map(|u| Live::start(u.clone())).collect();
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
    let leases = Arc::new(Mutex::new(Vec::<crate::lease::LeaseRun>::new()));
    for id in 0..cfg.lease_clients {
        let url = urls[(id + 1) % urls.len()].clone();
        let seed = cfg.seed.wrapping_mul(7_919).wrapping_add(id as u64);
        tasks.push(tokio::spawn(crate::lease::client(url, id, seed, start, until, cfg.op_timeout, leases.clone())));
    }
    let Nemesis { faults, windows, problems: nemesis_problems } =
        nemesis(cluster.clone(), delays.clone(), cfg.clone(), start, until).await;
    for t in tasks {
        let _ = t.await;
    }
    // Said now as well: if recovery below cannot bring a member back, it panics before the
    // report is printed, and these usually say why.
    for p in &nemesis_problems {
        eprintln!("cairn-chaos: nemesis problem: {p}");
    }
    let mut report = Report { seed: cfg.seed, faults, partitions_skipped: skipped, ..Default::default() };
    report.problems.extend(nemesis_problems);

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
    let recovered = Instant::now();
    let mut history: Vec<Recorded> = std::mem::take(&mut *recorded.lock().unwrap_or_else(|p| p.into_inner()));
    for (i, url) in urls.iter().enumerate() {
        for k in 0..cfg.keys {
            let key = format!("k{k}");
            let invoked = elapsed_ns(start);
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
            let completed = elapsed_ns(start);
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
    let mut live_events = Vec::new();
    let rev = current_revision(&urls[0]).await;
    for l in live {
        live_events.push(l.finish(rev, Duration::from_secs(30)).await);
    }
    if let (true, Some(Ok(events))) = (cfg.drop_live_event, live_events.first_mut()) {
        if !events.is_empty() {
            events.remove(events.len() / 2);
        }
    }
    report.problems.extend(crate::watch::check(&urls, &acked, live_events, rev).await);

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
    let mut leases = std::mem::take(&mut *leases.lock().unwrap_or_else(|p| p.into_inner()));
    if cfg.overstate_lease_ttl {
        for l in &mut leases {
            l.ttl *= 3;
        }
    }
    report.leases = leases.len();
    report.problems.extend(crate::lease::check(&leases, &windows));
    if let Some(p) = leased_keys_gone(&urls, recovered).await {
        report.problems.push(p);
    }
    if !report.problems.is_empty() {
        report.kept = keep(&c, &ops, &leases, cfg.seed);
    }
    report
}

/// After recovery (at `recovered`) no leased key may outlive the TTL plus the slack (and
/// an election's worth of time: a restarted member may still move leadership).
async fn leased_keys_gone(urls: &[String], recovered: Instant) -> Option<String> {
    use crate::lease::{PREFIX, SLACK, TTL};
    let due = recovered + Duration::from_secs(TTL as u64) + SLACK + Duration::from_secs(2);
    tokio::time::sleep_until(due.into()).await;
    for (i, url) in urls.iter().enumerate() {
        let Some(ch) = channel(url).await else { return Some(format!("member {i}: no connection")) };
        let req = RangeRequest {
            key: PREFIX.as_bytes().to_vec(),
            range_end: cairn_api::prefix_end(PREFIX.as_bytes()),
            keys_only: true,
            ..Default::default()
        };
        match KvClient::new(ch).range(req).await {
            Ok(r) if r.get_ref().kvs.is_empty() => {}
            Ok(r) => {
                let keys: Vec<String> =
                    r.get_ref().kvs.iter().take(5).map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect();
                return Some(format!(
                    "{} leased keys outlived their leases after recovery (member {i}): {keys:?}",
                    r.get_ref().kvs.len()
                ));
            }
            Err(e) => return Some(format!("member {i}: reading the leased keys: {e}")),
        }
    }
    None
}

/// The member's current revision (0 if it does not answer).
async fn current_revision(url: &str) -> i64 {
    status(url).await.and_then(|s| s.header).map_or(0, |h| h.revision)
}

/// The URL of the relay in front of the peer listen URL `listen`: the same port on
/// `127.a.b.(host + 30)`.
fn front_url(listen: &str) -> String {
    let Some((head, port)) = listen.rsplit_once(':') else { return listen.to_string() };
    let Some((net, host)) = head.rsplit_once('.') else { return listen.to_string() };
    match host.parse::<u8>() {
        Ok(h) if h < 200 => format!("{net}.{}:{port}", h + 30),
        _ => listen.to_string(),
    }
}

/// `ip:port` of an `http://ip:port` URL.
fn socket_addr(url: &str) -> Option<std::net::SocketAddr> {
    url.split("://").nth(1)?.parse().ok()
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

/// Copy the history and the members' logs somewhere that outlives the run.
fn keep(c: &Cluster, ops: &[Op], leases: &[crate::lease::LeaseRun], seed: u64) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cairn-chaos-seed{seed}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let json = serde_json::to_string_pretty(ops).ok()?;
    std::fs::write(dir.join("history.json"), json).ok()?;
    let json = serde_json::to_string_pretty(leases).ok()?;
    std::fs::write(dir.join("leases.json"), json).ok()?;
    for m in &c.members {
        let _ = std::fs::copy(c.dir().join(format!("{}.log", m.name)), dir.join(format!("{}.log", m.name)));
    }
    Some(dir)
}
