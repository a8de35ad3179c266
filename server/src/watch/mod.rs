//! The watch hub: every watcher of every stream on this member, and the fan-out of the
//! events each applied batch produces.
//!
//! Owns watcher registration, event matching and delivery, catch-up from history, progress
//! notifications and the watch metrics. It must not block the apply path: delivery to a
//! synced watcher is a non-blocking `try_send` into its stream's bounded channel.
//!
//! A watcher is *synced* (it receives events as they are applied) or *catching up* (a
//! task replays history from the store into its stream). Every watcher starts catching
//! up at its start revision; when the task has sent everything up to the last published
//! revision it becomes synced, with a lower bound (`min_rev`) that drops the events it
//! already replayed — so nothing is missed and nothing is sent twice. A synced watcher
//! whose stream is full (its client is not reading) is moved back to catching up from
//! the first revision it did not get, as etcd moves slow watchers to its victim list;
//! writers and other watchers never wait for it, and its memory stays bounded by the
//! stream's channel plus one history batch.

pub mod coalesce;
pub mod outgoing;
pub mod publish;

use crate::error::Error;
use crate::state::{Headers, SmState};
use bytes::Bytes;
use cairn_api::etcdserverpb::{watch_create_request::FilterType, ResponseHeader, WatchCreateRequest, WatchResponse};
use cairn_api::mvccpb::{event::EventType, Event};
use outgoing::{encode_event, event_field_len, Outgoing};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Responses buffered per stream before its watchers are treated as slow.
pub const STREAM_BUFFER: usize = 256;
/// Events replayed from history per step of a catch-up, and about how many bytes of keys
/// and values (so one step fragments into a few responses, well within a stream's buffer).
const HISTORY_BATCH: usize = 1000;
const HISTORY_BYTES: usize = 4 << 20;

/// What a stream's sender carries.
pub type StreamTx = mpsc::Sender<Result<Outgoing, Error>>;
type WKey = (u64, i64);

/// Counters exposed as metrics.
#[derive(Debug, Default)]
pub struct WatchMetrics {
    /// Watchers currently registered.
    pub watchers: AtomicU64,
    /// Watchers currently catching up (new, or moved aside because they were slow).
    pub catching_up: AtomicU64,
    /// Times a synced watcher was moved aside because its stream was full.
    pub slow_events: AtomicU64,
    /// Events delivered to clients.
    pub events_sent: AtomicU64,
}

struct Watcher {
    /// The user the watcher was created for ("" when auth was off); `None` for the member's
    /// own watchers. Checked again by [`WatchHub::revoke`] when auth changes.
    owner: Option<String>,
    key: Vec<u8>,
    /// etcd-form range end: empty = single key, `[0]` = to the end.
    end: Vec<u8>,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    synced: bool,
    /// Events below this revision were already sent by catch-up.
    min_rev: i64,
    /// Bumped whenever a catch-up task is started, so stale tasks stop.
    epoch: u64,
}

impl Watcher {
    fn wants(&self, ev: &Event) -> bool {
        let is_put = ev.r#type == EventType::Put as i32;
        !(is_put && self.no_put || !is_put && self.no_delete)
    }
}

struct Stream {
    tx: StreamTx,
    watchers: HashMap<i64, Watcher>,
    next_id: i64,
    /// A progress request waits for every watcher to be synced.
    progress_pending: bool,
}

#[derive(Default)]
struct Hub {
    /// The last revision whose events were published.
    notified: i64,
    next_stream: u64,
    streams: HashMap<u64, Stream>,
    /// Synced single-key watchers by key.
    by_key: HashMap<Vec<u8>, Vec<WKey>>,
    /// Synced range watchers by (key, end).
    by_range: HashMap<(Vec<u8>, Vec<u8>), Vec<WKey>>,
}

impl Hub {
    fn index(&mut self, wk: WKey, key: &[u8], end: &[u8]) {
        if end.is_empty() {
            self.by_key.entry(key.to_vec()).or_default().push(wk);
        } else {
            self.by_range.entry((key.to_vec(), end.to_vec())).or_default().push(wk);
        }
    }

    fn unindex(&mut self, wk: WKey, key: &[u8], end: &[u8]) {
        let remove = |v: &mut Vec<WKey>| v.retain(|x| *x != wk);
        if end.is_empty() {
            if let Some(v) = self.by_key.get_mut(key) {
                remove(v);
                if v.is_empty() {
                    self.by_key.remove(key);
                }
            }
        } else {
            let rk = (key.to_vec(), end.to_vec());
            if let Some(v) = self.by_range.get_mut(&rk) {
                remove(v);
                if v.is_empty() {
                    self.by_range.remove(&rk);
                }
            }
        }
    }
}

/// Whether a user may read an etcd-form key range: `(user, key, range_end)`.
pub type MayRead<'a> = dyn Fn(&str, &[u8], &[u8]) -> bool + 'a;

/// The hub of one member.
pub struct WatchHub {
    hub: Mutex<Hub>,
    sm: Arc<RwLock<SmState>>,
    headers: Headers,
    max_response_bytes: usize,
    /// Watchers one stream may hold (`--max-watchers-per-stream`).
    max_watchers: std::sync::atomic::AtomicUsize,
    /// Counters for /metrics.
    pub metrics: WatchMetrics,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

fn canceled(header: ResponseHeader, id: i64, reason: &str) -> WatchResponse {
    WatchResponse {
        header: Some(header),
        watch_id: id,
        canceled: true,
        cancel_reason: reason.into(),
        ..Default::default()
    }
}

/// A response of `header` without events: a progress notification for `id` (`-1`: the
/// whole stream).
fn progress_of(header: ResponseHeader, id: i64) -> Outgoing {
    Outgoing::control(WatchResponse { header: Some(header), watch_id: id, ..Default::default() })
}

/// One published event and its encodings, made the first time a watcher needs one.
struct Shared<'a> {
    ev: &'a Event,
    with_prev: OnceLock<Bytes>,
    without_prev: OnceLock<Bytes>,
}

impl Shared<'_> {
    fn bytes(&self, prev_kv: bool) -> Bytes {
        let cell = if prev_kv || self.ev.prev_kv.is_none() { &self.with_prev } else { &self.without_prev };
        cell.get_or_init(|| encode_event(self.ev, prev_kv)).clone()
    }
}

impl WatchHub {
    /// A hub reading history from `sm`, whose revision at start is `revision`.
    pub fn new(sm: Arc<RwLock<SmState>>, revision: i64, max_response_bytes: usize, headers: Headers) -> Arc<WatchHub> {
        Arc::new(WatchHub {
            hub: Mutex::new(Hub { notified: revision, ..Default::default() }),
            sm,
            headers,
            max_response_bytes,
            max_watchers: std::sync::atomic::AtomicUsize::new(usize::MAX),
            metrics: WatchMetrics::default(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        })
    }

    /// Whether any watch stream is open.
    pub fn has_streams(&self) -> bool {
        !self.lock().streams.is_empty()
    }

    /// Limit the watchers of one stream (`--max-watchers-per-stream`).
    pub fn set_max_watchers_per_stream(&self, n: usize) {
        self.max_watchers.store(n, Ordering::Relaxed);
    }

    /// The encoded size a watch response is kept under when it can be split or merged.
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    fn header(&self, rev: i64) -> ResponseHeader {
        self.headers.at(rev)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hub> {
        // Only short, non-blocking sections run under this lock; a poisoned one is usable.
        self.hub.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn store_rev(&self) -> (i64, i64) {
        let st = self.sm.read().unwrap_or_else(|p| p.into_inner());
        (st.mvcc.current_revision(), st.mvcc.compact_revision())
    }

    /// Stop catch-up and progress tasks and wait for them.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Register a new stream whose responses go to `tx`.
    pub fn open_stream(&self, tx: StreamTx) -> u64 {
        let mut h = self.lock();
        h.next_stream += 1;
        let id = h.next_stream;
        h.streams.insert(id, Stream { tx, watchers: HashMap::new(), next_id: 0, progress_pending: false });
        id
    }

    /// Remove a stream and all its watchers.
    pub fn close_stream(&self, sid: u64) {
        let mut h = self.lock();
        if let Some(s) = h.streams.remove(&sid) {
            for (id, w) in s.watchers {
                h.unindex((sid, id), &w.key, &w.end);
                self.metrics.watchers.fetch_sub(1, Ordering::Relaxed);
                if !w.synced {
                    self.metrics.catching_up.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Handle a WatchCreateRequest: answer `created` (or why not), then start the watcher.
    pub async fn create(self: &Arc<Self>, sid: u64, req: WatchCreateRequest, owner: Option<String>, tx: &StreamTx) {
        let (current, compacted) = self.store_rev();
        let mut key = req.key;
        if key.is_empty() {
            key = vec![0];
        }
        let end = req.range_end;
        let bad_range = !end.is_empty() && end != [0] && end <= key;
        let start = if req.start_revision > 0 { req.start_revision } else { current + 1 };
        let registered = {
            let mut h = self.lock();
            let Some(stream) = h.streams.get_mut(&sid) else { return };
            let id = if req.watch_id != 0 {
                req.watch_id
            } else {
                while stream.watchers.contains_key(&stream.next_id) {
                    stream.next_id += 1;
                }
                stream.next_id += 1;
                stream.next_id - 1
            };
            if bad_range {
                Err((id, "mvcc: watcher range is empty"))
            } else if stream.watchers.len() >= self.max_watchers.load(Ordering::Relaxed) {
                Err((id, "cairn: too many watchers on this stream (--max-watchers-per-stream)"))
            } else if let std::collections::hash_map::Entry::Vacant(slot) = stream.watchers.entry(id) {
                let filters: Vec<i32> = req.filters.clone();
                slot.insert(Watcher {
                    owner,
                    key,
                    end,
                    no_put: filters.contains(&(FilterType::Noput as i32)),
                    no_delete: filters.contains(&(FilterType::Nodelete as i32)),
                    prev_kv: req.prev_kv,
                    progress_notify: req.progress_notify,
                    fragment: req.fragment,
                    synced: false,
                    min_rev: start,
                    epoch: 1,
                });
                self.metrics.watchers.fetch_add(1, Ordering::Relaxed);
                self.metrics.catching_up.fetch_add(1, Ordering::Relaxed);
                Ok(id)
            } else {
                Err((id, "mvcc: duplicate watch ID provided on the WatchStream"))
            }
        };
        match registered {
            Err((id, reason)) => {
                let mut r = canceled(self.header(current), id, reason);
                r.created = true;
                let _ = tx.send(Ok(Outgoing::control(r))).await;
            }
            Ok(id) => {
                let created = WatchResponse {
                    header: Some(self.header(current)),
                    watch_id: id,
                    created: true,
                    ..Default::default()
                };
                if tx.send(Ok(Outgoing::control(created))).await.is_err() {
                    return;
                }
                if start < compacted {
                    self.compacted(sid, id, compacted, tx).await;
                    return;
                }
                let hub = self.clone();
                self.tasks.spawn(async move { hub.catch_up((sid, id), start, 1).await });
            }
        }
    }

    async fn compacted(&self, sid: u64, id: i64, compacted: i64, tx: &StreamTx) {
        self.remove(sid, id);
        let mut r = canceled(self.header(compacted), id, crate::error::msg::COMPACTED);
        r.compact_revision = compacted;
        let _ = tx.send(Ok(Outgoing::control(r))).await;
    }

    fn remove(&self, sid: u64, id: i64) -> bool {
        let mut h = self.lock();
        let Some(w) = h.streams.get_mut(&sid).and_then(|s| s.watchers.remove(&id)) else { return false };
        h.unindex((sid, id), &w.key, &w.end);
        self.metrics.watchers.fetch_sub(1, Ordering::Relaxed);
        if !w.synced {
            self.metrics.catching_up.fetch_sub(1, Ordering::Relaxed);
        }
        true
    }

    /// Remove every client watcher whose owner `may_read` no longer allows to read its
    /// range (after auth was turned on or permissions shrank); returns what
    /// [`WatchHub::tell_denied`] must tell their clients. The caller holds the state
    /// machine still, so no event of a later revision reaches a removed watcher.
    pub fn revoke(&self, may_read: &MayRead<'_>) -> Vec<(StreamTx, i64)> {
        let mut h = self.lock();
        let mut denied = Vec::new();
        for (sid, s) in &h.streams {
            for (id, w) in &s.watchers {
                if w.owner.as_deref().is_some_and(|user| !may_read(user, &w.key, &w.end)) {
                    denied.push((*sid, *id, s.tx.clone()));
                }
            }
        }
        let mut out = Vec::with_capacity(denied.len());
        for (sid, id, tx) in denied {
            if let Some(w) = h.streams.get_mut(&sid).and_then(|s| s.watchers.remove(&id)) {
                h.unindex((sid, id), &w.key, &w.end);
                self.metrics.watchers.fetch_sub(1, Ordering::Relaxed);
                if !w.synced {
                    self.metrics.catching_up.fetch_sub(1, Ordering::Relaxed);
                }
                out.push((tx, id));
            }
        }
        out
    }

    /// Tell the clients of watchers removed by [`WatchHub::revoke`] (without blocking on a
    /// slow one).
    pub fn tell_denied(&self, denied: Vec<(StreamTx, i64)>) {
        if denied.is_empty() {
            return;
        }
        tracing::info!(watchers = denied.len(), "canceled watchers their users may no longer read");
        let rev = self.lock().notified;
        for (tx, id) in denied {
            let r = Outgoing::control(canceled(self.header(rev), id, crate::error::msg::WATCH_DENIED));
            self.tasks.spawn(async move {
                let _ = tx.send(Ok(r)).await;
            });
        }
    }

    /// Handle a WatchCancelRequest. As etcd, an unknown id gets no answer.
    pub async fn cancel(&self, sid: u64, id: i64, tx: &StreamTx) {
        if self.remove(sid, id) {
            let rev = self.lock().notified;
            let _ = tx.send(Ok(Outgoing::control(canceled(self.header(rev), id, "")))).await;
        }
    }

    /// Handle a WatchProgressRequest: the current revision, once every watcher of the
    /// stream is synced (so the client may trust it has seen everything up to it).
    pub async fn progress(&self, sid: u64, tx: &StreamTx) {
        let rev = {
            let mut h = self.lock();
            let notified = h.notified;
            let Some(s) = h.streams.get_mut(&sid) else { return };
            if s.watchers.values().all(|w| w.synced) {
                Some(notified)
            } else {
                s.progress_pending = true;
                None
            }
        };
        if let Some(rev) = rev {
            let _ = tx.send(Ok(progress_of(self.header(rev), -1))).await;
        }
    }

    /// Split a response's events so each part fits the response limit (`fragment`).
    fn responses(&self, header: ResponseHeader, id: i64, events: Vec<Bytes>, fragment: bool) -> Vec<Outgoing> {
        let head = WatchResponse { header: Some(header), watch_id: id, ..Default::default() };
        let whole = Outgoing { head, events };
        if !fragment || whole.encoded_len() <= self.max_response_bytes {
            return vec![whole];
        }
        let mut parts = Vec::new();
        let mut cur: Vec<Bytes> = Vec::new();
        let mut size = 0;
        for ev in whole.events {
            let n = event_field_len(&ev) + 8;
            if !cur.is_empty() && size + n > self.max_response_bytes {
                parts.push(std::mem::take(&mut cur));
                size = 0;
            }
            size += n;
            cur.push(ev);
        }
        parts.push(cur);
        let last = parts.len() - 1;
        parts
            .into_iter()
            .enumerate()
            .map(|(i, events)| Outgoing {
                head: WatchResponse { header: Some(header), watch_id: id, fragment: i != last, ..Default::default() },
                events,
            })
            .collect()
    }

    /// The events of `events` that `w` wants, encoded for it.
    fn shape(w: &Watcher, events: &[Event]) -> Vec<Bytes> {
        events.iter().filter(|e| w.wants(e)).map(|e| encode_event(e, w.prev_kv)).collect()
    }

    /// Publish the events of an applied batch (in revision order, up to `rev`).
    pub fn notify(self: &Arc<Self>, rev: i64, events: Vec<Event>) {
        let header = self.header(rev);
        let mut slow: Vec<(WKey, i64, u64)> = Vec::new();
        {
            let mut h = self.lock();
            h.notified = rev;
            if events.is_empty() || h.streams.is_empty() {
                return;
            }
            // Each event is encoded at most twice (with and without its previous value),
            // however many watchers receive it.
            let shared: Vec<Shared<'_>> = events
                .iter()
                .map(|ev| Shared { ev, with_prev: OnceLock::new(), without_prev: OnceLock::new() })
                .collect();
            let mut per: HashMap<WKey, Vec<usize>> = HashMap::new();
            for (i, ev) in events.iter().enumerate() {
                let Some(kv) = &ev.kv else { continue };
                if let Some(ws) = h.by_key.get(&kv.key) {
                    for wk in ws {
                        per.entry(*wk).or_default().push(i);
                    }
                }
                for ((k, e), ws) in &h.by_range {
                    let inside = if e.as_slice() == [0] { kv.key >= *k } else { kv.key >= *k && kv.key < *e };
                    if inside {
                        for wk in ws {
                            per.entry(*wk).or_default().push(i);
                        }
                    }
                }
            }
            let rev_of = |i: usize| events[i].kv.as_ref().map_or(0, |kv| kv.mod_revision);
            for (wk, evs) in per {
                let Some(stream) = h.streams.get_mut(&wk.0) else { continue };
                let tx = stream.tx.clone();
                let Some(w) = stream.watchers.get_mut(&wk.1) else { continue };
                let first_rev = evs.first().map_or(rev, |i| rev_of(*i));
                let shaped: Vec<Bytes> = evs
                    .into_iter()
                    .filter(|i| rev_of(*i) >= w.min_rev && w.wants(&events[*i]))
                    .map(|i| shared[i].bytes(w.prev_kv))
                    .collect();
                if shaped.is_empty() {
                    continue;
                }
                let n = shaped.len() as u64;
                let parts = self.responses(header, wk.1, shaped, w.fragment);
                // All parts of a fragmented response go, or none: reserve every slot at once
                // (catch-up tasks and control responses share the stream's channel).
                let ok = match tx.try_reserve_many(parts.len()) {
                    Ok(permits) => {
                        for (permit, r) in permits.zip(parts) {
                            permit.send(Ok(r));
                        }
                        true
                    }
                    Err(_) => false,
                };
                if ok {
                    self.metrics.events_sent.fetch_add(n, Ordering::Relaxed);
                } else {
                    // Slow (or gone): move aside and catch up from the first event it lacks.
                    w.synced = false;
                    w.epoch += 1;
                    slow.push((wk, first_rev, w.epoch));
                }
            }
            for (wk, _, _) in &slow {
                let (k, e) = match h.streams.get(&wk.0).and_then(|s| s.watchers.get(&wk.1)) {
                    Some(w) => (w.key.clone(), w.end.clone()),
                    None => continue,
                };
                h.unindex(*wk, &k, &e);
            }
        }
        for (wk, from, epoch) in slow {
            self.metrics.slow_events.fetch_add(1, Ordering::Relaxed);
            self.metrics.catching_up.fetch_add(1, Ordering::Relaxed);
            let hub = self.clone();
            self.tasks.spawn(async move { hub.catch_up(wk, from, epoch).await });
        }
    }

    /// One batch of history for a catching-up watcher: `(current revision, events from
    /// next)`. The scan runs on a frozen view taken under the store's lock and read after
    /// releasing it, so a watcher of a rare key scanning many revisions never holds writers
    /// back; previous values are then filled in under the lock (one batch's worth).
    fn read_history(&self, key: &[u8], end: &[u8], next: i64, prev_kv: bool) -> (i64, cairn_store::Result<Vec<Event>>) {
        let limits = (HISTORY_BATCH, HISTORY_BYTES);
        let (cur, view) = {
            let st = self.sm.read().unwrap_or_else(|p| p.into_inner());
            let cur = st.mvcc.current_revision();
            if next > cur {
                // A start revision this member has not reached yet (a client resuming
                // here after seeing newer events elsewhere): nothing to replay.
                return (cur, Ok(Vec::new()));
            }
            if next < st.mvcc.compact_revision() {
                return (cur, Err(cairn_store::StoreError::Compacted));
            }
            match st.mvcc.engine().frozen_view() {
                Ok(Some(view)) => (cur, view),
                // No frozen view (sled): scan under the lock.
                Ok(None) => return (cur, st.mvcc.history(key, end, next, cur, limits, prev_kv)),
                Err(e) => return (cur, Err(e)),
            }
        };
        let mut events = match cairn_store::mvcc::history_in(view.as_ref(), key, end, next, cur, limits) {
            Ok(evs) => evs,
            Err(e) => return (cur, Err(e)),
        };
        if prev_kv {
            self.sm.read().unwrap_or_else(|p| p.into_inner()).mvcc.fill_prev_kvs(&mut events);
        }
        (cur, Ok(events))
    }

    /// Replay history into the watcher's stream from `next`, then make it synced.
    async fn catch_up(self: Arc<Self>, wk: WKey, mut next: i64, epoch: u64) {
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let (tx, key, end, prev_kv) = {
                let h = self.lock();
                let Some(s) = h.streams.get(&wk.0) else { return };
                let Some(w) = s.watchers.get(&wk.1) else { return };
                if w.epoch != epoch {
                    return;
                }
                (s.tx.clone(), w.key.clone(), w.end.clone(), w.prev_kv)
            };
            let (cur, history) = self.read_history(&key, &end, next, prev_kv);
            let events = match history {
                Ok(evs) => evs,
                Err(cairn_store::StoreError::Compacted) => {
                    let compacted = self.store_rev().1;
                    self.compacted(wk.0, wk.1, compacted, &tx).await;
                    return;
                }
                Err(e) => {
                    tracing::error!("watch catch-up failed: {e}");
                    self.remove(wk.0, wk.1);
                    let _ = tx
                        .send(Ok(Outgoing::control(canceled(self.header(cur), wk.1, &format!("etcdserver: {e}")))))
                        .await;
                    return;
                }
            };
            // Stopped early (by count or bytes) before reaching the current revision.
            let full = events.last().and_then(|e| e.kv.as_ref()).is_some_and(|kv| kv.mod_revision < cur)
                && (events.len() >= HISTORY_BATCH
                    || events
                        .iter()
                        .filter_map(|e| e.kv.as_ref())
                        .map(|kv| kv.key.len() + kv.value.len())
                        .sum::<usize>()
                        >= HISTORY_BYTES);
            let last = events.last().and_then(|e| e.kv.as_ref()).map(|kv| kv.mod_revision);
            let (shaped, fragment) = {
                let h = self.lock();
                match h.streams.get(&wk.0).and_then(|s| s.watchers.get(&wk.1)) {
                    Some(w) if w.epoch == epoch => (Self::shape(w, &events), w.fragment),
                    _ => return,
                }
            };
            if !shaped.is_empty() {
                let n = shaped.len() as u64;
                let header_rev = if full { last.unwrap_or(cur) } else { cur };
                let parts = self.responses(self.header(header_rev), wk.1, shaped, fragment);
                // Waiting here blocks only this watcher; the parts of a fragmented response
                // are reserved together so nothing else lands between them.
                let permits = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    p = tx.reserve_many(parts.len()) => match p { Ok(p) => p, Err(_) => return },
                };
                for (permit, r) in permits.zip(parts) {
                    permit.send(Ok(r));
                }
                self.metrics.events_sent.fetch_add(n, Ordering::Relaxed);
            }
            next = match (full, last) {
                (true, Some(l)) => l + 1,
                // Never below the start revision: events before it are not owed.
                _ => (cur + 1).max(next),
            };
            if full {
                continue;
            }
            // Caught up with the store; synced if nothing newer has been published.
            let progress = {
                let mut h = self.lock();
                if h.notified >= next {
                    None
                } else {
                    let Some(stream) = h.streams.get_mut(&wk.0) else { return };
                    let Some(w) = stream.watchers.get_mut(&wk.1) else { return };
                    if w.epoch != epoch {
                        return;
                    }
                    w.synced = true;
                    w.min_rev = next;
                    let (k, e) = (w.key.clone(), w.end.clone());
                    let all_synced = stream.watchers.values().all(|w| w.synced);
                    let progress = stream.progress_pending && all_synced;
                    if progress {
                        stream.progress_pending = false;
                    }
                    let notified = h.notified;
                    h.index(wk, &k, &e);
                    self.metrics.catching_up.fetch_sub(1, Ordering::Relaxed);
                    Some(progress.then_some(notified))
                }
            };
            match progress {
                None => continue,
                Some(Some(rev)) => {
                    let _ = tx.try_send(Ok(progress_of(self.header(rev), -1)));
                    return;
                }
                Some(None) => return,
            }
        }
    }

    /// Send a progress notification to every synced watcher that asked for them.
    pub fn progress_tick(&self) {
        let h = self.lock();
        let header = self.header(h.notified);
        for s in h.streams.values() {
            for (id, w) in &s.watchers {
                if w.synced && w.progress_notify {
                    let _ = s.tx.try_send(Ok(progress_of(header, *id)));
                }
            }
        }
    }

    /// After the store was replaced (snapshot install), every watcher catches up again
    /// from the first revision it has not seen.
    pub fn resync(self: &Arc<Self>, revision: i64) {
        let mut restart = Vec::new();
        {
            let mut h = self.lock();
            let from = h.notified + 1;
            h.notified = revision;
            let sids: Vec<u64> = h.streams.keys().copied().collect();
            for sid in sids {
                let ids: Vec<i64> = h.streams[&sid].watchers.keys().copied().collect();
                for id in ids {
                    let Some(w) = h.streams.get_mut(&sid).and_then(|s| s.watchers.get_mut(&id)) else { continue };
                    if w.synced {
                        w.synced = false;
                        w.epoch += 1;
                        let (epoch, k, e) = (w.epoch, w.key.clone(), w.end.clone());
                        h.unindex((sid, id), &k, &e);
                        restart.push(((sid, id), from, epoch));
                    }
                }
            }
        }
        for (wk, from, epoch) in restart {
            self.metrics.catching_up.fetch_add(1, Ordering::Relaxed);
            let hub = self.clone();
            self.tasks.spawn(async move { hub.catch_up(wk, from, epoch).await });
        }
    }

    /// Run progress notifications every `interval` until shutdown.
    pub async fn run_progress(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => self.progress_tick(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::state_machine::StateMachine;
    use cairn_api::etcdserverpb::PutRequest;
    use cairn_store::WriteBatch;

    /// A state machine on a fresh engine, and a way to put keys and publish their events.
    fn setup(dir: &std::path::Path) -> StateMachine {
        let engine = cairn_store::engine::open(cairn_store::EngineKind::Redb, &dir.join("db")).expect("engine");
        let lessor = Arc::new(crate::lease::Lessor::new(Duration::from_secs(1)));
        StateMachine::open(engine, dir.join("snap"), 1 << 20, lessor, crate::state::Headers::new(1, 1))
            .expect("state machine")
    }

    fn put(sm: &StateMachine, k: &str, v: &str) {
        let (rev, events) = {
            let mut st = sm.state.write().expect("lock");
            st.mvcc.put(&PutRequest { key: k.into(), value: v.into(), ..Default::default() }, &|_| false).expect("put");
            st.mvcc.commit(WriteBatch::new(), false).expect("commit");
            (st.mvcc.current_revision(), st.mvcc.take_events())
        };
        sm.hub.notify(rev, events);
    }

    async fn recv(rx: &mut mpsc::Receiver<Result<Outgoing, Error>>) -> WatchResponse {
        let out = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("in time").expect("open");
        out.expect("ok").decode().expect("decodes")
    }

    async fn wait_synced(hub: &WatchHub) {
        while hub.metrics.catching_up.load(Ordering::Relaxed) != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn history_then_live_without_gaps_or_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sm = setup(dir.path());
        put(&sm, "a", "1"); // rev 2
        put(&sm, "a", "2"); // rev 3
        let (tx, mut rx) = mpsc::channel(16);
        let sid = sm.hub.open_stream(tx.clone());
        sm.hub
            .create(sid, WatchCreateRequest { key: "a".into(), start_revision: 2, ..Default::default() }, None, &tx)
            .await;
        assert!(recv(&mut rx).await.created);
        put(&sm, "a", "3"); // rev 4, published while (or after) history is replayed
        let mut revs = vec![];
        while revs.len() < 3 {
            for e in recv(&mut rx).await.events {
                revs.push(e.kv.map_or(0, |kv| kv.mod_revision));
            }
        }
        assert_eq!(revs, vec![2, 3, 4]);
        wait_synced(&sm.hub).await;
        put(&sm, "b", "x"); // not watched
        put(&sm, "a", "4"); // rev 6
        assert_eq!(recv(&mut rx).await.events[0].kv.as_ref().map(|kv| kv.mod_revision), Some(6));
        sm.hub.cancel(sid, 0, &tx).await;
        assert!(recv(&mut rx).await.canceled);
        assert_eq!(sm.hub.metrics.watchers.load(Ordering::Relaxed), 0);
        sm.hub.close_stream(sid);
        sm.hub.stop().await;
    }

    /// Regression: a client that saw revision N on one member resumes on a member that has
    /// applied less than N. The watch must start at N + 1, not at the member's revision + 1
    /// (found by the SDK's failover test as a duplicated event).
    #[tokio::test]
    async fn a_start_revision_ahead_of_the_member_skips_nothing_and_repeats_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sm = setup(dir.path());
        put(&sm, "a", "1"); // rev 2
        let (tx, mut rx) = mpsc::channel(16);
        let sid = sm.hub.open_stream(tx.clone());
        sm.hub
            .create(sid, WatchCreateRequest { key: "a".into(), start_revision: 4, ..Default::default() }, None, &tx)
            .await;
        assert!(recv(&mut rx).await.created);
        wait_synced(&sm.hub).await;
        put(&sm, "a", "2"); // rev 3: before the start revision, not owed
        put(&sm, "a", "3"); // rev 4
        let first = recv(&mut rx).await;
        assert_eq!(first.events.iter().map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision)).collect::<Vec<_>>(), [4]);
        sm.hub.close_stream(sid);
        sm.hub.stop().await;
    }

    #[tokio::test]
    async fn a_full_stream_moves_its_watcher_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sm = setup(dir.path());
        let (tx, mut rx) = mpsc::channel(2);
        let sid = sm.hub.open_stream(tx.clone());
        sm.hub.create(sid, WatchCreateRequest { key: "k".into(), ..Default::default() }, None, &tx).await;
        assert!(recv(&mut rx).await.created);
        wait_synced(&sm.hub).await;
        // Nobody reads: the channel fills and notify must not block.
        for i in 0..20 {
            put(&sm, "k", &i.to_string());
        }
        assert!(sm.hub.metrics.slow_events.load(Ordering::Relaxed) >= 1);
        let mut revs = vec![];
        while revs.len() < 20 {
            for e in recv(&mut rx).await.events {
                revs.push(e.kv.map_or(0, |kv| kv.mod_revision));
            }
        }
        assert_eq!(revs, (2..22).collect::<Vec<i64>>(), "caught up from the store, in order, once");
        sm.hub.close_stream(sid);
        assert_eq!(sm.hub.metrics.watchers.load(Ordering::Relaxed), 0);
        sm.hub.stop().await;
    }
}
