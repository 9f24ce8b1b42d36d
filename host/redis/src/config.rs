//! The `[cluster.redis]` table: which Redis, how to reach it, and the checks serde cannot
//! make. It lives with the store rather than with the cluster so the plugin platform's
//! shared kv can use the store without depending on the cluster.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use burrow_proto::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// Which kind of Redis deployment `redis.urls` names.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server (`redis://` or `rediss://`), possibly behind a proxy. Default.
    #[default]
    Single,
    /// Sentinels (`redis://sentinel-host:26379`) watching the master named `master_name`.
    Sentinel,
    /// Redis Cluster: any subset of the nodes as seeds.
    Cluster,
}

/// `[cluster.redis]`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `single` (default), `sentinel` or `cluster`.
    pub mode: RedisMode,
    /// Server URLs (`redis://[user:password@]host:port[/db]`, `rediss://` for TLS). Single
    /// mode uses the first; sentinel mode lists sentinels; cluster mode lists seed nodes.
    /// Default `["redis://127.0.0.1:6379"]`. URLs may carry passwords: they are masked in logs.
    ///
    /// TLS (`rediss://`) verifies the server's certificate against `ca_file`, or without it
    /// against the public web roots (Mozilla's, built in, as elsewhere in Burrow; the
    /// system's store is not read). The URL's host must be in the certificate, and so must
    /// the addresses sentinels and cluster nodes announce (usually IPs). `#insecure` (no
    /// check) is refused. Sentinel and cluster modes take one scheme for every URL: in
    /// sentinel mode it is also the master's (reached over TLS when the sentinels are);
    /// in cluster mode the nodes announced by the seeds are reached the same way. Every
    /// sentinel URL must carry the same user and password, if any.
    pub urls: Vec<String>,
    /// Sentinel mode: the monitored master's name.
    pub master_name: Option<String>,
    /// Password for the data nodes when it is not in the URL (sentinel mode: the master's).
    pub password: Option<Secret>,
    /// Prefix of every key and channel, so several deployments can share one Redis.
    /// Default `burrow`.
    pub key_prefix: String,
    /// Deadline for any one Redis operation; past it the operation counts as failed.
    /// Default 1s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// TLS only: PEM file with the CA certificate(s) the servers' certificates must chain
    /// to, for a Redis with a private CA. Replaces the public roots; applies to every
    /// server (sentinels and master, every cluster node).
    pub ca_file: Option<PathBuf>,
    /// TLS only: this replica's certificate chain (PEM), for a Redis that checks clients'
    /// certificates (`tls-auth-clients yes`). Needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// TLS only: the private key (PEM, PKCS#8, PKCS#1 or SEC1) of `client_cert`.
    pub client_key: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            mode: RedisMode::Single,
            urls: vec!["redis://127.0.0.1:6379".into()],
            master_name: None,
            password: None,
            key_prefix: "burrow".into(),
            timeout: Duration::from_secs(1),
            ca_file: None,
            client_cert: None,
            client_key: None,
        }
    }
}

/// Replaces the password in `redis://user:password@host` with `***`.
pub fn mask_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("mode", &self.mode)
            .field("urls", &self.urls.iter().map(|u| mask_url(u)).collect::<Vec<_>>())
            .field("master_name", &self.master_name)
            .field("password", &self.password)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish()
    }
}

impl RedisConfig {
    /// Checks values serde cannot. Errors name the key as `cluster.redis.<key>`, where the
    /// table sits in `host.toml`.
    pub fn validate(&self) -> Result<(), String> {
        let r = self;
        if r.urls.is_empty() {
            return Err("cluster.redis.urls: at least one URL is required".into());
        }
        let mut infos = Vec::with_capacity(r.urls.len());
        for url in &r.urls {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(format!(
                    "cluster.redis.urls: {:?} must start with redis:// or rediss://",
                    mask_url(url)
                ));
            }
            let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                .map_err(|e| format!("cluster.redis.urls: {:?}: {e}", mask_url(url)))?;
            if let redis::ConnectionAddr::TcpTls { insecure: true, .. } = info.addr() {
                return Err(format!(
                    "cluster.redis.urls: {:?}: #insecure (no certificate check) is not supported; \
                     give the servers' CA in cluster.redis.ca_file instead",
                    mask_url(url)
                ));
            }
            infos.push(info);
        }
        if r.mode != RedisMode::Single && r.urls.iter().any(|u| is_tls(u) != is_tls(&r.urls[0])) {
            return Err(format!(
                "cluster.redis.urls: mixes redis:// and rediss://; in {} mode every URL must use the same scheme",
                if r.mode == RedisMode::Sentinel { "sentinel" } else { "cluster" }
            ));
        }
        if r.mode == RedisMode::Sentinel {
            let credentials = |info: &redis::ConnectionInfo| {
                let s = info.redis_settings();
                (s.username().map(str::to_owned), s.password().map(str::to_owned))
            };
            if infos.iter().any(|i| credentials(i) != credentials(&infos[0])) {
                return Err("cluster.redis.urls: in sentinel mode every sentinel URL must carry the same \
                     user and password (or none)"
                    .into());
            }
        }
        if !r.uses_tls() {
            let set =
                [("ca_file", &r.ca_file), ("client_cert", &r.client_cert), ("client_key", &r.client_key)];
            if let Some((key, _)) = set.iter().find(|(_, v)| v.is_some()) {
                return Err(format!(
                    "cluster.redis.{key}: only used with TLS, but the URLs are redis://; use rediss://"
                ));
            }
        }
        self.tls_certificates()?;
        match (r.mode, &r.master_name) {
            (RedisMode::Sentinel, None) => {
                return Err("cluster.redis.master_name: required in sentinel mode".into())
            }
            (RedisMode::Single | RedisMode::Cluster, Some(_)) => {
                return Err("cluster.redis.master_name: only used in sentinel mode".into())
            }
            _ => {}
        }
        if r.key_prefix.is_empty()
            || r.key_prefix.len() > 64
            || !r.key_prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c))
        {
            return Err("cluster.redis.key_prefix: 1-64 characters of [A-Za-z0-9-_:.]".into());
        }
        if r.timeout.is_zero() || r.timeout > Duration::from_secs(30) {
            return Err("cluster.redis.timeout: must be between 1ms and 30s".into());
        }
        Ok(())
    }

    /// True when the store talks TLS: the first URL is `rediss://` (single mode uses only
    /// that one; the other modes have one scheme for all).
    pub fn uses_tls(&self) -> bool {
        self.urls.first().is_some_and(|u| is_tls(u))
    }

    /// The CA, client certificate and key the keys name, read and checked; `None` when
    /// none is set (public roots, no client certificate). Errors name the key.
    pub fn tls_certificates(&self) -> Result<Option<redis::TlsCertificates>, String> {
        let root_cert = match &self.ca_file {
            Some(path) => {
                let pem = read("ca_file", path)?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in certificates("ca_file", path, &pem)? {
                    roots.add(cert).map_err(|e| {
                        format!("cluster.redis.ca_file: {}: not a usable CA certificate: {e}", path.display())
                    })?;
                }
                Some(pem)
            }
            None => None,
        };
        let client_tls = match (&self.client_cert, &self.client_key) {
            (None, None) => None,
            (Some(_), None) => return Err("cluster.redis.client_key: required with client_cert".into()),
            (None, Some(_)) => return Err("cluster.redis.client_cert: required with client_key".into()),
            (Some(cert_path), Some(key_path)) => {
                let client_cert = read("client_cert", cert_path)?;
                let client_key = read("client_key", key_path)?;
                let chain = certificates("client_cert", cert_path, &client_cert)?;
                let key = PrivateKeyDer::from_pem_slice(&client_key).map_err(|e| {
                    format!("cluster.redis.client_key: {}: no PEM private key: {e}", key_path.display())
                })?;
                // What redis-rs will do at connect time, here so a mismatch shows in check-config.
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("cluster.redis.client_cert: {e}"))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_client_auth_cert(chain, key)
                .map_err(|e| {
                    format!(
                        "cluster.redis.client_key: {} does not fit client_cert {}: {e}",
                        key_path.display(),
                        cert_path.display()
                    )
                })?;
                Some(redis::ClientTlsConfig { client_cert, client_key })
            }
        };
        if root_cert.is_none() && client_tls.is_none() {
            return Ok(None);
        }
        Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
    }
}

fn is_tls(url: &str) -> bool {
    url.starts_with("rediss://")
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cluster.redis.{key}: cannot read {}: {e}", path.display()))
}

/// The certificates of a PEM file; at least one.
fn certificates(key: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cluster.redis.{key}: {}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("cluster.redis.{key}: {}: no CERTIFICATE in the file", path.display()));
    }
    Ok(certs)
}
