use crate::harness::*;
use cairn_recipes::Semaphore;
use cairn_sdk::Session;
use cairn_testing::Cluster;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Six holders on three members, two permits: never more than two inside at once, all six
/// get in; a full semaphore refuses `try_acquire`; a holder whose lease ends frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_n_holders_and_a_lost_session_frees_its_place() {
    let c = Cluster::start(3, &[]).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let cl = client(&c, i % 3).await;
        let (inside, most) = (inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let session = Session::new(&cl, 30).await.unwrap();
            let sem = Semaphore::new(&session, "/sem", 2);
            let permit = sem.acquire().await.unwrap();
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(150)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            permit.release().await.unwrap();
        }));
    }
    for t in tasks {
        within(Duration::from_secs(30), "holders", t).await.unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 2, "at most two, and two at once");

    let a = client(&c, 0).await;
    let (s1, s2, s3) =
        (Session::new(&a, 30).await.unwrap(), Session::new(&a, 30).await.unwrap(), Session::new(&a, 30).await.unwrap());
    let _p1 = Semaphore::new(&s1, "/sem", 2).acquire().await.unwrap();
    let _p2 = Semaphore::new(&s2, "/sem", 2).acquire().await.unwrap();
    let third = Semaphore::new(&s3, "/sem", 2);
    assert!(third.try_acquire().await.unwrap().is_none(), "full");
    assert_eq!(third.queued().await.unwrap(), 2, "try_acquire left no place in line");
    let waiting = tokio::spawn(async move { third.acquire().await.map(|p| p.key().to_string()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    // The first holder's lease ends (its process died): its place goes to the waiter.
    a.lease_revoke(s1.lease_id()).await.unwrap();
    within(Duration::from_secs(10), "the freed place", waiting).await.unwrap().unwrap();
}
