//! The plain keys API on the client port, beside `/v3/`: `/kv/<key>` for people at a
//! terminal and for the web console. Values travel as request and response bodies (or
//! as UTF-8 JSON; base64 only for bytes that are not UTF-8), compare-and-set works by
//! revision (`?if-mod-revision=`, `If-Match`, `?if-absent`), watches stream as
//! Server-Sent Events and a read can block until a key changes (`?wait-revision=`).
//!
//! Like the JSON gateway this is a port, not a second implementation: every route calls
//! the KV, Lease, Watch and Auth handlers the gRPC server uses, so permissions, limits
//! and errors are the gRPC API's; [`http_of`] turns their gRPC codes into HTTP statuses.
//! docs/HTTP.md describes the routes; `/kv/openapi.json` serves their OpenAPI document.

use super::{error_response, Caller, Gateway, Tls};
use crate::auth::gate::Credentials;
use crate::error::msg;
use crate::grpc::Services;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use base64::Engine;
use cairn_api::etcdserverpb::auth_server::Auth;
use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::kv_server::Kv;
use cairn_api::etcdserverpb::lease_server::Lease;
use cairn_api::etcdserverpb::request_op::Request as Op;
use cairn_api::etcdserverpb::response_op::Response as OpResponse;
use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::{
    AuthenticateRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use cairn_api::mvccpb::{event::EventType, KeyValue};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Code, Status};

/// The OpenAPI document of these routes.
const OPENAPI: &str = include_str!("keys_openapi.json");

/// How long a blocking read waits when `?timeout=` is not given, and at most.
const WAIT_DEFAULT: Duration = Duration::from_secs(5 * 60);
const WAIT_MAX: Duration = Duration::from_secs(10 * 60);

/// How often a quiet event stream asks for progress (an SSE event with the revision, so
/// proxies keep the connection and `Last-Event-ID` stays recent).
const SSE_PROGRESS_EVERY: Duration = Duration::from_secs(15);

/// How many versions `?history` returns when `?limit=` is not given.
const HISTORY_DEFAULT: usize = 100;

/// How long a token obtained for HTTP basic credentials is reused.
const LOGIN_REUSE: Duration = Duration::from_secs(60);
const LOGINS_MAX: usize = 1024;

/// Tokens obtained for basic credentials: by a hash of user and password, with their time.
type Logins = HashMap<[u8; 32], (String, Instant)>;

/// The keys API's handles: the gateway's counters and limits, and the four services.
#[derive(Clone)]
struct Keys {
    gw: Gateway,
    kv: Arc<crate::grpc::kv::KvService>,
    lease: Arc<crate::grpc::lease::LeaseService>,
    watch: Arc<crate::grpc::watch::WatchService>,
    auth: Arc<crate::grpc::auth::AuthService>,
    logins: Arc<Mutex<Logins>>,
}

/// The routes: `/kv`, `/kv/` and `/kv/<key>` (the key is the rest of the path,
/// percent-decoded, so `/kv//app/x` is the key `/app/x`), and `/kv/openapi.json`.
pub fn router(gw: Gateway, services: &Services) -> Router {
    let keys = Keys {
        gw,
        kv: services.kv.clone(),
        lease: services.lease.clone(),
        watch: services.watch.clone(),
        auth: services.auth.clone(),
        logins: Arc::default(),
    };
    let handler = move |method: Method, uri: Uri, tls: Tls, headers: HeaderMap, body: Body| {
        let keys = keys.clone();
        async move { keys.serve(method, uri, Caller { headers, tls }, body).await }
    };
    let openapi = || async {
        let mut r = Response::new(Body::from(OPENAPI));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    };
    Router::new()
        .route("/kv/openapi.json", axum::routing::get(openapi))
        .route("/kv", any(handler.clone()))
        .route("/kv/", any(handler.clone()))
        .route("/kv/{*key}", any(handler))
}

/// A failed request: the HTTP status, etcd's gRPC code and message, and for a failed
/// compare the key as it is now.
#[derive(Debug)]
struct Problem {
    http: StatusCode,
    code: Code,
    message: String,
    /// A failed compare's key as it is now (`Some(None)`: absent).
    current: Option<Box<Option<KvOut>>>,
}

impl Problem {
    fn new(http: StatusCode, code: Code, message: impl Into<String>) -> Problem {
        Problem { http, code, message: message.into(), current: None }
    }

    fn bad(message: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, Code::InvalidArgument, message)
    }

    fn response(self) -> Response {
        #[derive(Serialize)]
        struct Refused<'a> {
            error: &'a str,
            message: &'a str,
            code: i32,
            current: &'a Option<KvOut>,
        }
        let Some(current) = self.current.as_deref() else {
            return error_response(self.http, self.code, &self.message);
        };
        let body = Refused { error: &self.message, message: &self.message, code: self.code as i32, current };
        let mut r = json_body(self.http, &body);
        if let Some(kv) = current {
            set_etag(&mut r, kv.mod_revision);
        }
        r
    }
}

impl From<Status> for Problem {
    fn from(s: Status) -> Problem {
        Problem::new(http_of(&s), s.code(), s.message())
    }
}

/// The HTTP status of a handler's error: grpc-gateway's mapping of its code, made
/// precise for the errors a person should tell apart (the handlers return etcd's
/// `Status`, so those few are known by etcd's exact message).
fn http_of(s: &Status) -> StatusCode {
    let m = s.message();
    let auth = |e: fn() -> crate::error::Error| e().to_string() == m;
    if m == msg::REQUEST_TOO_LARGE {
        StatusCode::PAYLOAD_TOO_LARGE
    } else if m == msg::NO_SPACE {
        StatusCode::INSUFFICIENT_STORAGE
    } else if m == msg::COMPACTED {
        StatusCode::GONE
    } else if auth(crate::auth::err::user_empty) || auth(crate::auth::err::auth_failed) {
        StatusCode::UNAUTHORIZED
    } else {
        super::http_status(s.code())
    }
}

/// The query parameters the routes understand (`?prefix` alone means true).
#[derive(Debug, Default, PartialEq)]
struct Params {
    prefix: bool,
    keys: bool,
    count: bool,
    raw: bool,
    prev: bool,
    serializable: bool,
    history: bool,
    watch: bool,
    if_absent: bool,
    limit: Option<i64>,
    rev: Option<i64>,
    wait_revision: Option<i64>,
    timeout: Option<Duration>,
    lease: Option<i64>,
    ttl: Option<i64>,
    if_mod_revision: Option<i64>,
}

/// Every parameter name, for the OpenAPI document's test.
#[cfg(test)]
const PARAMS: [&str; 16] = [
    "prefix",
    "keys",
    "count",
    "raw",
    "prev",
    "serializable",
    "history",
    "watch",
    "if-absent",
    "limit",
    "rev",
    "wait-revision",
    "timeout",
    "lease",
    "ttl",
    "if-mod-revision",
];

fn flag(name: &str, v: &str) -> Result<bool, Problem> {
    match v {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(Problem::bad(format!("?{name}={v}: expected nothing, true or false"))),
    }
}

fn number(name: &str, v: &str) -> Result<i64, Problem> {
    v.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| Problem::bad(format!("?{name}={v}: expected a number of 0 or more")))
}

/// `30s`, `5m`, `1h30m`, or plain seconds.
fn duration(name: &str, v: &str) -> Result<Duration, Problem> {
    v.parse::<u64>()
        .map(Duration::from_secs)
        .or_else(|_| humantime::parse_duration(v))
        .map_err(|_| Problem::bad(format!("?{name}={v}: expected a duration such as 30s or 5m")))
}

impl Params {
    fn parse(query: Option<&str>) -> Result<Params, Problem> {
        let mut p = Params::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let (k, v) = (k.as_ref(), v.as_ref());
            match k {
                "prefix" => p.prefix = flag(k, v)?,
                "keys" => p.keys = flag(k, v)?,
                "count" => p.count = flag(k, v)?,
                "raw" => p.raw = flag(k, v)?,
                "prev" => p.prev = flag(k, v)?,
                "serializable" => p.serializable = flag(k, v)?,
                "history" => p.history = flag(k, v)?,
                "watch" => p.watch = flag(k, v)?,
                "if-absent" => p.if_absent = flag(k, v)?,
                "limit" => p.limit = Some(number(k, v)?),
                "rev" => p.rev = Some(number(k, v)?),
                "wait-revision" => p.wait_revision = Some(number(k, v)?),
                "if-mod-revision" => p.if_mod_revision = Some(number(k, v)?),
                "timeout" => p.timeout = Some(duration(k, v)?),
                "ttl" => {
                    let d = duration(k, v)?;
                    // Whole seconds, rounded up: a lease never ends before it was asked to.
                    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                    if secs == 0 {
                        return Err(Problem::bad(format!("?ttl={v}: a lease lives at least 1s")));
                    }
                    p.ttl = Some(i64::try_from(secs).map_err(|_| Problem::bad(format!("?ttl={v}: too long")))?);
                }
                // Lease IDs in hexadecimal, as etcdctl prints and reads them.
                "lease" => {
                    let id = i64::from_str_radix(v, 16).map_err(|_| {
                        Problem::bad(format!("?lease={v}: expected a lease ID in hexadecimal, as etcdctl prints it"))
                    })?;
                    p.lease = Some(id);
                }
                _ => return Err(Problem::bad(format!("unknown parameter ?{k} (see /kv/openapi.json)"))),
            }
        }
        Ok(p)
    }
}

/// The key named by the path after `/kv/`, percent-decoded to bytes.
fn key_of(uri: &Uri) -> Vec<u8> {
    let path = uri.path();
    let rest = path.strip_prefix("/kv").unwrap_or(path);
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    percent_encoding::percent_decode_str(rest).collect()
}

/// A key-value as this API writes it: key and value as UTF-8 text (`*_base64` instead for
/// bytes that are not UTF-8), revisions as numbers, the lease in hexadecimal (as etcdctl
/// prints it; a JSON number would lose its low bits in a browser).
#[derive(Debug, Default, Serialize)]
struct KvOut {
    /// `put` or `delete` (history entries and events).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev: Option<Box<KvOut>>,
}

/// Bytes as (text, base64): one of the two.
fn text(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(bytes))),
    }
}

fn lease_hex(id: i64) -> Option<String> {
    (id != 0).then(|| format!("{id:016x}"))
}

fn kv_out(kv: &KeyValue, with_value: bool) -> KvOut {
    let (key, key_base64) = text(&kv.key);
    let (value, value_base64) = if with_value { text(&kv.value) } else { (None, None) };
    KvOut {
        key,
        key_base64,
        value,
        value_base64,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: lease_hex(kv.lease),
        ..Default::default()
    }
}

/// A watch or history event as JSON.
fn event_out(e: &cairn_api::mvccpb::Event) -> Option<KvOut> {
    let put = e.r#type == EventType::Put as i32;
    let mut out = kv_out(e.kv.as_ref()?, put);
    out.kind = Some(if put { "put" } else { "delete" });
    out.prev = e.prev_kv.as_ref().map(|p| Box::new(kv_out(p, true)));
    Some(out)
}

fn json_body(status: StatusCode, v: &impl Serialize) -> Response {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn set_etag(r: &mut Response, mod_revision: i64) {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{mod_revision}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
}

/// The store revision a response was read or written at.
fn set_revision(r: &mut Response, revision: i64) {
    r.headers_mut().insert("x-cairn-revision", HeaderValue::from(revision));
}

fn revision_of(h: &Option<cairn_api::etcdserverpb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

/// A compare-and-set condition, from the query or the `If-Match`/`If-None-Match` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Condition {
    /// The key's mod_revision is this (0: the key is absent).
    ModRevision(i64),
    /// The key is absent.
    Absent,
    /// The key exists (`If-Match: *`).
    Present,
}

impl Condition {
    fn of(p: &Params, headers: &HeaderMap) -> Result<Option<Condition>, Problem> {
        let header = |h: header::HeaderName| headers.get(h).map(|v| v.to_str().unwrap_or_default().trim().to_string());
        let mut found = None;
        let mut add = |c: Condition| {
            if found.is_some_and(|f| f != c) {
                return Err(Problem::bad(
                    "conflicting conditions: give one of ?if-mod-revision, ?if-absent, If-Match, If-None-Match",
                ));
            }
            found = Some(c);
            Ok(())
        };
        if let Some(n) = p.if_mod_revision {
            add(Condition::ModRevision(n))?;
        }
        if p.if_absent {
            add(Condition::Absent)?;
        }
        if let Some(tag) = header(header::IF_MATCH) {
            if tag == "*" {
                add(Condition::Present)?;
            } else {
                let n = tag.trim_start_matches("W/").trim_matches('"').parse::<i64>().map_err(|_| {
                    Problem::bad(format!("If-Match: {tag}: expected an ETag from this API (\"<mod_revision>\") or *"))
                })?;
                add(Condition::ModRevision(n))?;
            }
        }
        if let Some(tag) = header(header::IF_NONE_MATCH) {
            if tag != "*" {
                return Err(Problem::bad(format!("If-None-Match: {tag}: only * (the key is absent) is supported")));
            }
            add(Condition::Absent)?;
        }
        Ok(found)
    }

    fn compare(self, key: &[u8]) -> Compare {
        let (target, union, result) = match self {
            Condition::ModRevision(n) => (CompareTarget::Mod, TargetUnion::ModRevision(n), CompareResult::Equal),
            Condition::Absent => (CompareTarget::Create, TargetUnion::CreateRevision(0), CompareResult::Equal),
            Condition::Present => (CompareTarget::Create, TargetUnion::CreateRevision(0), CompareResult::Greater),
        };
        Compare {
            result: result as i32,
            target: target as i32,
            key: key.to_vec(),
            range_end: vec![],
            target_union: Some(union),
        }
    }

    /// The refusal when the compare failed, with the key as it is now.
    fn failed(self, current: Option<&KeyValue>) -> Problem {
        let (http, message) = match (self, current) {
            (Condition::Absent, _) => (StatusCode::CONFLICT, "the key exists".to_string()),
            (Condition::Present, _) => (StatusCode::PRECONDITION_FAILED, "the key does not exist".to_string()),
            (Condition::ModRevision(n), Some(kv)) => {
                (StatusCode::PRECONDITION_FAILED, format!("the key's mod_revision is {}, not {n}", kv.mod_revision))
            }
            (Condition::ModRevision(n), None) => {
                (StatusCode::PRECONDITION_FAILED, format!("the key does not exist (expected mod_revision {n})"))
            }
        };
        Problem {
            http,
            code: Code::FailedPrecondition,
            message,
            current: Some(Box::new(current.map(|kv| kv_out(kv, true)))),
        }
    }
}

/// The range a request names: the key, or every key under it with `?prefix` (every key
/// at all for the empty prefix, etcd's `\0`..`\0`).
fn range_of(key: &[u8], p: &Params) -> (Vec<u8>, Vec<u8>) {
    match (p.prefix, key.is_empty()) {
        (false, _) => (key.to_vec(), Vec::new()),
        (true, true) => (vec![0], vec![0]),
        (true, false) => (key.to_vec(), cairn_api::prefix_end(key)),
    }
}

/// Where the token of basic credentials is kept: a hash of user and password.
fn login_slot(name: &str, password: &str) -> [u8; 32] {
    Sha256::new().chain_update(name).chain_update([0]).chain_update(password).finalize().into()
}

/// `user:password` from `Authorization: Basic ...`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

impl Keys {
    /// One call of a handler, counted as the gRPC call it is.
    async fn rpc<Resp>(
        &self,
        rpc: (&'static str, &'static str),
        call: impl Future<Output = Result<tonic::Response<Resp>, Status>>,
    ) -> Result<Resp, Problem> {
        let start = Instant::now();
        let id = self.gw.started(rpc);
        let r = call.await;
        self.gw.handled(id, r.as_ref().err().map_or(Code::Ok, Status::code), start);
        Ok(r?.into_inner())
    }

    /// HTTP basic credentials become a token (reused for a minute: logging in costs a
    /// bcrypt check and, with simple tokens, a Raft write), put where the handlers read
    /// tokens. With auth disabled the credentials are ignored, as etcd ignores tokens.
    async fn login(&self, caller: &mut Caller) -> Result<(), Problem> {
        let Some((name, password)) = basic_credentials(&caller.headers) else { return Ok(()) };
        caller.headers.remove(header::AUTHORIZATION);
        let slot = login_slot(&name, &password);
        let cached = self.logins.lock().ok().and_then(|l| l.get(&slot).cloned());
        let token = match cached {
            Some((token, at)) if at.elapsed() < LOGIN_REUSE => token,
            _ => {
                let req = tonic::Request::new(AuthenticateRequest { name, password });
                match self.rpc(("etcdserverpb.Auth", "Authenticate"), self.auth.authenticate(req)).await {
                    Ok(r) => {
                        if let Ok(mut l) = self.logins.lock() {
                            if l.len() >= LOGINS_MAX {
                                l.clear();
                            }
                            l.insert(slot, (r.token.clone(), Instant::now()));
                        }
                        r.token
                    }
                    Err(p) if p.message == crate::auth::err::not_enabled().to_string() => return Ok(()),
                    Err(p) => return Err(p),
                }
            }
        };
        if let Ok(v) = HeaderValue::from_str(&token) {
            caller.headers.insert(header::AUTHORIZATION, v);
        }
        Ok(())
    }

    /// Forget the token of `caller`'s basic credentials (it was refused).
    fn forget_login(&self, caller_headers: &HeaderMap) {
        if let (Some((name, password)), Ok(mut l)) = (basic_credentials(caller_headers), self.logins.lock()) {
            let slot = login_slot(&name, &password);
            l.remove(&slot);
        }
    }

    async fn serve(self, method: Method, uri: Uri, caller: Caller, body: Body) -> Response {
        let original = caller.headers.clone();
        let result = async {
            let p = Params::parse(uri.query())?;
            let key = key_of(&uri);
            let mut caller = caller;
            self.login(&mut caller).await?;
            match method {
                Method::GET | Method::HEAD => self.get(key, p, caller).await,
                Method::PUT => self.put(key, p, caller, body).await,
                Method::DELETE => self.delete(key, p, caller).await,
                _ => Err(Problem::new(StatusCode::METHOD_NOT_ALLOWED, Code::Unimplemented, "Method Not Allowed")),
            }
        }
        .await;
        match result {
            Ok(r) => r,
            Err(p) => {
                if p.code == Code::Unauthenticated {
                    self.forget_login(&original);
                }
                p.response()
            }
        }
    }

    async fn get(&self, key: Vec<u8>, p: Params, caller: Caller) -> Result<Response, Problem> {
        if p.watch {
            return self.sse(key, p, caller).await;
        }
        if p.history {
            return self.history(key, p, caller).await;
        }
        if let Some(after) = p.wait_revision {
            self.wait_change(&key, &p, &caller, after).await?;
        }
        self.read(key, p, &caller).await
    }

    async fn range(
        &self,
        caller: &Caller,
        req: RangeRequest,
    ) -> Result<cairn_api::etcdserverpb::RangeResponse, Problem> {
        self.rpc(("etcdserverpb.KV", "Range"), self.kv.range(self.gw.request(caller, req))).await
    }

    /// A read of the key, or of the range with `?prefix`.
    async fn read(&self, key: Vec<u8>, p: Params, caller: &Caller) -> Result<Response, Problem> {
        if p.raw && (p.prefix || p.count) && !p.keys {
            return Err(Problem::bad("?raw reads one key's value; with ?prefix, ?raw&keys lists the keys"));
        }
        if key.is_empty() && !p.prefix {
            return Err(Problem::bad("no key: give /kv/<key>, or /kv/?prefix for every key"));
        }
        let (key, range_end) = range_of(&key, &p);
        let req = RangeRequest {
            key,
            range_end,
            limit: p.limit.unwrap_or(0),
            revision: p.rev.unwrap_or(0),
            serializable: p.serializable,
            keys_only: p.keys,
            count_only: p.count,
            ..Default::default()
        };
        let single = !p.prefix;
        let resp = self.range(caller, req).await?;
        let revision = revision_of(&resp.header);
        let mut r = if single && !p.count {
            let Some(kv) = resp.kvs.first() else {
                let mut r = Problem::new(StatusCode::NOT_FOUND, Code::NotFound, "key not found").response();
                set_revision(&mut r, revision);
                return Ok(r);
            };
            let mut r = if p.raw {
                let mut r = Response::new(Body::from(kv.value.clone()));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                r
            } else {
                json_body(StatusCode::OK, &kv_out(kv, !p.keys))
            };
            set_etag(&mut r, kv.mod_revision);
            r
        } else if p.raw {
            // `?prefix&keys&raw`: one key per line, for shell loops.
            let mut text = Vec::new();
            for kv in &resp.kvs {
                text.extend_from_slice(&kv.key);
                text.push(b'\n');
            }
            let mut r = Response::new(Body::from(text));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            r
        } else {
            #[derive(Serialize)]
            struct List {
                revision: i64,
                count: i64,
                #[serde(skip_serializing_if = "Option::is_none")]
                more: Option<bool>,
                #[serde(skip_serializing_if = "Option::is_none")]
                kvs: Option<Vec<KvOut>>,
            }
            let listed = (!p.count).then(|| resp.kvs.iter().map(|kv| kv_out(kv, !p.keys)).collect());
            let list = List { revision, count: resp.count, more: (!p.count).then_some(resp.more), kvs: listed };
            json_body(StatusCode::OK, &list)
        };
        set_revision(&mut r, revision);
        Ok(r)
    }

    /// The lease a write names: `?lease=`, or a new one of `?ttl=` (granted here).
    async fn lease_for(&self, p: &Params, caller: &Caller) -> Result<(i64, bool), Problem> {
        match (p.lease, p.ttl) {
            (Some(_), Some(_)) => Err(Problem::bad("give ?lease or ?ttl, not both")),
            (Some(id), None) => Ok((id, false)),
            (None, Some(ttl)) => {
                let req = self.gw.request(caller, LeaseGrantRequest { ttl, id: 0 });
                let r = self.rpc(("etcdserverpb.Lease", "LeaseGrant"), self.lease.lease_grant(req)).await?;
                if !r.error.is_empty() {
                    return Err(Problem::bad(r.error));
                }
                Ok((r.id, true))
            }
            (None, None) => Ok((0, false)),
        }
    }

    async fn put(&self, key: Vec<u8>, p: Params, caller: Caller, body: Body) -> Result<Response, Problem> {
        if key.is_empty() {
            return Err(Problem::bad(msg::KEY_NOT_PROVIDED));
        }
        if p.prefix {
            return Err(Problem::bad("?prefix is for reads and deletes; a PUT writes one key"));
        }
        let condition = Condition::of(&p, &caller.headers)?;
        let value =
            self.gw.read_body(body).await.map_err(|f| Problem::new(f.http, f.status.code(), f.status.message()))?;
        let (lease, granted) = self.lease_for(&p, &caller).await?;
        let put = PutRequest { key: key.clone(), value: value.to_vec(), lease, prev_kv: p.prev, ..Default::default() };
        let written = match condition {
            None => self
                .rpc(("etcdserverpb.KV", "Put"), self.kv.put(self.gw.request(&caller, put)))
                .await
                .map(|r| (revision_of(&r.header), r.prev_kv)),
            Some(c) => self.txn(&caller, c, &key, Op::RequestPut(put)).await.map(|(rev, r)| match r {
                Some(OpResponse::ResponsePut(put)) => (rev, put.prev_kv),
                _ => (rev, None),
            }),
        };
        let (revision, prev) = match written {
            Ok(w) => w,
            Err(problem) => {
                if granted {
                    // The lease was made for this write only.
                    let req = self.gw.request(&caller, LeaseRevokeRequest { id: lease });
                    let _ = self.rpc(("etcdserverpb.Lease", "LeaseRevoke"), self.lease.lease_revoke(req)).await;
                }
                return Err(problem);
            }
        };
        #[derive(Serialize)]
        struct Written {
            #[serde(skip_serializing_if = "Option::is_none")]
            key: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            key_base64: Option<String>,
            mod_revision: i64,
            #[serde(skip_serializing_if = "Option::is_none")]
            lease: Option<String>,
            /// With `?prev`: the key before (null: it did not exist).
            #[serde(skip_serializing_if = "Option::is_none")]
            prev: Option<Option<KvOut>>,
        }
        let (key, key_base64) = text(&key);
        let prev = p.prev.then(|| prev.as_ref().map(|kv| kv_out(kv, true)));
        let written = Written { key, key_base64, mod_revision: revision, lease: lease_hex(lease), prev };
        let mut r = json_body(StatusCode::OK, &written);
        set_etag(&mut r, revision);
        set_revision(&mut r, revision);
        Ok(r)
    }

    async fn delete(&self, key: Vec<u8>, p: Params, caller: Caller) -> Result<Response, Problem> {
        if key.is_empty() && !p.prefix {
            return Err(Problem::bad(msg::KEY_NOT_PROVIDED));
        }
        let condition = Condition::of(&p, &caller.headers)?;
        if condition.is_some() && p.prefix {
            return Err(Problem::bad("a condition compares one key; it cannot go with ?prefix"));
        }
        let (from, range_end) = range_of(&key, &p);
        let del = DeleteRangeRequest { key: from, range_end, prev_kv: p.prev };
        let (revision, deleted, prev) = match condition {
            None => {
                let r = self
                    .rpc(("etcdserverpb.KV", "DeleteRange"), self.kv.delete_range(self.gw.request(&caller, del)))
                    .await?;
                (revision_of(&r.header), r.deleted, r.prev_kvs)
            }
            Some(c) => match self.txn(&caller, c, &key, Op::RequestDeleteRange(del)).await? {
                (rev, Some(OpResponse::ResponseDeleteRange(d))) => (rev, d.deleted, d.prev_kvs),
                (rev, _) => (rev, 0, Vec::new()),
            },
        };
        #[derive(Serialize)]
        struct Deleted {
            revision: i64,
            deleted: i64,
            #[serde(skip_serializing_if = "Option::is_none")]
            prev: Option<Vec<KvOut>>,
        }
        let prev = p.prev.then(|| prev.iter().map(|kv| kv_out(kv, true)).collect());
        let mut r = json_body(StatusCode::OK, &Deleted { revision, deleted, prev });
        set_revision(&mut r, revision);
        Ok(r)
    }

    /// `op` if `condition` holds of `key`: the revision and the operation's response, or
    /// the refusal with the key as it is now.
    async fn txn(
        &self,
        caller: &Caller,
        c: Condition,
        key: &[u8],
        op: Op,
    ) -> Result<(i64, Option<OpResponse>), Problem> {
        let current = RangeRequest { key: key.to_vec(), ..Default::default() };
        let txn = TxnRequest {
            compare: vec![c.compare(key)],
            success: vec![RequestOp { request: Some(op) }],
            failure: vec![RequestOp { request: Some(Op::RequestRange(current)) }],
        };
        let r = self.rpc(("etcdserverpb.KV", "Txn"), self.kv.txn(self.gw.request(caller, txn))).await?;
        let first = r.responses.into_iter().next().and_then(|o| o.response);
        if !r.succeeded {
            let kv = match first {
                Some(OpResponse::ResponseRange(range)) => range.kvs.into_iter().next(),
                _ => None,
            };
            return Err(c.failed(kv.as_ref()));
        }
        Ok((revision_of(&r.header), first))
    }

    /// Refuse before streaming what a read of the range would refuse (auth, bad range),
    /// so those errors get their HTTP status rather than an event.
    async fn check_readable(&self, key: &[u8], p: &Params, caller: &Caller) -> Result<i64, Problem> {
        let (key, range_end) = range_of(key, p);
        let req = RangeRequest { key, range_end, count_only: true, serializable: true, ..Default::default() };
        Ok(revision_of(&self.range(caller, req).await?.header))
    }

    /// A watch of the range from `start` (0: from now), as a stream of responses; the
    /// sender asks for progress.
    fn open_watch(
        &self,
        caller: &Caller,
        key: &[u8],
        p: &Params,
        start: i64,
    ) -> (BoxStream<WatchResponse>, mpsc::Sender<Result<WatchRequest, Status>>) {
        let (tx, rx) = mpsc::channel(4);
        let (key, range_end) = range_of(key, p);
        let create =
            WatchCreateRequest { key, range_end, start_revision: start, prev_kv: p.prev, ..Default::default() };
        let _ = tx.try_send(Ok(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }));
        let credentials = Credentials::of(&self.gw.request(caller, ()));
        (self.watch.open(credentials, false, ReceiverStream::new(rx)), tx)
    }

    /// Wait until the key (or range) changes after revision `after`, at most `?timeout`.
    async fn wait_change(&self, key: &[u8], p: &Params, caller: &Caller, after: i64) -> Result<(), Problem> {
        let timeout = p.timeout.unwrap_or(WAIT_DEFAULT).min(WAIT_MAX);
        self.check_readable(key, p, caller).await?;
        let (mut stream, _keep) = self.open_watch(caller, key, p, after.saturating_add(1));
        let changed = async {
            while let Some(r) = stream.next().await {
                let r = r?;
                // Changes, or a compaction past `after` (the current value is news then).
                if !r.events.is_empty() || r.canceled {
                    return Ok(());
                }
            }
            Ok::<(), Status>(())
        };
        match tokio::time::timeout(timeout, changed).await {
            Ok(r) => Ok(r?),
            // Timed out: the current value, as a blocking query answers.
            Err(_) => Ok(()),
        }
    }

    /// The versions of a key (or range) still in history, oldest first: every put and
    /// delete from the oldest revision not compacted away, up to now.
    async fn history(&self, key: Vec<u8>, p: Params, caller: Caller) -> Result<Response, Problem> {
        let keep = p.limit.map_or(HISTORY_DEFAULT, |l| usize::try_from(l).unwrap_or(usize::MAX));
        self.check_readable(&key, &p, &caller).await?;
        let mut start = 1;
        let mut compacted = 0;
        'retry: loop {
            let (mut stream, tx) = self.open_watch(&caller, &key, &p, start);
            let progress = WatchRequest { request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})) };
            let _ = tx.send(Ok(progress)).await;
            let mut versions: VecDeque<KvOut> = VecDeque::new();
            while let Some(r) = stream.next().await {
                let r = r?;
                if r.canceled {
                    if r.compact_revision > start {
                        // History before the compaction is gone: read what is left.
                        (start, compacted) = (r.compact_revision, r.compact_revision);
                        continue 'retry;
                    }
                    return Err(Problem::bad(r.cancel_reason));
                }
                for v in r.events.iter().filter_map(event_out) {
                    if versions.len() == keep {
                        versions.pop_front();
                    }
                    if keep > 0 {
                        versions.push_back(v);
                    }
                }
                // The answer to the progress request (watch -1): every event up to its
                // revision has been sent.
                if r.watch_id == -1 && r.events.is_empty() && !r.created {
                    #[derive(Serialize)]
                    struct History {
                        revision: i64,
                        compact_revision: i64,
                        history: VecDeque<KvOut>,
                    }
                    let body =
                        History { revision: revision_of(&r.header), compact_revision: compacted, history: versions };
                    let mut resp = json_body(StatusCode::OK, &body);
                    set_revision(&mut resp, revision_of(&r.header));
                    return Ok(resp);
                }
            }
            return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, msg::STOPPED));
        }
    }

    /// `?watch`: the range's changes as Server-Sent Events, from `?rev=`, from the event
    /// after `Last-Event-ID`, or from now.
    async fn sse(&self, key: Vec<u8>, p: Params, caller: Caller) -> Result<Response, Problem> {
        let last_id = match caller.headers.get("last-event-id") {
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .ok_or_else(|| Problem::bad("Last-Event-ID: expected a revision, as this API's event ids are"))?,
            ),
            None => None,
        };
        let start = match (last_id, p.rev) {
            (Some(id), _) => id.saturating_add(1),
            (None, Some(rev)) => rev,
            (None, None) => 0,
        };
        self.check_readable(&key, &p, &caller).await?;
        let (mut stream, tx) = self.open_watch(&caller, &key, &p, start);
        let (out, rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
        let shutdown = self.gw.shutdown.clone();
        let metrics = self.gw.metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SSE_PROGRESS_EVERY);
            tick.reset();
            let mut quiet = true;
            loop {
                let text = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = out.closed() => break,
                    _ = tick.tick() => {
                        if quiet {
                            let progress = WatchRequest { request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})) };
                            if tx.send(Ok(progress)).await.is_err() { break }
                        }
                        quiet = true;
                        continue;
                    }
                    r = stream.next() => match r {
                        Some(Ok(r)) => {
                            quiet = r.events.is_empty();
                            let (text, end) = sse_events(&r);
                            if end {
                                let _ = out.send(Ok(Bytes::from(text))).await;
                                break;
                            }
                            text
                        }
                        Some(Err(s)) => {
                            let _ = out.send(Ok(Bytes::from(sse_error(s.message(), 0)))).await;
                            break;
                        }
                        None => break,
                    },
                };
                if text.is_empty() {
                    continue;
                }
                metrics.sent_bytes.inc_by(text.len() as u64);
                if out.send(Ok(Bytes::from(text))).await.is_err() {
                    break;
                }
            }
        });
        let mut r = Response::new(Body::from_stream(ReceiverStream::new(rx)));
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(r)
    }
}

/// One SSE event (`data` is one line of JSON).
fn sse_event(out: &mut String, id: Option<i64>, event: &str, data: &impl Serialize) {
    use std::fmt::Write;
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    let data = serde_json::to_string(data).unwrap_or_default();
    let _ = write!(out, "event: {event}\ndata: {data}\n\n");
}

fn sse_error(message: &str, compact_revision: i64) -> String {
    let mut out = String::new();
    let mut data = json!({"error": message});
    if compact_revision > 0 {
        data["compact_revision"] = compact_revision.into();
    }
    sse_event(&mut out, None, "error", &data);
    out
}

/// A watch response as SSE text, and whether the stream ends with it. Each change is an
/// event `put` or `delete`; the `id` (a revision) is set on the last event of each
/// revision, so resuming after `Last-Event-ID` never skips part of a transaction. The
/// first response is `created`; a progress answer is `progress` with the revision as id
/// (everything up to it was sent).
fn sse_events(r: &WatchResponse) -> (String, bool) {
    let mut out = String::new();
    let revision = revision_of(&r.header);
    if r.canceled {
        let why = if r.compact_revision > 0 { msg::COMPACTED } else { r.cancel_reason.as_str() };
        return (sse_error(why, r.compact_revision), true);
    }
    if r.created {
        sse_event(&mut out, None, "created", &json!({ "revision": revision }));
        return (out, false);
    }
    if r.events.is_empty() {
        sse_event(&mut out, Some(revision), "progress", &json!({ "revision": revision }));
        return (out, false);
    }
    for (i, e) in r.events.iter().enumerate() {
        let Some(data) = event_out(e) else { continue };
        let next_rev = r.events.get(i + 1).and_then(|n| n.kv.as_ref()).map(|kv| kv.mod_revision);
        let id = (next_rev != Some(data.mod_revision)).then_some(data.mod_revision);
        let kind = data.kind.unwrap_or("put");
        sse_event(&mut out, id, kind, &data);
    }
    (out, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(q: &str) -> Result<Params, Problem> {
        Params::parse(Some(q))
    }

    #[test]
    fn parameters_read_as_a_person_writes_them() {
        let p = parse("prefix&keys=true&limit=10&rev=3&lease=694d77aa9e38260f&timeout=30s").expect("valid");
        assert!(p.prefix && p.keys && !p.raw);
        assert_eq!((p.limit, p.rev), (Some(10), Some(3)));
        assert_eq!(p.lease, Some(0x694d77aa9e38260f));
        assert_eq!(p.timeout, Some(Duration::from_secs(30)));
        assert_eq!(parse("ttl=1500ms").expect("ttl").ttl, Some(2), "rounded up to whole seconds");
        assert_eq!(parse("ttl=90").expect("ttl").ttl, Some(90), "plain seconds");
        assert!(!parse("prefix=false").expect("false").prefix);
        for bad in ["limit=-1", "limit=x", "prefix=maybe", "lease=xyz", "ttl=soon", "prefx"] {
            let e = parse(bad).expect_err(bad);
            assert_eq!(e.http, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn keys_come_from_the_path_byte_for_byte() {
        let key = |s: &str| key_of(&s.parse::<Uri>().expect("uri"));
        assert_eq!(key("/kv/app/x"), b"app/x");
        assert_eq!(key("/kv//app/x?prefix"), b"/app/x");
        assert_eq!(key("/kv/a%20b%2Fc%FF"), b"a b/c\xff");
        assert_eq!(key("/kv/"), b"");
        assert_eq!(key("/kv"), b"");
    }

    #[test]
    fn non_utf8_bytes_are_base64() {
        let kv =
            KeyValue { key: b"k".to_vec(), value: vec![0xff, 0], mod_revision: 4, lease: 255, ..Default::default() };
        let v = serde_json::to_value(kv_out(&kv, true)).expect("JSON");
        assert_eq!(v["key"], "k");
        assert_eq!(v["value_base64"], "/wA=");
        assert!(v.get("value").is_none());
        assert_eq!(v["lease"], "00000000000000ff", "as etcdctl prints it");
    }

    #[test]
    fn conditions_from_query_and_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"7\""));
        assert_eq!(Condition::of(&Params::default(), &h).expect("ok"), Some(Condition::ModRevision(7)));
        let p = parse("if-mod-revision=7").expect("ok");
        assert_eq!(Condition::of(&p, &h).expect("same"), Some(Condition::ModRevision(7)));
        let p = parse("if-absent").expect("ok");
        assert!(Condition::of(&p, &h).is_err(), "two different conditions");
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert_eq!(Condition::of(&Params::default(), &h).expect("ok"), Some(Condition::Absent));
    }

    #[test]
    fn events_carry_their_revision_once_per_revision() {
        use cairn_api::mvccpb::Event;
        let ev = |k: &str, rev| Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue { key: k.into(), value: b"v".to_vec(), mod_revision: rev, ..Default::default() }),
            prev_kv: None,
        };
        let r = WatchResponse { events: vec![ev("a", 5), ev("b", 5), ev("c", 6)], ..Default::default() };
        let (text, end) = sse_events(&r);
        assert!(!end);
        let ids: Vec<&str> = text.lines().filter(|l| l.starts_with("id:")).collect();
        assert_eq!(ids, ["id: 5", "id: 6"]);
        assert!(text.starts_with("event: put\ndata: {"), "{text}");
    }

    #[test]
    fn the_openapi_document_names_every_parameter() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("the OpenAPI document is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        let text = doc.to_string();
        for name in PARAMS {
            assert!(text.contains(&format!("\"name\":\"{name}\"")), "parameter {name} is not documented");
        }
        let params = doc["components"]["parameters"].as_object().expect("parameters");
        assert_eq!(params.len(), PARAMS.len(), "the document lists a parameter the server does not read");
    }
}
