//! Outbound HTTP for plugins (`wasi:http/outgoing-handler`), to allow-listed hosts only.
//!
//! wasmtime-wasi-http builds the request from the guest's resources and hands it to
//! [`OutboundHooks::send_request`], which decides whether it may leave:
//!
//! 1. The scheme is `http` or `https`, and the authority (`host[:port]`, port 80/443 by
//!    default) matches an `allow` entry; otherwise `http-request-denied`.
//! 2. A host name is resolved once. If ANY address it resolves to is not globally
//!    routable (loopback, private, link-local, unique-local, CGNAT, multicast,
//!    documentation, ...), the request is refused with `destination-ip-prohibited`,
//!    unless that very IP is itself an `allow` entry (with a matching port). So
//!    `127.0.0.1:8080` on the list reaches a local service, but `localhost` (or any name
//!    pointing at 127.0.0.1) does not: a plugin allowed `gitlab.example.com` cannot be
//!    turned against the host's own network by whoever controls that DNS record.
//! 3. The connection goes to the addresses vetted in step 2, never to a second lookup
//!    (DNS rebinding). TLS uses rustls (ring) with the Mozilla roots plus `ca_file`, and
//!    the request's host as SNI and verified name.
//!
//! Connect (DNS, TCP, TLS), first-byte and between-bytes timeouts come from the guest's
//! `request-options`, each capped by the plugin's `timeout`; the response body is cut at
//! `max_response_bytes`. Refusals are logged at debug with the plugin and the host, never
//! the headers (they may carry credentials).
//!
//! Layout: this module holds the plugin's `http` settings and compiles them into an
//! [`OutboundPolicy`]; [`allowlist`] owns step 1 and the address policy of step 2 (no
//! I/O, usable without the client); [`client`] does the rest (DNS, connect, TLS,
//! deadlines, the response cap).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use allowlist::Allowlist;
pub(crate) use client::OutboundHooks;

pub(crate) mod allowlist;
mod client;

#[cfg(test)]
mod tests;

/// Default for `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest `timeout` accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for `max_response_bytes` (1 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 1024 * 1024;
/// Largest `max_response_bytes` accepted (64 MiB, a plugin's default memory).
pub const MAX_RESPONSE_BYTES_LIMIT: u64 = 64 * 1024 * 1024;

/// A plugin's outbound HTTP settings (its `http` table in the host configuration).
///
/// ```toml
/// allow = ["gitlab.example.com", "*.googleapis.com", "10.0.0.5:8080", "[fd00::5]:443"]
/// timeout = "5s"
/// max_response_bytes = 1048576
/// ca_file = "/etc/burrow/internal-ca.pem"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundHttpConfig {
    /// Hosts the plugin may reach: `host`, `host:port`, `*.domain` (any name under
    /// `domain`, not `domain` itself), IPv4 literals, IPv6 as `[addr]` / `[addr]:port`
    /// (or bare without a port). Without a port, 80 and 443 are allowed. Empty (the
    /// default): no outbound HTTP at all.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Upper bound of each phase: connecting (DNS, TCP, TLS), the first response byte,
    /// and each gap between body bytes. Default 5s, at most 60s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A response body longer than this fails the read. Default 1 MiB, at most 64 MiB.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Extra trust roots (PEM) for `https`, on top of the Mozilla set; for an
    /// internal CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_max_response_bytes() -> u64 {
    DEFAULT_MAX_RESPONSE_BYTES
}

impl Default for OutboundHttpConfig {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            ca_file: None,
        }
    }
}

/// What is wrong with an [`OutboundHttpConfig`]; the message starts with the key.
#[derive(Debug, thiserror::Error)]
pub enum OutboundHttpConfigError {
    #[error("allow[{index}]: {entry:?}: {reason}")]
    Allow { index: usize, entry: String, reason: &'static str },
    #[error("timeout: must be more than 0 and at most {}, got {}", humantime::format_duration(*max), humantime::format_duration(*got))]
    Timeout { got: Duration, max: Duration },
    #[error("max_response_bytes: must be between 1 and {max}, got {got}")]
    MaxResponseBytes { got: u64, max: u64 },
    #[error("ca_file: cannot read {}: {source}", path.display())]
    CaFileRead { path: PathBuf, source: std::io::Error },
    #[error("ca_file: {}: {reason}", path.display())]
    CaFileInvalid { path: PathBuf, reason: String },
}

impl OutboundHttpConfig {
    /// Checks every key without touching the file system (`ca_file` is read by
    /// [`OutboundPolicy::new`]).
    pub fn validate(&self) -> Result<(), OutboundHttpConfigError> {
        self.allowlist()?;
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(OutboundHttpConfigError::Timeout { got: self.timeout, max: MAX_TIMEOUT });
        }
        if self.max_response_bytes == 0 || self.max_response_bytes > MAX_RESPONSE_BYTES_LIMIT {
            return Err(OutboundHttpConfigError::MaxResponseBytes {
                got: self.max_response_bytes,
                max: MAX_RESPONSE_BYTES_LIMIT,
            });
        }
        Ok(())
    }

    fn allowlist(&self) -> Result<Allowlist, OutboundHttpConfigError> {
        Allowlist::parse(&self.allow).map_err(|(index, reason)| OutboundHttpConfigError::Allow {
            index,
            entry: self.allow[index].clone(),
            reason,
        })
    }
}

/// A plugin's compiled outbound settings: the allowlist, limits and TLS client. Built
/// once per plugin load ([`OutboundPolicy::new`] reads `ca_file`), shared by its calls.
pub(crate) struct OutboundPolicy {
    allow: Allowlist,
    timeout: Duration,
    max_response_bytes: u64,
    tls: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for OutboundPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundPolicy")
            .field("allow", &self.allow)
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl OutboundPolicy {
    /// Validates `config`, reads its `ca_file` and builds the TLS client.
    pub(crate) fn new(config: &OutboundHttpConfig) -> Result<Self, OutboundHttpConfigError> {
        config.validate()?;
        Ok(Self {
            allow: config.allowlist()?,
            timeout: config.timeout,
            max_response_bytes: config.max_response_bytes,
            tls: client::tls_config(config.ca_file.as_deref())?,
        })
    }
}
