use crate::harness::*;
use cairn_recipes::{PriorityQueue, Queue};
use cairn_testing::Cluster;
use std::collections::HashMap;
use std::time::Duration;

/// K producers, C consumers on different members: every item is consumed exactly once,
/// and each consumer sees each producer's items in the order they were produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_once_in_producer_order() {
    let c = Cluster::start(3, &[]).await;
    const PRODUCERS: usize = 3;
    const CONSUMERS: usize = 3;
    const ITEMS: usize = 20;
    let total = PRODUCERS * ITEMS;
    let (tx, mut rx) = tokio::sync::mpsc::channel(total);
    let mut consumers = Vec::new();
    for i in 0..CONSUMERS {
        let q = Queue::new(&client(&c, i).await, "/jobs");
        let tx = tx.clone();
        consumers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            // Consumers start before producers: dequeue waits for items.
            while let Ok(item) = q.dequeue().await {
                let s = String::from_utf8(item).unwrap();
                got.push(s.clone());
                if tx.send((i, s)).await.is_err() {
                    break;
                }
            }
            got
        }));
    }
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let q = Queue::new(&client(&c, (p + 1) % 3).await, "/jobs");
        producers.push(tokio::spawn(async move {
            for n in 0..ITEMS {
                q.enqueue(format!("{p}:{n:03}")).await.unwrap();
            }
        }));
    }
    for p in producers {
        within(Duration::from_secs(60), "producers", p).await.unwrap();
    }
    let mut all = Vec::new();
    while all.len() < total {
        all.push(within(Duration::from_secs(30), "consumed items", rx.recv()).await.unwrap());
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (_, item) in &all {
        *counts.entry(item.clone()).or_default() += 1;
    }
    // What one consumer got from one producer came in production order.
    for consumer in 0..CONSUMERS {
        for p in 0..PRODUCERS {
            let mine: Vec<&String> = all
                .iter()
                .filter(|(c, item)| *c == consumer && item.starts_with(&format!("{p}:")))
                .map(|(_, i)| i)
                .collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "consumer {consumer} got producer {p} out of order: {mine:?}"
            );
        }
    }
    assert_eq!(counts.len(), total, "every item consumed");
    assert!(counts.values().all(|n| *n == 1), "an item consumed twice");
    drop(rx);
    for c in consumers {
        c.abort();
    }
    let q = Queue::new(&client(&c, 0).await, "/jobs");
    assert!(q.is_empty().await.unwrap());
    // Per-consumer order: with one producer and one consumer, exact FIFO.
    q.enqueue("a").await.unwrap();
    q.enqueue("b").await.unwrap();
    q.enqueue("c").await.unwrap();
    for want in ["a", "b", "c"] {
        assert_eq!(q.dequeue().await.unwrap(), want.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_takes_the_most_urgent_first() {
    let c = Cluster::start(1, &[]).await;
    let client = client(&c, 0).await;
    let q = PriorityQueue::new(&client, "/pq");
    for (v, p) in [("low-1", 9), ("high-1", 1), ("low-2", 9), ("high-2", 1), ("top", 0)] {
        q.enqueue(v, p).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(String::from_utf8(q.dequeue().await.unwrap()).unwrap());
    }
    assert_eq!(got, ["top", "high-1", "high-2", "low-1", "low-2"]);
    // Empty: dequeue waits for the next item.
    let waiting = tokio::spawn({
        let q = q.clone();
        async move { q.dequeue().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    q.enqueue("late", 5).await.unwrap();
    let late = within(Duration::from_secs(5), "dequeue after enqueue", waiting).await.unwrap().unwrap();
    assert_eq!(late, b"late");
}
