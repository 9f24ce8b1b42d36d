//! The `[plugins]` table of the host configuration.
//!
//! ```toml
//! [plugins]
//! dir = "/etc/burrow/plugins"       # optional: NAME.wasm files (+ NAME.toml manifests)
//! cache_dir = "/var/cache/burrow"   # optional: compiled components, so restarts skip compiling
//! watch = true                      # reload a plugin when its file changes
//!
//! [plugins.runtime]                 # the engine, sized once at start
//! max_instances = 128
//!
//! [plugins.authorizer]              # exactly one
//! source = "builtin:authorizer-static"
//! config = { ... }                  # handed to the plugin (host import `config`)
//!
//! [plugins.agents]                  # optional: who may connect as an agent; without it,
//! config = { agents = [...] }       # the authorizer. Default source: builtin:authorizer-static
//!
//! [[plugins.workload]]              # consulted in order; the first to resolve a request wins
//! source = "builtin:workload-workspace"
//! config = { root_domains = ["localhost"] }
//!
//! [plugins.router]                  # optional; without it the built-in native policy orders replicas
//! source = "builtin:router-prefer-local"
//! ```
//!
//! Every slot takes the same keys: `source`, `name`, limits (`call_timeout`,
//! `init_timeout`, `max_memory_mb`, `fuel`, `max_concurrent`), `instances` (`per-user`,
//! `fresh` or `warm`),
//! `warm_pool`, `failure`, `config` and `[...http]` (outbound HTTP allowlist).

mod runtime;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// How config errors are worded without quoting the (possibly secret) source line.
pub use burrow_plugin_contract::manifest::toml_message;
pub(crate) use burrow_plugin_contract::manifest::{table_to_json, toml_to_json};

use super::host_api::http::OutboundHttpConfig;
pub use runtime::RuntimeConfig;

/// Smallest and largest accepted `call_timeout`: a plugin call blocks a request, so
/// anything longer than a minute is a configuration mistake.
pub const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(1);
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest accepted `max_memory_mb` (a 32-bit linear memory cannot exceed 4 GiB).
pub const MAX_MEMORY_MB: u32 = 4096;

const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(100);
/// Making a reusable instance (instantiation and `plugin.init`) happens once per pool
/// slot, not per call, and an `init` may parse a large config (the static agent list at
/// 10,000 entries), so it gets its own, longer bound than a call.
const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_MAX_MEMORY_MB: u32 = 64;
const DEFAULT_MAX_CONCURRENT: u32 = 64;
const DEFAULT_WARM_POOL: u32 = 16;

/// The kinds of plugin, as the contract crate defines them (configs, manifests and the
/// admin API spell them alike).
pub use burrow_plugin_contract::PluginKind;

/// Where a plugin's component comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum PluginSource {
    /// `builtin:<name>`: embedded in the host binary, unless `[plugins] dir` holds a
    /// `<name>.wasm`, which replaces it.
    Builtin(String),
    /// A path to a `.wasm` component; a bare name (no `/`, no `.wasm`) means
    /// `<dir>/<name>.wasm`.
    File(PathBuf),
}

impl FromStr for PluginSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(name) = s.strip_prefix("builtin:") {
            if name.is_empty() {
                return Err("\"builtin:\" needs a name, e.g. \"builtin:authorizer-static\"".into());
            }
            return Ok(PluginSource::Builtin(name.to_string()));
        }
        if s.trim().is_empty() {
            return Err("must be \"builtin:<name>\", a plugin name or a path to a .wasm component".into());
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

/// Instance policy of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstancePolicy {
    /// A new instance for every call: nothing survives a call.
    Fresh,
    /// Initialised instances reused, each only for calls carrying the same credential
    /// (one user's, one agent token's) or for calls that carry none (workload `resolve`,
    /// routing, expiry), never across credentials: up to `warm_pool` kept, least
    /// recently used dropped first; one that traps is discarded (the default for
    /// plugins loaded from files).
    #[default]
    PerUser,
    /// Up to `warm_pool` initialised instances reused for any call, whoever it is for;
    /// one that traps is discarded. For plugins that keep nothing of a user's between
    /// calls: the default for the built-ins, which keep no state in their instances
    /// (authorizer-callout caches in `kv`, keyed by credential hash).
    Warm,
}

/// What the host does when a plugin call fails (trap, limit, quarantine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Refuse the request or agent (503 for users). The only policy an authorizer takes.
    Closed,
    /// Workloads: act as if this plugin did not claim the request (the next one is asked).
    Skip,
    /// Routers: order candidates with the built-in policy.
    Fallback,
}

/// What a slot is for. The agents slot runs an authorizer component but is only asked
/// `authenticate-agent`, so the kind (the world) and the role differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotRole {
    /// `[plugins.authorizer]`: users, and agents unless `[plugins.agents]` is set.
    Authorizer,
    /// `[plugins.agents]`: agents only (`authenticate-agent`).
    Agents,
    /// `[[plugins.workload]]`.
    Workload,
    /// `[plugins.router]`.
    Router,
}

/// One plugin slot.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginSlotConfig {
    /// Name in logs, metrics and the admin API. Default: the built-in's name or the
    /// file stem.
    pub name: Option<String>,
    /// `builtin:<name>`, a plugin name in `[plugins] dir`, or a path to a `.wasm` file.
    /// Required for workloads and the router; the authorizer defaults to
    /// `builtin:authorizer-static`.
    pub source: Option<PluginSource>,
    /// Wall time per call, host calls included (and, under `instances = "fresh"`,
    /// instantiation). Default 100ms.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Wall time to make an instance that will be reused (`per-user`, `warm`):
    /// instantiation and `plugin.init`, also at load and in canaries. The call that
    /// needed it then gets its own `call_timeout`. Default 2s.
    #[serde(with = "humantime_serde")]
    pub init_timeout: Duration,
    /// Linear memory per instance, in MiB. Default 64.
    pub max_memory_mb: u32,
    /// Optional fuel (wasm instructions, roughly) per call; needs `[plugins.runtime] fuel = true`.
    pub fuel: Option<u64>,
    /// Calls running at once; more wait up to `call_timeout` for a turn. Default 64.
    pub max_concurrent: u32,
    /// `per-user` (the default for plugins from files), `warm` (the default for the
    /// built-ins) or `fresh`; see [`PluginSlotConfig::instance_policy`].
    pub instances: Option<InstancePolicy>,
    /// Initialised instances kept between calls (`per-user` and `warm`). Default 16.
    pub warm_pool: u32,
    /// `closed`, `skip` (workloads) or `fallback` (routers). Default: `closed` for
    /// authorizers and workloads, `fallback` for routers.
    pub failure: Option<FailurePolicy>,
    /// Outbound HTTP: `[plugins.<slot>.http] allow = ["gitlab.example.com"]`.
    pub http: OutboundHttpConfig,
    /// Handed to the plugin through the `config` import.
    pub config: toml::Table,
}

impl Default for PluginSlotConfig {
    fn default() -> Self {
        Self {
            name: None,
            source: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            init_timeout: DEFAULT_INIT_TIMEOUT,
            max_memory_mb: DEFAULT_MAX_MEMORY_MB,
            fuel: None,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            instances: None,
            warm_pool: DEFAULT_WARM_POOL,
            failure: None,
            http: OutboundHttpConfig::default(),
            config: toml::Table::new(),
        }
    }
}

/// Plugin configs may hold credentials for third-party services: show only their keys.
impl fmt::Debug for PluginSlotConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginSlotConfig")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("call_timeout", &self.call_timeout)
            .field("init_timeout", &self.init_timeout)
            .field("max_memory_mb", &self.max_memory_mb)
            .field("fuel", &self.fuel)
            .field("max_concurrent", &self.max_concurrent)
            .field("instances", &self.instances)
            .field("warm_pool", &self.warm_pool)
            .field("failure", &self.failure)
            .field("http", &self.http)
            .field("config_keys", &self.config.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PartialEq for PluginSlotConfig {
    fn eq(&self, other: &Self) -> bool {
        // Compared to decide whether a reload must rebuild the slot; `http` compares by
        // its Debug form, which lists every key it has.
        self.name == other.name
            && self.source == other.source
            && self.call_timeout == other.call_timeout
            && self.init_timeout == other.init_timeout
            && self.max_memory_mb == other.max_memory_mb
            && self.fuel == other.fuel
            && self.max_concurrent == other.max_concurrent
            && self.instances == other.instances
            && self.warm_pool == other.warm_pool
            && self.failure == other.failure
            && format!("{:?}", self.http) == format!("{:?}", other.http)
            && self.config == other.config
    }
}

impl PluginSlotConfig {
    /// A slot running `source` with default limits and `config`.
    pub fn with_source(source: PluginSource, config: toml::Table) -> Self {
        Self { source: Some(source), config, ..Self::default() }
    }

    /// The configured source, or the kind's default.
    /// The instance policy the slot runs with: `instances` if set; otherwise `warm` for a
    /// built-in (Burrow's own code, which keeps nothing per user in an instance, and whose
    /// `init` may parse a large config: the static agent list at 10,000 entries takes
    /// ~89 ms, which `per-user` would pay once per agent token) and `per-user` for a plugin
    /// from a file, whose code the host cannot vouch for.
    pub fn instance_policy(&self, kind: PluginKind) -> InstancePolicy {
        self.instances.unwrap_or(match self.source_or_default(kind) {
            Some(PluginSource::Builtin(_)) => InstancePolicy::Warm,
            _ => InstancePolicy::PerUser,
        })
    }

    pub fn source_or_default(&self, kind: PluginKind) -> Option<PluginSource> {
        self.source.clone().or_else(|| match kind {
            PluginKind::Authorizer => Some(PluginSource::Builtin("authorizer-static".into())),
            PluginKind::Workload | PluginKind::Router => None,
        })
    }

    /// The slot's name: `name`, else the built-in's name or the file's stem.
    pub fn plugin_name(&self, kind: PluginKind) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match self.source_or_default(kind) {
            Some(PluginSource::Builtin(name)) => name,
            Some(PluginSource::File(path)) => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| kind.as_str().to_string()),
            None => kind.as_str().to_string(),
        }
    }

    pub fn failure_policy(&self, kind: PluginKind) -> FailurePolicy {
        self.failure.unwrap_or(match kind {
            PluginKind::Router => FailurePolicy::Fallback,
            PluginKind::Authorizer | PluginKind::Workload => FailurePolicy::Closed,
        })
    }

    /// `max_memory_mb` in bytes.
    pub fn max_memory_bytes(&self) -> u64 {
        u64::from(self.max_memory_mb) * 1024 * 1024
    }

    /// Checks the slot's keys; errors are named `<key>.<name>` from `prefix`
    /// (`plugins.authorizer`, `plugins.workload[1]`).
    pub fn validate(
        &self,
        kind: PluginKind,
        prefix: &str,
        runtime: &RuntimeConfig,
    ) -> Result<(), PluginConfigError> {
        let key = |name: &str| format!("{prefix}.{name}");
        let err = |name: &str, message: String| Err(PluginConfigError::new(key(name), message));
        if let Some(name) = &self.name {
            if !valid_name(name) {
                return err("name", format!("{name:?}: use 1-64 lowercase letters, digits, '-' or '_'"));
            }
        }
        match self.source_or_default(kind) {
            None => {
                return err(
                    "source",
                    format!("required: a {kind} plugin (\"builtin:<name>\" or a .wasm path)"),
                )
            }
            Some(PluginSource::Builtin(name)) => match super::builtin(&name) {
                None => {
                    return err(
                        "source",
                        format!(
                            "unknown built-in plugin \"builtin:{name}\" (known: {})",
                            super::builtin_names()
                        ),
                    )
                }
                Some(builtin) if builtin.kind != kind => {
                    return err(
                        "source",
                        format!(
                            "\"builtin:{name}\" is a {} plugin, this slot needs a {kind} plugin",
                            builtin.kind
                        ),
                    )
                }
                Some(_) => {}
            },
            Some(PluginSource::File(_)) => {}
        }
        for (key, value) in [("call_timeout", self.call_timeout), ("init_timeout", self.init_timeout)] {
            if !(MIN_CALL_TIMEOUT..=MAX_CALL_TIMEOUT).contains(&value) {
                return err(
                    key,
                    format!(
                        "must be between {} and {}, got {}",
                        humantime::format_duration(MIN_CALL_TIMEOUT),
                        humantime::format_duration(MAX_CALL_TIMEOUT),
                        humantime::format_duration(value)
                    ),
                );
            }
        }
        if !(1..=runtime.max_memory_mb).contains(&self.max_memory_mb) {
            return err(
                "max_memory_mb",
                format!(
                    "must be between 1 and plugins.runtime.max_memory_mb ({}), got {}",
                    runtime.max_memory_mb, self.max_memory_mb
                ),
            );
        }
        match self.fuel {
            Some(0) => return err("fuel", "must be at least 1 (leave it out for no fuel limit)".into()),
            Some(_) if !runtime.fuel => {
                return err("fuel", "needs plugins.runtime.fuel = true (fuel metering is engine-wide)".into())
            }
            _ => {}
        }
        if self.max_concurrent == 0 || self.max_concurrent > runtime.max_instances {
            return err(
                "max_concurrent",
                format!(
                    "must be between 1 and plugins.runtime.max_instances ({}), got {}",
                    runtime.max_instances, self.max_concurrent
                ),
            );
        }
        if self.instance_policy(kind) != InstancePolicy::Fresh
            && (self.warm_pool == 0 || self.warm_pool > self.max_concurrent)
        {
            return err(
                "warm_pool",
                format!(
                    "must be between 1 and max_concurrent ({}), got {}",
                    self.max_concurrent, self.warm_pool
                ),
            );
        }
        match (kind, self.failure) {
            (_, None) => {}
            (PluginKind::Authorizer, Some(FailurePolicy::Closed)) => {}
            (PluginKind::Authorizer, Some(_)) => {
                return err(
                    "failure",
                    "an authorizer always fails closed; only \"closed\" is accepted".into(),
                )
            }
            (PluginKind::Workload, Some(FailurePolicy::Closed | FailurePolicy::Skip)) => {}
            (PluginKind::Workload, Some(_)) => {
                return err("failure", "a workload takes \"closed\" or \"skip\"".into())
            }
            (PluginKind::Router, Some(FailurePolicy::Fallback)) => {}
            (PluginKind::Router, Some(_)) => {
                return err(
                    "failure",
                    "a router always falls back to the built-in policy; only \"fallback\" is accepted".into(),
                )
            }
        }
        self.http.validate().map_err(|e| PluginConfigError::new(key("http"), e.to_string()))?;
        Ok(())
    }

    /// The `config` table as JSON text.
    pub fn config_json(&self) -> String {
        serde_json::Value::Object(table_to_json(&self.config)).to_string()
    }

    /// The `config` table as TOML text.
    pub fn config_toml(&self) -> String {
        toml::to_string(&self.config).unwrap_or_default()
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// The `[plugins]` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Admin plugins by name: `<name>.wasm` (and an optional `<name>.toml` manifest).
    /// A file named like a built-in replaces it wherever `builtin:<name>` is used.
    pub dir: Option<PathBuf>,
    /// Compiled components, keyed by the wasm's SHA-256 and the engine's settings.
    pub cache_dir: Option<PathBuf>,
    /// Reload a plugin when its file changes.
    pub watch: bool,
    /// How often plugin files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
    /// How often connected agents' workloads are asked whether they have ended.
    #[serde(with = "humantime_serde")]
    pub expiry_check: Duration,
    pub runtime: RuntimeConfig,
    pub authorizer: PluginSlotConfig,
    /// Who may connect as an agent: an authorizer component asked `authenticate-agent`
    /// only. Without it the authorizer authenticates agents too. Its source defaults to
    /// `builtin:authorizer-static`, so `[plugins.agents] config = { agents = [...] }` puts
    /// the built-in static agent list beside a user-policy plugin.
    pub agents: Option<PluginSlotConfig>,
    /// Consulted in order for every request; empty means the built-in workspace scheme
    /// (`builtin:workload-workspace`, host names `<service>-<agent>.localhost`).
    pub workload: Vec<PluginSlotConfig>,
    pub router: Option<PluginSlotConfig>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            cache_dir: None,
            watch: true,
            watch_interval: Duration::from_secs(1),
            expiry_check: Duration::from_secs(60),
            runtime: RuntimeConfig::default(),
            authorizer: PluginSlotConfig::default(),
            agents: None,
            workload: Vec::new(),
            router: None,
        }
    }
}

/// One slot as the manager sees it: its kind, its place in the config and its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotSpec {
    pub kind: PluginKind,
    pub role: SlotRole,
    /// `plugins.authorizer`, `plugins.workload[0]`, `plugins.router`.
    pub key: String,
    /// The name the config gives the slot: `name`, else the built-in's name or the file
    /// stem. It identifies the slot across a config reload; the plugin's own name (the
    /// manifest's `[plugin] name` when `name` is unset) is decided at load.
    pub name: String,
    pub config: PluginSlotConfig,
}

impl SlotSpec {
    fn new(kind: PluginKind, role: SlotRole, key: String, config: &PluginSlotConfig) -> SlotSpec {
        SlotSpec { kind, role, key, name: config.plugin_name(kind), config: config.clone() }
    }
}

impl PluginsConfig {
    /// Every slot: the authorizer, the agents slot, the workloads in order, the router.
    pub fn slots(&self) -> Vec<SlotSpec> {
        let mut slots = vec![SlotSpec::new(
            PluginKind::Authorizer,
            SlotRole::Authorizer,
            "plugins.authorizer".into(),
            &self.authorizer,
        )];
        if let Some(agents) = &self.agents {
            slots.push(SlotSpec::new(
                PluginKind::Authorizer,
                SlotRole::Agents,
                "plugins.agents".into(),
                agents,
            ));
        }
        let default_workload;
        let workloads = if self.workload.is_empty() {
            default_workload = [PluginSlotConfig::with_source(
                PluginSource::Builtin("workload-workspace".into()),
                toml::Table::new(),
            )];
            &default_workload[..]
        } else {
            &self.workload[..]
        };
        for (i, slot) in workloads.iter().enumerate() {
            slots.push(SlotSpec::new(
                PluginKind::Workload,
                SlotRole::Workload,
                format!("plugins.workload[{i}]"),
                slot,
            ));
        }
        if let Some(router) = &self.router {
            slots.push(SlotSpec::new(PluginKind::Router, SlotRole::Router, "plugins.router".into(), router));
        }
        slots
    }

    /// The slot `selector` names: `authorizer`, `agents`, `router`, `workload` (when
    /// there is just one), `workload[N]`, the full key (`plugins.workload[1]`) or the
    /// name the config gives a slot.
    pub fn find_slot(&self, selector: &str) -> Result<SlotSpec, String> {
        let slots = self.slots();
        let key = selector.strip_prefix("plugins.").unwrap_or(selector);
        let workloads = slots.iter().filter(|s| s.role == SlotRole::Workload).count();
        let found = slots.iter().find(|s| {
            s.key == format!("plugins.{key}")
                || (key == "workload" && workloads == 1 && s.role == SlotRole::Workload)
                || s.name == selector
        });
        found.cloned().ok_or_else(|| {
            let known: Vec<String> = slots
                .iter()
                .map(|s| format!("{} ({})", s.key.trim_start_matches("plugins."), s.name))
                .collect();
            format!("no slot {selector:?} in this config; it has: {}", known.join(", "))
        })
    }

    /// Checks every key; the error names the offending one. File sources are checked
    /// for existence here, so a typo fails `check-config` rather than the start.
    pub fn validate(&self) -> Result<(), PluginConfigError> {
        self.runtime.validate()?;
        if self.watch_interval < Duration::from_millis(100) || self.watch_interval > Duration::from_secs(3600)
        {
            return Err(PluginConfigError::new(
                "plugins.watch_interval".into(),
                "must be between 100ms and 1h".into(),
            ));
        }
        if self.expiry_check < Duration::from_secs(1) {
            return Err(PluginConfigError::new("plugins.expiry_check".into(), "must be at least 1s".into()));
        }
        if let Some(dir) = &self.dir {
            if !dir.is_dir() {
                return Err(PluginConfigError::new(
                    "plugins.dir".into(),
                    format!("not a directory: {}", dir.display()),
                ));
            }
        }
        let mut names = HashSet::new();
        for slot in self.slots() {
            slot.config.validate(slot.kind, &slot.key, &self.runtime)?;
            if !names.insert(slot.name.clone()) {
                return Err(PluginConfigError::new(
                    format!("{}.name", slot.key),
                    format!(
                        "the plugin name {:?} is used by two slots; set `name` to tell them apart",
                        slot.name
                    ),
                ));
            }
            if let Some(PluginSource::File(_)) = slot.config.source_or_default(slot.kind) {
                let path = self.resolve_file(&slot.config.source_or_default(slot.kind).expect("checked"));
                match path {
                    Some(path) if path.is_file() => {}
                    Some(path) => {
                        return Err(PluginConfigError::new(
                            format!("{}.source", slot.key),
                            format!("file not found: {}", path.display()),
                        ))
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }

    /// The file a source loads from: a path as given, a bare name inside `dir`, or a
    /// built-in's override in `dir`. `None`: the embedded built-in.
    pub fn resolve_file(&self, source: &PluginSource) -> Option<PathBuf> {
        match source {
            PluginSource::Builtin(name) => {
                let candidate = self.dir.as_deref()?.join(format!("{name}.wasm"));
                candidate.is_file().then_some(candidate)
            }
            PluginSource::File(path) => Some(match (&self.dir, is_bare_name(path)) {
                (Some(dir), true) => dir.join(format!("{}.wasm", path.display())),
                _ => path.clone(),
            }),
        }
    }
}

fn is_bare_name(path: &Path) -> bool {
    path.components().count() == 1 && path.extension().is_none()
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
    pub(crate) fn new(key: String, message: String) -> Self {
        Self { key, message }
    }
}
