//! `--proxy=readonly`: only requests that change nothing reach the cluster. Reads are
//! named (anything else is refused, so a method added later is refused until listed);
//! a Txn passes here and is judged by its operations ([`txn_writes`], in `forward.rs`; over
//! HTTP, [`json_txn_writes`] here). Refusals: gRPC `UNIMPLEMENTED`, HTTP 501 — etcd's v2
//! read-only proxy answered 501 to every request but a GET.

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use cairn_api::etcdserverpb::{request_op, TxnRequest};

/// gRPC methods that change nothing.
const GRPC_READS: &[&str] = &[
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/Snapshot",
    "/etcdserverpb.Auth/Authenticate",
    "/etcdserverpb.Auth/AuthStatus",
    "/etcdserverpb.Auth/UserGet",
    "/etcdserverpb.Auth/UserList",
    "/etcdserverpb.Auth/RoleGet",
    "/etcdserverpb.Auth/RoleList",
    "/v3electionpb.Election/Leader",
    "/v3electionpb.Election/Observe",
];

/// JSON gateway routes (POST, after the `/v3`, `/v3beta` or `/v3alpha` prefix) that change
/// nothing; `/kv/txn` is judged by its body.
const HTTP_READS: &[&str] = &[
    "/kv/range",
    "/watch",
    "/lease/timetolive",
    "/kv/lease/timetolive",
    "/lease/leases",
    "/kv/lease/leases",
    "/cluster/member/list",
    "/maintenance/status",
    "/maintenance/hash",
    "/maintenance/snapshot",
    "/auth/authenticate",
    "/auth/status",
    "/auth/user/get",
    "/auth/user/list",
    "/auth/role/get",
    "/auth/role/list",
    "/election/leader",
    "/election/observe",
];

/// Largest JSON txn body looked into (a member refuses larger requests anyway).
const MAX_JSON_TXN: usize = 4 << 20;

/// The middleware: pass reads on, refuse the rest.
pub async fn refuse_writes(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let grpc = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        if GRPC_READS.contains(&path.as_str()) {
            return next.run(req).await;
        }
        let msg = format!("read-only proxy: {path} would change the cluster");
        return tonic::Status::unimplemented(msg).into_http();
    }
    let method = req.method().clone();
    if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        return next.run(req).await;
    }
    let route = gateway_route(&path);
    if route.is_some_and(|r| HTTP_READS.contains(&r)) {
        return next.run(req).await;
    }
    if route == Some("/kv/txn") {
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_JSON_TXN).await else {
            return refusal(&path, "its body could not be read");
        };
        return match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) if !json_txn_writes(&v) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
            Ok(_) => refusal(&path, "the txn puts or deletes"),
            Err(e) => refusal(&path, &format!("its body is not JSON: {e}")),
        };
    }
    refusal(&path, &format!("{method} would change the cluster"))
}

/// A JSON gateway path without its version prefix (the longer prefixes first).
fn gateway_route(path: &str) -> Option<&str> {
    ["/v3beta", "/v3alpha", "/v3"].into_iter().find_map(|p| path.strip_prefix(p)).filter(|r| r.starts_with('/'))
}

fn refusal(path: &str, why: &str) -> Response {
    let message = format!("read-only proxy: {path}: {why}");
    let body = serde_json::json!({ "error": message, "message": message, "code": 12 }).to_string();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = axum::http::StatusCode::NOT_IMPLEMENTED;
    r.headers_mut().insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    r
}

/// Whether a txn may put or delete, in any branch, nested txns included.
pub fn txn_writes(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(request_op::Request::RequestRange(_)) | None => false,
        Some(request_op::Request::RequestTxn(inner)) => txn_writes(inner),
        Some(_) => true,
    })
}

/// [`txn_writes`] for the JSON gateway's body (field names in either of the gateway's
/// spellings: `request_range` or `requestRange`).
fn json_txn_writes(v: &serde_json::Value) -> bool {
    let ops = ["success", "failure"].into_iter().filter_map(|b| v.get(b)).filter_map(|b| b.as_array()).flatten();
    for op in ops {
        let Some(fields) = op.as_object() else { return true };
        for (name, inner) in fields {
            match name.as_str() {
                "request_range" | "requestRange" => {}
                "request_txn" | "requestTxn" if !json_txn_writes(inner) => {}
                _ => return true,
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::etcdserverpb::{PutRequest, RangeRequest, RequestOp};

    fn op(r: request_op::Request) -> RequestOp {
        RequestOp { request: Some(r) }
    }

    #[test]
    fn a_txn_writes_if_any_branch_or_nested_txn_does() {
        let range = || op(request_op::Request::RequestRange(RangeRequest::default()));
        let put = || op(request_op::Request::RequestPut(PutRequest::default()));
        let reads = TxnRequest { success: vec![range()], failure: vec![range()], ..Default::default() };
        assert!(!txn_writes(&reads));
        assert!(txn_writes(&TxnRequest { failure: vec![range(), put()], ..Default::default() }));
        let nested =
            TxnRequest { success: vec![op(request_op::Request::RequestTxn(reads.clone()))], ..Default::default() };
        assert!(!txn_writes(&nested));
        let inner = TxnRequest { success: vec![put()], ..Default::default() };
        assert!(txn_writes(&TxnRequest {
            success: vec![op(request_op::Request::RequestTxn(inner))],
            ..Default::default()
        }));
    }

    #[test]
    fn json_txns_are_judged_the_same_way() {
        let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).expect("json");
        assert!(!json_txn_writes(&v(r#"{"compare":[],"success":[{"request_range":{"key":"YQ=="}}]}"#)));
        assert!(!json_txn_writes(&v(r#"{"success":[{"requestTxn":{"success":[{"requestRange":{}}]}}]}"#)));
        assert!(json_txn_writes(&v(r#"{"failure":[{"request_put":{"key":"YQ=="}}]}"#)));
        assert!(json_txn_writes(&v(r#"{"success":[{"request_txn":{"failure":[{"requestDeleteRange":{}}]}}]}"#)));
        assert!(json_txn_writes(&v(r#"{"success":["odd"]}"#)));
    }
}
