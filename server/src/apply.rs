//! The state machine's apply step: one committed [`RaftRequest`] becomes store
//! mutations and a [`RaftResponse`]. Deterministic: no clock, no randomness, no I/O
//! beyond the store, so every member reaches the same state at the same revision.

use crate::error::Error;
use crate::raft::state_machine::SmState;
use cairn_api::cairnpb::{
    raft_request, raft_response, ApplyError, Empty, RaftBatchResponse, RaftRequest, RaftResponse,
};
use cairn_api::etcdserverpb::CompactionResponse;
use cairn_store::StoreError;

/// Leases do not exist until the lease service lands, so every non-zero lease is unknown.
fn lease_exists(_id: i64) -> bool {
    false
}

/// Apply one request. Client-visible failures come back inside the response; an `Err`
/// is a storage failure that must stop this member.
pub fn apply(state: &mut SmState, req: &RaftRequest) -> Result<RaftResponse, StoreError> {
    use raft_response::Response as R;
    let result = match &req.request {
        Some(raft_request::Request::Put(p)) => state.mvcc.put(p, &lease_exists).map(R::Put),
        Some(raft_request::Request::DeleteRange(d)) => state.mvcc.delete_range(d).map(R::DeleteRange),
        Some(raft_request::Request::Txn(t)) => state.mvcc.txn(t, &lease_exists).map(R::Txn),
        Some(raft_request::Request::Compaction(c)) => {
            state.mvcc.compact(c.revision).map(|_| R::Compaction(CompactionResponse::default()))
        }
        Some(raft_request::Request::Batch(batch)) => {
            let mut responses = Vec::with_capacity(batch.requests.len());
            for r in &batch.requests {
                // One level only: the proposer never nests batches.
                if matches!(r.request, Some(raft_request::Request::Batch(_))) {
                    responses.push(RaftResponse::default());
                    continue;
                }
                responses.push(apply(state, r)?);
            }
            Ok(R::Batch(RaftBatchResponse { responses }))
        }
        Some(raft_request::Request::Publish(attrs)) => {
            state.publish(attrs.clone());
            Ok(R::Empty(Empty {}))
        }
        None => Ok(R::Empty(Empty {})),
    };
    let response = match result {
        Ok(r) => r,
        Err(e @ (StoreError::Engine(_) | StoreError::Corrupt(_))) => return Err(e),
        Err(e) => {
            let e = Error::from(e);
            R::Error(ApplyError { code: e.code() as i32, message: e.message() })
        }
    };
    Ok(RaftResponse { revision: state.mvcc.current_revision(), response: Some(response) })
}
