//! TLS on the client and peer ports, with certificates made at test time (rcgen): the real
//! etcdctl and cairnctl with `--cacert/--cert/--key`, client-certificate auth, a 3-member
//! cluster over peer TLS, and what must be refused (no certificate, an untrusted one,
//! plaintext to a TLS port, a rogue peer).

use super::harness::{etcdctl, Cluster};
use cairn_testing::cairnctl_binary;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::path::PathBuf;
use std::process::Command;

/// A CA and certificates it signed, written as PEM files.
pub(super) struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub(super) fn new() -> Pki {
        let p = Pki { dir: tempfile::tempdir().expect("tempdir") };
        let ca = p.ca("ca");
        let rogue = p.ca("rogue-ca");
        // One certificate for servers and members (SANs 127.0.0.1 and localhost) and
        // clients (CN = the user name, as etcd maps it).
        p.leaf(&ca, "server", "cairn-member");
        p.leaf(&ca, "server2", "cairn-member-rotated");
        // A client certificate the CA has revoked (serial 4242), and the CA's CRL.
        p.leaf_with_serial(&ca, "revoked", "root", Some(4242));
        p.crl(&ca, 4242);
        p.leaf(&ca, "client", "root");
        p.leaf(&ca, "alice", "alice");
        p.leaf(&rogue, "rogue", "root");
        p
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(super) fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn ca(&self, name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("cairn test {name}"));
        let ca = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
        std::fs::write(self.path(&format!("{name}.pem")), ca.pem()).expect("write");
        ca
    }

    fn leaf(&self, ca: &CertifiedIssuer<'static, KeyPair>, name: &str, cn: &str) {
        self.leaf_with_serial(ca, name, cn, None);
    }

    fn leaf_with_serial(&self, ca: &CertifiedIssuer<'static, KeyPair>, name: &str, cn: &str, serial: Option<u64>) {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("params");
        params.serial_number = serial.map(rcgen::SerialNumber::from);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, ca).expect("sign");
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).expect("write");
        std::fs::write(self.path(&format!("{name}-key.pem")), key.serialize_pem()).expect("write");
    }

    /// `crl.pem`: the CA's revocation list, revoking the certificate with `serial`.
    fn crl(&self, ca: &CertifiedIssuer<'static, KeyPair>, serial: u64) {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(serial),
                revocation_time: rcgen::date_time_ymd(2020, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(ca).expect("sign the CRL");
        std::fs::write(self.path("crl.pem"), crl.pem().expect("PEM")).expect("write");
    }

    /// etcdctl's TLS flags for certificate `who` (or none).
    pub(super) fn etcdctl_flags(&self, who: Option<&str>) -> Vec<String> {
        let mut f = vec![format!("--cacert={}", self.s("ca.pem"))];
        if let Some(w) = who {
            f.push(format!("--cert={}", self.s(&format!("{w}.pem"))));
            f.push(format!("--key={}", self.s(&format!("{w}-key.pem"))));
        }
        f
    }
}

pub(super) fn run(endpoints: &str, tls: &[String], args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
    all.extend(args);
    let out = etcdctl(endpoints, &all, None);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Members serving https:// client URLs with client-certificate auth.
pub(super) async fn tls_cluster(pki: &Pki, n: usize, peer_tls: bool) -> Cluster {
    tls_cluster_with(pki, n, peer_tls, &[]).await
}

/// [`tls_cluster`] with `extra` flags.
async fn tls_cluster_with(pki: &Pki, n: usize, peer_tls: bool, extra: &[&str]) -> Cluster {
    let mut flags: Vec<String> = vec![
        format!("--cert-file={}", pki.s("server.pem")),
        format!("--key-file={}", pki.s("server-key.pem")),
        format!("--trusted-ca-file={}", pki.s("ca.pem")),
        "--client-cert-auth".into(),
    ];
    if peer_tls {
        flags.extend([
            format!("--peer-cert-file={}", pki.s("server.pem")),
            format!("--peer-key-file={}", pki.s("server-key.pem")),
            format!("--peer-trusted-ca-file={}", pki.s("ca.pem")),
            "--peer-client-cert-auth".into(),
        ]);
    }
    flags.extend(extra.iter().map(|f| f.to_string()));
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut c = Cluster::prepare_tls(n, &refs, peer_tls);
    c.start_all_with_tls(&pki.path("ca.pem"), &pki.path("client.pem"), &pki.path("client-key.pem")).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_with_certificate_auth() {
    let pki = Pki::new();
    let c = tls_cluster(&pki, 1, false).await;
    let ep = c.endpoints();
    let client = pki.etcdctl_flags(Some("client"));
    let (ok, _, err) = run(&ep, &client, &["put", "k", "v"]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&ep, &client, &["get", "k", "--print-value-only"]);
    assert!(ok && out.trim() == "v", "{out} {err}");

    // Refused: no client certificate, one from another CA, plaintext, no TLS at all.
    for (name, flags) in [
        ("no client certificate", pki.etcdctl_flags(None)),
        ("untrusted client certificate", pki.etcdctl_flags(Some("rogue"))),
        ("plaintext", vec![]),
    ] {
        let mut f = flags.clone();
        f.push("--dial-timeout=2s".into());
        f.push("--command-timeout=3s".into());
        let (ok, _, err) = run(&ep, &f, &["get", "k"]);
        assert!(!ok, "{name} must be refused");
        assert!(!err.is_empty(), "{name}: a clear error");
    }
    // A connection that never starts its handshake is closed after 10 s; meanwhile the port
    // serves others (each handshake runs on its own).
    let stalled = std::net::TcpStream::connect(ep.as_str()).expect("connect");
    let opened = std::time::Instant::now();
    let (ok, out, _) = run(&ep, &client, &["get", "k", "--print-value-only"]);
    assert!(ok && out.trim() == "v", "served while a handshake stalls");
    let waiter = std::thread::spawn(move || {
        use std::io::Read;
        let mut stalled = stalled;
        stalled.set_read_timeout(Some(std::time::Duration::from_secs(20))).expect("timeout");
        let closed = match stalled.read(&mut [0u8; 16]) {
            Ok(0) => true,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            Ok(_) => false,
        };
        (closed, opened.elapsed())
    });
    let (closed, after) = waiter.join().expect("waiter");
    assert!(
        closed && after >= std::time::Duration::from_secs(9) && after < std::time::Duration::from_secs(19),
        "closed: {closed} after {after:?}"
    );
    // Garbage on the TLS port does not hurt it.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(ep.as_str()).expect("connect");
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x16\x03\x01garbage");
    }
    let (ok, out, _) = run(&ep, &client, &["get", "k", "--print-value-only"]);
    assert!(ok && out.trim() == "v", "still serving");

    // cairnctl takes the same flags.
    let ctl = |args: &[&str]| {
        Command::new(cairnctl_binary()).arg(format!("--endpoints={ep}")).args(args).output().expect("cairnctl")
    };
    let cacert = format!("--cacert={}", pki.s("ca.pem"));
    let cert = format!("--cert={}", pki.s("client.pem"));
    let key = format!("--key={}", pki.s("client-key.pem"));
    let out = ctl(&[&cacert, &cert, &key, "get", "k", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v\n", "{}", String::from_utf8_lossy(&out.stderr));
    let out = ctl(&[&cacert, "--dial-timeout=2s", "get", "k"]);
    assert!(!out.status.success(), "cairnctl without a client certificate is refused");

    // The HTTP/JSON gateway over TLS, with curl.
    let out = Command::new("curl")
        .args(["-s", "--cacert", &pki.s("ca.pem"), "--cert", &pki.s("client.pem"), "--key", &pki.s("client-key.pem")])
        .arg(format!("https://{ep}/v3/kv/range"))
        .args(["-X", "POST", "-d", r#"{"key":"aw=="}"#])
        .output()
        .expect("curl (./scripts/test installs it)");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains(r#""value":"dg==""#), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_over_peer_tls_refuse_a_rogue_peer() {
    let pki = Pki::new();
    let c = tls_cluster(&pki, 3, true).await;
    let ep = c.endpoints();
    let client = pki.etcdctl_flags(Some("client"));
    for n in 0..10 {
        let (ok, _, err) = run(&ep, &client, &["put", &format!("k{n}"), "v"]);
        assert!(ok, "{err}");
    }
    let (ok, out, _) =
        run(&c.members[2].endpoint(), &client, &["get", "k", "--prefix", "--keys-only", "--consistency=s"]);
    assert!(ok && out.lines().filter(|l| !l.is_empty()).count() == 10, "replicated over TLS: {out}");
    assert!(c.members.iter().all(|m| m.peer_url.starts_with("https://")));

    // A peer with a certificate from another CA cannot talk to a member's peer port.
    let endpoint = peer_endpoint_as(&pki, &c.members[0].peer_url, "rogue");
    assert!(peer_refuses(endpoint).await, "a rogue peer certificate is refused");
    // Plaintext to the TLS peer port, too.
    let plain = c.members[0].peer_url.replace("https://", "http://");
    assert!(peer_refuses(tonic::transport::Endpoint::from_shared(plain).expect("url")).await, "plaintext refused");
    let (ok, _, err) = run(&ep, &client, &["put", "after", "rogue"]);
    assert!(ok, "the cluster keeps serving: {err}");
}

/// A dial to the peer port at `url` that trusts the test CA and presents certificate `who`.
fn peer_endpoint_as(pki: &Pki, url: &str, who: &str) -> tonic::transport::Endpoint {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(pki.path("ca.pem")).expect("ca")))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(pki.path(&format!("{who}.pem"))).expect("cert"),
            std::fs::read(pki.path(&format!("{who}-key.pem"))).expect("key"),
        ));
    tonic::transport::Endpoint::from_shared(url.to_string()).expect("url").tls_config(tls).expect("tls")
}

/// Whether a member's peer port refuses a caller dialling `endpoint` (at the handshake or
/// on its first call).
async fn peer_refuses(endpoint: tonic::transport::Endpoint) -> bool {
    match endpoint.connect().await {
        Err(_) => true,
        Ok(ch) => cairn_api::cairnpb::peer_client::PeerClient::new(ch)
            .members(cairn_api::cairnpb::MembersRequest {})
            .await
            .is_err(),
    }
}

/// `--tls-min-version`, `--tls-max-version` and `--cipher-suites` narrow what a port
/// accepts, checked with curl (OpenSSL) offering one version or one suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_versions_and_cipher_suites_are_enforced() {
    let pki = Pki::new();
    let curl = |ep: &str, opts: &[&str]| {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--cacert", &pki.s("ca.pem")])
            .args(["--cert", &pki.s("client.pem"), "--key", &pki.s("client-key.pem")])
            .args(opts)
            .arg(format!("https://{ep}/health"))
            .status()
            .expect("curl (./scripts/test installs it)")
            .success()
    };
    let c = tls_cluster_with(&pki, 1, false, &["--tls-min-version=TLS1.3"]).await;
    let ep = c.members[0].endpoint();
    assert!(curl(&ep, &["--tlsv1.3"]), "TLS 1.3 is accepted");
    assert!(!curl(&ep, &["--tls-max", "1.2"]), "TLS 1.2 is refused with --tls-min-version=TLS1.3");
    drop(c);

    let only = ["--tls-max-version=TLS1.2", "--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"];
    let c = tls_cluster_with(&pki, 1, false, &only).await;
    let ep = c.members[0].endpoint();
    assert!(!curl(&ep, &["--tlsv1.3"]), "TLS 1.3 is refused with --tls-max-version=TLS1.2");
    assert!(curl(&ep, &["--tls-max", "1.2", "--ciphers", "ECDHE-ECDSA-AES256-GCM-SHA384"]), "the listed suite");
    assert!(!curl(&ep, &["--tls-max", "1.2", "--ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256"]), "another suite");
}

/// `--auto-tls`: an https:// client URL without certificate files is served with a
/// self-signed certificate made at the first start and kept for the next ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_tls_serves_a_self_signed_certificate_it_keeps() {
    let mut c = Cluster::prepare_tls(1, &["--auto-tls"], false);
    c.members[0].start();
    let ep = c.members[0].endpoint();
    let insecure = ["--insecure-skip-tls-verify".to_string(), "--insecure-transport=false".to_string()];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !run(&ep, &insecure, &["put", "k", "auto"]).0 {
        assert!(std::time::Instant::now() < deadline, "not serving:\n{}", c.members[0].log());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let cert = c.members[0].data_dir.join("fixtures").join("client").join("cert.pem");
    let first = std::fs::read(&cert).expect("the certificate is kept in the data directory");
    // The certificate is its own CA: trusting it works without skipping verification.
    let trust = [format!("--cacert={}", cert.display())];
    let (ok, out, err) = run(&ep, &trust, &["get", "k", "--print-value-only"]);
    assert!(ok && out.trim() == "auto", "{out} {err}");
    // Plaintext to the TLS port is refused.
    assert!(!run(&ep, &["--command-timeout=1s".to_string()], &["get", "k"]).0);
    c.members[0].kill();
    c.members[0].start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !run(&ep, &trust, &["get", "k"]).0 {
        assert!(std::time::Instant::now() < deadline, "not serving after restart:\n{}", c.members[0].log());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::read(&cert).expect("cert"), first, "the same certificate after a restart");
}

/// A certificate rotated on disk (key and certificate replaced, one after the other) is
/// served to new connections without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let pki = Pki::new();
    let c = tls_cluster(&pki, 1, false).await;
    let ep = c.members[0].endpoint();
    let served = || {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &ep, "-CAfile", &pki.s("ca.pem")])
            .args(["-cert", &pki.s("client.pem"), "-key", &pki.s("client-key.pem")])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl (./scripts/test installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = served();
    assert!(before.contains("cairn-member") && !before.contains("cairn-member-rotated"), "{before}");
    std::fs::copy(pki.path("server2-key.pem"), pki.path("server-key.pem")).expect("new key");
    std::fs::copy(pki.path("server2.pem"), pki.path("server.pem")).expect("new certificate");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if served().contains("cairn-member-rotated") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still the old certificate:\n{}", c.members[0].log());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (ok, _, err) = run(&ep, &pki.etcdctl_flags(Some("client")), &["put", "after", "rotation"]);
    assert!(ok, "{err}");
    assert!(c.members[0].log().contains("TLS certificate changed on disk: using the new one"));
}

/// `--client-crl-file`: a client certificate the CA revoked is refused; others still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused() {
    let pki = Pki::new();
    let crl = format!("--client-crl-file={}", pki.s("crl.pem"));
    let c = tls_cluster_with(&pki, 1, false, &[crl.as_str()]).await;
    let ep = c.members[0].endpoint();
    let (ok, _, err) = run(&ep, &pki.etcdctl_flags(Some("client")), &["put", "k", "v"]);
    assert!(ok, "a valid certificate works: {err}");
    let mut revoked = pki.etcdctl_flags(Some("revoked"));
    revoked.push("--dial-timeout=2s".into());
    revoked.push("--command-timeout=3s".into());
    let (ok, _, _) = run(&ep, &revoked, &["get", "k"]);
    assert!(!ok, "the revoked certificate is refused");
    drop(c);
    // The same certificate is accepted where no CRL is given: the CRL is what refused it.
    let c = tls_cluster_with(&pki, 1, false, &[]).await;
    let (ok, _, err) = run(&c.members[0].endpoint(), &revoked, &["put", "k", "v"]);
    assert!(ok, "{err}");
}

/// `--client-cert-allowed-hostname` and `--peer-cert-allowed-cn`: a certificate from the
/// trusted CA must also carry the allowed name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_names_narrow_which_certificates_get_in() {
    let pki = Pki::new();
    let client = pki.etcdctl_flags(Some("client"));
    // The test certificates name 127.0.0.1 and localhost.
    let c = tls_cluster_with(&pki, 1, false, &["--client-cert-allowed-hostname=localhost"]).await;
    let (ok, _, err) = run(&c.members[0].endpoint(), &client, &["put", "k", "v"]);
    assert!(ok, "{err}");
    drop(c);
    let mut pc = Cluster::prepare_tls(1, &[], false);
    let flags: Vec<String> = vec![
        format!("--cert-file={}", pki.s("server.pem")),
        format!("--key-file={}", pki.s("server-key.pem")),
        format!("--trusted-ca-file={}", pki.s("ca.pem")),
        "--client-cert-auth".into(),
        "--client-cert-allowed-hostname=elsewhere.example".into(),
    ];
    pc.members[0].add_args(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    pc.members[0].start();
    let mut refused = client.clone();
    refused.extend(["--dial-timeout=2s".to_string(), "--command-timeout=3s".to_string()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Serving (the port answers TLS) but refusing this certificate.
    while !c_log_has(&pc, "refused a client certificate") {
        let (ok, _, _) = run(&pc.members[0].endpoint(), &refused, &["get", "k"]);
        assert!(!ok, "a certificate without the allowed host name got in");
        assert!(std::time::Instant::now() < deadline, "{}", pc.members[0].log());
    }
    drop(pc);

    // Peers: the members' certificate has CN cairn-member.
    let c = tls_cluster_with(&pki, 3, true, &["--peer-cert-allowed-cn=cairn-member"]).await;
    let (ok, _, err) = run(&c.endpoints(), &client, &["put", "k", "v"]);
    assert!(ok, "members with the allowed CN form a cluster: {err}");
    // The client certificate (CN root), from the same CA, is not a peer.
    let endpoint = peer_endpoint_as(&pki, &c.members[0].peer_url, "client");
    assert!(peer_refuses(endpoint).await, "a certificate with another CN is refused as a peer");
}

fn c_log_has(c: &Cluster, text: &str) -> bool {
    c.members[0].log().contains(text)
}

/// `--peer-auto-tls`: with https:// peer URLs and no peer certificate files, each member
/// makes a self-signed certificate (kept in its data directory), serves its peer port with
/// it and calls the others over TLS without verifying theirs, as etcd does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_auto_tls_encrypts_the_links_between_members() {
    let mut c = Cluster::prepare_peer_tls(3, &["--peer-auto-tls"]);
    c.start_all().await;
    let ep = c.endpoints();
    let (ok, _, err) = run(&ep, &[], &["put", "over", "tls"]);
    assert!(ok, "{err}");
    for m in &c.members {
        let (ok, out, err) = run(&m.endpoint(), &[], &["get", "over", "--print-value-only"]);
        assert!(ok && out.trim() == "tls", "{}: {out} {err}", m.name);
        assert!(m.data_dir.join("fixtures/peer/cert.pem").exists(), "{} keeps no peer certificate", m.name);
    }
    // The peer port speaks TLS with the self-signed certificate (subject = issuer).
    let peer = c.members[0].peer_url.trim_start_matches("https://").to_string();
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &peer, "-alpn", "h2"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl (./scripts/test installs it)");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("O = cairn") && shown.contains("ALPN protocol: h2"), "{shown}");
    // A member restarted on its data keeps its certificate and rejoins over TLS.
    let cert = std::fs::read(c.members[2].data_dir.join("fixtures/peer/cert.pem")).expect("cert");
    c.members[2].kill();
    let (ok, _, err) = run(&c.members[0].endpoint(), &[], &["put", "while", "down"]);
    assert!(ok, "{err}");
    c.members[2].start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, out, _) =
            run(&c.members[2].endpoint(), &[], &["get", "while", "--print-value-only", "--consistency=s"]);
        if out.trim() == "down" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no catch-up over TLS:\n{}", c.members[2].log());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::read(c.members[2].data_dir.join("fixtures/peer/cert.pem")).expect("cert"), cert);
}

/// `--peer-client-cert-file`/`--peer-client-key-file`: the certificate a member presents when
/// it calls the others. With `--peer-cert-allowed-cn=root`, only the client certificate
/// (CN root) gets in — the peer server certificate (CN cairn-member) would not — so the
/// cluster forming proves the members present it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_call_each_other_with_the_peer_client_certificate() {
    let pki = Pki::new();
    let c = tls_cluster_with(
        &pki,
        3,
        true,
        &[
            &format!("--peer-client-cert-file={}", pki.s("client.pem")),
            &format!("--peer-client-key-file={}", pki.s("client-key.pem")),
            "--peer-cert-allowed-cn=root",
        ],
    )
    .await;
    let flags = pki.etcdctl_flags(Some("client"));
    let (ok, _, err) = run(&c.endpoints(), &flags, &["put", "k", "v"]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&c.members[2].endpoint(), &flags, &["get", "k", "--print-value-only"]);
    assert!(ok && out.trim() == "v", "{out} {err}");
}
