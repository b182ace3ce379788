//! TLS client configurations for https probes: one verifying server certificates against
//! the system's roots, one accepting any certificate (`tls_verify = false`).
//!
//! Both are built once and shared by every probe. The ring provider is passed explicitly,
//! so nothing depends on a process-wide default provider being installed.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ConfigBuilder, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::sync::OnceCell;

use super::ProbeError;

/// The verifying configuration, built on first use (reading the system roots).
static VERIFIED: OnceCell<Arc<ClientConfig>> = OnceCell::const_new();
/// The configuration accepting any certificate.
static UNVERIFIED: OnceCell<Arc<ClientConfig>> = OnceCell::const_new();

/// The configuration verifying certificates against the system's root certificates.
pub(super) async fn verified() -> Result<Arc<ClientConfig>, ProbeError> {
    VERIFIED
        .get_or_try_init(|| async {
            let roots = system_roots().await;
            let config = builder()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(finish(config))
        })
        .await
        .cloned()
}

/// The configuration accepting any server certificate. Traffic is encrypted but the
/// server is not authenticated: see [`super::Tls::Unverified`].
pub(super) async fn unverified() -> Result<Arc<ClientConfig>, ProbeError> {
    UNVERIFIED
        .get_or_try_init(|| async {
            let verifier = AcceptAnyCertificate {
                algorithms: provider().signature_verification_algorithms,
            };
            let config = builder()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            Ok(finish(config))
        })
        .await
        .cloned()
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn builder() -> Result<ConfigBuilder<ClientConfig, rustls::WantsVerifier>, ProbeError> {
    ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|source| ProbeError::TlsConfig { source })
}

fn finish(mut config: ClientConfig) -> Arc<ClientConfig> {
    // Some servers insist on ALPN; the probe only speaks HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The system's root certificates, read off the async threads. Operators put their
/// internal CAs there, which is why it is preferred to a compiled-in list.
async fn system_roots() -> RootCertStore {
    let loaded = tokio::task::spawn_blocking(rustls_native_certs::load_native_certs)
        .await
        .unwrap_or_default();
    for error in &loaded.errors {
        tracing::warn!(%error, "reading system root certificates for https checks");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        tracing::warn!(
            ignored,
            "no system root certificates found: https checks with tls_verify = true will \
             fail; install the ca-certificates package or set SSL_CERT_FILE"
        );
    } else {
        tracing::debug!(
            added,
            ignored,
            "loaded system root certificates for https checks"
        );
    }
    roots
}

/// A verifier that accepts any server certificate, for `tls_verify = false`.
///
/// The handshake signatures are still checked, so the server does hold the key of the
/// certificate it presents; but nothing says that certificate belongs to the backend, so
/// anything on the path can impersonate it and make it look up.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
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
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
