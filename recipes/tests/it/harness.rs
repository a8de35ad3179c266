//! Clusters, clients (direct or through a cuttable proxy) and time limits.

use cairn_sdk::{Client, ConnectOptions};
use cairn_testing::{Cluster, Proxy};
use std::future::Future;
use std::time::{Duration, Instant};

pub use cairn_testing::{etcdctl_command, Streaming};

pub fn options() -> ConnectOptions {
    ConnectOptions::default()
        .with_dial_timeout(Duration::from_secs(1))
        .with_request_timeout(Some(Duration::from_secs(10)))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
        // Tests pick the member a client starts on (`client(c, first)`).
        .with_spread(false)
}

/// Recipe logs on the test's output when RUST_LOG asks for them.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A client of every member, starting with member `first`.
pub async fn client(c: &Cluster, first: usize) -> Client {
    logs();
    let m = &c.members;
    let eps: Vec<String> = (0..m.len()).map(|k| m[(first + k) % m.len()].endpoint()).collect();
    Client::connect(eps, options()).await.expect("connecting")
}

/// A client whose only way to the cluster is a proxy in front of member `i`.
pub async fn client_via_proxy(c: &Cluster, i: usize) -> (Client, Proxy) {
    let proxy = Proxy::start(&c.members[i].endpoint()).await.expect("starting a proxy");
    let client = Client::connect([proxy.endpoint()], options()).await.expect("connecting through the proxy");
    (client, proxy)
}

/// Run `f` with a time limit: a hang fails the test instead of stalling CI.
pub async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| panic!("{what}: not done within {limit:?}"))
}

/// Poll `cond` until it holds or `limit` passes; how long it took.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "{what}: not true within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

/// A recipes example program (`recipes/examples/<name>.rs`, built by `cargo test`) started
/// against `c` with `args`, its output read line by line; killed on drop.
pub fn example(c: &Cluster, name: &str, args: &[&str], ttl: &str) -> Streaming {
    let mut cmd = std::process::Command::new(cairn_testing::example_binary(name));
    cmd.args(args).env("CAIRN_ENDPOINTS", c.endpoints()).env("WORKER_TTL", ttl);
    Streaming::spawn(cmd)
}

/// Build the Go program `recipes/tests/go/<name>` (etcd 3.4's clientv3 and contrib/recipes
/// from Debian's golang-etcd-server-dev, GOPATH mode) into `target/go/<name>`; panics saying
/// what to install when Go or those sources are missing (./scripts/test installs them).
pub async fn go_program(name: &str) -> std::path::PathBuf {
    const GOPATH: &str = "/usr/share/gocode";
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let sources = std::path::Path::new(GOPATH).join("src/go.etcd.io/etcd/clientv3/concurrency");
        let go = std::process::Command::new("go").arg("version").output();
        assert!(
            sources.is_dir() && go.is_ok(),
            "Go and etcd's Go sources are needed: ./scripts/test installs them (apt-get install golang-go golang-etcd-server-dev)"
        );
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out = root.join("../target/go").join(&name);
        let status = std::process::Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(root.join("tests/go").join(&name))
            .env("GO111MODULE", "off")
            .env("GOPATH", GOPATH)
            .status()
            .expect("running go build");
        assert!(status.success(), "go build of recipes/tests/go/{name} failed");
        out
    })
    .await
    .expect("go build task")
}
