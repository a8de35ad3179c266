//! Killing the member (the leader) a client is connected to: reads, watches and keep-alives carry on
//! through the other members, and the watch has no gap and no duplicate.

use super::harness::Target;
use cairn_sdk::{Compare, CompareOp, GetOptions, KeyValueExt, PutOptions, Session, Txn, TxnOp, WatchOptions};
use std::time::Duration;

crate::on_both!(3: watch_and_session_survive_member_death, prefer_leader_connects_to_the_leader, clients_spread_over_the_members, auto_sync_finds_every_member);

async fn watch_and_session_survive_member_death(mut t: Target) {
    // The watcher connects to the leader, the writer to another member; the leader is
    // killed mid-way (so the cluster also elects a new leader under the writes).
    let victim = t.cluster.leader().await;
    let watcher = t.client_from(victim).await;
    let writer = t.client_from((victim + 1) % 3).await;
    assert!(watcher.current_endpoint().ends_with(&t.cluster.members[victim].endpoint()));
    let mut w = watcher.watch("f/", WatchOptions::new().with_prefix()).await.unwrap();
    // A 5 s TTL: renewals every ~1.7 s must ride through the election (about 1-1.5 s).
    let session = Session::new(&watcher, 5).await.unwrap();
    writer.put("fs/session", "x", PutOptions::new().with_lease(session.lease_id())).await.unwrap();

    const N: usize = 200;
    let write =
        tokio::spawn(async move {
            for i in 0..N {
                // Create-if-absent, so a retry after an ambiguous error (the leader died with
                // the write in flight) cannot write the key twice.
                let key = format!("f/{i:04}");
                let create = Txn::new()
                    .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key, i.to_string(), None)]);
                let mut attempts = 0;
                while let Err(e) = writer.txn(create.clone()).await {
                    attempts += 1;
                    assert!(attempts < 50, "put {i} kept failing: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            writer
        });
    let mut seen: Vec<(String, i64)> = Vec::new();
    let mut killed = false;
    while seen.len() < N {
        let resp = tokio::time::timeout(Duration::from_secs(20), w.message())
            .await
            .unwrap_or_else(|_| panic!("the watch stalled after {} events", seen.len()))
            .expect("the stream is open")
            .expect("no watch error");
        for ev in resp.events {
            let kv = ev.kv.unwrap_or_default();
            seen.push((kv.key_str().into_owned(), kv.mod_revision));
        }
        if !killed && seen.len() >= N / 4 {
            t.cluster.members[victim].kill();
            killed = true;
        }
    }
    let writer = write.await.unwrap();
    let keys: Vec<String> = seen.iter().map(|(k, _)| k.clone()).collect();
    let want: Vec<String> = (0..N).map(|i| format!("f/{i:04}")).collect();
    assert_eq!(keys, want, "every write seen once, in order");
    assert!(seen.windows(2).all(|p| p[0].1 < p[1].1), "revisions increase");
    assert!(!watcher.current_endpoint().ends_with(&t.cluster.members[victim].endpoint()), "the watcher failed over");

    // Reads through the failed-over client work, and the session outlived its TTL.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let r = watcher.get("f/", GetOptions::new().with_prefix().with_count_only()).await.unwrap();
    assert_eq!(r.count as usize, N);
    assert!(!session.is_lost(), "the keep-alive failed over");
    assert_eq!(writer.get("fs/session", None).await.unwrap().count, 1);
}

async fn prefer_leader_connects_to_the_leader(t: Target) {
    let leader = t.cluster.leader().await;
    let follower = (leader + 1) % 3;
    let eps: Vec<String> = (0..3).map(|k| t.cluster.members[(follower + k) % 3].endpoint()).collect();
    let plain = cairn_sdk::Client::connect(eps.clone(), Target::options()).await.unwrap();
    assert!(plain.current_endpoint().ends_with(&t.cluster.members[follower].endpoint()), "first endpoint by default");
    let c = cairn_sdk::Client::connect(eps, Target::options().with_prefer_leader(true)).await.unwrap();
    assert!(c.current_endpoint().ends_with(&t.cluster.members[leader].endpoint()), "{}", c.current_endpoint());
    let s = c.status().await.unwrap();
    assert_eq!(s.header.unwrap_or_default().member_id, s.leader);
}

/// By default a client spreads its calls over the members — each unary call and each new
/// stream to the next one in turn — and clients start at random endpoints;
/// `with_spread(false)` stays on the first endpoint.
async fn clients_spread_over_the_members(mut t: Target) {
    let eps: Vec<String> = t.cluster.members.iter().map(|m| m.endpoint()).collect();
    let c = cairn_sdk::Client::connect(eps.clone(), Target::options().with_spread(true)).await.unwrap();
    let mut answered = std::collections::BTreeMap::new();
    for _ in 0..12 {
        let r = c.get("spread/k", GetOptions::new().with_serializable()).await.unwrap();
        *answered.entry(r.header.member_id).or_insert(0) += 1;
    }
    assert_eq!(answered.len(), 3, "one client's reads all on {answered:?}");
    assert!(answered.values().all(|n| *n == 4), "round robin: {answered:?}");
    // Watches too: each new stream on the next member.
    let mut watched = std::collections::BTreeSet::new();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut w = c.watch("spread/w", None).await.unwrap();
        w.request_progress();
        let r = w.message().await.expect("progress").unwrap();
        watched.insert(r.header.member_id);
        streams.push(w);
    }
    assert_eq!(watched.len(), 3, "watch streams on {watched:?}");
    // Different clients start at different members.
    let mut first = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let c = cairn_sdk::Client::connect(eps.clone(), Target::options().with_spread(true)).await.unwrap();
        first.insert(c.current_endpoint().to_string());
    }
    assert!(first.len() >= 2, "every client started on {first:?}");
    // Without spreading, a client stays on the first endpoint.
    let ordered = cairn_sdk::Client::connect(eps.clone(), Target::options()).await.unwrap();
    assert!(ordered.current_endpoint().ends_with(&eps[0]), "{}", ordered.current_endpoint());
    for _ in 0..6 {
        ordered.get("spread/k", GetOptions::new().with_serializable()).await.unwrap();
        assert!(ordered.current_endpoint().ends_with(&eps[0]), "stays on the first");
    }
    // A dead member is passed over: every call succeeds, on the other two.
    t.cluster.members[2].kill();
    let dead = t.cluster.members[2].endpoint();
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let r = c.get("spread/k", GetOptions::new().with_serializable()).await.unwrap();
        answered.insert(r.header.member_id);
        assert!(!c.current_endpoint().ends_with(&dead), "a call went to the dead member");
    }
    assert_eq!(answered.len(), 2, "{answered:?}");
}

/// `with_auto_sync`: a client given one member learns the others from the member list, and
/// goes on when that member dies.
async fn auto_sync_finds_every_member(mut t: Target) {
    let first = t.cluster.members[0].endpoint();
    let opts = Target::options().with_auto_sync(Duration::from_millis(200));
    let c = cairn_sdk::Client::connect([first.as_str()], opts).await.unwrap();
    assert_eq!(c.endpoints().len(), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.endpoints().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "endpoints not synced: {:?}", c.endpoints());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut want: Vec<String> = t.cluster.members.iter().map(|m| m.client_url.clone()).collect();
    want.sort();
    assert_eq!(c.endpoints(), want);
    t.cluster.members[0].kill();
    for _ in 0..6 {
        c.get("sync/k", GetOptions::new().with_serializable()).await.unwrap();
    }
    // A write may time out while the others elect a new leader: retryable, and it goes
    // through once they have.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match c.put("sync/k", "after", None).await {
            Ok(_) => break,
            Err(e) if e.is_retryable() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
}
