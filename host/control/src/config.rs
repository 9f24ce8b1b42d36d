//! The `[control]` table: the control API's listener, its shared secret, and the agent
//! token keys and lifetimes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The control secret must be at least this long: it is an HMAC-SHA256 key.
pub const MIN_SECRET_LEN: usize = 32;

/// `[control]`: present, the host runs the workload lifecycle and serves the control API.
///
/// ```toml
/// [control]
/// listen = "127.0.0.1:9443"          # never the agent, ingress or replica port
/// secret_file = "control.secret"     # >= 32 bytes, shared with the control plane
/// signing_keys = ["agent-token.key"] # Ed25519 PKCS#8; the first signs, all verify
/// token_ttl = "15m"
/// state_file = "workloads.json"      # one host; in a cluster records live in Redis
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Where the control API listens. Default `127.0.0.1:9443`: keep it off public networks.
    pub listen: SocketAddr,
    /// File holding the secret control tokens are signed with (at least 32 bytes; a
    /// trailing newline is ignored). Required.
    pub secret_file: Option<PathBuf>,
    /// Agent token signing keys (Ed25519, PKCS#8 DER files), current first: the first
    /// signs, every one verifies, so a rotation lists the new key first and keeps the
    /// previous one until its tokens have expired. On a single host a missing first key
    /// is created (mode 0600); in a cluster every replica must hold the same files.
    pub signing_keys: Vec<PathBuf>,
    /// Default lifetime of an agent token. Default 15 minutes; agents renew before it ends.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Longest lifetime a control plane may ask for. Default 24 hours.
    #[serde(with = "humantime_serde")]
    pub max_token_ttl: Duration,
    /// How long an ended workload is kept (listed, its id taken). Default 24 hours.
    #[serde(with = "humantime_serde")]
    pub ended_retention: Duration,
    /// Where a single host keeps workload records and queues (rewritten on each change).
    /// Absent: memory only, lost on restart. Ignored in cluster mode (Redis holds them).
    pub state_file: Option<PathBuf>,
    /// How often each replica checks the workloads it holds against the store, to catch
    /// an end it missed. Default 10s.
    #[serde(with = "humantime_serde")]
    pub resync: Duration,
    /// How long a new connection may take to send its HTTP/2 preface before it is closed.
    /// Default 5s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Connections the control API holds at once (a control plane needs a few); more are
    /// closed at accept. Default 256.
    pub max_connections: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9443".parse().expect("valid address"),
            secret_file: None,
            signing_keys: Vec::new(),
            token_ttl: Duration::from_secs(15 * 60),
            max_token_ttl: Duration::from_secs(24 * 3600),
            ended_retention: Duration::from_secs(24 * 3600),
            state_file: None,
            resync: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            max_connections: 256,
        }
    }
}

impl ControlConfig {
    /// Checks values serde cannot; reads the secret to check its length.
    pub fn validate(&self) -> Result<(), String> {
        self.load_secret()?;
        if self.signing_keys.is_empty() {
            return Err("control.signing_keys: at least one key file (the first signs agent tokens)".into());
        }
        if self.signing_keys.len() > 4 {
            return Err("control.signing_keys: at most 4 (the current key and those still verifying)".into());
        }
        if self.token_ttl < Duration::from_secs(10) || self.token_ttl > self.max_token_ttl {
            return Err("control.token_ttl: at least 10s and at most control.max_token_ttl".into());
        }
        if self.max_token_ttl > Duration::from_secs(30 * 24 * 3600) {
            return Err("control.max_token_ttl: at most 30 days (long-lived agents use static tokens)".into());
        }
        if self.resync < Duration::from_secs(1) {
            return Err("control.resync: at least 1s".into());
        }
        if self.handshake_timeout < Duration::from_millis(100) {
            return Err("control.handshake_timeout: at least 100ms".into());
        }
        if self.max_connections == 0 {
            return Err("control.max_connections: at least 1".into());
        }
        Ok(())
    }

    /// The control secret's bytes.
    pub fn load_secret(&self) -> Result<Vec<u8>, String> {
        let path = self.secret_file.as_ref().ok_or(
            "control.secret_file: required (a file with at least 32 random bytes shared with the control plane, \
             e.g. `head -c 32 /dev/urandom | base64 > control.secret`)",
        )?;
        read_secret(path)
    }
}

/// Reads a secret file (a trailing newline is not part of it).
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let mut secret = std::fs::read(path)
        .map_err(|e| format!("control.secret_file: cannot read {}: {e}", path.display()))?;
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!("control.secret_file: the secret must be at least {MIN_SECRET_LEN} bytes"));
    }
    Ok(secret)
}

/// Loads the signing keys; on a single host (`create_first`) writes a new first key if
/// its file does not exist.
pub fn load_keys(
    config: &ControlConfig,
    create_first: bool,
) -> Result<burrow_host_workloads::KeyRing, String> {
    let mut ders = Vec::with_capacity(config.signing_keys.len());
    for (i, path) in config.signing_keys.iter().enumerate() {
        match std::fs::read(path) {
            Ok(der) => ders.push(der),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && i == 0 && create_first => {
                let der = burrow_host_workloads::token::generate_pkcs8().map_err(|e| e.to_string())?;
                write_private(path, &der)
                    .map_err(|e| format!("control.signing_keys: cannot create {}: {e}", path.display()))?;
                tracing::info!(path = %path.display(), "created a new agent token signing key");
                ders.push(der);
            }
            Err(e) => return Err(format!("control.signing_keys: cannot read {}: {e}", path.display())),
        }
    }
    let refs: Vec<&[u8]> = ders.iter().map(Vec::as_slice).collect();
    burrow_host_workloads::KeyRing::from_pkcs8(&refs).map_err(|e| format!("control.signing_keys: {e}"))
}

/// Writes a new file only its owner can read.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "burrow-control-config-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn rand_suffix() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    }

    #[test]
    fn control_config_needs_a_long_secret_and_a_key() {
        let d = dir();
        let secret = d.join("secret");
        std::fs::write(&secret, "short\n").unwrap();
        let mut c = ControlConfig { secret_file: Some(secret.clone()), ..Default::default() };
        assert!(c.validate().unwrap_err().contains("at least 32 bytes"));
        std::fs::write(&secret, format!("{}\n", "s".repeat(32))).unwrap();
        assert!(c.validate().unwrap_err().contains("signing_keys"));
        c.signing_keys = vec![d.join("k1")];
        c.validate().unwrap();
        c.token_ttl = Duration::from_secs(1);
        assert!(c.validate().unwrap_err().contains("token_ttl"));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn control_keys_are_created_once_with_owner_only_access() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir();
        let c = ControlConfig { signing_keys: vec![d.join("k1")], ..Default::default() };
        assert!(load_keys(&c, false).unwrap_err().contains("cannot read"));
        let first = load_keys(&c, true).unwrap();
        let mode = std::fs::metadata(d.join("k1")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_keys(&c, true).unwrap();
        assert_eq!(first.signer_id(), again.signer_id());
        std::fs::remove_dir_all(d).unwrap();
    }
}
