//! etcd's HTTP/JSON gateway on the client port: every v3 RPC as `POST /v3/<path>`
//! with JSON, as etcd's grpc-gateway serves it, plus the observability endpoints
//! ([`observe`]: `/health`, `/livez`, `/readyz`, `/version`, `/metrics`).
//!
//! Requests are not proxied: each route decodes the JSON into the request message and
//! calls the same handler the gRPC server uses, so both paths answer alike. The JSON is
//! the protobuf JSON mapping with proto field names (int64 as strings, bytes as base64,
//! zero values omitted, enums by name); streaming RPCs answer newline-delimited
//! `{"result":...}` objects; errors are `{"error","message","code"}` with
//! grpc-gateway's HTTP status for the gRPC code. The `Authorization` header is passed
//! on as the `token` the auth layer reads.

pub mod access;
pub mod frames;
pub mod keys;
pub mod observe;
pub mod ui;

use crate::auth::gate::Credentials;
use crate::grpc::Services;
use crate::metrics::{Metrics, RpcId};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{post, MethodRouter};
use axum::Router;
use cairn_api::etcdserverpb::auth_server::Auth;
use cairn_api::etcdserverpb::cluster_server::Cluster;
use cairn_api::etcdserverpb::kv_server::Kv;
use cairn_api::etcdserverpb::lease_server::Lease;
use cairn_api::etcdserverpb::maintenance_server::Maintenance;
use cairn_api::v3electionpb::election_server::Election;
use cairn_api::v3lockpb::lock_server::Lock;
use observe::Observed;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Code, Status};

/// Path prefixes accepted for every route: `/v3` and the older clients' betas.
pub const PREFIXES: [&str; 3] = ["/v3", "/v3beta", "/v3alpha"];

/// Streamed responses buffered per HTTP stream.
const STREAM_BUFFER: usize = 16;

/// Shared by every route of one member's gateway.
#[derive(Clone)]
pub struct Gateway {
    /// RPC counters (gateway calls count as the gRPC calls they make).
    pub metrics: Arc<Metrics>,
    /// Largest request body accepted (JSON is larger than the protobuf it carries).
    pub body_limit: usize,
    /// Cancelled when the member stops (ends streams).
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// A request that failed before or inside the handler: its gRPC status and HTTP status.
struct Failure {
    status: Status,
    http: StatusCode,
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure { http: http_status(status.code()), status }
    }
}

/// The HTTP status grpc-gateway (v1, as in etcd) gives each gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// grpc-gateway's error body (field order as etcd writes it).
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

/// grpc-gateway's in-stream error chunk.
#[derive(Serialize)]
struct StreamError<'a> {
    grpc_code: i32,
    http_code: u16,
    message: &'a str,
    http_status: &'a str,
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A JSON error response as grpc-gateway writes it.
pub fn error_response(http: StatusCode, code: Code, message: &str) -> Response {
    let body = ErrorBody { error: message, message, code: code as i32 };
    json_response(http, serde_json::to_vec(&body).unwrap_or_default())
}

fn failure_response(f: &Failure) -> Response {
    error_response(f.http, f.status.code(), f.status.message())
}

fn to_json<T: Serialize>(msg: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(msg).map_err(|e| Status::internal(format!("encoding the response: {e}")))
}

fn stream_line<T: Serialize>(msg: &T) -> Vec<u8> {
    #[derive(Serialize)]
    struct Chunk<'a, T> {
        result: &'a T,
    }
    let mut line = serde_json::to_vec(&Chunk { result: msg }).unwrap_or_default();
    line.push(b'\n');
    line
}

fn stream_error_line(s: &Status) -> Vec<u8> {
    #[derive(Serialize)]
    struct Chunk<'a> {
        error: StreamError<'a>,
    }
    let http = http_status(s.code());
    let error = StreamError {
        grpc_code: s.code() as i32,
        http_code: http.as_u16(),
        message: s.message(),
        http_status: http.canonical_reason().unwrap_or(""),
    };
    let mut line = serde_json::to_vec(&Chunk { error }).unwrap_or_default();
    line.push(b'\n');
    line
}

fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    // An empty body is an empty message, as grpc-gateway reads it.
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn is_too_large(e: &axum::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

impl Gateway {
    /// Count a call of `rpc` (service, method) as started.
    fn started(&self, rpc: (&str, &str)) -> Option<RpcId> {
        let id = self.metrics.rpc(rpc.0, rpc.1);
        if let Some(id) = id {
            self.metrics.rpc_started(id);
        }
        id
    }

    /// Count a call as handled with `code`.
    fn handled(&self, id: Option<RpcId>, code: Code, start: Instant) {
        if let Some(id) = id {
            self.metrics.rpc_handled(id, code, start.elapsed());
        }
    }

    fn too_large(&self) -> Failure {
        Failure {
            status: Status::resource_exhausted(format!(
                "grpc: received message larger than max (over {} bytes)",
                self.body_limit
            )),
            http: StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    async fn read_body(&self, body: Body) -> Result<Bytes, Failure> {
        match axum::body::to_bytes(body, self.body_limit).await {
            Ok(b) => {
                self.metrics.received_bytes.inc_by(b.len() as u64);
                Ok(b)
            }
            Err(e) if is_too_large(&e) => Err(self.too_large()),
            Err(e) => Err(Status::invalid_argument(format!("reading the request body: {e}")).into()),
        }
    }

    /// The whole body as one request message.
    async fn decode<Req: DeserializeOwned + Default>(&self, body: Body) -> Result<Req, Failure> {
        let bytes = self.read_body(body).await?;
        Ok(parse::<Req>(&bytes)?)
    }

    /// The request as a gRPC handler receives it: the message plus the caller's token.
    fn request<T>(&self, caller: &Caller, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        // A TLS client's certificate, for `--client-cert-auth` user names.
        if let Some(axum::Extension(tls)) = &caller.tls {
            req.extensions_mut().insert(tls.clone());
        }
        if let Some(v) = caller.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            if let Ok(token) = v.parse::<tonic::metadata::MetadataValue<_>>() {
                req.metadata_mut().insert("token", token.clone());
                req.metadata_mut().insert("authorization", token);
            }
        }
        req
    }

    /// One unary RPC: JSON request in, JSON response (or error) out.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        rpc: (&'static str, &'static str),
        caller: Caller,
        body: Body,
        call: F,
    ) -> Response
    where
        Req: DeserializeOwned + Default,
        Resp: Serialize,
        F: FnOnce(tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let start = Instant::now();
        let id = self.started(rpc);
        let result: Result<Vec<u8>, Failure> = async {
            let req = self.decode::<Req>(body).await?;
            let resp = call(self.request(&caller, req)).await?;
            Ok(to_json(resp.get_ref())?)
        }
        .await;
        let code = result.as_ref().err().map_or(Code::Ok, |f| f.status.code());
        self.handled(id, code, start);
        match result {
            Ok(json) => {
                self.metrics.sent_bytes.inc_by(json.len() as u64);
                json_response(StatusCode::OK, json)
            }
            Err(f) => failure_response(&f),
        }
    }

    /// A client-and-server streaming RPC: the request body is a sequence of JSON
    /// messages, each handed to the handler as it arrives.
    async fn bidi<Req, Resp, F>(
        &self,
        rpc: (&'static str, &'static str),
        caller: Caller,
        body: Body,
        call: F,
    ) -> Response
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: FnOnce(tonic::Request<ReceiverStream<Result<Req, Status>>>) -> BoxStream<Resp>,
    {
        let start = Instant::now();
        let id = self.started(rpc);
        let (bad_tx, bad_rx) = oneshot::channel();
        let inbound = self.json_messages(body, bad_tx);
        let out = call(self.request(&caller, inbound));
        self.pump(id, start, out, bad_rx)
    }

    /// A server streaming RPC: one JSON request, a stream of responses.
    async fn server_stream<Req, Resp, F, Fut>(
        &self,
        rpc: (&'static str, &'static str),
        caller: Caller,
        body: Body,
        call: F,
    ) -> Response
    where
        Req: DeserializeOwned + Default,
        Resp: Serialize + Send + 'static,
        F: FnOnce(tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<BoxStream<Resp>>, Status>>,
    {
        let start = Instant::now();
        let id = self.started(rpc);
        let opened: Result<BoxStream<Resp>, Failure> = async {
            let req = self.decode::<Req>(body).await?;
            Ok(call(self.request(&caller, req)).await?.into_inner())
        }
        .await;
        match opened {
            Ok(out) => self.pump(id, start, out, oneshot::channel().1),
            Err(f) => {
                self.handled(id, f.status.code(), start);
                failure_response(&f)
            }
        }
    }

    /// Decode a body of concatenated JSON messages as they arrive ([`frames`]: each byte
    /// scanned once, each message parsed once). A malformed or oversized message ends the
    /// input and is reported on `bad`.
    fn json_messages<Req>(&self, body: Body, bad: oneshot::Sender<Status>) -> ReceiverStream<Result<Req, Status>>
    where
        Req: DeserializeOwned + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let limit = self.body_limit;
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut chunks = body.into_data_stream();
            let mut frames = frames::JsonFrames::new(limit);
            loop {
                // Hand on every complete message received so far.
                loop {
                    let message = match frames.next_message() {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        Err(frames::FrameError::TooLarge) => {
                            let _ = bad.send(Status::resource_exhausted("grpc: received message larger than max"));
                            return;
                        }
                        Err(frames::FrameError::Malformed(why)) => {
                            let _ = bad.send(Status::invalid_argument(why));
                            return;
                        }
                    };
                    match serde_json::from_slice::<Req>(&message) {
                        Ok(req) => {
                            if tx.send(Ok(req)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = bad.send(Status::invalid_argument(e.to_string()));
                            return;
                        }
                    }
                }
                tokio::select! {
                    chunk = chunks.next() => match chunk {
                        Some(Ok(chunk)) => {
                            metrics.received_bytes.inc_by(chunk.len() as u64);
                            frames.push(&chunk);
                        }
                        Some(Err(_)) => return,
                        None => {
                            if frames.pending() {
                                let _ = bad.send(Status::invalid_argument("unexpected EOF"));
                            }
                            return;
                        }
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        ReceiverStream::new(rx)
    }

    /// Stream `out` to the client as `{"result":...}` lines until it ends, fails, the
    /// input turns out malformed (`bad`), the client goes away or the member stops.
    fn pump<Resp>(
        &self,
        id: Option<RpcId>,
        start: Instant,
        mut out: BoxStream<Resp>,
        bad: oneshot::Receiver<Status>,
    ) -> Response
    where
        Resp: Serialize + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(STREAM_BUFFER);
        let metrics = self.metrics.clone();
        let gw = self.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // Malformed input, if reported; a sender that goes away reports nothing.
            let bad = async move {
                match bad.await {
                    Ok(s) => s,
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::pin!(bad);
            let send = |line: Vec<u8>| {
                metrics.sent_bytes.inc_by(line.len() as u64);
                tx.send(Ok(Bytes::from(line)))
            };
            let code = loop {
                tokio::select! {
                    msg = out.next() => match msg {
                        Some(Ok(m)) => if send(stream_line(&m)).await.is_err() { break Code::Cancelled },
                        Some(Err(s)) => { let _ = send(stream_error_line(&s)).await; break s.code() }
                        None => break Code::Ok,
                    },
                    s = &mut bad => { let _ = send(stream_error_line(&s)).await; break s.code() }
                    _ = tx.closed() => break Code::Cancelled,
                    _ = shutdown.cancelled() => break Code::Unavailable,
                }
            };
            gw.handled(id, code, start);
        });
        let mut r = Response::new(Body::from_stream(ReceiverStream::new(rx)));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    }
}

/// A JSON 404 for paths nobody serves.
pub async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, Code::NotFound, "Not Found")
}

async fn method_not_allowed() -> Response {
    error_response(StatusCode::METHOD_NOT_ALLOWED, Code::Unimplemented, "Method Not Allowed")
}

fn route(router: Router, path: &str, m: MethodRouter) -> Router {
    let m = m.options(|| async { StatusCode::OK }).fallback(method_not_allowed);
    PREFIXES.iter().fold(router, |r, p| r.route(&format!("{p}/{path}"), m.clone()))
}

/// The TLS connection a request came on (its client certificate names the user with
/// `--client-cert-auth`).
type Tls = Option<axum::Extension<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>>;

/// Who calls: the HTTP headers (`Authorization` carries the token) and the TLS connection.
struct Caller {
    headers: HeaderMap,
    tls: Tls,
}

/// The gateway's routes over `services`, plus the observability endpoints.
pub fn router(gw: Gateway, services: &Services, observed: Observed, access: access::Access) -> Router {
    let mut r = Router::new();
    // Each route: the service handle, its gRPC name, the trait method, the paths.
    macro_rules! routes {
        ($kind:ident, $svc:ident, $service:literal, $( $method:ident $rpc:literal [$($path:literal),+] ),+ $(,)?) => {$(
            let handler = {
                let (gw, svc) = (gw.clone(), services.$svc.clone());
                move |tls: Tls, headers: HeaderMap, body: Body| {
                    let (gw, svc) = (gw.clone(), svc.clone());
                    let caller = Caller { headers, tls };
                    async move { routes!(@call $kind, gw, svc, $method, ($service, $rpc), caller, body) }
                }
            };
            $( r = route(r, $path, post(handler.clone())); )+
        )+};
        (@call unary, $gw:ident, $svc:ident, $method:ident, $rpc:expr, $h:ident, $b:ident) => {
            $gw.unary($rpc, $h, $b, move |req| async move { $svc.$method(req).await }).await
        };
        (@call server_stream, $gw:ident, $svc:ident, $method:ident, $rpc:expr, $h:ident, $b:ident) => {
            $gw.server_stream($rpc, $h, $b, move |req| async move { $svc.$method(req).await }).await
        };
    }
    routes!(unary, kv, "etcdserverpb.KV",
        range "Range" ["kv/range"],
        put "Put" ["kv/put"],
        delete_range "DeleteRange" ["kv/deleterange"],
        txn "Txn" ["kv/txn"],
        compact "Compact" ["kv/compaction"],
    );
    routes!(unary, lease, "etcdserverpb.Lease",
        lease_grant "LeaseGrant" ["lease/grant"],
        lease_revoke "LeaseRevoke" ["lease/revoke", "kv/lease/revoke"],
        lease_time_to_live "LeaseTimeToLive" ["lease/timetolive", "kv/lease/timetolive"],
        lease_leases "LeaseLeases" ["lease/leases", "kv/lease/leases"],
    );
    routes!(unary, cluster, "etcdserverpb.Cluster",
        member_add "MemberAdd" ["cluster/member/add"],
        member_remove "MemberRemove" ["cluster/member/remove"],
        member_update "MemberUpdate" ["cluster/member/update"],
        member_list "MemberList" ["cluster/member/list"],
        member_promote "MemberPromote" ["cluster/member/promote"],
    );
    routes!(unary, maintenance, "etcdserverpb.Maintenance",
        alarm "Alarm" ["maintenance/alarm"],
        status "Status" ["maintenance/status"],
        defragment "Defragment" ["maintenance/defragment"],
        hash "Hash" ["maintenance/hash"],
        hash_kv "HashKV" ["maintenance/hashkv"],
        move_leader "MoveLeader" ["maintenance/transfer-leadership"],
    );
    routes!(server_stream, maintenance, "etcdserverpb.Maintenance", snapshot "Snapshot" ["maintenance/snapshot"]);
    routes!(unary, auth, "etcdserverpb.Auth",
        auth_enable "AuthEnable" ["auth/enable"],
        auth_disable "AuthDisable" ["auth/disable"],
        auth_status "AuthStatus" ["auth/status"],
        authenticate "Authenticate" ["auth/authenticate"],
        user_add "UserAdd" ["auth/user/add"],
        user_get "UserGet" ["auth/user/get"],
        user_list "UserList" ["auth/user/list"],
        user_delete "UserDelete" ["auth/user/delete"],
        user_change_password "UserChangePassword" ["auth/user/changepw"],
        user_grant_role "UserGrantRole" ["auth/user/grant"],
        user_revoke_role "UserRevokeRole" ["auth/user/revoke"],
        role_add "RoleAdd" ["auth/role/add"],
        role_get "RoleGet" ["auth/role/get"],
        role_list "RoleList" ["auth/role/list"],
        role_delete "RoleDelete" ["auth/role/delete"],
        role_grant_permission "RoleGrantPermission" ["auth/role/grant"],
        role_revoke_permission "RoleRevokePermission" ["auth/role/revoke"],
    );
    routes!(unary, lock, "v3lockpb.Lock", lock "Lock" ["lock/lock"], unlock "Unlock" ["lock/unlock"]);
    routes!(unary, election, "v3electionpb.Election",
        campaign "Campaign" ["election/campaign"],
        proclaim "Proclaim" ["election/proclaim"],
        leader "Leader" ["election/leader"],
        resign "Resign" ["election/resign"],
    );
    routes!(server_stream, election, "v3electionpb.Election", observe "Observe" ["election/observe"]);

    // The two bidirectional streams take the handlers' stream entry points.
    let (g, watch) = (gw.clone(), services.watch.clone());
    let watch_route = move |tls: Tls, headers: HeaderMap, body: Body| {
        let (g, watch) = (g.clone(), watch.clone());
        let caller = Caller { headers, tls };
        async move {
            let open = |req: tonic::Request<_>| watch.open(Credentials::of(&req), false, req.into_inner());
            g.bidi(("etcdserverpb.Watch", "Watch"), caller, body, open).await
        }
    };
    r = route(r, "watch", post(watch_route));
    let (g, lease) = (gw.clone(), services.lease.clone());
    let keepalive_route = move |tls: Tls, headers: HeaderMap, body: Body| {
        let (g, lease) = (g.clone(), lease.clone());
        let caller = Caller { headers, tls };
        async move {
            g.bidi(("etcdserverpb.Lease", "LeaseKeepAlive"), caller, body, |req| {
                lease.keep_alive(Credentials::of(&req), false, req.into_inner())
            })
            .await
        }
    };
    r = route(r, "lease/keepalive", post(keepalive_route));

    let r = r.merge(keys::router(gw, services)).merge(ui::router());
    access::layer(r.merge(observe::router(observed)).fallback(not_found), access)
}
