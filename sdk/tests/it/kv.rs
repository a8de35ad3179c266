//! Get, put, delete, transactions, compaction, and the errors each gives.

use super::harness::Target;
use cairn_sdk::{
    Compare, CompareOp, DeleteOptions, Error, GetOptions, KeyValueExt, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};

crate::on_both!(1: basics, ranges, txn, compaction, errors);

fn keys(r: &cairn_sdk::GetResponse) -> Vec<String> {
    r.kvs.iter().map(|kv| kv.key_str().into_owned()).collect()
}

async fn basics(t: Target) {
    let c = t.client().await;
    let p1 = c.put("k", "v1", None).await.unwrap();
    assert!(p1.prev_kv.is_none());
    let p2 = c.put("k", "v2", PutOptions::new().with_prev_kv()).await.unwrap();
    assert_eq!(p2.header.revision, p1.header.revision + 1);
    assert_eq!(p2.prev_kv.expect("prev kv").value, b"v1");

    let g = c.get("k", None).await.unwrap();
    assert_eq!(g.count, 1);
    let kv = &g.kvs[0];
    assert_eq!(
        (kv.value_str().as_ref(), kv.version, kv.create_revision, kv.mod_revision),
        ("v2", 2, p1.header.revision, p2.header.revision)
    );
    assert_eq!(g.header.revision, p2.header.revision);
    assert_ne!(g.header.member_id, 0);

    // History and serializable reads.
    let old = c.get("k", GetOptions::new().with_revision(p1.header.revision)).await.unwrap();
    assert_eq!(old.kvs[0].value, b"v1");
    let s = c.get("k", GetOptions::new().with_serializable()).await.unwrap();
    assert_eq!(s.kvs[0].value, b"v2");

    // ignore_value keeps the value and bumps the version.
    c.put("k", "", PutOptions::new().with_ignore_value()).await.unwrap();
    let g = c.get("k", None).await.unwrap();
    assert_eq!((g.kvs[0].value.as_slice(), g.kvs[0].version), (b"v2".as_slice(), 3));

    let missing = c.get("nope", None).await.unwrap();
    assert_eq!((missing.count, missing.kvs.len()), (0, 0));

    let d = c.delete("k", DeleteOptions::new().with_prev_kv()).await.unwrap();
    assert_eq!(d.deleted, 1);
    assert_eq!(d.prev_kvs[0].value, b"v2");
    assert_eq!(c.delete("k", None).await.unwrap().deleted, 0);
}

async fn ranges(t: Target) {
    let c = t.client().await;
    for k in ["a/1", "a/2", "a/3", "b/1", "c"] {
        c.put(k, format!("val-{k}"), None).await.unwrap();
    }
    let p = c.get("a/", GetOptions::new().with_prefix()).await.unwrap();
    assert_eq!(keys(&p), ["a/1", "a/2", "a/3"]);
    let r = c.get("a/2", GetOptions::new().with_range("b/2")).await.unwrap();
    assert_eq!(keys(&r), ["a/2", "a/3", "b/1"]);
    let f = c.get("b", GetOptions::new().with_from_key()).await.unwrap();
    assert_eq!(keys(&f), ["b/1", "c"]);
    let all = c.get("", GetOptions::new().with_prefix()).await.unwrap();
    assert_eq!(all.count, 5);

    let l = c.get("a/", GetOptions::new().with_prefix().with_limit(2)).await.unwrap();
    assert_eq!((keys(&l).len(), l.more, l.count), (2, true, 3));
    let desc =
        c.get("a/", GetOptions::new().with_prefix().with_sort(SortTarget::Key, SortOrder::Descend)).await.unwrap();
    assert_eq!(keys(&desc), ["a/3", "a/2", "a/1"]);
    let ko = c.get("a/", GetOptions::new().with_prefix().with_keys_only()).await.unwrap();
    assert!(ko.kvs.iter().all(|kv| kv.value.is_empty()) && ko.kvs.len() == 3);
    let co = c.get("a/", GetOptions::new().with_prefix().with_count_only()).await.unwrap();
    assert_eq!((co.count, co.kvs.len()), (3, 0));
    let first = p.kvs[0].mod_revision;
    let newer = c.get("a/", GetOptions::new().with_prefix().with_mod_revision_range(first + 1, 0)).await.unwrap();
    assert_eq!(keys(&newer), ["a/2", "a/3"]);

    let d = c.delete("a/", DeleteOptions::new().with_prefix()).await.unwrap();
    assert_eq!(d.deleted, 3);
    assert_eq!(c.get("", GetOptions::new().with_prefix().with_count_only()).await.unwrap().count, 2);
}

async fn txn(t: Target) {
    let c = t.client().await;
    // Create-if-absent, twice: the first succeeds, the second fails and reads.
    let create = || {
        Txn::new()
            .when([Compare::version("lock", CompareOp::Equal, 0)])
            .and_then([TxnOp::put("lock", "me", None), TxnOp::get("lock", None)])
            .or_else([TxnOp::get("lock", None)])
    };
    let first = c.txn(create()).await.unwrap();
    assert!(first.succeeded);
    assert_eq!(first.responses.len(), 2);
    assert!(matches!(&first.responses[0], TxnOpResponse::Put(_)));
    match &first.responses[1] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs[0].value, b"me"),
        other => panic!("expected a get response, got {other:?}"),
    }
    let second = c.txn(create()).await.unwrap();
    assert!(!second.succeeded);
    assert_eq!(second.header.revision, first.header.revision, "a failed read-only branch writes nothing");

    // Compare-and-swap on mod revision, value comparisons, prefix comparisons, nested txn.
    let rev = match &first.responses[1] {
        TxnOpResponse::Get(g) => g.kvs[0].mod_revision,
        _ => unreachable!(),
    };
    let cas = Txn::new()
        .when([Compare::mod_revision("lock", CompareOp::Equal, rev), Compare::value("lock", CompareOp::Equal, "me")])
        .and_then([TxnOp::put("lock", "you", None), TxnOp::delete("other", None)]);
    let r = c.txn(cas.clone()).await.unwrap();
    assert!(r.succeeded);
    assert!(!c.txn(cas).await.unwrap().succeeded, "the revision moved on");
    let nested = Txn::new()
        .when([Compare::create_revision("lock", CompareOp::Greater, 0).with_prefix()])
        .and_then([TxnOp::txn(Txn::new().and_then([TxnOp::put("n", "1", None)]))]);
    let r = c.txn(nested).await.unwrap();
    assert!(r.succeeded);
    assert!(matches!(&r.responses[0], TxnOpResponse::Txn(inner) if inner.succeeded));
    assert_eq!(c.get("n", None).await.unwrap().kvs[0].value, b"1");

    let dup = Txn::new().and_then([TxnOp::put("x", "1", None), TxnOp::put("x", "2", None)]);
    assert_eq!(c.txn(dup).await.unwrap_err(), Error::DuplicateKey);
}

async fn compaction(t: Target) {
    let c = t.client().await;
    let r1 = c.put("h", "1", None).await.unwrap().header.revision;
    c.put("h", "2", None).await.unwrap();
    let r3 = c.put("h", "3", None).await.unwrap().header.revision;
    c.compact(r3, true).await.unwrap();
    assert_eq!(
        c.get("h", GetOptions::new().with_revision(r1)).await.unwrap_err(),
        Error::Compacted { compact_revision: 0 }
    );
    assert_eq!(c.get("h", GetOptions::new().with_revision(r3)).await.unwrap().kvs[0].value, b"3");
    let e = c.compact(r1, false).await.unwrap_err();
    assert!(matches!(e, Error::Compacted { .. }), "{e:?}");
}

async fn errors(t: Target) {
    let c = t.client().await;
    assert_eq!(c.put("", "v", None).await.unwrap_err(), Error::EmptyKey);
    assert_eq!(c.get("", None).await.unwrap_err(), Error::EmptyKey);
    let now = c.put("e", "v", None).await.unwrap().header.revision;
    assert_eq!(c.get("e", GetOptions::new().with_revision(now + 100)).await.unwrap_err(), Error::FutureRevision);
    assert_eq!(c.put("e", "v", PutOptions::new().with_lease(0x1234_5678)).await.unwrap_err(), Error::LeaseNotFound);
    assert_eq!(c.put("absent", "", PutOptions::new().with_ignore_value()).await.unwrap_err(), Error::KeyNotFound);
    assert_eq!(c.put("e", "v", PutOptions::new().with_ignore_value()).await.unwrap_err(), Error::ValueProvided);
    let big = vec![b'x'; 1_600_000]; // over 1.5 MiB, under the gRPC cap
    let e = c.put("big", big, None).await.unwrap_err();
    assert_eq!(e, Error::RequestTooLarge, "{e}");
    // The member keeps serving after each of them.
    assert_eq!(c.get("e", None).await.unwrap().kvs[0].value, b"v");
}
