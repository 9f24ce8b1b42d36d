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
use super::config::{PluginKind, PluginsConfig, SlotSpec};
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

/// One slot: its spec and the versions it has held.
pub(super) struct Slot {
    pub(super) spec: SlotSpec,
    pub(super) current: ArcSwap<Version>,
    /// The version `rollback` restores.
    pub(super) previous: Mutex<Option<Arc<Version>>>,
    /// The last refused load, for the admin API.
    pub(super) last_error: Mutex<Option<(SystemTime, String)>>,
    /// The file as last loaded (or refused), for the watcher.
    pub(super) stamp: Mutex<Option<FileStamp>>,
    pub(super) swaps: AtomicU64,
}

impl Slot {
    pub(super) fn new(spec: SlotSpec, version: Arc<Version>, stamp: Option<FileStamp>) -> Slot {
        Slot {
            spec,
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
}

/// The plugins' state for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub kind: PluginKind,
    /// Where the slot is configured (`plugins.workload[0]`).
    pub slot: String,
    pub source: String,
    pub file: Option<PathBuf>,
    pub sha256: String,
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
    pub swaps: u64,
    /// The last failed load or reload, kept until the next successful one.
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
}

/// The slots in the roles the host asks them in.
pub(super) struct Active {
    pub(super) authorizer: Arc<Slot>,
    pub(super) workloads: Vec<Arc<Slot>>,
    pub(super) router: Option<Arc<Slot>>,
}

impl Active {
    pub(super) fn all(&self) -> impl Iterator<Item = &Arc<Slot>> {
        std::iter::once(&self.authorizer).chain(self.workloads.iter()).chain(self.router.iter())
    }

    pub(super) fn by_name(&self, name: &str) -> Option<&Arc<Slot>> {
        self.all().find(|s| s.spec.name == name)
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
            sha256 = %v.info.sha256,
            tests = v.info.tests_passed,
            "plugin loaded"
        );
        if let Some(metrics) = &self.metrics {
            metrics.set_info(&v.info.name, v.info.kind, &v.info.sha256);
            metrics.set_quarantined(&v.info.name, false);
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
                PluginStatus {
                    name: v.info.name.clone(),
                    kind: v.info.kind,
                    slot: slot.spec.key.clone(),
                    source: v.info.source.clone(),
                    file: v.info.file.clone(),
                    sha256: v.info.sha256.clone(),
                    loaded_at: unix_ms(v.info.loaded_at),
                    state,
                    quarantined_for_ms,
                    workload_kind: v.info.workload_kind.clone(),
                    lifecycle_hooks: v.info.lifecycle,
                    tests_passed: v.info.tests_passed,
                    instances: v.limits.instances,
                    previous_sha256: slot
                        .previous
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_ref()
                        .map(|p| p.info.sha256.clone()),
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
    let mut workloads = Vec::new();
    let mut router = None;
    for slot in slots {
        match slot.spec.kind {
            PluginKind::Authorizer => authorizer = Some(slot),
            PluginKind::Workload => workloads.push(slot),
            PluginKind::Router => router = Some(slot),
        }
    }
    Active {
        authorizer: authorizer.expect("PluginsConfig::slots always has an authorizer"),
        workloads,
        router,
    }
}

pub(super) fn check_workload_kinds(active: &Active) -> Result<(), PluginError> {
    let mut kinds: HashMap<String, &str> = HashMap::new();
    for slot in &active.workloads {
        let v = slot.current();
        let kind = v.info.workload_kind.clone().unwrap_or_default();
        if let Some(other) = kinds.insert(kind.clone(), &slot.spec.name) {
            return Err(PluginError::Load {
                plugin: v.info.label.clone(),
                reason: format!("workload kind {kind:?} is already served by plugin {other}"),
            });
        }
    }
    Ok(())
}
