//! Server-side TLS (rustls with the ring provider) for the agent port and the ingress.
//!
//! # Layout
//!
//! One file: [`TlsConfig`] (the `tls` tables of `host.toml`), [`server_config`] (load and
//! build a rustls server config) and [`TlsError`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{what} {path}: {reason}")]
    Pem { what: &'static str, path: PathBuf, reason: String },
    /// rustls refused the certificate/key pair.
    #[error("TLS certificate {cert} with key {key}: {source}")]
    Rustls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

fn pem_err(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Pem { what, path: path.to_owned(), reason: reason.to_string() }
}

/// Builds a rustls server config offering `alpn` protocols, in preference order.
pub fn server_config(tls: &TlsConfig, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| pem_err("certificate file", &tls.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err("certificate file", &tls.cert, e))?;
    if certs.is_empty() {
        return Err(pem_err("certificate file", &tls.cert, "no CERTIFICATE block found"));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| pem_err("private key file", &tls.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { cert: tls.cert.clone(), key: tls.key.clone(), source })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Rustls { cert: tls.cert.clone(), key: tls.key.clone(), source })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

impl TlsConfig {
    /// Checks that both files exist, so `check-config` catches typos before start-up.
    pub fn validate(&self, key_path: &str) -> Result<(), String> {
        for (name, path) in [("cert", &self.cert), ("key", &self.key)] {
            if !path.is_file() {
                return Err(format!("{key_path}.{name}: file not found: {}", path.display()));
            }
        }
        Ok(())
    }
}
