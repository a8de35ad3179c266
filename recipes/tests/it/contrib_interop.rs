//! The queue, priority queue, barriers and read-write lock beside etcd's own Go recipes
//! (`go.etcd.io/etcd/contrib/recipes` from etcd 3.4, built from Debian's sources): each side
//! takes what the other put, and waits on what the other holds.

use crate::harness::*;
use cairn_recipes::{Barrier, DoubleBarrier, PriorityQueue, Queue, RwMutex};
use cairn_sdk::Session;
use cairn_testing::Cluster;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

/// Wait for the next line of a Go recipe process (blocking reads off the runtime's workers).
async fn line(p: &Streaming) -> String {
    tokio::task::block_in_place(|| p.take(1)).remove(0)
}

async fn quiet(p: &Streaming, what: &str) {
    let got = tokio::task::block_in_place(|| p.try_line(Duration::from_millis(700)));
    assert_eq!(got, None, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contrib_recipes_and_ours_share_queues_barriers_and_locks() {
    let bin = go_program("contrib").await;
    let c = Cluster::start(1, &[]).await;
    let ep = c.members[0].endpoint();
    let cl = client(&c, 0).await;
    let go = |args: &[&str]| {
        let mut cmd = Command::new(&bin);
        cmd.arg(args[0]).arg(&ep).args(&args[1..]);
        cmd
    };
    let run = |args: &[&str]| {
        let out = go(args).output().expect("running the Go recipe");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect::<Vec<_>>()
    };

    // Queue: Go's items come out here in order, and ours there.
    assert_eq!(run(&["queue-put", "/jobs", "a", "b", "c"]), ["done"]);
    let q = Queue::new(&cl, "/jobs");
    for want in ["a", "b", "c"] {
        assert_eq!(within(Duration::from_secs(5), "dequeue", q.dequeue()).await.unwrap(), want.as_bytes());
    }
    q.enqueue("x").await.unwrap();
    q.enqueue("y").await.unwrap();
    assert_eq!(run(&["queue-take", "/jobs", "2"]), ["x", "y"]);

    // Priority queue: the most urgent first, whoever put it.
    assert_eq!(run(&["pqueue-put", "/work", "5:low", "1:urgent", "3:mid"]), ["done"]);
    let pq = PriorityQueue::new(&cl, "/work");
    pq.enqueue("middling", 2).await.unwrap();
    for want in ["urgent", "middling", "mid", "low"] {
        assert_eq!(within(Duration::from_secs(5), "dequeue", pq.dequeue()).await.unwrap(), want.as_bytes());
    }
    pq.enqueue("later", 4).await.unwrap();
    pq.enqueue("first", 0).await.unwrap();
    assert_eq!(run(&["pqueue-take", "/work", "2"]), ["first", "later"]);

    // Barrier: Go holds it and ours waits; ours holds it and Go waits.
    let (holder, mut stdin) = Streaming::spawn_with_input(go(&["barrier-hold", "/gate"]));
    assert_eq!(line(&holder).await, "held");
    let b = Barrier::new(&cl, "/gate");
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.wait().await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "our waiter passed Go's barrier");
    writeln!(stdin, "release").unwrap();
    assert_eq!(line(&holder).await, "released");
    within(Duration::from_secs(5), "our waiter after Go's release", waiter).await.unwrap().unwrap();
    b.hold().await.unwrap();
    let go_waiter = Streaming::spawn(go(&["barrier-wait", "/gate"]));
    assert_eq!(line(&go_waiter).await, "waiting");
    quiet(&go_waiter, "Go's waiter passed our barrier").await;
    b.release().await.unwrap();
    assert_eq!(line(&go_waiter).await, "passed");

    // Double barrier of two: one Go participant and one of ours enter and leave together.
    let (go_part, mut go_in) = Streaming::spawn_with_input(go(&["double-barrier", "/round", "2"]));
    quiet(&go_part, "Go entered alone").await;
    let session = Session::new(&cl, 10).await.unwrap();
    let mut ours = DoubleBarrier::new(&session, "/round", 2);
    within(Duration::from_secs(10), "our enter", ours.enter()).await.unwrap();
    assert_eq!(line(&go_part).await, "entered");
    let leaving = tokio::spawn(async move { ours.leave().await.map(|_| ours) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!leaving.is_finished(), "we left before Go did");
    writeln!(go_in, "leave").unwrap();
    assert_eq!(line(&go_part).await, "left");
    within(Duration::from_secs(10), "our leave", leaving).await.unwrap().unwrap();

    // Read-write lock: Go's writer excludes our reader; our reader shares with Go's reader
    // and excludes Go's writer.
    let (writer, mut w_in) = Streaming::spawn_with_input(go(&["rwmutex", "/rw", "write"]));
    assert_eq!(line(&writer).await, "locked");
    let rw = RwMutex::new(&session, "/rw");
    let reading = tokio::spawn(async move { rw.read_lock().await.map(|g| (g, rw)) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!reading.is_finished(), "we read while Go wrote");
    writeln!(w_in, "unlock").unwrap();
    assert_eq!(line(&writer).await, "unlocked");
    let (guard, _rw) = within(Duration::from_secs(10), "our read lock", reading).await.unwrap().unwrap();
    let (reader, mut r_in) = Streaming::spawn_with_input(go(&["rwmutex", "/rw", "read"]));
    assert_eq!(line(&reader).await, "locked", "Go's reader shares with ours");
    writeln!(r_in, "unlock").unwrap();
    assert_eq!(line(&reader).await, "unlocked");
    let (writer, mut w_in) = Streaming::spawn_with_input(go(&["rwmutex", "/rw", "write"]));
    quiet(&writer, "Go wrote while we read").await;
    guard.unlock().await.unwrap();
    assert_eq!(line(&writer).await, "locked");
    writeln!(w_in, "unlock").unwrap();
    assert_eq!(line(&writer).await, "unlocked");
}
