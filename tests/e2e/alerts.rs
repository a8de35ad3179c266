//! etcd's alert rules fire on Cairn as on etcd: a real Prometheus (Debian's, installed by
//! `./scripts/test`) scrapes three members every second and evaluates the etcd-mixin rules
//! of `deploy/prometheus/etcd-alerts.yml`, with their `for:` waits set to zero.
//!
//! Rules whose thresholds a healthy test machine does not reach (fsync over 0.5 s, peer
//! round trips over 0.15 s, five failed proposals a second for 15 minutes) are checked
//! through their expressions without the threshold: each must yield a figure per member
//! (or per peer), so it would fire past the threshold.

use super::harness::{etcdctl, etcdctl_ok, Cluster};
use cairn_testing::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/etcd-alerts.yml");
        let rules = std::fs::read_to_string(&rules).expect("deploy/prometheus/etcd-alerts.yml");
        let rules: String = rules
            .lines()
            .map(|l| if l.trim_start().starts_with("for: ") { "        for: 0s" } else { l })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.path().join("rules.yml"), rules).expect("write rules");
        let targets = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: etcd\n    static_configs:\n      - targets: [{targets}]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        let port = free_port().expect("port");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (./scripts/test installs Debian's)");
        Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    /// The result vector of an instant query (empty while Prometheus is not up yet).
    async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let Ok(url) = reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.url), &[("query", expr)]) else {
            return vec![];
        };
        let body = self.get(url).await;
        body["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// A JSON answer of Prometheus' API (`null` while it is not up yet).
    async fn get(&self, url: reqwest::Url) -> serde_json::Value {
        let Ok(resp) = reqwest::get(url).await else { return serde_json::Value::Null };
        let text = resp.text().await.unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    }

    /// Whether alert `name` is firing.
    async fn firing(&self, name: &str) -> bool {
        let Ok(url) = reqwest::Url::parse(&format!("{}/api/v1/alerts", self.url)) else { return false };
        let body = self.get(url).await;
        body["data"]["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["labels"]["alertname"] == name && x["state"] == "firing"))
    }

    async fn wait_firing(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.firing(name).await {
            assert!(Instant::now() < deadline, "{name} did not fire in 30 s");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Wait until `expr` yields at least `n` finite figures.
    async fn wait_figures(&self, expr: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let figures = self
                .query(expr)
                .await
                .iter()
                .filter_map(|r| r["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
                .filter(|v| v.is_finite())
                .count();
            if figures >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{expr}: {figures} figures, not {n}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcds_alert_rules_fire_on_cairn() {
    let mut c = Cluster::start(3, &["--quota-backend-bytes", "3000000"]).await;
    let targets: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let prom = Prometheus::start(&targets);
    prom.wait_figures(r#"up{job="etcd"} == 1"#, 3).await;
    for n in 0..20 {
        etcdctl_ok(&c.endpoints(), &["put", &format!("k{n}"), "v"]);
    }
    // The latency rules' expressions yield a figure per member (or per peer of the leader).
    let sel = r#"{job=~".*etcd.*"}"#;
    prom.wait_figures(
        &format!("histogram_quantile(0.99, rate(etcd_disk_wal_fsync_duration_seconds_bucket{sel}[1m]))"),
        3,
    )
    .await;
    prom.wait_figures(
        &format!("histogram_quantile(0.99, rate(etcd_network_peer_round_trip_time_seconds_bucket{sel}[1m]))"),
        2,
    )
    .await;
    prom.wait_figures(
        &format!("histogram_quantile(0.99, rate(etcd_disk_backend_commit_duration_seconds_bucket{sel}[1m]))"),
        1,
    )
    .await;
    for healthy in ["etcdMembersDown", "etcdNoLeader", "etcdDatabaseQuotaLowSpace", "etcdInsufficientMembers"] {
        assert!(!prom.firing(healthy).await, "{healthy} fires on a healthy cluster");
    }

    // Fill the store past its quota: etcdDatabaseQuotaLowSpace.
    let big = "x".repeat(100_000);
    let mut full = false;
    for n in 0..100 {
        let out = etcdctl(&c.endpoints(), &["put", &format!("big{n}"), &big], None);
        if String::from_utf8_lossy(&out.stderr).contains("database space exceeded") {
            full = true;
            break;
        }
    }
    assert!(full, "the 3 MB quota was never reached");
    prom.wait_firing("etcdDatabaseQuotaLowSpace").await;

    // A follower goes down: etcdMembersDown.
    let l = c.leader().await;
    let f = (l + 1) % 3;
    c.members[f].kill();
    prom.wait_firing("etcdMembersDown").await;

    // The leader goes too: the survivor has no leader and the cluster too few members.
    c.members[l].kill();
    prom.wait_firing("etcdNoLeader").await;
    prom.wait_firing("etcdInsufficientMembers").await;
    // A write on the survivor fails for want of a leader: the failed-proposals rule's
    // expression sees it.
    let survivor = (l + 2) % 3;
    let out = etcdctl(&c.members[survivor].endpoint(), &["del", "k0", "--command-timeout=20s"], None);
    assert!(!out.status.success());
    prom.wait_figures(&format!("increase(etcd_server_proposals_failed_total{sel}[1m]) > 0"), 1).await;
}
