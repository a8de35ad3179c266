//! An existing etcd deployment's command line and config file start Cairn unchanged
//! (issue 25): Go's flag syntax, etcd-only flags named on one warning line or refused when
//! ignoring them would be unsafe, etcd's YAML config file, `--log-outputs`.

use cairn_testing::{cairn_binary, etcdctl_ok, free_port, Cluster};
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeadm_style_command_line_starts_a_member() {
    // The flags kubeadm's etcd manifest passes beside the URLs and paths, in its syntax.
    let c = Cluster::start(
        1,
        &[
            "--client-cert-auth=false",
            "--peer-client-cert-auth=false",
            "--experimental-watch-progress-notify-interval=5s",
            "--logger=zap",
            "--log-outputs=stderr",
            "-snapshot-count=10000",
            "--max-wals=5",
            "--enable-pprof=true",
            "--strict-reconfig-check",
        ],
    )
    .await;
    etcdctl_ok(&c.endpoints(), &["put", "kubeadm", "works"]);
    assert_eq!(etcdctl_ok(&c.endpoints(), &["get", "kubeadm", "--print-value-only"]).trim(), "works");
    let log = c.members[0].log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("no effect in Cairn")).collect();
    assert_eq!(warnings.len(), 1, "one warning line:\n{log}");
    // Named only when it changes something: --max-wals=5 and --strict-reconfig-check are
    // etcd's defaults.
    assert!(warnings[0].contains("accepted etcd flags that have no effect in Cairn: --enable-pprof=true"), "{log}");
    assert!(!warnings[0].contains("--max-wals") && !warnings[0].contains("--strict-reconfig-check"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_config_file_starts_a_member_and_the_command_line_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("etcd.conf.yml");
    let log_file = dir.path().join("member.log");
    let flag = format!("--config-file={}", conf.display());
    // The member's own flags (its URLs) are ignored once --config-file is given, so the file
    // carries them, in etcd's schema.
    let mut c = Cluster::prepare(1, &[flag.as_str()]);
    let m = &c.members[0];
    let yaml = format!(
        "# etcd.conf.yml, as etcd's sample has it\n\
         name: '{name}'\n\
         data-dir: {data}\n\
         wal-dir:\n\
         snapshot-count: 10000\n\
         heartbeat-interval: 50\n\
         election-timeout: 500\n\
         listen-peer-urls: {peer}\n\
         listen-client-urls: {client}\n\
         initial-advertise-peer-urls: {peer}\n\
         advertise-client-urls: {client}\n\
         initial-cluster: {name}={peer}\n\
         initial-cluster-token: '{token}'\n\
         initial-cluster-state: 'new'\n\
         strict-reconfig-check: false\n\
         enable-v2: true\n\
         grpc-keepalive-min-time: 5000000000\n\
         client-transport-security:\n  cert-file:\n  key-file:\n  client-cert-auth: false\n  trusted-ca-file:\n  auto-tls: false\n\
         peer-transport-security:\n  cert-file:\n  client-cert-auth: false\n  allowed-cn:\n\
         log-level: info\n\
         logger: zap\n\
         log-outputs: [stderr, {log}]\n\
         auto-compaction-mode: periodic\n\
         auto-compaction-retention: \"1\"\n",
        name = m.name,
        data = m.data_dir.display(),
        peer = m.peer_url,
        client = m.client_url,
        token = c.token(),
        log = log_file.display(),
    );
    std::fs::write(&conf, yaml).expect("write the config file");
    c.start_all().await;
    etcdctl_ok(&c.endpoints(), &["put", "from", "yaml"]);
    assert_eq!(etcdctl_ok(&c.endpoints(), &["get", "from", "--print-value-only"]).trim(), "yaml");
    // Both outputs got the log; the file has no terminal colours.
    let file = std::fs::read_to_string(&log_file).expect("the log file");
    assert!(file.contains("cairn member started"), "{file}");
    assert!(!file.contains('\u{1b}'), "escape codes in the file:\n{file}");
    assert!(c.members[0].log().contains("cairn member started"));
    assert!(file.contains("--enable-v2=true") && file.contains("--strict-reconfig-check=false"), "{file}");
    assert!(file.contains("flags given beside --config-file are ignored, as by etcd: --name"), "{file}");
}

#[test]
fn flags_cairn_cannot_honour_or_does_not_know_stop_the_start_with_a_short_error() {
    let run = |args: &[&str]| {
        let out = Command::new(cairn_binary()).args(args).output().expect("run cairn");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&["--proxy=sometimes"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("invalid value 'sometimes' for '--proxy <PROXY>'"), "{err}");
    assert!(err.len() < 300, "a short error, not every flag:\n{err}");
    // Conflicting ways to find the initial cluster are refused, as etcd refuses them.
    let (code, err) = run(&["--discovery=http://127.0.0.1:9/x", "--initial-cluster=a=http://127.0.0.1:2380"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, err) = run(&["--no-such-flag=1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unexpected argument '--no-such-flag' found"), "{err}");
    assert!(err.len() < 200, "a short error, not every flag:\n{err}");
    let (code, err) = run(&["--client-cert-auth=maybe"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is not a boolean"), "{err}");
}

/// `--wal-dir` puts the write-ahead log elsewhere; a member started without it (its log
/// not where it looks) refuses to start instead of coming up without its unapplied entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_dir_holds_the_log_and_a_missing_log_stops_the_start() {
    let wal = tempfile::tempdir().expect("tempdir");
    let wal_dir = wal.path().join("wal");
    let flag = format!("--wal-dir={}", wal_dir.display());
    let mut c = Cluster::start(1, &[flag.as_str()]).await;
    for n in 0..10 {
        etcdctl_ok(&c.endpoints(), &["put", &format!("k{n}"), "v"]);
    }
    let segments = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "wal")).count())
            .unwrap_or(0)
    };
    let data_dir = c.members[0].data_dir.clone();
    assert!(segments(&wal_dir) > 0, "the log is in --wal-dir");
    assert_eq!(segments(&data_dir.join("member").join("wal")), 0, "and not in the data directory");
    c.members[0].kill();
    c.members[0].start();
    c.wait_ready(0).await;
    assert_eq!(etcdctl_ok(&c.endpoints(), &["get", "k9", "--print-value-only"]).trim(), "v");
    c.members[0].kill();

    // The same data directory without --wal-dir: the log is not where the member looks.
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    let (client, peer) = (url(free_port().expect("port")), url(free_port().expect("port")));
    let name = c.members[0].name.clone();
    let data = data_dir.display().to_string();
    let out = Command::new(cairn_binary())
        .args(["--name", &name, "--data-dir", &data, "--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client, "--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .output()
        .expect("run cairn");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("its write-ahead log is not in"), "{err}");
}
