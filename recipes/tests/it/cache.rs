use crate::harness::*;
use cairn_recipes::{CacheEvent, PrefixCache};
use cairn_testing::{etcdctl_ok, Cluster};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct Flag {
    on: bool,
}

/// A typed cache of a prefix: the initial read, then every put and delete from anywhere
/// (etcdctl included) as entries and events in order; values that do not parse and keys
/// outside the prefix are left out; its revision follows the store's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_cache_follows_puts_and_deletes_with_events() {
    let c = Cluster::start(3, &[]).await;
    let ep = c.endpoints();
    etcdctl_ok(&ep, &["put", "/flags/a", r#"{"on":true}"#]);
    let cache = PrefixCache::<Flag>::json(&client(&c, 1).await, "/flags/").await.unwrap();
    assert_eq!(cache.get("a"), Some(Flag { on: true }));
    let mut events = cache.events();
    etcdctl_ok(&ep, &["put", "/flags/b", r#"{"on":false}"#]);
    etcdctl_ok(&ep, &["put", "/flags/a", r#"{"on":false}"#]);
    etcdctl_ok(&ep, &["put", "/flags/bad", "not json"]);
    etcdctl_ok(&ep, &["del", "/flags/b"]);
    etcdctl_ok(&ep, &["put", "/other", "x"]);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(within(Duration::from_secs(5), "event", events.recv()).await.unwrap());
    }
    assert_eq!(
        got,
        [
            CacheEvent::Put { key: "b".into(), value: Flag { on: false }, prev: None },
            CacheEvent::Put { key: "a".into(), value: Flag { on: false }, prev: Some(Flag { on: true }) },
            CacheEvent::Delete { key: "b".into(), prev: Flag { on: false } },
        ]
    );
    assert_eq!(cache.entries().keys().collect::<Vec<_>>(), ["a"], "bad JSON left out, /other not in the prefix");
    let rev = cache.revision();
    assert!(rev > 0);
    // A write from another client: the cache is current to its revision soon after.
    let cl = client(&c, 0).await;
    let head = cl.put("/flags/c", r#"{"on":true}"#, None).await.unwrap().header.revision;
    eventually(Duration::from_secs(5), "the cache caught up", || {
        let done = cache.revision() >= head && cache.get("c").is_some();
        async move { done }
    })
    .await;
}

/// A cache of one key follows that key only (not the keys it prefixes), names its entry
/// `""`, and reads again after the history it needs is compacted away while it is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_cache_follows_one_key_and_recovers_from_compaction() {
    let c = Cluster::start(1, &[]).await;
    let writer = client(&c, 0).await;
    writer.put("/mode", "\"a\"", None).await.unwrap();
    let (reader, proxy) = client_via_proxy(&c, 0).await;
    let cache =
        PrefixCache::<String>::key(&reader, "/mode", |_, kv| serde_json::from_slice(&kv.value).ok()).await.unwrap();
    assert_eq!(cache.entries().iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(), [("", "a")]);
    let mut events = cache.events();
    writer.put("/modes", "\"other\"", None).await.unwrap();
    writer.put("/mode", "\"b\"", None).await.unwrap();
    let ev = within(Duration::from_secs(5), "event", events.recv()).await.unwrap();
    assert_eq!(ev, CacheEvent::Put { key: "".into(), value: "b".into(), prev: Some("a".into()) });
    assert_eq!(cache.entries().len(), 1, "/modes is not /mode");

    // Cut off, the key changes twice and the history is compacted: the cache reads again.
    proxy.cut();
    writer.put("/mode", "\"c\"", None).await.unwrap();
    let last = writer.put("/mode", "\"d\"", None).await.unwrap();
    writer.compact(last.header.revision, true).await.unwrap();
    proxy.heal();
    eventually(Duration::from_secs(20), "the cache read the key again", || {
        let done = cache.get("").as_deref() == Some("d") && cache.revision() >= last.header.revision;
        async move { done }
    })
    .await;
}
