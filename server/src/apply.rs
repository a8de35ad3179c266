//! The state machine's apply step: one committed [`RaftRequest`] becomes store
//! mutations and a [`RaftResponse`]. Deterministic: no clock, no randomness, no I/O
//! beyond the store, so every member reaches the same state at the same revision.

use crate::error::{msg, Error};
use crate::state::{LeaseChange, SmState};
use cairn_api::cairnpb::{
    raft_request, raft_response, ApplyError, Empty, LeaseRecord, RaftBatchResponse, RaftRequest, RaftResponse,
};
use cairn_api::etcdserverpb::alarm_request::AlarmAction;
use cairn_api::etcdserverpb::{
    request_op, AlarmMember, AlarmResponse, CompactionResponse, LeaseGrantResponse, LeaseRevokeResponse, TxnRequest,
};
use cairn_store::StoreError;
use tonic::Code;

/// A client-visible failure decided during apply.
fn refused(code: Code, message: &str) -> raft_response::Response {
    raft_response::Response::Error(ApplyError { code: code as i32, message: message.to_string() })
}

/// Apply one request. Client-visible failures come back inside the response; an `Err`
/// is a storage failure that must stop this member.
pub fn apply(state: &mut SmState, req: &RaftRequest) -> Result<RaftResponse, StoreError> {
    use raft_response::Response as R;
    // Under a NOSPACE alarm only what frees space (deletes, compaction, revocations)
    // applies, as etcd's capped applier; decided here so every member agrees.
    if state.no_space() && adds_data(req) {
        let response = Some(refused(Code::ResourceExhausted, msg::NO_SPACE));
        return Ok(RaftResponse { revision: state.mvcc.current_revision(), response, log_index: 0 });
    }
    // Under a CORRUPT alarm no data changes at all (etcd's corrupt applier) until an
    // operator has looked and disarmed it.
    if state.corrupt() && changes_data(req) {
        let response = Some(refused(Code::DataLoss, msg::CORRUPT));
        return Ok(RaftResponse { revision: state.mvcc.current_revision(), response, log_index: 0 });
    }
    // With auth on, a client's request is checked again against the auth state of
    // this moment: a permission revoked while the request was in flight stops it.
    if let Some(request) = &req.request {
        if let Err(e) = crate::auth::apply::check_at_apply(state, req.caller.as_ref(), request) {
            let response = Some(refused(e.code(), &e.message()));
            return Ok(RaftResponse { revision: state.mvcc.current_revision(), response, log_index: 0 });
        }
    }
    let leases = &state.leases;
    let lease_exists = |id: i64| leases.contains_key(&id);
    let result = match &req.request {
        Some(raft_request::Request::Put(p)) => state.mvcc.put(p, &lease_exists).map(R::Put),
        Some(raft_request::Request::DeleteRange(d)) => state.mvcc.delete_range(d).map(R::DeleteRange),
        Some(raft_request::Request::Txn(t)) => state.mvcc.txn(t, &lease_exists).map(R::Txn),
        Some(raft_request::Request::LeaseGrant(g)) => Ok(if g.id <= 0 {
            refused(Code::InvalidArgument, "etcdserver: lease id must be chosen before proposing")
        } else if state.leases.contains_key(&g.id) {
            refused(Code::FailedPrecondition, msg::LEASE_EXISTS)
        } else {
            let rec = LeaseRecord { id: g.id, ttl: g.ttl, remaining_ttl: 0 };
            state.put_lease(rec);
            state.lease_changed(LeaseChange::Granted(rec));
            R::LeaseGrant(LeaseGrantResponse { id: g.id, ttl: g.ttl, ..Default::default() })
        }),
        Some(raft_request::Request::LeaseRevoke(r)) => {
            if state.leases.contains_key(&r.id) {
                // Every attached key goes in one revision, so watchers see one batch.
                let keys = state.mvcc.lease_keys(r.id);
                state.mvcc.delete_keys(&keys).map(|_| {
                    state.remove_lease(r.id);
                    state.lease_changed(LeaseChange::Revoked(r.id));
                    R::LeaseRevoke(LeaseRevokeResponse::default())
                })
            } else {
                Ok(refused(Code::NotFound, msg::LEASE_NOT_FOUND))
            }
        }
        Some(raft_request::Request::LeaseCheckpoint(c)) => {
            for cp in &c.checkpoints {
                if let Some(mut rec) = state.leases.get(&cp.id).cloned() {
                    rec.remaining_ttl = cp.remaining_ttl;
                    state.put_lease(rec);
                    state.lease_changed(LeaseChange::Checkpointed(cp.id, cp.remaining_ttl));
                }
            }
            Ok(R::Empty(Empty {}))
        }
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
        Some(raft_request::Request::Alarm(a)) => {
            let on = a.action == AlarmAction::Activate as i32;
            let changed = if on || a.action == AlarmAction::Deactivate as i32 {
                state.set_alarm(a.member_id, a.alarm, on)
            } else {
                false
            };
            let alarms =
                if changed || on { vec![AlarmMember { member_id: a.member_id, alarm: a.alarm }] } else { vec![] };
            Ok(R::Alarm(AlarmResponse { header: None, alarms }))
        }
        Some(raft_request::Request::Auth(a)) => Ok(match crate::auth::apply::apply(state, a) {
            Ok(()) => R::Empty(Empty {}),
            Err(e) => refused(e.code(), &e.message()),
        }),
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
    Ok(RaftResponse { revision: state.mvcc.current_revision(), response: Some(response), log_index: 0 })
}

/// Whether `req` may grow the store: puts, txns with a put anywhere, lease grants.
pub fn adds_data(req: &RaftRequest) -> bool {
    fn txn_puts(t: &TxnRequest) -> bool {
        t.success.iter().chain(&t.failure).any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(inner)) => txn_puts(inner),
            _ => false,
        })
    }
    match &req.request {
        Some(raft_request::Request::Put(_)) | Some(raft_request::Request::LeaseGrant(_)) => true,
        Some(raft_request::Request::Txn(t)) => txn_puts(t),
        _ => false,
    }
}

/// Whether a request changes keys or leases (refused while a CORRUPT alarm is raised).
pub fn changes_data(req: &RaftRequest) -> bool {
    use raft_request::Request as Q;
    match &req.request {
        Some(Q::Put(_) | Q::DeleteRange(_) | Q::Txn(_) | Q::Compaction(_) | Q::LeaseGrant(_) | Q::LeaseRevoke(_)) => {
            true
        }
        // A batch is applied request by request, each checked on its own.
        _ => false,
    }
}
