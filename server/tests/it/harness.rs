//! Starting, killing and restarting real `cairn` processes, and talking to them.

pub use cairn_server::testing::Cluster;
use std::path::Path;
use std::process::{Command, Output, Stdio};

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
pub async fn in_process(dir: &Path, extra: &[&str]) -> cairn_server::MemberHandle {
    cairn_server::testing::start_loopback(dir, extra).await.expect("in-process member starts")
}
