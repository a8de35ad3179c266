//! Logging in with `ConnectOptions::with_user`, against Cairn and etcd alike, and logging
//! in again when the token expires.

use super::harness::Target;
use cairn_sdk::proto::authpb::{permission, Permission};
use cairn_sdk::proto::etcdserverpb as pb;
use cairn_sdk::proto::etcdserverpb::auth_client::AuthClient;
use cairn_sdk::{Client, ConnectOptions, Error};
use std::time::Duration;

crate::on_both!(1: users_and_permissions);

/// root (root role) and alice (read-write on /app/), then auth on, over raw gRPC.
async fn set_up(url: &str) {
    let ch = tonic::transport::Channel::from_shared(url.to_string()).expect("url").connect().await.expect("connect");
    let mut a = AuthClient::new(ch);
    let add = |name: &str, password: &str| pb::AuthUserAddRequest {
        name: name.into(),
        password: password.into(),
        ..Default::default()
    };
    a.user_add(add("root", "rootpw")).await.expect("root");
    a.role_add(pb::AuthRoleAddRequest { name: "root".into() }).await.expect("root role");
    a.user_grant_role(pb::AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }).await.expect("grant");
    a.user_add(add("alice", "alicepw")).await.expect("alice");
    a.role_add(pb::AuthRoleAddRequest { name: "app".into() }).await.expect("role");
    let perm = Permission {
        perm_type: permission::Type::Readwrite as i32,
        key: b"/app/".to_vec(),
        range_end: b"/app0".to_vec(),
    };
    a.role_grant_permission(pb::AuthRoleGrantPermissionRequest { name: "app".into(), perm: Some(perm) })
        .await
        .expect("perm");
    a.user_grant_role(pb::AuthUserGrantRoleRequest { user: "alice".into(), role: "app".into() }).await.expect("grant");
    a.auth_enable(pb::AuthEnableRequest {}).await.expect("enable");
}

fn as_user(name: &str, password: &str) -> ConnectOptions {
    Target::options().with_user(name, password)
}

async fn users_and_permissions(t: Target) {
    let ep = t.cluster.members[0].endpoint();
    // Before auth is on, a client with a user works as one without (clientv3 does too).
    let early = Client::connect([&ep], as_user("alice", "alicepw")).await.expect("connect");
    early.put("k", "v", None).await.expect("auth still off");
    set_up(&t.cluster.members[0].client_url).await;

    let alice = Client::connect([&ep], as_user("alice", "alicepw")).await.expect("alice logs in");
    alice.put("/app/x", "1", None).await.expect("alice writes /app/");
    assert_eq!(alice.get("/app/x", None).await.expect("read").kvs[0].value, b"1");
    assert_eq!(alice.get("/other", None).await.unwrap_err(), Error::PermissionDenied);
    assert_eq!(alice.put("/other", "x", None).await.unwrap_err(), Error::PermissionDenied);
    let mut w = alice.watch("/app/", cairn_sdk::WatchOptions::new().with_prefix()).await.expect("watch /app/");
    alice.put("/app/y", "2", None).await.expect("put");
    let got = tokio::time::timeout(Duration::from_secs(5), w.message()).await.expect("an event").expect("open");
    assert_eq!(got.expect("event").events[0].kv.as_ref().map(|kv| kv.key.clone()), Some(b"/app/y".to_vec()));

    // The client that connected before auth was enabled logs in when told a user is needed.
    early.put("/app/z", "3", None).await.expect("logs in on user-name-empty");
    let anonymous = Client::connect([&ep], Target::options()).await.expect("connect");
    assert_eq!(anonymous.get("/app/x", None).await.unwrap_err(), Error::UserEmpty);
    let wrong = Client::connect([&ep], as_user("alice", "nope")).await.unwrap_err();
    assert_eq!(wrong, Error::AuthFailed);
    let root = Client::connect([&ep], as_user("root", "rootpw")).await.expect("root logs in");
    root.put("/other", "x", None).await.expect("root writes anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_renewed() {
    let c = cairn_testing::Cluster::start(1, &["--auth-token-ttl=1", "--bcrypt-cost=4"]).await;
    set_up(&c.members[0].client_url).await;
    let alice = Client::connect([c.members[0].endpoint()], as_user("alice", "alicepw")).await.expect("login");
    alice.put("/app/x", "1", None).await.expect("put");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // The token expired while idle: the client logs in again and the call succeeds.
    alice.put("/app/x", "2", None).await.expect("put after the token expired");
    assert_eq!(alice.get("/app/x", None).await.expect("get").kvs[0].value, b"2");
}
