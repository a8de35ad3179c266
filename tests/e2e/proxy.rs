//! `cairn grpc-proxy start` in front of a real 3-member cluster: etcd's tools and the
//! gRPC API through it, watches coalesced (proven by the proxy's count of upstream watch
//! streams), a member killed under a thousand watchers, a slow client, auth passing
//! through.

use super::harness::{etcdctl, etcdctl_ok, Cluster};
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::{PutRequest, WatchCreateRequest, WatchProgressRequest};
use cairn_testing::{cairn_binary, free_port, GrpcWatch, Member, Streaming};
use std::process::Command;
use std::time::{Duration, Instant};

/// A proxy process in front of `members` (client URLs, in this order).
struct Proxy {
    _process: Streaming,
    url: String,
}

impl Proxy {
    async fn start(members: &str) -> Proxy {
        Proxy::start_with(members, &[], "http").await
    }

    /// With `extra` flags; `scheme` is what the proxy serves.
    async fn start_with(members: &str, extra: &[String], scheme: &str) -> Proxy {
        let port = free_port().expect("a free port");
        let mut cmd = Command::new(cairn_binary());
        cmd.args([
            "grpc-proxy",
            "start",
            &format!("--endpoints={members}"),
            &format!("--listen-addr=127.0.0.1:{port}"),
        ]);
        cmd.args(extra);
        let process = Streaming::spawn(cmd);
        cairn_testing::wait_listening(port, "the proxy").await;
        Proxy { _process: process, url: format!("{scheme}://127.0.0.1:{port}") }
    }

    /// One of the proxy's own series.
    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url)).await.expect("metrics").text().await.expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
            .unwrap_or_else(|| panic!("{name} is not in the proxy's metrics"))
    }

    async fn wait_metric(&self, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.metric(name).await;
            if ok(v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{name} is still {v} after 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn member_urls(c: &Cluster) -> String {
    c.members.iter().map(|m| m.client_url.clone()).collect::<Vec<_>>().join(",")
}

/// etcdctl through the proxy, as against a member: KV, txn, leases, members, status,
/// locks, compaction errors, auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_works_through_the_proxy() {
    let c = Cluster::start(3, &[]).await;
    let proxy = Proxy::start(&member_urls(&c)).await;
    let p = proxy.url.as_str();
    etcdctl_ok(p, &["put", "/cfg/a", "1"]);
    assert_eq!(etcdctl_ok(&c.endpoints(), &["get", "/cfg/a", "--print-value-only"]).trim(), "1");
    assert_eq!(etcdctl_ok(p, &["get", "/cfg/", "--prefix", "--print-value-only"]).trim(), "1");
    let out = etcdctl(p, &["txn"], Some("value(\"/cfg/a\") = \"1\"\n\nput /cfg/b 2\n\n\n"));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("SUCCESS"), "{out:?}");
    let granted = etcdctl_ok(p, &["lease", "grant", "60"]);
    let lease = granted.split_whitespace().nth(1).expect("lease id").to_string();
    etcdctl_ok(p, &["put", "/svc/x", "up", "--lease", &lease]);
    assert!(etcdctl_ok(p, &["lease", "keep-alive", "--once", &lease]).contains("keepalived"));
    assert!(etcdctl_ok(p, &["lease", "timetolive", &lease, "--keys"]).contains("/svc/x"));
    assert_eq!(etcdctl_ok(p, &["member", "list"]).lines().count(), 3);
    assert!(etcdctl_ok(p, &["endpoint", "status"]).contains("3.5.0"));
    assert_eq!(etcdctl_ok(p, &["lock", "job", "echo", "held"]).trim(), "held");
    // A watch from a compacted revision is refused as a member refuses it.
    let rev = etcdctl_ok(p, &["put", "/cfg/a", "2", "-w", "json"]);
    let rev = super::harness::json(&rev)["header"]["revision"].as_i64().expect("revision");
    etcdctl_ok(p, &["compaction", &rev.to_string()]);
    let old = etcdctl(p, &["watch", "/cfg/a", "--rev", "1"], None);
    assert!(String::from_utf8_lossy(&old.stderr).contains("required revision has been compacted"), "{old:?}");
    // Auth passes through: the caller's token decides.
    for args in [&["user", "add", "root:rootpw"][..], &["auth", "enable"]] {
        etcdctl_ok(p, args);
    }
    let anon = etcdctl(p, &["get", "/cfg/a"], None);
    assert!(String::from_utf8_lossy(&anon.stderr).contains("user name is empty"), "{anon:?}");
    assert_eq!(etcdctl_ok(p, &["--user", "root:rootpw", "get", "/cfg/a", "--print-value-only"]).trim(), "2");
    assert_eq!(reqwest::get(format!("{}/health", proxy.url)).await.expect("health").status().as_u16(), 200);
    // HTTP clients too: etcd's JSON gateway and the keys API pass through, with their auth.
    let http = reqwest::Client::new();
    let put = http.put(format!("{}/kv/http/x", proxy.url)).basic_auth("root", Some("rootpw")).body("via http");
    assert_eq!(put.send().await.expect("PUT").status().as_u16(), 200);
    let got = http.get(format!("{}/kv/http/x?raw", proxy.url)).basic_auth("root", Some("rootpw")).send().await;
    assert_eq!(got.expect("GET").text().await.expect("body"), "via http");
    let anon = http.post(format!("{}/v3/kv/range", proxy.url)).body(r#"{"key":"aHR0cC94"}"#).send().await;
    assert_eq!(anon.expect("POST").status().as_u16(), 400, "no token: refused by the member, through the proxy");
}

/// A thousand watchers on one prefix over ten client streams: one upstream watch. The
/// member it runs on is killed halfway: every watcher still sees every event once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_watchers_share_one_upstream_watch_and_outlive_its_member() {
    let mut c = Cluster::start(3, &[]).await;
    let proxy = Proxy::start(&member_urls(&c)).await;
    let mut streams = Vec::new();
    for _ in 0..10 {
        let s = GrpcWatch::open(&proxy.url).await;
        for _ in 0..100 {
            s.create(WatchCreateRequest {
                key: b"/jobs/".to_vec(),
                range_end: b"/jobs0".to_vec(),
                ..Default::default()
            })
            .await;
        }
        streams.push(s);
    }
    let mut start = 0;
    for s in &mut streams {
        for _ in 0..100 {
            let r = s.next().await;
            assert!(r.created, "{r:?}");
            start = r.header.map_or(0, |h| h.revision);
        }
    }
    assert_eq!(proxy.metric("cairn_proxy_upstream_watch_streams").await, 1.0, "one upstream watch for 1,000 watchers");
    assert_eq!(proxy.metric("cairn_proxy_watchers_coalesced_total").await, 999.0);

    // Writes go straight to member 2; the proxy watches through member 0 (its first).
    let mut kv = KvClient::connect(c.members[2].client_url.clone()).await.expect("connect");
    let put =
        |i: usize| PutRequest { key: format!("/jobs/{i:03}").into_bytes(), value: b"v".to_vec(), ..Default::default() };
    for i in 0..100 {
        kv.put(put(i)).await.expect("put");
    }
    c.members[0].kill();
    for i in 100..200 {
        kv.put(put(i)).await.expect("put");
    }
    for (n, s) in streams.iter_mut().enumerate() {
        let mut per_watcher: std::collections::HashMap<i64, Vec<i64>> = Default::default();
        while per_watcher.values().map(Vec::len).sum::<usize>() < 100 * 200 {
            let r = s.next().await;
            assert!(!r.canceled, "stream {n}: {r:?}");
            let revs = per_watcher.entry(r.watch_id).or_default();
            revs.extend(r.events.iter().filter_map(|e| e.kv.as_ref()).map(|kv| kv.mod_revision));
        }
        assert_eq!(per_watcher.len(), 100);
        let want: Vec<i64> = (start + 1..=start + 200).collect();
        for (id, revs) in per_watcher {
            assert_eq!(revs, want, "stream {n}, watcher {id}: every event once, in order");
        }
    }
    assert!(proxy.metric("cairn_proxy_upstream_rewatches_total").await >= 1.0);
    assert_eq!(proxy.metric("cairn_proxy_upstream_watch_streams").await, 1.0);
    // Progress: everything up to the answer's revision was delivered.
    streams[0].send(RequestUnion::ProgressRequest(WatchProgressRequest {})).await;
    let p = streams[0].next().await;
    assert_eq!((p.watch_id, p.header.map(|h| h.revision)), (-1, Some(start + 200)));
    // Watchers leaving end the upstream watch.
    drop(streams);
    proxy.wait_metric("cairn_proxy_upstream_watch_streams", |v| v == 0.0).await;
    proxy.wait_metric("etcd_grpc_proxy_watchers_coalescing_total", |v| v == 0.0).await;
}

/// A client that stops reading does not hold back the others or the upstream watch: it
/// is moved to a watch of its own and, reading again, misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_moved_aside_and_misses_nothing() {
    let c = Cluster::start(1, &[]).await;
    let proxy = Proxy::start(&member_urls(&c)).await;
    let create = WatchCreateRequest { key: b"/q/".to_vec(), range_end: b"/q0".to_vec(), ..Default::default() };
    let mut fast = GrpcWatch::open(&proxy.url).await;
    fast.create(create.clone()).await;
    let start = fast.next().await.header.map_or(0, |h| h.revision);
    let mut slow = GrpcWatch::open(&proxy.url).await;
    slow.create(create).await;
    assert!(slow.next().await.created);
    // 3,000 puts of 4 KiB: far more than the slow stream's window and the proxy's outbox.
    let mut kv = KvClient::connect(c.members[0].client_url.clone()).await.expect("connect");
    let n = 3000;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < n {
            let r = fast.next().await;
            got.extend(r.events.iter().filter_map(|e| e.kv.as_ref()).map(|kv| kv.mod_revision));
        }
        got
    });
    for i in 0..n {
        kv.put(PutRequest { key: format!("/q/{i}").into_bytes(), value: vec![b'x'; 4096], ..Default::default() })
            .await
            .expect("put");
    }
    let fast_got = reader.await.expect("fast reader");
    let want: Vec<i64> = (start + 1..=start + n as i64).collect();
    assert_eq!(fast_got, want, "the fast client saw everything while the slow one did not read");
    assert!(proxy.metric("cairn_proxy_slow_watchers_moved_total").await >= 1.0);
    let mut slow_got = Vec::new();
    while slow_got.len() < n {
        let r = slow.next().await;
        slow_got.extend(r.events.iter().filter_map(|e| e.kv.as_ref()).map(|kv| kv.mod_revision));
    }
    assert_eq!(slow_got, want, "the slow client, reading again, misses nothing and repeats nothing");
}

/// TLS on both sides: clients with certificates to the proxy, the proxy with its own to
/// members that require one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_clients_and_to_the_cluster() {
    let pki = super::tls::Pki::new();
    let c = super::tls::tls_cluster(&pki, 3, false).await;
    let members = c.members.iter().map(Member::endpoint).collect::<Vec<_>>().join(",");
    let flags = [
        format!("--cacert={}", pki.s("ca.pem")),
        format!("--cert={}", pki.s("client.pem")),
        format!("--key={}", pki.s("client-key.pem")),
        format!("--cert-file={}", pki.s("server.pem")),
        format!("--key-file={}", pki.s("server-key.pem")),
        format!("--trusted-ca-file={}", pki.s("ca.pem")),
    ];
    let proxy = Proxy::start_with(&members, &flags, "https").await;
    let tls = pki.etcdctl_flags(Some("alice"));
    let (ok, _, err) = super::tls::run(&proxy.url, &tls, &["put", "/tls/a", "1"]);
    assert!(ok, "{err}");
    let (ok, out, err) =
        super::tls::run(&c.endpoints(), &pki.etcdctl_flags(Some("client")), &["get", "/tls/a", "--print-value-only"]);
    assert!(ok && out.trim() == "1", "{out} {err}");
    // A watch through the proxy over TLS.
    let mut cmd = cairn_testing::etcdctl_command(&proxy.url);
    cmd.args(&tls).args(["watch", "/tls/", "--prefix"]);
    let watch = Streaming::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut i = 0;
    let seen = loop {
        i += 1;
        let (ok, _, err) = super::tls::run(&proxy.url, &tls, &["put", "/tls/b", &i.to_string()]);
        assert!(ok, "{err}");
        if let Some(line) = watch.try_line(Duration::from_millis(500)) {
            break line;
        }
        assert!(Instant::now() < deadline, "no watch event through the TLS proxy");
    };
    assert_eq!(seen, "PUT");
    // No client certificate: refused by the proxy's TLS.
    let (ok, _, _) = super::tls::run(&proxy.url, &pki.etcdctl_flags(None), &["get", "/tls/a"]);
    assert!(!ok, "a client without a certificate got in");
}

/// `--namespace`: the clients' whole key space is a prefix of the cluster's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_confines_the_clients_to_a_prefix() {
    let c = Cluster::start(1, &[]).await;
    let proxy = Proxy::start_with(&member_urls(&c), &["--namespace=/tenant-a/".to_string()], "http").await;
    let (p, direct) = (proxy.url.as_str(), c.endpoints());
    etcdctl_ok(&direct, &["put", "/other/secret", "x"]);
    etcdctl_ok(p, &["put", "a", "1"]);
    assert_eq!(etcdctl_ok(&direct, &["get", "/tenant-a/a", "--print-value-only"]).trim(), "1");
    // Every key, as the proxy's clients see them: only theirs, without the prefix.
    assert_eq!(etcdctl_ok(p, &["get", "", "--from-key", "--keys-only"]).trim(), "a");
    assert!(etcdctl_ok(p, &["get", "a", "-w", "json"]).contains(&format!("\"key\":\"{}\"", super::harness::b64("a"))));
    let out = etcdctl(p, &["txn"], Some("value(\"a\") = \"1\"\n\nput b 2\n\n\n"));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("SUCCESS"), "{out:?}");
    assert_eq!(etcdctl_ok(&direct, &["get", "/tenant-a/b", "--print-value-only"]).trim(), "2");
    assert_eq!(etcdctl_ok(p, &["del", "", "--from-key"]).trim(), "2", "deletes only the tenant's keys");
    assert_eq!(etcdctl_ok(&direct, &["get", "/other/secret", "--print-value-only"]).trim(), "x");
    // Watches see their keys without the prefix, and nothing else.
    let mut w = GrpcWatch::open(&proxy.url).await;
    w.create(WatchCreateRequest { key: vec![0], range_end: vec![0], ..Default::default() }).await;
    assert!(w.next().await.created);
    etcdctl_ok(&direct, &["put", "/other/noise", "y"]);
    etcdctl_ok(p, &["put", "c", "3"]);
    let events = w.events(1).await;
    assert_eq!((events[0].1.as_str(), events[0].2.as_str()), ("c", "3"));
    // Locks and leases name keys inside the namespace too.
    assert_eq!(etcdctl_ok(p, &["lock", "job", "echo", "held"]).trim(), "held");
    let granted = etcdctl_ok(p, &["lease", "grant", "60"]);
    let lease = granted.split_whitespace().nth(1).expect("lease id").to_string();
    etcdctl_ok(p, &["put", "svc", "up", "--lease", &lease]);
    let ttl = etcdctl_ok(p, &["lease", "timetolive", &lease, "--keys"]);
    assert!(ttl.contains("attached keys([svc])"), "{ttl}");
    // HTTP routes would not be namespaced: refused.
    let r = reqwest::get(format!("{}/kv/?prefix", proxy.url)).await.expect("GET");
    assert_eq!(r.status().as_u16(), 501);
}

/// Twenty clients keeping one lease alive ten times a second: the cluster sees about one
/// keepalive per third of the TTL; when they stop, the lease expires on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_of_many_clients_are_coalesced_and_leases_still_expire() {
    use cairn_api::etcdserverpb::lease_client::LeaseClient;
    use cairn_api::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest};
    let c = Cluster::start(1, &[]).await;
    let proxy = Proxy::start(&member_urls(&c)).await;
    let mut direct = LeaseClient::connect(c.members[0].client_url.clone()).await.expect("connect");
    let id = direct.lease_grant(LeaseGrantRequest { ttl: 6, id: 0 }).await.expect("grant").into_inner().id;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let url = proxy.url.clone();
        clients.push(tokio::spawn(async move {
            let mut lease = LeaseClient::connect(url).await.expect("connect to the proxy");
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let mut answers = lease
                .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .expect("stream")
                .into_inner();
            let mut ttls = Vec::new();
            for _ in 0..30 {
                tx.send(LeaseKeepAliveRequest { id }).await.expect("send");
                let a = answers.message().await.expect("answer").expect("open");
                ttls.push(a.ttl);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ttls
        }));
    }
    for c in clients {
        let ttls = c.await.expect("client");
        assert!(ttls.iter().all(|t| (1..=6).contains(t)), "every answer says the lease lives: {ttls:?}");
    }
    let forwarded = proxy.metric("cairn_proxy_keepalives_forwarded_total").await;
    let answered = proxy.metric("cairn_proxy_keepalives_answered_total").await;
    assert_eq!(forwarded + answered, 600.0);
    assert!(forwarded <= 8.0, "{forwarded} keepalives reached the cluster for 600 from clients");
    let ttl = |mut l: LeaseClient<tonic::transport::Channel>| async move {
        l.lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false }).await.expect("ttl").into_inner().ttl
    };
    assert!(ttl(direct.clone()).await > 0);
    // Nobody keeps it alive any more: it ends within its TTL, the proxy does not hold it.
    let deadline = Instant::now() + Duration::from_secs(12);
    while ttl(direct.clone()).await > 0 {
        assert!(Instant::now() < deadline, "the lease outlived its clients by more than its TTL");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // An unknown lease is answered as a member answers it.
    let mut lease = LeaseClient::connect(proxy.url.clone()).await.expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut answers =
        lease.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("stream").into_inner();
    tx.send(LeaseKeepAliveRequest { id: 12345 }).await.expect("send");
    assert_eq!(answers.message().await.expect("answer").expect("open").ttl, 0);
}

/// Serializable reads are answered from the proxy's cache, which never serves a value older
/// than the last event its watch saw; linearizable reads always go to the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_reads_come_from_a_cache_a_watch_keeps_current() {
    let c = Cluster::start(1, &[]).await;
    let proxy = Proxy::start(&member_urls(&c)).await;
    let (p, direct) = (proxy.url.as_str(), c.endpoints());
    proxy.wait_metric("cairn_proxy_range_cache_revision", |v| v >= 1.0).await;
    etcdctl_ok(p, &["put", "k", "v1"]);
    let get_s = || etcdctl_ok(p, &["get", "k", "--consistency=s", "--print-value-only"]).trim().to_string();
    for _ in 0..3 {
        assert_eq!(get_s(), "v1");
    }
    assert!(proxy.metric("cairn_proxy_range_cache_hits_total").await >= 2.0, "repeated reads stay on this machine");
    for round in 2..6 {
        // A write the proxy never saw pass: once its watch has seen the event, no read
        // through the cache may return the older value.
        let value = format!("v{round}");
        let put = super::harness::json(&etcdctl_ok(&direct, &["put", "k", &value, "-w", "json"]));
        let rev = put["header"]["revision"].as_i64().expect("revision") as f64;
        proxy.wait_metric("cairn_proxy_range_cache_revision", |v| v >= rev).await;
        assert_eq!(get_s(), value, "round {round}");
        assert_eq!(get_s(), value);
    }
    // A prefix read is a range entry: a new key under it is seen too.
    assert_eq!(etcdctl_ok(p, &["get", "p/", "--prefix", "--consistency=s", "--keys-only"]).trim(), "");
    let put = super::harness::json(&etcdctl_ok(&direct, &["put", "p/new", "x", "-w", "json"]));
    let rev = put["header"]["revision"].as_i64().expect("revision") as f64;
    proxy.wait_metric("cairn_proxy_range_cache_revision", |v| v >= rev).await;
    assert_eq!(etcdctl_ok(p, &["get", "p/", "--prefix", "--consistency=s", "--keys-only"]).trim(), "p/new");
    // Linearizable reads pass through at once.
    etcdctl_ok(&direct, &["put", "k", "fresh"]);
    assert_eq!(etcdctl_ok(p, &["get", "k", "--print-value-only"]).trim(), "fresh");
}

/// The Cairn SDK through the proxy: KV, a watch, a lease kept alive; and etcd's election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_and_elections_work_through_the_proxy() {
    let c = Cluster::start(3, &[]).await;
    let proxy = Proxy::start(&member_urls(&c)).await;
    let client = cairn_sdk::Client::connect([proxy.url.as_str()], cairn_sdk::ConnectOptions::new())
        .await
        .expect("the SDK connects to the proxy");
    let mut watch = client.watch("sdk/", cairn_sdk::WatchOptions::new().with_prefix()).await.expect("watch");
    client.put("sdk/a", "1", None).await.expect("put");
    let got = client.get("sdk/a", None).await.expect("get");
    assert_eq!(got.kvs[0].value, b"1");
    let r = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.expect("an event").expect("open");
    assert_eq!(r.expect("ok").events[0].kv.as_ref().map(|kv| kv.key.clone()), Some(b"sdk/a".to_vec()));
    let lease = client.lease_grant(5).await.expect("grant").id;
    assert!(client.lease_keep_alive_once(lease).await.expect("keepalive") > 0);
    // etcd's election, through the proxy: the campaigner leads, an observer sees it.
    let p = proxy.url.as_str();
    let mut cmd = cairn_testing::etcdctl_command(p);
    cmd.args(["elect", "jobs-leader", "alpha"]);
    let leader = Streaming::spawn(cmd);
    let lines = leader.take(2);
    assert!(lines[0].starts_with("jobs-leader/"), "{lines:?}");
    assert_eq!(lines[1], "alpha");
    let mut cmd = cairn_testing::etcdctl_command(p);
    cmd.args(["elect", "--listen", "jobs-leader"]);
    let observer = Streaming::spawn(cmd);
    assert_eq!(observer.take(2)[1], "alpha");
}

/// A bad endpoint list is refused at start with a clear error; an unreachable cluster
/// gets clear errors and the proxy keeps trying, serving as soon as a member is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_endpoints_are_refused_and_an_unreachable_cluster_is_waited_for() {
    for (endpoints, want) in [("", "no endpoint given"), ("https://127.0.0.1:1", "needs --cacert")] {
        let out = Command::new(cairn_binary())
            .args(["grpc-proxy", "start", &format!("--endpoints={endpoints}"), "--listen-addr=127.0.0.1:0"])
            .output()
            .expect("run the proxy");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{endpoints:?}: {err}");
    }
    let mut c = Cluster::start(1, &[]).await;
    etcdctl_ok(&c.endpoints(), &["put", "k", "before"]);
    let url = c.members[0].client_url.clone();
    c.members[0].kill();
    let proxy = Proxy::start(&url).await;
    let down = etcdctl(&proxy.url, &["get", "k", "--command-timeout=3s"], None);
    assert!(!down.status.success(), "{down:?}");
    let health = reqwest::get(format!("{}/health", proxy.url)).await.expect("health");
    assert_eq!(health.status().as_u16(), 503);
    // The member comes back: the same proxy serves again, watches included.
    c.members[0].start();
    c.wait_ready(0).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = etcdctl(&proxy.url, &["get", "k", "--print-value-only"], None);
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "before");
            break;
        }
        assert!(Instant::now() < deadline, "the proxy did not reconnect: {out:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(reqwest::get(format!("{}/health", proxy.url)).await.expect("health").status().as_u16(), 200);
}

/// python-etcd3 (a Python etcd client, from PyPI) through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_etcd3_works_through_the_proxy() {
    let python = std::env::var("PY_ETCD3")
        .unwrap_or_else(|_| format!("{}/../target/py-etcd3/bin/python", env!("CARGO_MANIFEST_DIR")));
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} is missing: ./scripts/test makes it (python3 -m venv target/py-etcd3 && target/py-etcd3/bin/pip install etcd3==0.12.0)"
    );
    let c = Cluster::start(1, &[]).await;
    let proxy = Proxy::start(&member_urls(&c)).await;
    let port = proxy.url.rsplit(':').next().expect("port").to_string();
    let script = format!("{}/e2e/py/etcd3_check.py", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&python)
        .args([script.as_str(), "127.0.0.1", &port])
        // etcd3 0.12's generated code predates protobuf 4's C implementation.
        .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
        .output()
        .expect("run python-etcd3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("python-etcd3 OK"), "{text}");
    assert_eq!(etcdctl_ok(&c.endpoints(), &["get", "/py/t", "--print-value-only"]).trim(), "yes");
}

/// etcd's proxy mode (`--proxy=on|readonly`, as etcd's own flags start it): no member, the
/// cluster's client URLs learned from its peers, etcd's API served in front of it; read-only
/// passes reads and refuses every write (gRPC UNIMPLEMENTED, HTTP 501).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcds_proxy_mode_serves_the_cluster_and_readonly_refuses_writes() {
    let c = Cluster::start(3, &[]).await;
    let initial: Vec<String> = c.members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let start = |mode: &str| {
        let port = free_port().expect("a free port");
        let mut cmd = Command::new(cairn_binary());
        // Go's flag syntax, as an etcd unit file writes it.
        cmd.current_dir(dir.path()).args([
            &format!("-proxy={mode}"),
            "-name=edge",
            &format!("-initial-cluster={}", initial.join(",")),
            &format!("-listen-client-urls=http://127.0.0.1:{port}"),
        ]);
        (Streaming::spawn(cmd), port, format!("http://127.0.0.1:{port}"))
    };
    let (_on, on_port, on) = start("on");
    let (_ro, ro_port, ro) = start("readonly");
    cairn_testing::wait_listening(on_port, "the proxy").await;
    cairn_testing::wait_listening(ro_port, "the read-only proxy").await;

    etcdctl_ok(&on, &["put", "k", "v1"]);
    assert_eq!(etcdctl_ok(&c.endpoints(), &["get", "k", "--print-value-only"]).trim(), "v1");
    assert_eq!(etcdctl_ok(&on, &["member", "list"]).lines().count(), 3);
    let out = etcdctl(&on, &["txn"], Some("value(\"k\") = \"v1\"\n\nput k v2\n\n\n"));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("SUCCESS"), "{out:?}");

    // Read-only: reads pass, writes are refused and change nothing.
    assert_eq!(etcdctl_ok(&ro, &["get", "k", "--print-value-only"]).trim(), "v2");
    assert_eq!(etcdctl_ok(&ro, &["member", "list"]).lines().count(), 3);
    let read_txn = etcdctl(&ro, &["txn"], Some("value(\"k\") = \"v2\"\n\nget k\n\n\n"));
    assert!(String::from_utf8_lossy(&read_txn.stdout).starts_with("SUCCESS"), "{read_txn:?}");
    for (args, input) in [
        (&["put", "k", "v3"][..], None),
        (&["del", "k"][..], None),
        (&["lease", "grant", "60"][..], None),
        (&["txn"][..], Some("\n\nput k v3\n\n\n")),
        (&["user", "add", "root:pw"][..], None),
        (&["member", "add", "x", "--peer-urls=http://127.0.0.1:1"][..], None),
    ] {
        let out = etcdctl(&ro, args, input);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("read-only proxy"), "{args:?}: {out:?}");
    }
    assert_eq!(etcdctl_ok(&c.endpoints(), &["get", "k", "--print-value-only"]).trim(), "v2");
    let http = reqwest::Client::new();
    let range = http.post(format!("{ro}/v3/kv/range")).body(r#"{"key":"aw=="}"#).send().await.expect("range");
    assert_eq!(range.status().as_u16(), 200);
    let txn = r#"{"success":[{"request_range":{"key":"aw=="}}]}"#;
    assert_eq!(http.post(format!("{ro}/v3/kv/txn")).body(txn).send().await.expect("txn").status().as_u16(), 200);
    let put = http.post(format!("{ro}/v3/kv/put")).body(r#"{"key":"aw==","value":"eA=="}"#).send().await;
    assert_eq!(put.expect("put").status().as_u16(), 501);
    let txn = r#"{"success":[{"request_put":{"key":"aw==","value":"eA=="}}]}"#;
    assert_eq!(http.post(format!("{ro}/v3/kv/txn")).body(txn).send().await.expect("txn").status().as_u16(), 501);
    assert_eq!(http.get(format!("{ro}/kv/k?raw")).send().await.expect("GET").text().await.expect("body"), "v2");
    assert_eq!(http.put(format!("{ro}/kv/k")).body("x").send().await.expect("PUT").status().as_u16(), 501);
    assert_eq!(etcdctl_ok(&c.endpoints(), &["get", "k", "--print-value-only"]).trim(), "v2");
    // No member ran: nothing was written where the proxies started.
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read dir").collect();
    assert!(left.is_empty(), "the proxies made files: {left:?}");
}
