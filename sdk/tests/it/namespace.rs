//! `Client::with_namespace`: a client whose key space is one prefix of the cluster's.

use super::harness::Target;
use cairn_sdk::{
    Compare, CompareOp, DeleteOptions, GetOptions, KeyValueExt, PutOptions, Session, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};

crate::on_both!(1: keys_ranges_txns_watches_and_leases_stay_inside);

fn keys(r: &cairn_sdk::GetResponse) -> Vec<String> {
    r.kvs.iter().map(|kv| kv.key_str().into_owned()).collect()
}

async fn keys_ranges_txns_watches_and_leases_stay_inside(t: Target) {
    let raw = t.client().await;
    let ns = raw.with_namespace("/t/");
    assert_eq!(ns.namespace(), b"/t/");
    raw.put("outside", "x", None).await.unwrap();
    raw.put("/t0", "just past the namespace", None).await.unwrap();
    let mut watch = ns.watch("w", WatchOptions::new().with_prefix().with_prev_kv()).await.unwrap();

    for k in ["a", "b", "c/1", "c/2"] {
        ns.put(k, format!("v-{k}"), None).await.unwrap();
    }
    // The cluster sees the prefix; the namespaced client does not.
    assert_eq!(
        keys(&raw.get("/t/", GetOptions::new().with_prefix()).await.unwrap()),
        ["/t/a", "/t/b", "/t/c/1", "/t/c/2"]
    );
    let g = ns.get("a", None).await.unwrap();
    assert_eq!((g.kvs[0].key_str().as_ref(), g.kvs[0].value_str().as_ref()), ("a", "v-a"));
    // Every key, from a key on, a range, a prefix: all inside the namespace.
    assert_eq!(keys(&ns.get("", GetOptions::new().with_prefix()).await.unwrap()), ["a", "b", "c/1", "c/2"]);
    assert_eq!(keys(&ns.get("b", GetOptions::new().with_from_key()).await.unwrap()), ["b", "c/1", "c/2"]);
    assert_eq!(keys(&ns.get("a", GetOptions::new().with_range("c")).await.unwrap()), ["a", "b"]);
    assert_eq!(keys(&ns.get("c/", GetOptions::new().with_prefix()).await.unwrap()), ["c/1", "c/2"]);
    // Previous values come back without the prefix.
    let p = ns.put("a", "v2", PutOptions::new().with_prev_kv()).await.unwrap();
    assert_eq!(p.prev_kv.expect("prev").key, b"a");

    // Transactions: compares, operations and nested results, all namespaced.
    let txn = Txn::new().when([Compare::value("a", CompareOp::Equal, "v2")]).and_then([
        TxnOp::put("w/1", "one", None),
        TxnOp::get("c/", GetOptions::new().with_prefix()),
        TxnOp::txn(Txn::new().and_then([TxnOp::get("b", None)])),
    ]);
    let r = ns.txn(txn).await.unwrap();
    assert!(r.succeeded);
    match (&r.responses[1], &r.responses[2]) {
        (TxnOpResponse::Get(g), TxnOpResponse::Txn(inner)) => {
            assert_eq!(keys(g), ["c/1", "c/2"]);
            match &inner.responses[0] {
                TxnOpResponse::Get(g) => assert_eq!(keys(g), ["b"]),
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(raw.get("/t/w/1", None).await.unwrap().kvs[0].value, b"one");
    // A compare on a key outside the namespace's view: `outside` inside it does not exist.
    let miss = ns.txn(Txn::new().when([Compare::version("outside", CompareOp::Greater, 0)])).await.unwrap();
    assert!(!miss.succeeded);

    // The watch saw the namespaced put, without the prefix.
    let ev = watch.message().await.expect("an event").unwrap();
    assert_eq!(ev.events[0].kv.as_ref().map(|kv| kv.key.clone()), Some(b"w/1".to_vec()));

    // A lease's keys: only those in the namespace, without the prefix.
    let s = Session::new(&raw, 30).await.unwrap();
    ns.put("leased", "1", PutOptions::new().with_lease(s.lease_id())).await.unwrap();
    raw.put("outside-leased", "1", PutOptions::new().with_lease(s.lease_id())).await.unwrap();
    let ttl = ns.lease_time_to_live(s.lease_id(), true).await.unwrap();
    assert_eq!(ttl.keys, [b"leased".to_vec()]);

    // Deleting everything in the namespace leaves the rest.
    let d = ns.delete("", DeleteOptions::new().with_prefix()).await.unwrap();
    assert_eq!(d.deleted, 6);
    assert_eq!(
        keys(&raw.get("", GetOptions::new().with_prefix().with_keys_only()).await.unwrap()),
        ["/t0", "outside", "outside-leased"]
    );

    // Namespaces nest.
    let deeper = ns.with_namespace("x/");
    deeper.put("k", "v", None).await.unwrap();
    assert_eq!(raw.get("/t/x/k", None).await.unwrap().count, 1);
    assert_eq!(keys(&ns.get("x/", GetOptions::new().with_prefix()).await.unwrap()), ["x/k"]);
}
