//! The chaos suite in CI: short seeded runs against real `cairn` processes. A longer run is
//! `./target/release/cairn-chaos --duration 10m --seed <n>` (docs/RELIABILITY.md).

use cairn_chaos::runner::{run_chaos, Config, Fault};
use std::time::Duration;

/// `CAIRN_CHAOS_SEED` overrides the seed (to rerun a failure CI printed).
fn seed(default: u64) -> u64 {
    std::env::var("CAIRN_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_killed_paused_partitioned_and_slowed_stay_linearizable() {
    let cfg = Config {
        seed: seed(20261122),
        members: 3,
        duration: Duration::from_secs(40),
        faults: vec![Fault::Kill, Fault::Pause, Fault::Partition, Fault::Delay, Fault::MoveLeader],
        ..Config::default()
    };
    let report = run_chaos(&cfg).await;
    println!("{report}");
    assert!(report.passed(), "{report}");
    // Without root or iptables the partitions are skipped (loudly); ./scripts/test installs
    // iptables, and CI runs as root, so there they must have happened.
    if std::env::var_os("CAIRN_CHAOS_REQUIRE_PARTITIONS").is_some() {
        assert!(report.partitions_skipped.is_none(), "{report}");
    }
    let (total, ok, _, _) = report.ops;
    assert!(total > 500 && ok > total / 2, "the clients made progress: {report}");
    assert!(report.faults.len() >= 5, "the nemesis struck: {report}");
}

/// Lease reads under the faults that threaten them: a paused or partitioned leader whose
/// lease must end before anyone else can lead, restarts that forget heartbeats, moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_with_lease_reads_stay_linearizable() {
    let cfg = Config {
        seed: seed(20261206),
        members: 3,
        duration: Duration::from_secs(30),
        faults: vec![Fault::Kill, Fault::Pause, Fault::Partition, Fault::MoveLeader],
        lease_reads: true,
        ..Config::default()
    };
    let report = run_chaos(&cfg).await;
    println!("{report}");
    assert!(report.passed(), "{report}");
    let (total, ok, _, _) = report.ops;
    assert!(total > 500 && ok > total / 2, "the clients made progress: {report}");
    assert!(report.faults.len() >= 4, "the nemesis struck: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_killed_partitioned_lossy_and_replaced_stay_linearizable() {
    let cfg = Config {
        seed: seed(5),
        members: 5,
        clients: 8,
        duration: Duration::from_secs(30),
        faults: vec![Fault::Kill, Fault::Partition, Fault::Loss, Fault::Replace],
        fault_interval: Duration::from_secs(3),
        ..Config::default()
    };
    let report = run_chaos(&cfg).await;
    println!("{report}");
    assert!(report.passed(), "{report}");
    // The first replacement joins as a learner (they alternate with joining as a voter).
    let first = report.faults.iter().find(|f| f.starts_with("replace"));
    assert!(first.is_some_and(|f| f.contains("as a learner")), "a member was replaced through a learner: {report}");
}

/// The negative controls: serializable reads are served from a member's own state, which
/// lags the leader, so the checker must reject the history even without faults; a write
/// counted as acknowledged that nobody made must be missing from the watch streams; an
/// event dropped from a live watch stream must be reported as a gap; and leases recorded
/// with three times their real TTL must be seen expiring "early".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_reads_are_caught_as_stale() {
    let cfg = Config {
        seed: seed(3),
        duration: Duration::from_secs(10),
        faults: vec![],
        serializable_reads: true,
        phantom_write: true,
        overstate_lease_ttl: true,
        drop_live_event: true,
        ..Config::default()
    };
    let report = run_chaos(&cfg).await;
    println!("{report}");
    if let Some(dir) = &report.kept {
        let _ = std::fs::remove_dir_all(dir);
    }
    assert!(
        report.problems.iter().any(|p| p.contains("is not linearizable")),
        "stale reads must be detected: {report}"
    );
    assert!(
        report.problems.iter().any(|p| p.contains("missing from the watch history")),
        "a lost acknowledged write must be detected: {report}"
    );
    assert!(
        report.problems.iter().any(|p| p.contains("live watch (resumed after every break) differs")),
        "a gap in a live watch stream must be detected: {report}"
    );
    assert!(
        report.problems.iter().any(|p| p.contains("expired early")),
        "a lease gone before its (claimed) TTL must be detected: {report}"
    );
}

/// The case lease reads must get right, made to happen: the leader is cut off from its
/// followers, they elect another and a write succeeds there; the old leader, still
/// believing it leads, must not answer a linearizable read with the old value. (With the
/// lease ten times too long, the same steps read the old value: checked by hand when this
/// was written, docs/PERFORMANCE.md "Lease reads".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_serves_no_stale_lease_read() {
    use cairn_chaos::runner::Firewall;
    use cairn_testing::{etcdctl, etcdctl_ok, Cluster};
    if let Err(why) = Firewall::usable() {
        assert!(std::env::var_os("CAIRN_CHAOS_REQUIRE_PARTITIONS").is_none(), "iptables is needed: {why}");
        eprintln!("\n*** SKIPPING a_cut_off_leader_serves_no_stale_lease_read: {why} ***\n");
        return;
    }
    let c = Cluster::start_on_own_addresses(3, &["--experimental-lease-reads"]).await;
    let old = c.leader().await;
    let ep = c.members[old].endpoint();
    etcdctl_ok(&ep, &["put", "k", "v1"]);
    assert_eq!(etcdctl_ok(&ep, &["get", "k", "--print-value-only"]), "v1\n", "a read that wins the lease");
    let mut fw = Firewall::default();
    for (i, m) in c.members.iter().enumerate() {
        if i != old {
            fw.cut(&c.members[old].host(), &m.host(), 1.0);
        }
    }
    let other = c.members[(old + 1) % 3].endpoint();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !etcdctl(&other, &["put", "k", "v2", "--command-timeout", "1s"], None).status.success() {
        assert!(std::time::Instant::now() < deadline, "the majority elected no new leader");
    }
    let read = etcdctl(&ep, &["get", "k", "--print-value-only", "--command-timeout", "2s"], None);
    let value = String::from_utf8_lossy(&read.stdout).into_owned();
    assert_ne!(value, "v1\n", "the cut-off leader answered a linearizable read with the old value");
    fw.heal();
}

/// The SDK's require-leader (on by default): a watch on a member cut off from the majority
/// is ended by that member (`etcdserver: no leader`) and resumes on another one, so it sees
/// the majority's writes; the same watch without require-leader stays on the cut-off
/// member and sees nothing until the partition heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_watch_leaves_a_member_cut_off_from_the_majority() {
    use cairn_chaos::runner::Firewall;
    use cairn_sdk::{Client, ConnectOptions};
    use cairn_testing::{etcdctl, Cluster};
    if let Err(why) = Firewall::usable() {
        assert!(std::env::var_os("CAIRN_CHAOS_REQUIRE_PARTITIONS").is_none(), "iptables is needed: {why}");
        eprintln!("\n*** SKIPPING an_sdk_watch_leaves_a_member_cut_off_from_the_majority: {why} ***\n");
        return;
    }
    let c = Cluster::start_on_own_addresses(3, &[]).await;
    let alone = (c.leader().await + 1) % 3;
    let others: Vec<usize> = (0..3).filter(|i| *i != alone).collect();
    // Both clients start on the member about to be cut off.
    let eps: Vec<String> = [alone, others[0], others[1]].iter().map(|i| c.members[*i].endpoint()).collect();
    // (HTTP/2 pings at the default pace: faster ones get a quiet connection closed by the
    // server's ping policy, which would move both watches for another reason.)
    let opts = ConnectOptions::new().with_spread(false);
    let client = Client::connect(eps.clone(), opts.clone()).await.expect("connect");
    let plain = Client::connect(eps, opts.with_require_leader(false)).await.expect("connect");
    let mut w = client.watch("rl", None).await.expect("watch");
    let mut quiet = plain.watch("rl", None).await.expect("watch");
    let mut fw = Firewall::default();
    for i in &others {
        fw.cut(&c.members[alone].host(), &c.members[*i].host(), 1.0);
    }
    let majority: Vec<String> = others.iter().map(|i| c.members[*i].endpoint()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !etcdctl(&majority.join(","), &["put", "rl", "written", "--command-timeout", "2s"], None).status.success() {
        assert!(std::time::Instant::now() < deadline, "the majority took no write");
    }
    let got = tokio::time::timeout(Duration::from_secs(30), w.message()).await;
    let resp = got.expect("the watch moved to the majority in time").expect("a delivery").expect("no error");
    assert_eq!(resp.events[0].kv.as_ref().map(|kv| kv.value.clone()), Some(b"written".to_vec()));
    let stuck = tokio::time::timeout(Duration::from_secs(2), quiet.message()).await;
    assert!(stuck.is_err(), "the watch without require-leader saw the write: {stuck:?}");
    fw.heal();
}
