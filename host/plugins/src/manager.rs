//! The loaded plugins: [`Plugins`], its slots, the first load and the state the admin
//! API shows.
//!
//! Every slot holds its current [`Version`] behind an `ArcSwap`: a call clones the `Arc`
//! and finishes on that version even if a swap happens meanwhile, so a swap never
//! fails a call in flight. What requests call lives in `calls.rs` (the front end, with
//! the failure policy of each kind); swapping versions in and out (reload, canary,
//! rollback, the file watcher) in `reload.rs`. Both only read and swap the state defined
//! here, so neither is imported back by this module.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use burrow_host_time::unix_ms;

use arc_swap::ArcSwap;
use serde::Serialize;

use super::breaker::BreakerState;
use super::config::{PluginKind, PluginsConfig, SlotRole, SlotSpec};
use super::engine::PluginEngine;
use super::host_api::{kv, ClockSource};
use super::instance::{Version, VersionInfo};
use super::loader::{FileStamp, Loader};
use super::PluginError;
use burrow_host_metrics::PluginMetrics;

/// How the plugins are wired to the rest of the host.
#[derive(Clone, Default)]
pub struct PluginsOptions {
    pub(crate) kv: Option<kv::KvStore>,
    pub(crate) metrics: Option<PluginMetrics>,
    /// Where `clock.now` reads the time (tests fix it).
    pub clock: ClockSource,
}

impl PluginsOptions {
    /// Plugins read the time from `clock` (tests fix it).
    pub fn with_clock(mut self, clock: ClockSource) -> Self {
        self.clock = clock;
        self
    }

    /// Per-plugin Prometheus metrics go to `metrics`.
    pub fn with_metrics(mut self, metrics: PluginMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Plugins' key-value store lives in Redis (cluster mode) instead of memory.
    pub fn with_redis_kv(mut self, store: Arc<burrow_host_redis::Store>) -> Self {
        self.kv = Some(kv::KvStore::redis(store, kv::KvLimits::default()));
        self
    }
}

/// What makes a version: its component and its config. A rollback's hold is the
/// difference between the slot's current identity and its source's (see `reload.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Identity {
    pub(super) sha256: String,
    pub(super) config_sha256: String,
}

impl Identity {
    pub(super) fn of(info: &VersionInfo) -> Identity {
        Identity { sha256: info.sha256.clone(), config_sha256: info.config_sha256.clone() }
    }
}

/// One slot: its spec and the versions it has held.
pub(super) struct Slot {
    pub(super) spec: SlotSpec,
    /// The plugin's name (the slot's `name`, else its manifest's, else the built-in's
    /// name or the file stem), fixed when the slot is built: the admin API and metrics
    /// know it by this.
    pub(super) name: String,
    pub(super) current: ArcSwap<Version>,
    /// The version `rollback` restores.
    pub(super) previous: Mutex<Option<Arc<Version>>>,
    /// The last refused load, for the admin API.
    pub(super) last_error: Mutex<Option<(SystemTime, String)>>,
    /// The file as last loaded (or refused), for the watcher.
    pub(super) stamp: Mutex<Option<FileStamp>>,
    /// The version last read from the source (file or built-in, with the slot's
    /// config). It differs from the current one only after a rollback: reloads that
    /// find the source unchanged then leave the rolled-back version serving.
    pub(super) source: Mutex<Identity>,
    /// Versions swapped in since the host started (a slot rebuilt by a config reload
    /// carries its predecessor's count on), so it only grows.
    pub(super) swaps: AtomicU64,
}

impl Slot {
    pub(super) fn new(spec: SlotSpec, version: Arc<Version>, stamp: Option<FileStamp>) -> Slot {
        Slot {
            spec,
            name: version.info.name.clone(),
            source: Mutex::new(Identity::of(&version.info)),
            current: ArcSwap::new(version),
            previous: Mutex::new(None),
            last_error: Mutex::new(None),
            stamp: Mutex::new(stamp),
            swaps: AtomicU64::new(0),
        }
    }

    pub(super) fn current(&self) -> Arc<Version> {
        self.current.load_full()
    }

    /// After a rollback away from what the source holds: the source's sha256.
    pub(super) fn rolled_back_from(&self) -> Option<String> {
        let source = self.source.lock().unwrap_or_else(|p| p.into_inner());
        (Identity::of(&self.current().info) != *source).then(|| source.sha256.clone())
    }
}

/// The plugins' state for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub kind: PluginKind,
    /// What the slot is for (`agents`: an authorizer asked about agents only).
    pub role: SlotRole,
    /// Where the slot is configured (`plugins.workload[0]`).
    pub slot: String,
    pub source: String,
    pub file: Option<PathBuf>,
    pub sha256: String,
    /// The manifest's `[plugin] version`.
    pub version: Option<String>,
    /// SHA-256 of the slot's `config` table: changes with the config even when the
    /// component does not.
    pub config_sha256: String,
    /// Unix milliseconds.
    pub loaded_at: u64,
    /// `active`, `quarantined` or `half-open`.
    pub state: &'static str,
    /// Quarantined: milliseconds until the next trial call.
    pub quarantined_for_ms: Option<u64>,
    pub workload_kind: Option<String>,
    pub lifecycle_hooks: bool,
    pub tests_passed: usize,
    pub instances: super::config::InstancePolicy,
    /// The version `rollback` would restore.
    pub previous_sha256: Option<String>,
    pub previous_config_sha256: Option<String>,
    /// After a rollback: the sha256 of what the source still holds and reloads leave
    /// alone until the source changes. `None` when the slot serves its source.
    pub rolled_back_from: Option<String>,
    pub swaps: u64,
    /// The last failed load or reload, kept until the next successful one.
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
}

/// The slots in the roles the host asks them in.
pub(super) struct Active {
    pub(super) authorizer: Arc<Slot>,
    /// `[plugins.agents]`: asked about agents instead of the authorizer.
    pub(super) agents: Option<Arc<Slot>>,
    pub(super) workloads: Vec<Arc<Slot>>,
    pub(super) router: Option<Arc<Slot>>,
}

impl Active {
    pub(super) fn all(&self) -> impl Iterator<Item = &Arc<Slot>> {
        std::iter::once(&self.authorizer)
            .chain(self.agents.iter())
            .chain(self.workloads.iter())
            .chain(self.router.iter())
    }

    /// The plugin the admin API and metrics call `name`.
    pub(super) fn by_name(&self, name: &str) -> Option<&Arc<Slot>> {
        self.all().find(|s| s.name == name)
    }

    /// The slot a config reload's `spec` continues: same role and configured name.
    pub(super) fn continuing(&self, spec: &SlotSpec) -> Option<&Arc<Slot>> {
        self.all().find(|s| s.spec.role == spec.role && s.spec.name == spec.name)
    }

    /// The slot that authenticates agents: `[plugins.agents]`, else the authorizer.
    pub(super) fn agent_authenticator(&self) -> &Arc<Slot> {
        self.agents.as_ref().unwrap_or(&self.authorizer)
    }
}

/// Every loaded plugin. Share it behind an `Arc`.
pub struct Plugins {
    engine: Arc<PluginEngine>,
    kv: kv::KvStore,
    pub(super) metrics: Option<PluginMetrics>,
    /// Unix ms of a fixed clock, or `u64::MAX` for the system clock (see [`Self::set_clock`]).
    clock: std::sync::atomic::AtomicU64,
    pub(super) active: ArcSwap<Active>,
    pub(super) config: Mutex<PluginsConfig>,
    /// Serialises reloads: two admins reloading at once must not interleave swaps.
    pub(super) reload: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let active = self.active.load();
        f.debug_list().entries(active.all().map(|s| s.current().info.label.clone())).finish()
    }
}

impl Plugins {
    /// Builds the engine and loads every slot; fails if any plugin fails to load.
    pub async fn load(cfg: &PluginsConfig, options: PluginsOptions) -> Result<Arc<Plugins>, PluginError> {
        cfg.validate().map_err(|e| PluginError::Load { plugin: e.key.clone(), reason: e.message.clone() })?;
        let runtime = cfg.runtime.clone();
        let cache_dir = cfg.cache_dir.clone();
        let engine = tokio::task::spawn_blocking(move || PluginEngine::new(&runtime, cache_dir.as_deref()))
            .await
            .map_err(|e| PluginError::Load { plugin: "runtime".into(), reason: e.to_string() })?
            .map_err(|reason| PluginError::Load { plugin: "runtime".into(), reason })?;
        let kv = options.kv.clone().unwrap_or_else(|| kv::KvStore::memory(kv::KvLimits::default()));
        let loader =
            Loader { engine: &engine, kv: &kv, metrics: options.metrics.as_ref(), clock: options.clock };
        let mut slots = Vec::new();
        for spec in cfg.slots() {
            let (version, stamp) = loader.load(&spec, cfg).await?;
            slots.push(Arc::new(Slot::new(spec, version, stamp)));
        }
        let active = arrange(slots);
        check_names(&active)?;
        check_workload_kinds(&active)?;
        let plugins = Plugins {
            engine,
            kv,
            metrics: options.metrics,
            clock: std::sync::atomic::AtomicU64::new(clock_bits(options.clock)),
            active: ArcSwap::from_pointee(active),
            config: Mutex::new(cfg.clone()),
            reload: tokio::sync::Mutex::new(()),
        };
        for slot in plugins.active.load().all() {
            plugins.record_loaded(slot);
        }
        Ok(Arc::new(plugins))
    }

    pub(super) fn loader(&self) -> Loader<'_> {
        Loader { engine: &self.engine, kv: &self.kv, metrics: self.metrics.as_ref(), clock: self.clock() }
    }

    /// The clock plugins read through `clock.now`.
    pub fn clock(&self) -> ClockSource {
        match self.clock.load(Ordering::Relaxed) {
            u64::MAX => ClockSource::System,
            ms => ClockSource::Fixed(ms),
        }
    }

    /// Fixes (or frees) the clock plugins see: for tests and the plugin test harness.
    pub fn set_clock(&self, clock: ClockSource) {
        self.clock.store(clock_bits(clock), Ordering::Relaxed);
    }

    /// The loaded version of plugin `name`.
    pub fn version_info(&self, name: &str) -> Option<VersionInfo> {
        self.active.load().by_name(name).map(|s| s.current().info.clone())
    }

    pub(super) fn record_loaded(&self, slot: &Slot) {
        let v = slot.current();
        tracing::info!(
            plugin = %v.info.name,
            kind = %v.info.kind,
            source = %v.info.source,
            version = %v.info.version.as_deref().unwrap_or("-"),
            sha256 = %v.info.sha256,
            config_sha256 = %v.info.config_sha256,
            tests = v.info.tests_passed,
            "plugin loaded"
        );
        self.record_info(&v.info);
    }

    /// The metrics' record of the version a plugin runs now.
    pub(super) fn record_info(&self, info: &VersionInfo) {
        if let Some(metrics) = &self.metrics {
            metrics.set_info(&burrow_host_metrics::PluginInfo {
                plugin: &info.name,
                kind: info.kind,
                sha256: &info.sha256,
                version: info.version.as_deref(),
                config_sha256: &info.config_sha256,
            });
            metrics.set_quarantined(&info.name, false);
        }
    }

    /// The plugins' current config.
    pub fn config(&self) -> PluginsConfig {
        self.config.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The state of every plugin, in slot order.
    pub fn status(&self) -> Vec<PluginStatus> {
        let now = std::time::Instant::now();
        self.active
            .load()
            .all()
            .map(|slot| {
                let v = slot.current();
                let breaker = v.breaker.state(now);
                let quarantined_for_ms = match &breaker {
                    BreakerState::Quarantined { remaining, .. } => {
                        Some(u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX))
                    }
                    _ => None,
                };
                let state = match breaker.name() {
                    "closed" => "active",
                    other => other,
                };
                let last_error = slot.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let previous = slot.previous.lock().unwrap_or_else(|p| p.into_inner()).clone();
                PluginStatus {
                    name: slot.name.clone(),
                    kind: v.info.kind,
                    role: slot.spec.role,
                    slot: slot.spec.key.clone(),
                    source: v.info.source.clone(),
                    file: v.info.file.clone(),
                    sha256: v.info.sha256.clone(),
                    version: v.info.version.clone(),
                    config_sha256: v.info.config_sha256.clone(),
                    loaded_at: unix_ms(v.info.loaded_at),
                    state,
                    quarantined_for_ms,
                    workload_kind: v.info.workload_kind.clone(),
                    lifecycle_hooks: v.info.lifecycle,
                    tests_passed: v.info.tests_passed,
                    instances: v.limits.instances,
                    previous_sha256: previous.as_ref().map(|p| p.info.sha256.clone()),
                    previous_config_sha256: previous.as_ref().map(|p| p.info.config_sha256.clone()),
                    rolled_back_from: slot.rolled_back_from(),
                    swaps: slot.swaps.load(Ordering::Relaxed),
                    last_error_at: last_error.as_ref().map(|(at, _)| unix_ms(*at)),
                    last_error: last_error.map(|(_, e)| e),
                }
            })
            .collect()
    }

    pub(super) fn slot(&self, name: &str) -> Result<Arc<Slot>, PluginError> {
        self.active
            .load()
            .by_name(name)
            .cloned()
            .ok_or_else(|| PluginError::NotFound { plugin: name.to_owned() })
    }

    pub(super) fn file_of(&self, spec: &SlotSpec, cfg: &PluginsConfig) -> Option<PathBuf> {
        cfg.resolve_file(&spec.config.source_or_default(spec.kind)?)
    }
}

fn clock_bits(clock: ClockSource) -> u64 {
    match clock {
        ClockSource::System => u64::MAX,
        ClockSource::Fixed(ms) => ms.min(u64::MAX - 1),
    }
}

pub(super) fn arrange(slots: Vec<Arc<Slot>>) -> Active {
    let mut authorizer = None;
    let mut agents = None;
    let mut workloads = Vec::new();
    let mut router = None;
    for slot in slots {
        match slot.spec.role {
            SlotRole::Authorizer => authorizer = Some(slot),
            SlotRole::Agents => agents = Some(slot),
            SlotRole::Workload => workloads.push(slot),
            SlotRole::Router => router = Some(slot),
        }
    }
    Active {
        authorizer: authorizer.expect("PluginsConfig::slots always has an authorizer"),
        agents,
        workloads,
        router,
    }
}

/// Plugin names must tell slots apart: the config checks the names it gives, this the
/// names manifests gave.
pub(super) fn check_names(active: &Active) -> Result<(), PluginError> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for slot in active.all() {
        if let Some(other) = seen.insert(&slot.name, &slot.spec.key) {
            return Err(PluginError::Load {
                plugin: slot.current().info.label.clone(),
                reason: format!(
                    "{} and {other} are both named {:?} (by their manifests or file names): set `name` in one \
                     of the slots",
                    slot.spec.key, slot.name
                ),
            });
        }
    }
    Ok(())
}

pub(super) fn check_workload_kinds(active: &Active) -> Result<(), PluginError> {
    let mut kinds: HashMap<String, &str> = HashMap::new();
    for slot in &active.workloads {
        let v = slot.current();
        let kind = v.info.workload_kind.clone().unwrap_or_default();
        if let Some(other) = kinds.insert(kind.clone(), &slot.name) {
            return Err(PluginError::Load {
                plugin: v.info.label.clone(),
                reason: format!("workload kind {kind:?} is already served by plugin {other}"),
            });
        }
    }
    Ok(())
}
