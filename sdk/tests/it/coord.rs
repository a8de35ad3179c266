//! The server's Lock and Election services through the SDK (etcd's v3lock and
//! v3election), with etcdctl's client-side lock as the other party.

use super::harness::Target;
use cairn_sdk::{Client, Session};
use std::time::Duration;

/// A client for calls that wait: HTTP/2 pings no more often than servers allow while a
/// call waits with nothing sent (every 10 s; grpc-go's servers refuse pings under 5 s).
async fn patient(t: &Target) -> Client {
    let eps: Vec<String> = t.cluster.members.iter().map(|m| m.endpoint()).collect();
    let opts = Target::options().with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    Client::connect(eps, opts).await.expect("connecting the SDK")
}

crate::on_both!(1: locks_exclude_each_other_and_etcdctl, elections_elect_observe_and_resign);

async fn locks_exclude_each_other_and_etcdctl(t: Target) {
    let a = patient(&t).await;
    let b = patient(&t).await;
    let (sa, sb) = (Session::new(&a, 30).await.unwrap(), Session::new(&b, 30).await.unwrap());
    let key = a.lock("/locks/l", sa.lease_id()).await.unwrap();
    assert!(key.starts_with(b"/locks/l/"), "{key:?}");
    // The second waits while the first holds the lock.
    let waiting = tokio::spawn(async move {
        let k = b.lock("/locks/l", sb.lease_id()).await.unwrap();
        (b, sb, k)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "two holders at once");
    // etcdctl's lock (clientv3's mutex, on the same keys) waits too (`timeout` ends it).
    let ep = t.cluster.members[0].endpoint();
    let etcdctl_lock = |secs: &str| {
        std::process::Command::new("timeout")
            .args([secs, "etcdctl", &format!("--endpoints={ep}"), "lock", "/locks/l", "echo", "got-it"])
            .env("ETCDCTL_API", "3")
            .output()
            .expect("timeout etcdctl")
    };
    let out = etcdctl_lock("2");
    assert_eq!(out.status.code(), Some(124), "etcdctl took a held lock: {}", String::from_utf8_lossy(&out.stdout));
    a.unlock(&key).await.unwrap();
    let (b, _sb, k2) = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("handed over").unwrap();
    assert_ne!(k2, key);
    b.unlock(&k2).await.unwrap();
    let out = etcdctl_lock("10");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("got-it"), "{out:?}");
    // Through a namespace: the lock key comes back without the prefix.
    let ns = a.with_namespace("/tenant/");
    let k = ns.lock("l", sa.lease_id()).await.unwrap();
    assert!(k.starts_with(b"l/"), "{k:?}");
    assert_eq!(a.get(&b"/tenant/"[..], cairn_sdk::GetOptions::new().with_prefix()).await.unwrap().count, 1);
    ns.unlock(&k).await.unwrap();
}

async fn elections_elect_observe_and_resign(t: Target) {
    let a = patient(&t).await;
    let b = patient(&t).await;
    let (sa, sb) = (Session::new(&a, 30).await.unwrap(), Session::new(&b, 30).await.unwrap());
    assert_eq!(a.leader("/el").await.unwrap(), None, "nobody leads yet");
    let mut observe = a.observe("/el");
    let la = a.campaign("/el", sa.lease_id(), "a").await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), observe.next()).await.expect("observed").unwrap().unwrap();
    assert_eq!(seen.value, b"a");
    let b_campaign = tokio::spawn(async move {
        let l = b.campaign("/el", sb.lease_id(), "b").await.unwrap();
        (b, sb, l)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b_campaign.is_finished(), "two leaders at once");
    a.proclaim(&la, "a2").await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), observe.next()).await.expect("observed").unwrap().unwrap();
    assert_eq!(seen.value, b"a2");
    assert_eq!(a.leader("/el").await.unwrap().map(|kv| kv.value), Some(b"a2".to_vec()));
    a.resign(&la).await.unwrap();
    let (b, _sb, lb) = tokio::time::timeout(Duration::from_secs(10), b_campaign).await.expect("elected").unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), observe.next()).await.expect("observed").unwrap().unwrap();
    assert_eq!(seen.value, b"b");
    assert_eq!(b.leader("/el").await.unwrap().map(|kv| kv.key), Some(lb.key.clone()));
}
