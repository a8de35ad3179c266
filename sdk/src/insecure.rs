//! `ConnectOptions::with_insecure_skip_verify`: TLS that accepts any server certificate
//! (etcdctl's `--insecure-skip-tls-verify`), for test clusters with self-signed
//! certificates. The connection is still encrypted, and the server still has to prove it
//! holds the key of the certificate it shows; what is skipped is checking who signed it,
//! so anyone on the path can pose as the server. Never for production.
//!
//! tonic has no such switch, so these connections are made here: TCP, then a rustls
//! handshake with a verifier that accepts any certificate, handed to tonic as a plain
//! `http://` connection.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;

/// Accepts every server certificate, checking only that the handshake was signed with it.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls configuration: any server certificate, our own if given (PEM).
pub(crate) fn config(identity: Option<&(Vec<u8>, Vec<u8>)>) -> crate::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    let bad = |e: &dyn std::fmt::Display| crate::Error::InvalidArgument(format!("TLS: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)));
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad(&e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| bad(&e))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Connects to the URI's host and port and runs the TLS handshake with `tls`.
pub(crate) fn connector(
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> impl tower::Service<
    tonic::codegen::http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send {
    tower::service_fn(move |uri: tonic::codegen::http::Uri| {
        let tls = tls.clone();
        async move {
            let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {why}"));
            let host = uri.host().ok_or_else(|| bad("no host"))?.trim_matches(['[', ']']).to_string();
            let port = uri.port_u16().unwrap_or(443);
            let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {uri}"));
            let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port)))
                .await
                .map_err(|_| timed_out())??;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host).map_err(|_| bad("not a host name"))?;
            let handshake = tokio_rustls::TlsConnector::from(tls).connect(name, tcp);
            let stream = tokio::time::timeout(timeout, handshake).await.map_err(|_| timed_out())??;
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
    })
}
