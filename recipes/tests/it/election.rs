use crate::harness::*;
use cairn_recipes::{Election, Error};
use cairn_sdk::{KeyValueExt, Session};
use cairn_testing::Cluster;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Candidates on different members campaign in rounds: never two leaders at once, and
/// every leader is seen by an observer, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_observers_see_each() {
    let c = Cluster::start(3, &[]).await;
    let watcher = client(&c, 0).await;
    let election = Election::new(&watcher, "/sched");
    assert_eq!(election.leader().await.err(), Some(Error::NoLeader));
    let mut observe = election.observe();
    let leaders = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..3 {
        let client = client(&c, i).await;
        let leaders = leaders.clone();
        tasks.push(tokio::spawn(async move {
            let session = Session::new(&client, 10).await.unwrap();
            let election = Election::new(&client, "/sched");
            for round in 0..2 {
                let lead = election.campaign(&session, format!("c{i}-r{round}")).await.expect("campaign");
                assert_eq!(leaders.fetch_add(1, Ordering::SeqCst), 0, "two leaders at once");
                assert_eq!(election.leader().await.unwrap().value_str(), format!("c{i}-r{round}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                lead.proclaim(format!("c{i}-r{round}-done")).await.expect("proclaim while leading");
                leaders.fetch_sub(1, Ordering::SeqCst);
                lead.resign().await.unwrap();
            }
        }));
    }
    for t in tasks {
        within(Duration::from_secs(60), "candidates", t).await.unwrap();
    }
    // Six terms, each seen with its first value and its proclamation.
    let mut seen = Vec::new();
    while seen.len() < 12 {
        let kv = within(Duration::from_secs(5), "observed leaders", observe.next()).await.unwrap().unwrap();
        seen.push(kv.value_str().to_string());
    }
    for pair in seen.chunks(2) {
        assert_eq!(format!("{}-done", pair[0]), pair[1], "observed {seen:?}");
    }
    let mut terms: Vec<&String> = seen.iter().step_by(2).collect();
    terms.sort();
    terms.dedup();
    assert_eq!(terms.len(), 6, "every term observed once: {seen:?}");
}

/// The leader's only link to the cluster is cut: its lease expires, the next candidate is
/// elected within the TTL, and the old leader learns it lost. `etcdctl elect -l` (etcd's
/// own client) observes our leaders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_is_replaced_within_its_ttl_and_etcdctl_agrees() {
    let c = Cluster::start(3, &[]).await;
    let (leader_client, proxy) = client_via_proxy(&c, 0).await;
    let s1 = Session::new(&leader_client, 2).await.unwrap();
    let lead = Election::new(&leader_client, "jobs").campaign(&s1, "replica-1").await.unwrap();

    let mut cmd = etcdctl_command(&c.endpoints());
    cmd.args(["elect", "-l", "jobs"]);
    let etcdctl = Streaming::spawn(cmd);
    assert_eq!(etcdctl.take(2), vec![lead.key().to_string(), "replica-1".to_string()]);

    let other = client(&c, 1).await;
    let s2 = Session::new(&other, 10).await.unwrap();
    let next = tokio::spawn(async move {
        let l = Election::new(&other, "jobs").campaign(&s2, "replica-2").await;
        (l, s2)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!next.is_finished(), "elected while the leader was alive");
    let cut = Instant::now();
    proxy.cut();
    let (l2, _s2) = within(Duration::from_secs(10), "second election", next).await.unwrap();
    let l2 = l2.unwrap();
    assert!(cut.elapsed() < Duration::from_secs(6), "new leader {:?} after the cut (TTL 2 s)", cut.elapsed());
    within(Duration::from_secs(5), "old leader notices", lead.lost()).await;
    assert_eq!(etcdctl.take(2), vec![l2.key().to_string(), "replica-2".to_string()]);

    // etcdctl campaigns too and waits behind our leader until it resigns.
    let mut cmd = etcdctl_command(&c.endpoints());
    cmd.args(["elect", "jobs", "from-etcdctl"]);
    let candidate = Streaming::spawn(cmd);
    assert_eq!(candidate.try_line(Duration::from_millis(1500)), None, "etcdctl elected while we lead");
    l2.resign().await.unwrap();
    let won = candidate.take(2);
    assert!(won[0].starts_with("jobs/"), "{won:?}");
    assert_eq!(won[1], "from-etcdctl");
    assert_eq!(etcdctl.take(2)[1], "from-etcdctl");
}
