//! etcd's request checks (its v3rpc `check*Request` functions), run before a request
//! reaches Raft, with etcd's exact errors.

use crate::error::{msg, Error, Result};
use cairn_api::etcdserverpb::{
    range_request, request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

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
///
/// Each level holds at most `max_ops` compares, success ops and failure ops (etcd's
/// check); beyond etcd, one branch with everything nested in it holds at most `max_ops`
/// operations and compares in all, so nesting cannot multiply the work of a request.
/// The duplicate-key check is linear-logarithmic in the number of operations.
pub fn txn(r: &TxnRequest, max_ops: usize) -> Result<()> {
    check_txn_ops(r, max_ops)?;
    for branch in [&r.success, &r.failure] {
        let mut budget = max_ops;
        check_branch_ops(branch, max_ops, &mut budget)?;
    }
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

/// The compares of one nested level.
fn check_txn_ops(r: &TxnRequest, max_ops: usize) -> Result<()> {
    if r.compare.len() > max_ops || r.success.len() > max_ops || r.failure.len() > max_ops {
        return Err(Error::InvalidArgument(msg::TOO_MANY_OPS));
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::InvalidArgument(msg::KEY_NOT_PROVIDED));
    }
    Ok(())
}

/// Check every op of a branch (recursively), spending one unit of `budget` per op and
/// per nested compare.
fn check_branch_ops(ops: &[RequestOp], max_ops: usize, budget: &mut usize) -> Result<()> {
    let too_many = || Error::InvalidArgument(msg::TOO_MANY_OPS);
    *budget = budget.checked_sub(ops.len()).ok_or_else(too_many)?;
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestRange(x)) => range(x)?,
            Some(request_op::Request::RequestPut(x)) => put(x)?,
            Some(request_op::Request::RequestDeleteRange(x)) => delete(x)?,
            Some(request_op::Request::RequestTxn(x)) => {
                check_txn_ops(x, max_ops)?;
                *budget = budget.checked_sub(x.compare.len()).ok_or_else(too_many)?;
                check_branch_ops(&x.success, max_ops, budget)?;
                check_branch_ops(&x.failure, max_ops, budget)?;
            }
            None => {}
        }
    }
    Ok(())
}

/// A set of deleted key intervals, kept merged and sorted: start -> end (`None` = to the
/// end of the key space). Insertion and point lookups are logarithmic.
#[derive(Default)]
struct Deleted {
    spans: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Deleted {
    /// Add the etcd-form range `[key, range_end)`.
    fn insert(&mut self, key: &[u8], range_end: &[u8]) {
        let mut start = key.to_vec();
        let mut end = if range_end.is_empty() {
            let mut e = key.to_vec();
            e.push(0);
            Some(e)
        } else if range_end == [0] {
            None
        } else if range_end <= key {
            return; // deletes nothing
        } else {
            Some(range_end.to_vec())
        };
        let later = |a: &Option<Vec<u8>>, b: &Option<Vec<u8>>| match (a, b) {
            (None, _) | (_, None) => None,
            (Some(x), Some(y)) => Some(x.max(y).clone()),
        };
        // Merge with a span that starts before and reaches `start`.
        if let Some((s, e)) = self.spans.range::<[u8], _>((Bound::Unbounded, Bound::Included(key))).next_back() {
            if e.as_deref().is_none_or(|e| e >= key) {
                end = later(e, &end);
                start = s.clone();
            }
        }
        // Swallow the spans that start inside the new one.
        let inside: Vec<Vec<u8>> = self
            .spans
            .range::<[u8], _>((Bound::Included(start.as_slice()), Bound::Unbounded))
            .take_while(|(s, _)| end.as_deref().is_none_or(|e| s.as_slice() <= e))
            .map(|(s, _)| s.clone())
            .collect();
        for s in inside {
            if let Some(e) = self.spans.remove(&s) {
                end = later(&e, &end);
            }
        }
        self.spans.insert(start, end);
    }

    fn contains(&self, k: &[u8]) -> bool {
        self.spans
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(k)))
            .next_back()
            .is_some_and(|(_, e)| e.as_deref().is_none_or(|e| k < e))
    }

    fn absorb(&mut self, other: Deleted) {
        for (s, e) in other.spans {
            match e {
                Some(e) => self.insert(&s, &e),
                None => self.insert(&s, &[0]),
            }
        }
    }
}

/// etcd's `checkIntervals`: within one branch (nested txns included) a key may be put
/// only once and never both put and deleted. Returns that branch's puts and deletes.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<&[u8]>, Deleted)> {
    let dup = || Error::InvalidArgument(msg::DUPLICATE_KEY);
    let mut dels = Deleted::default();
    for op in ops {
        if let Some(request_op::Request::RequestDeleteRange(d)) = &op.request {
            dels.insert(&d.key, &d.range_end);
        }
    }
    let mut puts: HashSet<&[u8]> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.contains(k) {
                return Err(dup());
            }
            puts.insert(k);
        }
        for k in &puts_else {
            // The same key in both branches of one nested txn is fine: only one runs.
            if (puts.contains(k) && !puts_then.contains(k)) || dels.contains(k) {
                return Err(dup());
            }
            puts.insert(k);
        }
        dels.absorb(dels_then);
        dels.absorb(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else { continue };
        if !puts.insert(&p.key) || dels.contains(&p.key) {
            return Err(dup());
        }
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

    /// The merged interval set answers exactly as a list of the intervals would.
    #[test]
    fn deleted_spans_match_a_plain_list() {
        let keys: Vec<Vec<u8>> = (0u8..12).map(|i| vec![b'a' + i]).chain([vec![b'c', 0], vec![b'f', 1]]).collect();
        let mut seed = 7u64;
        for _ in 0..300 {
            let (mut set, mut list) = (Deleted::default(), Vec::new());
            for _ in 0..6 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let k = vec![b'a' + (seed >> 33) as u8 % 10];
                let end = match (seed >> 40) % 4 {
                    0 => vec![],
                    1 => vec![0],
                    _ => vec![b'a' + (seed >> 45) as u8 % 12],
                };
                set.insert(&k, &end);
                list.push((k, end));
            }
            for k in &keys {
                let want = list.iter().any(|(s, e)| {
                    if e.is_empty() {
                        k == s
                    } else if e == &[0] {
                        k >= s
                    } else {
                        k >= s && k < e
                    }
                });
                assert_eq!(set.contains(k), want, "{list:?} {k:?}");
            }
        }
    }

    #[test]
    fn nesting_cannot_multiply_the_ops() {
        // 8 levels of 16 puts each: within one level's limit, over the branch's.
        let mut t = TxnRequest::default();
        for level in 0..8 {
            let mut ops: Vec<RequestOp> = (0..16).map(|i| put_op(&format!("l{level}-{i}"))).collect();
            if level > 0 {
                ops.push(RequestOp { request: Some(request_op::Request::RequestTxn(t)) });
            }
            t = TxnRequest { success: ops, ..Default::default() };
        }
        assert_eq!(txn(&t, 128), Err(Error::InvalidArgument(msg::TOO_MANY_OPS)));
        assert!(txn(&t, 256).is_ok());
        // A wide, flat txn is checked in n log n: 100,000 distinct puts and deletes (checking
        // each put against each delete took minutes).
        let wide = TxnRequest {
            success: (0..50_000)
                .flat_map(|i| [put_op(&format!("p{i:06}")), del_op(&format!("d{i:06}"), &format!("d{i:06}x"))])
                .collect(),
            ..Default::default()
        };
        assert!(txn(&wide, 100_000).is_ok());
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
