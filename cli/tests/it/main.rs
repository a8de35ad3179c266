//! cairnctl end to end: the real binary against real `cairn` processes, checking output in
//! each format, stdin handling, streaming commands, and exit codes for errors.

use cairn_testing::{etcdctl_command, Cluster, Streaming};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn cairnctl(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .env_remove("CAIRNCTL_ENDPOINTS")
        .env_remove("ETCDCTL_ENDPOINTS")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning cairnctl");
    if let Some(input) = stdin {
        child.stdin.take().expect("piped").write_all(input.as_bytes()).expect("writing stdin");
    }
    child.wait_with_output().expect("waiting for cairnctl")
}

fn ok(endpoints: &str, args: &[&str]) -> String {
    let out = cairnctl(endpoints, args, None);
    assert!(out.status.success(), "cairnctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("invalid JSON ({e}): {s}"))
}

/// A streaming cairnctl (a watch, a keep-alive), read line by line; killed on drop.
fn streaming(endpoints: &str, args: &[&str]) -> Streaming {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairnctl"));
    cmd.arg(format!("--endpoints={endpoints}")).args(args);
    Streaming::spawn(cmd)
}

#[tokio::test]
async fn kv_commands_in_every_format() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    assert_eq!(ok(&ep, &["put", "foo", "bar"]), "OK\n");
    // The value from stdin when left out.
    let out = cairnctl(&ep, &["put", "piped"], Some("from stdin"));
    assert!(out.status.success());
    assert_eq!(ok(&ep, &["get", "piped", "--print-value-only"]), "from stdin\n");
    assert_eq!(ok(&ep, &["put", "foo", "baz", "--prev-kv"]), "OK\nfoo\nbar\n");
    assert_eq!(ok(&ep, &["get", "foo"]), "foo\nbaz\n");
    let j = json(&ok(&ep, &["get", "foo", "-w", "json"]));
    assert_eq!(j["kvs"][0]["key"], "Zm9v");
    assert_eq!(j["kvs"][0]["value"], "YmF6");
    assert_eq!(j["kvs"][0]["version"], 2);
    assert_eq!(j["count"], 1);
    assert!(j["header"]["revision"].as_i64().is_some_and(|r| r >= 3));
    let t = ok(&ep, &["get", "foo", "-w", "table"]);
    assert!(t.contains("| KEY") && t.contains("| foo") && t.contains("baz"), "{t}");

    for i in 0..25 {
        ok(&ep, &["put", &format!("p/{i:02}"), &format!("v{i}")]);
    }
    // Paged (7 keys a page) output equals one unpaged read.
    let paged = ok(&ep, &["get", "p/", "--prefix", "--page-size", "7"]);
    let whole = ok(&ep, &["get", "p/", "--prefix", "--order", "ASCEND"]);
    assert_eq!(paged, whole);
    assert_eq!(paged.lines().count(), 50);
    let pj = json(&ok(&ep, &["get", "p/", "--prefix", "--page-size", "7", "-w", "json"]));
    assert_eq!((pj["count"].as_i64(), pj["kvs"].as_array().map(Vec::len), pj.get("more")), (Some(25), Some(25), None));
    assert_eq!(ok(&ep, &["get", "p/", "--prefix", "--count-only"]), "25\n");
    assert_eq!(ok(&ep, &["get", "p/", "--prefix", "--limit", "2", "--keys-only"]), "p/00\n\np/01\n\n");
    assert_eq!(
        ok(&ep, &["get", "p/", "--prefix", "--limit", "1", "--order", "DESCEND", "--print-value-only"]),
        "v24\n"
    );
    assert_eq!(ok(&ep, &["get", "p/05", "p/07", "--keys-only"]), "p/05\n\np/06\n\n");
    assert_eq!(ok(&ep, &["del", "p/1", "p/2"]), "10\n");
    assert_eq!(ok(&ep, &["del", "p/", "--prefix", "--prev-kv"]).lines().count(), 1 + 15 * 2);

    // Transactions from stdin, with and without prompts.
    let txn = "value(\"foo\") = \"baz\"\n\nput foo qux\nget foo\n\nget foo\n\n";
    let out = cairnctl(&ep, &["txn"], Some(txn));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SUCCESS\n\nOK\n\nfoo\nqux\n");
    let out = cairnctl(&ep, &["txn", "-i"], Some(txn));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.starts_with("compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\nFAILURE"),
        "{s}"
    );
    let j = json(&String::from_utf8_lossy(&cairnctl(&ep, &["txn", "-w", "json"], Some(txn)).stdout));
    assert!(j.get("succeeded").is_none(), "a failed txn omits succeeded as etcdctl: {j}");

    // Compaction, then reading the compacted past is an error with exit code 1.
    let rev = json(&ok(&ep, &["get", "foo", "-w", "json"]))["header"]["revision"].as_i64().expect("revision");
    assert_eq!(ok(&ep, &["compaction", &rev.to_string(), "--physical"]), format!("compacted revision {rev}\n"));
    let out = cairnctl(&ep, &["get", "foo", "--rev", "2"], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "Error: etcdserver: mvcc: required revision has been compacted\n");
}

#[tokio::test]
async fn errors_exit_non_zero_with_one_line() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    // Exit codes as etcdctl 3.4/3.5: bad arguments 128 (ExitBadArgs), an unknown flag 1.
    let cases: [(&[&str], Option<&str>, i32, &str); 7] = [
        (&["get"], None, 128, "required arguments"),
        (&["get", "--nope", "k"], None, 1, "--nope"),
        (&["del", "a", "--prefix", "--from-key"], None, 128, "cannot be set at the same time"),
        (&["txn"], Some("mod(\"k\" > \"1\"\n\n\n"), 128, "malformed comparison"),
        (&["put", "k", "v", "--lease", "zz"], None, 128, "bad lease ID"),
        (&["put", "k", "v", "--lease", "1234"], None, 1, "Error: etcdserver: requested lease not found"),
        (&["put", "", "v"], None, 1, "Error: etcdserver: key is not provided"),
    ];
    for (args, stdin, code, msg) in cases {
        let out = cairnctl(&ep, args, stdin);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
    }
    let out = cairnctl("127.0.0.1:1", &["--dial-timeout", "1s", "get", "k"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("Error: unavailable: no endpoint reachable") && err.lines().count() == 1, "{err}");
    // Every command has --help.
    for cmd in [
        &["get"][..],
        &["put"],
        &["del"],
        &["txn"],
        &["watch"],
        &["compaction"],
        &["lease", "grant"],
        &["lease", "keep-alive"],
        &["member", "list"],
        &["endpoint", "status"],
        &["alarm", "disarm"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = ok(&ep, &args);
        assert!(out.contains("Usage: cairnctl"), "{cmd:?}: {out}");
    }
}

#[tokio::test]
async fn watch_and_lease_commands() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    let w = streaming(&ep, &["watch", "w/", "--prefix", "--prev-kv"]);
    // The watch is created before its first event is printed; retry the first put until seen.
    std::thread::sleep(Duration::from_millis(500));
    ok(&ep, &["put", "w/a", "1"]);
    ok(&ep, &["put", "w/a", "2"]);
    ok(&ep, &["del", "w/a"]);
    let lines = w.take(3 + 5 + 5);
    assert_eq!(lines, ["PUT", "w/a", "1", "PUT", "w/a", "1", "w/a", "2", "DELETE", "w/a", "2", "w/a", ""]);
    drop(w);

    let granted = ok(&ep, &["lease", "grant", "60"]);
    let id = granted.split_whitespace().nth(1).expect("lease id").to_string();
    assert_eq!(granted, format!("lease {id} granted with TTL(60s)\n"));
    ok(&ep, &["put", "l/k", "v", "--lease", &id]);
    let ttl = ok(&ep, &["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining("))
            && ttl.ends_with("attached keys([l/k])\n"),
        "{ttl}"
    );
    assert_eq!(ok(&ep, &["lease", "list"]), format!("found 1 leases\n{id}\n"));
    assert_eq!(ok(&ep, &["lease", "keep-alive", "--once", &id]), format!("lease {id} keepalived with TTL(60)\n"));
    assert_eq!(ok(&ep, &["lease", "revoke", &id]), format!("lease {id} revoked\n"));
    // keep-alive renews every TTL/3 and ends when the lease is gone.
    let short = ok(&ep, &["lease", "grant", "3"]).split_whitespace().nth(1).expect("lease id").to_string();
    let ka = streaming(&ep, &["lease", "keep-alive", &short]);
    assert_eq!(
        ka.take(2),
        [format!("lease {short} keepalived with TTL(3)"), format!("lease {short} keepalived with TTL(3)")]
    );
    ok(&ep, &["lease", "revoke", &short]);
    assert_eq!(ka.take(1), [format!("lease {short} expired or revoked.")]);
    assert_eq!(ok(&ep, &["get", "l/k", "--count-only"]), "0\n");
    assert_eq!(ok(&ep, &["lease", "timetolive", &id]), format!("lease {id} already expired\n"));
    let out = cairnctl(&ep, &["lease", "revoke", &id], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "Error: etcdserver: requested lease not found\n");
}

#[tokio::test]
async fn cluster_commands_and_etcdctl_environment() {
    let c = Cluster::start(3, &[]).await;
    let ep = c.members[0].endpoint();
    // Members publish their names and client URLs through Raft just after they start.
    let deadline = Instant::now() + Duration::from_secs(10);
    let members = loop {
        let m = ok(&ep, &["member", "list"]);
        if c.members.iter().all(|x| m.contains(&x.client_url)) || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(members.lines().count(), 3);
    for m in &c.members {
        assert!(
            members.contains(&format!(", started, {}, {}, {}, false", m.name, m.peer_url, m.client_url)),
            "{members}"
        );
    }
    let j = json(&ok(&ep, &["member", "list", "-w", "json"]));
    assert_eq!(j["members"].as_array().map(Vec::len), Some(3));

    let status = json(&ok(&ep, &["endpoint", "status", "--cluster", "-w", "json"]));
    let rows = status.as_array().expect("an array");
    assert_eq!(rows.len(), 3);
    let leaders: Vec<_> = rows.iter().map(|r| r["Status"]["leader"].clone()).collect();
    assert!(leaders.iter().all(|l| *l == leaders[0] && l.as_u64().is_some()), "{leaders:?}");
    let table = ok(&ep, &["endpoint", "status", "--cluster", "-w", "table"]);
    assert_eq!(table.matches("| true ").count(), 1, "one leader: {table}");
    let health = ok(&ep, &["endpoint", "health", "--cluster"]);
    assert_eq!(health.matches("is healthy: successfully committed proposal").count(), 3, "{health}");
    assert_eq!(ok(&ep, &["alarm", "list"]), "");
    assert_eq!(ok(&ep, &["alarm", "disarm"]), "");

    // A dead member: health fails with exit 1 and names it; status still reports the rest.
    let mut c = c;
    c.members[2].kill();
    let all = format!("{},{},{}", c.members[0].endpoint(), c.members[1].endpoint(), c.members[2].endpoint());
    let out = cairnctl(&all, &["--dial-timeout", "1s", "endpoint", "health"], None);
    assert_eq!(out.status.code(), Some(1));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains(&format!("{} is unhealthy", c.members[2].endpoint())), "{s}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "Error: unhealthy cluster\n");

    // etcdctl's environment variables work as ours.
    let out = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(["put", "env", "ok"])
        .env_remove("CAIRNCTL_ENDPOINTS")
        .env("ETCDCTL_ENDPOINTS", &ep)
        .env("ETCDCTL_API", "3")
        .output()
        .expect("running cairnctl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    assert_eq!(ok(&ep, &["get", "env", "--print-value-only"]), "ok\n");
}

fn interrupt(s: &Streaming) {
    let ok = Command::new("kill").args(["-INT", &s.pid().to_string()]).status().expect("running kill").success();
    assert!(ok, "SIGINT delivered");
}

/// `lock` and `elect` against etcdctl's own: mutual exclusion, a command run under the
/// lock, and both observing each other's leaders.
#[tokio::test]
async fn lock_and_elect_interoperate_with_etcdctl() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    let mut held = streaming(&ep, &["lock", "shared"]);
    let key = held.take(1).remove(0);
    assert!(key.starts_with("shared/"), "{key}");
    let mut cmd = etcdctl_command(&ep);
    cmd.args(["lock", "shared"]);
    let mut waiter = Streaming::spawn(cmd);
    assert_eq!(waiter.try_line(Duration::from_millis(1500)), None, "etcdctl got a held lock");
    // Interrupted, cairnctl unlocks and etcdctl gets the lock.
    interrupt(&held);
    assert!(held.wait_exit(Duration::from_secs(5)).is_some_and(|s| s.success()));
    let line = waiter.try_line(Duration::from_secs(10)).expect("etcdctl gets the lock");
    assert!(line.starts_with("shared/"));
    interrupt(&waiter);
    assert!(waiter.wait_exit(Duration::from_secs(5)).is_some());
    // A command under the lock sees etcdctl's variables.
    let out = ok(&ep, &["lock", "shared", "sh", "-c", "echo $ETCD_LOCK_KEY $ETCD_LOCK_REV"]);
    let (k, rev) = out.trim().split_once(' ').expect("key and revision");
    assert!(k.starts_with("shared/") && rev.parse::<i64>().unwrap() > 0, "{out}");

    // Our candidate leads; etcdctl observes it.
    let leader = streaming(&ep, &["elect", "jobs", "one"]);
    let ours = leader.take(2);
    assert!(ours[0].starts_with("jobs/") && ours[1] == "one", "{ours:?}");
    let mut cmd = etcdctl_command(&ep);
    cmd.args(["elect", "-l", "jobs"]);
    assert_eq!(Streaming::spawn(cmd).take(2), ours);
    // etcdctl's candidate leads elsewhere; we observe it.
    let mut cmd = etcdctl_command(&ep);
    cmd.args(["elect", "other", "two"]);
    let theirs = Streaming::spawn(cmd).take(2);
    assert_eq!(streaming(&ep, &["elect", "-l", "other"]).take(2), theirs);
    let out = cairnctl(&ep, &["elect", "jobs"], None);
    assert_eq!(out.status.code(), Some(128), "no proposal and no -l is bad input");
}

#[tokio::test]
async fn member_snapshot_defrag_and_move_leader_commands() {
    let c = Cluster::start(3, &[]).await;
    let ep = c.endpoints();
    // member add prints what the new member needs (etcdctl's lines), update and remove work.
    let peer = Cluster::new_peer_url();
    let out = ok(&ep, &["member", "add", "m3", "--peer-urls", &peer, "--learner"]);
    assert!(out.starts_with("Member ") && out.contains(" added to cluster "), "{out}");
    assert!(out.contains("ETCD_NAME=\"m3\"") && out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""), "{out}");
    assert!(out.contains(&format!("m3={peer}")) && out.contains(&format!("m0={}", c.members[0].peer_url)), "{out}");
    let id = out.split_whitespace().nth(1).expect("the id").to_string();
    let moved = Cluster::new_peer_url();
    let out = ok(&ep, &["member", "update", &id, "--peer-urls", &moved]);
    assert!(out.contains(&format!("{id} updated in cluster")), "{out}");
    assert!(ok(&ep, &["member", "list"]).contains(&format!("{id}, unstarted, , {moved}, , true")));
    let out = cairnctl(&ep, &["member", "promote", &id], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("in sync with leader"));
    let out = ok(&ep, &["member", "remove", &id]);
    assert!(out.contains(&format!("{id} removed from cluster")), "{out}");
    assert_eq!(ok(&ep, &["member", "list"]).lines().count(), 3);
    let out = cairnctl(&ep, &["member", "remove", "zz"], None);
    assert_eq!(out.status.code(), Some(128), "a malformed id is a usage error");

    // move-leader, then defrag every member.
    let status = json(&ok(&ep, &["endpoint", "status", "--cluster", "-w", "json"]));
    let rows = status.as_array().expect("rows");
    let leader = rows[0]["Status"]["leader"].as_u64().expect("leader");
    let target = rows.iter().filter_map(|r| r["Status"]["header"]["member_id"].as_u64()).find(|id| *id != leader);
    let target = format!("{:x}", target.expect("a follower"));
    let out = ok(&ep, &["move-leader", &target]);
    assert_eq!(out, format!("Leadership transferred from {leader:x} to {target}\n"));
    let out = ok(&ep, &["defrag", "--cluster"]);
    assert_eq!(out.matches("Finished defragmenting etcd member[").count(), 3, "{out}");

    // snapshot save (one endpoint only) and status.
    for n in 0..10 {
        ok(&ep, &["put", &format!("k{n}"), "v"]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("snap.db").display().to_string();
    let out = cairnctl(&ep, &["snapshot", "save", &file], None);
    assert_eq!(out.status.code(), Some(128), "several endpoints are refused");
    let one = c.members[1].endpoint();
    assert_eq!(ok(&one, &["snapshot", "save", &file]), format!("Snapshot saved at {file}\n"));
    let st = json(&ok(&one, &["snapshot", "status", &file, "-w", "json"]));
    let rev = json(&ok(&one, &["get", "k0", "-w", "json"]))["header"]["revision"].as_i64();
    assert_eq!(st["revision"].as_i64(), rev);
    // An etcd database (whole pages) and its verified SHA-256; the hash is etcdutl's (the
    // e2e etcd_snapshots tests compare it with etcdutl's own).
    assert_eq!(st["totalSize"].as_u64().map(|s| s % 4096), Some(0), "{st}");
    assert_eq!(st["sha256"].as_str().map(str::len), Some(64), "{st}");
    assert!(st["hash"].as_u64().is_some(), "{st}");
    let table = ok(&one, &["snapshot", "status", &file, "-w", "table"]);
    assert!(table.contains("HASH") && table.contains("TOTAL KEYS"), "{table}");
}

#[tokio::test]
async fn auth_user_and_role_commands_match_etcdctl() {
    let c = Cluster::start(1, &["--bcrypt-cost=4"]).await;
    let ep = c.endpoints();
    let etcdctl = |args: &[&str]| {
        let out = etcdctl_command(&ep).args(args).output().expect("etcdctl");
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Set up with cairnctl, printed as etcdctl prints it.
    for (args, printed) in [
        (&["user", "add", "root:rootpw"][..], "User root created\n"),
        (&["user", "add", "alice", "--new-user-password", "alicepw"], "User alice created\n"),
        (&["role", "add", "app"], "Role app created\n"),
        (&["role", "grant-permission", "app", "readwrite", "/app/", "--prefix=true"], "Role app updated\n"),
        (&["role", "grant-permission", "app", "read", "/cfg", "/cfh"], "Role app updated\n"),
        (&["user", "grant-role", "alice", "app"], "Role app is granted to user alice\n"),
        // root lacks the root role: cairnctl grants it, as etcdctl does.
        (&["auth", "enable"], "Authentication Enabled\n"),
    ] {
        assert_eq!(ok(&ep, args), printed, "{args:?}");
    }
    fn with_root<'a>(args: &[&'a str]) -> Vec<&'a str> {
        [&["--user", "root:rootpw"][..], args].concat()
    }
    assert_eq!(ok(&ep, &with_root(&["auth", "status"])), "Authentication Status: true\nAuthRevision: 9\n");
    for args in [&["role", "get", "app"][..], &["user", "get", "alice"], &["user", "list"], &["role", "list"]] {
        let etcd_style = etcdctl(&with_root(args));
        assert_eq!(ok(&ep, &with_root(args)), etcd_style, "{args:?} prints as etcdctl");
    }

    assert_eq!(ok(&ep, &["--user", "alice:alicepw", "put", "/app/x", "1"]), "OK\n");
    assert_eq!(ok(&ep, &["--user", "alice", "--password", "alicepw", "get", "/app/x", "--print-value-only"]), "1\n");
    // etcdctl's ETCDCTL_USER / ETCDCTL_PASSWORD.
    let out = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args([format!("--endpoints={ep}").as_str(), "get", "/app/x", "--print-value-only"])
        .env_remove("CAIRNCTL_USER")
        .env_remove("CAIRNCTL_PASSWORD")
        .env("ETCDCTL_USER", "alice")
        .env("ETCDCTL_PASSWORD", "alicepw")
        .output()
        .expect("cairnctl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n", "{}", String::from_utf8_lossy(&out.stderr));
    for (args, code, msg) in [
        (&["--user", "alice:alicepw", "get", "/other"][..], 1, "Error: etcdserver: permission denied"),
        (&["get", "/app/x"], 1, "Error: etcdserver: user name is empty"),
        (
            &["--user", "alice:nope", "get", "/app/x"],
            1,
            "Error: etcdserver: authentication failed, invalid user ID or password",
        ),
        (&["--user", "alice", "get", "/app/x"], 128, "--user needs a password"),
        (&["--user", "alice:alicepw", "user", "list"], 1, "Error: etcdserver: permission denied"),
        (&["--user", "root:rootpw", "user", "add", "bob"], 128, "no password"),
        (&["--user", "root:rootpw", "role", "grant-permission", "app", "all", "k"], 128, "invalid permission type"),
    ] {
        let out = cairnctl(&ep, args, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
    }
    // A password from stdin, revocations, deletions.
    let out = cairnctl(&ep, &with_root(&["user", "passwd", "alice", "--interactive=false"]), Some("newpw\n"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Password updated\n");
    assert_eq!(ok(&ep, &["--user", "alice:newpw", "get", "/app/x", "--print-value-only"]), "1\n");
    assert_eq!(
        ok(&ep, &with_root(&["role", "revoke-permission", "app", "/app/", "--prefix=true"])),
        "Permission of range [/app/, /app0) is revoked from role app\n"
    );
    assert_eq!(ok(&ep, &with_root(&["user", "revoke-role", "alice", "app"])), "Role app is revoked from user alice\n");
    assert_eq!(ok(&ep, &with_root(&["role", "delete", "app"])), "Role app deleted\n");
    assert_eq!(ok(&ep, &with_root(&["user", "delete", "alice"])), "User alice deleted\n");
    assert_eq!(ok(&ep, &with_root(&["auth", "disable"])), "Authentication Disabled\n");
    assert_eq!(ok(&ep, &["get", "/app/x", "--print-value-only"]), "1\n");
}

/// `make-mirror` moves a live prefix from etcd to Cairn and from Cairn to etcd: the keys
/// there first, then every change as it happens, renamed under `--dest-prefix`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_mirror_moves_a_live_prefix_between_etcd_and_cairn_both_ways() {
    use cairn_sdk::proto::etcdserverpb::PutRequest;
    let etcd = Cluster::start_bin(&cairn_testing::etcd_binary(), 1, &[]).await;
    let cairn = Cluster::start(1, &[]).await;
    let keys = |ep: &str, prefix: &str| -> Vec<String> {
        ok(ep, &["get", prefix, "--prefix", "--keys-only"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    };
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "make-mirror: {what} did not happen in 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    for (dir, src, dst) in [("a", &etcd, &cairn), ("b", &cairn, &etcd)] {
        // Each direction has its own prefixes (the first one leaves keys on both sides).
        let (app, copy, other) = (format!("/{dir}app/"), format!("/{dir}copy/"), format!("/{dir}other/"));
        let (s, d) = (src.endpoints(), dst.endpoints());
        let mut kv = src.kv(0).await;
        for n in 0..150 {
            let put =
                PutRequest { key: format!("{app}k{n:03}").into(), value: format!("v{n}").into(), ..Default::default() };
            kv.put(put).await.expect("put");
        }
        ok(&s, &["put", &format!("{other}x"), "not mirrored"]);
        let _mirror = streaming(&s, &["make-mirror", &d, "--prefix", &app, "--dest-prefix", &copy]);
        wait("the first copy", &|| keys(&d, &copy).len() == 150);
        assert_eq!(ok(&d, &["get", &format!("{copy}k042"), "--print-value-only"]).trim(), "v42");
        // Live changes follow: a new key, an update, a delete, a transaction.
        ok(&s, &["put", &format!("{app}new"), "live"]);
        ok(&s, &["put", &format!("{app}k001"), "updated"]);
        ok(&s, &["del", &format!("{app}k000")]);
        let txn = format!("\nput {app}t1 a\nput {app}t2 b\n\n");
        let out = cairnctl(&s, &["txn"], Some(&txn));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        wait("the live changes", &|| {
            let k = keys(&d, &copy);
            k.contains(&format!("{copy}t2")) && !k.contains(&format!("{copy}k000"))
        });
        assert_eq!(ok(&d, &["get", &format!("{copy}new"), "--print-value-only"]).trim(), "live");
        assert_eq!(ok(&d, &["get", &format!("{copy}k001"), "--print-value-only"]).trim(), "updated");
        assert_eq!(keys(&d, &copy).len(), 152, "150 - 1 deleted + new + t1 + t2");
        assert!(keys(&d, &other).is_empty() && keys(&d, &app).is_empty(), "only the prefix, renamed");
    }
}

/// `cairnctl completion SHELL` prints a script the shell accepts: bash registers it (run in
/// a real bash), zsh and fish get their own formats.
#[test]
fn completion_scripts_for_the_shells() {
    let script = |shell: &str| ok("127.0.0.1:1", &["completion", shell]);
    let bash = script("bash");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cairnctl.bash");
    std::fs::write(&file, &bash).expect("write");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p cairnctl", file.display()))
        .output()
        .expect("bash");
    let registered = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && registered.contains("cairnctl"),
        "{registered} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The subcommands are offered.
    assert!(bash.contains("snapshot") && bash.contains("make-mirror") && bash.contains("member"), "bash script");
    assert!(script("zsh").starts_with("#compdef cairnctl"));
    assert!(script("fish").contains("complete -c cairnctl"));
    let out = cairnctl("127.0.0.1:1", &["completion", "tcsh"], None);
    assert!(!out.status.success(), "an unknown shell is refused");
}

/// `--hex` (and `ETCDCTL_HEX`) prints keys and values byte by byte, exactly as etcdctl.
#[tokio::test]
async fn hex_output_matches_etcdctl() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    ok(&ep, &["put", "hex/ké y", "välue\n2"]);
    ok(&ep, &["put", "hex/b", ""]);
    for args in [&["--hex", "get", "hex/", "--prefix"][..], &["--hex", "get", "hex/b", "--print-value-only"]] {
        let ours = ok(&ep, args);
        let out = etcdctl_command(&ep).args(args).output().expect("etcdctl");
        assert_eq!(ours, String::from_utf8_lossy(&out.stdout), "{args:?}");
    }
    assert!(ok(&ep, &["--hex", "get", "hex/b"]).starts_with("\\x68\\x65\\x78\\x2f\\x62\n"));
    let out = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args([&format!("--endpoints={ep}"), "get", "hex/b"])
        .env("ETCDCTL_HEX", "true")
        .output()
        .expect("cairnctl");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("\\x68"), "ETCDCTL_HEX is honoured");
}

/// `--user name` without a password asks for it on the terminal, as etcdctl does (a real pty
/// from `script`); without a terminal it says how to give one.
#[tokio::test]
async fn a_user_without_a_password_is_asked_on_the_terminal() {
    let c = Cluster::start(1, &["--bcrypt-cost=4"]).await;
    let ep = c.endpoints();
    for args in [&["user", "add", "root:rootpw"][..], &["role", "add", "root"], &["user", "grant-role", "root", "root"]]
    {
        ok(&ep, args);
    }
    ok(&ep, &["put", "k", "behind-auth"]);
    ok(&ep, &["auth", "enable"]);
    let line = format!("{} --endpoints={ep} --user root get k --print-value-only", env!("CARGO_BIN_EXE_cairnctl"));
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    // Type the password once the prompt is up (echo is off from then on).
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut shown = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&shown).contains("Password: ") {
        assert!(Instant::now() < deadline, "no prompt: {}", String::from_utf8_lossy(&shown));
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            shown.extend(chunk);
        }
    }
    // The prompt is printed just before echo is turned off: give the program a moment to
    // turn it off before typing (typing at once raced it under load).
    std::thread::sleep(Duration::from_millis(500));
    child.stdin.take().expect("stdin").write_all(b"rootpw\n").expect("typing the password");
    let status = child.wait().expect("script");
    reader.join().expect("reader");
    shown.extend(rx.try_iter().flatten());
    let shown = String::from_utf8_lossy(&shown);
    assert!(status.success() && shown.contains("behind-auth"), "{shown}");
    assert!(!shown.contains("rootpw"), "the password was echoed: {shown}");
    let out = cairnctl(&ep, &["--user", "root", "get", "k"], None);
    assert_eq!(out.status.code(), Some(128));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--user needs a password"));
}

/// `watch KEY -- COMMAND`: the command runs for each event with etcdctl's environment
/// (Go-quoted type, key and value); cairnctl and etcdctl watching the same events print the
/// same lines.
#[tokio::test]
async fn exec_watch_runs_a_command_per_event_as_etcdctl() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    let show = r#"printf '%s|%s|%s|%s\n' "$ETCD_WATCH_REVISION" "$ETCD_WATCH_EVENT_TYPE" "$ETCD_WATCH_KEY" "$ETCD_WATCH_VALUE""#;
    let ours = streaming(&ep, &["watch", "x/", "--prefix", "--", "sh", "-c", show]);
    let mut cmd = etcdctl_command(&ep);
    cmd.args(["watch", "x/", "--prefix", "--", "sh", "-c", show]);
    let theirs = Streaming::spawn(cmd);
    std::thread::sleep(Duration::from_millis(500));
    ok(&ep, &["put", "x/a", "say \"hi\"\tnow \\ ünï"]);
    ok(&ep, &["del", "x/a"]);
    let (a, b) = (ours.take(8), theirs.take(8));
    assert_eq!(a, b);
    assert!(a[3].ends_with(r#"|"PUT"|"x/a"|"say \"hi\"\tnow \\ ünï""#), "{a:?}");
    assert!(a[7].ends_with(r#"|"DELETE"|"x/a"|"""#), "{a:?}");
}

/// etcdctl 3.5.1 (`etcd35_tool`) against the same member.
fn etcdctl35(endpoints: &str, args: &[&str]) -> String {
    let out = Command::new(cairn_testing::etcd35_tool("etcdctl"))
        .env("ETCDCTL_API", "3")
        .env_remove("ETCDCTL_ENDPOINTS")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .output()
        .expect("etcdctl 3.5.1");
    assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `-w fields` and `-w json` print byte for byte what etcdctl 3.5.1 prints for the same
/// answers: fields in etcdctl's order, Go-quoted strings, JSON keys in the Go structs' order.
#[tokio::test]
async fn fields_and_json_output_match_etcdctl() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    let lease = ok(&ep, &["lease", "grant", "600"]).split_whitespace().nth(1).expect("lease id").to_string();
    ok(&ep, &["put", "f/a", "one", "--lease", &lease]);
    ok(&ep, &["put", "f/b", "tw\"o\n"]);
    ok(&ep, &["put", "f/b", "two"]);
    for args in [
        &["get", "f/", "--prefix", "-w", "fields"][..],
        &["get", "f/", "--prefix", "-w", "json"],
        &["get", "f/a", "--consistency", "s", "-w", "json"],
        &["get", "f/none", "-w", "fields"],
        &["member", "list", "-w", "fields"],
        &["member", "list", "-w", "json"],
        &["endpoint", "status", "-w", "fields"],
        &["endpoint", "status", "-w", "json"],
        &["endpoint", "hashkv", "-w", "fields"],
    ] {
        assert_eq!(ok(&ep, args), etcdctl35(&ep, args), "{args:?}");
    }
    let fields = ok(&ep, &["get", "f/b", "-w", "fields"]);
    assert!(fields.contains("\"Key\" : \"f/b\"\n\"CreateRevision\" : "), "{fields}");
    // Leases, alarms and roles: the same bytes as etcdctl's (nothing is written between).
    ok(&ep, &["role", "add", "r1"]);
    ok(&ep, &["role", "grant-permission", "r1", "read", "a"]);
    ok(&ep, &["role", "grant-permission", "r1", "readwrite", "p/", "--prefix"]);
    ok(&ep, &["role", "add", "r2"]);
    for w in ["fields", "json"] {
        for args in [
            &["lease", "list", "-w", w][..],
            &["lease", "keep-alive", "--once", &lease, "-w", w],
            &["alarm", "list", "-w", w],
            &["role", "get", "r1", "-w", w],
            &["role", "list", "-w", w],
        ] {
            assert_eq!(ok(&ep, args), etcdctl35(&ep, args), "{args:?}");
        }
        // Changes answer a header, printed as etcdctl prints it.
        let (ours, theirs) =
            (ok(&ep, &["role", "add", "r3", "-w", w]), etcdctl35(&ep, &["role", "add", "r4", "-w", w]));
        let revision = |s: &str| s.replace(|c: char| c.is_ascii_digit(), "0");
        assert_eq!(revision(&ours), revision(&theirs), "role add -w {w}");
        ok(&ep, &["role", "delete", "r3"]);
        ok(&ep, &["role", "delete", "r4"]);
    }
    // Writes: the same shape as etcdctl's for the same kind of answer.
    ok(&ep, &["put", "f/c", "w"]);
    let shape =
        |s: &str| -> Vec<String> { s.lines().map(|l| l.split(" : ").next().unwrap_or("").to_string()).collect() };
    for (ours, theirs) in [
        (&["put", "f/c", "x", "--prev-kv", "-w", "fields"][..], &["put", "f/b", "y", "--prev-kv", "-w", "fields"][..]),
        (&["del", "f/c", "--prev-kv", "-w", "fields"], &["del", "f/b", "--prev-kv", "-w", "fields"]),
        (&["lease", "grant", "60", "-w", "fields"], &["lease", "grant", "60", "-w", "fields"]),
    ] {
        assert_eq!(shape(&ok(&ep, ours)), shape(&etcdctl35(&ep, theirs)), "{ours:?}");
    }
    // Two watchers of the same events print the same lines.
    let mut theirs = Command::new(cairn_testing::etcd35_tool("etcdctl"));
    theirs.env("ETCDCTL_API", "3").args([
        &format!("--endpoints={ep}"),
        "watch",
        "f/",
        "--prefix",
        "--prev-kv",
        "-w",
        "fields",
    ]);
    let theirs = Streaming::spawn(theirs);
    let ours = streaming(&ep, &["watch", "f/", "--prefix", "--prev-kv", "-w", "fields"]);
    std::thread::sleep(Duration::from_millis(500));
    ok(&ep, &["put", "f/a", "three"]);
    ok(&ep, &["del", "f/a"]);
    // Header (4) + Type + prev (6) + kv (6), twice.
    assert_eq!(ours.take(34), theirs.take(34));
}

/// `watch -i`: watches opened from stdin lines (the command line's flags applying to each),
/// `progress` asks each for a progress notification, and a bad line is named on stderr
/// without ending the others.
#[tokio::test]
async fn interactive_watch_reads_requests_from_stdin() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairnctl"));
    cmd.args([&format!("--endpoints={ep}"), "watch", "-i", "--prev-kv"]);
    let (w, mut stdin) = Streaming::spawn_with_input(cmd);
    stdin.write_all(b"watch i/a\nwatch i/p --prefix\nbogus line\n").expect("typing");
    std::thread::sleep(Duration::from_millis(500));
    ok(&ep, &["put", "i/a", "1"]);
    assert_eq!(w.take(3), ["PUT", "i/a", "1"]);
    ok(&ep, &["put", "i/p/x", "2"]);
    ok(&ep, &["put", "i/p/x", "3"]);
    // --prev-kv from the command line applies to the line's watch.
    assert_eq!(w.take(8), ["PUT", "i/p/x", "2", "PUT", "i/p/x", "2", "i/p/x", "3"]);
    let rev = json(&ok(&ep, &["get", "i/a", "-w", "json"]))["header"]["revision"].as_i64().expect("revision");
    stdin.write_all(b"progress\n").expect("typing");
    assert_eq!(w.take(2), [format!("progress notify: {rev}"), format!("progress notify: {rev}")]);
    // Without -i a key is needed.
    let out = cairnctl(&ep, &["watch"], None);
    assert_eq!(out.status.code(), Some(128), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `check perf` runs etcdctl's load and verdicts (here for 3 s: no figure is asserted, only
/// that each check is judged, the exit code follows the verdict, and the keys are gone),
/// and refuses a prefix that holds keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_perf_judges_a_load_and_cleans_up() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    let out = cairnctl(&ep, &["check", "perf", "--load", "s", "--duration", "3s", "--auto-compact"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        lines[0].starts_with("PASS: Throughput is ") || lines[0].starts_with("FAIL: Throughput too low: "),
        "{text}"
    );
    assert!(lines[1].contains("Slowest request took"), "{text}");
    assert!(lines[2].contains("Stddev"), "{text}");
    assert_eq!(out.status.success(), lines[3] == "PASS", "{text}");
    assert!(lines[..3].iter().all(|l| l.starts_with("PASS")) == out.status.success(), "{text}");
    assert_eq!(ok(&ep, &["get", "/etcdctl-check-perf/", "--prefix", "--count-only"]), "0\n");
    ok(&ep, &["put", "/etcdctl-check-perf/x", "1"]);
    let out = cairnctl(&ep, &["check", "perf", "--duration", "1s"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has keys. Delete with"), "{out:?}");
}

/// `--debug` (and ETCDCTL_DEBUG) logs the client's doings on stderr; stdout is unchanged.
#[tokio::test]
async fn debug_logs_on_stderr() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    ok(&ep, &["put", "d", "v"]);
    let out = cairnctl(&ep, &["--debug", "get", "d"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "d\nv\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DEBUG"), "{err}");
    let quiet = cairnctl(&ep, &["get", "d"], None);
    assert!(quiet.stderr.is_empty());
}

/// `--insecure-skip-tls-verify` (and ETCDCTL_INSECURE_SKIP_TLS_VERIFY): a member with a
/// self-signed certificate (`--auto-tls`) is refused without it and served with it, as with
/// etcdctl.
#[tokio::test]
async fn insecure_skip_tls_verify_accepts_a_self_signed_member() {
    let mut c = Cluster::prepare_tls(1, &["--auto-tls"], false);
    c.members[0].start();
    let ep = c.members[0].client_url.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cairnctl(&ep, &["--insecure-skip-tls-verify", "put", "tls", "ok"], None).status.success() {
        assert!(Instant::now() < deadline, "no answer over TLS:\n{}", c.members[0].log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ok(&ep, &["--insecure-skip-tls-verify", "get", "tls", "--print-value-only"]), "ok\n");
    let flags = ["--insecure-skip-tls-verify", "--insecure-transport=false", "get", "tls", "--print-value-only"];
    assert_eq!(ok(&ep, &flags), "ok\n", "etcdctl's spelling works too");
    let out = Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args([&format!("--endpoints={ep}"), "get", "tls", "--print-value-only"])
        .env("ETCDCTL_INSECURE_SKIP_TLS_VERIFY", "true")
        .output()
        .expect("cairnctl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{}", String::from_utf8_lossy(&out.stderr));
    // Verified (the system's roots): the self-signed certificate is refused.
    let refused = cairnctl(&ep, &["get", "tls", "--dial-timeout=1s", "--command-timeout=2s"], None);
    assert!(!refused.status.success(), "a self-signed certificate was trusted");
    // etcdctl agrees on both.
    let theirs = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        // (etcdctl applies the skip only with --insecure-transport=false; cairnctl takes it.)
        .args([&format!("--endpoints={ep}"), "--insecure-skip-tls-verify", "--insecure-transport=false"])
        .args(["get", "tls", "--print-value-only"])
        .output()
        .expect("etcdctl");
    assert_eq!(String::from_utf8_lossy(&theirs.stdout), "ok\n", "{}", String::from_utf8_lossy(&theirs.stderr));
}
