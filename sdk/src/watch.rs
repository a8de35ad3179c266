//! Watches: a stream of changes to a key or range that outlives the member it started on.
//!
//! Each [`Client::watch`] runs one background task holding one gRPC watch stream. It
//! remembers the next revision it owes the caller (the last delivered event's revision + 1,
//! or the revision the server reported as covered), and when the stream breaks it fails
//! over and re-creates the watch from exactly there: no gap, no duplicate. A start
//! revision that has been compacted surfaces as [`Error::Compacted`] and ends the stream.

use crate::client::{Client, Inner, MAX_DECODE};
use crate::error::{Error, Result};
use crate::kv::{span_builders, Header, Span};
use cairn_api::etcdserverpb as pb;
use cairn_api::etcdserverpb::watch_client::WatchClient;
use cairn_api::mvccpb::Event;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

pub use cairn_api::mvccpb::event::EventType;

/// Options of a watch.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    span: Span,
    start_revision: i64,
    prev_kv: bool,
    progress_notify: bool,
    no_put: bool,
    no_delete: bool,
}

impl WatchOptions {
    /// Watch the one key, from now on.
    pub fn new() -> Self {
        Self::default()
    }
    /// Replay history from `revision` (inclusive) before live events.
    pub fn with_start_revision(mut self, revision: i64) -> Self {
        self.start_revision = revision;
        self
    }
    /// Include each key's previous pair in its event.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    /// Ask the server for periodic progress notifications (responses without events that
    /// tell the revision the watch has caught up to); they are delivered to the stream.
    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
    /// Leave out put events.
    pub fn with_no_put(mut self) -> Self {
        self.no_put = true;
        self
    }
    /// Leave out delete events.
    pub fn with_no_delete(mut self) -> Self {
        self.no_delete = true;
        self
    }
}

span_builders!(WatchOptions);

/// One delivery of a watch: the events of one or more revisions, in order, or (with no
/// events) a progress notification.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchResponse {
    /// Who sent it and the store's revision at the time.
    pub header: Header,
    /// The events, in revision order; a transaction's events are together.
    pub events: Vec<Event>,
}

impl WatchResponse {
    /// Whether this is a progress notification: every event up to `header.revision` has
    /// been delivered.
    pub fn is_progress_notify(&self) -> bool {
        self.events.is_empty()
    }
}

/// The stream of a watch. Dropping it cancels the watch.
///
/// ```no_run
/// # async fn demo(client: cairn_sdk::Client) -> cairn_sdk::Result<()> {
/// use cairn_sdk::{KeyValueExt, WatchOptions};
/// let mut watch = client.watch("/config/", WatchOptions::new().with_prefix()).await?;
/// while let Some(resp) = watch.message().await {
///     for ev in resp?.events {
///         let kind = ev.r#type();
///         let kv = ev.kv.unwrap_or_default();
///         println!("{kind:?} {} = {}", kv.key_str(), kv.value_str());
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct WatchStream {
    rx: mpsc::Receiver<Result<WatchResponse>>,
    task: tokio::task::JoinHandle<()>,
    progress: Arc<tokio::sync::Notify>,
    ns: Option<crate::namespace::Namespace>,
}

impl WatchStream {
    /// The next delivery; `None` after an error has been delivered.
    pub async fn message(&mut self) -> Option<Result<WatchResponse>> {
        let r = self.rx.recv().await;
        self.unprefixed(r)
    }

    /// The delivery with the namespace's prefix taken off its keys.
    fn unprefixed(&self, mut r: Option<Result<WatchResponse>>) -> Option<Result<WatchResponse>> {
        if let (Some(ns), Some(Ok(resp))) = (&self.ns, &mut r) {
            ns.events(&mut resp.events);
        }
        r
    }

    /// Ask the server for a progress notification (etcd's `RequestProgress`): a response
    /// with no events whose header revision every event up to has been delivered
    /// ([`WatchResponse::is_progress_notify`]). Useful to learn that a quiet watch is
    /// current, e.g. before serving reads from a cache it feeds.
    pub fn request_progress(&self) {
        self.progress.notify_one();
    }
}

impl tokio_stream::Stream for WatchStream {
    type Item = Result<WatchResponse>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let r = std::task::ready!(self.rx.poll_recv(cx));
        Poll::Ready(self.unprefixed(r))
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Watch a key (or a range, with [`WatchOptions`]). Returns once the server has
    /// created the watch, so every change after this call returns is delivered.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_sdk::Client) -> cairn_sdk::Result<()> {
    /// use cairn_sdk::WatchOptions;
    /// let start = client.get("/config/", None).await?.header.revision;
    /// // Every change after that read, even ones made before the watch was opened.
    /// let mut w = client.watch("/config/", WatchOptions::new().with_prefix().with_start_revision(start + 1)).await?;
    /// while let Some(resp) = w.message().await {
    ///     let resp = resp?;
    ///     println!("{} events at revision {}", resp.events.len(), resp.header.revision);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn watch(&self, key: impl Into<Vec<u8>>, opts: impl Into<Option<WatchOptions>>) -> Result<WatchStream> {
        let opts = opts.into().unwrap_or_default();
        let (key, range_end) = opts.span.apply(key.into());
        let mut filters = Vec::new();
        if opts.no_put {
            filters.push(pb::watch_create_request::FilterType::Noput as i32);
        }
        if opts.no_delete {
            filters.push(pb::watch_create_request::FilterType::Nodelete as i32);
        }
        let mut create = pb::WatchCreateRequest {
            key,
            range_end,
            start_revision: opts.start_revision,
            progress_notify: opts.progress_notify,
            filters,
            prev_kv: opts.prev_kv,
            watch_id: 0,
            fragment: false,
        };
        if let Some(ns) = &self.ns {
            ns.watch_request(&mut create);
        }
        let (tx, rx) = mpsc::channel(64);
        let (created_tx, created_rx) = oneshot::channel();
        let progress = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(run(self.inner.clone(), create, tx, created_tx, progress.clone()));
        let wait = async {
            match created_rx.await {
                Ok(r) => r,
                Err(_) => Err(Error::Unavailable("the watch task ended before the watch was created".into())),
            }
        };
        let created = match self.inner.opts.request_timeout {
            Some(t) => tokio::time::timeout(t, wait).await.unwrap_or(Err(Error::Timeout(t))),
            None => wait.await,
        };
        if let Err(e) = created {
            task.abort();
            return Err(e);
        }
        Ok(WatchStream { rx, task, progress, ns: self.ns.clone() })
    }
}

/// Why one stream ended.
enum Ended {
    /// The caller went away, or a final error was delivered.
    Done,
    /// The connection broke or the member stopped serving: fail over and resume.
    Broken(Error),
}

async fn run(
    inner: Arc<Inner>,
    mut create: pb::WatchCreateRequest,
    tx: mpsc::Sender<Result<WatchResponse>>,
    created_tx: oneshot::Sender<Result<()>>,
    progress: Arc<tokio::sync::Notify>,
) {
    let mut created_tx = Some(created_tx);
    let mut delays = inner.opts.retry.delays();
    loop {
        let conn = match inner.conn().await {
            Ok(c) => c,
            Err(e) => {
                if created_tx.is_none() && tx.is_closed() {
                    return;
                }
                tracing::debug!(%e, "watch: no member reachable; retrying");
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
                continue;
            }
        };
        let require_leader = inner.opts.require_leader;
        match stream_once(&conn.channel, require_leader, &mut create, &tx, &mut created_tx, &progress).await {
            Ended::Done => return,
            Ended::Broken(e) => {
                tracing::debug!(%e, next = create.start_revision, "watch stream broke; resuming on another member");
                if !(matches!(e, Error::InvalidAuthToken) && inner.token_refused()) {
                    inner.failed(&conn);
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
            }
        }
    }
}

/// Run one gRPC watch stream until it ends. Updates `create.start_revision` to the next
/// revision owed, so the caller can resume.
async fn stream_once(
    channel: &crate::client::AuthChannel,
    require_leader: bool,
    create: &mut pb::WatchCreateRequest,
    tx: &mpsc::Sender<Result<WatchResponse>>,
    created_tx: &mut Option<oneshot::Sender<Result<()>>>,
    progress: &tokio::sync::Notify,
) -> Ended {
    let (req_tx, req_rx) = mpsc::channel(1);
    // Progress requests sent and not yet answered: their answers are delivered even
    // without `progress_notify`.
    let mut asked = 0usize;
    let req = pb::WatchRequest { request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create.clone())) };
    // etcd answers a watch stream's headers only after its first message, so the create
    // request must be queued before the call is awaited.
    if req_tx.send(req).await.is_err() {
        return Ended::Done;
    }
    let mut client = WatchClient::new(channel.clone()).max_decoding_message_size(MAX_DECODE);
    let req = crate::client::stream_request(ReceiverStream::new(req_rx), require_leader);
    let mut stream = match client.watch(req).await {
        Ok(s) => s.into_inner(),
        Err(s) => return fail(Error::from(s), tx, created_tx).await,
    };
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = tx.closed(), if created_tx.is_none() => return Ended::Done,
            _ = progress.notified(), if created_tx.is_none() => {
                let req = pb::watch_request::RequestUnion::ProgressRequest(pb::WatchProgressRequest {});
                if req_tx.send(pb::WatchRequest { request_union: Some(req) }).await.is_err() {
                    return Ended::Broken(Error::Unavailable("watch stream closed".into()));
                }
                asked += 1;
                continue;
            }
        };
        let r = match msg {
            Ok(Some(r)) => r,
            Ok(None) => return Ended::Broken(Error::Unavailable("watch stream closed by the server".into())),
            Err(s) => return fail(Error::from(s), tx, created_tx).await,
        };
        let header = Header::from(r.header);
        if r.canceled {
            let err = if r.compact_revision > 0 {
                Error::Compacted { compact_revision: r.compact_revision }
            } else {
                Error::WatchCanceled(r.cancel_reason)
            };
            return deliver_final(err, tx, created_tx).await;
        }
        if r.created {
            // A watch from "now" owes every revision after the one the server reported.
            if create.start_revision == 0 {
                create.start_revision = header.revision + 1;
            }
            if let Some(c) = created_tx.take() {
                let _ = c.send(Ok(()));
            }
            if r.events.is_empty() {
                continue;
            }
        }
        if let Some(last) = r.events.last() {
            let next = last.kv.as_ref().map_or(0, |kv| kv.mod_revision) + 1;
            create.start_revision = create.start_revision.max(next);
        } else {
            // A progress notification: everything up to the header's revision was sent.
            create.start_revision = create.start_revision.max(header.revision + 1);
            if asked > 0 {
                asked -= 1;
            } else if !create.progress_notify {
                continue;
            }
        }
        if tx.send(Ok(WatchResponse { header, events: r.events })).await.is_err() {
            return Ended::Done;
        }
    }
}

/// A stream error: permanent ones go to the caller; transient ones make us resume.
async fn fail(
    err: Error,
    tx: &mpsc::Sender<Result<WatchResponse>>,
    created_tx: &mut Option<oneshot::Sender<Result<()>>>,
) -> Ended {
    // A refused token: the caller logs in again and resumes.
    let relogin = matches!(err, Error::InvalidAuthToken);
    if relogin
        || err.is_transient()
        || matches!(err, Error::Server { code: crate::error::Code::Cancelled | crate::error::Code::Unknown, .. })
    {
        Ended::Broken(err)
    } else {
        deliver_final(err, tx, created_tx).await
    }
}

async fn deliver_final(
    err: Error,
    tx: &mpsc::Sender<Result<WatchResponse>>,
    created_tx: &mut Option<oneshot::Sender<Result<()>>>,
) -> Ended {
    match created_tx.take() {
        Some(c) if !matches!(err, Error::Compacted { .. }) => {
            let _ = c.send(Err(err));
        }
        Some(c) => {
            let _ = c.send(Ok(()));
            let _ = tx.send(Err(err)).await;
        }
        None => {
            let _ = tx.send(Err(err)).await;
        }
    }
    Ended::Done
}
