//! Coalesced watches. Client watchers of the same key range (and `prev_kv` choice) that
//! start "now" share one upstream watch — a *broadcast* — whose events the proxy copies to
//! each of them, applying their filters itself; a watcher asking for history gets a
//! broadcast of its own. Each broadcast is one gRPC watch stream to one member.
//!
//! Guarantees, per client watcher: its `created` response comes first and names the
//! revision after which it sees every event of its range, once and in order. That holds
//! when the upstream stream breaks (the broadcast re-creates its watch on the next member
//! from the first revision it has not seen, and drops anything it already passed on) and
//! when a client is slow: a watcher whose stream's outbox is full leaves the broadcast
//! (nobody else waits for it) and continues on a broadcast of its own from its next
//! revision. A compaction past that revision cancels it with `compact_revision`, as etcd.

use super::namespace::{Namespace, Namespaced};
use super::upstream::{pass, Upstream};
use super::ProxyMetrics;
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::watch_client::WatchClient;
use cairn_api::etcdserverpb::watch_create_request::FilterType;
use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::watch_server::Watch;
use cairn_api::etcdserverpb::{
    RangeRequest, ResponseHeader, WatchCancelRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use cairn_api::mvccpb::event::EventType;
use cairn_api::mvccpb::Event;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::codegen::BoxStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

/// Responses a client stream may have waiting, per watcher on it, before its watchers
/// count as slow (a stream with many watchers gets one response per watcher per event).
const OUTBOX_PER_WATCHER: usize = 1024;

/// What makes two watchers share an upstream watch.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Range {
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
}

/// A response queued for a client stream. Events fanned out to many watchers are shared,
/// not copied, while they wait, and one entry serves every watcher of the stream they are
/// for: each watcher's message is built only when it is sent.
enum Out {
    Response(WatchResponse),
    Events { header: Option<ResponseHeader>, watch_ids: Vec<i64>, events: Arc<Vec<Event>> },
}

impl Out {
    /// How many messages this entry becomes.
    fn len(&self) -> usize {
        match self {
            Out::Response(_) => 1,
            Out::Events { watch_ids, .. } => watch_ids.len(),
        }
    }
}

/// A client stream's messages, one at a time, from its queue.
struct Responses {
    rx: mpsc::UnboundedReceiver<Result<Out, Status>>,
    queue: Arc<Queue>,
    /// The entry being sent.
    current: Option<Sending>,
}

/// An entry being sent: its header, events, and the watchers still owed a message.
type Sending = (Option<ResponseHeader>, Arc<Vec<Event>>, std::vec::IntoIter<i64>);

impl tokio_stream::Stream for Responses {
    type Item = Result<WatchResponse, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            if let Some((header, events, ids)) = self.current.as_mut() {
                if let Some(watch_id) = ids.next() {
                    let (header, events) = (*header, (**events).clone());
                    self.queue.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Poll::Ready(Some(Ok(WatchResponse { header, watch_id, events, ..Default::default() })));
                }
                self.current = None;
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(Out::Events { header, watch_ids, events }))) => {
                    self.current = Some((header, events, watch_ids.into_iter()));
                }
                Poll::Ready(Some(other)) => {
                    self.queue.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Poll::Ready(Some(other.map(|o| match o {
                        Out::Response(r) => r,
                        Out::Events { .. } => WatchResponse::default(),
                    })));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl From<WatchResponse> for Out {
    fn from(r: WatchResponse) -> Out {
        Out::Response(r)
    }
}

/// Where a client stream's responses go: a queue bounded by its number of watchers.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::UnboundedSender<Result<Out, Status>>,
    queue: Arc<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: AtomicUsize,
    watchers: AtomicUsize,
}

/// Why a response was not queued.
enum Refused {
    /// The client is behind by more than its share.
    Full,
    /// The client stream is gone.
    Closed,
}

impl Outbox {
    fn new() -> (Outbox, Responses) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(Queue::default());
        let stream = Responses { rx, queue: queue.clone(), current: None };
        (Outbox { tx, queue }, stream)
    }

    /// Queue an event response, unless the client is too far behind.
    fn try_send(&self, m: Result<Out, Status>) -> Result<(), Refused> {
        let limit = OUTBOX_PER_WATCHER * self.queue.watchers.load(Ordering::Relaxed).max(1);
        if self.queue.waiting.load(Ordering::Relaxed) >= limit {
            return Err(Refused::Full);
        }
        self.push(m)
    }

    /// Queue a control response (created, canceled, progress): never refused for fullness.
    fn push(&self, m: Result<Out, Status>) -> Result<(), Refused> {
        let n = m.as_ref().map_or(1, Out::len);
        self.queue.waiting.fetch_add(n, Ordering::Relaxed);
        self.tx.send(m).map_err(|_| Refused::Closed)
    }

    async fn send(&self, m: Result<Out, Status>) -> Result<(), Refused> {
        self.push(m)
    }

    async fn closed(&self) {
        self.tx.closed().await
    }
}

/// Which broadcast a client watcher is on now (it changes when a slow one is moved).
type Slot = Arc<Mutex<Option<Arc<Broadcast>>>>;

fn current(slot: &Slot) -> Option<Arc<Broadcast>> {
    slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

/// One client watcher.
struct Subscriber {
    watch_id: i64,
    slot: Slot,
    outbox: Outbox,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// Its `created` response is still owed (the upstream watch is not created yet).
    owes_created: bool,
    /// The first revision not yet passed on to it.
    next_rev: i64,
}

impl Subscriber {
    fn response(&self, header: &Option<ResponseHeader>) -> WatchResponse {
        WatchResponse { header: *header, watch_id: self.watch_id, ..Default::default() }
    }
}

/// A subscriber's identity: its client stream and watch id.
type SubId = (u64, i64);

struct BroadcastState {
    subs: HashMap<SubId, Subscriber>,
    /// The first revision not yet received from upstream (0: not created yet).
    next_rev: i64,
    /// The last header seen from upstream.
    header: Option<ResponseHeader>,
    closed: bool,
}

/// One upstream watch and the client watchers it feeds.
struct Broadcast {
    range: Range,
    /// In the shared registry (watchers from "now" may join).
    shared: bool,
    /// Where the upstream watch starts when first created (0: now).
    start: i64,
    /// The credentials the upstream watch is opened with (its first watcher's).
    credentials: MetadataMap,
    state: Mutex<BroadcastState>,
    stop: CancellationToken,
}

impl Broadcast {
    fn lock(&self) -> std::sync::MutexGuard<'_, BroadcastState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The Watch service of the proxy.
#[derive(Clone)]
pub struct WatchProxy {
    inner: Arc<Inner>,
}

struct Inner {
    up: Arc<Upstream>,
    ns: Arc<Namespace>,
    metrics: ProxyMetrics,
    stop: CancellationToken,
    /// Broadcasts that watchers from "now" may join, by range.
    shared: Mutex<HashMap<Range, Arc<Broadcast>>>,
    next_stream: AtomicU64,
}

impl WatchProxy {
    pub fn new(up: Arc<Upstream>, ns: Arc<Namespace>, metrics: ProxyMetrics, stop: CancellationToken) -> WatchProxy {
        WatchProxy {
            inner: Arc::new(Inner { up, ns, metrics, stop, shared: Mutex::default(), next_stream: AtomicU64::new(1) }),
        }
    }
}

#[tonic::async_trait]
impl Watch for WatchProxy {
    async fn watch(&self, req: Request<Streaming<WatchRequest>>) -> Result<Response<BoxStream<WatchResponse>>, Status> {
        let (meta, _, inbound) = req.into_parts();
        let (outbox, responses) = Outbox::new();
        let stream = ClientStream {
            id: self.inner.next_stream.fetch_add(1, Ordering::Relaxed),
            inner: self.inner.clone(),
            credentials: meta,
            outbox,
            watchers: HashMap::new(),
            next_id: 0,
        };
        tokio::spawn(stream.run(inbound));
        Ok(Response::new(Box::pin(responses)))
    }
}

/// One client's watch stream: its requests, and the broadcasts its watchers are on.
struct ClientStream {
    id: u64,
    inner: Arc<Inner>,
    credentials: MetadataMap,
    outbox: Outbox,
    /// Its watchers, by watch id, and the broadcast each is on now.
    watchers: HashMap<i64, Slot>,
    next_id: i64,
}

impl ClientStream {
    async fn run(mut self, mut inbound: Streaming<WatchRequest>) {
        loop {
            let msg = tokio::select! {
                _ = self.inner.stop.cancelled() => break,
                _ = self.outbox.closed() => break,
                m = inbound.next() => m,
            };
            let Some(Ok(req)) = msg else { break };
            match req.request_union {
                Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
                Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id })) => self.cancel(watch_id).await,
                Some(RequestUnion::ProgressRequest(_)) => self.progress().await,
                None => {}
            }
        }
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.leave(id);
        }
    }

    /// Take watcher `watch_id` off its broadcast.
    fn leave(&mut self, watch_id: i64) -> bool {
        let Some(slot) = self.watchers.remove(&watch_id) else { return false };
        self.outbox.queue.watchers.fetch_sub(1, Ordering::Relaxed);
        // A watcher being moved off a broadcast (slow client) is found on its new one.
        while let Some(b) = current(&slot) {
            self.inner.unsubscribe(&b, (self.id, watch_id));
            if current(&slot).is_some_and(|now| Arc::ptr_eq(&now, &b)) {
                break;
            }
        }
        true
    }

    async fn create(&mut self, mut c: WatchCreateRequest) {
        self.inner.ns.range(&mut c.key, &mut c.range_end);
        let watch_id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        // Joining a watch someone else opened must not skip this caller's own permission
        // check: a read of the range with its credentials decides, as etcd's proxy does.
        let check = RangeRequest {
            key: c.key.clone(),
            range_end: c.range_end.clone(),
            serializable: true,
            count_only: true,
            limit: 1,
            ..Default::default()
        };
        let mut kv = KvClient::new(self.inner.up.channel());
        if let Err(s) = kv.range(pass(&self.credentials, check)).await {
            let refused = WatchResponse {
                watch_id,
                created: true,
                canceled: true,
                cancel_reason: format!("rpc error: code = {:?} desc = {}", s.code(), s.message()),
                ..Default::default()
            };
            let _ = self.outbox.send(Ok(refused.into())).await;
            return;
        }
        if self.watchers.contains_key(&watch_id) {
            let _ = self.outbox.send(Err(Status::invalid_argument("etcdserver: watch id already exists"))).await;
            return;
        }
        self.next_id = self.next_id.max(watch_id + 1);
        let filters: HashSet<i32> = c.filters.iter().copied().collect();
        let slot = Slot::default();
        let sub = Subscriber {
            watch_id,
            slot: slot.clone(),
            outbox: self.outbox.clone(),
            no_put: filters.contains(&(FilterType::Noput as i32)),
            no_delete: filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
            owes_created: true,
            next_rev: c.start_revision,
        };
        let range = Range { key: c.key, range_end: c.range_end, prev_kv: c.prev_kv };
        self.inner.subscribe(range, c.start_revision, &self.credentials, (self.id, sub));
        self.watchers.insert(watch_id, slot);
        self.outbox.queue.watchers.fetch_add(1, Ordering::Relaxed);
    }

    async fn cancel(&mut self, watch_id: i64) {
        if self.leave(watch_id) {
            let r = WatchResponse { watch_id, canceled: true, ..Default::default() };
            let _ = self.outbox.send(Ok(r.into())).await;
        }
    }

    /// Everything up to the lowest revision any of this stream's watchers has been
    /// brought to was sent before this answer.
    async fn progress(&mut self) {
        let mut low: Option<(i64, Option<ResponseHeader>)> = None;
        for (id, slot) in &self.watchers {
            let Some(b) = current(slot) else { continue };
            let st = b.lock();
            if let Some(s) = st.subs.get(&(self.id, *id)) {
                let rev = s.next_rev - 1;
                if low.as_ref().is_none_or(|(r, _)| rev < *r) {
                    low = Some((rev, st.header));
                }
            }
        }
        let header = match low {
            Some((rev, Some(mut h))) => {
                h.revision = rev;
                Some(h)
            }
            _ => {
                let req = RangeRequest { key: vec![0], serializable: true, count_only: true, ..Default::default() };
                let mut kv = KvClient::new(self.inner.up.channel());
                kv.range(pass(&self.credentials, req)).await.ok().and_then(|r| r.into_inner().header)
            }
        };
        let _ = self.outbox.send(Ok(WatchResponse { header, watch_id: -1, ..Default::default() }.into())).await;
    }
}

impl Inner {
    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<Range, Arc<Broadcast>>> {
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Put `sub` on a broadcast of `range`: the shared one for watchers from now (or from
    /// exactly where it is), else one of its own from `start`.
    fn subscribe(self: &Arc<Self>, range: Range, start: i64, credentials: &MetadataMap, sub: (u64, Subscriber)) {
        let mut registry = self.registry();
        if let Some(b) = registry.get(&range).cloned() {
            let mut st = b.lock();
            if !st.closed && (start == 0 || (st.next_rev > 0 && start == st.next_rev)) {
                self.metrics.coalesced_total.inc();
                self.add(&b, &mut st, sub);
                return;
            }
        }
        let shared = start == 0;
        let b = self.spawn(range.clone(), start, shared, credentials.clone());
        if shared {
            registry.insert(range, b.clone());
        }
        let mut st = b.lock();
        self.add(&b, &mut st, sub);
    }

    /// Add `sub` to `b`: its `created` answer goes at once if the upstream watch exists.
    fn add(&self, b: &Arc<Broadcast>, st: &mut BroadcastState, (stream, mut sub): (u64, Subscriber)) {
        self.metrics.client_watchers.inc();
        *sub.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(b.clone());
        if st.next_rev > 0 {
            if sub.owes_created {
                let mut r = sub.response(&st.header);
                r.created = true;
                if let Some(h) = r.header.as_mut() {
                    h.revision = st.next_rev - 1;
                }
                let _ = sub.outbox.push(Ok(r.into()));
                sub.owes_created = false;
            }
            if sub.next_rev == 0 {
                sub.next_rev = st.next_rev;
            }
        }
        st.subs.insert((stream, sub.watch_id), sub);
    }

    fn unsubscribe(&self, b: &Arc<Broadcast>, id: SubId) {
        let mut registry = self.registry();
        let mut st = b.lock();
        if st.subs.remove(&id).is_some() {
            self.metrics.client_watchers.dec();
        }
        if st.subs.is_empty() {
            close(&mut registry, b, &mut st);
        }
    }

    /// A new broadcast and its upstream task.
    fn spawn(self: &Arc<Self>, range: Range, start: i64, shared: bool, credentials: MetadataMap) -> Arc<Broadcast> {
        let b = Arc::new(Broadcast {
            range,
            shared,
            start,
            credentials,
            state: Mutex::new(BroadcastState { subs: HashMap::new(), next_rev: 0, header: None, closed: false }),
            stop: self.stop.child_token(),
        });
        tokio::spawn(self.clone().upstream(b.clone()));
        b
    }

    /// Keep `b`'s upstream watch open until nobody uses it: on failure, again on the next
    /// member from the first revision not yet seen.
    async fn upstream(self: Arc<Self>, b: Arc<Broadcast>) {
        let mut member = 0usize;
        let mut failures = 0u32;
        loop {
            let next = b.lock().next_rev;
            let from = if next > 0 { next } else { b.start };
            let create = WatchCreateRequest {
                key: b.range.key.clone(),
                range_end: b.range.range_end.clone(),
                start_revision: from,
                prev_kv: b.range.prev_kv,
                progress_notify: true,
                ..Default::default()
            };
            let (tx, rx) = mpsc::channel(1);
            let _ = tx.try_send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) });
            let mut client = WatchClient::new(self.up.member(member)).max_decoding_message_size(usize::MAX);
            let opened = tokio::select! {
                _ = b.stop.cancelled() => return,
                r = client.watch(pass(&b.credentials, ReceiverStream::new(rx))) => r,
            };
            let ended = match opened {
                Ok(resp) => {
                    self.metrics.upstream_watch_streams.inc();
                    let end = self.pump(&b, resp.into_inner(), &mut failures).await;
                    self.metrics.upstream_watch_streams.dec();
                    drop(tx);
                    end
                }
                Err(s) => Pump::Broken(s),
            };
            match ended {
                Pump::Done => return,
                Pump::Broken(s) => {
                    // Another member next time; back off while none answers.
                    failures += 1;
                    member = (member + 1) % self.up.len().max(1);
                    self.metrics.upstream_rewatches_total.inc();
                    tracing::warn!(error = %s, member = %self.up.endpoints()[member], "upstream watch broke; watching again from the next member");
                    let wait = Duration::from_millis(50 * u64::from(failures.min(20)));
                    tokio::select! {
                        _ = b.stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Pass `b`'s upstream responses on until it is stopped, cancelled or broken.
    async fn pump(
        self: &Arc<Self>,
        b: &Arc<Broadcast>,
        mut responses: Streaming<WatchResponse>,
        failures: &mut u32,
    ) -> Pump {
        loop {
            let r = tokio::select! {
                _ = b.stop.cancelled() => return Pump::Done,
                r = responses.next() => r,
            };
            let mut r = match r {
                Some(Ok(r)) => r,
                Some(Err(s)) => return Pump::Broken(s),
                None => return Pump::Broken(Status::unavailable("the upstream watch stream ended")),
            };
            if r.canceled {
                self.cancel_all(b, &r);
                return Pump::Done;
            }
            r.leave(&self.ns);
            *failures = 0;
            let mut moved = Vec::new();
            {
                let mut st = b.lock();
                st.header = r.header;
                let revision = r.header.as_ref().map_or(0, |h| h.revision);
                if r.created {
                    if st.next_rev == 0 {
                        st.next_rev = if b.start > 0 { b.start } else { revision + 1 };
                        self.created(&mut st);
                    }
                    continue;
                }
                if r.events.is_empty() {
                    // A progress notification: nothing before it is still to come.
                    st.next_rev = st.next_rev.max(revision + 1);
                    self.progressed(&mut st, &r.header);
                    continue;
                }
                let revs = r.events.iter().filter_map(|e| e.kv.as_ref()).map(|kv| kv.mod_revision);
                let (first, last) = (revs.clone().min().unwrap_or(0), revs.max().unwrap_or(0));
                let header = r.header;
                // Every watcher that wants all of them shares one copy, and the watchers of
                // one client stream share one queue entry; the others get their own.
                let all = Arc::new(std::mem::take(&mut r.events));
                let mut shared: HashMap<u64, (Outbox, Vec<i64>, Vec<SubId>)> = HashMap::new();
                let mut own: Vec<(SubId, Outbox, Arc<Vec<Event>>)> = Vec::new();
                for (id, sub) in st.subs.iter() {
                    if sub.next_rev <= first && !sub.no_put && !sub.no_delete {
                        let entry = shared.entry(id.0).or_insert_with(|| (sub.outbox.clone(), Vec::new(), Vec::new()));
                        entry.1.push(sub.watch_id);
                        entry.2.push(*id);
                        continue;
                    }
                    let some: Vec<_> = all
                        .iter()
                        .filter(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= sub.next_rev))
                        .filter(|e| {
                            let put = e.r#type == EventType::Put as i32;
                            !(put && sub.no_put || !put && sub.no_delete)
                        })
                        .cloned()
                        .collect();
                    if !some.is_empty() {
                        own.push((*id, sub.outbox.clone(), Arc::new(some)));
                    }
                }
                for (outbox, watch_ids, ids) in shared.into_values() {
                    let out = Out::Events { header, watch_ids, events: all.clone() };
                    if let Err(Refused::Full) = outbox.try_send(Ok(out)) {
                        moved.extend(ids);
                    }
                }
                for (id, outbox, events) in own {
                    let out = Out::Events { header, watch_ids: vec![id.1], events };
                    if let Err(Refused::Full) = outbox.try_send(Ok(out)) {
                        moved.push(id);
                    }
                }
                let slow: HashSet<SubId> = moved.iter().copied().collect();
                for (id, sub) in st.subs.iter_mut() {
                    if !slow.contains(id) {
                        sub.next_rev = sub.next_rev.max(last + 1);
                    }
                }
                st.next_rev = st.next_rev.max(last + 1);
                for id in &moved {
                    if let Some(sub) = st.subs.remove(id) {
                        self.metrics.client_watchers.dec();
                        self.move_slow(b, id.0, sub);
                    }
                }
            }
            if !moved.is_empty() {
                self.close_if_empty(b);
            }
        }
    }

    /// The upstream watch exists: owed `created` answers go out.
    fn created(&self, st: &mut BroadcastState) {
        let (next, header) = (st.next_rev, st.header);
        for sub in st.subs.values_mut() {
            if sub.owes_created {
                let mut r = sub.response(&header);
                r.created = true;
                if let Some(h) = r.header.as_mut() {
                    h.revision = h.revision.max(next - 1);
                }
                let _ = sub.outbox.push(Ok(r.into()));
                sub.owes_created = false;
            }
            if sub.next_rev == 0 {
                sub.next_rev = next;
            }
        }
    }

    /// Pass a progress notification to the watchers that asked for them.
    fn progressed(&self, st: &mut BroadcastState, header: &Option<ResponseHeader>) {
        let next = st.next_rev;
        for sub in st.subs.values_mut() {
            sub.next_rev = sub.next_rev.max(next);
            if sub.progress_notify {
                let _ = sub.outbox.push(Ok(sub.response(header).into()));
            }
        }
    }

    /// A slow watcher continues on a broadcast of its own from its next revision (what it
    /// was already given stays queued before it).
    fn move_slow(self: &Arc<Self>, from: &Broadcast, stream: u64, sub: Subscriber) {
        tracing::debug!(
            watch_id = sub.watch_id,
            next = sub.next_rev,
            "slow client watcher moved to its own upstream watch"
        );
        self.metrics.slow_watchers_moved_total.inc();
        let b = self.spawn(from.range.clone(), sub.next_rev, false, from.credentials.clone());
        let mut st = b.lock();
        self.add(&b, &mut st, (stream, sub));
    }

    fn close_if_empty(&self, b: &Arc<Broadcast>) {
        let mut registry = self.registry();
        let mut st = b.lock();
        if st.subs.is_empty() {
            close(&mut registry, b, &mut st);
        }
    }

    /// The upstream watch was cancelled (compaction, permission): so is every watcher on it.
    fn cancel_all(&self, b: &Arc<Broadcast>, r: &WatchResponse) {
        let mut registry = self.registry();
        let mut st = b.lock();
        for sub in st.subs.values() {
            let mut out = sub.response(&r.header);
            out.canceled = true;
            out.created = sub.owes_created;
            out.compact_revision = r.compact_revision;
            out.cancel_reason = r.cancel_reason.clone();
            let _ = sub.outbox.push(Ok(out.into()));
            self.metrics.client_watchers.dec();
        }
        st.subs.clear();
        close(&mut registry, b, &mut st);
    }
}

/// End broadcast `b` (once): stop its upstream watch and take it out of the registry.
fn close(registry: &mut HashMap<Range, Arc<Broadcast>>, b: &Arc<Broadcast>, st: &mut BroadcastState) {
    if st.closed {
        return;
    }
    st.closed = true;
    b.stop.cancel();
    if b.shared && registry.get(&b.range).is_some_and(|r| Arc::ptr_eq(r, b)) {
        registry.remove(&b.range);
    }
}

/// How an upstream stream ended.
enum Pump {
    /// Nobody needs it any more, or it was cancelled: the broadcast is over.
    Done,
    /// It broke: watch again.
    Broken(Status),
}
