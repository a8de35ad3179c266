//! etcd's Lock service (`v3lockpb.Lock`): Lock waits until the caller holds the lock
//! `name`, Unlock releases it. The algorithm and key layout are etcd's
//! `clientv3/concurrency.Mutex` — the key `<name>/<lease id in hex>` on the caller's lease,
//! waiters ordered by create revision — so locks taken here, by `etcdctl lock` and by the
//! Rust and Go recipes on the same name exclude each other.

use super::local::Local;
use super::Ctx;
use crate::error::msg;
use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::request_op::Request as Op;
use cairn_api::etcdserverpb::response_op::Response as OpResponse;
use cairn_api::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, ResponseHeader, TxnRequest,
};
use cairn_api::v3lockpb::lock_server::Lock;
use cairn_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Lock service of one member.
pub struct LockService {
    local: Arc<Local>,
}

impl LockService {
    /// The Lock service of the member behind `ctx`.
    pub fn new(ctx: &Ctx) -> Self {
        Self { local: Arc::new(Local::new(ctx)) }
    }
}

/// A candidate key (lock waiter or election candidate): deleted if the request ends
/// before it is granted (the caller went away, an error), so it does not block others.
pub struct Pending {
    local: Arc<Local>,
    key: Option<Vec<u8>>,
    /// The key's create revision: only that generation of the key is withdrawn, never a
    /// later one (the same lease locking again).
    rev: i64,
}

impl Pending {
    pub fn new(local: &Arc<Local>, key: Vec<u8>, rev: i64) -> Pending {
        Pending { local: local.clone(), key: Some(key), rev }
    }

    /// Keep the key: the request succeeded.
    pub fn keep(mut self) {
        self.key = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let (local, rev) = (self.local.clone(), self.rev);
            self.local.ctx.tasks.spawn(async move {
                let del = DeleteRangeRequest { key: key.clone(), ..Default::default() };
                let txn = TxnRequest {
                    compare: vec![created_at(&key, rev)],
                    success: vec![RequestOp { request: Some(Op::RequestDeleteRange(del)) }],
                    failure: vec![],
                };
                if let Err(e) = local.txn(txn).await {
                    tracing::debug!(%e, "withdrawing an abandoned lock/campaign key failed; its lease will expire it");
                }
            });
        }
    }
}

/// `create_revision(key) == rev`.
pub fn created_at(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

/// Create `key` = `value` on `lease` unless it exists. Answers the key's create revision,
/// its current value and the txn's revision.
pub async fn create_if_absent(
    local: &Local,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<(i64, Option<Vec<u8>>, i64), Status> {
    let put = PutRequest { key: key.to_vec(), value: value.to_vec(), lease, ..Default::default() };
    let get = RangeRequest { key: key.to_vec(), ..Default::default() };
    let txn = TxnRequest {
        compare: vec![created_at(key, 0)],
        success: vec![RequestOp { request: Some(Op::RequestPut(put)) }],
        failure: vec![RequestOp { request: Some(Op::RequestRange(get)) }],
    };
    let resp = local.txn(txn).await?;
    let rev = resp.header.as_ref().map_or(0, |h| h.revision);
    if resp.succeeded {
        return Ok((rev, None, rev));
    }
    let existing = resp.responses.into_iter().find_map(|r| match r.response {
        Some(OpResponse::ResponseRange(g)) => g.kvs.into_iter().next(),
        _ => None,
    });
    match existing {
        Some(kv) => Ok((kv.create_revision, Some(kv.value), rev)),
        // Deleted between the compare and now cannot happen inside one txn; be safe anyway.
        None => Err(Status::unknown(msg::SESSION_EXPIRED)),
    }
}

/// Wait until `key` (created at `rev`) is the oldest under `prefix`; the header of the
/// read that confirmed it is still there.
pub async fn wait_turn(
    local: &Local,
    prefix: &[u8],
    key: &[u8],
    rev: i64,
    gone: &'static str,
) -> Result<ResponseHeader, Status> {
    let shutdown = local.ctx.shutdown.clone();
    tokio::select! {
        r = local.wait_deletes(prefix, rev - 1) => r?,
        _ = shutdown.cancelled() => return Err(Status::unavailable(msg::STOPPED)),
    }
    let mine = local.get(key).await?;
    match mine.kvs.first() {
        Some(kv) if kv.create_revision == rev => Ok(mine.header.unwrap_or_default()),
        _ => Err(Status::unknown(gone)),
    }
}

/// An error from the calls a Lock/Election request makes, as etcd returns it: etcd runs
/// these services on an in-process client whose errors reach the caller as code Unknown
/// with the original message. Unavailable is kept, so clients still retry transient errors.
pub fn relay(s: Status) -> Status {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown => s,
        _ => Status::unknown(s.message()),
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let local = self.local.acting_for(&req).await?;
        lock(&local, req.into_inner()).await.map(Response::new).map_err(relay)
    }

    async fn unlock(&self, req: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let local = self.local.acting_for(&req).await?;
        let rev = local.delete(&req.into_inner().key).await.map_err(relay)?;
        Ok(Response::new(UnlockResponse { header: Some(self.local.ctx.replica.header(rev)) }))
    }
}

async fn lock(local: &Arc<Local>, r: LockRequest) -> Result<LockResponse, Status> {
    let lease = local.lease_or_new(r.lease).await?;
    let mut prefix = r.name;
    prefix.push(b'/');
    let key = [prefix.as_slice(), format!("{lease:x}").as_bytes()].concat();
    let (rev, _, _) = create_if_absent(local, &key, b"", lease).await?;
    let pending = Pending::new(local, key.clone(), rev);
    let header = wait_turn(local, &prefix, &key, rev, msg::SESSION_EXPIRED).await?;
    pending.keep();
    Ok(LockResponse { header: Some(header), key })
}
