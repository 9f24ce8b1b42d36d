//! The `[plugins]` table of the host configuration.
//!
//! ```toml
//! [plugins.authorizer]
//! source = "builtin:authorizer-static"   # default; or a path to a .wasm component
//! call_timeout = "100ms"                 # default 100ms
//! max_memory_mb = 64                     # default 64
//! config = { ... }                       # handed to the plugin as JSON (default empty)
//!
//! [plugins.router]
//! source = "builtin:router-hostname"     # default
//! config = { root_domains = ["localhost"] }
//! ```

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// Smallest and largest accepted `call_timeout`: a plugin call blocks a request, so
/// anything longer than a few seconds is a configuration mistake.
pub const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(1);
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest accepted `max_memory_mb` (a 32-bit linear memory cannot exceed 4 GiB).
pub const MAX_MEMORY_MB: u32 = 4096;

const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(100);
const DEFAULT_MAX_MEMORY_MB: u32 = 64;

/// The kinds of plugin slot; each expects components of its own WIT world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    /// World `burrow:plugin/authorizer-plugin`.
    Authorizer,
    /// World `burrow:plugin/router-plugin`.
    Router,
}

impl PluginKind {
    /// The slot's name in the config (`plugins.<name>`).
    pub fn slot(self) -> &'static str {
        match self {
            PluginKind::Authorizer => "authorizer",
            PluginKind::Router => "router",
        }
    }

    /// The WIT world a component in this slot must implement.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Authorizer => "burrow:plugin/authorizer-plugin@0.1.0",
            PluginKind::Router => "burrow:plugin/router-plugin@0.1.0",
        }
    }

    /// The built-in used when the slot names no `source`.
    pub fn default_source(self) -> PluginSource {
        match self {
            PluginKind::Authorizer => PluginSource::Builtin("authorizer-static".into()),
            PluginKind::Router => PluginSource::Builtin("router-hostname".into()),
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.slot())
    }
}

/// Where a plugin's component comes from: `builtin:<name>` or a path to a `.wasm` file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum PluginSource {
    /// A component embedded in the host binary.
    Builtin(String),
    /// A component file, relative paths resolved against the working directory.
    File(PathBuf),
}

impl FromStr for PluginSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(name) = s.strip_prefix("builtin:") {
            return Ok(PluginSource::Builtin(name.to_string()));
        }
        if s.trim().is_empty() {
            return Err("must be \"builtin:<name>\" or a path to a .wasm component, not empty".into());
        }
        Ok(PluginSource::File(PathBuf::from(s)))
    }
}

impl TryFrom<String> for PluginSource {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginSource::Builtin(name) => write!(f, "builtin:{name}"),
            PluginSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The `[plugins]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// `[plugins.authorizer]`: authenticates agents and authorizes users.
    pub authorizer: PluginSlotConfig,
    /// `[plugins.router]`: maps a request's host name to a workload.
    pub router: PluginSlotConfig,
}

impl PluginsConfig {
    /// Checks every key; the error names the offending one.
    pub fn validate(&self) -> Result<(), PluginConfigError> {
        self.authorizer.validate(PluginKind::Authorizer)?;
        self.router.validate(PluginKind::Router)
    }

    /// The configuration of one slot.
    pub fn slot(&self, kind: PluginKind) -> &PluginSlotConfig {
        match kind {
            PluginKind::Authorizer => &self.authorizer,
            PluginKind::Router => &self.router,
        }
    }
}

/// One plugin slot (`[plugins.authorizer]` or `[plugins.router]`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginSlotConfig {
    /// `builtin:<name>` or a path to a `.wasm` component. Default: the slot's built-in
    /// (`builtin:authorizer-static`, `builtin:router-hostname`).
    pub source: Option<PluginSource>,
    /// Wall-clock budget of one call, instantiation included. Default 100ms.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Cap on the plugin's linear memory per call, in MiB. Default 64.
    pub max_memory_mb: u32,
    /// Arbitrary table handed to the plugin as JSON through `host.config`. Default empty.
    pub config: toml::Table,
}

impl Default for PluginSlotConfig {
    fn default() -> Self {
        Self {
            source: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            max_memory_mb: DEFAULT_MAX_MEMORY_MB,
            config: toml::Table::new(),
        }
    }
}

/// Plugin configs may hold credentials for third-party plugins: show only their keys.
impl fmt::Debug for PluginSlotConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginSlotConfig")
            .field("source", &self.source)
            .field("call_timeout", &self.call_timeout)
            .field("max_memory_mb", &self.max_memory_mb)
            .field("config_keys", &self.config.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PluginSlotConfig {
    /// The configured source, or the slot's built-in.
    pub fn source_or_default(&self, kind: PluginKind) -> PluginSource {
        self.source.clone().unwrap_or_else(|| kind.default_source())
    }

    /// `max_memory_mb` in bytes.
    pub fn max_memory_bytes(&self) -> u64 {
        u64::from(self.max_memory_mb) * 1024 * 1024
    }

    /// Checks the slot's keys; errors are named `plugins.<slot>.<key>`.
    pub fn validate(&self, kind: PluginKind) -> Result<(), PluginConfigError> {
        let key = |name: &str| format!("plugins.{}.{name}", kind.slot());
        match self.source_or_default(kind) {
            PluginSource::Builtin(name) => match super::builtin(&name) {
                None => {
                    return Err(PluginConfigError::new(
                        key("source"),
                        format!(
                            "unknown built-in plugin \"builtin:{name}\" (known: {})",
                            super::builtin_names()
                        ),
                    ))
                }
                Some(builtin) if builtin.kind != kind => {
                    return Err(PluginConfigError::new(
                        key("source"),
                        format!(
                            "\"builtin:{name}\" is a {} plugin, this slot needs {} (e.g. \"{}\")",
                            builtin.kind,
                            kind.world(),
                            kind.default_source()
                        ),
                    ))
                }
                Some(_) => {}
            },
            PluginSource::File(path) => match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => {
                    return Err(PluginConfigError::new(
                        key("source"),
                        format!("not a file: {}", path.display()),
                    ))
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    return Err(PluginConfigError::new(
                        key("source"),
                        format!("file not found: {}", path.display()),
                    ))
                }
                Err(err) => {
                    return Err(PluginConfigError::new(
                        key("source"),
                        format!("cannot read {}: {err}", path.display()),
                    ))
                }
            },
        }
        if !(MIN_CALL_TIMEOUT..=MAX_CALL_TIMEOUT).contains(&self.call_timeout) {
            return Err(PluginConfigError::new(
                key("call_timeout"),
                format!(
                    "must be between {} and {}, got {}",
                    humantime::format_duration(MIN_CALL_TIMEOUT),
                    humantime::format_duration(MAX_CALL_TIMEOUT),
                    humantime::format_duration(self.call_timeout)
                ),
            ));
        }
        if !(1..=MAX_MEMORY_MB).contains(&self.max_memory_mb) {
            return Err(PluginConfigError::new(
                key("max_memory_mb"),
                format!("must be between 1 and {MAX_MEMORY_MB}, got {}", self.max_memory_mb),
            ));
        }
        Ok(())
    }

    /// The `config` table as the JSON text the plugin reads through `host.config`.
    pub fn config_json(&self) -> String {
        serde_json::Value::Object(table_to_json(&self.config)).to_string()
    }
}

/// TOML datetimes have no JSON counterpart: they become RFC 3339 strings.
fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        // NaN and infinities have no JSON form; null is the honest stand-in.
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(items) => J::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => J::Object(table_to_json(table)),
    }
}

fn table_to_json(table: &toml::Table) -> serde_json::Map<String, serde_json::Value> {
    table.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect()
}

/// An invalid `[plugins]` key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PluginConfigError {
    /// The full key, e.g. `plugins.authorizer.source`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl PluginConfigError {
    fn new(key: String, message: String) -> Self {
        Self { key, message }
    }
}
