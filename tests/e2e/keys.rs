//! The plain keys API (`/kv/<key>`, docs/HTTP.md) with the real curl against real
//! `cairn` processes, checked against the real etcdctl: every route, the compare-and-set
//! forms, Server-Sent Event watches and blocking reads, auth, and the HTTP status of each
//! error.

use super::harness::{etcdctl_ok, Cluster};
use cairn_testing::Streaming;
use serde_json::Value;
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// One curl answer: status, headers (lower-case names) and body.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or_default()
    }

    /// The JSON body of a `want` answer.
    fn expect(&self, want: u16) -> Value {
        assert_eq!(self.status, want, "body: {}", self.text());
        self.json()
    }
}

/// The real curl against one member's client URL.
struct Curl {
    base: String,
}

impl Curl {
    fn new(c: &Cluster, i: usize) -> Curl {
        let found = std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join("curl").is_file()));
        assert!(found, "curl is missing: install it with `apt-get install -y curl` (./scripts/test does this)");
        Curl { base: c.members[i].client_url.trim_end_matches('/').to_string() }
    }

    /// `curl -i` of `path` with `args`; the answer parsed.
    fn run(&self, path: &str, args: &[&str]) -> Answer {
        let out = Command::new("curl")
            .args(["-sS", "-i", "--max-time", "30"])
            .args(args)
            .arg(format!("{}{path}", self.base))
            .output()
            .expect("running curl");
        assert!(out.status.success(), "curl {path} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let raw = out.stdout;
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("curl -i prints headers");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Answer { status, headers, body: raw[split + 4..].to_vec() }
    }

    fn get(&self, path: &str) -> Answer {
        self.run(path, &[])
    }

    fn put(&self, path: &str, value: &str, extra: &[&str]) -> Answer {
        let mut args = vec!["-X", "PUT", "--data-binary", value];
        args.extend_from_slice(extra);
        self.run(path, &args)
    }

    fn delete(&self, path: &str, extra: &[&str]) -> Answer {
        let mut args = vec!["-X", "DELETE"];
        args.extend_from_slice(extra);
        self.run(path, &args)
    }

    /// `curl -N` streaming `path` (an event stream), line by line.
    fn stream(&self, path: &str, extra: &[&str]) -> Streaming {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-N", "--max-time", "60"]).args(extra).arg(format!("{}{path}", self.base));
        Streaming::spawn(cmd)
    }
}

/// The next SSE event of `s` (its `id`, `event` and `data` fields), waiting up to 15 s.
fn next_event(s: &Streaming) -> (Option<i64>, String, Value) {
    let (mut id, mut event, mut data) = (None, String::new(), Value::Null);
    loop {
        let line = s.take(1).remove(0);
        if line.is_empty() {
            if !event.is_empty() {
                return (id, event, data);
            }
            continue;
        }
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.parse().expect("numeric id"));
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_string();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = serde_json::from_str(v).expect("event data is JSON");
        }
    }
}

/// etcdctl commands making root, and alice who may read and write /app/, then enabling auth.
const ALICE_ON_APP: [&[&str]; 6] = [
    &["user", "add", "root:rootpw"],
    &["role", "add", "app"],
    &["role", "grant-permission", "app", "readwrite", "/app/", "--prefix"],
    &["user", "add", "alice:alicepw"],
    &["user", "grant-role", "alice", "app"],
    &["auth", "enable"],
];

/// Every route, read and written with curl and checked with etcdctl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_keys_with_curl() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    let curl = Curl::new(&c, 0);

    // Write and read one key: JSON, raw, ETag and revision headers.
    let w = curl.put("/kv/app/x", "hello", &[]);
    let written = w.expect(200);
    assert_eq!(written["key"], "app/x");
    let rev = written["mod_revision"].as_i64().expect("mod_revision");
    assert_eq!(w.header("etag"), format!("\"{rev}\""));
    assert_eq!(etcdctl_ok(&ep, &["get", "app/x", "--print-value-only"]).trim(), "hello");
    let r = curl.get("/kv/app/x");
    let kv = r.expect(200);
    assert_eq!(
        (kv["key"].as_str(), kv["value"].as_str(), kv["version"].as_i64()),
        (Some("app/x"), Some("hello"), Some(1))
    );
    assert_eq!(kv["mod_revision"], rev);
    assert_eq!(r.header("etag"), format!("\"{rev}\""));
    assert_eq!(r.header("x-cairn-revision"), rev.to_string());
    let raw = curl.get("/kv/app/x?raw");
    assert_eq!((raw.status, raw.text().as_str()), (200, "hello"));
    assert_eq!(raw.header("content-type"), "application/octet-stream");

    // Keys as etcd users write them: a leading slash is a double slash; any byte is
    // percent-encoded; etcdctl sees the same keys.
    etcdctl_ok(&ep, &["put", "/cfg/feature x", "on"]);
    let kv = curl.get("/kv//cfg/feature%20x").expect(200);
    assert_eq!((kv["key"].as_str(), kv["value"].as_str()), (Some("/cfg/feature x"), Some("on")));
    curl.put("/kv//cfg/limit", "10", &[]).expect(200);
    assert_eq!(etcdctl_ok(&ep, &["get", "/cfg/limit", "--print-value-only"]).trim(), "10");

    // Bytes that are not UTF-8: base64 in JSON, exact in the raw body.
    let bin = c.dir().join("bin.dat");
    std::fs::write(&bin, [0xff, 0x00, 0x01]).expect("write");
    curl.put("/kv/bin", &format!("@{}", bin.display()), &[]).expect(200);
    let kv = curl.get("/kv/bin").expect(200);
    assert_eq!(kv["value_base64"], "/wAB");
    assert!(kv.get("value").is_none());
    assert_eq!(curl.get("/kv/bin?raw").body, [0xff, 0x00, 0x01]);
    let kv = curl.get("/kv/%FFodd").status;
    assert_eq!(kv, 404);
    curl.put("/kv/%FFodd", "v", &[]).expect(200);
    assert_eq!(curl.get("/kv/%FFodd").expect(200)["key_base64"], "/29kZA==");

    // Prefixes: list, keys only, a line per key, count, limit, every key.
    let list = curl.get("/kv//cfg/?prefix").expect(200);
    assert_eq!(list["count"], 2);
    assert_eq!(list["more"], false);
    let keys: Vec<&str> = list["kvs"].as_array().expect("kvs").iter().filter_map(|kv| kv["key"].as_str()).collect();
    assert_eq!(keys, ["/cfg/feature x", "/cfg/limit"]);
    let only = curl.get("/kv//cfg/?prefix&keys").expect(200);
    assert!(only["kvs"][0].get("value").is_none() && only["kvs"][0]["mod_revision"].is_i64());
    assert_eq!(curl.get("/kv//cfg/?prefix&keys&raw").text(), "/cfg/feature x\n/cfg/limit\n");
    let count = curl.get("/kv//cfg/?prefix&count").expect(200);
    assert_eq!(count["count"], 2);
    assert!(count.get("kvs").is_none());
    let limited = curl.get("/kv//cfg/?prefix&limit=1").expect(200);
    assert_eq!((limited["kvs"].as_array().map(Vec::len), limited["more"].as_bool()), (Some(1), Some(true)));
    assert_eq!(curl.get("/kv/?prefix&count").expect(200)["count"], 5, "the empty prefix is every key");
    assert_eq!(curl.get("/kv/?prefix&serializable&count").expect(200)["count"], 5);

    // History reads: ?rev= sees the store as it was.
    curl.put("/kv/app/x", "world", &[]).expect(200);
    assert_eq!(curl.get(&format!("/kv/app/x?rev={rev}&raw")).text(), "hello");
    assert_eq!(curl.get("/kv/app/x?raw").text(), "world");

    // Compare-and-set with the ETag: read, then write only if nobody wrote in between.
    let read = curl.get("/kv/app/x");
    let etag = read.header("etag").to_string();
    let won = curl.put("/kv/app/x", "mine", &["-H", &format!("If-Match: {etag}")]);
    let new_rev = won.expect(200)["mod_revision"].as_i64().expect("rev");
    let lost = curl.put("/kv/app/x", "theirs", &["-H", &format!("If-Match: {etag}")]);
    let refused = lost.expect(412);
    assert_eq!(refused["code"], 9);
    assert_eq!(refused["current"]["value"], "mine");
    assert_eq!(lost.header("etag"), format!("\"{new_rev}\""), "the ETag to retry with");
    let stale = curl.put(&format!("/kv/app/x?if-mod-revision={rev}"), "old", &[]).expect(412);
    assert!(stale["message"].as_str().is_some_and(|m| m.contains(&format!("is {new_rev}, not {rev}"))), "{stale}");
    assert_eq!(curl.put("/kv/app/x?if-mod-revision=0", "x", &[]).status, 412, "0: only if absent");
    assert_eq!(etcdctl_ok(&ep, &["get", "app/x", "--print-value-only"]).trim(), "mine");
    // Create only.
    assert_eq!(curl.put("/kv/app/x?if-absent", "x", &[]).expect(409)["current"]["value"], "mine");
    assert_eq!(curl.put("/kv/app/x", "x", &["-H", "If-None-Match: *"]).status, 409);
    curl.put("/kv/lock/owner", "me", &["-H", "If-None-Match: *"]).expect(200);
    assert_eq!(curl.put("/kv/lock/owner", "you", &["-H", "If-None-Match: *"]).status, 409);
    assert_eq!(curl.put("/kv/nobody", "x", &["-H", "If-Match: *"]).status, 412, "If-Match: * needs the key");

    // Leases: ?ttl= grants one; ?lease= takes etcdctl's hexadecimal ID.
    let w = curl.put("/kv//svc/api/1?ttl=30s", "10.0.0.5:8080", &[]);
    let lease = w.expect(200)["lease"].as_str().expect("lease id").to_string();
    let ttl = etcdctl_ok(&ep, &["lease", "timetolive", &lease, "--keys"]);
    assert!(ttl.contains("granted with TTL(30s)") && ttl.contains("/svc/api/1"), "{ttl}");
    assert_eq!(curl.get("/kv//svc/api/1").expect(200)["lease"], lease.as_str());
    let granted = etcdctl_ok(&ep, &["lease", "grant", "60"]);
    let id = granted.split_whitespace().nth(1).expect("lease id").to_string();
    curl.put(&format!("/kv//svc/api/2?lease={id}"), "10.0.0.6:8080", &[]).expect(200);
    assert!(etcdctl_ok(&ep, &["lease", "timetolive", &id, "--keys"]).contains("/svc/api/2"));
    let unknown = curl.put("/kv/x?lease=1234", "v", &[]).expect(404);
    assert_eq!(unknown["message"], "etcdserver: requested lease not found");

    // Deletes: one key (with its previous value), a prefix, conditionally.
    let d = curl.delete("/kv/app/x?prev", &[]).expect(200);
    assert_eq!((d["deleted"].as_i64(), d["prev"][0]["value"].as_str()), (Some(1), Some("mine")));
    assert_eq!(curl.delete("/kv/app/x", &[]).expect(200)["deleted"], 0);
    assert_eq!(curl.delete("/kv//cfg/limit?if-mod-revision=1", &[]).status, 412);
    assert_eq!(curl.delete("/kv//cfg/?prefix", &[]).expect(200)["deleted"], 2);
    assert_eq!(etcdctl_ok(&ep, &["get", "/cfg/", "--prefix", "--keys-only"]).trim(), "");

    // A key's history: every put and the delete, oldest first; ?limit keeps the newest.
    let h = curl.get("/kv/app/x?history").expect(200);
    let history = h["history"].as_array().expect("history");
    let seen: Vec<(&str, Option<&str>)> =
        history.iter().map(|e| (e["type"].as_str().unwrap_or_default(), e["value"].as_str())).collect();
    assert_eq!(seen, [("put", Some("hello")), ("put", Some("world")), ("put", Some("mine")), ("delete", None)]);
    let last = curl.get("/kv/app/x?history&limit=1").expect(200);
    assert_eq!(last["history"].as_array().map(Vec::len), Some(1));
    assert_eq!(last["history"][0]["type"], "delete");
    // After a compaction: what is left, and the compaction's revision.
    etcdctl_ok(&ep, &["compaction", &new_rev.to_string()]);
    let h = curl.get("/kv/app/x?history").expect(200);
    assert_eq!(h["compact_revision"], new_rev);
    let kinds: Vec<&str> =
        h["history"].as_array().expect("history").iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["put", "delete"], "{h}");
    let gone = curl.get(&format!("/kv/app/x?rev={rev}")).expect(410);
    assert_eq!(gone["message"], "etcdserver: mvcc: required revision has been compacted");

    // Mistakes get a clear answer.
    assert_eq!(curl.get("/kv/missing").expect(404)["message"], "key not found");
    let typo = curl.get("/kv/app?prefx").expect(400);
    assert!(typo["message"].as_str().is_some_and(|m| m.contains("unknown parameter ?prefx")), "{typo}");
    assert_eq!(curl.get("/kv/app?limit=many").status, 400);
    assert_eq!(curl.get("/kv/").status, 400, "no key");
    assert_eq!(curl.put("/kv/", "v", &[]).expect(400)["message"], "etcdserver: key is not provided");
    assert_eq!(curl.run("/kv/app", &["-X", "POST"]).status, 405);
    assert_eq!(curl.put("/kv/a?ttl=0s", "v", &[]).status, 400, "a lease of no time");

    // The OpenAPI document.
    let doc = curl.get("/kv/openapi.json").expect(200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')));
    assert!(doc["paths"]["/kv/{key}"]["put"].is_object());
}

/// `?watch` as Server-Sent Events (resumed after `Last-Event-ID`, without gaps or
/// repeats) and blocking reads (`?wait-revision=`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_as_server_sent_events_and_blocking_reads() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    let curl = Curl::new(&c, 0);

    let watch = curl.stream("/kv//jobs/?prefix&watch&prev", &[]);
    let (id, event, data) = next_event(&watch);
    assert_eq!((id, event.as_str()), (None, "created"));
    let start = data["revision"].as_i64().expect("revision");
    etcdctl_ok(&ep, &["put", "/jobs/1", "new"]);
    // One transaction: two events of one revision, with one id after the last.
    let txn = "\nput /jobs/2 new\nput /jobs/1 taken\n\n\n";
    let out = cairn_testing::etcdctl(&ep, &["txn"], Some(txn));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    etcdctl_ok(&ep, &["del", "/jobs/2"]);
    let (id1, ev1, d1) = next_event(&watch);
    assert_eq!(
        (id1, ev1.as_str(), d1["key"].as_str(), d1["value"].as_str()),
        (Some(start + 1), "put", Some("/jobs/1"), Some("new"))
    );
    let (id2, _, d2) = next_event(&watch);
    let (id3, _, d3) = next_event(&watch);
    assert_eq!((id2, d2["key"].as_str()), (None, Some("/jobs/2")), "no id inside a transaction");
    assert_eq!(
        (id3, d3["key"].as_str(), d3["prev"]["value"].as_str()),
        (Some(start + 2), Some("/jobs/1"), Some("new"))
    );
    let (id4, ev4, d4) = next_event(&watch);
    assert_eq!((id4, ev4.as_str(), d4["key"].as_str()), (Some(start + 3), "delete", Some("/jobs/2")));
    drop(watch);

    // Reconnect after the first event: the rest, exactly once, in order.
    let resumed = curl.stream("/kv//jobs/?prefix&watch", &["-H", &format!("Last-Event-ID: {}", start + 1)]);
    assert_eq!(next_event(&resumed).1, "created");
    let mut got = Vec::new();
    for _ in 0..3 {
        let (_, ev, d) = next_event(&resumed);
        got.push((ev, d["key"].as_str().unwrap_or_default().to_string(), d["mod_revision"].as_i64().unwrap_or(0)));
    }
    let want = [("put", "/jobs/2", start + 2), ("put", "/jobs/1", start + 2), ("delete", "/jobs/2", start + 3)];
    assert_eq!(got, want.map(|(e, k, r)| (e.to_string(), k.to_string(), r)));
    drop(resumed);

    // A watch from a compacted revision ends with an error event naming the compaction.
    etcdctl_ok(&ep, &["compaction", &(start + 2).to_string()]);
    let old = curl.stream(&format!("/kv//jobs/?prefix&watch&rev={start}"), &[]);
    let mut event = next_event(&old);
    if event.1 == "created" {
        event = next_event(&old);
    }
    assert_eq!(event.1, "error");
    assert_eq!(event.2["compact_revision"], start + 2);
    assert_eq!(event.2["error"], "etcdserver: mvcc: required revision has been compacted");

    // Blocking reads: waits for a change after the given revision, then answers the read.
    let now = curl.get("/kv//jobs/1");
    let now_rev: i64 = now.header("x-cairn-revision").parse().expect("revision header");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30"])
        .arg(format!("{}/kv//jobs/1?raw&wait-revision={now_rev}&timeout=25s", curl.base));
    let mut waiting = Streaming::spawn(cmd);
    assert!(waiting.try_line(Duration::from_millis(700)).is_none(), "answered before any change");
    etcdctl_ok(&ep, &["put", "/jobs/other", "x"]);
    assert!(waiting.try_line(Duration::from_millis(700)).is_none(), "another key does not wake it");
    etcdctl_ok(&ep, &["put", "/jobs/1", "done"]);
    assert_eq!(waiting.take(1), ["done"]);
    assert!(waiting.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    // A change already past the revision answers at once; the timeout answers the value.
    assert_eq!(curl.get(&format!("/kv//jobs/1?raw&wait-revision={now_rev}")).text(), "done");
    let began = Instant::now();
    let r = curl.get("/kv//jobs/1?raw&wait-revision=1000000&timeout=1s");
    assert_eq!((r.status, r.text().as_str()), (200, "done"));
    assert!(began.elapsed() >= Duration::from_millis(900), "returned before its timeout");
}

/// Auth (basic credentials, tokens), the limits and the HTTP status of each etcd error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_auth_and_limits_over_http() {
    let c = Cluster::start(1, &["--max-request-bytes", "20000"]).await;
    let ep = c.endpoints();
    let curl = Curl::new(&c, 0);

    // Too large: 413 with etcd's message, and the server keeps serving.
    let big = c.dir().join("big.dat");
    std::fs::write(&big, vec![b'x'; 30_000]).expect("write");
    let r = curl.put("/kv/big", &format!("@{}", big.display()), &[]).expect(413);
    assert_eq!(r["message"], "etcdserver: request is too large");
    curl.put("/kv/small", "ok", &[]).expect(200);

    // NOSPACE: 507 while the alarm is raised; reads still work.
    let status = curl.run("/v3/maintenance/status", &["-X", "POST", "-d", "{}"]).expect(200);
    let member = status["header"]["member_id"].as_str().expect("member id").to_string();
    let alarm = |action: &str| format!(r#"{{"action":"{action}","memberID":"{member}","alarm":"NOSPACE"}}"#);
    curl.run("/v3/maintenance/alarm", &["-X", "POST", "-d", &alarm("ACTIVATE")]).expect(200);
    let full = curl.put("/kv/small", "more", &[]).expect(507);
    assert_eq!(full["message"], "etcdserver: mvcc: database space exceeded");
    assert_eq!(curl.get("/kv/small?raw").text(), "ok");
    curl.run("/v3/maintenance/alarm", &["-X", "POST", "-d", &alarm("DEACTIVATE")]).expect(200);
    curl.put("/kv/small", "more", &[]).expect(200);

    // Auth: root, and alice who may read and write /app/.
    for args in ALICE_ON_APP {
        etcdctl_ok(&ep, args);
    }
    let r = curl.get("/kv//app/x").expect(401);
    assert_eq!(r["message"], "etcdserver: user name is empty");
    let alice = ["-u", "alice:alicepw"];
    curl.put("/kv//app/x", "by alice", &alice).expect(200);
    assert_eq!(curl.run("/kv//app/x?raw", &alice).text(), "by alice");
    let denied = curl.run("/kv/small", &alice).expect(403);
    assert_eq!(denied["message"], "etcdserver: permission denied");
    assert_eq!(curl.put("/kv/small", "x", &alice).status, 403);
    let wrong = curl.run("/kv//app/x", &["-u", "alice:nope"]).expect(401);
    assert_eq!(wrong["message"], "etcdserver: authentication failed, invalid user ID or password");
    // A watch the caller may not read is refused before it streams.
    assert_eq!(curl.run("/kv/?prefix&watch", &alice).status, 403);
    // A token from etcd's authenticate, as the Authorization header (bare or Bearer).
    let login = curl.run("/v3/auth/authenticate", &["-X", "POST", "-d", r#"{"name":"alice","password":"alicepw"}"#]);
    let token = login.expect(200)["token"].as_str().expect("token").to_string();
    for h in [format!("Authorization: {token}"), format!("Authorization: Bearer {token}")] {
        assert_eq!(curl.run("/kv//app/x?raw", &["-H", &h]).text(), "by alice");
    }
    let bad = curl.run("/kv//app/x", &["-H", "Authorization: not-a-token"]).expect(401);
    assert_eq!(bad["message"], "etcdserver: invalid auth token");
    // Root writes anywhere; a changed password stops working at once.
    curl.put("/kv/small", "by root", &["-u", "root:rootpw"]).expect(200);
    let out = cairn_testing::etcdctl(
        &ep,
        &["--user", "root:rootpw", "user", "passwd", "alice", "--interactive=false"],
        Some("newpw\n"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(curl.run("/kv//app/x", &alice).status, 401, "the old password (its token was reused) is refused");
    assert_eq!(curl.run("/kv//app/x?raw", &["-u", "alice:newpw"]).text(), "by alice");
}

/// 503 when the member has no leader: reads that need none still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_leader_is_503() {
    let mut c = Cluster::start(3, &[]).await;
    let curl = Curl::new(&c, 0);
    curl.put("/kv/k", "v", &[]).expect(200);
    c.members[1].kill();
    c.members[2].kill();
    let r = curl.put("/kv/k", "w", &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    let message = r.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(message.starts_with("etcdserver: "), "{message}");
    assert_eq!(curl.get("/kv/k?raw&serializable").text(), "v");
    // gRPC alike: a write to a member cut off from its quorum times out (it used to hang
    // when that member still thought it led).
    let out = cairn_testing::etcdctl(&c.endpoints(), &["put", "k", "w", "--command-timeout=60s"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("etcdserver: "), "{stderr}");
}

/// Over https with `--client-cert-auth`, the certificate's common name is the user, as on
/// gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_the_user() {
    let pki = super::tls::Pki::new();
    let c = super::tls::tls_cluster(&pki, 1, false).await;
    let ep = c.endpoints();
    let root = pki.etcdctl_flags(Some("client"));
    for args in ALICE_ON_APP {
        let (ok, _, err) = super::tls::run(&ep, &root, args);
        assert!(ok, "{args:?}: {err}");
    }
    let curl = Curl::new(&c, 0);
    let (ca, cert, key) = (pki.s("ca.pem"), pki.s("alice.pem"), pki.s("alice-key.pem"));
    let alice = ["--cacert", &ca, "--cert", &cert, "--key", &key];
    curl.put("/kv//app/x", "by alice's certificate", &alice).expect(200);
    assert_eq!(curl.run("/kv//app/x?raw", &alice).text(), "by alice's certificate");
    assert_eq!(curl.run("/kv//other", &alice).expect(403)["message"], "etcdserver: permission denied");
}
