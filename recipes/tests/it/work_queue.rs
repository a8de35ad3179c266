use crate::harness::*;
use cairn_recipes::{Error, WorkQueue};
use cairn_sdk::Session;
use cairn_testing::{Cluster, Streaming};
use std::collections::BTreeMap;
use std::time::Duration;

fn worker(c: &Cluster, args: &[&str], ttl: &str) -> Streaming {
    example(c, "work_queue_worker", args, ttl)
}

/// At least once, across processes: a worker process that takes a job and is killed
/// (`kill -9`) before acknowledging it gives the job back once its session expires; while
/// it lived, nobody else got that job. A worker that acknowledges removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_taken_by_a_dead_worker_comes_back() {
    let c = Cluster::start(3, &[]).await;
    let q = WorkQueue::new(&client(&c, 0).await, "/wq");
    for n in 0..3 {
        q.push(format!("job-{n}")).await.unwrap();
    }
    let mut dying = worker(&c, &["/wq"], "2");
    assert_eq!(dying.take(1), ["took job-0"]);
    let me = client(&c, 1).await;
    let session = Session::new(&me, 30).await.unwrap();
    let mine = within(Duration::from_secs(10), "take", q.take(&session)).await.unwrap();
    assert_eq!(mine.payload(), b"job-1", "job-0 is claimed by the worker");
    dying.kill();
    // job-2 is free now; job-0 comes back within the worker's TTL (2 s) after its death.
    let next = within(Duration::from_secs(10), "take", q.take(&session)).await.unwrap();
    assert_eq!(next.payload(), b"job-2");
    let back = within(Duration::from_secs(15), "the dead worker's job", q.take(&session)).await.unwrap();
    assert_eq!(back.payload(), b"job-0");
    for j in [mine, next, back] {
        j.ack().await.unwrap();
    }
    assert!(q.is_empty().await.unwrap());
    // A worker that acknowledges: the job is gone for good.
    q.push("job-3").await.unwrap();
    let acking = worker(&c, &["/wq", "--ack"], "10");
    assert_eq!(acking.take(2), ["took job-3", "acked"]);
    assert!(q.is_empty().await.unwrap());
    assert!(q.try_take(&session).await.unwrap().is_none());
}

/// Several consumers on different members, nobody dying: every job is handed out and
/// acknowledged exactly once; a released job goes to someone else; an ack after the
/// session's lease is gone is refused (the job may have gone to another consumer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_share_jobs_and_acks_check_the_claim() {
    let c = Cluster::start(3, &[]).await;
    const JOBS: usize = 24;
    let producer = WorkQueue::new(&client(&c, 0).await, "/wq2");
    let mut tasks = Vec::new();
    for i in 0..3 {
        let cl = client(&c, i).await;
        tasks.push(tokio::spawn(async move {
            let q = WorkQueue::new(&cl, "/wq2");
            let session = Session::new(&cl, 30).await.unwrap();
            let mut done = Vec::new();
            while done.len() < JOBS {
                let job = match tokio::time::timeout(Duration::from_secs(2), q.take(&session)).await {
                    Ok(j) => j.unwrap(),
                    Err(_) => break,
                };
                done.push(String::from_utf8(job.payload().to_vec()).unwrap());
                job.ack().await.unwrap();
            }
            done
        }));
    }
    for n in 0..JOBS {
        producer.push(format!("j{n:02}")).await.unwrap();
    }
    let mut seen = BTreeMap::new();
    for t in tasks {
        for j in within(Duration::from_secs(30), "consumers", t).await.unwrap() {
            *seen.entry(j).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), JOBS, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "a job handed out twice: {seen:?}");

    producer.push("r").await.unwrap();
    let a = client(&c, 0).await;
    let sa = Session::new(&a, 30).await.unwrap();
    let job = producer.take(&sa).await.unwrap();
    job.release().await.unwrap();
    let b = client(&c, 1).await;
    let sb = Session::new(&b, 30).await.unwrap();
    let again = within(Duration::from_secs(5), "released job", WorkQueue::new(&b, "/wq2").take(&sb)).await.unwrap();
    assert_eq!(again.payload(), b"r");
    b.lease_revoke(sb.lease_id()).await.unwrap();
    assert_eq!(again.ack().await, Err(Error::SessionLost));
    assert_eq!(producer.len().await.unwrap(), 1, "the job is still there for someone else");
}
