//! cairn-bench smoke tests: every workload runs briefly against a real Cairn member and
//! reports exactly the operations it made (counts, never speed).

use std::path::PathBuf;
use std::process::Command;

async fn member(dir: &std::path::Path) -> cairn_server::MemberHandle {
    cairn_testing::member::start_loopback(dir, &[]).await.expect("member starts")
}

fn bench(endpoint: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-bench"))
        .args(["--endpoints", endpoint, "--json", "--max-seconds", "60"])
        .args(args)
        .output()
        .expect("running cairn-bench");
    assert!(out.status.success(), "cairn-bench {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_counts_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = member(dir.path()).await;
    let ep = h.client_addrs[0].to_string();
    let ep = ep.as_str();
    for (args, ops) in [
        (vec!["put", "--total", "300", "--clients", "8", "--conns", "2"], 300),
        (vec!["put", "--total", "100", "--sequential-keys", "--key-space-size", "50"], 100),
        (vec!["range", "--total", "300", "--clients", "8", "--key-space-size", "100"], 300),
        (vec!["range", "--consistency", "s", "--total", "300", "--clients", "8"], 300),
        (vec!["txn-put", "--total", "200", "--clients", "4", "--txn-ops", "3", "--key-space-size", "1000"], 200),
        (vec!["txn-mixed", "--total", "200", "--clients", "4", "--rw-ratio", "3"], 200),
        (vec!["watch", "--watchers", "20", "--streams", "4", "--total", "50", "--clients", "4"], 1000),
        (vec!["watch-latency", "--total", "20", "--rate", "200"], 20),
        (vec!["put", "--total", "40", "--rate", "400", "--target-leader"], 40),
        (vec!["lease-keepalive", "--total", "300", "--clients", "8"], 300),
        (vec!["lease-grant-revoke", "--total", "100", "--clients", "4"], 100),
    ] {
        let r = bench(ep, &args);
        assert_eq!(r["ops"], ops, "{args:?}: {r}");
        assert_eq!(r["errors"], 0, "{args:?}: {r}");
        assert!(r["latency_ms"]["p99"].as_f64().unwrap_or(0.0) > 0.0, "{args:?}: {r}");
    }
    let mixed = bench(ep, &["txn-mixed", "--total", "100", "--rw-ratio", "1"]);
    let (reads, writes) =
        (mixed["extra"]["reads"].as_u64().unwrap_or(0), mixed["extra"]["writes"].as_u64().unwrap_or(0));
    assert_eq!(reads + writes, 100);
    // A small storm: every lease revoked, puts made meanwhile.
    let storm = bench(ep, &["lease-storm", "--leases", "300", "--duration", "3", "--clients", "4"]);
    assert_eq!(storm["errors"], 0, "{storm}");
    assert!(
        storm["ops"].as_u64().unwrap_or(0) > 0 && storm["extra"]["all_revoked_after_s"].as_f64().is_some(),
        "{storm}"
    );
    // --duration bounds a run by time instead of count.
    let timed = bench(ep, &["put", "--duration", "1"]);
    assert!(timed["ops"].as_u64().unwrap_or(0) > 0 && timed["seconds"].as_f64().unwrap_or(9.0) < 5.0, "{timed}");
    h.stop().await;
}

/// `cairn-bench floor` (the transport's floor for bench/floor.sh) serves the loads it is
/// measured with, and answers a range with one key of --val-size bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_server_serves_its_loads() {
    use cairn_api::etcdserverpb::{kv_client::KvClient, RangeRequest};
    use std::io::BufRead;
    let mut floor = Command::new(env!("CARGO_BIN_EXE_cairn-bench"))
        .args(["floor", "--listen", "127.0.0.1:0", "--val-size", "100"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting cairn-bench floor");
    let mut first = String::new();
    let stdout = floor.stdout.take().expect("stdout");
    std::io::BufReader::new(stdout).read_line(&mut first).expect("the floor's address");
    let ep = first.trim().to_string();
    assert!(ep.starts_with("127.0.0.1:"), "{first:?}");
    let pid = floor.id().to_string();
    for (args, ops) in [
        (vec!["lease-keepalive", "--total", "300", "--clients", "8", "--conns", "2", "--server-pids", &pid], 300),
        (vec!["range", "--consistency", "s", "--total", "300", "--clients", "8", "--key-space-size", "10"], 300),
        (vec!["put", "--total", "300", "--clients", "8"], 300),
    ] {
        let r = bench(&ep, &args);
        assert_eq!(r["ops"], ops, "{args:?}: {r}");
        assert_eq!(r["errors"], 0, "{args:?}: {r}");
        // With --server-pids the report gives the server's CPU per operation.
        assert_eq!(r["extra"]["server_cpu_us_per_op"].is_f64(), args.contains(&"--server-pids"), "{args:?}: {r}");
    }
    let mut kv = KvClient::connect(format!("http://{ep}")).await.expect("connect");
    let resp = kv.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.expect("range").into_inner();
    assert_eq!((resp.count, resp.kvs.len()), (1, 1));
    assert_eq!((resp.kvs[0].key.as_slice(), resp.kvs[0].value.len()), (&b"k"[..], 100));
    let _ = floor.kill();
    let _ = floor.wait();
}

/// The side-by-side comparison, briefly, against Debian's etcd (installed by ./scripts/test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_against_real_etcd() {
    let etcd = which("etcd").expect("etcd is required: apt-get install -y etcd-server (./scripts/test installs it)");
    let cairn = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/cairn");
    assert!(cairn.exists(), "{} is missing: build the workspace first (cargo build --bin cairn)", cairn.display());
    let work = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-bench"))
        .args(["--json", "compare", "--quick", "--topology", "single", "--memory-keys", "1000"])
        .arg("--etcd-bin")
        .arg(&etcd)
        .arg("--cairn-bin")
        .arg(&cairn)
        .arg("--workdir")
        .arg(work.path())
        .output()
        .expect("running compare");
    assert!(out.status.success(), "compare failed: {}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON rows");
    assert!(rows.len() >= 20, "{rows:?}");
    // CPU is counted in clock ticks (10 ms): a quick run's cheapest workloads may use
    // less than one, but the heavier ones must show on both sides.
    let cpu = |r: &serde_json::Value| r["unit"] == "server CPU us/op";
    for r in rows.iter().filter(|r| !cpu(r)) {
        assert!(
            r["etcd"].as_f64().unwrap_or(0.0) > 0.0 && r["cairn"].as_f64().unwrap_or(0.0) > 0.0,
            "empty figure in {r}"
        );
    }
    let measured = rows
        .iter()
        .filter(|r| cpu(r))
        .filter(|r| r["etcd"].as_f64().unwrap_or(0.0) > 0.0 && r["cairn"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(measured.count() >= 3, "server CPU per operation not measured: {rows:?}");
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(bin)).find(|p| p.exists())
}
