//! Three real members on 127.0.0.1: replication, failover, catch-up.

use super::harness::{etcdctl, etcdctl_ok, json, Cluster};
use std::time::{Duration, Instant};

/// Every key and value as member `i` serves them locally (serializable).
fn dump(c: &Cluster, i: usize) -> serde_json::Value {
    let v = json(&etcdctl_ok(&c.members[i].endpoint(), &["get", "", "--prefix", "--consistency", "s", "-w", "json"]));
    v["kvs"].clone()
}

/// Retry a write through `endpoint` until it succeeds (an election may be running).
fn put_retrying(endpoint: &str, k: &str, v: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = etcdctl(endpoint, &["put", k, v], None);
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "put {k} kept failing: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Wait until member `i` serves the same data as member `j` (serializable reads).
async fn converge(c: &Cluster, i: usize, j: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (a, b) = (dump(c, i), dump(c, j));
        if a == b {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "member {i} did not catch up with {j}:\n{a}\nvs\n{b}\nlog:\n{}",
            c.members[i].log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_fail_over_and_catch_up() {
    let mut c = Cluster::start(3, &[]).await;
    let members = json(&etcdctl_ok(&c.endpoints(), &["member", "list", "-w", "json"]));
    assert_eq!(members["members"].as_array().map(Vec::len), Some(3));

    // Write through one member, read through each, linearizable then serializable.
    let first = c.leader().await;
    let follower = (first + 1) % 3;
    etcdctl_ok(&c.members[follower].endpoint(), &["put", "k", "v1"]);
    for i in 0..3 {
        let ep = c.members[i].endpoint();
        assert_eq!(etcdctl_ok(&ep, &["get", "k", "--print-value-only"]), "v1\n", "linearizable read on member {i}");
        assert_eq!(etcdctl_ok(&ep, &["get", "k", "--consistency", "s", "--print-value-only"]), "v1\n");
    }

    // kill -9 the leader: another member takes over and writes continue.
    c.members[first].kill();
    let survivor = (first + 1) % 3;
    put_retrying(&c.members[survivor].endpoint(), "k", "v2");
    let second = c.leader().await;
    assert_ne!(second, first);
    // The survivors did not wait out an election timeout on top of openraft's leader lease:
    // a majority had heard from no leader for the lease, so one campaigned then (failover.rs).
    let logs: String = (0..3).filter(|i| *i != first).map(|i| c.members[i].log()).collect();
    assert!(logs.contains("no leader heard by a majority for the leader lease: campaigning"), "{logs}");
    for i in (0..3).filter(|i| *i != first) {
        assert_eq!(etcdctl_ok(&c.members[i].endpoint(), &["get", "k", "--print-value-only"]), "v2\n");
    }
    for n in 0..20 {
        etcdctl_ok(&c.members[survivor].endpoint(), &["put", &format!("while-down/{n}"), "x"]);
    }

    // Restart it on its data dir: it catches up, and all three hold the same data.
    c.members[first].start();
    c.wait_ready(first).await;
    converge(&c, first, second).await;
    converge(&c, (first + 2) % 3, second).await;
    assert_eq!(etcdctl_ok(&c.members[first].endpoint(), &["get", "k", "--print-value-only"]), "v2\n");
    let status = json(&etcdctl_ok(&c.endpoints(), &["endpoint", "status", "-w", "json"]));
    let revisions: Vec<_> =
        status.as_array().into_iter().flatten().map(|s| s["Status"]["header"]["revision"].clone()).collect();
    assert!(revisions.windows(2).all(|w| w[0] == w[1]), "revisions differ: {revisions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_member_catches_up_by_snapshot() {
    // A tiny snapshot count makes the leader purge its log, so the restarted member
    // can only catch up by installing a snapshot.
    let mut c = Cluster::start(3, &["--snapshot-count", "20"]).await;
    let leader = c.leader().await;
    let lagger = (leader + 1) % 3;
    c.members[lagger].kill();
    let ep = c.members[leader].endpoint();
    for n in 0..150 {
        etcdctl_ok(&ep, &["put", &format!("snap/{n:03}"), &n.to_string()]);
    }
    etcdctl_ok(&ep, &["del", "snap/000"]);
    c.members[lagger].start();
    c.wait_ready(lagger).await;
    converge(&c, lagger, leader).await;
    let v =
        json(&etcdctl_ok(&c.members[lagger].endpoint(), &["get", "snap/", "--prefix", "--keys-only", "-w", "json"]));
    assert_eq!(v["count"], 149);
    let snaps = std::fs::read_dir(c.members[lagger].data_dir.join("snap"))
        .map(|rd| rd.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "snap")).count())
        .unwrap_or(0);
    assert!(snaps >= 1, "the lagging member holds no snapshot");
    // It keeps applying new writes after the snapshot, and they survive its own crash:
    // its log restarted past a snapshot, and recovery must keep what came after.
    for n in 0..10 {
        etcdctl_ok(&ep, &["put", &format!("after-snapshot/{n}"), "yes"]);
    }
    assert_eq!(etcdctl_ok(&c.members[lagger].endpoint(), &["get", "after-snapshot/9", "--print-value-only"]), "yes\n");
    c.members[lagger].kill();
    c.members[lagger].start();
    c.wait_ready(lagger).await;
    converge(&c, lagger, leader).await;
    let v = json(&etcdctl_ok(
        &c.members[lagger].endpoint(),
        &["get", "after-snapshot/", "--prefix", "--keys-only", "--consistency", "s", "-w", "json"],
    ));
    assert_eq!(v["count"], 10);
}

/// The value of the series `name{To="<to>"}` in `member`'s /metrics, if it has it.
async fn labelled(member: &cairn_testing::Member, name: &str, to: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", member.client_url)).await.ok()?.text().await.ok()?;
    let prefix = format!("{name}{{To=\"{to}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

/// The series etcd's alert rules read (etcd-mixin: etcdMembersDown,
/// etcdMemberCommunicationSlow, etcdDatabaseQuotaLowSpace) move as on etcd, and a leader
/// change is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_series_etcd_alert_rules_read() {
    use cairn_api::etcdserverpb::StatusRequest;
    let mut c = Cluster::start(3, &["--quota-backend-bytes", "3000000"]).await;
    etcdctl_ok(&c.endpoints(), &["put", "k", "v"]);
    let l = c.leader().await;
    let leader = &c.members[l];
    assert_eq!(leader.metric("etcd_server_quota_backend_bytes").await, Some(3_000_000.0));
    assert_eq!(leader.metric("etcd_server_is_learner").await, Some(0.0));
    let mut ids = Vec::new();
    for i in 0..3 {
        let s = c.maintenance(i).await.status(StatusRequest {}).await.expect("status");
        ids.push(format!("{:x}", s.get_ref().header.as_ref().map_or(0, |h| h.member_id)));
    }
    // Heartbeats to both followers are timed.
    let deadline = Instant::now() + Duration::from_secs(10);
    for f in (0..3).filter(|i| *i != l) {
        loop {
            let n = labelled(leader, "etcd_network_peer_round_trip_time_seconds_count", &ids[f]).await;
            if n.is_some_and(|n| n > 0.0) {
                break;
            }
            assert!(Instant::now() < deadline, "no round trips to {} timed", ids[f]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(leader.log().contains("leader changed from none to"), "{}", leader.log());
    // A follower dies: the leader counts what it fails to send it.
    let f = (l + 1) % 3;
    c.members[f].kill();
    let leader = &c.members[l];
    loop {
        let n = labelled(leader, "etcd_network_peer_sent_failures_total", &ids[f]).await;
        if n.is_some_and(|n| n > 0.0) {
            break;
        }
        assert!(Instant::now() < deadline + Duration::from_secs(10), "no send failures to {} counted", ids[f]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `--experimental-warning-apply-duration`: applied batches slower than it are logged with
/// etcd's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_applies_are_logged_past_the_configured_duration() {
    let c = Cluster::start(1, &["--experimental-warning-apply-duration=1ns"]).await;
    etcdctl_ok(&c.endpoints(), &["put", "k", "v"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.members[0].log().contains("apply request took too long") {
        assert!(Instant::now() < deadline, "{}", c.members[0].log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
