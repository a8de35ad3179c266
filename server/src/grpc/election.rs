//! etcd's Election service (`v3electionpb.Election`): Campaign, Proclaim, Leader,
//! Observe, Resign. The algorithm and key layout are etcd's `clientv3/concurrency.Election`
//! — candidates are `<name>/<lease id in hex>` on their leases, the first created leads, its
//! value is the proclamation — so `etcdctl elect`, Go programs and Cairn's Rust recipe on
//! the same name agree on the leader.

use super::local::Local;
use super::lock::{create_if_absent, created_at, relay, wait_turn, Pending};
use super::Ctx;
use crate::error::msg;
use cairn_api::etcdserverpb::request_op::Request as Op;
use cairn_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCreateRequest};
use cairn_api::mvccpb::event::EventType;
use cairn_api::prefix_end;
use cairn_api::v3electionpb::election_server::Election;
use cairn_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse,
    ResignRequest, ResignResponse,
};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

/// Responses buffered per Observe stream.
const OBSERVE_BUFFER: usize = 16;

/// The Election service of one member.
pub struct ElectionService {
    local: Arc<Local>,
}

impl ElectionService {
    /// The Election service of the member behind `ctx`.
    pub fn new(ctx: &Ctx) -> Self {
        Self { local: Arc::new(Local::new(ctx)) }
    }
}

/// Put `value` on the leader's key if it still leads.
async fn proclaim_as(local: &Local, leader: &LeaderKey, value: Vec<u8>) -> Result<i64, Status> {
    let put = PutRequest { key: leader.key.clone(), value, lease: leader.lease, ..Default::default() };
    let txn = TxnRequest {
        compare: vec![created_at(&leader.key, leader.rev)],
        success: vec![RequestOp { request: Some(Op::RequestPut(put)) }],
        failure: vec![],
    };
    let resp = local.txn(txn).await?;
    if !resp.succeeded {
        return Err(Status::unknown(msg::ELECTION_NOT_LEADER));
    }
    Ok(resp.header.map_or(0, |h| h.revision))
}

fn with_slash(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, req: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let local = self.local.acting_for(&req).await?;
        campaign(&local, req.into_inner()).await.map(Response::new).map_err(relay)
    }

    async fn proclaim(&self, req: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let local = self.local.acting_for(&req).await?;
        let r = req.into_inner();
        let leader = r.leader.ok_or_else(|| Status::unknown(msg::MISSING_LEADER_KEY))?;
        let rev = proclaim_as(&local, &leader, r.value).await.map_err(relay)?;
        Ok(Response::new(ProclaimResponse { header: Some(self.local.ctx.replica.header(rev)) }))
    }

    async fn leader(&self, req: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let local = self.local.acting_for(&req).await?;
        let prefix = with_slash(&req.into_inner().name);
        match local.first_created(&prefix).await.map_err(relay)? {
            (Some(kv), resp) => Ok(Response::new(LeaderResponse { header: resp.header, kv: Some(kv) })),
            (None, _) => Err(Status::unknown(msg::ELECTION_NO_LEADER)),
        }
    }

    async fn observe(&self, req: Request<LeaderRequest>) -> Result<Response<BoxStream<LeaderResponse>>, Status> {
        let local = self.local.acting_for(&req).await?;
        let prefix = with_slash(&req.into_inner().name);
        let (tx, rx) = mpsc::channel(OBSERVE_BUFFER);
        let shutdown = local.ctx.shutdown.clone();
        self.local.ctx.tasks.spawn(async move {
            tokio::select! {
                r = observe(&local, &prefix, &tx) => if let Err(s) = r { let _ = tx.send(Err(relay(s))).await; },
                _ = tx.closed() => {}
                _ = shutdown.cancelled() => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(&self, req: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let local = self.local.acting_for(&req).await?;
        let leader = req.into_inner().leader.ok_or_else(|| Status::unknown(msg::MISSING_LEADER_KEY))?;
        let del = DeleteRangeRequest { key: leader.key.clone(), ..Default::default() };
        let txn = TxnRequest {
            compare: vec![created_at(&leader.key, leader.rev)],
            success: vec![RequestOp { request: Some(Op::RequestDeleteRange(del)) }],
            failure: vec![],
        };
        let resp = local.txn(txn).await.map_err(relay)?;
        Ok(Response::new(ResignResponse { header: resp.header }))
    }
}

async fn campaign(local: &Arc<Local>, r: CampaignRequest) -> Result<CampaignResponse, Status> {
    let lease = local.lease_or_new(r.lease).await?;
    let prefix = with_slash(&r.name);
    let key = [prefix.as_slice(), format!("{lease:x}").as_bytes()].concat();
    let (rev, existing, _) = create_if_absent(local, &key, &r.value, lease).await?;
    let pending = Pending::new(local, key.clone(), rev);
    let leader = LeaderKey { name: r.name, key, rev, lease };
    // Campaigning again with the same lease keeps the place and updates the value.
    if existing.is_some_and(|v| v != r.value) {
        proclaim_as(local, &leader, r.value).await?;
    }
    let header = wait_turn(local, &prefix, &leader.key, rev, msg::ELECTION_NOT_LEADER).await?;
    pending.keep();
    Ok(CampaignResponse { header: Some(header), leader: Some(leader) })
}

/// Send the leader, then each new proclamation and each new leader, until the client goes.
async fn observe(
    local: &Local,
    prefix: &[u8],
    tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<(), Status> {
    let mut last: Option<(Vec<u8>, i64)> = None;
    loop {
        let (leader, resp) = local.first_created(prefix).await?;
        let rev = resp.header.as_ref().map_or(0, |h| h.revision);
        let Some(kv) = leader else {
            // Nobody leads: wait for a candidate to appear, then read again.
            let mut w = local.watch(WatchCreateRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                start_revision: rev + 1,
                ..Default::default()
            });
            w.create().await;
            while let Some(r) = w.next().await {
                if r.canceled || r.events.iter().any(|e| e.r#type() == EventType::Put) {
                    break;
                }
            }
            continue;
        };
        let (key, create) = (kv.key.clone(), kv.create_revision);
        if last != Some((kv.key.clone(), kv.mod_revision)) {
            last = Some((kv.key.clone(), kv.mod_revision));
            if tx.send(Ok(LeaderResponse { header: resp.header, kv: Some(kv) })).await.is_err() {
                return Ok(());
            }
        }
        let mut w = local.watch(WatchCreateRequest { key: key.clone(), start_revision: rev + 1, ..Default::default() });
        w.create().await;
        'leader: while let Some(r) = w.next().await {
            if r.canceled {
                break;
            }
            for ev in r.events {
                let kind = ev.r#type();
                let kv = ev.kv.unwrap_or_default();
                if kind == EventType::Delete || kv.create_revision != create {
                    break 'leader;
                }
                last = Some((kv.key.clone(), kv.mod_revision));
                let header = Some(local.ctx.replica.header(kv.mod_revision));
                if tx.send(Ok(LeaderResponse { header, kv: Some(kv) })).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
