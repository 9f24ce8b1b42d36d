//! Mutual TLS between replicas: each replica proves itself to the other with a
//! certificate from the cluster's CA (`cluster.tls.ca`), as a server and as a client.
//!
//! So a captured replica token is useless without a replica's private key, and the
//! network between replicas learns nothing of the traffic. The replica token still
//! travels inside: it names the calling replica and binds the call to one request.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::config::ClusterTlsConfig;
use super::ClusterError;

fn tls_err(key: &str, path: &Path, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Tls(format!("cluster.tls.{key} {}: {e}", path.display()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA bundle every replica's certificate must chain to.
fn roots(path: &Path) -> Result<Arc<rustls::RootCertStore>, ClusterError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| tls_err("ca", path, e))? {
        roots.add(cert.map_err(|e| tls_err("ca", path, e))?).map_err(|e| tls_err("ca", path, e))?;
    }
    if roots.is_empty() {
        return Err(tls_err("ca", path, "no certificate found"));
    }
    Ok(Arc::new(roots))
}

/// This replica's certificate chain and key.
fn identity(
    tls: &ClusterTlsConfig,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ClusterError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| tls_err("cert", &tls.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err("cert", &tls.cert, e))?;
    if certs.is_empty() {
        return Err(tls_err("cert", &tls.cert, "no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| tls_err("key", &tls.key, e))?;
    Ok((certs, key))
}

/// The serving side: presents this replica's certificate and demands one from the
/// caller, chained to the cluster CA. A caller without one fails the handshake.
pub fn server_config(tls: &ClusterTlsConfig) -> Result<Arc<rustls::ServerConfig>, ClusterError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&tls.ca)?, provider())
        .build()
        .map_err(|e| tls_err("ca", &tls.ca, e))?;
    let (certs, key) = identity(tls)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClusterError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("cert", &tls.cert, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The calling side: verifies the serving replica against the cluster CA and presents
/// this replica's certificate.
pub fn client_config(tls: &ClusterTlsConfig) -> Result<Arc<rustls::ClientConfig>, ClusterError> {
    let roots = Arc::unwrap_or_clone(roots(&tls.ca)?);
    let (certs, key) = identity(tls)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClusterError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| tls_err("cert", &tls.cert, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
