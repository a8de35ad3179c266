//! The retry policy and per-call timeouts.

use super::harness::Target;
use cairn_sdk::{Client, Error, RetryPolicy};
use std::time::{Duration, Instant};

crate::on_both!(1: timeouts_and_retries);

async fn timeouts_and_retries(mut t: Target) {
    let ep = t.cluster.members[0].endpoint();
    let c = Client::connect([ep.as_str()], Target::options()).await.unwrap();
    c.put("p", "v", None).await.unwrap();
    // A member that stops answering: a call with its own short timeout gives up on time.
    t.cluster.members[0].pause();
    let quick = c.with_timeout(Some(Duration::from_millis(300)));
    let start = Instant::now();
    let r = quick.get("p", None).await;
    let took = start.elapsed();
    t.cluster.members[0].resume();
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(c.get("p", None).await.unwrap().kvs[0].value, b"v", "the client's own timeout is unchanged");

    // A member that is gone: the default policy keeps retrying until the request timeout;
    // a policy of one attempt fails at once.
    t.cluster.members[0].kill();
    let once = Client::connect([ep.as_str()], Target::options().with_dial_timeout(Duration::from_millis(200))).await;
    assert!(once.is_err(), "connecting to a dead member fails");
    let start = Instant::now();
    let r = c.with_timeout(Some(Duration::from_secs(2))).get("p", None).await;
    assert!(matches!(r, Err(Error::Timeout(_))), "retried until the timeout: {r:?}");
    assert!(start.elapsed() >= Duration::from_secs(2));
    t.cluster.members[0].start();
    t.cluster.wait_ready(0).await;
    let single =
        Client::connect([ep.as_str()], Target::options().with_retry(RetryPolicy::default().with_max_attempts(1)))
            .await
            .unwrap();
    single.get("p", None).await.unwrap();
    t.cluster.members[0].kill();
    let start = Instant::now();
    let r = single.with_timeout(Some(Duration::from_secs(5))).get("p", None).await;
    assert!(matches!(r, Err(Error::Unavailable(_))), "one attempt, no retry: {r:?}");
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
}
