//! etcd's snapshot files, both ways, with etcd's own tools: a Cairn snapshot taken by
//! etcdctl 3.5 is read by `etcdutl snapshot status` (same hash as `cairnctl snapshot
//! status`) and restored into a real etcd 3.5.1, which then serves the same keys,
//! revisions, history, compaction, lease and users; snapshots of real etcd 3.5.1 and 3.4
//! (and a bare `member/snap/db`) restore into Cairn the same way.

use super::harness::{json, Cluster};
use cairn_api::etcdserverpb::PutRequest;
use cairn_testing::{cairnctl_binary, etcd35_tool, etcd_binary};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const ROOT: &str = "--user=root:pw";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// etcdctl 3.5 against `endpoints`.
fn ctl(endpoints: &str, args: &[&str]) -> String {
    run(Command::new(etcd35_tool("etcdctl"))
        .env("ETCDCTL_API", "3")
        .env_remove("ETCDCTL_ENDPOINTS")
        .arg(format!("--endpoints={endpoints}"))
        .args(args))
}

fn cairnctl(args: &[&str]) -> std::process::Output {
    Command::new(cairnctl_binary()).args(args).output().expect("cairnctl")
}

/// Write a data set with history, tombstones, overflow-sized values, a compaction, a
/// lease and auth (users, a role, auth on): the parts of a store a snapshot carries.
/// Returns the revision compacted at and a key's early revision after it.
async fn fill(c: &Cluster) -> (i64, i64) {
    let mut kv = c.kv(0).await;
    for round in 0..2 {
        for i in 0..1500u32 {
            let value = format!("{round}-{}", "v".repeat((i % 400) as usize)).into_bytes();
            let key = format!("app/{i:05}").into_bytes();
            kv.put(PutRequest { key, value, ..Default::default() }).await.expect("put");
        }
    }
    let big = vec![b'b'; 300_000];
    kv.put(PutRequest { key: b"big".to_vec(), value: big, ..Default::default() }).await.expect("put big");
    let ep = c.endpoints();
    let compact_at = 1200;
    ctl(&ep, &["compact", &compact_at.to_string()]);
    ctl(&ep, &["del", "app/0001", "--prefix"]);
    let lease = ctl(&ep, &["lease", "grant", "600"]);
    let id = lease.split_whitespace().nth(1).expect("lease id").to_string();
    ctl(&ep, &["put", "leased", "x", &format!("--lease={id}")]);
    for args in [
        &["user", "add", "root:pw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "ann:annpw"],
        &["role", "add", "apps"],
        &["role", "grant-permission", "apps", "read", "app/", "--prefix"],
        &["user", "grant-role", "ann", "apps"],
        &["auth", "enable"],
    ] {
        ctl(&ep, args);
    }
    // A revision of app/00500 that the compaction kept: its second write.
    let got = json(&ctl(&ep, &[ROOT, "get", "app/00500", "-w", "json"]));
    (compact_at, got["kvs"][0]["mod_revision"].as_i64().expect("mod_revision"))
}

/// Everything a client sees of the store: every key with its revisions, version, value
/// and lease, one key's history, the compaction, the leases, and what a user may read.
fn observe(endpoints: &str, compact_at: i64, early: i64) -> Value {
    let all = json(&ctl(endpoints, &[ROOT, "get", "", "--prefix", "-w", "json"]));
    let old = json(&ctl(endpoints, &[ROOT, "get", "app/00500", &format!("--rev={early}"), "-w", "json"]));
    let compacted = Command::new(etcd35_tool("etcdctl"))
        .args([&format!("--endpoints={endpoints}"), ROOT, "get", "app/00500", &format!("--rev={}", compact_at - 1)])
        .output()
        .expect("etcdctl");
    let leases = ctl(endpoints, &[ROOT, "lease", "list"]);
    let ann = ctl(endpoints, &["--user=ann:annpw", "get", "app/00002", "--print-value-only"]);
    let denied = Command::new(etcd35_tool("etcdctl"))
        .args([&format!("--endpoints={endpoints}"), "--user=ann:annpw", "get", "big"])
        .output()
        .expect("etcdctl");
    serde_json::json!({
        "revision": all["header"]["revision"],
        "kvs": all["kvs"],
        "count": all["count"],
        "old": old["kvs"],
        "compacted": String::from_utf8_lossy(&compacted.stderr).contains("required revision has been compacted"),
        "leases": leases.lines().skip(1).collect::<Vec<_>>(),
        "ann": ann,
        "ann_denied": String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
    })
}

/// `etcdutl snapshot status` (3.5), `etcdctl snapshot status` (3.4) and `cairnctl snapshot
/// status` agree on the file.
fn same_status(file: &str) -> Value {
    let etcd = json(&run(Command::new(etcd35_tool("etcdutl")).args(["snapshot", "status", file, "-w", "json"])));
    let etcd34 =
        json(&run(Command::new("etcdctl").env("ETCDCTL_API", "3").args(["snapshot", "status", file, "-w", "json"])));
    assert_eq!(etcd34, etcd, "etcdctl 3.4 and etcdutl 3.5");
    let out = cairnctl(&["snapshot", "status", file, "-w", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cairn = json(&String::from_utf8_lossy(&out.stdout));
    for field in ["hash", "revision", "totalKey", "totalSize"] {
        assert_eq!(cairn[field], etcd[field], "{field}: cairnctl {cairn} vs etcdutl {etcd}");
    }
    etcd
}

fn assert_same(got: &Value, want: &Value, what: &str) {
    assert_eq!(got["kvs"].as_array().map(Vec::len), want["kvs"].as_array().map(Vec::len), "{what}: key count");
    assert_eq!(got, want, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairn_snapshot_restores_into_etcd() {
    let cairn = Cluster::start(1, &[]).await;
    let (compact_at, early) = fill(&cairn).await;
    let want = observe(&cairn.endpoints(), compact_at, early);
    assert_eq!(want["compacted"], true);
    assert_eq!(want["ann_denied"], true);
    assert_eq!(want["leases"].as_array().map(Vec::len), Some(1));

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cairn.db").display().to_string();
    let out = ctl(&cairn.endpoints(), &[ROOT, "snapshot", "save", &file]);
    assert!(out.contains("Snapshot saved at"), "{out}");
    let status = same_status(&file);
    assert_eq!(status["revision"], want["revision"], "{status}");

    // etcdutl restores it; a real etcd serves what Cairn served.
    let mut etcd = Cluster::prepare_bin(&etcd35_tool("etcd"), 1, &["--log-level", "error"]);
    let m = &etcd.members[0];
    run(Command::new(etcd35_tool("etcdutl")).args([
        "snapshot",
        "restore",
        &file,
        "--name",
        &m.name,
        "--data-dir",
        &m.data_dir.display().to_string(),
        "--initial-cluster",
        &format!("{}={}", m.name, m.peer_url),
        "--initial-advertise-peer-urls",
        &m.peer_url,
    ]));
    etcd.start_all().await;
    assert_same(&observe(&etcd.endpoints(), compact_at, early), &want, "etcd 3.5.1 restored from Cairn");
    // A damaged copy is refused by etcdutl too (the trailer is the SHA-256 of the database).
    let mut bytes = std::fs::read(&file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    let bad = dir.path().join("bad.db");
    std::fs::write(&bad, bytes).expect("write");
    let out = Command::new(etcd35_tool("etcdutl"))
        .args(["snapshot", "restore", &bad.display().to_string(), "--data-dir"])
        .arg(dir.path().join("bad-etcd"))
        .output()
        .expect("etcdutl");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("expected sha256"));
    let out = cairnctl(&["snapshot", "status", &bad.display().to_string()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"));
}

/// A Cairn member restored with `cairnctl snapshot restore` from `file` (extra flags after).
async fn cairn_from(file: &Path, extra: &[&str]) -> Cluster {
    let mut c = Cluster::prepare(1, &[]);
    let m = &c.members[0];
    let mut args = vec!["snapshot", "restore"];
    let (file, data_dir) = (file.display().to_string(), m.data_dir.display().to_string());
    let initial = format!("{}={}", m.name, m.peer_url);
    args.extend([file.as_str(), "--name", &m.name, "--data-dir", &data_dir, "--initial-cluster", &initial]);
    args.extend(["--initial-cluster-token", c.token(), "--initial-advertise-peer-urls", &m.peer_url]);
    args.extend(extra);
    let out = cairnctl(&args);
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    c.start_all().await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_snapshots_restore_into_cairn() {
    let dir = tempfile::tempdir().expect("tempdir");
    // etcd 3.5.1 and etcd 3.4 (Debian's), each snapshotted by its own etcdctl.
    for (name, bin, etcdctl) in
        [("3.5.1", etcd35_tool("etcd"), etcd35_tool("etcdctl")), ("3.4", etcd_binary(), "etcdctl".into())]
    {
        let mut etcd = Cluster::start_bin(&bin, 1, &["--log-level", "error"]).await;
        let (compact_at, early) = fill(&etcd).await;
        let want = observe(&etcd.endpoints(), compact_at, early);
        let file = dir.path().join(format!("etcd-{name}.db"));
        run(Command::new(&etcdctl)
            .env("ETCDCTL_API", "3")
            .args([&format!("--endpoints={}", etcd.endpoints()), ROOT, "snapshot", "save"])
            .arg(&file));
        same_status(&file.display().to_string());
        let cairn = cairn_from(&file, &[]).await;
        assert_same(
            &observe(&cairn.endpoints(), compact_at, early),
            &want,
            &format!("Cairn restored from etcd {name}"),
        );
        // The restored store takes writes at the next revision.
        let rev = want["revision"].as_i64().expect("revision");
        let put = json(&ctl(&cairn.endpoints(), &[ROOT, "put", "after", "restore", "-w", "json"]));
        assert_eq!(put["header"]["revision"].as_i64(), Some(rev + 1));

        // A member's own database file (no checksum) needs --skip-hash-check, as with etcdutl.
        etcd.members[0].kill();
        let bare = etcd.members[0].data_dir.join("member/snap/db");
        let out = cairnctl(
            &["snapshot", "restore", &bare.display().to_string(), "--data-dir"]
                .map(str::to_string)
                .iter()
                .map(String::as_str)
                .chain([dir.path().join("refused").to_str().expect("utf-8")])
                .collect::<Vec<_>>(),
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("--skip-hash-check"), "{out:?}");
        let cairn = cairn_from(&bare, &["--skip-hash-check"]).await;
        let got = observe(&cairn.endpoints(), compact_at, early);
        assert_eq!(got["kvs"], want["kvs"], "Cairn restored from etcd {name}'s member/snap/db");
    }
}
