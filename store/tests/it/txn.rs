//! Nested transactions: etcd's semantics (every compare on the tree is decided on the state
//! before the txn) and atomicity (a txn that fails writes nothing), checked against a model
//! on random nested txns and on the cases that once went wrong.

use super::fresh_mvcc;
use cairn_api::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    TxnResponse,
};
use cairn_store::{EngineKind, Mvcc, StoreError, WriteBatch};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// The one lease that exists in these tests.
const LEASE: i64 = 7;
/// A lease that does not exist.
const NO_LEASE: i64 = 99;

fn lease_ok(id: i64) -> bool {
    id == LEASE
}

fn put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })),
    }
}

fn put_req(p: PutRequest) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestPut(p)) }
}

fn del(k: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: k.into(),
            range_end: end.into(),
            prev_kv: false,
        })),
    }
}

fn get(k: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: k.into(),
            range_end: end.into(),
            ..Default::default()
        })),
    }
}

fn nested(t: TxnRequest) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestTxn(t)) }
}

fn value_is(k: &str, v: &str) -> Compare {
    Compare {
        key: k.into(),
        target: compare::CompareTarget::Value as i32,
        result: compare::CompareResult::Equal as i32,
        target_union: Some(compare::TargetUnion::Value(v.into())),
        ..Default::default()
    }
}

fn value(m: &Mvcc, k: &str) -> Option<String> {
    let r = m.range(&RangeRequest { key: k.into(), ..Default::default() }).expect("range");
    r.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

fn store() -> (tempfile::TempDir, Mvcc) {
    fresh_mvcc(EngineKind::Redb)
}

/// `a=1; Then(Put(a,2), Txn([a=="1"], [Put(b)], [Put(c)]))`: the inner compare sees a=1 (the
/// state before the txn), as in etcd, so `b` is written.
#[test]
fn nested_compares_see_the_state_before_the_txn() {
    let (_d, mut m) = store();
    m.put(&PutRequest { key: "a".into(), value: "1".into(), ..Default::default() }, &lease_ok).unwrap();
    let inner =
        TxnRequest { compare: vec![value_is("a", "1")], success: vec![put("b", "x")], failure: vec![put("c", "x")] };
    let r =
        m.txn(&TxnRequest { success: vec![put("a", "2"), nested(inner)], ..Default::default() }, &lease_ok).unwrap();
    let Some(response_op::Response::ResponseTxn(t)) = &r.responses[1].response else { panic!("{r:?}") };
    assert!(t.succeeded);
    assert_eq!((value(&m, "a").as_deref(), value(&m, "b").as_deref(), value(&m, "c")), (Some("2"), Some("x"), None));
}

/// `x=1; Then(Put(x,2), Txn([x=="2"], [Put(y, lease=<missing>)]))`: the inner txn takes its
/// (empty) failure branch, so nothing but `x` is written and no key is attached to a lease
/// that does not exist.
#[test]
fn a_branch_not_taken_is_not_written() {
    let (_d, mut m) = store();
    m.put(&PutRequest { key: "x".into(), value: "1".into(), ..Default::default() }, &lease_ok).unwrap();
    let bad = PutRequest { key: "y".into(), value: "v".into(), lease: NO_LEASE, ..Default::default() };
    let inner = TxnRequest { compare: vec![value_is("x", "2")], success: vec![put_req(bad)], failure: vec![] };
    m.txn(&TxnRequest { success: vec![put("x", "2"), nested(inner)], ..Default::default() }, &lease_ok).unwrap();
    assert_eq!((value(&m, "x").as_deref(), value(&m, "y")), (Some("2"), None));
    assert!(m.lease_keys(NO_LEASE).is_empty());
}

/// `m=1; Then(Put(m,2), Txn([m=="2"], [Put(missing, ignore_value)]))`: etcd commits m=2; Cairn
/// used to answer "key not found" and commit m=2 anyway.
#[test]
fn a_checked_path_cannot_fail_halfway() {
    let (_d, mut m) = store();
    m.put(&PutRequest { key: "m".into(), value: "1".into(), ..Default::default() }, &lease_ok).unwrap();
    let missing = PutRequest { key: "missing".into(), ignore_value: true, ..Default::default() };
    let inner = TxnRequest { compare: vec![value_is("m", "2")], success: vec![put_req(missing)], failure: vec![] };
    let r = m.txn(&TxnRequest { success: vec![put("m", "2"), nested(inner)], ..Default::default() }, &lease_ok);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(value(&m, "m").as_deref(), Some("2"));
    // The same put on the taken path is refused before anything is written.
    let missing = PutRequest { key: "missing".into(), ignore_value: true, ..Default::default() };
    let rev = m.current_revision();
    let r = m.txn(&TxnRequest { success: vec![put("m", "3"), put_req(missing)], ..Default::default() }, &lease_ok);
    assert_eq!(r, Err(StoreError::KeyNotFound));
    assert_eq!((value(&m, "m").as_deref(), m.current_revision()), (Some("2"), rev));
}

/// A failure during execution (possible only for a request the server's validation would
/// refuse: a delete then an ignore_value put of the same key) undoes everything the txn
/// staged: keys, history, lease links, events and the batch on its way to disk.
#[test]
fn a_txn_that_fails_while_writing_leaves_nothing() {
    let (_d, mut m) = store();
    let with_lease = PutRequest { key: "k".into(), value: "1".into(), lease: LEASE, ..Default::default() };
    m.put(&with_lease, &lease_ok).unwrap();
    m.put(&PutRequest { key: "other".into(), value: "1".into(), ..Default::default() }, &lease_ok).unwrap();
    m.commit(WriteBatch::new(), true).unwrap();
    m.take_events();
    let rev = m.current_revision();
    let same_key = PutRequest { key: "k".into(), ignore_value: true, ..Default::default() };
    let txn = TxnRequest {
        success: vec![put("other", "2"), put("new", "1"), del("k", ""), put_req(same_key)],
        ..Default::default()
    };
    assert_eq!(m.txn(&txn, &lease_ok), Err(StoreError::KeyNotFound));
    assert_eq!(m.current_revision(), rev);
    assert!(m.take_events().is_empty());
    assert_eq!(
        (value(&m, "k").as_deref(), value(&m, "other").as_deref(), value(&m, "new")),
        (Some("1"), Some("1"), None)
    );
    assert_eq!(m.lease_keys(LEASE), vec![b"k".to_vec()]);
    // The next write takes the revision the failed one would have had, and the store reopens
    // with exactly the acknowledged state.
    m.put(&PutRequest { key: "after".into(), value: "1".into(), ..Default::default() }, &lease_ok).unwrap();
    assert_eq!(m.current_revision(), rev + 1);
    m.commit(WriteBatch::new(), true).unwrap();
    let engine = m.engine().clone();
    drop(m);
    let m = Mvcc::open(engine).unwrap();
    let all = m.range(&RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() }).unwrap();
    let got: Vec<_> = all.kvs.iter().map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.version)).collect();
    assert_eq!(got, vec![("after".to_string(), 1), ("k".to_string(), 1), ("other".to_string(), 1)]);
    assert_eq!(m.current_revision(), rev + 1);
    assert_eq!(m.lease_keys(LEASE), vec![b"k".to_vec()]);
}

// ---- the model ----

/// key -> (value, create_revision, mod_revision, version, lease)
type State = BTreeMap<String, (String, i64, i64, i64, i64)>;

const KEYS: u8 = 6;

fn key(i: u8) -> String {
    format!("k{}", i % KEYS)
}

/// `[k_i, k_{i+n})`, or the single key when `n == 0`.
fn span(i: u8, n: u8) -> (String, String) {
    let start = key(i);
    if n == 0 {
        (start, String::new())
    } else {
        (start, format!("k{}", (i % KEYS) as u32 + n as u32))
    }
}

fn in_span(k: &str, start: &str, end: &str) -> bool {
    if end.is_empty() {
        k == start
    } else {
        k >= start && k < end
    }
}

#[derive(Debug, Clone)]
enum GenOp {
    /// key, value, lease choice (0 none, 1 live, 2 missing), ignore_value
    Put(u8, u8, u8, bool),
    Delete(u8, u8),
    Get(u8, u8),
    Txn(GenTxn),
}

#[derive(Debug, Clone)]
struct GenTxn {
    /// key, expected value (None: compare version == 0, i.e. absent)
    compare: Vec<(u8, Option<u8>)>,
    success: Vec<GenOp>,
    failure: Vec<GenOp>,
}

fn gen_txn(depth: u32) -> BoxedStrategy<GenTxn> {
    let leaf = prop_oneof![
        4 => (any::<u8>(), 0u8..3, 0u8..3, proptest::bool::weighted(0.15)).prop_map(|(k, v, l, iv)| GenOp::Put(k, v, l, iv)),
        2 => (any::<u8>(), 0u8..3).prop_map(|(k, n)| GenOp::Delete(k, n)),
        2 => (any::<u8>(), 0u8..4).prop_map(|(k, n)| GenOp::Get(k, n)),
    ];
    let op = if depth == 0 {
        leaf.boxed()
    } else {
        prop_oneof![6 => leaf, 1 => gen_txn(depth - 1).prop_map(GenOp::Txn)].boxed()
    };
    let cmp = (any::<u8>(), proptest::option::of(0u8..3));
    (
        proptest::collection::vec(cmp, 0..3),
        proptest::collection::vec(op.clone(), 0..4),
        proptest::collection::vec(op, 0..4),
    )
        .prop_map(|(compare, success, failure)| GenTxn { compare, success, failure })
        .boxed()
}

/// Drop ops that would write a key twice in the whole tree (the server refuses those
/// before they reach the store), so every generated txn is one the store may be given.
fn dedupe(ops: &mut Vec<GenOp>, puts: &mut BTreeSet<String>, dels: &mut Vec<(String, String)>) {
    ops.retain_mut(|op| match op {
        GenOp::Put(k, ..) => {
            let k = key(*k);
            let clash = puts.contains(&k) || dels.iter().any(|(s, e)| in_span(&k, s, e));
            if !clash {
                puts.insert(k);
            }
            !clash
        }
        GenOp::Delete(k, n) => {
            let (s, e) = span(*k, *n);
            let clash = puts.iter().any(|p| in_span(p, &s, &e));
            if !clash {
                dels.push((s, e));
            }
            !clash
        }
        GenOp::Get(..) => true,
        GenOp::Txn(t) => {
            dedupe(&mut t.success, puts, dels);
            dedupe(&mut t.failure, puts, dels);
            true
        }
    });
}

fn to_request(t: &GenTxn) -> TxnRequest {
    let op = |o: &GenOp| match o {
        GenOp::Put(k, v, l, iv) => put_req(PutRequest {
            key: key(*k).into(),
            value: if *iv { vec![] } else { format!("v{v}").into() },
            lease: [0, LEASE, NO_LEASE][*l as usize],
            ignore_value: *iv,
            ..Default::default()
        }),
        GenOp::Delete(k, n) => {
            let (s, e) = span(*k, *n);
            del(&s, &e)
        }
        GenOp::Get(k, n) => {
            let (s, e) = span(*k, *n);
            get(&s, &e)
        }
        GenOp::Txn(t) => nested(to_request(t)),
    };
    TxnRequest {
        compare: t
            .compare
            .iter()
            .map(|(k, v)| match v {
                Some(v) => value_is(&key(*k), &format!("v{v}")),
                None => Compare {
                    key: key(*k).into(),
                    target: compare::CompareTarget::Version as i32,
                    result: compare::CompareResult::Equal as i32,
                    target_union: Some(compare::TargetUnion::Version(0)),
                    ..Default::default()
                },
            })
            .collect(),
        success: t.success.iter().map(op).collect(),
        failure: t.failure.iter().map(op).collect(),
    }
}

/// What a txn answered, reduced to what the model predicts.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Txn(bool, Vec<Seen>),
    Put,
    Deleted(i64),
    Got(Vec<(String, String, i64)>),
}

fn seen(r: &TxnResponse) -> Seen {
    let each = r
        .responses
        .iter()
        .map(|op| match &op.response {
            Some(response_op::Response::ResponseTxn(t)) => seen(t),
            Some(response_op::Response::ResponsePut(_)) => Seen::Put,
            Some(response_op::Response::ResponseDeleteRange(d)) => Seen::Deleted(d.deleted),
            Some(response_op::Response::ResponseRange(g)) => Seen::Got(
                g.kvs
                    .iter()
                    .map(|kv| {
                        (
                            String::from_utf8_lossy(&kv.key).into_owned(),
                            String::from_utf8_lossy(&kv.value).into_owned(),
                            kv.version,
                        )
                    })
                    .collect(),
            ),
            None => Seen::Deleted(-1),
        })
        .collect();
    Seen::Txn(r.succeeded, each)
}

struct Model<'a> {
    before: &'a State,
    now: State,
    rev: i64,
    wrote: bool,
}

impl Model<'_> {
    /// The branch a txn takes, on the state before the whole txn.
    fn decide(&self, t: &GenTxn) -> bool {
        t.compare.iter().all(|(k, v)| {
            let have = self.before.get(&key(*k));
            match v {
                Some(v) => have.is_some_and(|e| e.0 == format!("v{v}")),
                None => have.is_none(),
            }
        })
    }

    /// etcd's checks of the path on the state before the txn.
    fn check(&self, t: &GenTxn) -> Result<(), StoreError> {
        for op in if self.decide(t) { &t.success } else { &t.failure } {
            match op {
                GenOp::Put(k, _, l, iv) => {
                    if *iv && !self.before.contains_key(&key(*k)) {
                        return Err(StoreError::KeyNotFound);
                    }
                    if *l == 2 {
                        return Err(StoreError::LeaseNotFound);
                    }
                }
                GenOp::Txn(inner) => self.check(inner)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn run(&mut self, t: &GenTxn) -> Seen {
        let succeeded = self.decide(t);
        let mut out = Vec::new();
        for op in if succeeded { &t.success } else { &t.failure } {
            out.push(match op {
                GenOp::Put(k, v, l, iv) => {
                    let k = key(*k);
                    let prev = self.now.get(&k).cloned();
                    let value = match (&prev, iv) {
                        (Some(p), true) => p.0.clone(),
                        _ => format!("v{v}"),
                    };
                    let lease = [0, LEASE, NO_LEASE][*l as usize];
                    let e = match &prev {
                        Some(p) => (value, p.1, self.rev, p.3 + 1, lease),
                        None => (value, self.rev, self.rev, 1, lease),
                    };
                    self.now.insert(k, e);
                    self.wrote = true;
                    Seen::Put
                }
                GenOp::Delete(k, n) => {
                    let (s, e) = span(*k, *n);
                    let before = self.now.len();
                    self.now.retain(|k, _| !in_span(k, &s, &e));
                    let n = (before - self.now.len()) as i64;
                    self.wrote |= n > 0;
                    Seen::Deleted(n)
                }
                GenOp::Get(k, n) => {
                    let (s, e) = span(*k, *n);
                    Seen::Got(
                        self.now
                            .iter()
                            .filter(|(k, _)| in_span(k, &s, &e))
                            .map(|(k, v)| (k.clone(), v.0.clone(), v.3))
                            .collect(),
                    )
                }
                GenOp::Txn(inner) => self.run(inner),
            });
        }
        Seen::Txn(succeeded, out)
    }
}

fn everything(m: &Mvcc) -> State {
    let all = m.range(&RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() }).expect("range");
    all.kvs
        .into_iter()
        .map(|kv| {
            let k = String::from_utf8_lossy(&kv.key).into_owned();
            (
                k,
                (
                    String::from_utf8_lossy(&kv.value).into_owned(),
                    kv.create_revision,
                    kv.mod_revision,
                    kv.version,
                    kv.lease,
                ),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
    #[test]
    fn nested_txns_match_the_model(txns in proptest::collection::vec(gen_txn(2), 1..12)) {
        let (_d, mut m) = store();
        let mut state = State::new();
        for mut t in txns {
            let (mut puts, mut dels) = (BTreeSet::new(), Vec::new());
            dedupe(&mut t.success, &mut puts, &mut dels);
            let (mut puts, mut dels) = (BTreeSet::new(), Vec::new());
            dedupe(&mut t.failure, &mut puts, &mut dels);
            let rev = m.current_revision();
            let mut model = Model { before: &state, now: state.clone(), rev: rev + 1, wrote: false };
            let got = m.txn(&to_request(&t), &lease_ok);
            match model.check(&t) {
                Err(e) => {
                    prop_assert_eq!(got, Err(e));
                    prop_assert_eq!(m.current_revision(), rev);
                }
                Ok(()) => {
                    let want = model.run(&t);
                    let got = got.expect("checked txn");
                    prop_assert_eq!(seen(&got), want);
                    let next = if model.wrote { rev + 1 } else { rev };
                    prop_assert_eq!(m.current_revision(), next);
                    prop_assert_eq!(got.header.map(|h| h.revision), Some(next));
                    state = model.now;
                }
            }
            prop_assert_eq!(&everything(&m), &state);
            for (k, e) in &state {
                prop_assert_eq!(m.lease_keys(LEASE).contains(&k.clone().into_bytes()), e.4 == LEASE);
            }
            m.commit(WriteBatch::new(), false).expect("commit");
        }
    }
}
