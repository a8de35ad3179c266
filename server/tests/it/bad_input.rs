//! Bad input gets etcd's error, and the server keeps serving.

use super::harness::{etcdctl_ok, Cluster};
use cairn_api::cairnpb::peer_client::PeerClient;
use cairn_api::cairnpb::{ProposeRequest, RaftPayload, RaftRequest};
use cairn_api::etcdserverpb::auth_client::AuthClient;
use cairn_api::etcdserverpb::{
    request_op, AuthEnableRequest, AuthRoleAddRequest, AuthUserAddRequest, AuthUserGrantRoleRequest, CompactionRequest,
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use std::io::Write;
use tonic::Code;

fn put_op(k: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.into(),
            value: "v".into(),
            ..Default::default()
        })),
    }
}

/// Assert that a call failed with exactly this gRPC code and message.
fn expect_status<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, code: Code, msg: &str) {
    match r {
        Ok(resp) => panic!("expected {code:?} {msg:?}, got {resp:?}"),
        Err(s) => assert_eq!((s.code(), s.message()), (code, msg)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_errors_for_invalid_requests() {
    let c = Cluster::start(1, &[]).await;
    let mut kv = c.kv(0).await;
    let e = kv.put(PutRequest { key: "big".into(), value: vec![7u8; 1_600_000], ..Default::default() }).await;
    expect_status(e, Code::InvalidArgument, "etcdserver: request is too large");
    // Past gRPC's receive limit the transport refuses it, as with etcd.
    let e = kv.put(PutRequest { key: "big".into(), value: vec![7u8; 3 << 20], ..Default::default() }).await;
    assert_eq!(e.expect_err("a 3 MiB request must be refused").code(), Code::ResourceExhausted);

    let many = TxnRequest { success: (0..129).map(|i| put_op(&format!("k{i}"))).collect(), ..Default::default() };
    let e = kv.txn(many).await;
    expect_status(e, Code::InvalidArgument, "etcdserver: too many operations in txn request");
    let dup = TxnRequest { success: vec![put_op("a"), put_op("a")], ..Default::default() };
    let e = kv.txn(dup).await;
    expect_status(e, Code::InvalidArgument, "etcdserver: duplicate key given in txn request");
    let e = kv.range(RangeRequest::default()).await;
    expect_status(e, Code::InvalidArgument, "etcdserver: key is not provided");
    let e = kv.delete_range(DeleteRangeRequest::default()).await;
    expect_status(e, Code::InvalidArgument, "etcdserver: key is not provided");
    let e = kv.put(PutRequest { key: "k".into(), value: "v".into(), ignore_value: true, ..Default::default() }).await;
    expect_status(e, Code::InvalidArgument, "etcdserver: value is provided");
    let e = kv.put(PutRequest { key: "k".into(), lease: 5, ignore_lease: true, ..Default::default() }).await;
    expect_status(e, Code::InvalidArgument, "etcdserver: lease is provided");
    let e = kv.compact(CompactionRequest { revision: 1000, physical: true }).await;
    expect_status(e, Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision");
    // Nothing of the refused writes landed, and the server still serves.
    let r =
        kv.range(RangeRequest { key: "\0".into(), range_end: "\0".into(), ..Default::default() }).await.expect("range");
    assert_eq!(r.get_ref().count, 0);
    assert_eq!(r.get_ref().header.as_ref().map(|h| h.revision), Some(1));
    // Auth management with missing names.
    let mut auth = AuthClient::connect(c.members[0].client_url.clone()).await.expect("connect");
    let e = auth.user_add(AuthUserAddRequest::default()).await;
    expect_status(e, Code::InvalidArgument, "etcdserver: user name is empty");
    let e = auth.role_add(AuthRoleAddRequest::default()).await;
    expect_status(e, Code::InvalidArgument, "etcdserver: role name is empty");
    let e = auth.auth_enable(AuthEnableRequest {}).await;
    expect_status(e, Code::FailedPrecondition, "etcdserver: root user does not exist");
    let e = auth.user_grant_role(AuthUserGrantRoleRequest { user: "ghost".into(), role: "root".into() }).await;
    expect_status(e, Code::FailedPrecondition, "etcdserver: user name not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_and_foreign_peers_do_not_hurt() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    etcdctl_ok(&ep, &["put", "before", "1"]);
    // Garbage on both ports, including something that looks like an HTTP/2 preface.
    for url in [&c.members[0].client_url, &c.members[0].peer_url] {
        let addr = url.trim_start_matches("http://");
        for junk in
            [&b"\x00\xff\x13garbage\r\n\r\n"[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xde\xad\xbe\xef", &[0u8; 4096]]
        {
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                let _ = s.write_all(junk);
            }
        }
    }
    // A peer of another cluster (wrong cluster id) is refused without touching Raft.
    let mut peer = PeerClient::connect(c.members[0].peer_url.clone()).await.expect("peer connect");
    let e = peer
        .append_entries(RaftPayload { cluster_id: 42, target: 1, data: vec![1, 2, 3], from: 7 })
        .await
        .expect_err("foreign");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("cluster ID mismatch"), "{}", e.message());
    let e = peer
        .propose(ProposeRequest { cluster_id: 42, request: Some(RaftRequest::default()) })
        .await
        .expect_err("foreign proposal");
    assert_eq!(e.code(), Code::FailedPrecondition);
    // Undecodable Raft payload with the right ids: refused, not a crash.
    let status =
        cairn_api::etcdserverpb::maintenance_client::MaintenanceClient::connect(c.members[0].client_url.clone())
            .await
            .expect("connect")
            .status(cairn_api::etcdserverpb::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
    let cluster_id = status.header.as_ref().map_or(0, |h| h.cluster_id);
    let member_id = status.header.as_ref().map_or(0, |h| h.member_id);
    let garbage = RaftPayload { cluster_id, target: member_id, data: vec![0xff; 3], from: 0x4d2 };
    let e = peer.vote(garbage).await.expect_err("garbage");
    assert_eq!(e.code(), Code::InvalidArgument);
    // Both counted as receive failures, by sender (etcd's series, labelled as etcd does).
    let text = c.members[0].metrics_text().await.expect("metrics");
    for from in ["7", "4d2"] {
        let line = format!("etcd_network_peer_received_failures_total{{From=\"{from}\"}} 1");
        assert!(text.contains(&line), "no {line} in:\n{text}");
    }
    // Still serving, nothing lost.
    assert_eq!(etcdctl_ok(&ep, &["get", "before", "--print-value-only"]), "1\n");
    etcdctl_ok(&ep, &["put", "after", "2"]);
    assert_eq!(etcdctl_ok(&ep, &["get", "after", "--print-value-only"]), "2\n");
}

/// Pings from a raw HTTP/2 client on `url`'s port, as fast as it can: how many were answered
/// before the server closed the connection (at most `n`).
async fn pings_answered(url: &str, n: usize) -> usize {
    let addr = url.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (_client, mut conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let mut pings = conn.ping_pong().expect("ping_pong");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    for i in 0..n {
        let pong = tokio::time::timeout(std::time::Duration::from_secs(5), pings.ping(h2::Ping::opaque())).await;
        if !matches!(pong, Ok(Ok(_))) {
            return i;
        }
    }
    n
}

/// `--grpc-keepalive-min-time` (etcd's 5 s by default): a client pinging more often, with no
/// request in between, is cut off at its third such ping, as grpc-go's server does; the
/// member keeps serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pinging_too_often_is_cut_off() {
    let c = Cluster::start(1, &[]).await;
    let url = c.members[0].client_url.clone();
    assert_eq!(pings_answered(&url, 10).await, 3, "the first ping and two strikes are answered");
    etcdctl_ok(&c.endpoints(), &["put", "after-pings", "ok"]);
    let relaxed = Cluster::start(1, &["--grpc-keepalive-min-time", "0s"]).await;
    assert_eq!(pings_answered(&relaxed.members[0].client_url, 10).await, 10);
}
