//! The HTTP/JSON gateway, /health and friends, /metrics and JSON logs — over real HTTP
//! (reqwest and the real curl) against real `cairn` processes, side by side with etcd.

use super::harness::{b64, in_process, Cluster};
use cairn_api::etcdserverpb::{LeaseGrantRequest, PutRequest};
use cairn_testing::etcd_binary;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A JSON client of one member's client URL.
struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    fn new(base: &str) -> Http {
        Http { client: reqwest::Client::new(), base: base.trim_end_matches('/').to_string() }
    }

    /// POST a raw body; the status and the body parsed as JSON.
    async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self.client.post(format!("{}{path}", self.base)).body(body).send().await.expect("HTTP request");
        let status = r.status().as_u16();
        let text = r.text().await.expect("HTTP body");
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text:?}"));
        (status, v)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_raw(path, body.to_string()).await
    }

    /// POST that must answer 200.
    async fn ok(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.post(path, body.clone()).await;
        assert_eq!(status, 200, "{path} {body} -> {v}");
        v
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.client.get(format!("{}{path}", self.base)).send().await.expect("HTTP request");
        (r.status().as_u16(), r.text().await.expect("HTTP body"))
    }

    /// Open a streaming RPC; read its lines with [`Lines`].
    async fn stream(&self, path: &str, body: &str) -> Lines {
        let r = self.client.post(format!("{}{path}", self.base)).body(body.to_string()).send().await.expect("stream");
        assert_eq!(r.status().as_u16(), 200, "{path}");
        Lines { resp: r, buf: Vec::new() }
    }
}

/// Newline-delimited JSON read from a streaming response.
struct Lines {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Lines {
    /// The next JSON line; `None` once the stream ends. Panics after 10 s.
    async fn next(&mut self) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).expect("a JSON line"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Ok(None)) | Ok(Err(_)) => return None,
                Err(_) => panic!("no streamed line in 10 s (buffered: {:?})", String::from_utf8_lossy(&self.buf)),
            }
        }
    }

    /// The next line's `result`, which must be there.
    async fn result(&mut self) -> Value {
        let line = self.next().await.expect("the stream ended early");
        line.get("result").cloned().unwrap_or_else(|| panic!("not a result: {line}"))
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_served_as_json() {
    let c = Cluster::start(1, &[]).await;
    let h = Http::new(&c.members[0].client_url);

    // KV: int64 as strings, bytes as base64, zero values left out.
    let put = h.ok("/v3/kv/put", json!({"key": b64("foo"), "value": b64("bar")})).await;
    assert_eq!(put["header"]["revision"], "2");
    assert!(put.get("prev_kv").is_none());
    for prefix in ["/v3", "/v3beta", "/v3alpha"] {
        let got = h.ok(&format!("{prefix}/kv/range"), json!({"key": b64("foo")})).await;
        assert_eq!((got["kvs"][0]["value"].clone(), got["count"].clone()), (json!(b64("bar")), json!("1")));
    }
    let txn = h
        .ok(
            "/v3/kv/txn",
            json!({"compare": [{"key": b64("foo"), "result": "EQUAL", "target": "VALUE", "value": b64("bar")}],
                   "success": [{"request_put": {"key": b64("foo"), "value": b64("baz"), "prev_kv": true}}]}),
        )
        .await;
    assert_eq!(txn["succeeded"], true);
    assert_eq!(txn["responses"][0]["response_put"]["prev_kv"]["value"], b64("bar"));
    let del = h.ok("/v3/kv/deleterange", json!({"key": b64("foo"), "prev_kv": true})).await;
    assert_eq!((del["deleted"].clone(), del["prev_kvs"][0]["value"].clone()), (json!("1"), json!(b64("baz"))));
    h.ok("/v3/kv/compaction", json!({"revision": "3"})).await;

    // Lease, with etcd's older /v3/kv/lease/ paths too.
    let grant = h.ok("/v3/lease/grant", json!({"TTL": 30})).await;
    let id = s(&grant["ID"]).to_string();
    assert_eq!(grant["TTL"], "30");
    h.ok("/v3/kv/put", json!({"key": b64("leased"), "value": b64("v"), "lease": id})).await;
    for path in ["/v3/lease/timetolive", "/v3/kv/lease/timetolive"] {
        let ttl = h.ok(path, json!({"ID": id, "keys": true})).await;
        assert_eq!((ttl["grantedTTL"].clone(), ttl["keys"][0].clone()), (json!("30"), json!(b64("leased"))));
    }
    for path in ["/v3/lease/leases", "/v3/kv/lease/leases"] {
        let leases = h.ok(path, json!({})).await;
        assert_eq!(leases["leases"], json!([{"ID": id}]));
    }
    h.ok("/v3/kv/lease/revoke", json!({"ID": id})).await;
    let ttl = h.ok("/v3/lease/timetolive", json!({"ID": id})).await;
    assert_eq!(ttl["TTL"], "-1");

    // Cluster and maintenance.
    let members = h.ok("/v3/cluster/member/list", json!({})).await;
    assert_eq!(members["members"][0]["name"], "m0");
    assert_eq!(members["members"][0]["peerURLs"][0], c.members[0].peer_url);
    let status = h.ok("/v3/maintenance/status", json!({})).await;
    let me = status["header"]["member_id"].clone();
    assert_eq!(status["leader"], status["header"]["member_id"]);
    assert!(status["dbSize"].as_str().is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n > 0)), "{status}");
    h.ok("/v3/maintenance/alarm", json!({"action": "GET"})).await;
    let hkv = h.ok("/v3/maintenance/hashkv", json!({})).await;
    assert_eq!(
        (hkv["compact_revision"].clone(), hkv["hash_revision"].clone()),
        (json!("3"), hkv["header"]["revision"].clone())
    );
    assert!(hkv["hash"].as_u64().is_some_and(|h| h > 0), "{hkv}");
    assert_eq!(h.ok("/v3/maintenance/hash", json!({})).await["hash"], hkv["hash"]);

    // Lock and Election (lease 0: the server grants one, as etcd).
    let locked = h.ok("/v3/lock/lock", json!({"name": b64("job")})).await;
    let key = s(&locked["key"]).to_string();
    h.ok("/v3/lock/unlock", json!({"key": key})).await;
    let grant = h.ok("/v3/lease/grant", json!({"TTL": 30})).await;
    let won =
        h.ok("/v3/election/campaign", json!({"name": b64("el"), "value": b64("one"), "lease": grant["ID"]})).await;
    let leader = won["leader"].clone();
    let mut observe = h.stream("/v3/election/observe", &json!({"name": b64("el")}).to_string()).await;
    assert_eq!(observe.result().await["kv"]["value"], b64("one"));
    h.ok("/v3/election/proclaim", json!({"leader": leader, "value": b64("two")})).await;
    assert_eq!(observe.result().await["kv"]["value"], b64("two"));
    let now = h.ok("/v3/election/leader", json!({"name": b64("el")})).await;
    assert_eq!(now["kv"]["value"], b64("two"));
    h.ok("/v3/election/resign", json!({"leader": leader})).await;
    let (status, err) = h.post("/v3/election/leader", json!({"name": b64("el")})).await;
    assert_eq!((status, err["message"].clone()), (500, json!("election: no leader")));

    // Membership and maintenance operations.
    let peer = cairn_testing::Cluster::new_peer_url();
    let added = h.ok("/v3/cluster/member/add", json!({"peerURLs": [peer], "isLearner": true})).await;
    assert_eq!(
        (added["member"]["peerURLs"][0].clone(), added["member"]["isLearner"].clone()),
        (json!(peer), json!(true))
    );
    let new_id = added["member"]["ID"].clone();
    let removed = h.ok("/v3/cluster/member/remove", json!({"ID": new_id})).await;
    assert_eq!(removed["members"].as_array().map(Vec::len), Some(1));
    for (path, body, code, message) in [
        ("/v3/cluster/member/add", json!({"peerURLs": ["nope"]}), 400, "etcdserver: given member URLs are invalid"),
        ("/v3/cluster/member/remove", json!({"ID": "1234"}), 404, "etcdserver: member not found"),
        ("/v3/cluster/member/update", json!({"ID": "1234", "peerURLs": [peer]}), 404, "etcdserver: member not found"),
        ("/v3/cluster/member/promote", json!({"ID": "1234"}), 404, "etcdserver: member not found"),
        ("/v3/maintenance/transfer-leadership", json!({"targetID": "1234"}), 400, "etcdserver: bad leader transferee"),
    ] {
        let (got, err) = h.post(path, body).await;
        assert_eq!((got, err["message"].clone()), (code, json!(message)), "{path}: {err}");
    }
    h.ok("/v3/maintenance/defragment", json!({})).await;
    h.ok("/v3/maintenance/transfer-leadership", json!({"targetID": me})).await;
    let mut snap = h.stream("/v3/maintenance/snapshot", "{}").await;
    let first = snap.result().await;
    assert!(first["blob"].as_str().is_some_and(|b| !b.is_empty()), "{first}");

    // The auth routes reach the Auth service (its own tests cover it in depth).
    let status = h.ok("/v3/auth/status", json!({})).await;
    assert!(status.get("enabled").is_none(), "off by default (false is omitted): {status}");
    for (path, body, message) in [
        ("/v3/auth/enable", json!({}), "etcdserver: root user does not exist"),
        (
            "/v3/auth/authenticate",
            json!({"name": "root", "password": "x"}),
            "etcdserver: authentication is not enabled",
        ),
        ("/v3/auth/user/add", json!({"name": ""}), "etcdserver: user name is empty"),
        ("/v3/auth/role/grant", json!({"name": "nope", "perm": {"key": b64("a")}}), "etcdserver: role name not found"),
    ] {
        let (_, err) = h.post(path, body).await;
        assert_eq!(err["message"], json!(message), "{path}: {err}");
    }
    h.ok("/v3/auth/role/add", json!({"name": "app"})).await;
    let roles = h.ok("/v3/auth/role/list", json!({})).await;
    assert_eq!(roles["roles"], json!(["app"]), "{roles}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_keepalive_stream_over_http() {
    let c = Cluster::start(1, &[]).await;
    let h = Http::new(&c.members[0].client_url);
    h.ok("/v3/kv/put", json!({"key": b64("w/0"), "value": b64("old")})).await;

    // A prefix watch from revision 1 and a progress request, in one body.
    let body = format!(
        "{}\n{}",
        json!({"create_request": {"key": b64("w/"), "range_end": b64("w0"), "start_revision": "1", "prev_kv": true}}),
        json!({"progress_request": {}})
    );
    let mut watch = h.stream("/v3/watch", &body).await;
    let created = watch.result().await;
    assert_eq!(created["created"], true, "{created}");
    let mut seen = Vec::new();
    let mut progress = false;
    for i in 1..=3 {
        h.ok("/v3/kv/put", json!({"key": b64(&format!("w/{i}")), "value": b64("new")})).await;
    }
    h.ok("/v3/kv/deleterange", json!({"key": b64("w/0")})).await;
    while seen.len() < 5 {
        let r = watch.result().await;
        let events = r["events"].as_array().cloned().unwrap_or_default();
        progress |= events.is_empty() && r["watch_id"] == "-1";
        seen.extend(events);
    }
    let summary: Vec<(String, String)> = seen
        .iter()
        .map(|e| (e["type"].as_str().unwrap_or("PUT").to_string(), s(&e["kv"]["key"]).to_string()))
        .collect();
    let want: Vec<(String, String)> =
        [("PUT", "w/0"), ("PUT", "w/1"), ("PUT", "w/2"), ("PUT", "w/3"), ("DELETE", "w/0")]
            .iter()
            .map(|(t, k)| (t.to_string(), b64(k)))
            .collect();
    assert_eq!(summary, want);
    assert_eq!(seen[4]["prev_kv"]["value"], b64("old"), "DELETE carries prev_kv");
    assert!(progress || watch.result().await["watch_id"] == "-1", "the progress request was answered");

    // The client goes away: its watcher is gone from the member soon after.
    drop(watch);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = h.get("/metrics").await;
        if metric(&text, "etcd_debugging_mvcc_watcher_total") == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "watcher still registered 10 s after the client left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Keepalive: one response per request, and the stream ends with the requests.
    let grant = h.ok("/v3/lease/grant", json!({"TTL": 20})).await;
    let one = json!({"ID": grant["ID"]}).to_string();
    let mut ka = h.stream("/v3/lease/keepalive", &format!("{one}{one}")).await;
    for _ in 0..2 {
        let r = ka.result().await;
        assert_eq!((r["ID"].clone(), r["TTL"].clone()), (grant["ID"].clone(), json!("20")));
    }
    assert!(ka.next().await.is_none(), "keepalive stream ends after the last request");
    // An unknown lease: TTL 0 (left out), as etcd answers.
    let mut ka = h.stream("/v3/lease/keepalive", r#"{"ID":"12345"}"#).await;
    let r = ka.result().await;
    assert_eq!((r["ID"].clone(), r.get("TTL")), (json!("12345"), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_and_the_server_keeps_serving() {
    let c = Cluster::start(1, &["--max-request-bytes", "65536"]).await;
    let h = Http::new(&c.members[0].client_url);
    h.ok("/v3/kv/put", json!({"key": b64("kept"), "value": b64("v")})).await;

    let cases: Vec<(&str, String, u16, i64)> = vec![
        ("/v3/kv/range", "{not json".into(), 400, 3),
        ("/v3/kv/range", r#"{"key": 5}"#.into(), 400, 3),
        ("/v3/kv/range", r#"{"key": "a2V5", "limit": "many"}"#.into(), 400, 3),
        ("/v3/kv/range", "[1,2,3]".into(), 400, 3),
        ("/v3/kv/range", "{}".into(), 400, 3),
        ("/v3/kv/put", format!(r#"{{"key":"a2V5","value":"{}"}}"#, b64(&"x".repeat(100_000))), 400, 3),
        ("/v3/kv/put", format!(r#"{{"key":"a2V5","value":"{}"}}"#, "A".repeat(1 << 20)), 413, 8),
        ("/v3/kv/compaction", r#"{"revision": "999"}"#.into(), 400, 11),
        ("/v3/lease/revoke", r#"{"ID": "777"}"#.into(), 404, 5),
        ("/v3/nope", "{}".into(), 404, 5),
        ("/v4/kv/range", "{}".into(), 404, 5),
    ];
    for (path, body, status, code) in cases {
        let (got, err) = h.post_raw(path, body.clone()).await;
        let short: String = body.chars().take(60).collect();
        assert_eq!((got, err["code"].as_i64()), (status, Some(code)), "{path} {short}: {err}");
        assert_eq!(err["error"], err["message"], "{err}");
    }
    let (_, err) = h.post("/v3/kv/range", json!({})).await;
    assert_eq!(err["message"], "etcdserver: key is not provided");
    let (_, err) = h.post("/v3/lease/revoke", json!({"ID": "777"})).await;
    assert_eq!(err["message"], "etcdserver: requested lease not found");

    // GET on a POST route, and CORS preflight.
    let r = h.client.get(format!("{}/v3/kv/range", h.base)).send().await.expect("GET");
    assert_eq!(r.status().as_u16(), 405);
    let body: Value = serde_json::from_str(&r.text().await.expect("body")).expect("a JSON error");
    assert_eq!(body["message"], "Method Not Allowed");
    let r = h.client.request(reqwest::Method::OPTIONS, format!("{}/v3/kv/put", h.base)).send().await.expect("OPTIONS");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers().get("access-control-allow-origin").map(|v| v.as_bytes()), Some(&b"*"[..]));

    // A malformed message inside a stream ends it with an error chunk.
    let mut watch = h.stream("/v3/watch", r#"{"create_request":{"key":"a2V5"}} {"create_request": 7}"#).await;
    let mut error = None;
    while let Some(line) = watch.next().await {
        if let Some(e) = line.get("error") {
            error = Some(e.clone());
            break;
        }
    }
    let error = error.expect("an error chunk");
    assert_eq!((error["grpc_code"].clone(), error["http_code"].clone()), (json!(3), json!(400)), "{error}");

    // Garbage on the port, then everything still works and nothing was lost.
    for junk in [&b"GARBAGE / HTTP/9\r\n\r\n"[..], b"POST /v3/kv/put HTTP/1.1\r\ncontent-length: 99999\r\n\r\n{"] {
        use std::io::Write;
        let addr = c.members[0].client_url.trim_start_matches("http://");
        let mut sock = std::net::TcpStream::connect(addr).expect("connect");
        let _ = sock.write_all(junk);
    }
    let got = h.ok("/v3/kv/range", json!({"key": b64("kept")})).await;
    assert_eq!(got["kvs"][0]["value"], b64("v"));
    assert_eq!(got["header"]["revision"], "2", "no refused write landed");
    let (status, health) = h.get("/health").await;
    assert_eq!((status, health.as_str()), (200, r#"{"health":"true","reason":""}"#));
}

/// The same requests to Cairn and to etcd 3.4 give the same JSON (member-specific
/// header fields aside).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_matches_etcd_gateway() {
    let cairn = Cluster::start(1, &[]).await;
    let etcd = Cluster::start_bin(&etcd_binary(), 1, &["--log-level", "error"]).await;
    let requests: Vec<(&str, Value)> = vec![
        ("/v3/kv/put", json!({"key": b64("a"), "value": b64("1")})),
        ("/v3/kv/put", json!({"key": b64("a"), "value": b64("2"), "prev_kv": true})),
        ("/v3/kv/put", json!({"key": b64("b"), "value": b64("3")})),
        ("/v3/kv/range", json!({"key": b64("a"), "range_end": b64("c"), "limit": 1})),
        ("/v3/kv/range", json!({"key": b64("a"), "range_end": b64("c"), "keys_only": true, "sort_order": "DESCEND"})),
        ("/v3/kv/range", json!({"key": b64("a"), "range_end": b64("c"), "count_only": true, "revision": "2"})),
        (
            "/v3/kv/txn",
            json!({"compare": [{"key": b64("a"), "result": "GREATER", "target": "VERSION", "version": "1"}],
                   "success": [{"request_range": {"key": b64("b")}}, {"request_delete_range": {"key": b64("b")}}],
                   "failure": [{"request_put": {"key": b64("x"), "value": b64("y")}}]}),
        ),
        (
            "/v3/kv/txn",
            json!({"compare": [{"key": b64("zz"), "target": "CREATE", "create_revision": "0"}],
                   "success": [{"request_put": {"key": b64("zz"), "value": b64("0")}}]}),
        ),
        ("/v3/kv/deleterange", json!({"key": b64("a"), "range_end": b64("\0"), "prev_kv": true})),
        ("/v3/lease/grant", json!({"ID": "4660", "TTL": 60})),
        ("/v3/kv/put", json!({"key": b64("l"), "value": b64("v"), "lease": "4660"})),
        ("/v3/lease/revoke", json!({"ID": "4660"})),
        ("/v3/kv/range", json!({})),
        ("/v3/kv/put", json!({"key": b64("k"), "lease": "99"})),
        ("/v3/kv/compaction", json!({"revision": "100"})),
        ("/v3/kv/range", json!({"key": b64("a"), "revision": "100"})),
        ("/v3/kv/txn", json!({"success": [{"request_put": {"key": b64("d")}}, {"request_put": {"key": b64("d")}}]})),
    ];
    let (hc, he) = (Http::new(&cairn.members[0].client_url), Http::new(&etcd.members[0].client_url));
    for (path, body) in requests {
        let (mut a, mut b) = (hc.post(path, body.clone()).await, he.post(path, body.clone()).await);
        scrub(&mut a.1);
        scrub(&mut b.1);
        assert_eq!(a, b, "{path} {body}: cairn (left) vs etcd (right)");
    }
    // A watch replaying that history answers alike too.
    let replay =
        json!({"create_request": {"key": b64("\0"), "range_end": b64("\0"), "start_revision": "1"}}).to_string();
    let (mut wa, mut wb) = (hc.stream("/v3/watch", &replay).await, he.stream("/v3/watch", &replay).await);
    for _ in 0..2 {
        let (mut a, mut b) = (wa.result().await, wb.result().await);
        scrub(&mut a);
        scrub(&mut b);
        assert_eq!(a, b, "watch: cairn (left) vs etcd (right)");
    }
}

/// Drop what differs between members by design: ids and terms in headers.
fn scrub(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(h)) = m.get_mut("header") {
                for f in ["cluster_id", "member_id", "raft_term"] {
                    h.remove(f);
                }
            }
            m.values_mut().for_each(scrub);
        }
        Value::Array(a) => a.iter_mut().for_each(scrub),
        _ => {}
    }
}

/// A metric's value (summed over its label sets) from a scrape, parsed by a
/// Prometheus text-format parser.
fn metric(text: &str, name: &str) -> Option<f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("a valid scrape");
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .collect();
    (!found.is_empty()).then(|| found.iter().sum())
}

/// Samples of `name` by one label's value.
fn by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("a valid scrape");
    let mut out = BTreeMap::new();
    for s in scrape.samples.iter().filter(|s| s.metric == name) {
        if let (Some(l), prometheus_parse::Value::Counter(v)) = (s.labels.get(label), &s.value) {
            *out.entry(l.to_string()).or_default() += v;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scrape_has_the_key_series_and_they_move() {
    // Two members in this process: each has its own registry.
    let (d1, d2) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let (a, b) = (in_process(d1.path(), &[]).await, in_process(d2.path(), &[]).await);
    let (ha, hb) =
        (Http::new(&format!("http://{}", a.client_addrs[0])), Http::new(&format!("http://{}", b.client_addrs[0])));
    let (status, before) = ha.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "etcd_server_has_leader",
        "etcd_server_is_leader",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_proposals_pending",
        "etcd_server_proposals_failed_total",
        "cairn_raft_term",
        "cairn_raft_last_log_index",
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_disk_backend_commit_duration_seconds",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_debugging_mvcc_keys_total",
        "etcd_debugging_mvcc_watcher_total",
        "etcd_debugging_mvcc_slow_watcher_total",
        "cairn_lease_active",
        "etcd_network_client_grpc_received_bytes_total",
        "etcd_network_client_grpc_sent_bytes_total",
        "etcd_server_id",
        "process_resident_memory_bytes",
    ] {
        assert!(metric(&before, name).is_some(), "{name} missing from the scrape:\n{before}");
    }
    assert_eq!(metric(&before, "etcd_server_has_leader"), Some(1.0));
    assert!(metric(&before, "etcd_server_leader_changes_seen_total") >= Some(1.0));
    assert!(metric(&before, "cairn_raft_term") >= Some(1.0));

    // Ten gRPC puts and a lease on member a.
    let url = format!("http://{}", a.client_addrs[0]);
    let mut kv = cairn_api::etcdserverpb::kv_client::KvClient::connect(url.clone()).await.expect("connect");
    for i in 0..10 {
        kv.put(PutRequest { key: format!("m{i}").into(), value: b"v".to_vec(), ..Default::default() })
            .await
            .expect("put");
    }
    let mut lease = cairn_api::etcdserverpb::lease_client::LeaseClient::connect(url).await.expect("connect");
    lease.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }).await.expect("grant");
    let (_, after) = ha.get("/metrics").await;
    let puts = |t: &str| by_label(t, "grpc_server_handled_total", "grpc_method").get("Put").copied().unwrap_or(0.0);
    assert_eq!(puts(&after) - puts(&before), 10.0);
    let started = by_label(&after, "grpc_server_started_total", "grpc_method");
    assert_eq!(started.get("LeaseGrant"), Some(&1.0));
    let grew = |name: &str, by: f64| {
        let (x, y) = (metric(&before, name).unwrap_or(0.0), metric(&after, name).unwrap_or(0.0));
        assert!(y - x >= by, "{name}: {x} -> {y}, expected +{by}");
    };
    grew("etcd_debugging_mvcc_keys_total", 10.0);
    grew("etcd_server_proposals_committed_total", 11.0);
    grew("etcd_server_proposals_applied_total", 11.0);
    grew("etcd_disk_wal_fsync_duration_seconds", 1.0);
    grew("etcd_network_client_grpc_received_bytes_total", 100.0);
    grew("etcd_network_client_grpc_sent_bytes_total", 100.0);
    assert_eq!(metric(&after, "cairn_lease_active"), Some(1.0));
    assert_eq!(metric(&after, "etcd_server_proposals_pending"), Some(0.0));

    // The other member saw none of it.
    let (_, other) = hb.get("/metrics").await;
    assert_eq!(puts(&other), 0.0);
    assert_eq!(metric(&other, "etcd_debugging_mvcc_keys_total"), Some(0.0));
    assert_eq!(metric(&other, "cairn_lease_active"), Some(0.0));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_version() {
    let mut c = Cluster::start(3, &[]).await;
    for m in &c.members {
        let h = Http::new(&m.client_url);
        assert_eq!(h.get("/health").await, (200, r#"{"health":"true","reason":""}"#.to_string()));
        assert_eq!(h.get("/livez").await, (200, "ok".to_string()));
        assert_eq!(h.get("/readyz").await, (200, "ok".to_string()));
        let (_, verbose) = h.get("/readyz?verbose").await;
        assert!(verbose.contains("[+]linearizable_read ok") && verbose.ends_with("ok"), "{verbose}");
    }
    let h = Http::new(&c.members[0].client_url);
    let (status, version) = h.get("/version").await;
    let version: Value = serde_json::from_str(&version).expect("JSON");
    assert_eq!(status, 200);
    assert_eq!(version["etcdserver"], "3.5.0");
    assert_eq!(version["etcdcluster"], "3.5.0");
    assert_eq!(version["cairn"], env!("CARGO_PKG_VERSION"));
    let r = h.client.post(format!("{}/health", h.base)).send().await.expect("POST /health");
    assert_eq!(r.status().as_u16(), 405);

    // Without a quorum member 0 is unhealthy and not ready, but alive.
    c.members[1].kill();
    c.members[2].kill();
    let (status, body) = h.get("/health").await;
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!((status, body["health"].clone()), (503, json!("false")), "{body}");
    assert!(!s(&body["reason"]).is_empty());
    let (status, ready) = h.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(ready.contains("[-]linearizable_read failed"), "{ready}");
    assert_eq!(h.get("/livez").await.0, 200);
    // Quorum back: healthy again.
    c.members[1].start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.get("/health").await.0 != 200 {
        assert!(Instant::now() < deadline, "not healthy 20 s after quorum returned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_port_and_json_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = in_process(dir.path(), &["--listen-metrics-urls", "http://127.0.0.1:0"]).await;
    let h = Http::new(&format!("http://{}", m.metrics_addrs[0]));
    let (status, text) = h.get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "etcd_server_has_leader"), Some(1.0));
    assert_eq!(h.get("/health").await.0, 200);
    // Only observability there: no KV API on the metrics port.
    assert_eq!(h.post_raw("/v3/kv/range", "{}").await.0, 404);
    m.stop().await;

    let c = Cluster::start(1, &["--log-format", "json", "--log-level", "info"]).await;
    Http::new(&c.members[0].client_url).ok("/v3/kv/put", json!({"key": b64("k")})).await;
    let log = c.members[0].log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    assert!(lines.iter().any(|l| l.contains("cairn member started")), "{log}");
}

/// The issue's own example, with the real curl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_end_to_end() {
    let found =
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join("curl").is_file()));
    assert!(found, "curl is missing: install it with `apt-get install -y curl` (./scripts/test does this)");
    let c = Cluster::start(1, &[]).await;
    let ep = &c.members[0].client_url;
    let curl = |args: &[&str]| {
        let out = Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().expect("running curl");
        assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A watch first, streaming to curl's stdout.
    let mut watch = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "20", &format!("{ep}/v3/watch"), "-X", "POST", "-d"])
        .arg(r#"{"create_request": {"key":"Zm9v"}}"#)
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl watch");
    let put = curl(&["-L", &format!("{ep}/v3/kv/put"), "-X", "POST", "-d", r#"{"key":"Zm9v","value":"YmFy"}"#]);
    let put: Value = serde_json::from_str(&put).expect("JSON");
    assert_eq!(put["header"]["revision"], "2");
    let got = curl(&["-L", &format!("{ep}/v3/kv/range"), "-X", "POST", "-d", r#"{"key":"Zm9v"}"#]);
    let got: Value = serde_json::from_str(&got).expect("JSON");
    assert_eq!(got["kvs"][0]["value"], "YmFy");
    assert_eq!(curl(&[&format!("{ep}/health")]), r#"{"health":"true","reason":""}"#);
    assert!(curl(&[&format!("{ep}/metrics")]).contains("etcd_server_has_leader 1"));
    // The watch saw the put (the put may land before the watch registered: then put again).
    let stdout = watch.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let created = rx.recv_timeout(Duration::from_secs(10)).expect("watch created line");
    assert!(created.contains(r#""created":true"#), "{created}");
    curl(&[&format!("{ep}/v3/kv/put"), "-X", "POST", "-d", r#"{"key":"Zm9v","value":"YmF6"}"#]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("the watch event for the second put");
        if line.contains(r#""value":"YmF6""#) {
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
}

/// `curl -i` with `args`; the status line and headers, lowercased, and the body.
fn curl_i(args: &[&str]) -> (String, String) {
    let out = Command::new("curl").args(["-s", "-i", "--max-time", "5"]).args(args).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_lowercase(), body.to_string())
}

/// `--cors` and `--host-whitelist`, as etcd's access controller: listed origins get CORS
/// headers (others none), preflights are answered, and a plain-HTTP request naming a host
/// not listed gets 421 with etcd's DNS-rebinding message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_origins_and_host_whitelist() {
    let c = Cluster::start(1, &["--cors=http://app.example", "--host-whitelist=127.0.0.1,localhost"]).await;
    let url = format!("{}/v3/kv/range", c.members[0].client_url);
    let body = r#"{"key":"YQ=="}"#;
    let (head, _) = curl_i(&["-X", "POST", "-H", "Origin: http://app.example", "-d", body, &url]);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("access-control-allow-origin: http://app.example"), "{head}");
    let (head, _) = curl_i(&["-X", "POST", "-H", "Origin: http://evil.example", "-d", body, &url]);
    assert!(head.starts_with("http/1.1 200") && !head.contains("access-control-allow-origin"), "{head}");
    let (head, _) = curl_i(&["-X", "OPTIONS", "-H", "Origin: http://app.example", &url]);
    assert!(head.starts_with("http/1.1 200") && head.contains("access-control-allow-methods: post"), "{head}");
    // A name that is not whitelisted, as a DNS-rebinding page would send it.
    let (head, text) = curl_i(&["-X", "POST", "-H", "Host: rebound.example:2379", "-d", body, &url]);
    assert!(head.starts_with("http/1.1 421"), "{head}");
    assert!(text.contains("the Host header was unrecognized") && text.contains("rebound.example"), "{text}");
    assert!(c.members[0].log().contains("DNS rebinding"), "the refusal is logged");
    // gRPC is not the gateway's: etcdctl works whatever it names.
    assert_eq!(super::harness::etcdctl_ok(&c.endpoints(), &["put", "k", "v"]).trim(), "OK");
}

/// `--listen-client-http-urls`: HTTP (gateway, /health, /metrics) moves to its own URL and
/// the client URL serves gRPC only, as etcd splits them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_only_urls_split_the_gateway_from_grpc() {
    let port = cairn_testing::free_port().expect("a free port");
    let http = format!("http://127.0.0.1:{port}");
    let c = Cluster::start(1, &[&format!("--listen-client-http-urls={http}")]).await;
    // gRPC on the client URL.
    assert_eq!(super::harness::etcdctl_ok(&c.endpoints(), &["put", "k", "split"]).trim(), "OK");
    // HTTP on the HTTP URL...
    let (head, body) = curl_i(&["-X", "POST", "-d", r#"{"key":"aw=="}"#, &format!("{http}/v3/kv/range")]);
    assert!(head.starts_with("http/1.1 200") && body.contains(&b64("split")), "{head}{body}");
    let (head, _) = curl_i(&[&format!("{http}/health")]);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // ...and not on the client URL; gRPC not on the HTTP URL.
    let (head, _) = curl_i(&[&format!("{}/health", c.members[0].client_url)]);
    assert!(head.starts_with("http/1.1 404"), "{head}");
    let out = super::harness::etcdctl(&format!("127.0.0.1:{port}"), &["get", "k", "--command-timeout=3s"], None);
    assert!(!out.status.success(), "gRPC answered on the HTTP-only URL");
}
