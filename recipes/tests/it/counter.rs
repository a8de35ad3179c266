use crate::harness::*;
use cairn_recipes::{stm, AtomicValue, Counter, Error, Isolation};
use cairn_testing::{etcdctl_ok, Cluster};
use std::time::Duration;

/// Increments from clients on every member all count; compare-and-set; etcdctl reads the
/// number; a value that is not a number is refused, not overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_increments_from_everywhere_all_count() {
    let c = Cluster::start(3, &[]).await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let counter = Counter::new(&client(&c, i % 3).await, "/ctr");
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                counter.increment().await.unwrap();
            }
        }));
    }
    for t in tasks {
        within(Duration::from_secs(60), "increments", t).await.unwrap();
    }
    let counter = Counter::new(&client(&c, 0).await, "/ctr");
    assert_eq!(counter.get().await.unwrap(), 100);
    assert_eq!(etcdctl_ok(&c.endpoints(), &["get", "/ctr", "--print-value-only"]), "100\n");
    assert!(!counter.compare_and_set(99, 0).await.unwrap());
    assert!(counter.compare_and_set(100, 7).await.unwrap());
    assert_eq!(counter.add(-10).await.unwrap(), -3);
    etcdctl_ok(&c.endpoints(), &["put", "/ctr", "seven"]);
    assert!(matches!(counter.increment().await, Err(Error::Invalid { .. })));

    let list = AtomicValue::<Vec<u32>>::new(&client(&c, 1).await, "/list");
    let mut tasks = Vec::new();
    for i in 0..3u32 {
        let list = AtomicValue::<Vec<u32>>::new(&client(&c, i as usize).await, "/list");
        tasks.push(tokio::spawn(async move {
            for n in 0..5 {
                list.update(|mut v| {
                    v.push(i * 10 + n);
                    v
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut all = list.get().await.unwrap();
    all.sort();
    assert_eq!(all, [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24]);
}

/// STM: concurrent transfers between accounts keep the total (serializable snapshot);
/// every isolation level commits, and a conflicting write makes the function run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stm_transfers_keep_the_total() {
    let c = Cluster::start(3, &[]).await;
    let setup = client(&c, 0).await;
    for a in 0..4 {
        setup.put(format!("/acct/{a}"), "100", None).await.unwrap();
    }
    let mut tasks = Vec::new();
    for t in 0..4usize {
        let cl = client(&c, t % 3).await;
        tasks.push(tokio::spawn(async move {
            for n in 0..10usize {
                let (from, to) = (format!("/acct/{}", (t + n) % 4), format!("/acct/{}", (t + n + 1) % 4));
                stm(&cl, Isolation::SerializableSnapshot, |tx| {
                    let (from, to) = (from.clone(), to.clone());
                    async move {
                        let f: i64 = tx.get_string(&from).await?.and_then(|v| v.parse().ok()).unwrap_or(0);
                        let g: i64 = tx.get_string(&to).await?.and_then(|v| v.parse().ok()).unwrap_or(0);
                        tx.put(&from, (f - 7).to_string());
                        tx.put(&to, (g + 7).to_string());
                        Ok(())
                    }
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        within(Duration::from_secs(60), "transfers", t).await.unwrap();
    }
    let mut total = 0;
    for a in 0..4 {
        let v = setup.get(format!("/acct/{a}"), None).await.unwrap();
        total += String::from_utf8_lossy(&v.kvs[0].value).parse::<i64>().unwrap();
    }
    assert_eq!(total, 400, "money was made or lost");

    // A write between the read and the commit: the function runs again and sees it.
    for iso in [Isolation::SerializableSnapshot, Isolation::Serializable, Isolation::RepeatableReads] {
        let runs = std::sync::atomic::AtomicUsize::new(0);
        let other = setup.clone();
        let seen = stm(&setup, iso, |tx| {
            let n = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let other = other.clone();
            async move {
                let v = tx.get_string("/x").await?;
                if n == 0 {
                    other.put("/x", "changed", None).await?;
                }
                tx.put("/y", "done");
                Ok(v)
            }
        })
        .await
        .unwrap();
        assert_eq!((runs.into_inner(), seen.as_deref()), (2, Some("changed")), "{iso:?}");
        setup.delete("/x", None).await.unwrap();
    }
    // Read committed checks nothing: one run.
    let runs = std::sync::atomic::AtomicUsize::new(0);
    stm(&setup, Isolation::ReadCommitted, |tx| {
        runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let other = setup.clone();
        async move {
            tx.get("/x").await?;
            other.put("/x", "again", None).await?;
            tx.put("/y", "rc");
            Ok(())
        }
    })
    .await
    .unwrap();
    assert_eq!(runs.into_inner(), 1);
}

/// Processes: three counters of 20 increments each and three STM transferers leave 60
/// and the same total behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_count_and_transfer_without_losing_anything() {
    let c = Cluster::start(3, &[]).await;
    let setup = client(&c, 0).await;
    for a in 0..3 {
        setup.put(format!("/pacct/{a}"), "50", None).await.unwrap();
    }
    let counters: Vec<_> = (0..3).map(|_| example(&c, "recipe_worker", &["counter", "/pctr", "20"], "10")).collect();
    let movers: Vec<_> =
        (0..3).map(|_| example(&c, "recipe_worker", &["transfer", "/pacct/", "3", "10"], "10")).collect();
    let mut finals: Vec<i64> = counters.iter().map(|p| p.take(1)[0].parse().expect("a number")).collect();
    finals.sort();
    assert_eq!(finals[2], 60, "the last increment saw every other: {finals:?}");
    for m in &movers {
        assert_eq!(m.take(1), ["done"]);
    }
    let mut total = 0;
    for a in 0..3 {
        let v = setup.get(format!("/pacct/{a}"), None).await.unwrap();
        total += String::from_utf8_lossy(&v.kvs[0].value).parse::<i64>().unwrap();
    }
    assert_eq!(total, 150);
}
