//! etcd's auth from outside: users, roles and key-range permissions set up and used with
//! the real etcdctl (`--user`), simple tokens across members and their TTL, JWT tokens,
//! the HTTP gateway's Authorization header, and client certificates naming the user.

use super::harness::{etcdctl, etcdctl_ok, Cluster};
use super::tls::{run, tls_cluster, Pki};
use cairn_api::etcdserverpb::auth_client::AuthClient;
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::{AuthenticateRequest, RangeRequest};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

/// etcdctl as `user` ("name:password"; "" for no credentials): (success, stdout, stderr).
fn as_user(ep: &str, user: &str, args: &[&str]) -> (bool, String, String) {
    let flag = format!("--user={user}");
    let mut all: Vec<&str> = if user.is_empty() { vec![] } else { vec![&flag] };
    all.extend(args);
    let out = etcdctl(ep, &all, None);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(ep: &str, user: &str, args: &[&str]) -> String {
    let (ok, out, err) = as_user(ep, user, args);
    assert!(ok, "etcdctl --user={user} {args:?} failed: {err}");
    out
}

/// etcdctl must fail with `message` in its error output.
fn refused(ep: &str, user: &str, args: &[&str], message: &str) {
    let (ok, out, err) = as_user(ep, user, args);
    assert!(!ok && err.contains(message), "etcdctl --user={user} {args:?}: expected {message:?}, got {out} {err}");
}

const ROOT: &str = "root:rootpw";
const ALICE: &str = "alice:alicepw";
const BOB: &str = "bob:bobpw";

/// root (with the root role), alice (read-write on /app/), bob (read-only on /app/), auth on.
fn set_up_users(ep: &str) {
    refused(ep, "", &["auth", "enable"], "etcdserver: root user does not exist");
    etcdctl_ok(ep, &["user", "add", ROOT]);
    // (etcdctl itself answers "root user does not have root role" by adding the role and
    // retrying, so that error is checked over gRPC in the unit tests.)
    etcdctl_ok(ep, &["user", "grant-role", "root", "root"]);
    for (user, role, perm) in [(ALICE, "app-rw", "readwrite"), (BOB, "app-ro", "read")] {
        etcdctl_ok(ep, &["user", "add", user]);
        etcdctl_ok(ep, &["role", "add", role]);
        etcdctl_ok(ep, &["role", "grant-permission", role, perm, "/app/", "--prefix=true"]);
        etcdctl_ok(ep, &["user", "grant-role", user.split(':').next().unwrap_or_default(), role]);
    }
    etcdctl_ok(ep, &["put", "/other", "secret"]);
    assert_eq!(etcdctl_ok(ep, &["auth", "enable"]).trim(), "Authentication Enabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_matrix_with_etcdctl() {
    let mut c = Cluster::start(1, &["--bcrypt-cost=4"]).await;
    let ep = c.endpoints();
    set_up_users(&ep);

    // No credentials, a wrong password.
    refused(&ep, "", &["get", "/app/x"], "etcdserver: user name is empty");
    refused(&ep, "", &["put", "/app/x", "v"], "etcdserver: user name is empty");
    refused(&ep, "alice:wrong", &["get", "/app/x"], "etcdserver: authentication failed, invalid user ID or password");
    refused(&ep, "mallory:x", &["get", "/app/x"], "etcdserver: authentication failed, invalid user ID or password");

    // Read-write on /app/ writes there and reads nothing else.
    assert_eq!(ok(&ep, ALICE, &["put", "/app/x", "1"]).trim(), "OK");
    assert_eq!(ok(&ep, ALICE, &["get", "/app/", "--prefix", "--print-value-only"]), "1\n");
    refused(&ep, ALICE, &["get", "/other"], "etcdserver: permission denied");
    refused(&ep, ALICE, &["put", "/other", "x"], "etcdserver: permission denied");
    refused(&ep, ALICE, &["get", "", "--from-key"], "etcdserver: permission denied");
    // Read-only reads and cannot write.
    assert_eq!(ok(&ep, BOB, &["get", "/app/x", "--print-value-only"]), "1\n");
    refused(&ep, BOB, &["put", "/app/x", "2"], "etcdserver: permission denied");
    refused(&ep, BOB, &["del", "/app/x"], "etcdserver: permission denied");

    // A txn is checked on every key it touches, in both branches.
    let (okk, _, err) = {
        let out = etcdctl(&ep, &["--user", ALICE, "txn"], Some("value(\"/other\") = \"secret\"\n\nput /app/t 1\n\n\n"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(!okk && err.contains("etcdserver: permission denied"), "compare on /other: {err}");
    let out =
        etcdctl(&ep, &["--user", ALICE, "txn"], Some("value(\"/app/x\") = \"1\"\n\nput /app/t 1\n\nput /other 2\n\n"));
    assert!(!out.status.success(), "a failure branch writing /other is refused");
    let out =
        etcdctl(&ep, &["--user", ALICE, "txn"], Some("value(\"/app/x\") = \"1\"\n\nput /app/t 1\n\nget /app/x\n\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Watch: a range the user may not read is cancelled with etcd's reason.
    let out = etcdctl(&ep, &["--user", ALICE, "watch", "/other"], None);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && text.contains("permission denied"), "{text}");

    // Lock and election act with the caller's permissions.
    assert_eq!(ok(&ep, ALICE, &["lock", "/app/lk", "echo", "held"]).trim(), "held");
    refused(&ep, ALICE, &["lock", "/other/lk", "echo", "held"], "permission denied");

    // Leases: revoking one holding a key the user may not write is refused.
    let granted = ok(&ep, ALICE, &["lease", "grant", "60"]);
    let lease = granted.split_whitespace().nth(1).expect("lease id").to_string();
    ok(&ep, ROOT, &["put", "/other/leased", "v", &format!("--lease={lease}")]);
    refused(&ep, ALICE, &["lease", "revoke", &lease], "etcdserver: permission denied");
    refused(&ep, ALICE, &["lease", "timetolive", &lease], "etcdserver: permission denied");
    ok(&ep, ROOT, &["lease", "revoke", &lease]);

    // Maintenance, membership and auth management are root's.
    for args in [
        &["compaction", "1"][..],
        &["defrag"],
        &["snapshot", "save", "/dev/null"],
        &["member", "add", "x", "--peer-urls=http://127.0.0.1:1"],
        &["user", "list"],
        &["role", "list"],
        &["user", "add", "eve:x"],
        &["auth", "disable"],
        &["endpoint", "hashkv"],
        &["move-leader", "1"],
    ] {
        refused(&ep, ALICE, args, "etcdserver: permission denied");
    }
    assert!(ok(&ep, ROOT, &["compaction", "1"]).contains("compacted revision 1"));
    assert_eq!(ok(&ep, ROOT, &["user", "list"]), "alice\nbob\nroot\n");
    // Users may read themselves and their roles, not others.
    assert!(ok(&ep, ALICE, &["user", "get", "alice"]).contains("app-rw"));
    refused(&ep, ALICE, &["user", "get", "bob"], "etcdserver: permission denied");
    assert!(ok(&ep, ALICE, &["role", "get", "app-rw"]).contains("/app/"));
    refused(&ep, ALICE, &["role", "get", "app-ro"], "etcdserver: permission denied");
    // Status and member list need only a user.
    ok(&ep, ALICE, &["endpoint", "status"]);
    ok(&ep, ALICE, &["member", "list"]);

    // etcd's management errors.
    refused(&ep, ROOT, &["user", "add", ALICE], "etcdserver: user name already exists");
    refused(&ep, ROOT, &["user", "grant-role", "alice", "nope"], "etcdserver: role name not found");
    refused(&ep, ROOT, &["user", "revoke-role", "alice", "app-ro"], "etcdserver: role is not granted to the user");
    refused(&ep, ROOT, &["user", "revoke-role", "root", "root"], "etcdserver: invalid auth management");
    refused(&ep, ROOT, &["user", "delete", "root"], "etcdserver: invalid auth management");
    refused(&ep, ROOT, &["role", "add", "app-rw"], "etcdserver: role name already exists");
    refused(
        &ep,
        ROOT,
        &["role", "revoke-permission", "app-rw", "/nope"],
        "etcdserver: permission is not granted to the role",
    );
    refused(&ep, ROOT, &["user", "get", "ghost"], "etcdserver: user name not found");

    // A revoked permission applies at once; a password change takes the old one away.
    ok(&ep, ROOT, &["role", "revoke-permission", "app-rw", "/app/", "--prefix=true"]);
    refused(&ep, ALICE, &["put", "/app/x", "3"], "etcdserver: permission denied");
    let out = etcdctl(&ep, &["--user", ROOT, "user", "passwd", "bob", "--interactive=false"], Some("newpw\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    refused(&ep, BOB, &["get", "/app/x"], "etcdserver: authentication failed, invalid user ID or password");
    let bob = "bob:newpw";
    ok(&ep, ROOT, &["user", "delete", "alice"]);
    refused(&ep, ALICE, &["get", "/app/x"], "etcdserver: authentication failed, invalid user ID or password");

    // Auth state survives a restart.
    c.members[0].kill();
    c.members[0].start();
    c.wait_ready(0).await;
    refused(&ep, "", &["get", "/app/x"], "etcdserver: user name is empty");
    assert_eq!(ok(&ep, bob, &["get", "/app/x", "--print-value-only"]), "1\n");

    // The HTTP gateway: a token from /v3/auth/authenticate in the Authorization header.
    let http = reqwest::Client::new();
    let post = |path: &str, token: Option<&str>, body: serde_json::Value| {
        let mut r = http.post(format!("{}/v3/{path}", c.members[0].client_url)).body(body.to_string());
        if let Some(t) = token {
            r = r.header("Authorization", t);
        }
        async move {
            let resp = r.send().await.expect("HTTP");
            let status = resp.status().as_u16();
            let text = resp.text().await.expect("body");
            (status, serde_json::from_str::<serde_json::Value>(&text).expect("JSON"))
        }
    };
    let (_, auth) = post("auth/authenticate", None, serde_json::json!({"name": "bob", "password": "newpw"})).await;
    let token = auth["token"].as_str().expect("a token").to_string();
    let key = serde_json::json!({"key": super::harness::b64("/app/x")});
    let (status, got) = post("kv/range", Some(&token), key.clone()).await;
    assert_eq!((status, got["count"].clone()), (200, serde_json::json!("1")), "{got}");
    let (_, got) = post("kv/range", None, key.clone()).await;
    assert_eq!(got["message"], "etcdserver: user name is empty");
    let (status, got) = post("kv/range", Some("forged.1"), key.clone()).await;
    assert_eq!((status, got["message"].clone()), (401, serde_json::json!("etcdserver: invalid auth token")));

    // Off again: everyone may do everything; on again: credentials needed again.
    assert_eq!(ok(&ep, ROOT, &["auth", "disable"]).trim(), "Authentication Disabled");
    assert_eq!(etcdctl_ok(&ep, &["get", "/other", "--print-value-only"]), "secret\n");
    assert_eq!(ok(&ep, ROOT, &["auth", "enable"]).trim(), "Authentication Enabled");
    refused(&ep, "", &["get", "/other"], "etcdserver: user name is empty");
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string()).expect("url").connect().await.expect("connect")
}

async fn login(url: &str, name: &str, password: &str) -> Result<String, tonic::Status> {
    let mut auth = AuthClient::new(channel(url).await);
    let req = AuthenticateRequest { name: name.into(), password: password.into() };
    Ok(auth.authenticate(req).await?.into_inner().token)
}

/// A Range of `key` on `url` with `token`.
async fn range_with(url: &str, token: &str, key: &str) -> Result<i64, tonic::Status> {
    let mut kv = KvClient::new(channel(url).await);
    let mut req = tonic::Request::new(RangeRequest { key: key.into(), ..Default::default() });
    req.metadata_mut().insert("token", token.parse().expect("ascii token"));
    Ok(kv.range(req).await?.into_inner().count)
}

fn expect_invalid(r: Result<i64, tonic::Status>, why: &str) {
    let e = r.expect_err(why);
    assert_eq!((e.code(), e.message()), (Code::Unauthenticated, "etcdserver: invalid auth token"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_tokens_work_on_every_member_and_expire() {
    let c = Cluster::start(3, &["--bcrypt-cost=4", "--auth-token-ttl=2"]).await;
    set_up_users(&c.members[0].endpoint());
    let token = login(&c.members[0].client_url, "bob", "bobpw").await.expect("login");
    // Issued through Raft: the other members know it at once.
    for m in &c.members {
        assert_eq!(range_with(&m.client_url, &token, "/app/x").await.expect("token accepted"), 0);
    }
    let e = range_with(&c.members[1].client_url, &token, "/other").await.expect_err("bob may not read /other");
    assert_eq!(e.code(), Code::PermissionDenied);
    expect_invalid(range_with(&c.members[2].client_url, &format!("{token}x"), "/app/x").await, "a forged token");
    let e = login(&c.members[1].client_url, "bob", "nope").await.expect_err("wrong password");
    assert_eq!(e.message(), "etcdserver: authentication failed, invalid user ID or password");
    // Unused for longer than --auth-token-ttl: gone everywhere.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    for m in &c.members {
        expect_invalid(range_with(&m.client_url, &token, "/app/x").await, "an expired token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_verify_on_every_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("ES256 key");
    let (private, public) = (dir.path().join("jwt.key"), dir.path().join("jwt.pub"));
    std::fs::write(&private, key.serialize_pem()).expect("write");
    std::fs::write(&public, key.public_key_pem()).expect("write");
    let spec = format!(
        "--auth-token=jwt,pub-key={},priv-key={},sign-method=ES256,ttl=3s",
        public.display(),
        private.display()
    );
    let c = Cluster::start(3, &["--bcrypt-cost=4", &spec]).await;
    let ep = c.endpoints();
    set_up_users(&c.members[0].endpoint());
    // etcdctl logs in and works as with simple tokens.
    assert_eq!(ok(&ep, BOB, &["get", "/app/x", "--print-value-only"]), "");
    refused(&ep, BOB, &["get", "/other"], "etcdserver: permission denied");

    let token = login(&c.members[2].client_url, "alice", "alicepw").await.expect("login");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    for m in &c.members {
        assert_eq!(range_with(&m.client_url, &token, "/app/x").await.expect("verified by every member"), 0);
    }
    let mut forged = token.clone();
    forged.truncate(token.len() - 4);
    forged.push_str("AAAA");
    expect_invalid(range_with(&c.members[0].client_url, &forged, "/app/x").await, "a bad signature");
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    expect_invalid(range_with(&c.members[1].client_url, &token, "/app/x").await, "past its exp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_common_name_is_the_user() {
    let pki = Pki::new();
    let c = tls_cluster(&pki, 1, false).await;
    let ep = c.endpoints();
    let root = pki.etcdctl_flags(Some("client"));
    let alice = pki.etcdctl_flags(Some("alice"));
    for args in [
        &["user", "add", ROOT][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", ALICE],
        &["role", "add", "app"],
        &["role", "grant-permission", "app", "readwrite", "/app/", "--prefix=true"],
        &["user", "grant-role", "alice", "app"],
        &["auth", "enable"],
    ] {
        let (ok, _, err) = run(&ep, &root, args);
        assert!(ok, "{args:?}: {err}");
    }
    // No token: the certificate's CN (root, alice) is the user.
    let (ok, _, err) = run(&ep, &root, &["put", "/other", "x"]);
    assert!(ok, "CN=root may write anything: {err}");
    let (ok, _, err) = run(&ep, &alice, &["put", "/app/x", "1"]);
    assert!(ok, "CN=alice writes /app/: {err}");
    let (ok, _, err) = run(&ep, &alice, &["get", "/other"]);
    assert!(!ok && err.contains("permission denied"), "CN=alice may not read /other: {err}");
    let (ok, _, err) = run(&ep, &alice, &["defrag"]);
    assert!(!ok && err.contains("permission denied"), "{err}");
    // A token wins over the certificate (as in etcd).
    let mut with_user = alice.clone();
    with_user.push(format!("--user={ROOT}"));
    let (ok, _, err) = run(&ep, &with_user, &["get", "/other"]);
    assert!(ok, "logged in as root: {err}");

    // The gateway names the user from the certificate too.
    let out = std::process::Command::new("curl")
        .args(["-s", "--cacert", &pki.s("ca.pem"), "--cert", &pki.s("alice.pem"), "--key", &pki.s("alice-key.pem")])
        .arg(format!("https://{ep}/v3/kv/range"))
        .args(["-X", "POST", "-d", r#"{"key":"L290aGVy"}"#])
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("etcdserver: permission denied"), "{body}");
}

/// Beyond etcd 3.5 (which does neither): enabling auth or shrinking a role cancels the
/// watchers their users may no longer read, and keeping a lease alive needs write
/// permission on its keys (as revoking it does); listing leases needs a user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_changes_cancel_watchers_and_leases_need_their_keys() {
    use cairn_api::etcdserverpb::WatchCreateRequest;
    use cairn_testing::GrpcWatch as Stream;
    let c = Cluster::start(1, &["--bcrypt-cost=4"]).await;
    let ep = c.endpoints();
    let url = c.members[0].client_url.clone();
    let denied = "rpc error: code = PermissionDenied desc = etcdserver: permission denied";

    // A watch opened before auth is enabled, anonymously.
    let mut early = Stream::open(&url).await;
    early.create(WatchCreateRequest { key: "/other".into(), ..Default::default() }).await;
    assert!(early.next().await.created);
    set_up_users(&ep);
    // (It sees the put set_up_users makes before enabling auth.)
    let mut r = early.next().await;
    while !r.canceled && r.events.iter().all(|e| e.kv.as_ref().is_some_and(|kv| kv.value == b"secret")) {
        r = early.next().await;
    }
    assert!(r.canceled && r.cancel_reason == denied, "{r:?}");
    ok(&ep, ROOT, &["put", "/other", "after"]);
    let more = tokio::time::timeout(Duration::from_millis(500), early.rx.message()).await;
    assert!(!matches!(more, Ok(Ok(Some(ref r))) if !r.events.is_empty()), "an event after the cancel: {more:?}");

    // alice's watch on /app/ ends when her role loses the permission.
    let token = AuthClient::new(channel(&url).await)
        .authenticate(AuthenticateRequest { name: "alice".into(), password: "alicepw".into() })
        .await
        .expect("authenticate")
        .into_inner()
        .token;
    let mut w = Stream::open_as(&url, Some(&token)).await;
    w.create(WatchCreateRequest { key: "/app/".into(), range_end: "/app0".into(), ..Default::default() }).await;
    let r = w.next().await;
    assert!(r.created && !r.canceled, "{r:?}");
    ok(&ep, ROOT, &["put", "/app/seen", "1"]);
    assert_eq!(w.next().await.events.len(), 1);
    ok(&ep, ROOT, &["role", "revoke-permission", "app-rw", "/app/", "--prefix=true"]);
    let r = w.next().await;
    assert!(r.canceled && r.cancel_reason == denied, "{r:?}");
    // A new watch on the same stream is refused.
    w.create(WatchCreateRequest { key: "/app/x".into(), ..Default::default() }).await;
    let r = w.next().await;
    assert!(r.canceled && r.cancel_reason == denied, "{r:?}");

    // A lease holding /other: only a user who may write /other keeps it alive.
    let granted = ok(&ep, ROOT, &["lease", "grant", "60"]);
    let id = granted.split_whitespace().nth(1).expect("lease id").to_string();
    ok(&ep, ROOT, &["put", "/other", "leased", "--lease", &id]);
    refused(&ep, "", &["lease", "keep-alive", "--once", &id], "etcdserver: user name is empty");
    refused(&ep, BOB, &["lease", "keep-alive", "--once", &id], "etcdserver: permission denied");
    assert!(ok(&ep, ROOT, &["lease", "keep-alive", "--once", &id]).contains("keepalived"));
    refused(&ep, "", &["lease", "list"], "etcdserver: user name is empty");
    assert!(ok(&ep, BOB, &["lease", "list"]).contains(&id));
}
