//! TLS for the client and peer ports (rustls through tonic, no OpenSSL), configured with
//! etcd's flags: `--cert-file`/`--key-file`/`--trusted-ca-file`/`--client-cert-auth` for
//! clients, `--peer-*` for members. A port serves TLS when its listen URL is `https://`.
//! With client-certificate auth a client must present a certificate signed by the trusted
//! CA; without it, a trusted CA makes certificates optional.

use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

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

    /// The server side; `prefix` is `""` or `"peer-"` (for messages).
    pub fn server(&self, prefix: &str) -> Result<ServerTlsConfig, String> {
        // A client that opens a connection and never finishes the handshake is dropped.
        let mut c = ServerTlsConfig::new().identity(self.identity(prefix)?).timeout(HANDSHAKE_TIMEOUT);
        match &self.trusted_ca {
            Some(ca) => {
                let ca = read(&format!("{prefix}trusted-ca-file"), ca)?;
                c = c.client_ca_root(Certificate::from_pem(ca)).client_auth_optional(!self.client_cert_auth);
            }
            None if self.client_cert_auth => {
                return Err(format!("--{prefix}client-cert-auth needs --{prefix}trusted-ca-file"));
            }
            None => {}
        }
        Ok(c)
    }

    /// The client side (members calling each other): trust the CA, present our certificate.
    pub fn client(&self, prefix: &str) -> Result<ClientTlsConfig, String> {
        let ca =
            self.trusted_ca.as_ref().ok_or_else(|| format!("https:// peer URLs need --{prefix}trusted-ca-file"))?;
        let ca = read(&format!("{prefix}trusted-ca-file"), ca)?;
        Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).identity(self.identity(prefix)?))
    }
}

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// HTTP/2 limits of a listener (etcd's `--max-concurrent-streams`, `--grpc-keepalive-*`).
#[derive(Debug, Clone, Copy)]
pub struct Http2Limits {
    /// Streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Ping an idle client this often ...
    pub keepalive_interval: std::time::Duration,
    /// ... and close the connection if the ping is not answered within this.
    pub keepalive_timeout: std::time::Duration,
}

/// A tonic server builder with `limits`, serving TLS with `tls`; `None` (logged) if the
/// configuration is unusable.
pub fn server_builder(
    tls: Option<ServerTlsConfig>,
    limits: Http2Limits,
    what: &str,
) -> Option<tonic::transport::Server> {
    let builder = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        // tonic leaves these unset, which lifts hyper's limits: a client resetting streams
        // as fast as it opens them (the "rapid reset" flood) must be cut off.
        .http2_max_pending_accept_reset_streams(Some(20))
        .http2_max_local_error_reset_streams(Some(1024));
    match tls {
        None => Some(builder),
        Some(tls) => match builder.tls_config(tls) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!("{what} server TLS: {e}");
                None
            }
        },
    }
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
