//! Property test: random puts, deletes, txns and compactions against a model that keeps
//! a full copy of the key space at every revision.

use super::fresh_mvcc;
use cairn_api::etcdserverpb::{
    compare, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use cairn_store::{EngineKind, StoreError, WriteBatch};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// key -> (value, create_revision, mod_revision, version)
type State = BTreeMap<String, (String, i64, i64, i64)>;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Delete(u8, u8),
    CasVersion(u8, i64, u8),
    Compact(u8),
    Read(u8, u8, u8),
}

fn key(i: u8) -> String {
    format!("k{}", i % 8)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (any::<u8>(), 0u8..4).prop_map(|(k, n)| Op::Delete(k, n)),
        2 => (any::<u8>(), 0i64..4, any::<u8>()).prop_map(|(k, ver, v)| Op::CasVersion(k, ver, v)),
        1 => any::<u8>().prop_map(Op::Compact),
        3 => (any::<u8>(), 0u8..4, any::<u8>()).prop_map(|(k, n, r)| Op::Read(k, n, r)),
    ]
}

fn range_end(k: u8, n: u8) -> (String, String) {
    let start = key(k);
    if n == 0 {
        (start, String::new())
    } else {
        let end_i = (k % 8) as u32 + n as u32;
        (start, format!("k{end_i}"))
    }
}

fn in_range(k: &str, start: &str, end: &str) -> bool {
    if end.is_empty() {
        k == start
    } else {
        k >= start && k < end
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
    #[test]
    fn mvcc_matches_model(ops in proptest::collection::vec(op(), 1..60), sled in any::<bool>()) {
        let (_d, mut m) = fresh_mvcc(if sled { EngineKind::Sled } else { EngineKind::Redb });
        let none: &dyn Fn(i64) -> bool = &|_| false;
        let mut history: Vec<State> = vec![State::new(), State::new()]; // index = revision
        let mut compacted = 0i64;
        for op in ops {
            let cur = history.len() as i64 - 1;
            let mut next = history[cur as usize].clone();
            let mut wrote = false;
            match op {
                Op::Put(k, v) => {
                    let (k, v) = (key(k), v.to_string());
                    let rev = cur + 1;
                    let e = next.get(&k).map_or((v.clone(), rev, rev, 1), |(_, c, _, ver)| (v.clone(), *c, rev, ver + 1));
                    next.insert(k.clone(), e);
                    wrote = true;
                    m.put(&PutRequest { key: k.into(), value: v.into(), ..Default::default() }, none).unwrap();
                }
                Op::Delete(k, n) => {
                    let (s, e) = range_end(k, n);
                    let before = next.len();
                    next.retain(|key, _| !in_range(key, &s, &e));
                    wrote = next.len() != before;
                    let r = m.delete_range(&DeleteRangeRequest { key: s.into(), range_end: e.into(), prev_kv: false }).unwrap();
                    prop_assert_eq!(r.deleted as usize, before - next.len());
                }
                Op::CasVersion(k, ver, v) => {
                    let k = key(k);
                    let have = next.get(&k).map_or(0, |e| e.3);
                    let ok = have == ver;
                    if ok {
                        let rev = cur + 1;
                        let e = next.get(&k).map_or((v.to_string(), rev, rev, 1), |(_, c, _, ver)| (v.to_string(), *c, rev, ver + 1));
                        next.insert(k.clone(), e);
                        wrote = true;
                    }
                    let r = m.txn(&TxnRequest {
                        compare: vec![Compare { key: k.clone().into(), target: compare::CompareTarget::Version as i32,
                            result: compare::CompareResult::Equal as i32, target_union: Some(compare::TargetUnion::Version(ver)), ..Default::default() }],
                        success: vec![RequestOp { request: Some(request_op::Request::RequestPut(PutRequest { key: k.into(), value: v.to_string().into(), ..Default::default() })) }],
                        failure: vec![],
                    }, none).unwrap();
                    prop_assert_eq!(r.succeeded, ok);
                }
                Op::Compact(r) => {
                    let at = (r as i64) % (cur + 1);
                    let res = m.compact(at);
                    if at <= compacted { prop_assert_eq!(res, Err(StoreError::Compacted)); } else { res.unwrap(); compacted = at; }
                }
                Op::Read(k, n, r) => {
                    let (s, e) = range_end(k, n);
                    let at = (r as i64) % (cur + 3);
                    let res = m.range(&RangeRequest { key: s.clone().into(), range_end: e.clone().into(), revision: at, ..Default::default() });
                    if at > cur { prop_assert_eq!(res, Err(StoreError::FutureRev)); }
                    else if at != 0 && at < compacted { prop_assert_eq!(res, Err(StoreError::Compacted)); }
                    else {
                        let at = if at == 0 { cur } else { at };
                        let want: Vec<_> = history[at as usize].iter().filter(|(key, _)| in_range(key, &s, &e))
                            .map(|(k, (v, c, mo, ver))| (k.clone(), v.clone(), *c, *mo, *ver)).collect();
                        let got: Vec<_> = res.unwrap().kvs.into_iter().map(|kv| (String::from_utf8(kv.key).unwrap(),
                            String::from_utf8(kv.value).unwrap(), kv.create_revision, kv.mod_revision, kv.version)).collect();
                        prop_assert_eq!(got, want);
                    }
                }
            }
            if wrote { history.push(next); }
            prop_assert_eq!(m.current_revision(), history.len() as i64 - 1);
            m.commit(WriteBatch::new(), false).unwrap();
        }
        // Reopening from disk gives the same latest state.
        m.commit(WriteBatch::new(), true).unwrap();
        let engine = m.engine().clone();
        drop(m);
        let m2 = cairn_store::Mvcc::open(engine).unwrap();
        let got = m2.range(&RangeRequest { key: "\0".into(), range_end: "\0".into(), ..Default::default() }).unwrap();
        prop_assert_eq!(got.kvs.len(), history.last().unwrap().len());
    }
}
