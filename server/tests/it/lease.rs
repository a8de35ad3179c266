//! Leases: etcdctl, expiry through Raft with DELETE events, keepalive, failover, storms.

use super::harness::{etcdctl, etcdctl_ok, in_process, json, Cluster};
use cairn_api::etcdserverpb::lease_client::LeaseClient;
use cairn_api::etcdserverpb::watch_client::WatchClient;
use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    MoveLeaderRequest, PutRequest, RangeRequest, StatusRequest, WatchCreateRequest, WatchRequest,
};
use cairn_api::mvccpb::event::EventType;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

async fn lease_client(url: &str) -> LeaseClient<tonic::transport::Channel> {
    LeaseClient::connect(url.to_string()).await.expect("connect")
}

async fn grant(url: &str, ttl: i64) -> i64 {
    lease_client(url).await.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await.expect("grant").into_inner().id
}

async fn exists(c: &Cluster, i: usize, key: &str) -> bool {
    let r = c.kv(i).await.range(RangeRequest { key: key.into(), ..Default::default() }).await.expect("range");
    r.into_inner().count == 1
}

/// Keep `id` alive through `url` every 300 ms until the returned sender is dropped.
async fn keep_alive(url: &str, id: i64) -> mpsc::Sender<()> {
    let (stop_tx, mut stop) = mpsc::channel::<()>(1);
    let url = url.to_string();
    tokio::spawn(async move {
        // Reconnect on failure, as a client library does; each attempt is bounded.
        while stop.try_recv() == Err(mpsc::error::TryRecvError::Empty) {
            if let Ok(mut c) = LeaseClient::connect(url.clone()).await {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    c.lease_keep_alive(tokio_stream::once(LeaseKeepAliveRequest { id })),
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    stop_tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lease_commands() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    let out = etcdctl_ok(&ep, &["lease", "grant", "60"]);
    let id = out.split_whitespace().nth(1).expect("lease id").to_string();
    assert!(out.contains("granted with TTL(60s)"), "{out}");
    etcdctl_ok(&ep, &["put", "/svc/api/10.0.0.5:8080", "up", "--lease", &id]);
    let ttl = etcdctl_ok(&ep, &["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.contains("granted with TTL(60s)") && ttl.contains("attached keys([/svc/api/10.0.0.5:8080])"), "{ttl}");
    let v = json(&etcdctl_ok(&ep, &["lease", "timetolive", &id, "-w", "json"]));
    assert_eq!(v["granted-ttl"], 60);
    assert!(v["ttl"].as_i64().unwrap_or(0) > 55);
    let list = etcdctl_ok(&ep, &["lease", "list"]);
    assert!(list.contains("found 1 leases") && list.contains(&id), "{list}");
    let got = json(&etcdctl_ok(&ep, &["get", "/svc/api/10.0.0.5:8080", "-w", "json"]));
    assert_eq!(format!("{:x}", got["kvs"][0]["lease"].as_i64().unwrap_or(0)), id.trim_start_matches('0'));
    let ka = etcdctl(&ep, &["lease", "keep-alive", "--once", &id], None);
    assert!(String::from_utf8_lossy(&ka.stdout).contains("keepalived with TTL(60)"), "{:?}", ka);
    assert!(etcdctl_ok(&ep, &["lease", "revoke", &id]).contains("revoked"));
    assert_eq!(etcdctl_ok(&ep, &["get", "/svc/", "--prefix"]), "", "revoking deletes attached keys");
    // Errors and edge cases, as etcd 3.4 answers them.
    assert!(etcdctl_ok(&ep, &["lease", "timetolive", "1234"]).contains("already expired"));
    let e = etcdctl(&ep, &["lease", "revoke", "1234"], None);
    assert!(String::from_utf8_lossy(&e.stderr).contains("etcdserver: requested lease not found"));
    let e = etcdctl(&ep, &["lease", "grant", "9000000001"], None);
    assert!(String::from_utf8_lossy(&e.stderr).contains("etcdserver: too large lease TTL"));
    let e = etcdctl(&ep, &["put", "k", "v", "--lease", "1234"], None);
    assert!(String::from_utf8_lossy(&e.stderr).contains("etcdserver: requested lease not found"));
    // TTL 0 is raised to the minimum TTL (1.5 election timeouts; 1 s with the test's 500 ms).
    assert!(etcdctl_ok(&ep, &["lease", "grant", "0"]).contains("granted with TTL(1s)"));
    let ka = etcdctl(&ep, &["lease", "keep-alive", "--once", "1234"], None);
    assert!(!ka.status.success() || String::from_utf8_lossy(&ka.stdout).contains("expired or revoked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_deletes_keys_with_delete_events_and_keepalive_extends() {
    let c = Cluster::start(1, &[]).await;
    let url = c.members[0].client_url.clone();
    let short = grant(&url, 2).await;
    let kept = grant(&url, 2).await;
    let mut kv = c.kv(0).await;
    for (k, l) in [("e/short/1", short), ("e/short/2", short), ("e/kept", kept)] {
        kv.put(PutRequest { key: k.into(), value: "v".into(), lease: l, ..Default::default() }).await.expect("put");
    }
    let mut w = WatchClient::connect(url.clone()).await.expect("connect");
    let (tx, rx) = mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: "e/".into(),
            range_end: "e0".into(),
            ..Default::default()
        })),
    })
    .await
    .expect("send");
    let mut events = w.watch(ReceiverStream::new(rx)).await.expect("watch").into_inner();
    let stop = keep_alive(&url, kept).await;
    // Within TTL plus slack, the short lease's keys go, in one revision, as DELETE events.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut deleted = vec![];
    while deleted.len() < 2 {
        assert!(Instant::now() < deadline, "keys of the expired lease were not deleted");
        let r = tokio::time::timeout(Duration::from_secs(8), events.message())
            .await
            .expect("event in time")
            .expect("ok")
            .expect("open");
        for e in r.events {
            assert_eq!(e.r#type, EventType::Delete as i32);
            let kv = e.kv.unwrap_or_default();
            deleted.push((String::from_utf8_lossy(&kv.key).into_owned(), kv.mod_revision));
        }
    }
    assert_eq!(deleted[0].1, deleted[1].1, "one revision for the whole revocation");
    assert_eq!(deleted.iter().map(|d| d.0.as_str()).collect::<Vec<_>>(), vec!["e/short/1", "e/short/2"]);
    // The kept-alive lease outlives several TTLs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(exists(&c, 0, "e/kept").await, "a kept-alive lease expired");
    let ttl = lease_client(&url)
        .await
        .lease_time_to_live(LeaseTimeToLiveRequest { id: kept, keys: true })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!((ttl.granted_ttl, ttl.keys), (2, vec![b"e/kept".to_vec()]));
    drop(stop);
    let deadline = Instant::now() + Duration::from_secs(8);
    while exists(&c, 0, "e/kept").await {
        assert!(Instant::now() < deadline, "lease not expired after keepalives stopped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leases = lease_client(&url).await.lease_leases(LeaseLeasesRequest {}).await.expect("leases").into_inner();
    assert!(leases.leases.is_empty(), "{leases:?}");
    let e = lease_client(&url).await.lease_revoke(LeaseRevokeRequest { id: short }).await.expect_err("already revoked");
    assert_eq!((e.code(), e.message()), (Code::NotFound, "etcdserver: requested lease not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_neither_expires_kept_leases_nor_shortens_others() {
    // Checkpoints every 400 ms: the new leader must honour them (not restart the TTL).
    let mut c = Cluster::start(3, &["--lease-checkpoint-interval", "400ms"]).await;
    let leader = c.leader().await;
    let f1 = (leader + 1) % 3;
    let f2 = (leader + 2) % 3;
    let (u1, u2) = (c.members[f1].client_url.clone(), c.members[f2].client_url.clone());
    // Keepalives go to a follower (forwarded to the leader); the other lease is left alone.
    let kept = grant(&u1, 2).await;
    let idle = grant(&u1, 12).await;
    let mut kv = c.kv(f1).await;
    kv.put(PutRequest { key: "k/kept".into(), value: "v".into(), lease: kept, ..Default::default() })
        .await
        .expect("put");
    let stop = keep_alive(&u1, kept).await;
    let granted_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1700)).await;
    c.members[leader].kill();
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    // The idle lease lost at most the election time, never more.
    let ttl = lease_client(&u2)
        .await
        .lease_time_to_live(LeaseTimeToLiveRequest { id: idle, keys: false })
        .await
        .expect("ttl")
        .into_inner();
    let elapsed = granted_at.elapsed().as_secs_f64();
    assert!(ttl.ttl as f64 >= 12.0 - elapsed - 1.0 - 1.0, "idle lease shortened: ttl {} after {elapsed:.1}s", ttl.ttl);
    // Its floor (grant + TTL + 1 s of slack) is honoured, not a fresh TTL from the election
    // (+1 for rounding up and the new leader applying the grant a little later).
    assert!(
        ttl.ttl as f64 <= 12.0 + 1.0 - elapsed + 1.0,
        "the lease's floor was not honoured: ttl {} after {elapsed:.1}s",
        ttl.ttl
    );
    // The kept lease survives the failover and several TTLs after it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(exists(&c, f1, "k/kept").await, "a kept-alive lease expired across the leader change");
    drop(stop);
    let deadline = Instant::now() + Duration::from_secs(10);
    while exists(&c, f1, "k/kept").await {
        assert!(Instant::now() < deadline, "the new leader never expired the lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_storm_is_paced_and_writes_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = in_process(dir.path(), &["--lease-revoke-rate", "4000"]).await;
    let url = format!("http://{}", h.client_addrs[0]);
    // 20,000 leases of the minimum TTL, granted concurrently; every tenth holds a key.
    let n = 20_000;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let url = url.clone();
        tasks.spawn(async move {
            let mut lc = lease_client(&url).await;
            let mut kv = cairn_api::etcdserverpb::kv_client::KvClient::connect(url).await.expect("connect");
            for i in (t..n).step_by(16) {
                let id = lc.lease_grant(LeaseGrantRequest { ttl: 1, id: 0 }).await.expect("grant").into_inner().id;
                if i % 10 == 0 {
                    kv.put(PutRequest {
                        key: format!("storm/{i:05}").into(),
                        value: "v".into(),
                        lease: id,
                        ..Default::default()
                    })
                    .await
                    .expect("put");
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("granting task");
    }
    // While they expire, ordinary writes keep succeeding.
    let mut kv = cairn_api::etcdserverpb::kv_client::KvClient::connect(url.clone()).await.expect("connect");
    let mut writes = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        kv.put(PutRequest { key: "during-storm".into(), value: writes.to_string().into(), ..Default::default() })
            .await
            .expect("writes continue during the storm");
        writes += 1;
        let left = h.lease_count();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} leases still not revoked");
    }
    assert!(writes > 10, "only {writes} writes went through during the storm");
    let r = kv
        .range(RangeRequest {
            key: "storm/".into(),
            range_end: "storm0".into(),
            count_only: true,
            ..Default::default()
        })
        .await
        .expect("range");
    assert_eq!(r.into_inner().count, 0, "every leased key was deleted");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_keepalive_streams_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = in_process(dir.path(), &[]).await;
    let url = format!("http://{}", h.client_addrs[0]);
    let id = grant(&url, 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = h.task_count();
    for _ in 0..20 {
        let mut c = lease_client(&url).await;
        let (tx, rx) = mpsc::channel(1);
        tx.send(LeaseKeepAliveRequest { id }).await.expect("send");
        let mut s = c.lease_keep_alive(ReceiverStream::new(rx)).await.expect("stream").into_inner();
        assert_eq!(s.message().await.expect("ok").expect("reply").ttl, 30);
        // Abandon it mid-way: the sender and the connection go away.
        drop(tx);
        drop(s);
        drop(c);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.task_count() > baseline {
        assert!(Instant::now() < deadline, "keepalive tasks leaked: {} > {baseline}", h.task_count());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_follow_puts_and_txns() {
    use cairn_api::etcdserverpb::{request_op, RequestOp, TxnRequest};
    let c = Cluster::start(1, &[]).await;
    let url = c.members[0].client_url.clone();
    let mut lc = lease_client(&url).await;
    // A client-chosen id, and the duplicate refused.
    let a = lc.lease_grant(LeaseGrantRequest { ttl: 60, id: 4242 }).await.expect("grant").into_inner();
    assert_eq!(a.id, 4242);
    let e = lc.lease_grant(LeaseGrantRequest { ttl: 60, id: 4242 }).await.expect_err("duplicate id");
    assert_eq!((e.code(), e.message()), (Code::FailedPrecondition, "etcdserver: lease already exists"));
    let b = grant(&url, 60).await;
    let mut kv = c.kv(0).await;
    let keys = |id: i64| {
        let url = url.clone();
        async move {
            let r = lease_client(&url)
                .await
                .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
                .await
                .expect("ttl");
            r.into_inner().keys.into_iter().map(|k| String::from_utf8_lossy(&k).into_owned()).collect::<Vec<_>>()
        }
    };
    kv.put(PutRequest { key: "x".into(), value: "1".into(), lease: 4242, ..Default::default() }).await.expect("put");
    // ignore_lease keeps the lease; a put with another lease moves the key; a plain put detaches.
    kv.put(PutRequest { key: "x".into(), value: "2".into(), ignore_lease: true, ..Default::default() })
        .await
        .expect("put");
    assert_eq!(keys(4242).await, vec!["x"]);
    kv.put(PutRequest { key: "x".into(), value: "3".into(), lease: b, ..Default::default() }).await.expect("put");
    assert!(keys(4242).await.is_empty());
    assert_eq!(keys(b).await, vec!["x"]);
    kv.put(PutRequest { key: "x".into(), value: "4".into(), ..Default::default() }).await.expect("put");
    assert!(keys(b).await.is_empty());
    // A txn attaches too, and refuses an unknown lease as a whole.
    let put = |k: &str, lease: i64| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.into(),
            value: "t".into(),
            lease,
            ..Default::default()
        })),
    };
    kv.txn(TxnRequest { success: vec![put("t1", b), put("t2", b)], ..Default::default() }).await.expect("txn");
    assert_eq!(keys(b).await, vec!["t1", "t2"]);
    let e = kv
        .txn(TxnRequest { success: vec![put("t3", 0), put("t4", 999)], ..Default::default() })
        .await
        .expect_err("unknown lease");
    assert_eq!((e.code(), e.message()), (Code::NotFound, "etcdserver: requested lease not found"));
    assert!(!exists(&c, 0, "t3").await, "nothing of a refused txn is applied");
    // Revoking deletes exactly the attached keys.
    lc.lease_revoke(LeaseRevokeRequest { id: b }).await.expect("revoke");
    assert!(!exists(&c, 0, "t1").await && !exists(&c, 0, "t2").await && exists(&c, 0, "x").await);
}

/// One keepalive of `id` through `url` (answered with `ttl`): when it was sent and answered.
async fn keep_alive_once(url: &str, id: i64, ttl: u64) -> (Instant, Instant) {
    let sent = Instant::now();
    let mut lc = lease_client(url).await;
    let mut replies =
        lc.lease_keep_alive(tokio_stream::once(LeaseKeepAliveRequest { id })).await.expect("keepalive").into_inner();
    let reply = replies.message().await.expect("keepalive reply").expect("a reply");
    let answered = Instant::now();
    assert_eq!(reply.ttl, ttl as i64);
    (sent, answered)
}

/// When `key` is first seen gone, looking every 50 ms on whichever member answers (members
/// may be down); `None` after 60 s.
fn when_gone(c: &Cluster, key: &str) -> tokio::task::JoinHandle<Option<Instant>> {
    let urls: Vec<String> = c.members.iter().map(|m| m.client_url.clone()).collect();
    let key = key.to_string();
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            for u in &urls {
                let range = async {
                    let ch = tonic::transport::Endpoint::from_shared(u.clone()).ok()?.connect().await.ok()?;
                    let mut kv = cairn_api::etcdserverpb::kv_client::KvClient::new(ch);
                    let r = kv.range(RangeRequest { key: key.clone().into(), ..Default::default() }).await.ok()?;
                    Some(r.into_inner().count)
                };
                if let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(300), range).await {
                    if n == 0 {
                        return Some(Instant::now());
                    }
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    })
}

/// A restarted member re-applied its lease records at startup, so its own floors are late
/// by how long ago the last keepalive was; promoted, it must take its up-to-date peers'
/// floors. They learn that the new term's first entry committed only with its next
/// message, so they wait to apply as far before answering (else the new leader skipped
/// their answers and revoked this lease seconds late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_made_leader_takes_its_peers_lease_floors() {
    let mut c = Cluster::start(3, &[]).await;
    let (ttl, slack) = (5u64, 1u64);
    let leader = c.leader().await;
    let url = c.members[leader].client_url.clone();
    let id = grant(&url, ttl as i64).await;
    c.kv(leader)
        .await
        .put(PutRequest { key: "floors/k".into(), value: "v".into(), lease: id, ..Default::default() })
        .await
        .expect("put");
    let (sent, answered) = keep_alive_once(&url, id, ttl).await;

    // 2.5 s later a follower restarts (its floors now run 2.5 s late) and is made leader.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let target = (leader + 1) % 3;
    c.members[target].kill();
    c.members[target].start();
    c.wait_ready(target).await;
    let status = c.maintenance(target).await.status(StatusRequest {}).await.expect("status");
    let target_id = status.get_ref().header.as_ref().map_or(0, |h| h.member_id);
    c.maintenance(leader).await.move_leader(MoveLeaderRequest { target_id }).await.expect("move leader");
    assert_eq!(c.leader().await, target, "the leadership moved");

    let at = when_gone(&c, "floors/k").await.expect("poll task").expect("the lease was never revoked in 60 s");
    assert!(at >= sent + Duration::from_secs(ttl), "revoked {:?} early", sent + Duration::from_secs(ttl) - at);
    // 1 s more for the expiry tick, the revocation's commit and the polling.
    let latest = answered + Duration::from_secs(ttl + slack + 1);
    assert!(
        at <= latest,
        "revoked {:?} after its bound; the new leader's log:\n{}",
        at - latest,
        c.members[target].log()
    );
}

/// The lease promise across leader changes: a lease that is not kept alive is revoked no
/// earlier than its last keepalive + TTL and no later than that + max(1 s, TTL/10) + 2
/// election timeouts, however many leaders die meanwhile. (It used to get a fresh TTL from
/// each new leader: TTL 16, leader killed 8 s in -> revoked ~26 s after the keepalive.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_lease_is_revoked_within_its_bound_after_two_leader_kills() {
    let mut c = Cluster::start(3, &[]).await;
    let (ttl, slack, election) = (16u64, 1u64, 1u64);
    let first = c.leader().await;
    let follower = (first + 1) % 3;
    let url = c.members[follower].client_url.clone();
    let id = grant(&url, ttl as i64).await;
    let mut kv = c.kv(follower).await;
    kv.put(PutRequest { key: "bound/k".into(), value: "v".into(), lease: id, ..Default::default() })
        .await
        .expect("put");
    // One keepalive after a while, then nothing: the bound counts from it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sent, answered) = keep_alive_once(&url, id, ttl).await;

    // Members die below: look on whichever answers.
    let deleted = when_gone(&c, "bound/k");

    // Two leader kills, 4 s apart, each member restarted before the next kill.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let leader = c.leader().await;
        c.members[leader].kill();
        let next = c.leader().await;
        assert_ne!(next, leader);
        c.members[leader].start();
        c.wait_ready(leader).await;
    }
    let at = tokio::time::timeout(Duration::from_secs(40), deleted)
        .await
        .expect("the lease was never revoked")
        .expect("poll task")
        .expect("the lease was never revoked in 60 s");
    let earliest = sent + Duration::from_secs(ttl);
    // 400 ms more for the expiry tick, the revocation's commit and the 50 ms polling.
    let latest = answered + Duration::from_secs(ttl + slack + 2 * election) + Duration::from_millis(400);
    assert!(at >= earliest, "revoked {:?} early", earliest - at);
    assert!(at <= latest, "revoked {:?} after its bound", at - latest);
}
