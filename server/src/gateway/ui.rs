//! The web console: a page at `/ui/` over the member's own HTTP APIs (the keys API for
//! keys, history and watches; the JSON gateway for leases, members and alarms; `/metrics`
//! for the rates). Its files are compiled into the binary; it has no server side of its
//! own, so it has exactly the caller's permissions. Who may open it is decided with the
//! other HTTP access rules (`access.rs`, `--enable-ui`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

fn file(body: &'static str, content_type: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // The page talks only to the members it names; nothing is loaded from elsewhere.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; connect-src *; img-src 'self' data:; frame-ancestors 'none'"),
    );
    r
}

/// `/ui` (to `/ui/`), `/ui/`, `/ui/app.js`, `/ui/style.css`.
pub fn router() -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { file(INDEX, "text/html; charset=utf-8") }))
        .route("/ui/index.html", get(|| async { file(INDEX, "text/html; charset=utf-8") }))
        .route("/ui/app.js", get(|| async { file(APP, "text/javascript; charset=utf-8") }))
        .route("/ui/style.css", get(|| async { file(STYLE, "text/css; charset=utf-8") }))
}
