//! Watch guarantees under faults.
//!
//! During the run one watch per member, from revision 1, lives through the faults: when its
//! stream breaks (the member was killed, or the connection dropped) it is created again on
//! the same member from the revision after the last event it delivered, as etcd clients
//! resume. After recovery every member also replays the whole history from revision 1.
//! Checked: every stream is in revision order without repeats, every member replays the
//! same stream, each live (resumed) stream is exactly that stream — no gaps, nothing twice —
//! and every acknowledged write is in it.

use crate::runner::{channel, value_of};
use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_api::etcdserverpb::watch_client::WatchClient;
use cairn_api::etcdserverpb::{watch_request, StatusRequest, WatchCreateRequest, WatchRequest};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::codec::Streaming;

/// One event: (revision, key, value, or None for a delete or a non-numeric value).
pub type Event = (i64, String, Option<u64>);

/// A request stream of one message that stays open (closing it would end the watch).
pub(crate) fn tokio_stream_once<T: Send + 'static>(first: T) -> impl tokio_stream::Stream<Item = T> + Send + 'static {
    use tokio_stream::StreamExt;
    tokio_stream::once(first).chain(tokio_stream::pending())
}

/// Open a watch on the test's keys (`k`..`l`: registers, lock and leased keys, so every
/// revision is one of them) from `start_revision`.
async fn open(url: &str, start_revision: i64) -> Result<Streaming<cairn_api::etcdserverpb::WatchResponse>, String> {
    let ch = channel(url).await.ok_or_else(|| format!("{url}: no connection"))?;
    let create =
        WatchCreateRequest { key: b"k".to_vec(), range_end: b"l".to_vec(), start_revision, ..Default::default() };
    let req = WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) };
    let mut client = WatchClient::new(ch);
    match tokio::time::timeout(Duration::from_secs(2), client.watch(tokio_stream_once(req))).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(e)) => Err(format!("{url}: watch: {e}")),
        Err(_) => Err(format!("{url}: watch: no answer")),
    }
}

fn events_of(resp: cairn_api::etcdserverpb::WatchResponse) -> impl Iterator<Item = Event> {
    resp.events.into_iter().map(|e| {
        let kv = e.kv.unwrap_or_default();
        let value = (e.r#type == 0).then(|| value_of(std::slice::from_ref(&kv))).flatten();
        (kv.mod_revision, String::from_utf8_lossy(&kv.key).into_owned(), value)
    })
}

/// Every event from revision 1 up to the member's current revision, in one watch.
async fn replay(url: &str) -> Result<Vec<Event>, String> {
    let ch = channel(url).await.ok_or_else(|| format!("{url}: no connection"))?;
    let status = MaintenanceClient::new(ch).status(StatusRequest {}).await.map_err(|e| e.to_string())?;
    let until = status.into_inner().header.map_or(0, |h| h.revision);
    let mut stream = open(url, 1).await?;
    let mut events: Vec<Event> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while events.last().map_or(until > 1, |e| e.0 < until) {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, stream.message()).await.map_err(|_| format!("{url}: watch stalled"))?;
        let Some(resp) = msg.map_err(|e| format!("{url}: watch: {e}"))? else {
            return Err(format!("{url}: watch ended"));
        };
        events.extend(events_of(resp));
    }
    Ok(events)
}

/// A watch on one member that lives through the faults, resuming after each break.
pub struct Live {
    /// 0 while the run goes on; then the revision to reach before stopping (-1: stop now).
    target: watch::Sender<i64>,
    task: tokio::task::JoinHandle<Vec<Event>>,
}

impl Live {
    /// Start watching `url` from revision 1.
    pub fn start(url: String) -> Live {
        let (target, mut rx) = watch::channel(0i64);
        let task = tokio::spawn(async move {
            let mut events: Vec<Event> = Vec::new();
            let done = |events: &Vec<Event>, t: i64| t < 0 || (t > 0 && events.last().is_some_and(|e| e.0 >= t));
            loop {
                if done(&events, *rx.borrow()) {
                    return events;
                }
                let next = events.last().map_or(1, |e| e.0 + 1);
                let Ok(mut stream) = open(&url, next).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                loop {
                    tokio::select! {
                        msg = stream.message() => match msg {
                            Ok(Some(resp)) if !resp.canceled => events.extend(events_of(resp)),
                            // Broken or cancelled: resume from the next revision.
                            _ => break,
                        },
                        changed = rx.changed() => if changed.is_err() { return events },
                    }
                    if done(&events, *rx.borrow()) {
                        return events;
                    }
                }
            }
        });
        Live { target, task }
    }

    /// Wait until the watch delivered revision `rev` (at most `limit`), stop it, and return
    /// what it delivered; an error if it never got there.
    pub async fn finish(mut self, rev: i64, limit: Duration) -> Result<Vec<Event>, String> {
        self.target.send_replace(rev);
        let events = match tokio::time::timeout(limit, &mut self.task).await {
            Ok(r) => r.map_err(|e| e.to_string())?,
            Err(_) => {
                self.target.send_replace(-1);
                (&mut self.task).await.map_err(|e| e.to_string())?
            }
        };
        match events.last() {
            Some(e) if e.0 >= rev => Ok(events),
            last => {
                Err(format!("stalled at revision {} of {rev}", last.map_or("none".to_string(), |e| e.0.to_string())))
            }
        }
    }
}

/// The events of `e` up to revision `rev`.
fn upto(e: &[Event], rev: i64) -> &[Event] {
    &e[..e.partition_point(|x| x.0 <= rev)]
}

/// Replay from revision 1 on every member and check the watch guarantees (see the module
/// notes) against it and the live streams (`live[i]`: member i's, up to revision `rev`).
pub async fn check(
    urls: &[String],
    acked: &[(String, u64)],
    live: Vec<Result<Vec<Event>, String>>,
    rev: i64,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut first: Option<Vec<Event>> = None;
    let ordered = |events: &[Event]| {
        events
            .windows(2)
            .find(|w| (w[1].0, &w[1].1) <= (w[0].0, &w[0].1))
            .map(|w| format!("{:?} then {:?}", w[0], w[1]))
    };
    for (i, url) in urls.iter().enumerate() {
        let events = match replay(url).await {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("member {i}: {e}"));
                continue;
            }
        };
        if let Some(w) = ordered(&events) {
            problems.push(format!("member {i}'s watch went out of order or repeated: {w}"));
        }
        match &first {
            None => {
                let puts: std::collections::HashSet<(&str, u64)> =
                    events.iter().filter_map(|(_, k, v)| v.map(|v| (k.as_str(), v))).collect();
                let missing: Vec<_> = acked.iter().filter(|(k, v)| !puts.contains(&(k.as_str(), *v))).take(5).collect();
                if !missing.is_empty() {
                    problems.push(format!("acknowledged writes missing from the watch history: {missing:?}"));
                }
                first = Some(events);
            }
            Some(f) => {
                // Leases may still expire while the members replay: compare what both hold.
                let common = f.last().map_or(0, |e| e.0).min(events.last().map_or(0, |e| e.0));
                let (a, b) = (upto(f, common), upto(&events, common));
                if a != b {
                    let at = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
                    problems.push(format!(
                        "member {i}'s watch stream differs from member 0's at event {at} ({} vs {} events)",
                        b.len(),
                        a.len()
                    ));
                }
            }
        }
    }
    let Some(f) = first else { return problems };
    for (i, live) in live.into_iter().enumerate() {
        match live {
            Err(e) => problems.push(format!("member {i}'s live watch {e}")),
            Ok(events) => {
                let (a, b) = (upto(&f, rev), upto(&events, rev));
                if a != b {
                    let at = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
                    problems.push(format!(
                        "member {i}'s live watch (resumed after every break) differs from the history at \
                         event {at}: {:?} instead of {:?} ({} vs {} events)",
                        b.get(at),
                        a.get(at),
                        b.len(),
                        a.len()
                    ));
                }
            }
        }
    }
    problems
}
