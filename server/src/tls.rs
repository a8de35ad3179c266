//! TLS for the client and peer ports (rustls through tonic, no OpenSSL), configured with
//! etcd's flags: `--cert-file`/`--key-file`/`--trusted-ca-file`/`--client-cert-auth` for
//! clients, `--peer-*` for members. A port serves TLS when its listen URL is `https://`.
//! With client-certificate auth a client must present a certificate signed by the trusted
//! CA; without it, a trusted CA makes certificates optional. `--tls-min-version`,
//! `--tls-max-version` and `--cipher-suites` ([`Policy`]) narrow what both ports accept.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One side's TLS files.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// PEM certificate (chain).
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// PEM CA bundle that client (or peer) certificates must chain to.
    pub trusted_ca: Option<PathBuf>,
    /// Require a trusted client certificate.
    pub client_cert_auth: bool,
    /// PEM certificate revocation lists: client certificates they revoke are refused.
    pub crl: Option<PathBuf>,
    /// Client certificates must carry one of these common names (`--peer-cert-allowed-cn`).
    pub allowed_cn: Vec<String>,
    /// Client certificates must name this host among their DNS or IP subject alternative
    /// names (`--client-cert-allowed-hostname`, `--peer-cert-allowed-hostname`).
    pub allowed_hostname: Option<String>,
    /// Protocol versions and cipher suites accepted.
    pub policy: Policy,
    /// The certificate the member presents when it calls others (`--peer-client-cert-file`,
    /// `--peer-client-key-file`); `cert`/`key` when unset.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `cert`/`key` are self-signed (`--peer-auto-tls`): as etcd, the other side's
    /// certificate is not verified when calling it — the link is encrypted, not authenticated.
    pub self_signed: bool,
}

fn read(flag: &str, p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("--{flag} {}: {e}", p.display()))
}

impl TlsFiles {
    /// Whether a certificate and key are configured.
    pub fn is_set(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }

    /// The server side; `prefix` is `""` or `"peer-"` (for messages). Terminated by
    /// [`crate::conn::tls`] (rustls, ring). The certificate and key are read again when
    /// their files change ([`Reloading`]).
    pub fn server(&self, prefix: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Err(format!("an https:// URL needs --{prefix}cert-file and --{prefix}key-file"));
        };
        let bad = |flag: &str, e: &dyn std::fmt::Display| format!("--{prefix}{flag}: {e}");
        let provider = Arc::new(self.policy.provider()?);
        let resolver = Reloading::new(cert, key, prefix, provider.clone())?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.policy.versions())
            .map_err(|e| format!("--tls-min-version / --tls-max-version / --cipher-suites: {e}"))?;
        let builder = match &self.trusted_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&read(&format!("{prefix}trusted-ca-file"), ca)?) {
                    roots.add(c.map_err(|e| bad("trusted-ca-file", &e))?).map_err(|e| bad("trusted-ca-file", &e))?;
                }
                let mut verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                if let Some(crl) = &self.crl {
                    use rustls::pki_types::CertificateRevocationListDer;
                    let crls = CertificateRevocationListDer::pem_slice_iter(&read(&format!("{prefix}crl-file"), crl)?)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| bad("crl-file", &e))?;
                    if crls.is_empty() {
                        return Err(bad("crl-file", &"no certificate revocation list in the file"));
                    }
                    verifier = verifier.with_crls(crls);
                }
                // Without --client-cert-auth a trusted CA makes certificates optional.
                let verifier = if self.client_cert_auth { verifier } else { verifier.allow_unauthenticated() };
                let verifier = verifier.build().map_err(|e| bad("trusted-ca-file", &e))?;
                if self.allowed_cn.is_empty() && self.allowed_hostname.is_none() {
                    builder.with_client_cert_verifier(verifier)
                } else {
                    let allowed = Allowed {
                        inner: verifier,
                        cns: self.allowed_cn.clone(),
                        hostname: self.allowed_hostname.clone(),
                    };
                    builder.with_client_cert_verifier(Arc::new(allowed))
                }
            }
            None if !self.allowed_cn.is_empty() || self.allowed_hostname.is_some() => {
                return Err(format!("--{prefix}cert-allowed-cn/-hostname need --{prefix}trusted-ca-file"));
            }
            None if self.crl.is_some() => {
                return Err(format!("--{prefix}crl-file needs --{prefix}trusted-ca-file"));
            }
            None if self.client_cert_auth => {
                return Err(format!("--{prefix}client-cert-auth needs --{prefix}trusted-ca-file"));
            }
            None => builder.with_no_client_auth(),
        };
        let mut c = builder.with_cert_resolver(Arc::new(resolver));
        // gRPC and the JSON gateway over HTTP/2, the gateway over HTTP/1.1 too.
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }

    /// The client side (members calling each other): trust the CA (or, with self-signed
    /// certificates, accept any: etcd's `--peer-auto-tls`), present our certificate — read
    /// again when its files change, as the server side.
    pub fn client(&self, prefix: &str) -> Result<Arc<rustls::ClientConfig>, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let (cert, key) = match (&self.client_cert, &self.cert, &self.key) {
            (Some((c, k)), _, _) | (None, Some(c), Some(k)) => (c, k),
            _ => return Err(format!("https:// peer URLs need --{prefix}cert-file and --{prefix}key-file")),
        };
        let provider = Arc::new(self.policy.provider()?);
        let resolver = Reloading::new(cert, key, prefix, provider.clone())?;
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.policy.versions())
            .map_err(|e| format!("--tls-min-version / --tls-max-version / --cipher-suites: {e}"))?;
        let builder = if self.self_signed && self.trusted_ca.is_none() {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        } else {
            let ca =
                self.trusted_ca.as_ref().ok_or_else(|| format!("https:// peer URLs need --{prefix}trusted-ca-file"))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read(&format!("{prefix}trusted-ca-file"), ca)?) {
                let bad = |e: &dyn std::fmt::Display| format!("--{prefix}trusted-ca-file: {e}");
                roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            builder.with_root_certificates(roots)
        };
        let mut c = builder.with_client_cert_resolver(Arc::new(resolver));
        c.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(c))
    }
}

/// Accepts whatever certificate a peer presents, still checking that it signed the
/// handshake with that certificate's key: `--peer-auto-tls`, where every member's
/// certificate is self-signed (etcd does the same).
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A port's certificate and key, read again from their files when they change, so a
/// rotated certificate is served without a restart (as etcd reads them per handshake). The
/// files are looked at (two `stat`s) at most once a second; a pair that does not load — a
/// certificate written before its key, say — leaves the current one in use until it does.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    prefix: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: std::sync::Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<rustls::sign::CertifiedKey>,
    stamps: Stamps,
    checked: std::time::Instant,
}

/// How often the files are looked at, at most.
const RELOAD_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl Reloading {
    fn new(
        cert: &Path,
        key: &Path,
        prefix: &str,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, String> {
        let (cert, key) = (cert.to_path_buf(), key.to_path_buf());
        let stamps = stamps(&cert, &key);
        let loaded = load_pair(&cert, &key, prefix, &provider)?;
        let current = Loaded { key: Arc::new(loaded), stamps, checked: std::time::Instant::now() };
        Ok(Reloading { cert, key, prefix: prefix.to_string(), provider, current: std::sync::Mutex::new(current) })
    }
}

type Stamps = (Option<std::time::SystemTime>, Option<std::time::SystemTime>);

/// When the certificate and key files last changed.
fn stamps(cert: &Path, key: &Path) -> Stamps {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(cert), m(key))
}

/// A certificate chain and its key from PEM files, checked to belong together.
fn load_pair(
    cert: &Path,
    key: &Path,
    prefix: &str,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<rustls::sign::CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |flag: &str, e: &dyn std::fmt::Display| format!("--{prefix}{flag}: {e}");
    let certs = CertificateDer::pem_slice_iter(&read(&format!("{prefix}cert-file"), cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("cert-file", &e))?;
    if certs.is_empty() {
        return Err(bad("cert-file", &"no certificate in the file"));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&read(&format!("{prefix}key-file"), key)?).map_err(|e| bad("key-file", &e))?;
    rustls::sign::CertifiedKey::from_der(certs, key, provider).map_err(|e| bad("key-file", &e))
}

impl Reloading {
    /// The certificate and key, read again if their files changed (looked at once a second).
    fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.checked.elapsed() >= RELOAD_CHECK {
            cur.checked = std::time::Instant::now();
            let stamps = stamps(&self.cert, &self.key);
            if stamps != cur.stamps {
                match load_pair(&self.cert, &self.key, &self.prefix, &self.provider) {
                    Ok(k) => {
                        tracing::info!(cert = %self.cert.display(), "TLS certificate changed on disk: using the new one");
                        cur.key = Arc::new(k);
                        cur.stamps = stamps;
                    }
                    Err(e) => tracing::warn!("TLS certificate changed on disk but does not load yet: {e}"),
                }
            }
        }
        cur.key.clone()
    }
}

impl rustls::server::ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for Reloading {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client-certificate verifier that, past the usual chain checks, also wants an allowed
/// common name or host name in the certificate (etcd's `--peer-cert-allowed-cn`,
/// `--*-cert-allowed-hostname`).
#[derive(Debug)]
struct Allowed {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    cns: Vec<String>,
    hostname: Option<String>,
}

/// Whether the DER certificate `der` carries one of `cns` as its common name (if any are
/// given) and `hostname` among its DNS or IP alternative names (if given).
fn names_allowed(der: &[u8], cns: &[String], hostname: Option<&str>) -> Result<(), String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    if !cns.is_empty() {
        let cn = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or_default();
        if !cns.iter().any(|a| a == cn) {
            return Err(format!("certificate CN {cn:?} is not allowed"));
        }
    }
    if let Some(host) = hostname {
        let ip: Option<std::net::IpAddr> = host.parse().ok();
        let named = cert.subject_alternative_name().ok().flatten().is_some_and(|san| {
            san.value.general_names.iter().any(|n| match n {
                GeneralName::DNSName(d) => d.eq_ignore_ascii_case(host),
                GeneralName::IPAddress(b) => match (ip, b.len()) {
                    (Some(std::net::IpAddr::V4(v4)), 4) => v4.octets() == **b,
                    (Some(std::net::IpAddr::V6(v6)), 16) => v6.octets() == **b,
                    _ => false,
                },
                _ => false,
            })
        });
        if !named {
            return Err(format!("certificate does not name the allowed host {host:?}"));
        }
    }
    Ok(())
}

impl rustls::server::danger::ClientCertVerifier for Allowed {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        names_allowed(end_entity, &self.cns, self.hostname.as_deref()).map_err(|e| {
            tracing::warn!("refused a client certificate: {e}");
            rustls::Error::General(e)
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `--tls-min-version`, `--tls-max-version` and `--cipher-suites`: what both ports accept
/// (etcd applies them to the client and peer ports alike).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Lowest protocol version (`None`: TLS 1.2, the lowest rustls speaks).
    pub min: Option<Version>,
    /// Highest protocol version (`None`: TLS 1.3).
    pub max: Option<Version>,
    /// TLS 1.2 cipher suites to offer, by their IANA (Go) names; empty: rustls' defaults.
    /// As in Go, TLS 1.3's suites are not configurable and stay on.
    pub cipher_suites: Vec<String>,
}

/// A TLS protocol version, as etcd names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `TLS1.2`.
    Tls12,
    /// `TLS1.3`.
    Tls13,
}

fn version(flag: &str, v: &str) -> Result<Option<Version>, String> {
    match v.trim() {
        "" => Ok(None),
        "TLS1.2" => Ok(Some(Version::Tls12)),
        "TLS1.3" => Ok(Some(Version::Tls13)),
        other => Err(format!("--{flag}: unexpected TLS version {other:?} (must be one of: TLS1.2, TLS1.3)")),
    }
}

/// Go's short names for the ChaCha20 suites, which etcd also accepts.
fn canonical(name: &str) -> String {
    match name {
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => format!("{name}_SHA256"),
        other => other.to_string(),
    }
}

impl Policy {
    /// Parse and check the three flags as etcd does.
    pub fn parse(min: &str, max: &str, cipher_suites: &str) -> Result<Policy, String> {
        let p = Policy {
            min: version("tls-min-version", min)?,
            max: version("tls-max-version", max)?,
            cipher_suites: cipher_suites.split(',').map(str::trim).filter(|s| !s.is_empty()).map(canonical).collect(),
        };
        if let (Some(lo), Some(hi)) = (p.min, p.max) {
            if lo > hi {
                return Err(format!("min version ({min}) is greater than max version ({max})"));
            }
        }
        if p.min == Some(Version::Tls13) && !p.cipher_suites.is_empty() {
            return Err("cipher suites cannot be configured when only TLS1.3 is enabled".into());
        }
        p.provider()?;
        Ok(p)
    }

    /// rustls' ring provider with only the chosen TLS 1.2 suites (and every TLS 1.3 one).
    fn provider(&self) -> Result<rustls::crypto::CryptoProvider, String> {
        let mut provider = rustls::crypto::ring::default_provider();
        if self.cipher_suites.is_empty() {
            return Ok(provider);
        }
        let name = |s: &rustls::SupportedCipherSuite| format!("{:?}", s.suite());
        let all = provider.cipher_suites.clone();
        let mut chosen: Vec<rustls::SupportedCipherSuite> =
            all.iter().filter(|s| s.version() == &rustls::version::TLS13).copied().collect();
        // TLS 1.3's suites, by Go's names: accepted, and on anyway (as in Go).
        const TLS13: [&str; 3] = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"];
        for wanted in self.cipher_suites.iter().filter(|w| !TLS13.contains(&w.as_str())) {
            match all.iter().find(|s| name(s) == *wanted) {
                Some(s) if !chosen.contains(s) => chosen.push(*s),
                Some(_) => {}
                None => {
                    let known: Vec<String> =
                        all.iter().filter(|s| s.version() == &rustls::version::TLS12).map(name).collect();
                    return Err(format!(
                        "--cipher-suites: {wanted:?} is not available (Cairn's TLS, rustls, offers only AEAD \
                         suites with forward secrecy: {})",
                        known.join(", ")
                    ));
                }
            }
        }
        provider.cipher_suites = chosen;
        Ok(provider)
    }

    fn versions(&self) -> Vec<&'static rustls::SupportedProtocolVersion> {
        let lo = self.min.unwrap_or(Version::Tls12);
        let hi = self.max.unwrap_or(Version::Tls13);
        [(Version::Tls12, &rustls::version::TLS12), (Version::Tls13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| *v >= lo && *v <= hi)
            .map(|(_, p)| p)
            .collect()
    }
}

/// `--auto-tls`: a self-signed certificate and key for `hosts` (the client URLs' hosts)
/// in `dir` (etcd's `<data-dir>/fixtures/client`), valid for `years`; kept and reused on
/// later starts, as etcd does. Returns the certificate and key paths.
pub fn self_signed(dir: &Path, hosts: &[String], years: u32) -> Result<(PathBuf, PathBuf), String> {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let fail = |e: &dyn std::fmt::Display| format!("self-signed certificate in {}: {e}", dir.display());
    let key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(|e| fail(&e))?;
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "cairn");
    let (y, m, d) = today();
    params.not_before = rcgen::date_time_ymd(y, m, d);
    params.not_after = rcgen::date_time_ymd(y + years.max(1) as i32, m, d.min(28));
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).map_err(|e| fail(&e))?;
    cairn_store::fsutil::create_private_dir(dir).map_err(|e| fail(&e))?;
    std::fs::write(&key_path, key.serialize_pem()).map_err(|e| fail(&e))?;
    std::fs::write(&cert_path, cert.pem()).map_err(|e| fail(&e))?;
    tracing::info!(cert = %cert_path.display(), ?hosts, "made a self-signed certificate (--auto-tls / --peer-auto-tls)");
    Ok((cert_path, key_path))
}

/// Today's UTC date (the civil-from-days calculation of Howard Hinnant's date algorithms).
fn today() -> (i32, u8, u8) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// HTTP/2 limits of a listener (etcd's `--max-concurrent-streams`, `--grpc-keepalive-*`).
#[derive(Debug, Clone, Copy)]
pub struct Http2Limits {
    /// Streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Ping an idle client this often ...
    pub keepalive_interval: std::time::Duration,
    /// ... and close the connection if the ping is not answered within this.
    pub keepalive_timeout: std::time::Duration,
    /// A client pinging more often than this (with no request between) is cut off.
    pub keepalive_min_time: std::time::Duration,
}

/// A tonic server builder with `limits` (TLS is terminated before it, by [`crate::conn`]).
pub fn server_builder(limits: Http2Limits) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        // tonic leaves these unset, which lifts hyper's limits: a client resetting streams
        // as fast as it opens them (the "rapid reset" flood) must be cut off.
        .http2_max_pending_accept_reset_streams(Some(20))
        .http2_max_local_error_reset_streams(Some(1024))
}

/// Whether any peer URL of `config` (listened on or of a member) asks for TLS.
pub fn peer_tls_needed(config: &crate::Config) -> bool {
    config.listen_peer_urls.iter().chain(config.initial_cluster.values().flatten()).any(|u| is_https(u))
}

/// Whether `url` asks for TLS.
pub fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// Whether `url`'s host is a loopback address (or `localhost`).
pub fn is_loopback(url: &str) -> bool {
    let Ok(uri) = url.parse::<tonic::codegen::http::Uri>() else { return false };
    match uri.host() {
        Some("localhost") => true,
        Some(h) => {
            h.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn today_is_a_plausible_date() {
        let (y, m, d) = today();
        assert!((2024..2200).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&d), "{y}-{m}-{d}");
    }

    #[test]
    fn versions_and_suites_as_etcd_checks_them() {
        let p = Policy::parse("TLS1.2", "TLS1.2", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305").expect("valid");
        assert_eq!(p.versions(), vec![&rustls::version::TLS12]);
        let suites: Vec<String> =
            p.provider().expect("provider").cipher_suites.iter().map(|s| format!("{:?}", s.suite())).collect();
        assert!(suites.contains(&"TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256".to_string()), "{suites:?}");
        assert!(!suites.contains(&"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_string()), "{suites:?}");
        assert!(suites.contains(&"TLS13_AES_128_GCM_SHA256".to_string()), "TLS 1.3 suites stay: {suites:?}");
        assert_eq!(Policy::parse("", "", "").expect("defaults").versions().len(), 2);
        let e = Policy::parse("TLS1.3", "TLS1.2", "").unwrap_err();
        assert_eq!(e, "min version (TLS1.3) is greater than max version (TLS1.2)");
        let e = Policy::parse("TLS1.3", "", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256").unwrap_err();
        assert_eq!(e, "cipher suites cannot be configured when only TLS1.3 is enabled");
        assert!(Policy::parse("TLS1.1", "", "").unwrap_err().contains("must be one of: TLS1.2, TLS1.3"));
        assert!(Policy::parse("", "", "TLS_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256").is_ok());
        let e = Policy::parse("", "", "TLS_RSA_WITH_AES_128_CBC_SHA").unwrap_err();
        assert!(e.contains("is not available"), "{e}");
    }
}
