//! A private CA for the replica API, and certificates for replicas: what
//! `burrow-host cluster-certs` writes for a quick start (a deployment with its own PKI
//! points `cluster.tls` at its own files instead).
//!
//! Replicas authenticate each other both ways with these (mutual TLS): every replica
//! presents its certificate as a server *and* as a client, so each certificate carries
//! both the server and the client extended key usage, and the hosts other replicas dial
//! it by as subject alternative names.
//!
//! Files in the directory: `ca.pem` (the CA every replica trusts), `ca-key.pem` (kept to
//! issue more certificates; it never needs to leave the machine that ran the command),
//! and `<replica>.pem` / `<replica>-key.pem` per replica. Keys are written mode 0600.
//! The CA is made once and reused: running the command again issues new or renewed
//! replica certificates under the same CA, so running replicas keep trusting each other.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use time::{Duration, OffsetDateTime};

/// The CA's distinguished name. Fixed, so the issuer can be rebuilt from `ca-key.pem`
/// alone when more certificates are issued later (its key identifier comes from the key).
const CA_NAME: &str = "Burrow cluster CA";
/// How long the CA is valid.
const CA_DAYS: i64 = 3650;

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Key or certificate generation failed, or an existing CA key is unusable.
    #[error("{what}: {source}")]
    Rcgen {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// A replica name or host is unusable.
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_owned(), source }
}

fn rcgen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Rcgen { what, source }
}

/// Files of one replica, as `cluster.tls` names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFiles {
    /// The replica's name (the file stem).
    pub name: String,
    /// `cluster.tls.cert`.
    pub cert: PathBuf,
    /// `cluster.tls.key`.
    pub key: PathBuf,
    /// `cluster.tls.ca`.
    pub ca: PathBuf,
}

impl ReplicaFiles {
    /// The `tls = { ... }` line of a `[cluster]` table using these files.
    pub fn tls_toml(&self) -> String {
        format!(
            "tls = {{ cert = {:?}, key = {:?}, ca = {:?} }}",
            self.cert.display().to_string(),
            self.key.display().to_string(),
            self.ca.display().to_string()
        )
    }
}

/// The CA of `dir`: loaded if `ca.pem` and `ca-key.pem` exist, else created. Returns
/// the issuer and whether it was created now.
fn ca(dir: &Path) -> Result<(rcgen::Issuer<'static, rcgen::KeyPair>, bool), PkiError> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let params = || {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, CA_NAME);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        params
    };
    if key_path.exists() {
        let pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = rcgen::KeyPair::from_pem(&pem).map_err(rcgen_err(format!("{}", key_path.display())))?;
        if !cert_path.is_file() {
            return Err(PkiError::Invalid(format!(
                "{} exists but {} does not: restore it or remove both to make a new CA",
                key_path.display(),
                cert_path.display()
            )));
        }
        return Ok((rcgen::Issuer::new(params(), key), false));
    }
    let key = rcgen::KeyPair::generate().map_err(rcgen_err("CA key"))?;
    let mut p = params();
    p.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    p.not_after = OffsetDateTime::now_utc() + Duration::days(CA_DAYS);
    let cert = p.self_signed(&key).map_err(rcgen_err("CA certificate"))?;
    write_private(&key_path, &key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem()).map_err(io_err(&cert_path))?;
    Ok((rcgen::Issuer::new(params(), key), true))
}

/// Writes `contents` readable by the owner only.
fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io_err(path))?;
    file.write_all(contents.as_bytes()).map_err(io_err(path))
}

/// Checks a replica name is usable as a file stem.
fn check_name(name: &str) -> Result<(), PkiError> {
    if name.is_empty()
        || name == "ca"
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(PkiError::Invalid(format!(
            "replica name {name:?}: use 1-64 letters, digits, '-', '_' or '.' (not \"ca\")"
        )));
    }
    Ok(())
}

/// Issues (or renews) the certificate of replica `name`, valid for `hosts` (DNS names or
/// IP addresses other replicas dial it by) for `days`, under the CA in `dir` (made if
/// absent). Returns the files and whether the CA was created by this call.
pub fn issue(dir: &Path, name: &str, hosts: &[String], days: u32) -> Result<(ReplicaFiles, bool), PkiError> {
    check_name(name)?;
    if hosts.is_empty() {
        return Err(PkiError::Invalid(format!("replica {name}: name at least one host it is dialed by")));
    }
    if days == 0 || i64::from(days) > CA_DAYS {
        return Err(PkiError::Invalid(format!("--days {days}: from 1 to {CA_DAYS}")));
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let (issuer, created) = ca(dir)?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())
        .map_err(rcgen_err(format!("replica {name}: hosts {hosts:?}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(i64::from(days));
    let key = rcgen::KeyPair::generate().map_err(rcgen_err("replica key"))?;
    let cert = params.signed_by(&key, &issuer).map_err(rcgen_err(format!("replica {name} certificate")))?;
    let files = ReplicaFiles {
        name: name.to_owned(),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
        ca: dir.join("ca.pem"),
    };
    write_private(&files.key, &key.serialize_pem())?;
    std::fs::write(&files.cert, cert.pem()).map_err(io_err(&files.cert))?;
    Ok((files, created))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("burrow-pki-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_ca_is_made_once_and_reused_for_later_replicas() {
        let dir = dir("reuse");
        let (a, created) = issue(&dir, "replica-a", &["127.0.0.1".into()], 30).unwrap();
        assert!(created);
        let ca_before = std::fs::read(&a.ca).unwrap();
        let (b, created) = issue(&dir, "replica-b", &["replica-b.internal".into()], 30).unwrap();
        assert!(!created);
        assert_eq!(std::fs::read(&b.ca).unwrap(), ca_before);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [&a.key, &b.key, &dir.join("ca-key.pem")] {
                assert_eq!(std::fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600);
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_names_and_hosts_are_refused_with_a_reason() {
        let dir = dir("bad");
        for name in ["", "ca", "../x", "a b", ".hidden"] {
            let err = issue(&dir, name, &["h".into()], 1).unwrap_err();
            assert!(err.to_string().contains("replica name"), "{name}: {err}");
        }
        let err = issue(&dir, "r", &[], 1).unwrap_err();
        assert!(err.to_string().contains("at least one host"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
