//! etcd's request checks (its v3rpc `check*Request` functions), run before a request
//! reaches Raft, with etcd's exact errors.

use crate::error::{msg, Error, Result};
use cairn_api::etcdserverpb::{
    range_request, request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use std::collections::HashSet;

/// Range: key required, sort fields must be known values.
pub fn range(r: &RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::InvalidArgument(msg::KEY_NOT_PROVIDED));
    }
    if range_request::SortOrder::try_from(r.sort_order).is_err()
        || range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(Error::InvalidArgument("etcdserver: invalid sort option"));
    }
    Ok(())
}

/// Put: key required; no value with ignore_value, no lease with ignore_lease.
pub fn put(r: &PutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::InvalidArgument(msg::KEY_NOT_PROVIDED));
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::InvalidArgument(msg::VALUE_PROVIDED));
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::InvalidArgument(msg::LEASE_PROVIDED));
    }
    Ok(())
}

/// DeleteRange: key required.
pub fn delete(r: &DeleteRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::InvalidArgument(msg::KEY_NOT_PROVIDED));
    }
    Ok(())
}

/// Txn: op counts, every compare and op, and no key written twice in one branch.
pub fn txn(r: &TxnRequest, max_ops: usize) -> Result<()> {
    check_txn_ops(r, max_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_ops: usize) -> Result<()> {
    if r.compare.len() > max_ops || r.success.len() > max_ops || r.failure.len() > max_ops {
        return Err(Error::InvalidArgument(msg::TOO_MANY_OPS));
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::InvalidArgument(msg::KEY_NOT_PROVIDED));
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(x)) => range(x)?,
            Some(request_op::Request::RequestPut(x)) => put(x)?,
            Some(request_op::Request::RequestDeleteRange(x)) => delete(x)?,
            Some(request_op::Request::RequestTxn(x)) => check_txn_ops(x, max_ops)?,
            None => {}
        }
    }
    Ok(())
}

/// A deleted interval `[start, end)`; `end = None` is unbounded, a point has `end = start+\0`.
#[derive(Clone)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn of(key: &[u8], range_end: &[u8]) -> Self {
        let end = if range_end.is_empty() {
            let mut e = key.to_vec();
            e.push(0);
            Some(e)
        } else if range_end == [0] {
            None
        } else {
            Some(range_end.to_vec())
        };
        Interval { start: key.to_vec(), end }
    }

    fn contains(&self, k: &[u8]) -> bool {
        k >= self.start.as_slice() && self.end.as_deref().is_none_or(|e| k < e)
    }
}

/// etcd's `checkIntervals`: within one branch (nested txns included) a key may be put
/// only once and never both put and deleted. Returns that branch's puts and deletes.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Interval>)> {
    let dup = || Error::InvalidArgument(msg::DUPLICATE_KEY);
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some(Interval::of(&d.key, &d.range_end)),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(dup());
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            // The same key in both branches of one nested txn is fine: only one runs.
            if (puts.contains(k) && !puts_then.contains(k)) || dels.iter().any(|d| d.contains(k)) {
                return Err(dup());
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else { continue };
        if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
            return Err(dup());
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp { request: Some(request_op::Request::RequestPut(PutRequest { key: k.into(), ..Default::default() })) }
    }
    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let t = |ops: Vec<RequestOp>| txn(&TxnRequest { success: ops, ..Default::default() }, 128);
        assert!(t(vec![put_op("a"), put_op("b")]).is_ok());
        assert_eq!(t(vec![put_op("a"), put_op("a")]), Err(Error::InvalidArgument(msg::DUPLICATE_KEY)));
        assert_eq!(t(vec![put_op("b"), del_op("a", "c")]), Err(Error::InvalidArgument(msg::DUPLICATE_KEY)));
        assert!(t(vec![put_op("c"), del_op("a", "c")]).is_ok());
        assert!(t(vec![del_op("a", "c"), del_op("b", "d")]).is_ok());
        let nested = |s: Vec<RequestOp>, f: Vec<RequestOp>| RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest { success: s, failure: f, ..Default::default() })),
        };
        assert!(t(vec![nested(vec![put_op("a")], vec![put_op("a")])]).is_ok());
        assert!(t(vec![put_op("a"), nested(vec![put_op("a")], vec![])]).is_err());
        // success and failure branches are independent
        let both = TxnRequest { success: vec![put_op("a")], failure: vec![put_op("a")], ..Default::default() };
        assert!(txn(&both, 128).is_ok());
    }

    #[test]
    fn limits_and_empty_keys() {
        let many = TxnRequest { success: (0..129).map(|i| put_op(&format!("k{i}"))).collect(), ..Default::default() };
        assert_eq!(txn(&many, 128), Err(Error::InvalidArgument(msg::TOO_MANY_OPS)));
        assert_eq!(put(&PutRequest::default()), Err(Error::InvalidArgument(msg::KEY_NOT_PROVIDED)));
        let p = PutRequest { key: "k".into(), ignore_value: true, value: "v".into(), ..Default::default() };
        assert_eq!(put(&p), Err(Error::InvalidArgument(msg::VALUE_PROVIDED)));
        let p = PutRequest { key: "k".into(), ignore_lease: true, lease: 1, ..Default::default() };
        assert_eq!(put(&p), Err(Error::InvalidArgument(msg::LEASE_PROVIDED)));
        assert!(range(&RangeRequest { key: "k".into(), sort_order: 9, ..Default::default() }).is_err());
    }
}
