//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use super::validate;
use super::Ctx;
use crate::auth::gate::Identity;
use crate::error::{Error, Result};
use cairn_api::cairnpb::{raft_request, raft_response, RaftResponse};
use cairn_api::etcdserverpb::kv_server::Kv;
use cairn_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};

/// The KV service of one member.
pub struct KvService {
    ctx: Ctx,
}

impl KvService {
    /// The KV service of the member behind `ctx`.
    pub fn new(ctx: &Ctx) -> Self {
        Self { ctx: ctx.clone() }
    }

    async fn write(&self, who: &Identity, req: raft_request::Request) -> Result<(i64, raft_response::Response)> {
        let req = self.ctx.gate.client_request(who, req)?;
        let RaftResponse { revision, response, .. } = self.ctx.writer.propose(req).await?;
        let r = response.ok_or_else(|| Error::Internal("empty apply result".into()))?;
        Ok((revision, r))
    }
}

fn unexpected(r: raft_response::Response) -> Status {
    Status::internal(format!("etcdserver: unexpected apply result {r:?}"))
}

/// Whether a txn only reads (then it is served like a Range, without Raft).
fn read_only(t: &TxnRequest) -> bool {
    use cairn_api::etcdserverpb::request_op::Request as Op;
    t.success.iter().chain(&t.failure).all(|op| match &op.request {
        Some(Op::RequestRange(_)) | None => true,
        Some(Op::RequestTxn(inner)) => read_only(inner),
        _ => false,
    })
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> std::result::Result<Response<RangeResponse>, Status> {
        let who = self.ctx.gate.identify(&req).await?;
        let r = req.into_inner();
        validate::range(&r)?;
        self.ctx.gate.check_read(&who, &r.key, &r.range_end)?;
        if !r.serializable {
            self.ctx.router.read_barrier().await?;
        }
        let mut resp = self.ctx.replica.range(&r)?;
        resp.header = Some(self.ctx.replica.header(resp.header.map_or(0, |h| h.revision)));
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> std::result::Result<Response<PutResponse>, Status> {
        let who = self.ctx.gate.identify(&req).await?;
        let r = req.into_inner();
        validate::put(&r)?;
        match self.write(&who, raft_request::Request::Put(r)).await? {
            (rev, raft_response::Response::Put(mut p)) => {
                p.header = Some(self.ctx.replica.header(rev));
                Ok(Response::new(p))
            }
            (_, other) => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> std::result::Result<Response<DeleteRangeResponse>, Status> {
        let who = self.ctx.gate.identify(&req).await?;
        let r = req.into_inner();
        validate::delete(&r)?;
        match self.write(&who, raft_request::Request::DeleteRange(r)).await? {
            (rev, raft_response::Response::DeleteRange(mut d)) => {
                d.header = Some(self.ctx.replica.header(rev));
                Ok(Response::new(d))
            }
            (_, other) => Err(unexpected(other)),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> std::result::Result<Response<TxnResponse>, Status> {
        let who = self.ctx.gate.identify(&req).await?;
        let r = req.into_inner();
        validate::txn(&r, self.ctx.limits.max_txn_ops)?;
        if read_only(&r) {
            // Like etcd, a read-only txn is a linearizable read, not a Raft proposal.
            if !who.open {
                self.ctx.replica.with_state(|st| st.auth.check_txn(&who.user, &r, &|_| Vec::new()))?;
            }
            self.ctx.router.read_barrier().await?;
            let mut resp = self.ctx.replica.with_state(|st| st.mvcc.read_txn(&r)).map_err(Error::from)?;
            resp.header = Some(self.ctx.replica.header(resp.header.map_or(0, |h| h.revision)));
            return Ok(Response::new(resp));
        }
        match self.write(&who, raft_request::Request::Txn(r)).await? {
            (rev, raft_response::Response::Txn(mut t)) => {
                t.header = Some(self.ctx.replica.header(rev));
                Ok(Response::new(t))
            }
            (_, other) => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> std::result::Result<Response<CompactionResponse>, Status> {
        let who = self.ctx.gate.identify(&req).await?;
        let r = req.into_inner();
        match self.write(&who, raft_request::Request::Compaction(r)).await? {
            (rev, raft_response::Response::Compaction(_)) => {
                Ok(Response::new(CompactionResponse { header: Some(self.ctx.replica.header(rev)) }))
            }
            (_, other) => Err(unexpected(other)),
        }
    }
}
