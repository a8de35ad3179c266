use crate::harness::*;
use cairn_recipes::LeaderSelector;
use cairn_testing::{etcdctl_command, Cluster, Streaming};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Three selectors on three members: one leads at a time; each term ends after a while
/// and someone leads again (the one that stepped down campaigns again too); etcdctl's
/// `elect -l` sees the leaders; stopped selectors leave nobody leading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leads_at_a_time_and_leadership_comes_back_around() {
    let c = Cluster::start(3, &[]).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut observe = etcdctl_command(&c.endpoints());
    observe.args(["elect", "-l", "/sel"]);
    let observer = Streaming::spawn(observe);
    let mut selectors = Vec::new();
    for i in 0..3 {
        let cl = client(&c, i).await;
        let (inside, most) = (inside.clone(), most.clone());
        selectors.push(LeaderSelector::start(&cl, "/sel", format!("node-{i}"), 10, move |_term| {
            let (inside, most) = (inside.clone(), most.clone());
            async move {
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }
        }));
    }
    eventually(Duration::from_secs(30), "every selector led twice", || {
        let done = selectors.iter().all(|s| s.terms() >= 2);
        async move { done }
    })
    .await;
    assert_eq!(most.load(Ordering::SeqCst), 1, "two leaders at once");
    // etcdctl saw leaders come and go (the key, then the value, per leader).
    let lines = observer.take(6);
    assert!(lines.iter().filter(|l| l.starts_with("node-")).count() >= 3, "{lines:?}");
    for s in selectors {
        s.stop().await;
    }
    let cl = client(&c, 0).await;
    eventually(Duration::from_secs(10), "nobody leads", || {
        let cl = cl.clone();
        async move {
            cl.get("/sel/", cairn_sdk::GetOptions::new().with_prefix().with_count_only())
                .await
                .is_ok_and(|r| r.count == 0)
        }
    })
    .await;
}

/// Processes: three selectors, one leads; `kill -9` the leader and another leads once its
/// lease (2 s) expires, with a higher revision (the fencing token grows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_process_is_replaced() {
    let c = Cluster::start(3, &[]).await;
    let mut procs: Vec<_> =
        (0..3).map(|i| example(&c, "recipe_worker", &["selector", "/psel", &format!("p{i}")], "2")).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (leader, first) = loop {
        assert!(std::time::Instant::now() < deadline, "nobody leads");
        if let Some((i, l)) =
            procs.iter().enumerate().find_map(|(i, p)| p.try_line(Duration::from_millis(100)).map(|l| (i, l)))
        {
            break (i, l);
        }
    };
    let rev = |l: &str| l.strip_prefix("leading ").and_then(|r| r.parse::<i64>().ok()).expect("leading <revision>");
    let first = rev(&first);
    procs[leader].kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let next = loop {
        assert!(std::time::Instant::now() < deadline, "nobody took over");
        if let Some(l) = procs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .find_map(|(_, p)| p.try_line(Duration::from_millis(100)))
        {
            break rev(&l);
        }
    };
    assert!(next > first, "{next} <= {first}");
}
