//! TLS for the client and peer ports (rustls through tonic, no OpenSSL), configured with
//! etcd's flags: `--cert-file`/`--key-file`/`--trusted-ca-file`/`--client-cert-auth` for
//! clients, `--peer-*` for members. A port serves TLS when its listen URL is `https://`.
//! With client-certificate auth a client must present a certificate signed by the trusted
//! CA; without it, a trusted CA makes certificates optional.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

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
}

fn read(flag: &str, p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("--{flag} {}: {e}", p.display()))
}

impl TlsFiles {
    /// Whether a certificate and key are configured.
    pub fn is_set(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }

    fn identity(&self, prefix: &str) -> Result<Identity, String> {
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                Ok(Identity::from_pem(read(&format!("{prefix}cert-file"), c)?, read(&format!("{prefix}key-file"), k)?))
            }
            _ => Err(format!("an https:// URL needs --{prefix}cert-file and --{prefix}key-file")),
        }
    }

    /// The server side; `prefix` is `""` or `"peer-"` (for messages). Terminated by
    /// [`crate::conn::tls`] (rustls, ring).
    pub fn server(&self, prefix: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Err(format!("an https:// URL needs --{prefix}cert-file and --{prefix}key-file"));
        };
        let bad = |flag: &str, e: &dyn std::fmt::Display| format!("--{prefix}{flag}: {e}");
        let certs = CertificateDer::pem_slice_iter(&read(&format!("{prefix}cert-file"), cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("cert-file", &e))?;
        let key = PrivateKeyDer::from_pem_slice(&read(&format!("{prefix}key-file"), key)?)
            .map_err(|e| bad("key-file", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("cert-file", &e))?;
        let builder = match &self.trusted_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&read(&format!("{prefix}trusted-ca-file"), ca)?) {
                    roots.add(c.map_err(|e| bad("trusted-ca-file", &e))?).map_err(|e| bad("trusted-ca-file", &e))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                // Without --client-cert-auth a trusted CA makes certificates optional.
                let verifier = if self.client_cert_auth { verifier } else { verifier.allow_unauthenticated() };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| bad("trusted-ca-file", &e))?)
            }
            None if self.client_cert_auth => {
                return Err(format!("--{prefix}client-cert-auth needs --{prefix}trusted-ca-file"));
            }
            None => builder.with_no_client_auth(),
        };
        let mut c = builder.with_single_cert(certs, key).map_err(|e| bad("key-file", &e))?;
        // gRPC and the JSON gateway over HTTP/2, the gateway over HTTP/1.1 too.
        c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }

    /// The client side (members calling each other): trust the CA, present our certificate.
    pub fn client(&self, prefix: &str) -> Result<ClientTlsConfig, String> {
        let ca =
            self.trusted_ca.as_ref().ok_or_else(|| format!("https:// peer URLs need --{prefix}trusted-ca-file"))?;
        let ca = read(&format!("{prefix}trusted-ca-file"), ca)?;
        Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).identity(self.identity(prefix)?))
    }
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
