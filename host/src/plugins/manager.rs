//! The loaded plugins and their lifecycle: load, canary, atomic swap, rollback, reload
//! on file change / SIGHUP / admin API, and the failure policy of each kind.
//!
//! Every slot holds its current [`Version`] behind an `ArcSwap`: a call clones the `Arc`
//! and finishes on that version even if a swap happens meanwhile, so a swap never
//! fails a call in flight. A candidate version is compiled off the request path
//! (`spawn_blocking`), type-checked against its world, initialised, probed and run
//! against its manifest's test vectors before it replaces anything; if any step fails
//! the old version keeps serving and the error is kept for the admin API.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::breaker::BreakerState;
use super::config::{FailurePolicy, PluginKind, PluginsConfig, SlotSpec};
use super::engine::PluginEngine;
use super::host_api::{kv, ClockSource};
use super::instance::{Version, VersionInfo};
use super::loader::{stamp_of, FileStamp, Loader};
use super::types::*;
use super::PluginError;
use crate::metrics::PluginMetrics;

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
    pub fn with_redis_kv(mut self, store: Arc<crate::cluster::store::Store>) -> Self {
        self.kv = Some(kv::KvStore::redis(store, kv::KvLimits::default()));
        self
    }
}

/// One slot: its spec and the versions it has held.
struct Slot {
    spec: SlotSpec,
    current: ArcSwap<Version>,
    previous: Mutex<Option<Arc<Version>>>,
    last_error: Mutex<Option<(SystemTime, String)>>,
    stamp: Mutex<Option<FileStamp>>,
    swaps: AtomicU64,
}

impl Slot {
    fn new(spec: SlotSpec, version: Arc<Version>, stamp: Option<FileStamp>) -> Slot {
        Slot {
            spec,
            current: ArcSwap::new(version),
            previous: Mutex::new(None),
            last_error: Mutex::new(None),
            stamp: Mutex::new(stamp),
            swaps: AtomicU64::new(0),
        }
    }

    fn current(&self) -> Arc<Version> {
        self.current.load_full()
    }
}

/// What a reload did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// A new version serves now.
    Swapped { plugin: String, from: String, to: String },
    /// The source has the same bytes and settings: nothing to do.
    Unchanged { plugin: String, sha256: String },
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
struct Active {
    authorizer: Arc<Slot>,
    workloads: Vec<Arc<Slot>>,
    router: Option<Arc<Slot>>,
}

impl Active {
    fn all(&self) -> impl Iterator<Item = &Arc<Slot>> {
        std::iter::once(&self.authorizer).chain(self.workloads.iter()).chain(self.router.iter())
    }

    fn by_name(&self, name: &str) -> Option<&Arc<Slot>> {
        self.all().find(|s| s.spec.name == name)
    }
}

/// Who a user is and what the authorizer decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserVerdict {
    pub who: UserAuthOutcome,
    /// `None` when the credential was rejected (`authorize` is not asked).
    pub decision: Option<Decision>,
}

/// Every loaded plugin. Share it behind an `Arc`.
pub struct Plugins {
    engine: Arc<PluginEngine>,
    kv: kv::KvStore,
    metrics: Option<PluginMetrics>,
    /// Unix ms of a fixed clock, or `u64::MAX` for the system clock (see [`Self::set_clock`]).
    clock: std::sync::atomic::AtomicU64,
    active: ArcSwap<Active>,
    config: Mutex<PluginsConfig>,
    /// Serialises reloads: two admins reloading at once must not interleave swaps.
    reload: tokio::sync::Mutex<()>,
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

    fn loader(&self) -> Loader<'_> {
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

    fn record_loaded(&self, slot: &Slot) {
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

    // ---- calls --------------------------------------------------------------

    /// Asks the authorizer whether an agent may connect. An error means "refuse":
    /// authorizers fail closed.
    pub async fn authenticate_agent(&self, hello: &AgentHello) -> Result<AgentAuthOutcome, PluginError> {
        let version = self.active.load().authorizer.current();
        version.authenticate_agent(hello, self.clock()).await
    }

    /// Asks the authorizer who a user is (without authorizing anything).
    pub async fn authenticate_user(&self, req: &UserAuthRequest) -> Result<UserAuthOutcome, PluginError> {
        let version = self.active.load().authorizer.current();
        version.authenticate_user(req, self.clock()).await
    }

    /// Asks the authorizer whether a user may do what `req` describes.
    pub async fn authorize(&self, req: &AuthorizeRequest) -> Result<Decision, PluginError> {
        let version = self.active.load().authorizer.current();
        version.authorize(req, self.clock()).await
    }

    /// The workload kinds served, in the order their plugins are asked.
    pub fn workload_kinds(&self) -> Vec<String> {
        self.active.load().workloads.iter().filter_map(|s| s.current().info.workload_kind.clone()).collect()
    }

    /// Who the user is and, unless the credential was rejected, whether they may do what
    /// `make` describes (built from the principal).
    pub async fn authorize_user<M>(&self, req: &UserAuthRequest, make: M) -> Result<UserVerdict, PluginError>
    where
        M: FnOnce(Option<&Principal>) -> AuthorizeRequest + Send + 'static,
    {
        let version = self.active.load().authorizer.current();
        let (who, decision) = version.authenticate_and_authorize(req, make, self.clock()).await?;
        Ok(UserVerdict { who, decision })
    }

    /// Asks the workload plugins in order which workload a request is for. A plugin
    /// whose failure policy is `skip` is passed over when it fails; `closed` fails the
    /// request.
    pub async fn resolve(&self, req: &ResolveRequest) -> Result<Option<Target>, PluginError> {
        let active = self.active.load_full();
        for slot in &active.workloads {
            let version = slot.current();
            match version.resolve(req, self.clock()).await {
                Ok(Some(r)) => {
                    let workload_kind = version.info.workload_kind.clone().unwrap_or_default();
                    return Ok(Some(Target {
                        workload_kind,
                        workload_id: r.workload_id,
                        agent_id: r.agent_id,
                        service: r.service,
                    }));
                }
                Ok(None) => {}
                Err(err) if version.limits.failure == FailurePolicy::Skip => {
                    tracing::warn!(plugin = %version.info.label, "workload plugin failed, skipping it: {err}");
                }
                Err(err) => return Err(err),
            }
        }
        Ok(None)
    }

    fn workload_version(&self, kind: &str) -> Option<Arc<Version>> {
        let active = self.active.load();
        active.workloads.iter().map(|s| s.current()).find(|v| v.info.workload_kind.as_deref() == Some(kind))
    }

    /// Whether a workload plugin serves `kind`.
    pub fn serves_kind(&self, kind: &str) -> bool {
        self.workload_version(kind).is_some()
    }

    /// Whether `kind`'s workload has ended. No plugin for the kind: not expired (the
    /// agent was accepted by an authorizer that knows better).
    pub async fn expired(&self, kind: &str, req: &ExpiryRequest) -> Result<bool, PluginError> {
        match self.workload_version(kind) {
            Some(version) => version.expired(req, self.clock()).await,
            None => Ok(false),
        }
    }

    /// Tells `kind`'s workload plugin an agent connected or went away. Fire and forget:
    /// runs on its own task, failures are logged.
    pub fn agent_event(self: &Arc<Self>, kind: &str, connected: bool, event: AgentEvent) {
        let Some(version) = self.workload_version(kind) else { return };
        if !version.has_lifecycle() {
            return;
        }
        let clock = self.clock();
        tokio::spawn(async move {
            if let Err(err) = version.agent_event(connected, &event, clock).await {
                tracing::warn!(plugin = %version.info.label, agent = %event.agent_id, "lifecycle hook failed: {err}");
            }
        });
    }

    /// The router's order, or its error (no fallback): for tests and the harness.
    pub async fn try_route(&self, req: &RouteRequest) -> Result<Vec<usize>, PluginError> {
        let Some(slot) = self.active.load().router.clone() else {
            return Err(PluginError::NotFound { plugin: "router".into() });
        };
        slot.current().route(req, self.clock()).await
    }

    /// Whether a router plugin is configured.
    pub fn has_router(&self) -> bool {
        self.active.load().router.is_some()
    }

    /// The candidates' indices in the order the router wants them tried; `None` when no
    /// router is configured or it failed (the caller uses the built-in policy).
    pub async fn route(&self, req: &RouteRequest) -> Option<Vec<usize>> {
        let version = self.active.load().router.as_ref()?.current();
        match version.route(req, self.clock()).await {
            Ok(order) => Some(order),
            Err(err) => {
                tracing::warn!(plugin = %version.info.label, "router failed, using the built-in policy: {err}");
                None
            }
        }
    }

    // ---- lifecycle ----------------------------------------------------------

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

    /// Reloads one plugin from its source (re-reading the file and its manifest) and
    /// swaps it in if it passes the canary.
    pub async fn reload(&self, name: &str) -> Result<ReloadOutcome, PluginError> {
        let _guard = self.reload.lock().await;
        let slot = self.slot(name)?;
        self.reload_slot(&slot).await
    }

    /// Reloads every plugin (each on its own: one failing does not stop the others).
    pub async fn reload_all(&self) -> Vec<Result<ReloadOutcome, PluginError>> {
        let _guard = self.reload.lock().await;
        let active = self.active.load_full();
        let mut results = Vec::new();
        for slot in active.all() {
            results.push(self.reload_slot(slot).await);
        }
        results
    }

    fn slot(&self, name: &str) -> Result<Arc<Slot>, PluginError> {
        self.active
            .load()
            .by_name(name)
            .cloned()
            .ok_or_else(|| PluginError::NotFound { plugin: name.to_owned() })
    }

    async fn reload_slot(&self, slot: &Arc<Slot>) -> Result<ReloadOutcome, PluginError> {
        let cfg = self.config();
        let result = self.loader().load(&slot.spec, &cfg).await;
        let (candidate, stamp) = match result {
            Ok(loaded) => loaded,
            Err(err) => {
                // Remember the file as seen, so the watcher does not retry the same
                // broken bytes every tick; the next write changes the stamp again.
                if let Some(path) = self.file_of(&slot.spec, &cfg) {
                    *slot.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp_of(&path);
                }
                self.refused(slot, &err);
                return Err(err);
            }
        };
        *slot.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
        let current = slot.current();
        if current.info.sha256 == candidate.info.sha256 {
            *slot.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return Ok(ReloadOutcome::Unchanged {
                plugin: slot.spec.name.clone(),
                sha256: current.info.sha256.clone(),
            });
        }
        if let Err(err) = self.check_kind_change(slot, &candidate) {
            self.refused(slot, &err);
            return Err(err);
        }
        Ok(self.swap(slot, candidate, "reload"))
    }

    /// A workload plugin may not start serving a kind another plugin serves.
    fn check_kind_change(&self, slot: &Slot, candidate: &Version) -> Result<(), PluginError> {
        let Some(kind) = &candidate.info.workload_kind else { return Ok(()) };
        let active = self.active.load();
        for other in &active.workloads {
            if other.spec.name != slot.spec.name && other.current().info.workload_kind.as_ref() == Some(kind)
            {
                return Err(PluginError::Load {
                    plugin: candidate.info.label.clone(),
                    reason: format!("workload kind {kind:?} is already served by plugin {}", other.spec.name),
                });
            }
        }
        Ok(())
    }

    fn swap(&self, slot: &Slot, candidate: Arc<Version>, why: &'static str) -> ReloadOutcome {
        let old = slot.current.swap(candidate.clone());
        old.drain_warm();
        let outcome = ReloadOutcome::Swapped {
            plugin: slot.spec.name.clone(),
            from: old.info.sha256.clone(),
            to: candidate.info.sha256.clone(),
        };
        *slot.previous.lock().unwrap_or_else(|p| p.into_inner()) = Some(old.clone());
        *slot.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        slot.swaps.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            plugin = %slot.spec.name,
            from = %old.info.sha256_short(),
            to = %candidate.info.sha256_short(),
            tests = candidate.info.tests_passed,
            "plugin swapped ({why})"
        );
        if let Some(metrics) = &self.metrics {
            metrics.swap(&slot.spec.name, why);
            metrics.set_info(&candidate.info.name, candidate.info.kind, &candidate.info.sha256);
            metrics.set_quarantined(&candidate.info.name, false);
        }
        outcome
    }

    fn refused(&self, slot: &Slot, err: &PluginError) {
        tracing::error!(plugin = %slot.spec.name, "plugin reload refused, the current version keeps serving: {err}");
        *slot.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((SystemTime::now(), err.to_string()));
        if let Some(metrics) = &self.metrics {
            metrics.swap(&slot.spec.name, "refused");
        }
    }

    /// Puts the previous version back (the current one becomes the previous, so a
    /// second rollback rolls forward again).
    pub async fn rollback(&self, name: &str) -> Result<ReloadOutcome, PluginError> {
        let _guard = self.reload.lock().await;
        let slot = self.slot(name)?;
        let previous = slot.previous.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(previous) = previous else {
            return Err(PluginError::NoPrevious { plugin: name.to_owned() });
        };
        // The admin chose this version deliberately: give it a clean breaker.
        previous.breaker.reset();
        Ok(self.swap(&slot, previous, "rollback"))
    }

    /// Applies a new `[plugins]` table (SIGHUP): slots whose settings changed are
    /// rebuilt, and only if all of them load does the new set replace the old one.
    /// Unchanged slots are reloaded from their files. `[plugins.runtime]` and
    /// `cache_dir` need a restart.
    pub async fn apply_config(&self, new: PluginsConfig) -> Result<Vec<ReloadOutcome>, PluginError> {
        new.validate().map_err(|e| PluginError::Load { plugin: e.key.clone(), reason: e.message.clone() })?;
        let _guard = self.reload.lock().await;
        let old_cfg = self.config();
        if new.runtime != old_cfg.runtime || new.cache_dir != old_cfg.cache_dir {
            tracing::warn!("plugins.runtime and plugins.cache_dir changes take effect at the next restart");
        }
        let active = self.active.load_full();
        let mut slots = Vec::new();
        let mut outcomes = Vec::new();
        let mut kept = Vec::new();
        for spec in new.slots() {
            match active.by_name(&spec.name) {
                Some(slot) if slot.spec == spec => {
                    kept.push(slot.clone());
                    slots.push(slot.clone());
                }
                existing => {
                    let (version, stamp) = self.loader().load(&spec, &new).await?;
                    if let Some(old) = existing {
                        outcomes.push(ReloadOutcome::Swapped {
                            plugin: spec.name.clone(),
                            from: old.current().info.sha256.clone(),
                            to: version.info.sha256.clone(),
                        });
                    } else {
                        outcomes.push(ReloadOutcome::Swapped {
                            plugin: spec.name.clone(),
                            from: String::new(),
                            to: version.info.sha256.clone(),
                        });
                    }
                    let slot = Arc::new(Slot::new(spec, version, stamp));
                    if let Some(old) = existing {
                        *slot.previous.lock().unwrap_or_else(|p| p.into_inner()) = Some(old.current());
                    }
                    slots.push(slot);
                }
            }
        }
        let arranged = arrange(slots);
        check_workload_kinds(&arranged)?;
        self.active.store(Arc::new(arranged));
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = new;
        for slot in active.all() {
            if !kept.iter().any(|k| Arc::ptr_eq(k, slot)) {
                slot.current().drain_warm();
            }
        }
        for slot in self.active.load().all() {
            if !kept.iter().any(|k| Arc::ptr_eq(k, slot)) {
                self.record_loaded(slot);
            }
        }
        for slot in kept {
            match self.reload_slot(&slot).await {
                Ok(outcome) => outcomes.push(outcome),
                Err(err) => tracing::error!(plugin = %slot.spec.name, "reload failed: {err}"),
            }
        }
        Ok(outcomes)
    }

    fn file_of(&self, spec: &SlotSpec, cfg: &PluginsConfig) -> Option<PathBuf> {
        cfg.resolve_file(&spec.config.source_or_default(spec.kind)?)
    }

    /// Reloads plugins whose files changed, every `watch_interval`, until `shutdown`.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let cfg = self.config();
        if !cfg.watch {
            return None;
        }
        let plugins = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(cfg.watch_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(plugins) = plugins.upgrade() else { return };
                plugins.reload_changed().await;
            }
        }))
    }

    /// One watcher pass: stat every file-backed slot (and every built-in's possible
    /// override in `dir`) and reload those whose file changed.
    async fn reload_changed(&self) {
        let cfg = self.config();
        let active = self.active.load_full();
        for slot in active.all() {
            let Some(path) = self.file_of(&slot.spec, &cfg) else {
                // A built-in: reload if an override appeared in `dir` meanwhile.
                if slot.current().info.file.is_some() {
                    self.watch_reload(slot, "its override file was removed").await;
                }
                continue;
            };
            let seen = *slot.stamp.lock().unwrap_or_else(|p| p.into_inner());
            let now = stamp_of(&path);
            if now.is_some() && now != seen {
                self.watch_reload(slot, "its file changed").await;
            }
        }
    }

    async fn watch_reload(&self, slot: &Arc<Slot>, why: &str) {
        let _guard = self.reload.lock().await;
        tracing::info!(plugin = %slot.spec.name, "reloading plugin: {why}");
        // Errors are logged and kept for the admin API by `reload_slot`.
        let _ = self.reload_slot(slot).await;
    }
}

fn clock_bits(clock: ClockSource) -> u64 {
    match clock {
        ClockSource::System => u64::MAX,
        ClockSource::Fixed(ms) => ms.min(u64::MAX - 1),
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn arrange(slots: Vec<Arc<Slot>>) -> Active {
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

fn check_workload_kinds(active: &Active) -> Result<(), PluginError> {
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
