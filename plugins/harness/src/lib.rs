//! Integration tests for Burrow plugins, against the real thing.
//!
//! [`Harness`] loads a compiled component (`.wasm`, built for `wasm32-wasip2`) into the
//! host's own plugin runtime: the same wasmtime engine settings, the same imports (`log`,
//! `config`, `clock`, `kv`, allow-listed `wasi:http`), the same limits and the same load
//! checks (world, `init`, the kind's probe, the manifest's test vectors). What passes
//! here loads in `burrow-host`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), burrow_plugin_harness::HarnessError> {
//! use burrow_plugin_harness::{Harness, types::*};
//! let plugin = Harness::authorizer("target/wasm32-wasip2/release/office_hours.wasm")
//!     .config_toml(r#"groups = ["dev"]"#)?
//!     .clock_ms(1_763_982_000_000)
//!     .load()
//!     .await?;
//! let who = plugin
//!     .authenticate_user(&UserAuthRequest {
//!         credential: Credential::Bearer("alice-token".into()),
//!         client_addr: "192.0.2.1:5000".into(),
//!         host: "web-ws1.example.com".into(),
//!         action: Action::Http,
//!     })
//!     .await?;
//! # let _ = who; Ok(()) }
//! ```

#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use burrow_host_plugins::types;
pub use burrow_host_plugins::{
    ClockSource, InstancePolicy, PluginError, PluginKind, PluginStatus, UserVerdict, VersionInfo,
};
use burrow_host_plugins::{PluginSlotConfig, PluginSource, Plugins, PluginsConfig, PluginsOptions};
use types::*;

/// Setting up or loading a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The `config` text is not a TOML table.
    #[error("the plugin config is not valid TOML: {0}")]
    Config(String),
    /// The slot settings are out of range (the message names the key).
    #[error("invalid settings: {0}")]
    Settings(String),
    /// The host refused the plugin (or a call failed).
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

/// Builds a [`Harness`]: the plugin file, its config and its limits.
#[derive(Debug, Clone)]
pub struct HarnessBuilder {
    kind: PluginKind,
    path: PathBuf,
    slot: PluginSlotConfig,
    plugins: PluginsConfig,
    clock: ClockSource,
}

impl HarnessBuilder {
    fn new(kind: PluginKind, path: &Path) -> Self {
        let slot = PluginSlotConfig::with_source(PluginSource::File(path.to_path_buf()), toml::Table::new());
        HarnessBuilder {
            kind,
            path: path.to_path_buf(),
            slot,
            plugins: PluginsConfig::default(),
            clock: ClockSource::System,
        }
    }

    /// The plugin's `config` table, as the host config's TOML would give it.
    pub fn config_toml(mut self, text: &str) -> Result<Self, HarnessError> {
        self.slot.config = toml::from_str(text).map_err(|e| HarnessError::Config(e.to_string()))?;
        Ok(self)
    }

    /// The plugin's `config` table.
    pub fn config(mut self, table: toml::Table) -> Self {
        self.slot.config = table;
        self
    }

    /// Time per call (default 100 ms).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.slot.call_timeout = timeout;
        self
    }

    /// Time to make a reusable instance: instantiation and `plugin.init` (default 2 s).
    pub fn init_timeout(mut self, timeout: Duration) -> Self {
        self.slot.init_timeout = timeout;
        self
    }

    /// Memory per instance in MiB (default 64).
    pub fn max_memory_mb(mut self, mb: u32) -> Self {
        self.slot.max_memory_mb = mb;
        self
    }

    /// Fuel per call (turns fuel metering on).
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.plugins.runtime.fuel = true;
        self.slot.fuel = Some(fuel);
        self
    }

    /// A new, uninitialised instance for every call (`instances = "fresh"`), to check the
    /// plugin works as a slot so configured runs it. The default is the host's for a
    /// plugin from a file: `per-user`, an initialised instance reused only for the same
    /// credential.
    pub fn fresh(mut self) -> Self {
        self.slot.instances = Some(InstancePolicy::Fresh);
        self
    }

    /// Reuse up to `pool` warm instances for anyone's calls (`instances = "warm"`).
    pub fn warm(mut self, pool: u32) -> Self {
        self.slot.instances = Some(InstancePolicy::Warm);
        self.slot.warm_pool = pool;
        self
    }

    /// Hosts the plugin may reach over outbound HTTP (`host`, `host:port`, `*.domain`).
    pub fn allow_http(mut self, hosts: &[&str]) -> Result<Self, HarnessError> {
        let allow: Vec<toml::Value> = hosts.iter().map(|h| toml::Value::String((*h).to_owned())).collect();
        let mut table = toml::Table::new();
        table.insert("allow".into(), toml::Value::Array(allow));
        self.slot.http = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| HarnessError::Settings(e.to_string()))?;
        Ok(self)
    }

    /// Fixes `clock.now` at `unix_ms` (change it later with [`Harness::set_clock_ms`]).
    pub fn clock_ms(mut self, unix_ms: u64) -> Self {
        self.clock = ClockSource::Fixed(unix_ms);
        self
    }

    /// Loads the plugin as the host would, manifest test vectors included.
    pub async fn load(self) -> Result<Harness, HarnessError> {
        let mut cfg = self.plugins;
        cfg.watch = false;
        match self.kind {
            PluginKind::Authorizer => cfg.authorizer = self.slot,
            PluginKind::Workload => cfg.workload = vec![self.slot],
            PluginKind::Router => cfg.router = Some(self.slot),
        }
        cfg.validate().map_err(|e| HarnessError::Settings(e.to_string()))?;
        let plugins = Plugins::load(&cfg, PluginsOptions::default().with_clock(self.clock)).await?;
        // Its name is the host's choice (the manifest's, else the file stem): ask.
        let name = plugins
            .status()
            .into_iter()
            .find(|s| s.kind == self.kind && s.source == self.path.display().to_string())
            .map(|s| s.name)
            .expect("the harness plugin is loaded");
        Ok(Harness { plugins, name, kind: self.kind, path: self.path })
    }
}

/// A loaded plugin, called through the host runtime.
pub struct Harness {
    plugins: Arc<Plugins>,
    name: String,
    kind: PluginKind,
    path: PathBuf,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("path", &self.path)
            .finish()
    }
}

impl Harness {
    /// An authorizer plugin from `path`.
    pub fn authorizer(path: impl AsRef<Path>) -> HarnessBuilder {
        HarnessBuilder::new(PluginKind::Authorizer, path.as_ref())
    }

    /// A workload plugin from `path`.
    pub fn workload(path: impl AsRef<Path>) -> HarnessBuilder {
        HarnessBuilder::new(PluginKind::Workload, path.as_ref())
    }

    /// A router plugin from `path`.
    pub fn router(path: impl AsRef<Path>) -> HarnessBuilder {
        HarnessBuilder::new(PluginKind::Router, path.as_ref())
    }

    /// What was loaded: name, sha256, workload kind, test vectors passed.
    pub fn info(&self) -> VersionInfo {
        self.plugins.version_info(&self.name).expect("the harness plugin is loaded")
    }

    /// The plugin's state as the admin API shows it (quarantine included).
    pub fn status(&self) -> PluginStatus {
        self.plugins.status().into_iter().find(|s| s.name == self.name).expect("the harness plugin is loaded")
    }

    /// Fixes `clock.now` at `unix_ms`.
    pub fn set_clock_ms(&self, unix_ms: u64) {
        self.plugins.set_clock(ClockSource::Fixed(unix_ms));
    }

    /// `authorizer.authenticate-agent`.
    pub async fn authenticate_agent(&self, req: &AgentHello) -> Result<AgentAuthOutcome, PluginError> {
        self.plugins.authenticate_agent(req).await
    }

    /// `authorizer.authenticate-user`.
    pub async fn authenticate_user(&self, req: &UserAuthRequest) -> Result<UserAuthOutcome, PluginError> {
        self.plugins.authenticate_user(req).await
    }

    /// `authorizer.authorize`.
    pub async fn authorize(&self, req: &AuthorizeRequest) -> Result<Decision, PluginError> {
        self.plugins.authorize(req).await
    }

    /// `authenticate-user` then `authorize` in one instance, as the host does per request.
    pub async fn authorize_user(
        &self,
        user: &UserAuthRequest,
        target: Target,
        action: Action,
    ) -> Result<UserVerdict, PluginError> {
        let (client_addr, host) = (user.client_addr.clone(), user.host.clone());
        self.plugins
            .authorize_user(user, move |principal| AuthorizeRequest {
                principal: principal.cloned(),
                target,
                action,
                client_addr,
                host,
                method: "GET".into(),
                path: "/".into(),
                agent_labels: Vec::new(),
            })
            .await
    }

    /// `workload.resolve`, with the workload kind the plugin declared.
    pub async fn resolve(&self, req: &ResolveRequest) -> Result<Option<Target>, PluginError> {
        self.plugins.resolve(req).await
    }

    /// `workload.expired`.
    pub async fn expired(&self, req: &ExpiryRequest) -> Result<bool, PluginError> {
        let kind = self.info().workload_kind.unwrap_or_default();
        self.plugins.expired(&kind, req).await
    }

    /// `router.route`: the candidates' indices, best first.
    pub async fn route(&self, req: &RouteRequest) -> Result<Vec<usize>, PluginError> {
        self.plugins.try_route(req).await
    }
}
