//! Coalesced lease keepalives. Many clients keeping the same lease alive (every process of a
//! service keeping the machine's registration alive, say) cost the cluster one keepalive per
//! third of the lease's TTL, not one per client per third.
//!
//! Per (lease, caller's credentials) the proxy remembers the last refresh the cluster
//! answered: a keepalive within a third of the TTL of it is answered at once with the TTL
//! that is really left (the lease ends then unless refreshed again); a later one goes to the
//! cluster, and keepalives arriving while it is under way wait for its answer. Nothing is
//! refreshed on the proxy's own initiative: when the clients stop, the lease expires on
//! time. A revoked lease may be reported alive for up to a third of its TTL, as with etcd's
//! proxy.

use super::upstream::{pass, Upstream};
use super::ProxyMetrics;
use cairn_api::etcdserverpb::lease_client::LeaseClient;
use cairn_api::etcdserverpb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::codegen::BoxStream;
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};

/// Credentials as a map key (the token or authorization metadata, if any).
type Who = Option<Vec<u8>>;

/// What is known of one lease for one caller.
#[derive(Default)]
struct Kept {
    /// The cluster's last answer and when it came.
    last: Option<(LeaseKeepAliveResponse, Instant)>,
    /// Waiting for the answer to a refresh under way.
    waiting: Vec<oneshot::Sender<Result<LeaseKeepAliveResponse, Status>>>,
}

/// One upstream keepalive stream per caller.
struct Upstream1 {
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
}

/// The proxy's keepalive side.
pub struct KeepAlives {
    up: Arc<Upstream>,
    metrics: ProxyMetrics,
    leases: Mutex<HashMap<(i64, Who), Kept>>,
    streams: tokio::sync::Mutex<HashMap<Who, Upstream1>>,
}

enum Answer {
    Now(LeaseKeepAliveResponse),
    Wait(oneshot::Receiver<Result<LeaseKeepAliveResponse, Status>>, bool),
}

impl KeepAlives {
    pub fn new(up: Arc<Upstream>, metrics: ProxyMetrics) -> Arc<KeepAlives> {
        Arc::new(KeepAlives { up, metrics, leases: Mutex::default(), streams: tokio::sync::Mutex::default() })
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<(i64, Who), Kept>> {
        self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Serve one client keepalive stream.
    pub fn serve(
        self: &Arc<Self>,
        meta: MetadataMap,
        mut inbound: Streaming<LeaseKeepAliveRequest>,
    ) -> BoxStream<LeaseKeepAliveResponse> {
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move {
            let caller = super::upstream::caller(&meta);
            while let Some(Ok(req)) = tokio::select! {
                m = inbound.next() => m,
                _ = tx.closed() => None,
            } {
                let answer = me.keepalive(&meta, &caller, req.id).await;
                if tx.send(answer).await.is_err() {
                    break;
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }

    async fn keepalive(
        self: &Arc<Self>,
        meta: &MetadataMap,
        caller: &Who,
        id: i64,
    ) -> Result<LeaseKeepAliveResponse, Status> {
        let answer = {
            let mut leases = self.leases();
            if leases.len() > 4096 {
                // Forget leases nobody has kept alive for longer than their TTL.
                leases.retain(|_, k| {
                    !k.waiting.is_empty()
                        || k.last.as_ref().is_some_and(|(r, at)| at.elapsed().as_secs() < r.ttl as u64)
                });
            }
            let kept = leases.entry((id, caller.clone())).or_default();
            match &kept.last {
                Some((resp, at)) if resp.ttl > 0 && at.elapsed() < Duration::from_secs(resp.ttl as u64) / 3 => {
                    let left = Duration::from_secs(resp.ttl as u64).saturating_sub(at.elapsed());
                    let mut r = *resp;
                    r.ttl = left.as_secs() as i64;
                    Answer::Now(r)
                }
                _ => {
                    let (tx, rx) = oneshot::channel();
                    let first = kept.waiting.is_empty();
                    kept.waiting.push(tx);
                    Answer::Wait(rx, first)
                }
            }
        };
        match answer {
            Answer::Now(r) => {
                self.metrics.keepalives_answered_total.inc();
                Ok(r)
            }
            Answer::Wait(rx, first) => {
                if first {
                    self.metrics.keepalives_forwarded_total.inc();
                    self.send(meta, caller, id).await?;
                } else {
                    self.metrics.keepalives_answered_total.inc();
                }
                rx.await.map_err(|_| Status::unavailable("the keepalive stream to the cluster ended"))?
            }
        }
    }

    /// Send a keepalive for `id` on the caller's upstream stream (opened if needed).
    async fn send(self: &Arc<Self>, meta: &MetadataMap, caller: &Who, id: i64) -> Result<(), Status> {
        let mut streams = self.streams.lock().await;
        if let Some(s) = streams.get(caller) {
            if s.tx.send(LeaseKeepAliveRequest { id }).await.is_ok() {
                return Ok(());
            }
            streams.remove(caller);
        }
        let (tx, rx) = mpsc::channel(64);
        let _ = tx.try_send(LeaseKeepAliveRequest { id });
        let mut client = LeaseClient::new(self.up.channel());
        let responses = match client.lease_keep_alive(pass(meta, ReceiverStream::new(rx))).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                self.fail(caller, &s);
                return Err(s);
            }
        };
        streams.insert(caller.clone(), Upstream1 { tx });
        self.metrics.upstream_keepalive_streams.inc();
        let me = self.clone();
        let caller = caller.clone();
        tokio::spawn(async move { me.answers(caller, responses).await });
        Ok(())
    }

    /// Route the cluster's answers on one caller's stream to the keepalives waiting.
    async fn answers(self: Arc<Self>, caller: Who, mut responses: Streaming<LeaseKeepAliveResponse>) {
        let ended = loop {
            match responses.next().await {
                Some(Ok(r)) => {
                    let waiting = {
                        let mut leases = self.leases();
                        let kept = leases.entry((r.id, caller.clone())).or_default();
                        kept.last = (r.ttl > 0).then_some((r, Instant::now()));
                        let waiting = std::mem::take(&mut kept.waiting);
                        if kept.last.is_none() {
                            leases.remove(&(r.id, caller.clone()));
                        }
                        waiting
                    };
                    for w in waiting {
                        let _ = w.send(Ok(r));
                    }
                }
                Some(Err(s)) => break s,
                None => break Status::unavailable("the keepalive stream to the cluster ended"),
            }
        };
        self.metrics.upstream_keepalive_streams.dec();
        self.streams.lock().await.remove(&caller);
        self.fail(&caller, &ended);
    }

    /// Every keepalive of `caller` still waiting gets `s`.
    fn fail(&self, caller: &Who, s: &Status) {
        let mut leases = self.leases();
        for ((_, w), kept) in leases.iter_mut() {
            if w == caller {
                for tx in kept.waiting.drain(..) {
                    let _ = tx.send(Err(s.clone()));
                }
            }
        }
    }
}
