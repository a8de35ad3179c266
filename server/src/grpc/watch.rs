//! etcd's Watch service: one bidirectional stream carries many watchers. Requests are
//! read by one task per stream and handed to the [`WatchHub`]; responses flow back
//! through the stream's bounded channel.

use crate::watch::{WatchHub, STREAM_BUFFER};
use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::watch_server::Watch;
use cairn_api::etcdserverpb::{WatchRequest, WatchResponse};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

/// The Watch service of one member.
pub struct WatchService {
    hub: Arc<WatchHub>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl WatchService {
    /// The Watch service over `hub`; stream tasks live on `tasks` until `shutdown`.
    pub fn new(hub: Arc<WatchHub>, tasks: TaskTracker, shutdown: CancellationToken) -> Self {
        Self { hub, tasks, shutdown }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<BoxStream<WatchResponse>>, Status> {
        Ok(Response::new(self.open(request.into_inner())))
    }
}

impl WatchService {
    /// Serve one watch stream: requests from `inbound` (a gRPC stream, or the
    /// gateway's JSON), responses on the returned stream.
    pub fn open<S>(&self, mut inbound: S) -> BoxStream<WatchResponse>
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let hub = self.hub.clone();
        let shutdown = self.shutdown.clone();
        let sid = hub.open_stream(tx.clone());
        self.tasks.spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tx.closed() => break,
                    m = inbound.next() => m.transpose(),
                };
                match msg {
                    Ok(Some(WatchRequest { request_union: Some(u) })) => match u {
                        RequestUnion::CreateRequest(c) => hub.create(sid, c, &tx).await,
                        RequestUnion::CancelRequest(c) => hub.cancel(sid, c.watch_id, &tx).await,
                        RequestUnion::ProgressRequest(_) => hub.progress(sid, &tx).await,
                    },
                    // An empty request carries nothing to do.
                    Ok(Some(_)) => {}
                    // The client closed its sending side: as etcd, keep its watchers
                    // until it stops receiving too.
                    Ok(None) => {
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = tx.closed() => {}
                        }
                        break;
                    }
                    Err(_) => break,
                }
            }
            hub.close_stream(sid);
        });
        Box::pin(ReceiverStream::new(rx))
    }
}
