//! The real etcdctl against a single real cairn: every KV command and flag it sends.

use super::harness::{b64, etcdctl, etcdctl_ok, json, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_and_json_fields() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    assert_eq!(etcdctl_ok(&ep, &["put", "foo", "bar"]).trim(), "OK");
    assert_eq!(etcdctl_ok(&ep, &["get", "foo"]), "foo\nbar\n");
    etcdctl_ok(&ep, &["put", "foo", "baz"]);
    let v = json(&etcdctl_ok(&ep, &["get", "foo", "-w", "json"]));
    let kv = &v["kvs"][0];
    assert_eq!(kv["key"], b64("foo"));
    assert_eq!(kv["value"], b64("baz"));
    assert_eq!(kv["create_revision"], 2);
    assert_eq!(kv["mod_revision"], 3);
    assert_eq!(kv["version"], 2);
    assert_eq!(v["count"], 1);
    let h = &v["header"];
    assert_eq!(h["revision"], 3);
    assert!(h["cluster_id"].as_u64().unwrap_or(0) != 0 && h["member_id"].as_u64().unwrap_or(0) != 0);
    assert!(h["raft_term"].as_u64().unwrap_or(0) >= 1);
    // history
    assert_eq!(etcdctl_ok(&ep, &["get", "foo", "--rev", "2", "--print-value-only"]), "bar\n");
    // a missing key prints nothing
    assert_eq!(etcdctl_ok(&ep, &["get", "nope"]), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_range_options() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    for (k, v) in [("/svc/b", "2"), ("/svc/a", "3"), ("/svc/c", "1"), ("/other", "x")] {
        etcdctl_ok(&ep, &["put", k, v]);
    }
    etcdctl_ok(&ep, &["put", "/svc/a", "9"]);
    assert_eq!(etcdctl_ok(&ep, &["get", "/svc/", "--prefix", "--keys-only"]), "/svc/a\n\n/svc/b\n\n/svc/c\n\n");
    let limited = json(&etcdctl_ok(&ep, &["get", "/svc/", "--prefix", "--limit", "2", "-w", "json"]));
    assert_eq!(limited["kvs"].as_array().map(Vec::len), Some(2));
    assert_eq!(limited["more"], true);
    assert_eq!(limited["count"], 3);
    let by_value =
        etcdctl_ok(&ep, &["get", "/svc/", "--prefix", "--sort-by", "VALUE", "--order", "ASCEND", "--print-value-only"]);
    assert_eq!(by_value, "1\n2\n9\n");
    let by_mod =
        etcdctl_ok(&ep, &["get", "/svc/", "--prefix", "--sort-by", "MODIFY", "--order", "DESCEND", "--keys-only"]);
    assert_eq!(by_mod, "/svc/a\n\n/svc/c\n\n/svc/b\n\n");
    let by_ver = etcdctl_ok(
        &ep,
        &["get", "/svc/", "--prefix", "--sort-by", "VERSION", "--order", "DESCEND", "--limit", "1", "--keys-only"],
    );
    assert_eq!(by_ver, "/svc/a\n\n");
    // --from-key sends range_end "\0": every key >= the given one
    assert_eq!(etcdctl_ok(&ep, &["get", "/svc/b", "--from-key", "--keys-only"]), "/svc/b\n\n/svc/c\n\n");
    // range [a, b)
    assert_eq!(etcdctl_ok(&ep, &["get", "/svc/a", "/svc/c", "--keys-only"]), "/svc/a\n\n/svc/b\n\n");
    // count only (etcdctl 3.4 has no --count-only flag; the gRPC client sends it)
    let counted = c
        .kv(0)
        .await
        .range(cairn_api::etcdserverpb::RangeRequest {
            key: "/".into(),
            range_end: "0".into(),
            count_only: true,
            ..Default::default()
        })
        .await
        .expect("count_only range")
        .into_inner();
    assert_eq!((counted.count, counted.kvs.len()), (4, 0));
    // history at a revision: /svc/a was "3" at revision 3
    assert_eq!(etcdctl_ok(&ep, &["get", "/svc/a", "--rev", "3", "--print-value-only"]), "3\n");
    // serializable reads see the same data
    assert_eq!(etcdctl_ok(&ep, &["get", "/svc/a", "--consistency", "s", "--print-value-only"]), "9\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_txn() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    for k in ["k1", "k2", "k3"] {
        etcdctl_ok(&ep, &["put", k, &format!("v-{k}")]);
    }
    let out = etcdctl_ok(&ep, &["del", "k", "--prefix", "--prev-kv"]);
    assert_eq!(out, "3\nk1\nv-k1\nk2\nv-k2\nk3\nv-k3\n");
    assert_eq!(etcdctl_ok(&ep, &["del", "k1"]), "0\n");

    etcdctl_ok(&ep, &["put", "flag", "on"]);
    // success branch
    let out = etcdctl(&ep, &["txn"], Some("value(\"flag\") = \"on\"\n\nput t1 yes\nget flag\n\nput t2 no\n\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("SUCCESS\n\nOK\n\nflag\non\n"), "{stdout}");
    assert_eq!(etcdctl_ok(&ep, &["get", "t1", "--print-value-only"]), "yes\n");
    assert_eq!(etcdctl_ok(&ep, &["get", "t2"]), "");
    // failure branch, and one revision for the whole txn
    let before = json(&etcdctl_ok(&ep, &["get", "flag", "-w", "json"]))["header"]["revision"].as_i64().unwrap_or(0);
    let out = etcdctl(
        &ep,
        &["txn", "-w", "json"],
        Some("mod(\"flag\") > \"1000\"\n\nput t1 never\n\nput t2 a\nput t3 b\n\n"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json(&String::from_utf8_lossy(&out.stdout));
    assert!(v.get("succeeded").is_none() || v["succeeded"] == false, "{v}");
    assert_eq!(v["header"]["revision"].as_i64(), Some(before + 1));
    let t2 = json(&etcdctl_ok(&ep, &["get", "t2", "-w", "json"]));
    let t3 = json(&etcdctl_ok(&ep, &["get", "t3", "-w", "json"]));
    assert_eq!(t2["kvs"][0]["mod_revision"], t3["kvs"][0]["mod_revision"]);
    assert_eq!(etcdctl_ok(&ep, &["get", "t1", "--print-value-only"]), "yes\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_errors() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    for i in 0..5 {
        etcdctl_ok(&ep, &["put", "c", &i.to_string()]);
    }
    assert_eq!(etcdctl_ok(&ep, &["compaction", "4"]).trim(), "compacted revision 4");
    let out = etcdctl(&ep, &["get", "c", "--rev", "3"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcdserver: mvcc: required revision has been compacted"));
    assert_eq!(etcdctl_ok(&ep, &["get", "c", "--rev", "4", "--print-value-only"]), "2\n");
    let out = etcdctl(&ep, &["get", "c", "--rev", "100"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcdserver: mvcc: required revision is a future revision"));
    let out = etcdctl(&ep, &["compaction", "2"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcdserver: mvcc: required revision has been compacted"));
    let out = etcdctl(&ep, &["put", "", "x"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcdserver: key is not provided"));
    let out = etcdctl(&ep, &["put", "k", "x", "--lease", "1234"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcdserver: requested lease not found"));
    let out = etcdctl(&ep, &["put", "missing", "--ignore-value"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcdserver: key not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_status_health_and_member_list() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    etcdctl_ok(&ep, &["put", "a", "1"]);
    let out = etcdctl(&ep, &["endpoint", "health"], None);
    // etcdctl 3.4 reports health on stderr.
    let health = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && health.contains("is healthy: successfully committed proposal"), "{health}");
    let status = json(&etcdctl_ok(&ep, &["endpoint", "status", "-w", "json"]));
    let s = &status[0]["Status"];
    assert_eq!(s["leader"], s["header"]["member_id"], "a single member leads itself");
    assert!(s["raftIndex"].as_u64().unwrap_or(0) >= 2);
    assert!(s["dbSize"].as_u64().unwrap_or(0) > 0);
    assert_eq!(s["header"]["revision"], 2);
    let table = etcdctl_ok(&ep, &["endpoint", "status", "-w", "table"]);
    assert!(table.contains("true"), "{table}");
    let members = json(&etcdctl_ok(&ep, &["member", "list", "-w", "json"]));
    let m = &members["members"][0];
    assert_eq!(m["name"], "m0");
    assert_eq!(m["peerURLs"][0], c.members[0].peer_url);
    assert_eq!(m["clientURLs"][0], c.members[0].client_url);
    assert_eq!(members["members"].as_array().map(Vec::len), Some(1));
    let plain = etcdctl_ok(&ep, &["member", "list"]);
    assert!(plain.contains(", started, m0, "), "{plain}");
}

/// Endpoints written as URLs, as etcd's docs write them: etcdctl 3.4 then sends the URL as
/// the HTTP/2 authority of the commands that dial one member, which Rust's h2 refused
/// (PROTOCOL_ERROR) until the connection's header blocks were mended under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_endpoints_work_for_every_etcdctl_command() {
    let c = Cluster::start(3, &[]).await;
    let urls: Vec<String> = c.members.iter().map(|m| m.client_url.trim_end_matches('/').to_string()).collect();
    let all = urls.join(",");
    etcdctl_ok(&all, &["put", "a", "1"]);
    let status = etcdctl_ok(&all, &["endpoint", "status"]);
    assert_eq!(status.lines().count(), 3, "{status}");
    assert!(urls.iter().all(|u| status.contains(u.as_str())), "{status}");
    let hashes = etcdctl_ok(&all, &["endpoint", "hashkv"]);
    assert_eq!(hashes.lines().count(), 3, "{hashes}");
    let defrag = etcdctl_ok(&urls[0], &["defrag"]);
    assert!(defrag.contains("Finished defragmenting"), "{defrag}");
    // Move the leadership to another member, through a URL endpoint of the leader.
    let leader = c.leader().await;
    let target = (leader + 1) % 3;
    let id = json(&etcdctl_ok(&urls[target], &["endpoint", "status", "-w", "json"]))[0]["Status"]["header"]
        ["member_id"]
        .as_u64()
        .expect("member id");
    let moved = etcdctl_ok(&urls[leader], &["move-leader", &format!("{id:x}")]);
    assert!(moved.contains("Leadership transferred"), "{moved}");
    // etcdctl 3.5 strips the scheme itself; it works as before.
    let out = std::process::Command::new(cairn_testing::etcd35_tool("etcdctl"))
        .args([&format!("--endpoints={all}"), "endpoint", "status"])
        .output()
        .expect("etcdctl 3.5");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
}

/// A Go client pings (BDP estimation) while it receives a large response; grpc-go's server
/// excuses those pings because it is sending, and so must Cairn's ping policy — it used to
/// close the connection ("too many pings") in the middle of a multi-megabyte `get`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_responses_to_go_clients_keep_their_connection() {
    use cairn_api::etcdserverpb::PutRequest;
    let c = Cluster::start(1, &[]).await;
    let mut kv = c.kv(0).await;
    for i in 0..6 {
        let req = PutRequest { key: format!("big{i}").into_bytes(), value: vec![b'x'; 400_000], ..Default::default() };
        kv.put(req).await.expect("put");
    }
    for etcdctl in [cairn_testing::etcd35_tool("etcdctl"), "etcdctl".into()] {
        for _ in 0..3 {
            let out = std::process::Command::new(&etcdctl)
                .env("ETCDCTL_API", "3")
                .args([&format!("--endpoints={}", c.endpoints()), "get", "", "--prefix", "-w", "json"])
                .output()
                .expect("etcdctl");
            assert!(out.status.success(), "{}: {}", etcdctl.display(), String::from_utf8_lossy(&out.stderr));
            assert_eq!(json(&String::from_utf8_lossy(&out.stdout))["count"], 6);
        }
    }
    let log = c.members[0].log();
    assert!(!log.contains("pings too often"), "{log}");
}
