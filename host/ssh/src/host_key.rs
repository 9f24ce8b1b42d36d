//! The host key: loaded from `ssh.host_key`, or created there on first start.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};

/// The host key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("ssh.host_key {path}: {message}")]
    Load { path: String, message: String },
    #[error("ssh.host_key {path}: could not create it: {message}")]
    Create { path: String, message: String },
}

/// Loads the key at `path`, creating an Ed25519 key there (mode 0600) if there is none.
/// Returns the key and whether it was created.
pub fn load_or_create(path: &Path) -> Result<(PrivateKey, bool), HostKeyError> {
    let shown = path.display().to_string();
    match std::fs::metadata(path) {
        Ok(_) => load(path).map(|k| (k, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match create(path) {
            Ok(key) => Ok((key, true)),
            // Another replica or process created it first: use theirs.
            Err(HostKeyError::Create { .. }) if path.exists() => load(path).map(|k| (k, false)),
            Err(e) => Err(e),
        },
        Err(e) => Err(HostKeyError::Load { path: shown, message: e.to_string() }),
    }
}

/// Loads the key at `path`.
pub fn load(path: &Path) -> Result<PrivateKey, HostKeyError> {
    russh::keys::load_secret_key(path, None)
        .map_err(|e| HostKeyError::Load { path: path.display().to_string(), message: e.to_string() })
}

fn create(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let err = |message: String| HostKeyError::Create { path: path.display().to_string(), message };
    let seed: [u8; 32] = rand::random();
    let key = PrivateKey::new(KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed)), "burrow host key")
        .map_err(|e| err(e.to_string()))?;
    let text = key.to_openssh(LineEnding::LF).map_err(|e| err(e.to_string()))?;
    // create_new: two processes creating at once must not overwrite each other's key.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(e.to_string()))?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| err(e.to_string()))?;
    Ok(key)
}

/// `SHA256:<base64>`, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

/// The public key as one `known_hosts` line for `[host]:port`.
pub fn known_hosts_line(key: &PrivateKey, host: &str, port: u16) -> String {
    let public = key.public_key().to_openssh().unwrap_or_default();
    let name = if port == 22 { host.to_owned() } else { format!("[{host}]:{port}") };
    format!("{name} {public}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_is_private_to_the_owner_and_kept_across_starts() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("burrow-host-key-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ssh_host_ed25519_key");
        let (first, created) = load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(fingerprint(&first), fingerprint(&again));
        assert!(fingerprint(&first).starts_with("SHA256:"));
        assert!(known_hosts_line(&first, "127.0.0.1", 2222).starts_with("[127.0.0.1]:2222 ssh-ed25519 "));
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(load_or_create(&path), Err(HostKeyError::Load { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
