//! Observability endpoints, served on the client port and on `--listen-metrics-urls`:
//!
//! - `GET /health`: `{"health":"true","reason":""}` (200) when no alarm is raised, the
//!   member has a leader and a linearizable read completes; otherwise `"false"` with the
//!   reason (503). `?exclude=NOSPACE` ignores that alarm.
//!   `?serializable=true` skips the read (answers from this member alone), as etcd.
//! - `GET /livez`: the process is serving (always `ok`).
//! - `GET /readyz`: ready to serve linearizable requests and no CORRUPT alarm raised
//!   (`data_corruption`); `?verbose` lists each check.
//! - `GET /version`: etcd's version document plus Cairn's own version.
//! - `GET /metrics`: the member's Prometheus registry in the text format.

use super::error_response;
use crate::metrics::Metrics;
use crate::replica::Replica;
use crate::router::Router as LeaderRouter;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use cairn_api::etcdserverpb::AlarmType;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

type Params = Query<HashMap<String, String>>;

/// What the observability routes read of their member.
#[derive(Clone)]
pub struct Observed {
    /// Leader, alarms, gauges.
    pub replica: Arc<Replica>,
    /// Linearizable read probes.
    pub router: Arc<LeaderRouter>,
    /// The registry served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// How long a probe may take (the request timeout).
    pub probe_limit: Duration,
}

/// The observability routes over `observed`.
pub fn router(observed: Observed) -> Router {
    let only_get =
        || async { error_response(StatusCode::METHOD_NOT_ALLOWED, Code::Unimplemented, "Method Not Allowed") };
    Router::new()
        .route("/health", get(health).fallback(only_get))
        .route("/livez", get(livez).fallback(only_get))
        .route("/readyz", get(readyz).fallback(only_get))
        .route("/version", get(version).fallback(only_get))
        .route("/metrics", get(metrics).fallback(only_get))
        .with_state(observed)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    text(status, "application/json", serde_json::to_string(v).unwrap_or_default())
}

fn flag(p: &Params, name: &str) -> bool {
    p.get(name).is_some_and(|v| v.is_empty() || v == "true" || v == "1")
}

/// Why this member cannot serve a linearizable read now, if it cannot. The read is
/// bounded by `limit` so a health probe never hangs.
async fn linearizable_problem(obs: &Observed, limit: Duration) -> Option<String> {
    if obs.replica.leader().is_none() {
        return Some("RAFT NO LEADER".into());
    }
    match tokio::time::timeout(limit, obs.router.read_barrier()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("QGET ERROR: {e}")),
        Err(_) => Some("QGET ERROR: timed out".into()),
    }
}

/// How long a probe's linearizable read may take.
fn probe_limit(obs: &Observed) -> Duration {
    obs.probe_limit
}

async fn health(State(obs): State<Observed>, p: Params) -> Response {
    #[derive(Serialize)]
    struct Health {
        health: &'static str,
        reason: String,
    }
    // A raised alarm makes the member unhealthy unless excluded (`?exclude=NOSPACE`).
    let alarm = obs.replica.with_state(|st| {
        st.alarms
            .iter()
            .map(|(_, a)| AlarmType::try_from(*a).map_or("UNKNOWN", |t| t.as_str_name()))
            .find(|name| p.get("exclude").is_none_or(|ex| ex != name))
    });
    let problem = if let Some(name) = alarm {
        Some(format!("ALARM {name}"))
    } else if flag(&p, "serializable") {
        obs.replica.leader().is_none().then(|| "RAFT NO LEADER".to_string())
    } else {
        linearizable_problem(&obs, probe_limit(&obs)).await
    };
    match problem {
        None => json(StatusCode::OK, &Health { health: "true", reason: String::new() }),
        Some(reason) => {
            tracing::warn!(%reason, "/health error");
            json(StatusCode::SERVICE_UNAVAILABLE, &Health { health: "false", reason })
        }
    }
}

async fn livez() -> Response {
    text(StatusCode::OK, "text/plain; charset=utf-8", "ok".into())
}

async fn readyz(State(obs): State<Observed>, p: Params) -> Response {
    let checks = [
        ("data_corruption", obs.replica.with_state(|st| st.corrupt()).then(|| "alarm CORRUPT is raised".to_string())),
        ("serializable_read", obs.replica.leader().is_none().then(|| "no leader".to_string())),
        ("linearizable_read", linearizable_problem(&obs, probe_limit(&obs)).await),
    ];
    let ok = checks.iter().all(|(_, c)| c.is_none());
    let mut body = String::new();
    if flag(&p, "verbose") || !ok {
        for (name, problem) in &checks {
            match problem {
                None => body.push_str(&format!("[+]{name} ok\n")),
                Some(why) => body.push_str(&format!("[-]{name} failed: {why}\n")),
            }
        }
    }
    body.push_str(if ok { "ok" } else { "readyz check failed" });
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    text(status, "text/plain; charset=utf-8", body)
}

async fn version() -> Response {
    #[derive(Serialize)]
    struct Version {
        etcdserver: &'static str,
        etcdcluster: &'static str,
        cairn: &'static str,
    }
    let v = crate::version::ETCD_API;
    json(StatusCode::OK, &Version { etcdserver: v, etcdcluster: v, cairn: env!("CARGO_PKG_VERSION") })
}

async fn metrics(State(obs): State<Observed>) -> Response {
    obs.metrics.refresh(&obs.replica);
    text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", obs.metrics.render())
}
