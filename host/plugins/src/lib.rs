//! Plugins: WebAssembly components (WIT package `burrow:plugin@1.1.0`, see `wit/`) that
//! authenticate agents and users, authorize access, resolve requests to workloads and
//! choose among replicas.
//!
//! # Layout
//!
//! - [`types`]: the contract's records, from crate `burrow-plugin-contract` (shared with
//!   the SDK, so the two sides cannot drift); re-exported here so the rest of the host
//!   says `burrow_host_plugins::types::*`.
//! - [`config`]: the `[plugins]` table.
//! - `bindings`: the one documented `bindgen!` per world; `convert`: WIT ⇄ [`types`],
//!   with the contract's `validate` rules applied to every answer.
//! - `engine`: the wasmtime engine (pooling allocator, epoch ticks, artifact `cache`).
//! - `host_api`: what plugins import (`log`, `config`, `clock`, `kv`, outbound `http`).
//! - `instance`: one loaded version and how a call runs (limits, warm pool, `breaker`).
//! - `loader`: read, compile, type-check and canary a version, running its manifest's
//!   test vectors (the manifest format and matcher are the contract crate's).
//! - `manager`: [`Plugins`], its slots and their state; `calls`: the front end requests
//!   call, with the failure policy per kind; `reload`: swap, canary, rollback and the
//!   file watcher. [`check`]: `burrow-host plugin check`.
//! - `build.rs`: builds the built-in plugins (`plugins/`) and the example plugins for
//!   `wasm32-wasip2`; [`ARTIFACTS_DIR`] is where they land.

mod bindings;
mod breaker;
mod cache;
mod calls;
pub mod check;
pub mod config;
mod convert;
mod engine;
pub mod host_api;
mod instance;
mod isolation;
mod loader;
mod manager;
mod reload;

pub use burrow_plugin_contract::types;

use std::time::Duration;

pub use breaker::BreakerConfig;
pub use calls::UserVerdict;
pub use config::{
    FailurePolicy, InstancePolicy, PluginConfigError, PluginKind, PluginSlotConfig, PluginSource,
    PluginsConfig, RuntimeConfig, SlotRole, MAX_CALL_TIMEOUT, MAX_MEMORY_MB, MIN_CALL_TIMEOUT,
};
pub use host_api::ClockSource;
pub use instance::VersionInfo;
pub use manager::{PluginStatus, Plugins, PluginsOptions};
pub use reload::ReloadOutcome;

/// Directory holding this build's compiled plugin components (set by `build.rs`),
/// including the test-only ones (`test_misbehave.wasm`, ...) and the examples.
pub const ARTIFACTS_DIR: &str = env!("BURROW_PLUGIN_ARTIFACTS");

/// A component compiled into the host binary. Its manifest, if any, is embedded in it
/// like any SDK plugin's.
pub(crate) struct Builtin {
    pub name: &'static str,
    pub kind: PluginKind,
    pub bytes: &'static [u8],
}

macro_rules! artifact {
    ($file:literal) => {
        include_bytes!(concat!(env!("BURROW_PLUGIN_ARTIFACTS"), "/", $file))
    };
}

static BUILTINS: &[Builtin] = &[
    Builtin {
        name: "authorizer-static",
        kind: PluginKind::Authorizer,
        bytes: artifact!("authorizer_static.wasm"),
    },
    Builtin {
        name: "authorizer-callout",
        kind: PluginKind::Authorizer,
        bytes: artifact!("authorizer_callout.wasm"),
    },
    Builtin {
        name: "workload-workspace",
        kind: PluginKind::Workload,
        bytes: artifact!("workload_workspace.wasm"),
    },
    Builtin { name: "workload-ci-job", kind: PluginKind::Workload, bytes: artifact!("workload_ci_job.wasm") },
    Builtin {
        name: "workload-terminal",
        kind: PluginKind::Workload,
        bytes: artifact!("workload_terminal.wasm"),
    },
    Builtin {
        name: "router-prefer-local",
        kind: PluginKind::Router,
        bytes: artifact!("router_prefer_local.wasm"),
    },
];

pub(crate) fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

pub(crate) fn builtin_names() -> String {
    BUILTINS.iter().map(|b| format!("builtin:{}", b.name)).collect::<Vec<_>>().join(", ")
}

/// A plugin failed to load or to answer. Every message names the plugin (kind, name
/// and, once its bytes are known, the first 12 hex digits of its SHA-256) and the limit
/// it hit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    /// The component could not be read, compiled, linked, initialised or tested.
    #[error("plugin {plugin}: cannot load: {reason}")]
    Load { plugin: String, reason: String },
    /// No plugin of that name is loaded.
    #[error("no plugin named {plugin:?} is loaded")]
    NotFound { plugin: String },
    /// Rollback asked of a plugin that has never been swapped.
    #[error("plugin {plugin} has no previous version to roll back to")]
    NoPrevious { plugin: String },
    /// A candidate failed a step of the canary (`init`, the kind's probe): it was not
    /// swapped in.
    #[error("plugin {plugin}: the canary's {step} call failed: {}", .error.detail())]
    Canary { plugin: String, step: &'static str, error: Box<PluginError> },
    /// `plugin.init` returned an error: the plugin's own words, usually about its config.
    #[error("plugin {plugin} (sha256 {sha256}): init failed: {reason}")]
    Init { plugin: String, sha256: String, reason: String },
    /// The plugin trapped (a Rust plugin's panic ends up here, with its message).
    #[error("plugin {plugin} (sha256 {sha256}) trapped: {message}")]
    Trap { plugin: String, sha256: String, message: String },
    /// The call ran past `call_timeout`, or making a reusable instance (instantiation
    /// and `plugin.init`) ran past `init_timeout`: `key` says which.
    #[error("plugin {plugin} (sha256 {sha256}) exceeded its {key} of {}", humantime::format_duration(*.limit))]
    Timeout { plugin: String, sha256: String, key: &'static str, limit: Duration },
    /// The plugin tried to grow its memory past `max_memory_mb`.
    #[error("plugin {plugin} (sha256 {sha256}) exceeded its memory limit of {} MiB", .limit_bytes / (1024 * 1024))]
    Memory { plugin: String, sha256: String, limit_bytes: u64 },
    /// The plugin recursed past the wasm stack limit.
    #[error("plugin {plugin} (sha256 {sha256}) overflowed its wasm stack of {} KiB", .limit_bytes / 1024)]
    StackOverflow { plugin: String, sha256: String, limit_bytes: u64 },
    /// The plugin ran out of `fuel`.
    #[error("plugin {plugin} (sha256 {sha256}) ran out of fuel ({limit} units)")]
    Fuel { plugin: String, sha256: String, limit: u64 },
    /// The plugin answered something the WIT contract forbids.
    #[error("plugin {plugin} (sha256 {sha256}) returned an invalid result: {reason}")]
    InvalidResult { plugin: String, sha256: String, reason: String },
    /// `max_concurrent` calls were running for the whole `call_timeout`.
    #[error("plugin {plugin} (sha256 {sha256}) is busy: {limit} calls already running")]
    Busy { plugin: String, sha256: String, limit: usize },
    /// The crash-loop breaker has quarantined the plugin.
    #[error("plugin {plugin} (sha256 {sha256}) is quarantined after repeated failures (next trial in {})", humantime::format_duration(*.until))]
    Quarantined { plugin: String, sha256: String, until: Duration },
    /// The host could not run the call (not the plugin's fault, e.g. no free instance slot).
    #[error("plugin {plugin} (sha256 {sha256}) could not be run: {reason}")]
    Unavailable { plugin: String, sha256: String, reason: String },
}

impl PluginError {
    /// Failures the plugin caused (they count towards quarantine).
    pub fn is_guest_failure(&self) -> bool {
        matches!(
            self,
            PluginError::Init { .. }
                | PluginError::Trap { .. }
                | PluginError::Timeout { .. }
                | PluginError::Memory { .. }
                | PluginError::StackOverflow { .. }
                | PluginError::Fuel { .. }
                | PluginError::InvalidResult { .. }
        )
    }

    /// The metric label of the error kind.
    pub fn kind_label(&self) -> &'static str {
        match self {
            PluginError::Load { .. } => "load",
            PluginError::Canary { .. } => "canary",
            PluginError::NotFound { .. } => "not_found",
            PluginError::NoPrevious { .. } => "no_previous",
            PluginError::Init { .. } => "init",
            PluginError::Trap { .. } => "trap",
            PluginError::Timeout { .. } => "timeout",
            PluginError::Memory { .. } => "memory",
            PluginError::StackOverflow { .. } => "stack",
            PluginError::Fuel { .. } => "fuel",
            PluginError::InvalidResult { .. } => "invalid_result",
            PluginError::Busy { .. } => "busy",
            PluginError::Quarantined { .. } => "quarantined",
            PluginError::Unavailable { .. } => "unavailable",
        }
    }

    /// The message without its leading `plugin NAME (sha256 …)`, for an error that wraps
    /// this one and names the plugin itself.
    pub fn detail(&self) -> String {
        let full = self.to_string();
        let Some(at) = full.find(" (sha256 ") else { return full };
        match full[at..].find(')') {
            Some(end) => full[at + end + 1..].trim_start_matches(':').trim_start().to_owned(),
            None => full,
        }
    }

    /// Whether `plugin.init` refused to start (at load or in a fresh instance): the
    /// plugin's config is the usual cause.
    pub fn is_init(&self) -> bool {
        match self {
            PluginError::Init { .. } => true,
            PluginError::Canary { step, error, .. } => *step == "init" || error.is_init(),
            _ => false,
        }
    }

    /// The limit a trap hit, for `burrow_plugin_traps_total{limit}`; `None` for other errors.
    pub fn trap_limit(&self) -> Option<&'static str> {
        match self {
            PluginError::Trap { .. } => Some("none"),
            PluginError::Timeout { .. } => Some("time"),
            PluginError::Memory { .. } => Some("memory"),
            PluginError::StackOverflow { .. } => Some("stack"),
            PluginError::Fuel { .. } => Some("fuel"),
            _ => None,
        }
    }
}

impl burrow_host_metrics::PluginErrorLabels for PluginError {
    fn kind_label(&self) -> &'static str {
        PluginError::kind_label(self)
    }

    fn trap_limit(&self) -> Option<&'static str> {
        PluginError::trap_limit(self)
    }
}
