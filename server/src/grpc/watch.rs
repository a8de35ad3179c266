//! etcd's Watch service: one bidirectional stream carries many watchers. Requests are
//! read by one task per stream and handed to the [`WatchHub`]; responses flow back
//! through the stream's bounded channel, merged when they queue up ([`Coalesced`]).
//!
//! The gRPC service is written out here rather than generated: its responses go out as
//! [`Outgoing`] (events encoded once by the hub and shared by every watcher), which the
//! generated service, typed on `WatchResponse`, cannot carry. The wire is unchanged.
//!
//! [`WatchHub`]: crate::watch::WatchHub

use super::Ctx;
use crate::auth::gate::Credentials;
use crate::watch::coalesce::Coalesced;
use crate::watch::outgoing::Outgoing;
use crate::watch::STREAM_BUFFER;
use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::{WatchRequest, WatchResponse};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, BoxStream, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

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

/// `/etcdserverpb.Watch/Watch` over gRPC: [`WatchService`] behind tonic's streaming server,
/// with a codec that writes [`Outgoing`] responses.
#[derive(Clone)]
pub struct WatchServer {
    svc: Arc<WatchService>,
    max_request_bytes: usize,
}

impl WatchServer {
    /// Serve `svc`, taking requests of up to `max_request_bytes`.
    pub fn new(svc: Arc<WatchService>, max_request_bytes: usize) -> Self {
        Self { svc, max_request_bytes }
    }
}

impl NamedService for WatchServer {
    const NAME: &'static str = "etcdserverpb.Watch";
}

impl StreamingService<WatchRequest> for WatchServer {
    type Response = Outgoing;
    type ResponseStream = BoxStream<Outgoing>;
    type Future = BoxFuture<Response<BoxStream<Outgoing>>, Status>;

    fn call(&mut self, request: Request<Streaming<WatchRequest>>) -> Self::Future {
        let svc = self.svc.clone();
        Box::pin(async move {
            let require_leader = super::requires_leader(request.metadata().as_ref());
            Ok(Response::new(svc.open_encoded(Credentials::of(&request), require_leader, request.into_inner())))
        })
    }
}

impl<B> tower::Service<http::Request<B>> for WatchServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = self.clone();
        Box::pin(async move {
            if req.uri().path() != "/etcdserverpb.Watch/Watch" {
                return Ok(Status::unimplemented("").into_http());
            }
            let mut grpc =
                Grpc::new(WatchCodec).apply_max_message_size_config(Some(method.max_request_bytes), Some(usize::MAX));
            Ok(grpc.streaming(method, req).await)
        })
    }
}

/// Decodes `WatchRequest`s as tonic's prost codec does; encodes [`Outgoing`] responses.
#[derive(Clone, Copy, Default)]
struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = Outgoing;
    type Decode = WatchRequest;
    type Encoder = OutgoingEncoder;
    type Decoder = <ProstCodec<WatchResponse, WatchRequest> as Codec>::Decoder;

    fn encoder(&mut self) -> OutgoingEncoder {
        OutgoingEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<WatchResponse, WatchRequest>::default().decoder()
    }
}

struct OutgoingEncoder;

impl Encoder for OutgoingEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst);
        Ok(())
    }
}

impl WatchService {
    /// Serve one watch stream: requests from `inbound` (a gRPC stream, or the
    /// gateway's JSON) by the client with `credentials`, responses on the returned
    /// stream. With auth on, each watcher needs READ on its range.
    ///
    /// With `require_leader` (the client's `hasleader` metadata) the stream ends with
    /// `etcdserver: no leader` once this member has been without a leader for three
    /// election timeouts. Responses are decoded into `WatchResponse`s (the JSON gateway's
    /// side; gRPC takes them encoded, [`WatchService::open_encoded`]).
    pub fn open<S>(&self, credentials: Credentials, require_leader: bool, inbound: S) -> BoxStream<WatchResponse>
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    {
        let decode = |r: Result<Outgoing, Status>| r?.decode().map_err(|e| Status::internal(e.to_string()));
        Box::pin(self.open_encoded(credentials, require_leader, inbound).map(decode))
    }

    /// Serve one watch stream as [`WatchService::open`] does, with responses as they go out
    /// on gRPC.
    pub fn open_encoded<S>(&self, credentials: Credentials, require_leader: bool, mut inbound: S) -> BoxStream<Outgoing>
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
                                if tx.send(Ok(Outgoing::control(denied))).await.is_err() {
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
        let max_bytes = self.ctx.replica.hub().max_response_bytes();
        Box::pin(Coalesced::new(rx, max_bytes).map(|r| r.map_err(Status::from)))
    }
}
