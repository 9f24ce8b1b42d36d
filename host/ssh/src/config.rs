//! The `[ssh]` table. Its presence turns the SSH ingress on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[ssh]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Where users' SSH clients connect. Default `0.0.0.0:2222`.
    pub listen: SocketAddr,
    /// The host's private key (OpenSSH format). Created (Ed25519, mode 0600) on first
    /// start when absent, then kept. In cluster mode give every replica the same key, or
    /// clients see a changed host key when they land on another replica.
    pub host_key: PathBuf,
    /// Accept a token as the password, for tools without key management. Default true.
    pub password_auth: bool,
    /// A connection with no traffic this long is closed (`0s`: never). Default 15 min.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest life of one connection, whatever it does. Default 12 h.
    #[serde(with = "humantime_serde")]
    pub max_session: Duration,
    /// A keepalive is sent after this long without traffic from the client (`0s`:
    /// never); three unanswered close the connection. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// From TCP accept to a successful login. Default 20 s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Failed logins on one connection before it is closed. Default 6 (as OpenSSH).
    pub max_auth_attempts: usize,
    /// Channels (sessions and forwards) open at once on one connection. Default 10.
    pub max_channels: usize,
    /// SSH connections at once on this replica; more are closed at accept. Default 1000.
    pub max_connections: usize,
    /// How long a new channel waits for a free tunnel of the agent. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub stream_wait: Duration,
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 2222)),
            host_key: PathBuf::from("ssh_host_ed25519_key"),
            password_auth: true,
            idle_timeout: Duration::from_secs(15 * 60),
            max_session: Duration::from_secs(12 * 3600),
            keepalive_interval: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(20),
            max_auth_attempts: 6,
            max_channels: 10,
            max_connections: 1000,
            stream_wait: Duration::from_secs(10),
        }
    }
}

impl SshConfig {
    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.host_key.as_os_str().is_empty() {
            return Err("ssh.host_key: a path is required".into());
        }
        for (key, value, max) in [
            ("ssh.max_auth_attempts", self.max_auth_attempts, 100),
            ("ssh.max_channels", self.max_channels, 1000),
            ("ssh.max_connections", self.max_connections, 1_000_000),
        ] {
            if value == 0 || value > max {
                return Err(format!("{key}: must be between 1 and {max}"));
            }
        }
        for (key, value) in [
            ("ssh.max_session", self.max_session),
            ("ssh.handshake_timeout", self.handshake_timeout),
            ("ssh.stream_wait", self.stream_wait),
        ] {
            if value.is_zero() {
                return Err(format!("{key}: must be greater than zero"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_unknown_keys_refused() {
        SshConfig::default().validate().unwrap();
        let parsed: SshConfig = toml::from_str("listen = \"127.0.0.1:0\"\nidle_timeout = \"5m\"").unwrap();
        assert_eq!(parsed.idle_timeout, Duration::from_secs(300));
        assert!(toml::from_str::<SshConfig>("listn = \"127.0.0.1:0\"").is_err());
        let zero = SshConfig { max_channels: 0, ..SshConfig::default() };
        assert!(zero.validate().unwrap_err().contains("ssh.max_channels"));
    }
}
