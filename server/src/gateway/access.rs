//! Who may use the HTTP side of the client port, as etcd's `accessController`: `--cors`
//! (which origins get CORS headers; `*` — the default — answers every origin with `*`) and
//! `--host-whitelist` (on plain-HTTP connections, requests whose `Host` is not listed get
//! `421 Misdirected Request`: a defence against DNS rebinding, CVE-2018-5702; `*` — the
//! default — allows every host), and who may open the web console (`--enable-ui`: by
//! default requests from a loopback address only). gRPC requests do not pass here, as
//! in etcd.

use crate::config::UiExposure;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashSet;
use std::sync::Arc;

/// The allowed origins and hosts.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `None`: every origin (`*`).
    origins: Option<HashSet<String>>,
    /// `None`: every host.
    hosts: Option<HashSet<String>>,
    /// Who gets the web console.
    ui: Option<UiExposure>,
}

/// A comma-separated etcd list: `None` when empty or containing `*`.
fn list(s: &str) -> Option<HashSet<String>> {
    let items: HashSet<String> = s.split(',').map(str::trim).filter(|i| !i.is_empty()).map(String::from).collect();
    (!items.is_empty() && !items.contains("*")).then_some(items)
}

impl Access {
    /// From `--cors` and `--host-whitelist`.
    pub fn new(cors: &str, host_whitelist: &str) -> Access {
        Access { origins: list(cors), hosts: list(host_whitelist), ui: None }
    }

    /// Serve the web console as `--enable-ui` says (without this: to nobody).
    pub fn with_ui(self, ui: UiExposure) -> Access {
        Access { ui: Some(ui), ..self }
    }
}

/// Whether the request came from a loopback address (127.0.0.0/8, ::1, or IPv4-mapped).
fn from_loopback(req: &Request) -> bool {
    let tcp = req.extensions().get::<TcpInfo>().or_else(|| req.extensions().get::<TlsInfo>().map(|t| t.get_ref()));
    tcp.and_then(TcpInfo::remote_addr).is_some_and(|a| a.ip().to_canonical().is_loopback())
}

/// The refusal of a console request `ui` does not allow, if it is one.
fn ui_refusal(ui: Option<UiExposure>, req: &Request) -> Option<Response> {
    let path = req.uri().path();
    if path != "/ui" && !path.starts_with("/ui/") {
        return None;
    }
    match ui.unwrap_or(UiExposure::Off) {
        UiExposure::On => None,
        UiExposure::Loopback if from_loopback(req) => None,
        UiExposure::Loopback => Some(
            (
                StatusCode::FORBIDDEN,
                "the web console answers requests from this machine only; \
                 start the member with --enable-ui=true to serve it to others\n",
            )
                .into_response(),
        ),
        UiExposure::Off => {
            Some((StatusCode::NOT_FOUND, "the web console is off (--enable-ui=false)\n").into_response())
        }
    }
}

/// The host a request names (its `Host` header, else the URI's), without the port.
fn host_of(req: &Request) -> String {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().host().map(str::to_string))
        .unwrap_or_default();
    match raw.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default().to_string(),
        None => raw.rsplit_once(':').map_or(raw.clone(), |(h, _)| h.to_string()),
    }
}

type TcpInfo = tonic::transport::server::TcpConnectInfo;
type TlsInfo = tonic::transport::server::TlsConnectInfo<TcpInfo>;

/// The middleware: the host check, then the CORS headers, then `OPTIONS` answered at once.
pub async fn check(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    let secure = req.extensions().get::<TlsInfo>().is_some();
    if let (Some(hosts), false) = (&access.hosts, secure) {
        let host = host_of(&req);
        if !hosts.contains(&host) {
            tracing::warn!(host, "rejecting an HTTP request to prevent DNS rebinding attacks (--host-whitelist)");
            let body = format!(
                "\netcd received your request, but the Host header was unrecognized.\n\n\
                 To fix this, choose one of the following options:\n\
                 - Enable TLS, then any HTTPS request will be allowed.\n\
                 - Add the hostname you want to use to the whitelist in settings.\n  \
                 - e.g. etcd --host-whitelist {host:?}\n\n\
                 This requirement has been added to help prevent \"DNS Rebinding\" attacks (CVE-2018-5702).\n"
            );
            return (StatusCode::MISDIRECTED_REQUEST, body).into_response();
        }
    }
    let origin = match &access.origins {
        None => Some(HeaderValue::from_static("*")),
        Some(allowed) => {
            req.headers().get(header::ORIGIN).filter(|o| o.to_str().is_ok_and(|o| allowed.contains(o))).cloned()
        }
    };
    if let Some(refused) = ui_refusal(access.ui, &req) {
        return refused;
    }
    let preflight = req.method() == axum::http::Method::OPTIONS;
    let mut resp = if preflight { StatusCode::OK.into_response() } else { next.run(req).await };
    if let Some(origin) = origin {
        let h = resp.headers_mut();
        h.insert("access-control-allow-origin", origin);
        h.insert("access-control-allow-methods", HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"));
        h.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("accept, content-type, authorization, if-match, if-none-match, last-event-id"),
        );
        // What a page may read of a keys API response (/kv/).
        h.insert("access-control-expose-headers", HeaderValue::from_static("etag, x-cairn-revision"));
    }
    resp
}

/// Put [`check`] in front of `router`.
pub fn layer(router: axum::Router, access: Access) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(Arc::new(access), check))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_as_etcd_reads_them() {
        for (cors, hosts) in [("*", "*"), ("", "")] {
            let a = Access::new(cors, hosts);
            assert!(a.origins.is_none() && a.hosts.is_none());
        }
        assert!(Access::new("http://a.example,*", "").origins.is_none());
        let a = Access::new("http://a.example, http://b.example", "localhost,127.0.0.1");
        assert_eq!(a.origins.as_ref().map(HashSet::len), Some(2));
        assert!(a.hosts.as_ref().is_some_and(|h| h.contains("localhost")));
    }

    #[test]
    fn the_console_by_default_answers_this_machine_only() {
        let req = |path: &str, from: Option<&str>| {
            let mut r = Request::builder().uri(path).body(axum::body::Body::empty()).unwrap();
            if let Some(addr) = from {
                let info = TcpInfo { local_addr: None, remote_addr: Some(addr.parse().unwrap()) };
                r.extensions_mut().insert(info);
            }
            r
        };
        let status = |ui, r: &Request| ui_refusal(Some(ui), r).map(|resp| resp.status());
        for from in ["127.0.0.1:5000", "127.8.0.3:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            assert_eq!(status(UiExposure::Loopback, &req("/ui/", Some(from))), None, "{from}");
        }
        for from in [Some("10.0.0.7:5000"), Some("[2001:db8::1]:5000"), None] {
            assert_eq!(status(UiExposure::Loopback, &req("/ui/app.js", from)), Some(StatusCode::FORBIDDEN), "{from:?}");
            assert_eq!(status(UiExposure::On, &req("/ui/", from)), None);
        }
        assert_eq!(status(UiExposure::Off, &req("/ui", Some("127.0.0.1:1"))), Some(StatusCode::NOT_FOUND));
        assert_eq!(status(UiExposure::Off, &req("/uix", None)), None, "not the console");
        assert_eq!(
            ui_refusal(None, &req("/ui/", Some("127.0.0.1:1"))).map(|r| r.status()),
            Some(StatusCode::NOT_FOUND)
        );
    }

    #[test]
    fn host_without_port() {
        let req = |h: &str| {
            Request::builder().uri("/v3/kv/range").header(header::HOST, h).body(axum::body::Body::empty()).unwrap()
        };
        assert_eq!(host_of(&req("localhost:2379")), "localhost");
        assert_eq!(host_of(&req("[::1]:2379")), "::1");
        assert_eq!(host_of(&req("example.com")), "example.com");
    }
}
