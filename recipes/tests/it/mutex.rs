use crate::harness::*;
use cairn_recipes::{Error, Mutex, RwMutex};
use cairn_sdk::{GetOptions, KeyValueExt, Session};
use cairn_testing::Cluster;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// N workers x M unguarded read-modify-write increments, each under the lock, from clients
/// on different members: any overlap would lose an increment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_under_the_lock_are_never_lost() {
    let c = Cluster::start(3, &[]).await;
    const WORKERS: usize = 4;
    const ROUNDS: usize = 10;
    let holders = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let client = client(&c, w % 3).await;
        let holders = holders.clone();
        tasks.push(tokio::spawn(async move {
            let session = Session::new(&client, 10).await.expect("session");
            let mutex = Mutex::new(&session, "/locks/counter");
            let mut tokens = Vec::new();
            for _ in 0..ROUNDS {
                let guard = mutex.lock().await.expect("lock");
                assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders at once");
                tokens.push(guard.fencing_token());
                let now = client.get("/counter", None).await.expect("get");
                let n: usize = now.kvs.first().map_or(0, |kv| kv.value_str().parse().expect("a number"));
                client.put("/counter", (n + 1).to_string(), None).await.expect("put");
                holders.fetch_sub(1, Ordering::SeqCst);
                guard.unlock().await.expect("unlock");
            }
            tokens
        }));
    }
    let mut all_tokens = Vec::new();
    for t in tasks {
        let tokens = within(Duration::from_secs(60), "workers", t).await.expect("worker");
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "a worker's fencing tokens only grow: {tokens:?}");
        all_tokens.extend(tokens);
    }
    let client = client(&c, 0).await;
    let n = client.get("/counter", None).await.unwrap().kvs[0].value_str().to_string();
    assert_eq!(n, (WORKERS * ROUNDS).to_string());
    all_tokens.sort();
    all_tokens.dedup();
    assert_eq!(all_tokens.len(), WORKERS * ROUNDS, "every acquisition has its own fencing token");
    let left = client.get("/locks/counter/", GetOptions::new().with_prefix().with_count_only()).await.unwrap();
    assert_eq!(left.count, 0, "no lock key left behind");
}

/// Mutual exclusion with etcd's own client: `etcdctl lock` and a Cairn mutex on one name.
/// A holder killed with SIGKILL releases the lock when its lease (--ttl) runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excludes_etcdctl_lock_both_ways_and_a_killed_holder_releases_within_its_ttl() {
    let c = Cluster::start(1, &[]).await;
    let client = client(&c, 0).await;
    let session = Session::new(&client, 5).await.unwrap();
    let mutex = Mutex::new(&session, "shared");

    // etcdctl holds it: we cannot take it.
    let mut cmd = etcdctl_command(&c.endpoints());
    cmd.args(["lock", "shared", "--ttl=2"]);
    let mut holder = Streaming::spawn(cmd);
    let key = holder.take(1).remove(0);
    assert!(key.starts_with("shared/"), "etcdctl printed its lock key: {key}");
    assert_eq!(mutex.try_lock().await.err(), Some(Error::Locked));
    // Killed without unlocking: the lock frees itself when the 2 s lease expires.
    let waiting = tokio::spawn({
        let mutex = mutex.clone();
        async move {
            let start = Instant::now();
            let guard = mutex.lock().await.expect("lock after the holder died");
            (guard, start.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.kill();
    let (guard, waited) = within(Duration::from_secs(10), "lock after kill", waiting).await.unwrap();
    assert!(waited < Duration::from_secs(5), "acquired {waited:?} after the holder was killed (TTL 2 s)");
    assert_eq!(guard.key(), format!("shared/{:x}", session.lease_id()));

    // We hold it: etcdctl waits until we release.
    let mut cmd = etcdctl_command(&c.endpoints());
    cmd.args(["lock", "shared"]);
    let waiter = Streaming::spawn(cmd);
    assert_eq!(waiter.try_line(Duration::from_millis(1500)), None, "etcdctl got the lock while we held it");
    guard.unlock().await.unwrap();
    let line = waiter.try_line(Duration::from_secs(10)).expect("etcdctl gets the lock once released");
    assert!(line.starts_with("shared/"), "{line}");
}

/// A waiter that gives up (its future dropped) leaves no key behind to block others, and
/// a lock held by a lost session is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_waiters_leave_nothing_behind() {
    let c = Cluster::start(1, &[]).await;
    let client = client(&c, 0).await;
    let s1 = Session::new(&client, 5).await.unwrap();
    let s2 = Session::new(&client, 5).await.unwrap();
    let held = Mutex::new(&s1, "/l").lock().await.unwrap();
    let m2 = Mutex::new(&s2, "/l");
    assert!(tokio::time::timeout(Duration::from_millis(500), m2.lock()).await.is_err(), "waited while held");
    eventually(Duration::from_secs(5), "the abandoned waiter's key is deleted", || async {
        client.get("/l/", GetOptions::new().with_prefix().with_count_only()).await.unwrap().count == 1
    })
    .await;
    drop(held); // released in the background
    let g2 = within(Duration::from_secs(5), "lock after drop", m2.lock()).await.unwrap();
    // A session lost while waiting: the waiter fails instead of hanging.
    let s3 = Session::new(&client, 5).await.unwrap();
    let m3 = Mutex::new(&s3, "/l");
    let lost = tokio::spawn(async move { m3.lock().await.err() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.lease_revoke(s3.lease_id()).await.unwrap();
    let err = within(Duration::from_secs(10), "waiter sees its session lost", lost).await.unwrap();
    assert_eq!(err, Some(Error::SessionLost));
    g2.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rwmutex_readers_share_and_writers_exclude() {
    let c = Cluster::start(1, &[]).await;
    let client = client(&c, 0).await;
    let sessions: Vec<Session> = futures_join(&client, 4).await;
    let r1 = RwMutex::new(&sessions[0], "/rw").read_lock().await.unwrap();
    let r2 =
        within(Duration::from_secs(5), "second reader", RwMutex::new(&sessions[1], "/rw").read_lock()).await.unwrap();
    let writer = RwMutex::new(&sessions[2], "/rw");
    let w = tokio::spawn(async move { writer.write_lock().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!w.is_finished(), "a writer got in while readers held the lock");
    // A reader arriving after the writer queues behind it.
    let late = RwMutex::new(&sessions[3], "/rw");
    let r3 = tokio::spawn(async move { late.read_lock().await });
    r1.unlock().await.unwrap();
    r2.unlock().await.unwrap();
    let wg = within(Duration::from_secs(5), "writer after readers", w).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!r3.is_finished(), "a reader got in while the writer held the lock");
    wg.unlock().await.unwrap();
    within(Duration::from_secs(5), "reader after writer", r3).await.unwrap().unwrap();
}

async fn futures_join(client: &cairn_sdk::Client, n: usize) -> Vec<Session> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Session::new(client, 10).await.unwrap());
    }
    out
}
