use crate::harness::*;
use cairn_recipes::{Barrier, DoubleBarrier, Error};
use cairn_sdk::Session;
use cairn_testing::Cluster;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_holds_waiters_until_released() {
    let c = Cluster::start(1, &[]).await;
    let client = client(&c, 0).await;
    let b = Barrier::new(&client, "/gate");
    within(Duration::from_secs(5), "wait on an open barrier", b.wait()).await.unwrap();
    b.hold().await.unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.wait().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(waiters.iter().all(|w| !w.is_finished()), "a waiter passed a held barrier");
    b.release().await.unwrap();
    for w in waiters {
        within(Duration::from_secs(5), "waiters after release", w).await.unwrap().unwrap();
    }
}

/// Three participants: nobody starts before all have entered, nobody finishes before all
/// have left; a fourth is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_barrier_starts_and_finishes_together() {
    let c = Cluster::start(1, &[]).await;
    let client = client(&c, 0).await;
    const N: usize = 3;
    let entered = Arc::new(AtomicUsize::new(0));
    let left = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..N {
        let (client, entered, left) = (client.clone(), entered.clone(), left.clone());
        tasks.push(tokio::spawn(async move {
            let session = Session::new(&client, 10).await.unwrap();
            let mut b = DoubleBarrier::new(&session, "/round", N);
            tokio::time::sleep(Duration::from_millis(150 * i as u64)).await;
            entered.fetch_add(1, Ordering::SeqCst);
            b.enter().await.unwrap();
            assert_eq!(entered.load(Ordering::SeqCst), N, "started before everyone entered");
            tokio::time::sleep(Duration::from_millis(150 * (N - i) as u64)).await;
            left.fetch_add(1, Ordering::SeqCst);
            b.leave().await.unwrap();
            assert_eq!(left.load(Ordering::SeqCst), N, "finished before everyone left");
            session
        }));
    }
    let mut sessions = Vec::new();
    for t in tasks {
        sessions.push(within(Duration::from_secs(30), "participants", t).await.unwrap());
    }
    // The barrier is reusable, and admits no more than its count.
    let extra: Vec<Session> = {
        let mut v = Vec::new();
        for _ in 0..=N {
            v.push(Session::new(&client, 10).await.unwrap());
        }
        v
    };
    let mut entering = Vec::new();
    for s in &extra[..N] {
        let mut b = DoubleBarrier::new(s, "/round2", N);
        entering.push(tokio::spawn(async move { b.enter().await }));
    }
    for e in entering {
        within(Duration::from_secs(10), "second round", e).await.unwrap().unwrap();
    }
    let mut late = DoubleBarrier::new(&extra[N], "/round2", N);
    assert_eq!(late.enter().await.err(), Some(Error::TooManyClients));
}
