//! What a plugin may ask of the host, behind one trait so plugin logic runs unchanged
//! against the real imports ([`crate::WasmHost`]) and against [`crate::MockHost`] in
//! native tests.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::http::{HttpError, HttpRequest, HttpResponse};

/// Severity of a message sent to the host's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One top-level value of the plugin's config table, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    /// A string.
    Text(String),
    /// An integer.
    Integer(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Boolean(bool),
    /// An array or table, as JSON text.
    Json(String),
}

/// Why the plugin's config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config does not fit the plugin's config type (unknown key, wrong type, ...).
    #[error("invalid config: {0}")]
    Invalid(#[from] serde_json::Error),
    /// The config parsed but breaks one of the plugin's rules.
    #[error("invalid config: {0}")]
    Rule(String),
}

/// Why a key-value operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The store cannot be reached (Redis down); the reason is for logs.
    #[error("key-value store unavailable: {0}")]
    Unavailable(String),
    /// Key longer than [`KV_MAX_KEY_BYTES`] or value larger than [`KV_MAX_VALUE_BYTES`].
    #[error("key or value too large")]
    TooLarge,
    /// Over the plugin's quota of keys.
    #[error("key quota exceeded")]
    QuotaExceeded,
}

/// Longest key the store accepts, in bytes.
pub const KV_MAX_KEY_BYTES: usize = 512;
/// Largest value the store accepts, in bytes.
pub const KV_MAX_VALUE_BYTES: usize = 64 * 1024;

/// Everything the host offers a plugin: log, config, clock, a key-value store and
/// outbound HTTP.
///
/// Plugin code takes `host: &impl Host` so it runs against [`crate::WasmHost`] inside the
/// component and against [`crate::MockHost`] in native unit tests.
pub trait Host {
    /// Writes to the host's log, tagged with the plugin's name and version. The host keeps
    /// at most 32 lines per call and cuts each at 2 KiB.
    fn log(&self, level: LogLevel, message: &str);

    /// The plugin's whole `config` table as JSON text (`{}` when none is set).
    fn config_json(&self) -> String;

    /// The plugin's whole `config` table as TOML text (empty when none is set).
    fn config_toml(&self) -> String;

    /// One top-level key of the config table, or `None`.
    fn config_get(&self, key: &str) -> Option<ConfigValue>;

    /// Wall-clock time as the host sees it, in milliseconds since the Unix epoch (UTC).
    fn now(&self) -> u64;

    /// Reads a key of the plugin's private store.
    fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;

    /// Writes a key; `ttl_ms` of `None` keeps it until deleted.
    fn kv_set(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), KvError>;

    /// Deletes a key; `true` if it existed.
    fn kv_delete(&self, key: &str) -> Result<bool, KvError>;

    /// Adds `delta` to a counter (missing counts as 0) and returns the new value. The TTL
    /// applies only when the counter is created, which makes fixed-window rate limits easy.
    fn kv_increment(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError>;

    /// Sends an HTTP request through `wasi:http`. The host lets it out only to hosts on the
    /// plugin's allowlist (`[plugins.<slot>.http] allow`), otherwise [`HttpError::Denied`]
    /// (or [`HttpError::Prohibited`] for a name resolving to a private address).
    fn http(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError>;

    /// Parses the config table into `T` (typically a `#[derive(Deserialize)]` struct with
    /// `#[serde(deny_unknown_fields)]`). Errors name the field (``unknown field `temas` ``)
    /// but no position: the admin wrote TOML, and the host's `check-config` points at the
    /// line in their file.
    fn config<T: DeserializeOwned>(&self) -> Result<T, ConfigError>
    where
        Self: Sized,
    {
        let value: serde_json::Value = serde_json::from_str(&self.config_json())?;
        Ok(serde_json::from_value(value)?)
    }

    /// [`Host::log`] at [`LogLevel::Debug`].
    fn debug(&self, message: &str) {
        self.log(LogLevel::Debug, message);
    }

    /// [`Host::log`] at [`LogLevel::Info`].
    fn info(&self, message: &str) {
        self.log(LogLevel::Info, message);
    }

    /// [`Host::log`] at [`LogLevel::Warn`].
    fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message);
    }

    /// [`Host::log`] at [`LogLevel::Error`].
    fn error(&self, message: &str) {
        self.log(LogLevel::Error, message);
    }
}
