//! etcd's Watch service: one bidirectional stream carries many watchers. Requests are
//! read by one task per stream and handed to the [`WatchHub`]; responses flow back
//! through the stream's bounded channel.

use super::Ctx;
use crate::auth::gate::Credentials;
use crate::watch::STREAM_BUFFER;
use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::watch_server::Watch;
use cairn_api::etcdserverpb::{WatchRequest, WatchResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

/// The Watch service of one member.
pub struct WatchService {
    ctx: Ctx,
}

impl WatchService {
    /// The Watch service of the member behind `ctx`.
    pub fn new(ctx: &Ctx) -> Self {
        Self { ctx: ctx.clone() }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<BoxStream<WatchResponse>>, Status> {
        let require_leader = super::requires_leader(request.metadata().as_ref());
        Ok(Response::new(self.open(Credentials::of(&request), require_leader, request.into_inner())))
    }
}

impl WatchService {
    /// Serve one watch stream: requests from `inbound` (a gRPC stream, or the
    /// gateway's JSON) by the client with `credentials`, responses on the returned
    /// stream. With auth on, each watcher needs READ on its range.
    ///
    /// With `require_leader` (the client's `hasleader` metadata) the stream ends with
    /// `etcdserver: no leader` once this member has been without a leader for three
    /// election timeouts.
    pub fn open<S>(&self, credentials: Credentials, require_leader: bool, mut inbound: S) -> BoxStream<WatchResponse>
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let ctx = self.ctx.clone();
        let hub = ctx.replica.hub().clone();
        let shutdown = ctx.shutdown.clone();
        let sid = hub.open_stream(tx.clone());
        self.ctx.tasks.spawn(async move {
            let leader_lost = super::leader_lost(ctx.replica.as_ref(), ctx.limits.election_timeout);
            tokio::pin!(leader_lost);
            loop {
                let msg = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tx.closed() => break,
                    _ = &mut leader_lost, if require_leader => {
                        let _ = tx.send(Err(crate::error::Error::NoLeader)).await;
                        break;
                    }
                    m = inbound.next() => m.transpose(),
                };
                match msg {
                    Ok(Some(WatchRequest { request_union: Some(u) })) => match u {
                        RequestUnion::CreateRequest(c) => {
                            // The caller is resolved for every create: auth may have been
                            // turned on, or a token may have expired, since the stream opened.
                            let who = ctx.gate.identify_by(credentials.clone()).await;
                            let allowed =
                                who.as_ref().is_ok_and(|w| ctx.gate.check_read(w, &c.key, &c.range_end).is_ok());
                            if let (true, Ok(who)) = (allowed, who) {
                                // Watchers are checked again whenever auth changes (the hub
                                // cancels those their owner may no longer read).
                                hub.create(sid, c, Some(who.user), &tx).await
                            } else {
                                let rev = ctx.replica.with_state(|st| st.mvcc.current_revision());
                                let denied = WatchResponse {
                                    header: Some(ctx.replica.header(rev)),
                                    watch_id: -1,
                                    created: true,
                                    canceled: true,
                                    cancel_reason: crate::error::msg::WATCH_DENIED.to_string(),
                                    ..Default::default()
                                };
                                if tx.send(Ok(denied)).await.is_err() {
                                    break;
                                }
                            }
                        }
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
        Box::pin(ReceiverStream::new(rx).map(|r| r.map_err(Status::from)))
    }
}
