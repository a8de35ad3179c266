//! Bootstrapping without `--initial-cluster`.
//!
//! `--discovery-srv` against a real DNS server: dnsmasq serves `_etcd-server._tcp` SRV
//! records inside a network namespace this test makes (with its own /etc/resolv.conf,
//! through `ip netns exec`), and three Cairn members bootstrap from them. The member and
//! cluster ids are the ones etcd 3.5.1 computes from the same records (the store's
//! `ids::tests::the_ids_real_etcd_gives`).
//!
//! `--discovery` against a real discovery service: etcd 3.4 with its v2 keys API, the
//! protocol discovery.etcd.io speaks; etcd 3.5.1 given the same flags registers under the
//! same member id.

use super::harness::json;
use cairn_testing::{cairn_binary, etcd35_tool, etcd_binary, etcdctl, free_port, Cluster};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A network namespace with loopback up and a resolv.conf naming 127.0.0.1; removed (with
/// everything started in it) on drop.
struct Netns {
    name: String,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Netns {
    fn new() -> Netns {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("cairn-dns-{}-{n}", std::process::id());
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        assert!(
            ok(Command::new("ip").args(["netns", "add", &name])),
            "cannot create a network namespace (needs root and iproute2; CI runs ./scripts/test as root)"
        );
        let ns = Netns { name, children: Vec::new(), dir: tempfile::tempdir().expect("tempdir") };
        assert!(ok(ns.command("ip").args(["link", "set", "lo", "up"])), "loopback up in {}", ns.name);
        let etc = format!("/etc/netns/{}", ns.name);
        std::fs::create_dir_all(&etc).expect("/etc/netns");
        std::fs::write(format!("{etc}/resolv.conf"), "nameserver 127.0.0.1\n").expect("resolv.conf");
        ns
    }

    /// `program` run inside the namespace.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Start `cmd` (from [`Netns::command`]), its output in `<dir>/<log>`.
    fn spawn(&mut self, mut cmd: Command, log: &str) {
        let out = std::fs::File::create(self.dir.path().join(log)).expect("log");
        let child = cmd.stdout(Stdio::null()).stderr(out).spawn().expect("spawn in the namespace");
        self.children.push(child);
    }

    fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default()
    }

    /// The real etcdctl inside the namespace.
    fn etcdctl(&self, endpoint: &str, args: &[&str]) -> std::process::Output {
        self.command("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .args(args)
            .output()
            .expect("etcdctl")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

/// Client and peer ports of member `i` (the namespace is the test's own, so fixed ports
/// collide with nothing).
fn ports(i: usize) -> (u16, u16) {
    (2379 + 10_000 * i as u16, 2380 + 10_000 * i as u16)
}

fn start_member(ns: &mut Netns, i: usize, name: &str, advertise_host: &str) {
    let (client, peer) = ports(i);
    let data = ns.dir.path().join(name);
    let mut cmd = ns.command(cairn_binary());
    cmd.args(["--name", name, "--data-dir"]).arg(&data).args([
        "--discovery-srv=cairn.test",
        &format!("--initial-advertise-peer-urls=http://{advertise_host}:{peer}"),
        &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        &format!("--listen-client-urls=http://127.0.0.1:{client}"),
        &format!("--advertise-client-urls=http://127.0.0.1:{client}"),
    ]);
    ns.spawn(cmd, &format!("{name}.log"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_bootstrap_from_dns_srv_records() {
    let mut ns = Netns::new();
    let mut dns = ns.command("dnsmasq");
    dns.args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--user=root"]);
    dns.args(["--listen-address=127.0.0.1", "--bind-interfaces", "--port=53"]);
    for i in 0..3 {
        let host = format!("m{}.cairn.test", i + 1);
        dns.arg(format!("--srv-host=_etcd-server._tcp.cairn.test,{host},{}", ports(i).1));
        dns.arg(format!("--host-record={host},127.0.0.1"));
    }
    // A host in DNS but in no SRV record: a member advertising it is not in the cluster.
    dns.arg("--host-record=stray.cairn.test,127.0.0.2");
    ns.spawn(dns, "dnsmasq.log");
    // Members resolve their names at start (and stop, as etcd, if DNS does not answer):
    // wait until dnsmasq serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ns.command("getent").args(["hosts", "m1.cairn.test"]).output().is_ok_and(|o| o.status.success()) {
        assert!(Instant::now() < deadline, "dnsmasq does not answer:\n{}", ns.log("dnsmasq.log"));
        std::thread::sleep(Duration::from_millis(50));
    }
    // m2 advertises its IP address rather than its DNS name: DNS names it all the same.
    for (i, host) in ["m1.cairn.test", "127.0.0.1", "m3.cairn.test"].iter().enumerate() {
        start_member(&mut ns, i, &format!("m{}", i + 1), host);
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    let list = loop {
        let out = ns.etcdctl("127.0.0.1:2379", &["member", "list", "-w", "json"]);
        if out.status.success() {
            let list = json(&String::from_utf8_lossy(&out.stdout));
            // Until a member publishes its name, the others know it by its SRV record's number.
            let named = list["members"]
                .as_array()
                .map_or(0, |m| m.iter().filter(|m| m["name"].as_str().is_some_and(|n| n.starts_with('m'))).count());
            if named == 3 {
                break list;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no 3-member cluster from DNS:\n{}\n{}",
            ns.log("m1.log"),
            ns.log("dnsmasq.log")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut members: Vec<(String, String, u64)> = list["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            let url = m["peerURLs"][0].as_str().unwrap_or_default().to_string();
            (m["name"].as_str().unwrap_or_default().to_string(), url, m["ID"].as_u64().unwrap_or(0))
        })
        .collect();
    members.sort();
    let want = [
        ("m1", "http://m1.cairn.test:2380", 0x001a_c4d2_483e_be4e),
        ("m2", "http://m2.cairn.test:12380", 0xe1b3_e5fa_7180_aaae),
        ("m3", "http://m3.cairn.test:22380", 0xe56b_9a5a_9efc_2d89),
    ];
    let want: Vec<(String, String, u64)> = want.iter().map(|(n, u, id)| (n.to_string(), u.to_string(), *id)).collect();
    assert_eq!(members, want, "names, peer URLs from DNS and etcd's member ids");
    assert_eq!(list["header"]["cluster_id"].as_u64(), Some(0xe419_78f6_3b3b_4db8), "etcd's cluster id");

    // The cluster works: a write on one member is read on another.
    let put = ns.etcdctl("127.0.0.1:2379", &["put", "found", "by-dns"]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let got = ns.etcdctl("127.0.0.1:22379", &["get", "found", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "by-dns");

    // A member whose address is in no SRV record refuses to start, saying why.
    let data = ns.dir.path().join("stray");
    let out = ns
        .command(cairn_binary())
        .args(["--name", "stray", "--data-dir"])
        .arg(&data)
        .args([
            "--discovery-srv=cairn.test",
            "--initial-advertise-peer-urls=http://stray.cairn.test:2380",
            "--listen-peer-urls=http://127.0.0.2:2380",
            "--listen-client-urls=http://127.0.0.2:2379",
            "--advertise-client-urls=http://127.0.0.2:2379",
        ])
        .output()
        .expect("cairn");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot find local member \"stray\""), "{err}");
}

/// Processes started by a test, with their stderr in files of one directory; killed on drop.
struct Procs {
    dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
}

impl Procs {
    fn spawn(&mut self, name: &str, program: &Path, args: &[String]) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log");
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        self.children.push((name.to_string(), child));
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    fn kill(&mut self, name: &str) {
        for (n, c) in self.children.iter_mut().filter(|(n, _)| n == name) {
            let _ = c.kill();
            let _ = c.wait();
            n.clear();
        }
    }

    /// The exit status of `name` within `limit`, or `None` if it still runs.
    fn wait_exit(&mut self, name: &str, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let (_, c) = self.children.iter_mut().find(|(n, _)| n == name)?;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Flags of a member `name` bootstrapping from `discovery`, on fresh loopback ports: the
/// flags and its client endpoint.
fn discovery_member(dir: &Path, name: &str, discovery: &str) -> (Vec<String>, String, String) {
    let port = || free_port().expect("a free port");
    let (client, peer) = (format!("http://127.0.0.1:{}", port()), format!("http://127.0.0.1:{}", port()));
    let args = [
        "--name",
        name,
        "--data-dir",
        &dir.join(name).display().to_string(),
        "--discovery",
        discovery,
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--heartbeat-interval=50",
        "--election-timeout=500",
    ];
    (args.map(String::from).to_vec(), client.trim_start_matches("http://").to_string(), peer)
}

/// The registrations in a discovery directory: member id (hex) -> `name=url`.
async fn registrations(dir_url: &str) -> Vec<(String, String)> {
    let body = json(&reqwest::get(dir_url).await.expect("discovery directory").text().await.expect("v2 answer"));
    let mut out: Vec<(String, String)> = body["node"]["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter(|n| n["dir"].as_bool() != Some(true))
                .map(|n| {
                    let key = n["key"].as_str().unwrap_or_default();
                    let id = key.rsplit('/').next().unwrap_or_default().to_string();
                    (id, n["value"].as_str().unwrap_or_default().to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_bootstrap_through_an_etcd_discovery_service() {
    // The discovery service: real etcd 3.4 with the v2 keys API, and a directory of size 3.
    let svc = Cluster::start_bin(&etcd_binary(), 1, &["--enable-v2", "--log-level", "error"]).await;
    let dir_url = format!(
        "{}/v2/keys/_cairn/registry/{}",
        svc.members[0].client_url,
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
    );
    let size = reqwest::Client::new()
        .put(format!("{dir_url}/_config/size"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("value=3")
        .send()
        .await
        .expect("discovery service");
    assert!(size.status().is_success(), "setting the size: {}", size.status());

    let mut procs = Procs { dir: tempfile::tempdir().expect("tempdir"), children: Vec::new() };
    let data = procs.dir.path().to_path_buf();
    let members: Vec<_> = ["m1", "m2", "m3"].iter().map(|n| discovery_member(&data, n, &dir_url)).collect();
    for (i, (args, _, _)) in members.iter().enumerate().take(2) {
        procs.spawn(&format!("m{}", i + 1), &cairn_binary(), args);
    }
    // Two registered, and waiting for the third.
    let deadline = Instant::now() + Duration::from_secs(20);
    let two = loop {
        let r = registrations(&dir_url).await;
        if r.len() == 2 {
            break r;
        }
        assert!(Instant::now() < deadline, "not 2 registrations: {r:?}\n{}", procs.log("m1"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut values: Vec<&str> = two.iter().map(|(_, v)| v.as_str()).collect();
    values.sort();
    assert_eq!(values, [format!("m1={}", members[0].2), format!("m2={}", members[1].2)]);
    assert!(procs.wait_exit("m1", Duration::from_millis(500)).is_none(), "m1 waits:\n{}", procs.log("m1"));
    // m1 stopped before its data directory was written starts again: its registration
    // (same id, same value) is its own, kept, and it waits again.
    procs.kill("m1");
    let _ = std::fs::remove_dir_all(data.join("m1"));
    procs.spawn("m1", &cairn_binary(), &members[0].0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !procs.log("m1").contains("registered before") {
        assert!(Instant::now() < deadline, "m1 did not find its registration:\n{}", procs.log("m1"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(registrations(&dir_url).await, two, "still the same two registrations");
    procs.spawn("m3", &cairn_binary(), &members[2].0);

    let deadline = Instant::now() + Duration::from_secs(30);
    let list = loop {
        let out = etcdctl(&members[0].1, &["member", "list", "-w", "json"], None);
        if out.status.success() {
            let list = json(&String::from_utf8_lossy(&out.stdout));
            if list["members"].as_array().is_some_and(|m| m.iter().filter(|m| m["name"] != "").count() == 3) {
                break list;
            }
        }
        assert!(Instant::now() < deadline, "no 3-member cluster:\n{}\n{}", procs.log("m1"), procs.log("m3"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Each member is known by the id it registered under, with the peer URL it registered.
    let mut listed: Vec<(String, String)> = list["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            let id = format!("{:x}", m["ID"].as_u64().unwrap_or(0));
            (id, format!("{}={}", m["name"].as_str().unwrap_or(""), m["peerURLs"][0].as_str().unwrap_or("")))
        })
        .collect();
    listed.sort();
    assert_eq!(listed, registrations(&dir_url).await, "member list = registrations");
    let put = etcdctl(&members[0].1, &["put", "found", "by-discovery"], None);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let got = etcdctl(&members[2].1, &["get", "found", "--print-value-only"], None);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "by-discovery");

    // A fourth member finds the cluster full and stops, saying so (--discovery-fallback=exit).
    let (mut args, _, _) = discovery_member(&data, "m4", &dir_url);
    args.push("--discovery-fallback=exit".into());
    procs.spawn("m4", &cairn_binary(), &args);
    let status = procs.wait_exit("m4", Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()) && procs.log("m4").contains("discovery: cluster is full"),
        "{status:?}\n{}",
        procs.log("m4")
    );
    // Under etcd's default fallback (proxy) a fifth becomes a proxy in front of the cluster.
    let (args, client, _) = discovery_member(&data, "m5", &dir_url);
    procs.spawn("m5", &cairn_binary(), &args);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = etcdctl(&client, &["get", "found", "--print-value-only"], None);
        if String::from_utf8_lossy(&got.stdout).trim() == "by-discovery" {
            break;
        }
        assert!(Instant::now() < deadline, "m5 serves no proxy:\n{}", procs.log("m5"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(procs.log("m5").contains("falling back to the proxy mode"), "{}", procs.log("m5"));
    let list = etcdctl(&client, &["member", "list"], None);
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 3, "m5 is no member: {list:?}");

    // etcd 3.5.1 given m1's name, peer URL and discovery URL computes m1's id: it finds
    // that id registered and stops (m1 itself, restarted, would go on from its data).
    let mut etcd_args = discovery_member(&data, "m1", &dir_url).0;
    etcd_args.extend(["--initial-advertise-peer-urls".into(), members[0].2.clone()]);
    etcd_args.extend([
        "--discovery-fallback=exit".into(),
        "--data-dir".into(),
        data.join("etcd").display().to_string(),
    ]);
    procs.spawn("etcd", &etcd35_tool("etcd"), &etcd_args);
    let status = procs.wait_exit("etcd", Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()) && procs.log("etcd").contains("found duplicate id"),
        "etcd 3.5.1: {status:?}\n{}",
        procs.log("etcd")
    );

    // A restarted member does not ask the discovery service again: with it gone, m2
    // comes back from its data.
    drop(svc);
    procs.kill("m2");
    procs.spawn("m2", &cairn_binary(), &members[1].0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = etcdctl(&members[1].1, &["get", "found", "--print-value-only"], None);
        if String::from_utf8_lossy(&got.stdout).trim() == "by-discovery" {
            break;
        }
        assert!(Instant::now() < deadline, "m2 did not come back:\n{}", procs.log("m2"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
