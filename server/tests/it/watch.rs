//! The Watch service: etcdctl, the generated client, followers, slow readers.

use super::harness::{b64, etcdctl, etcdctl_ok, in_process, json, Cluster};
use cairn_api::etcdserverpb::watch_client::WatchClient;
use cairn_api::etcdserverpb::watch_create_request::FilterType;
use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::{
    CompactionRequest, PutRequest, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
};
use cairn_api::mvccpb::event::EventType;
use cairn_testing::{etcdctl_command, GrpcWatch as Stream, Streaming};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn watch_req(key: &str, end: &str) -> WatchCreateRequest {
    WatchCreateRequest { key: key.into(), range_end: end.into(), ..Default::default() }
}

async fn put(c: &Cluster, i: usize, k: &str, v: &str) -> i64 {
    let r = c.kv(i).await.put(PutRequest { key: k.into(), value: v.into(), ..Default::default() }).await.expect("put");
    r.into_inner().header.map_or(0, |h| h.revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_prefix_rev_prev_kv_json() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    etcdctl_ok(&ep, &["put", "/svc/a", "1"]); // rev 2
    etcdctl_ok(&ep, &["put", "/svc/a", "2"]); // rev 3
    let spawn = |args: &[&str]| {
        let mut cmd = etcdctl_command(&ep);
        cmd.args(args);
        Streaming::spawn(cmd)
    };
    let history = spawn(&["watch", "/svc/", "--prefix", "--rev", "2", "--prev-kv"]);
    let live = spawn(&["watch", "/svc/", "--prefix", "-w", "json"]);
    // Both watchers registered before anything is written.
    c.members[0].wait_metric("etcd_debugging_mvcc_watcher_total", Duration::from_secs(10), |n| n >= 2.0).await;
    etcdctl_ok(&ep, &["put", "/svc/b", "x"]); // rev 4
    etcdctl_ok(&ep, &["del", "/svc/a"]); // rev 5
    etcdctl_ok(&ep, &["put", "/other", "y"]); // not watched
    let out = etcdctl(&ep, &["txn"], Some("\nput /svc/c 1\nput /svc/d 2\n\n\n")); // rev 7, two events
    assert!(out.status.success());
    let h = history.take(22).join("\n") + "\n";
    assert_eq!(
        h,
        "PUT\n/svc/a\n1\nPUT\n/svc/a\n1\n/svc/a\n2\nPUT\n/svc/b\nx\nDELETE\n/svc/a\n2\n/svc/a\n\nPUT\n/svc/c\n1\nPUT\n/svc/d\n2\n",
        "history from --rev 2 with previous values"
    );
    let l = live.take(3).join("\n");
    assert_eq!(live.try_line(Duration::from_millis(300)), None, "nothing more: {l}");
    let responses: Vec<serde_json::Value> = l.lines().map(json).collect();
    assert_eq!(responses.len(), 3, "one response per revision, a txn's events together: {l}");
    assert_eq!(responses[0]["Events"][0]["kv"]["key"], b64("/svc/b"));
    assert_eq!(responses[1]["Events"][0]["type"], 1, "DELETE");
    assert_eq!(responses[2]["Events"].as_array().map(Vec::len), Some(2));
    assert_eq!(responses[2]["Header"]["revision"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_cancel_filters_progress_and_errors() {
    let c = Cluster::start(1, &[]).await;
    let url = c.members[0].client_url.clone();
    let mut s = Stream::open(&url).await;
    // Auto ids start at 0; a client-chosen id is kept; a duplicate id is refused.
    s.create(watch_req("a", "")).await;
    let r = s.next().await;
    assert!(r.created && !r.canceled);
    assert_eq!(r.watch_id, 0);
    s.create(WatchCreateRequest { watch_id: 7, filters: vec![FilterType::Noput as i32], ..watch_req("a", "b") }).await;
    assert_eq!(s.next().await.watch_id, 7);
    s.create(WatchCreateRequest { watch_id: 7, ..watch_req("x", "") }).await;
    let r = s.next().await;
    assert!(r.created && r.canceled && r.cancel_reason.contains("duplicate watch ID"), "{r:?}");
    // An empty range is refused with etcd's reason.
    s.create(watch_req("b", "a")).await;
    let r = s.next().await;
    assert!(r.canceled && r.cancel_reason.contains("watcher range is empty"), "{r:?}");

    put(&c, 0, "a", "1").await;
    c.kv(0)
        .await
        .delete_range(cairn_api::etcdserverpb::DeleteRangeRequest { key: "a".into(), ..Default::default() })
        .await
        .expect("del");
    // Watcher 0 sees both; watcher 7 (NOPUT) only the delete.
    let mut seen: Vec<(i64, i32)> = vec![];
    while seen.len() < 3 {
        let r = s.next().await;
        for e in r.events {
            seen.push((r.watch_id, e.r#type));
        }
    }
    seen.sort();
    assert_eq!(seen, vec![(0, EventType::Put as i32), (0, EventType::Delete as i32), (7, EventType::Delete as i32)]);

    // Cancel: confirmed, and no more events for it. An unknown id gets no answer (as
    // etcd), and the stream keeps working.
    s.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: 12345 })).await;
    s.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: 0 })).await;
    let r = s.next().await;
    assert!(r.canceled && r.watch_id == 0, "{r:?}");
    // Progress: the current revision, watch_id -1.
    let rev = put(&c, 0, "zzz", "1").await;
    s.send(RequestUnion::ProgressRequest(WatchProgressRequest {})).await;
    let r = s.next().await;
    assert_eq!((r.watch_id, r.header.map_or(0, |h| h.revision)), (-1, rev));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_start_revision_and_fragments() {
    let c = Cluster::start(1, &["--max-request-bytes", "4096"]).await;
    let url = c.members[0].client_url.clone();
    for i in 0..5 {
        put(&c, 0, "k", &i.to_string()).await;
    }
    c.kv(0).await.compact(CompactionRequest { revision: 4, physical: true }).await.expect("compact");
    let mut s = Stream::open(&url).await;
    s.create(WatchCreateRequest { start_revision: 2, ..watch_req("k", "") }).await;
    let created = s.next().await;
    assert!(created.created);
    let r = s.next().await;
    assert!(r.canceled, "{r:?}");
    assert_eq!(r.compact_revision, 4);
    // From the compacted revision itself is allowed.
    s.create(WatchCreateRequest { start_revision: 4, ..watch_req("k", "") }).await;
    assert!(s.next().await.created);
    let evs = s.events(3).await;
    assert_eq!(evs.iter().map(|e| e.3).collect::<Vec<_>>(), vec![4, 5, 6]);

    // Events exceeding the response limit arrive in fragments when asked: one small
    // delete of three 1.5 KiB keys is one revision whose events, with their previous
    // values, exceed the 4 KiB limit.
    let big = "x".repeat(1500);
    for i in 0..3 {
        put(&c, 0, &format!("f/{i}"), &big).await;
    }
    let mut f = Stream::open(&url).await;
    f.create(WatchCreateRequest { fragment: true, prev_kv: true, ..watch_req("f/", "f0") }).await;
    assert!(f.next().await.created);
    let mut kv = c.kv(0).await;
    kv.delete_range(cairn_api::etcdserverpb::DeleteRangeRequest {
        key: "f/".into(),
        range_end: "f0".into(),
        ..Default::default()
    })
    .await
    .expect("delete");
    let mut parts = vec![];
    let mut got = 0;
    while got < 3 {
        let r = f.next().await;
        got += r.events.len();
        assert!(prost::Message::encoded_len(&r) <= 4096, "a fragment exceeds the limit");
        parts.push(r.fragment);
    }
    assert!(parts.len() > 1, "the response was split");
    assert_eq!(parts.last(), Some(&false), "only the last part is unmarked");
    assert!(parts[..parts.len() - 1].iter().all(|f| *f));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_watchers_see_every_leader_write() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let mut s = Stream::open(&c.members[follower].client_url).await;
    s.create(watch_req("f/", "f0")).await;
    assert!(s.next().await.created);
    let mut revs = vec![];
    for i in 0..30 {
        revs.push(put(&c, leader, &format!("f/{i:02}"), &i.to_string()).await);
    }
    let evs = s.events(30).await;
    assert_eq!(evs.iter().map(|e| e.3).collect::<Vec<_>>(), revs, "same events, in order, no gaps or duplicates");
    assert_eq!(evs[29].1, "f/29");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_never_blocks_writes_and_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = in_process(dir.path(), &[]).await;
    let url = format!("http://{}", h.client_addrs[0]);
    let mut slow = Stream::open(&url).await;
    slow.create(watch_req("s/", "s0")).await;
    assert!(slow.next().await.created);
    let mut fast = Stream::open(&url).await;
    fast.create(watch_req("s/", "s0")).await;
    assert!(fast.next().await.created);
    // Far more than the stream buffer holds, with 4 KiB values; `slow` is not read.
    let mut kv = cairn_api::etcdserverpb::kv_client::KvClient::connect(url.clone()).await.expect("connect");
    let value = "v".repeat(4096);
    let n = 1500;
    let fast_reader = tokio::spawn(async move { fast.events(n).await });
    for i in 0..n {
        kv.put(PutRequest { key: format!("s/{i:05}").into(), value: value.clone().into(), ..Default::default() })
            .await
            .expect("writes keep flowing");
    }
    let fast_events =
        tokio::time::timeout(Duration::from_secs(30), fast_reader).await.expect("fast watcher keeps up").expect("task");
    assert_eq!(fast_events.len(), n);
    assert!(h.watch_metrics().slow_events.load(Ordering::Relaxed) >= 1, "the unread watcher was moved aside");
    // Now read the slow stream: every event, in order, exactly once.
    let slow_events = slow.events(n).await;
    let revs: Vec<i64> = slow_events.iter().map(|e| e.3).collect();
    assert!(revs.windows(2).all(|w| w[1] == w[0] + 1), "no gaps or duplicates");
    assert_eq!(slow_events.last().map(|e| e.1.clone()), Some(format!("s/{:05}", n - 1)));
    // Dropping the streams removes every watcher.
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.watch_metrics().watchers.load(Ordering::Relaxed) != 0 {
        assert!(Instant::now() < deadline, "watchers leaked: {}", h.watch_metrics().watchers.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notifications_at_the_configured_interval() {
    let c = Cluster::start(1, &["--watch-progress-notify-interval", "200ms"]).await;
    let rev = put(&c, 0, "p", "1").await;
    let mut s = Stream::open(&c.members[0].client_url).await;
    s.create(WatchCreateRequest { progress_notify: true, ..watch_req("p", "") }).await;
    assert!(s.next().await.created);
    let r = s.next().await;
    assert!(r.events.is_empty() && !r.canceled, "{r:?}");
    assert_eq!(r.header.map(|h| h.revision), Some(rev));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watchers_on_one_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = in_process(dir.path(), &[]).await;
    let url = format!("http://{}", h.client_addrs[0]);
    // 10 streams x 1,000 watchers, each on one of 500 keys (20 watchers per key).
    let mut streams = vec![];
    for _ in 0..10 {
        let mut s = Stream::open(&url).await;
        for k in 0..1000 {
            s.create(watch_req(&format!("w/{:03}", k % 500), "")).await;
            assert!(s.next().await.created);
        }
        streams.push(s);
    }
    assert_eq!(h.watch_metrics().watchers.load(Ordering::Relaxed), 10_000);
    let mut kv = cairn_api::etcdserverpb::kv_client::KvClient::connect(url.clone()).await.expect("connect");
    for k in 0..500 {
        kv.put(PutRequest { key: format!("w/{k:03}").into(), value: "v".into(), ..Default::default() })
            .await
            .expect("put");
    }
    let mut total = 0;
    for s in &mut streams {
        total += s.events(1000).await.len();
    }
    assert_eq!(total, 10_000, "every watcher got its key's event exactly once");
    drop(streams);
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.watch_metrics().watchers.load(Ordering::Relaxed) != 0 {
        assert!(Instant::now() < deadline, "watchers leaked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.stop().await;
}

/// `--max-watchers-per-stream` bounds one stream's watchers; `--max-concurrent-streams`
/// bounds the streams of one connection (a request past it waits for a free stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_per_stream_and_streams_per_connection_are_bounded() {
    use cairn_api::etcdserverpb::kv_client::KvClient;
    use cairn_api::etcdserverpb::RangeRequest;
    let c = Cluster::start(1, &["--max-watchers-per-stream", "3", "--max-concurrent-streams", "2"]).await;
    let url = c.members[0].client_url.clone();
    let mut s = Stream::open(&url).await;
    for i in 0..4 {
        s.create(WatchCreateRequest { key: format!("w{i}").into(), ..Default::default() }).await;
        let r = s.next().await;
        assert!(r.created, "{r:?}");
        assert_eq!(r.canceled, i == 3, "watcher {i}: {r:?}");
        if i == 3 {
            assert!(r.cancel_reason.contains("--max-watchers-per-stream"), "{r:?}");
        }
    }
    drop(s);

    let channel = tonic::transport::Endpoint::from_shared(url).expect("url").connect().await.expect("connect");
    let open = |ch: tonic::transport::Channel| async move {
        let (tx, rx) = mpsc::channel::<WatchRequest>(1);
        let resp = WatchClient::new(ch).watch(ReceiverStream::new(rx)).await.expect("watch stream").into_inner();
        (tx, resp)
    };
    let first = open(channel.clone()).await;
    let second = open(channel.clone()).await;
    let mut kv = KvClient::new(channel);
    let range = RangeRequest { key: "k".into(), ..Default::default() };
    let blocked = tokio::time::timeout(Duration::from_millis(1500), kv.range(range.clone())).await;
    assert!(blocked.is_err(), "a third stream on the connection was served: {blocked:?}");
    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(10), kv.range(range)).await;
    assert!(matches!(served, Ok(Ok(_))), "{served:?}");
    drop(second);
}

/// etcd's require-leader (`hasleader` metadata, set by clientv3's `WithRequireLeader` and
/// etcdctl's watch): on a member cut off from the majority, a watch that requires a leader
/// ends with `etcdserver: no leader` (so its client can move on), a request is refused at
/// once, and clients that did not ask keep what they had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_require_a_leader_end_when_the_member_loses_it() {
    use cairn_api::etcdserverpb::kv_client::KvClient;
    use cairn_api::etcdserverpb::RangeRequest;
    let mut c = Cluster::start(3, &["--election-timeout", "500", "--heartbeat-interval", "100"]).await;
    let leader = c.leader().await;
    let alone = (leader + 1) % 3;
    let url = c.members[alone].client_url.clone();
    let open = |require: bool| {
        let url = url.clone();
        async move {
            let mut client = WatchClient::connect(url).await.expect("connect");
            let (tx, rx) = mpsc::channel(1);
            tx.send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: "rl".into(),
                    ..Default::default()
                })),
            })
            .await
            .expect("create");
            let mut req = tonic::Request::new(ReceiverStream::new(rx));
            if require {
                req.metadata_mut().insert("hasleader", "true".parse().expect("metadata"));
            }
            let mut stream = client.watch(req).await.expect("watch").into_inner();
            assert!(stream.message().await.expect("created").expect("a response").created);
            (tx, stream)
        }
    };
    let (_keep1, mut required) = open(true).await;
    let (_keep2, mut plain) = open(false).await;
    for m in 0..3 {
        if m != alone {
            c.members[m].kill();
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(15), required.message()).await.expect("ended in time");
    let status = ended.expect_err("an error status");
    assert_eq!((status.code(), status.message()), (tonic::Code::Unavailable, "etcdserver: no leader"));
    // The watch that did not ask stays open.
    assert!(tokio::time::timeout(Duration::from_millis(500), plain.message()).await.is_err(), "plain watch ended");
    // A request that requires a leader is refused; one that does not is served.
    let mut kv = KvClient::connect(url.clone()).await.expect("connect");
    let range = RangeRequest { key: "rl".into(), serializable: true, ..Default::default() };
    let mut req = tonic::Request::new(range.clone());
    req.metadata_mut().insert("hasleader", "true".parse().expect("metadata"));
    let refused = kv.range(req).await.expect_err("refused without a leader");
    assert_eq!((refused.code(), refused.message()), (tonic::Code::Unavailable, "etcdserver: no leader"));
    kv.range(range).await.expect("a serializable read that does not require a leader");
}
