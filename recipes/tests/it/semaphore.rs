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

/// Processes: five holders of a two-place semaphore never overlap more than two at a
/// time (by their wall-clock in/out times), and a holder killed with `kill -9` gives its
/// place back once its lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_two_places_and_a_killed_holder_frees_one() {
    let c = Cluster::start(3, &[]).await;
    let procs: Vec<_> =
        (0..5).map(|_| example(&c, "recipe_worker", &["semaphore", "/psem", "2", "300"], "10")).collect();
    let mut spans = Vec::new();
    for p in &procs {
        let lines = p.take(2);
        let t = |l: &str| l.split(' ').nth(1).and_then(|n| n.parse::<u128>().ok()).expect("a time");
        spans.push((t(&lines[0]), t(&lines[1])));
    }
    // Most holders inside at one instant (each printed span lies within its real holding).
    let mut events: Vec<(u128, i32)> = spans.iter().flat_map(|(a, b)| [(*a, 1), (*b, -1)]).collect();
    events.sort_by_key(|(t, d)| (*t, *d));
    let (mut now, mut most) = (0, 0);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    assert_eq!(most, 2, "at most two holders at once, and two at some point: {spans:?}");
    // Two holders that never leave (one is killed), a third waits until the killed one's
    // lease (2 s) expires.
    let mut killed = example(&c, "recipe_worker", &["semaphore", "/psem2", "2", "60000"], "2");
    assert!(killed.take(1)[0].starts_with("in "));
    let stays = example(&c, "recipe_worker", &["semaphore", "/psem2", "2", "60000"], "10");
    assert!(stays.take(1)[0].starts_with("in "));
    let third = example(&c, "recipe_worker", &["semaphore", "/psem2", "2", "10"], "10");
    assert!(third.try_line(Duration::from_millis(500)).is_none(), "a third holder got in");
    killed.kill();
    assert!(third.take(1)[0].starts_with("in "), "the killed holder's place came back");
}
