//! Starting, killing and restarting real `cairn` processes, and talking to them.

use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_api::etcdserverpb::StatusRequest;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("binding an ephemeral port")
}

/// One `cairn` process and everything needed to restart it.
pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Member {
    /// `host:port` of the client URL, as etcdctl wants it.
    pub fn endpoint(&self) -> String {
        self.client_url.trim_start_matches("http://").to_string()
    }

    /// Start (or restart) the process on its data directory.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(&self.args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning cairn");
        self.child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The member's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A set of members forming one cluster (or a single node).
pub struct Cluster {
    pub members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Start `n` members with `extra` flags each, and wait until they serve.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}")).collect();
        let token = format!("test-{}", free_port());
        let mut members = Vec::new();
        for (i, (cp, pp)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let client_url = format!("http://127.0.0.1:{cp}");
            let peer_url = format!("http://127.0.0.1:{pp}");
            let data_dir = dir.path().join(&name);
            let mut args: Vec<String> = vec![
                "--name".into(),
                name.clone(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--listen-client-urls".into(),
                client_url.clone(),
                "--advertise-client-urls".into(),
                client_url.clone(),
                "--listen-peer-urls".into(),
                peer_url.clone(),
                "--initial-advertise-peer-urls".into(),
                peer_url.clone(),
                "--initial-cluster".into(),
                initial.join(","),
                "--initial-cluster-token".into(),
                token.clone(),
                "--heartbeat-interval".into(),
                "50".into(),
                "--election-timeout".into(),
                "500".into(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let log = dir.path().join(format!("{name}.log"));
            members.push(Member { name, client_url, peer_url, data_dir, args, child: None, log });
        }
        for m in &mut members {
            m.start();
        }
        let c = Cluster { members, _dir: dir };
        for i in 0..n {
            c.wait_ready(i).await;
        }
        c
    }

    /// Wait until member `i` answers Status and a leader is known.
    pub async fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = MaintenanceClient::connect(self.members[i].client_url.clone()).await {
                if let Ok(s) = c.status(StatusRequest {}).await {
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
            for (i, m) in self.members.iter().enumerate().filter(|(_, m)| m.is_running()) {
                let Ok(mut c) = MaintenanceClient::connect(m.client_url.clone()).await else { continue };
                let Ok(s) = c.status(StatusRequest {}).await else { continue };
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
        self.members.iter().filter(|m| m.is_running()).map(Member::endpoint).collect::<Vec<_>>().join(",")
    }

    /// A KV client to member `i`.
    pub async fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::connect(self.members[i].client_url.clone())
            .await
            .expect("connecting to cairn")
            .max_decoding_message_size(64 << 20)
    }
}

/// Run the real etcdctl (v3 API) against `endpoints`; panics with a clear message if
/// it is not installed (the test command installs it).
pub fn etcdctl(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=5s")
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

/// Start `cairn` in this process on ephemeral loopback ports (for tests that look at the
/// member's internals, such as watcher counts).
pub async fn in_process(dir: &Path, extra: &[&str]) -> cairn_server::NodeHandle {
    cairn_server::testing::start_loopback(dir, extra).await.expect("in-process member starts")
}
