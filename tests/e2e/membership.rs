//! Cluster operations driven by the real etcdctl against real `cairn` processes: growing
//! and shrinking under a write load, replacing a wiped member, learners, move-leader,
//! snapshot save + restore into a new cluster, defragment, auto-compaction and the
//! corruption check.

use super::harness::{etcdctl, etcdctl_ok, json, Cluster};
use cairn_api::etcdserverpb::{PutRequest, RangeRequest};
use cairn_testing::cairnctl_binary;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sequential puts of `load/<n>` through member `i` until stopped (at most 20,000 or
/// 120 s); returns the acknowledged keys and the number of failed puts.
fn writer(c: &Cluster, i: usize) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(BTreeSet<String>, usize)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let url = c.members[i].client_url.clone();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut kv = cairn_api::etcdserverpb::kv_client::KvClient::connect(url).await.expect("connect");
        let (mut acked, mut failed) = (BTreeSet::new(), 0);
        let deadline = Instant::now() + Duration::from_secs(120);
        for n in 0..20_000 {
            if s.load(Ordering::SeqCst) || Instant::now() > deadline {
                break;
            }
            let key = format!("load/{n:06}");
            let put = PutRequest { key: key.clone().into(), value: b"v".to_vec(), ..Default::default() };
            match kv.put(put).await {
                Ok(_) => {
                    acked.insert(key);
                }
                Err(_) => failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (acked, failed)
    });
    (stop, task)
}

/// Every `load/` key on member `i` (linearizable).
async fn load_keys(c: &Cluster, i: usize) -> BTreeSet<String> {
    let r = c
        .kv(i)
        .await
        .range(RangeRequest {
            key: b"load/".to_vec(),
            range_end: b"load0".to_vec(),
            keys_only: true,
            ..Default::default()
        })
        .await
        .expect("range");
    r.into_inner().kvs.into_iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
}

fn members_json(c: &Cluster) -> Vec<serde_json::Value> {
    json(&etcdctl_ok(&c.endpoints(), &["member", "list", "-w", "json"]))["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The member list once it satisfies `ok` (asked again for up to 5 s, as in [`id_of`]).
fn members_until(c: &Cluster, ok: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = members_json(c);
        if ok(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "member list never as expected: {m:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The id (hex, as etcdctl takes it) of the member with `peer_url`. etcdctl's member list
/// is served by whichever member it picks, which may not have applied a change just made
/// through another one yet: asked again for up to 5 s.
fn id_of(c: &Cluster, peer_url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = members_json(c)
            .iter()
            .find(|m| m["peerURLs"].as_array().is_some_and(|u| u.iter().any(|u| u == peer_url)))
            .and_then(|m| m["ID"].as_u64());
        if let Some(id) = found {
            return format!("{id:x}");
        }
        assert!(Instant::now() < deadline, "no member with {peer_url}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `etcdctl member add`, then start the new member with what it printed.
async fn add_and_start(c: &mut Cluster, name: &str, learner: bool) -> usize {
    let peer = Cluster::new_peer_url();
    let mut args = vec!["member", "add", name, "--peer-urls", &peer];
    if learner {
        args.push("--learner");
    }
    let out = etcdctl_ok(&c.endpoints(), &args);
    let initial = out
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
        .map(|l| l.trim_end_matches('"').to_string())
        .unwrap_or_else(|| panic!("member add printed no ETCD_INITIAL_CLUSTER: {out}"));
    let i = c.joiner(name, &peer, &initial, &[]);
    c.members[i].start();
    c.wait_ready(i).await;
    wait_caught_up(c, i).await;
    i
}

/// Wait until member `i` has applied what the leader had logged when asked, and has
/// published its name.
async fn wait_caught_up(c: &Cluster, i: usize) {
    let status = |ep: &str| json(&etcdctl_ok(ep, &["endpoint", "status", "-w", "json"]))[0]["Status"].clone();
    let l = c.leader().await;
    let target = status(&c.members[l].endpoint())["raftIndex"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied = status(&c.members[i].endpoint())["raftAppliedIndex"].as_u64().unwrap_or(0);
        let named = members_json(c).iter().all(|m| m["name"].as_str().is_some_and(|n| !n.is_empty()));
        if applied >= target && named {
            return;
        }
        assert!(Instant::now() < deadline, "member {i} did not catch up:\n{}", c.members[i].log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn hashkv_all(c: &Cluster) -> Vec<u64> {
    json(&etcdctl_ok(&c.endpoints(), &["endpoint", "hashkv", "-w", "json"]))
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["HashKV"]["hash"].as_u64().unwrap_or(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_three_to_five_and_back_under_writes() {
    let mut c = Cluster::start(3, &[]).await;
    let (stop, task) = writer(&c, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m3 = add_and_start(&mut c, "m3", false).await;
    let m4 = add_and_start(&mut c, "m4", false).await;
    let listed = members_until(&c, |m| m.len() == 5);
    assert_eq!(listed.len(), 5, "{listed:?}\n{}", c.members[m3].log());
    assert!(listed.iter().all(|m| m["name"].as_str().is_some_and(|n| !n.is_empty())), "all started: {listed:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Back to three: each removed member stops by itself.
    for i in [m3, m4] {
        let id = id_of(&c, &c.members[i].peer_url.clone());
        let out = etcdctl_ok(&c.members[0].endpoint(), &["member", "remove", &id]);
        assert!(out.contains(&format!("Member {id:>16} removed from cluster")), "{out}");
        assert!(c.members[i].wait_exit(Duration::from_secs(20)).await, "removed member still running");
        assert!(c.members[i].log().contains("permanently removed"), "{}", c.members[i].log());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (acked, failed) = task.await.expect("writer");
    assert!(acked.len() > 50, "the load ran: {} acked", acked.len());
    assert_eq!(failed, 0, "no write failed during the membership changes");
    members_until(&c, |m| m.len() == 3);
    for i in 0..3 {
        let have = load_keys(&c, i).await;
        let lost: Vec<_> = acked.difference(&have).collect();
        assert!(lost.is_empty(), "member {i} lost acknowledged writes: {lost:?}");
    }
    let hashes = hashkv_all(&c);
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_a_wiped_member_then_remove_the_leader() {
    // A short snapshot interval purges the log, so the replacement catches up by snapshot.
    let mut c = Cluster::start(3, &["--snapshot-count", "20"]).await;
    for n in 0..60 {
        etcdctl_ok(&c.endpoints(), &["put", &format!("k{n:03}"), &format!("v{n}")]);
    }
    // Member 2's machine dies and its disk is wiped; it is replaced by a new member.
    let old_id = id_of(&c, &c.members[2].peer_url.clone());
    c.members[2].kill();
    std::fs::remove_dir_all(&c.members[2].data_dir).expect("wipe");
    etcdctl_ok(&c.endpoints(), &["member", "remove", &old_id]);
    let new = add_and_start(&mut c, "m2b", false).await;
    let out = etcdctl_ok(&c.members[new].endpoint(), &["get", "k", "--prefix", "--keys-only", "--consistency=s"]);
    assert_eq!(out.lines().filter(|l| !l.is_empty()).count(), 60, "replacement caught up: {out}");
    assert_ne!(id_of(&c, &c.members[new].peer_url.clone()), old_id, "a replacement gets a new id");
    // Remove the leader itself: it steps down and stops; the other two carry on.
    let l = c.leader().await;
    let lid = id_of(&c, &c.members[l].peer_url.clone());
    let other = (0..c.members.len()).find(|&i| i != l && c.members[i].is_running()).expect("another member");
    etcdctl_ok(&c.members[other].endpoint(), &["member", "remove", &lid]);
    assert!(c.members[l].wait_exit(Duration::from_secs(20)).await, "removed leader still running");
    members_until(&c, |m| m.len() == 2);
    etcdctl_ok(&c.endpoints(), &["put", "after", "leader-removed"]);
    let out = etcdctl_ok(&c.endpoints(), &["get", "after", "--print-value-only"]);
    assert_eq!(out.trim(), "leader-removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learners_bad_requests_and_move_leader() {
    let mut c = Cluster::start(3, &[]).await;
    let ep = c.endpoints();
    let fail = |args: &[&str]| {
        let out = etcdctl(&ep, args, None);
        assert!(!out.status.success(), "etcdctl {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Bad input: a peer URL in use, an unknown id, a malformed URL.
    let taken = c.members[1].peer_url.clone();
    assert!(fail(&["member", "add", "x", "--peer-urls", &taken]).contains("etcdserver: Peer URLs already exists"));
    assert!(fail(&["member", "remove", "1234"]).contains("etcdserver: member not found"));
    assert!(fail(&["member", "promote", "1234"]).contains("etcdserver: member not found"));
    let voter = id_of(&c, &c.members[1].peer_url.clone());
    assert!(fail(&["member", "promote", &voter]).contains("etcdserver: can only promote a learner member"));
    let mut cluster = cairn_api::etcdserverpb::cluster_client::ClusterClient::connect(c.members[0].client_url.clone())
        .await
        .expect("connect");
    let bad = cairn_api::etcdserverpb::MemberAddRequest { peer_ur_ls: vec!["not a url".into()], is_learner: false };
    let err = cluster.member_add(bad).await.expect_err("a malformed peer URL is refused");
    assert_eq!(err.message(), "etcdserver: given member URLs are invalid");

    // A learner that has not started cannot be promoted; once caught up it can.
    let peer = Cluster::new_peer_url();
    let out = etcdctl_ok(&ep, &["member", "add", "m3", "--learner", "--peer-urls", &peer]);
    let initial =
        out.lines().find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\"")).expect("printed").trim_end_matches('"');
    let id = id_of(&c, &peer);
    assert!(fail(&["member", "promote", &id]).contains("in sync with leader"));
    let other = Cluster::new_peer_url();
    assert!(fail(&["member", "add", "m4", "--learner", "--peer-urls", &other]).contains("too many learner members"));
    let m3 = c.joiner("m3", &peer, initial, &[]);
    c.members[m3].start();
    c.wait_ready(m3).await;
    wait_caught_up(&c, m3).await;
    let st = json(&etcdctl_ok(&c.members[m3].endpoint(), &["endpoint", "status", "-w", "json"]));
    assert_eq!(st[0]["Status"]["isLearner"], true, "{st}");
    c.members[m3].wait_metric("etcd_server_is_learner", Duration::from_secs(10), |v| v == 1.0).await;
    // A learner serves serializable reads of replicated data.
    etcdctl_ok(&ep, &["put", "seen-by-learner", "yes"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = etcdctl(&c.members[m3].endpoint(), &["get", "seen-by-learner", "--consistency=s"], None);
        if String::from_utf8_lossy(&out.stdout).contains("yes") {
            break;
        }
        assert!(Instant::now() < deadline, "the learner never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = etcdctl_ok(&ep, &["member", "promote", &id]);
    assert!(out.contains("promoted"), "{out}");
    members_until(&c, |m| m.iter().all(|m| !m.get("isLearner").is_some_and(|l| l == true)));

    // Move the leadership to a follower, asked of the leader and of a follower.
    for _ in 0..2 {
        let l = c.leader().await;
        let target = (0..c.members.len()).find(|&i| i != l).expect("a follower");
        let tid = id_of(&c, &c.members[target].peer_url.clone());
        let started = Instant::now();
        let out = etcdctl_ok(&c.members[l].endpoint(), &["move-leader", &tid]);
        assert!(out.contains(&format!("to {tid}")), "{out}");
        assert_eq!(c.leader().await, target, "leadership moved (took {:?})", started.elapsed());
        etcdctl_ok(&c.endpoints(), &["put", "after-move", "ok"]);
    }
    let l = c.leader().await;
    assert!(fail(&["move-leader", "1234"]).contains("etcdserver: bad leader transferee"));
    assert_eq!(c.leader().await, l, "a refused transfer leaves the leader alone");
}

/// Run cairnctl: (success, stdout, stderr).
fn ctl(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(cairnctl_binary()).args(args).output().expect("cairnctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cairnctl snapshot restore` of `file` into every member of the prepared cluster `c`.
fn restore_into(c: &Cluster, file: &str, extra: &[&str]) {
    let initial: Vec<String> = c.members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect();
    let initial = initial.join(",");
    for m in &c.members {
        let data_dir = m.data_dir.display().to_string();
        let mut args = vec!["snapshot", "restore", file, "--name", &m.name, "--initial-cluster", &initial];
        args.extend(["--initial-cluster-token", c.token(), "--initial-advertise-peer-urls", &m.peer_url]);
        args.extend(["--data-dir", &data_dir]);
        args.extend(extra);
        let (ok, out, err) = ctl(&args);
        assert!(ok, "restore {}: {err}", m.name);
        assert!(out.contains("restored snapshot"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_during_writes_restores_into_a_new_cluster() {
    let c = Cluster::start(3, &[]).await;
    for n in 0..40 {
        etcdctl_ok(&c.endpoints(), &["put", &format!("pre{n:02}"), "x"]);
    }
    let (stop, task) = writer(&c, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.db");
    let file_s = file.display().to_string();
    let out = etcdctl_ok(&c.members[1].endpoint(), &["snapshot", "save", &file_s]);
    assert!(out.contains("Snapshot saved at"), "{out}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let (acked, _) = task.await.expect("writer");
    assert!(!acked.is_empty());

    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(cairnctl_binary()).args(args).output().expect("cairnctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, status, err) = ctl(&["snapshot", "status", &file_s, "-w", "json"]);
    assert!(ok, "{err}");
    let rev = json(&status)["revision"].as_i64().expect("revision");
    // The source member's HashKV at the snapshot's revision: what the restored members
    // must compute from what they restored.
    let source =
        json(&etcdctl_ok(&c.members[1].endpoint(), &["endpoint", "hashkv", "-w", "json", &format!("--rev={rev}")]));
    let hash = source[0]["HashKV"]["hash"].as_u64().expect("hash");
    let source_cluster =
        json(&etcdctl_ok(&c.endpoints(), &["member", "list", "-w", "json"]))["header"]["cluster_id"].clone();

    // A damaged copy is refused, and leaves no data directory behind.
    let bad = dir.path().join("bad.db");
    let mut bytes = std::fs::read(&file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&bad, bytes).expect("write");
    let bad_dir = dir.path().join("bad-restore");
    let (ok, _, err) =
        ctl(&["snapshot", "restore", &bad.display().to_string(), "--data-dir", &bad_dir.display().to_string()]);
    assert!(!ok && err.contains("checksum mismatch"), "{err}");
    assert!(!bad_dir.exists());

    // Restore into a fresh 3-member cluster.
    let mut r = Cluster::prepare(3, &[]);
    restore_into(&r, &file_s, &[]);
    r.start_all().await;
    let restored = json(&etcdctl_ok(&r.endpoints(), &["endpoint", "hashkv", "-w", "json", &format!("--rev={rev}")]));
    for e in restored.as_array().expect("endpoints") {
        assert_eq!(e["HashKV"]["hash"].as_u64(), Some(hash), "restored member's HashKV: {restored}");
    }
    let list = json(&etcdctl_ok(&r.endpoints(), &["member", "list", "-w", "json"]));
    assert_eq!(list["members"].as_array().map(Vec::len), Some(3));
    assert_ne!(list["header"]["cluster_id"], source_cluster, "a restore makes a new cluster");
    let out = etcdctl_ok(&r.endpoints(), &["get", "pre", "--prefix", "--keys-only"]);
    assert_eq!(out.lines().filter(|l| !l.is_empty()).count(), 40);
    etcdctl_ok(&r.endpoints(), &["put", "restored", "yes"]);

    // --bump-revision and --mark-compacted: revisions move on and old ones are gone.
    let mut one = Cluster::prepare(1, &[]);
    restore_into(&one, &file_s, &["--bump-revision", "1000", "--mark-compacted"]);
    one.start_all().await;
    let got = json(&etcdctl_ok(&one.endpoints(), &["get", "pre00", "-w", "json"]));
    assert!(got["header"]["revision"].as_i64().unwrap_or(0) >= rev + 1000, "{got}");
    let out = etcdctl(&one.endpoints(), &["get", "pre00", &format!("--rev={rev}")], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("required revision has been compacted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defrag_gives_space_back_and_clears_nospace() {
    let c = Cluster::start(1, &["--quota-backend-bytes", "3000000"]).await;
    let ep = c.endpoints();
    let value = "x".repeat(64 << 10);
    let mut refused = false;
    for n in 0..200 {
        let out = etcdctl(&ep, &["put", &format!("big{n:03}"), &value], None);
        if !out.status.success() {
            assert!(String::from_utf8_lossy(&out.stderr).contains("database space exceeded"));
            refused = true;
            break;
        }
    }
    assert!(refused, "the quota was reached");
    assert!(etcdctl_ok(&ep, &["alarm", "list"]).contains("alarm:NOSPACE"));
    // Reclaim: delete, compact, defragment; the alarm clears itself.
    etcdctl_ok(&ep, &["del", "big", "--prefix"]);
    let rev = json(&etcdctl_ok(&ep, &["get", "x", "-w", "json"]))["header"]["revision"].as_i64().expect("rev");
    etcdctl_ok(&ep, &["compact", &rev.to_string(), "--physical"]);
    let before = json(&etcdctl_ok(&ep, &["endpoint", "status", "-w", "json"]))[0]["Status"]["dbSize"].as_i64();
    let out = etcdctl_ok(&ep, &["defrag"]);
    assert!(out.contains("Finished defragmenting etcd member"), "{out}");
    let after = json(&etcdctl_ok(&ep, &["endpoint", "status", "-w", "json"]))[0]["Status"]["dbSize"].as_i64();
    assert!(after.unwrap_or(i64::MAX) * 3 < before.unwrap_or(0), "defrag: {before:?} -> {after:?}");
    assert_eq!(etcdctl_ok(&ep, &["alarm", "list"]).trim(), "", "NOSPACE cleared after defrag");
    etcdctl_ok(&ep, &["put", "fits-again", "yes"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compaction_in_both_modes() {
    let flags: [&[&str]; 2] = [
        &[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "10",
            "--auto-compaction-interval",
            "200ms",
        ],
        &["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1s"],
    ];
    for extra in flags {
        let c = Cluster::start(1, extra).await;
        let ep = c.endpoints();
        for n in 0..30 {
            etcdctl_ok(&ep, &["put", "k", &n.to_string()]);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = etcdctl(&ep, &["get", "k", "--rev=2"], None);
            if String::from_utf8_lossy(&out.stderr).contains("required revision has been compacted") {
                break;
            }
            assert!(Instant::now() < deadline, "{extra:?}: revision 2 never compacted");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The newest revisions are kept.
        let out = etcdctl_ok(&ep, &["get", "k", "--rev=31", "--print-value-only"]);
        assert_eq!(out.trim(), "29", "{extra:?}");
    }
}

/// Change the newest value in a (stopped) member's store behind Raft's back, as a disk
/// fault would.
fn rot_the_newest_value(data_dir: &std::path::Path) {
    use cairn_store::{Table, WriteBatch};
    let engine = cairn_store::engine::open(cairn_store::EngineKind::Redb, &data_dir.join("member"))
        .expect("open the victim's store");
    let (k, v) = engine.last(Table::Kv).expect("read").expect("a revision");
    let mut kv = <cairn_api::mvccpb::KeyValue as prost::Message>::decode(&v[1..]).expect("decode");
    kv.value = b"rotten".to_vec();
    let mut bad = vec![v[0]];
    bad.extend(prost::Message::encode_to_vec(&kv));
    let mut b = WriteBatch::new();
    b.put(Table::Kv, k, bad);
    engine.write(b, true).expect("write");
}

/// `--experimental-initial-corrupt-check`: a member whose data diverged from its peers'
/// does not start; a healthy one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initial_corruption_check_keeps_a_diverged_member_from_starting() {
    let mut c = Cluster::start(3, &[]).await;
    for n in 0..20 {
        etcdctl_ok(&c.endpoints(), &["put", &format!("k{n}"), "original"]);
    }
    // Every member checkpoints its applied state (once a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let victim = (c.leader().await + 1) % 3;
    let healthy = (victim + 1) % 3;
    for i in [victim, healthy] {
        c.members[i].kill();
        c.members[i].add_args(&["--experimental-initial-corrupt-check"]);
    }
    rot_the_newest_value(&c.members[victim].data_dir);
    c.members[healthy].start();
    c.wait_ready(healthy).await;
    // Compared with the leader (the victim is down).
    let log = c.members[healthy].log();
    assert!(log.lines().any(|l| l.contains("initial corruption check passed: 1 of 2 peers agree")), "{log}");
    c.members[victim].start();
    assert!(c.members[victim].wait_exit(Duration::from_secs(30)).await, "the diverged member kept running");
    let log = c.members[victim].log();
    assert!(log.contains("found data inconsistency with peers"), "{log}");
    // The others never took the rotten value.
    assert!(etcdctl_ok(&c.endpoints(), &["get", "k19", "--print-value-only"]).contains("original"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_member_raises_corrupt() {
    let mut c = Cluster::start(3, &["--experimental-corrupt-check-time", "300ms"]).await;
    for n in 0..20 {
        etcdctl_ok(&c.endpoints(), &["put", &format!("k{n}"), "original"]);
    }
    // Let every member checkpoint its applied state, then change one member's data behind
    // Raft's back (as a disk fault would).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let victim = (c.leader().await + 1) % 3;
    c.members[victim].kill();
    rot_the_newest_value(&c.members[victim].data_dir);
    c.members[victim].start();
    let victim_id = id_of(&c, &c.members[victim].peer_url.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = etcdctl_ok(&c.endpoints(), &["alarm", "list"]);
        if out.contains("alarm:CORRUPT") {
            assert!(out.contains(&u64::from_str_radix(&victim_id, 16).expect("hex").to_string()), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "no CORRUPT alarm; victim log:\n{}", c.members[victim].log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = etcdctl(&c.endpoints(), &["put", "k0", "new"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcdserver: corrupt cluster"));
    // Reads still work.
    assert!(etcdctl_ok(&c.endpoints(), &["get", "k1", "--print-value-only"]).contains("original"));
    // Every member applies the alarm and stops being ready.
    for m in &c.members {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = reqwest::get(format!("{}/readyz?verbose", m.client_url)).await.expect("readyz");
            let status = ready.status();
            let body = ready.text().await.unwrap_or_default();
            if status == 503 && body.contains("[-]data_corruption") {
                break;
            }
            assert!(Instant::now() < deadline, "{}: {status} {body}", m.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A follower that missed many large writes catches up (openraft gives an append one
/// heartbeat interval; appends are capped in bytes so none takes longer forever).
/// Two of three members are lost for good: the survivor, restarted with
/// `--force-new-cluster`, serves alone with every key, revision and lease, takes writes,
/// and grows again by `member add`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_brings_back_a_member_after_quorum_loss() {
    let mut c = Cluster::start(3, &[]).await;
    let lease = etcdctl_ok(&c.endpoints(), &["lease", "grant", "600"]);
    let lease_id = lease.split_whitespace().nth(1).expect("lease id").to_string();
    for n in 0..30 {
        etcdctl_ok(&c.endpoints(), &["put", &format!("k{n:02}"), &format!("v{n}")]);
    }
    etcdctl_ok(&c.endpoints(), &["put", "leased", "x", "--lease", &lease_id]);
    let survivor = (c.leader().await + 1) % 3;
    // Everything is applied on the survivor before the others go.
    wait_caught_up(&c, survivor).await;
    let before = etcdctl_ok(&c.members[survivor].endpoint(), &["get", "", "--from-key", "-w", "json"]);
    let kvs = |out: &str| json(out)["kvs"].clone();
    for i in 0..3 {
        c.members[i].kill();
    }
    c.members[survivor].add_args(&["--force-new-cluster"]);
    c.members[survivor].start();
    c.wait_ready(survivor).await;
    let ep = c.members[survivor].endpoint();
    let after = etcdctl_ok(&ep, &["get", "", "--from-key", "-w", "json"]);
    assert_eq!(kvs(&after), kvs(&before), "every key with its revisions");
    assert_eq!(members_json(&c).len(), 1, "one member: {:?}", members_json(&c));
    assert!(c.members[survivor].log().contains("--force-new-cluster: this member is now a one-member cluster"));
    let ttl = etcdctl_ok(&ep, &["lease", "timetolive", &lease_id, "--keys"]);
    assert!(ttl.contains("leased"), "the lease and its key survive: {ttl}");
    etcdctl_ok(&ep, &["put", "after", "recovery"]);
    // Restarting with the flag again changes nothing (already alone).
    c.members[survivor].kill();
    c.members[survivor].start();
    c.wait_ready(survivor).await;
    assert_eq!(etcdctl_ok(&ep, &["get", "after", "--print-value-only"]).trim(), "recovery");
    // The cluster grows again: as etcd, a lone member takes a learner first, then promotes it.
    let joined = add_and_start(&mut c, "fresh", true).await;
    let got = etcdctl_ok(&c.members[joined].endpoint(), &["get", "k07", "--print-value-only", "--consistency=s"]);
    assert_eq!(got.trim(), "v7");
    let id = id_of(&c, &c.members[joined].peer_url.clone());
    etcdctl_ok(&ep, &["member", "promote", &id]);
    let voters = members_until(&c, |ms| ms.len() == 2 && ms.iter().all(|m| m["isLearner"].as_bool() != Some(true)));
    assert_eq!(voters.len(), 2);
    etcdctl_ok(&c.endpoints(), &["put", "two", "members"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_over_large_values() {
    let mut c = Cluster::start(3, &[]).await;
    let f = (c.leader().await + 1) % 3;
    c.members[f].kill();
    let value = "v".repeat(1 << 20);
    let up = (0..3).find(|&i| i != f).expect("a running member");
    let mut kv = c.kv(up).await;
    for n in 0..40 {
        kv.put(PutRequest { key: format!("big{n:02}").into(), value: value.clone().into(), ..Default::default() })
            .await
            .expect("put");
    }
    c.members[f].start();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let Ok(mut kv) = cairn_api::etcdserverpb::kv_client::KvClient::connect(c.members[f].client_url.clone()).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let r = kv
            .range(RangeRequest {
                key: b"big".to_vec(),
                range_end: b"bih".to_vec(),
                count_only: true,
                serializable: true,
                ..Default::default()
            })
            .await;
        if r.as_ref().is_ok_and(|r| r.get_ref().count == 40) {
            break;
        }
        assert!(Instant::now() < deadline, "follower did not catch up: {r:?}\n{}", c.members[f].log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learners_promote_themselves_with_the_flag() {
    let mut c = Cluster::start(3, &["--experimental-learner-auto-promote"]).await;
    for n in 0..20 {
        etcdctl_ok(&c.endpoints(), &["put", &format!("k{n}"), "v"]);
    }
    let i = add_and_start(&mut c, "m3", true).await;
    let peer = c.members[i].peer_url.clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = members_json(&c);
        let me = m.iter().find(|m| m["peerURLs"][0] == peer.as_str()).cloned().expect("listed");
        if !me.get("isLearner").is_some_and(|l| l == true) {
            break;
        }
        assert!(Instant::now() < deadline, "never promoted: {me}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    members_until(&c, |m| m.len() == 4);
    etcdctl_ok(&c.endpoints(), &["put", "after", "promotion"]);
}

/// Below `--min-free-disk-bytes` of free disk the member refuses writes that add data
/// with NOSPACE instead of running into a full disk; reads and deletes go on. (A disk that
/// fills anyway stops the member — exit code 1 — with every acknowledged write on disk;
/// docs/OPERATIONS.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_disk_space_refuses_writes_and_keeps_serving() {
    let c = Cluster::start(1, &["--min-free-disk-bytes", &u64::MAX.to_string()]).await;
    let ep = c.endpoints();
    let out = etcdctl(&ep, &["put", "k", "v"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcdserver: mvcc: database space exceeded"));
    assert!(etcdctl_ok(&ep, &["alarm", "list"]).contains("alarm:NOSPACE"));
    assert_eq!(etcdctl_ok(&ep, &["get", "k"]), "");
    assert_eq!(etcdctl_ok(&ep, &["del", "k"]).trim(), "0");
    let status = json(&etcdctl_ok(&ep, &["endpoint", "status", "-w", "json"]));
    assert!(status[0]["Status"]["errors"][0].as_str().is_some_and(|e| e.ends_with("alarm:NOSPACE")), "{status}");
}

/// Snapshot dumps (`*.snap`) in a member's snapshot directory.
fn snapshot_files(c: &Cluster, i: usize) -> usize {
    std::fs::read_dir(c.members[i].data_dir.join("snap"))
        .map(|rd| rd.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "snap")).count())
        .unwrap_or(0)
}

/// A member alone in its cluster purges its log without dumping its store (the store is
/// the snapshot) and restarts without dumping either; the dump is made when a member added
/// later needs it, and that member gets every key, including ones from after the purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_member_dumps_a_snapshot_only_when_one_is_needed() {
    let mut c = Cluster::start(1, &["--snapshot-count", "20"]).await;
    let ep = c.members[0].endpoint();
    for n in 0..120 {
        etcdctl_ok(&ep, &["put", &format!("lone/{n:03}"), &n.to_string()]);
    }
    assert_eq!(snapshot_files(&c, 0), 0, "purging the log wrote a dump");
    c.members[0].kill();
    c.members[0].start();
    c.wait_ready(0).await;
    etcdctl_ok(&ep, &["put", "lone/after-restart", "yes"]);
    assert_eq!(snapshot_files(&c, 0), 0, "a restart wrote a dump");

    // The new member (a learner: a voter could not be added to one started member, as in
    // etcd) needs entries the log no longer has: it is sent a dump.
    let added = add_and_start(&mut c, "second", true).await;
    wait_caught_up(&c, added).await;
    let keys = json(&etcdctl_ok(
        &c.members[added].endpoint(),
        &["get", "lone/", "--prefix", "--keys-only", "--consistency", "s", "-w", "json"],
    ));
    assert_eq!(keys["count"], 121);
    assert!(snapshot_files(&c, 0) >= 1, "no dump was made for the new member");
    assert!(snapshot_files(&c, added) >= 1, "the new member installed no snapshot");
}

/// `--snapshot-count` counts client requests, as etcd's does, even when group commit folds
/// many of them into one Raft entry: 4,000 puts from 64 concurrent writers on a lone member
/// with `--snapshot-count 400` build about ten snapshots (etcd's
/// `etcd_debugging_snap_save_total_duration_seconds` counts them), though they made far
/// fewer than 4,000 entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_paced_by_requests_not_raft_entries() {
    const COUNT: usize = 400;
    const PUTS: usize = 4_000;
    let c = Cluster::start(1, &["--snapshot-count", &COUNT.to_string()]).await;
    let index_before = raft_index(&c).await;
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..64 {
        let mut kv = c.kv(0).await;
        writers.spawn(async move {
            for n in (w..PUTS).step_by(64) {
                let put = PutRequest {
                    key: format!("paced/{n:05}").into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                };
                kv.put(put).await.expect("put");
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("writer");
    }
    let entries = raft_index(&c).await - index_before;
    let name = "etcd_debugging_snap_save_total_duration_seconds_count";
    c.members[0].wait_metric(name, Duration::from_secs(10), |n| n >= (PUTS / COUNT - 2) as f64).await;
    let built = c.members[0].metric(name).await.unwrap_or_default();
    assert!(built <= (PUTS / COUNT + 2) as f64, "{built} snapshots for {PUTS} requests at {COUNT}");
    // What the test is about: entries alone would not have paced this many.
    assert!(entries < (PUTS / 2) as u64, "{entries} entries for {PUTS} puts: too little batching to tell");
    assert!(built as u64 > entries / COUNT as u64 + 1, "{built} snapshots, {entries} entries");
}

/// The member's Raft index, from Status.
async fn raft_index(c: &Cluster) -> u64 {
    let status = c.maintenance(0).await.status(cairn_api::etcdserverpb::StatusRequest {}).await.expect("status");
    status.into_inner().raft_index
}
