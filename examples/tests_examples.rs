//! The examples, run as real processes against a real cluster: what their docs promise
//! happens. `./scripts/test` builds them (`cargo build --examples`) before the tests.

use cairn_sdk::{Client, ConnectOptions};
use cairn_testing::{Cluster, Streaming};
use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

/// `f`, or a panic naming `what` once `limit` passes.
async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| panic!("{what}: not done within {limit:?}"))
}

/// A client of member `first` of `c`.
async fn client(c: &Cluster, first: usize) -> Client {
    Client::connect([c.members[first].endpoint()], ConnectOptions::default()).await.expect("connecting")
}

fn example(name: &str, endpoints: &str) -> Command {
    let mut cmd = Command::new(cairn_testing::example_binary(name));
    cmd.arg(format!("--endpoints={endpoints}"));
    cmd
}

/// Read lines until `want` matches one, for at most `limit`; the lines read.
fn read_until(s: &Streaming, limit: Duration, what: &str, mut want: impl FnMut(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some(line) = s.try_line(Duration::from_millis(200)) {
            let done = want(&line);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }
    panic!("{what}: not seen within {limit:?}; output: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeter_balances_across_instances_and_drops_a_killed_one() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    let mut a = Streaming::spawn({
        let mut cmd = example("greeter", &ep);
        cmd.args(["serve", "--id", "a", "--ttl", "2"]);
        cmd
    });
    let b = Streaming::spawn({
        let mut cmd = example("greeter", &ep);
        cmd.args(["serve", "--id", "b", "--ttl", "2"]);
        cmd
    });
    assert!(a.take(1)[0].starts_with("serving a on 127.0.0.1:"));
    assert!(b.take(1)[0].starts_with("serving b on 127.0.0.1:"));
    let calls = Streaming::spawn({
        let mut cmd = example("greeter", &ep);
        cmd.args(["call", "--count", "0", "--interval-ms", "50"]);
        cmd
    });
    let first = calls.take(20);
    for id in ["a", "b"] {
        assert!(first.iter().any(|l| l.starts_with(&format!("{id}: hello"))), "{id} answered some of {first:?}");
    }
    a.kill();
    let killed = Instant::now();
    // Within the TTL (plus slack) every call goes to b.
    let mut streak = 0;
    read_until(&calls, Duration::from_secs(10), "a run of 20 calls answered by b", |line| {
        streak = if line.starts_with("b: hello") { streak + 1 } else { 0 };
        streak == 20
    });
    assert!(killed.elapsed() < Duration::from_secs(8), "a still called {:?} after its death", killed.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_fails_over_to_another_replica() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    let mut r1 = Streaming::spawn({
        let mut cmd = example("scheduler", &ep);
        cmd.args(["--id", "r1", "--ttl", "2"]);
        cmd
    });
    read_until(&r1, Duration::from_secs(10), "r1 leads", |l| l == "r1 dispatched task 1");
    let r2 = Streaming::spawn({
        let mut cmd = example("scheduler", &ep);
        cmd.args(["--id", "r2", "--ttl", "2"]);
        cmd
    });
    read_until(&r2, Duration::from_secs(5), "r2 campaigns", |l| l == "r2 campaigning");
    assert_eq!(r2.try_line(Duration::from_millis(1500)), None, "r2 must wait while r1 leads");
    r1.kill();
    read_until(&r2, Duration::from_secs(8), "r2 takes over", |l| l == "r2 dispatched task 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_count_exactly_and_config_reload_applies_and_refuses() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    let mut cmd = example("workers", &ep);
    cmd.args(["--workers", "3", "--rounds", "10"]);
    let out = within(Duration::from_secs(60), "workers example", async { cmd.output() }).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "counter = 30 (expected 30)\n");

    let reload = Streaming::spawn(example("config_reload", &ep));
    assert!(reload.take(1)[0].starts_with("started with Settings { log_level: \"info\""));
    let client = client(&c, 0).await;
    client.put("/example/config", r#"{"log_level":"debug","max_conns":5}"#, None).await.unwrap();
    assert!(reload.take(1)[0].starts_with("applied Settings { log_level: \"debug\", max_conns: 5 }"));
    client.put("/example/config", r#"{"log_level":"chatty","max_conns":5}"#, None).await.unwrap();
    let refused = reload.take(1).remove(0);
    assert!(
        refused.contains("unknown log level \"chatty\"") && refused.contains("keeping Settings { log_level: \"debug\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_does_what_it_says() {
    let c = Cluster::start(1, &[]).await;
    let ep = c.endpoints();
    let mut cmd = example("quickstart", &ep);
    cmd.arg("--prefix=/qs/");
    let out = within(Duration::from_secs(60), "quickstart example", async { cmd.output() }).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("put /qs/greeting at revision "), "{stdout}");
    assert_eq!(lines[1], "get /qs/greeting = hello");
    assert_eq!(lines[2], "compare-and-set succeeded: true");
    assert_eq!(lines[3], "watch: /qs/counter = 1");
    assert!(lines[4].starts_with("presence under lease "), "{stdout}");
    assert_eq!(lines[5], "after the session: 0 presence key(s)");
    // What it wrote is there for anyone to read.
    let client = client(&c, 0).await;
    let greeting = client.get("/qs/greeting", None).await.unwrap();
    assert_eq!(greeting.kvs[0].value, b"hello again");
}
