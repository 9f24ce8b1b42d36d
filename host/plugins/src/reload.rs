//! Reload and rollback: a candidate version is built by the loader (compiled off the
//! request path, type-checked, initialised, probed and run against its manifest's test
//! vectors) and only then swapped in atomically; a refused candidate leaves the old one
//! serving and its error is kept for the admin API. The previous version is kept for
//! `rollback`. Triggers: the admin API, SIGHUP (`apply_config`) and the file watcher.
//!
//! # How long a rollback lasts
//!
//! A rollback puts the previous version back and holds it **until the source changes**:
//! every reload (the admin's, SIGHUP's, the watcher's) that finds the source still
//! holding the version rolled back from (same component, same config) leaves the slot
//! alone and answers `held`. New bytes in the file, or a new `config` for the slot in a
//! SIGHUP'd config, are a new deployment: they go through the canary and swap in as
//! usual. A second rollback rolls forward. The host never writes plugin files, so a
//! restart loads what the source holds: to keep a rollback across restarts, put the
//! previous file back (`GET /plugins` shows `rolled_back_from` while a rollback holds).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::config::PluginsConfig;
use super::instance::Version;
use super::loader::stamp_of;
use super::manager::{arrange, check_names, check_workload_kinds, Identity, Plugins, Slot};
use super::PluginError;

/// What a reload did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// A new version serves now: new bytes, a new config (`from_config` and `to_config`
    /// differ), or both.
    Swapped { plugin: String, from: String, to: String, from_config: String, to_config: String },
    /// A slot the new config adds.
    Added { plugin: String, sha256: String, config_sha256: String },
    /// The source has the same bytes and settings: nothing to do.
    Unchanged { plugin: String, sha256: String },
    /// A rollback holds: the source still holds `source_sha256`, which the admin rolled
    /// back from, so `sha256` keeps serving. Change the source or roll back again.
    Held { plugin: String, sha256: String, source_sha256: String },
}

impl Plugins {
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
        if candidate.info.name != slot.name {
            // The admin API, metrics and the kv namespace know the plugin by its name.
            let err = PluginError::Load {
                plugin: candidate.info.label.clone(),
                reason: format!(
                    "its manifest now names the plugin {:?}, but this slot serves {:?}: set `name` in {} \
                     to keep the name, or restart the host to rename it",
                    candidate.info.name, slot.name, slot.spec.key
                ),
            };
            self.refused(slot, &err);
            return Err(err);
        }
        let current = slot.current();
        let found = Identity::of(&candidate.info);
        {
            let mut source = slot.source.lock().unwrap_or_else(|p| p.into_inner());
            if found == *source && Identity::of(&current.info) != found {
                *slot.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Ok(ReloadOutcome::Held {
                    plugin: slot.name.clone(),
                    sha256: current.info.sha256.clone(),
                    source_sha256: found.sha256,
                });
            }
            // The source changed since any rollback: what it holds now is what counts.
            *source = found.clone();
        }
        if Identity::of(&current.info) == found {
            *slot.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return Ok(ReloadOutcome::Unchanged {
                plugin: slot.name.clone(),
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
            if other.name != slot.name && other.current().info.workload_kind.as_ref() == Some(kind) {
                return Err(PluginError::Load {
                    plugin: candidate.info.label.clone(),
                    reason: format!("workload kind {kind:?} is already served by plugin {}", other.name),
                });
            }
        }
        Ok(())
    }

    /// `why`: `reload` or `rollback`, for the log and `burrow_plugin_swaps_total`.
    fn swap(&self, slot: &Slot, candidate: Arc<Version>, why: &'static str) -> ReloadOutcome {
        let old = slot.current.swap(candidate.clone());
        old.drain_warm();
        let outcome = swapped(&slot.name, &old, &candidate);
        *slot.previous.lock().unwrap_or_else(|p| p.into_inner()) = Some(old.clone());
        *slot.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        slot.swaps.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            plugin = %slot.name,
            from = %old.info.describe_against(&candidate.info),
            to = %candidate.info.describe_against(&old.info),
            version = %candidate.info.version.as_deref().unwrap_or("-"),
            tests = candidate.info.tests_passed,
            "plugin swapped ({why})"
        );
        if let Some(metrics) = &self.metrics {
            metrics.swap(&slot.name, why);
        }
        self.record_info(&candidate.info);
        outcome
    }

    fn refused(&self, slot: &Slot, err: &PluginError) {
        tracing::error!(plugin = %slot.name, "plugin reload refused, the current version keeps serving: {err}");
        *slot.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((SystemTime::now(), err.to_string()));
        if let Some(metrics) = &self.metrics {
            metrics.swap(&slot.name, "refused");
        }
    }

    /// Puts the previous version back (the current one becomes the previous, so a
    /// second rollback rolls forward again). It holds until the source changes (see the
    /// module's docs).
    pub async fn rollback(&self, name: &str) -> Result<ReloadOutcome, PluginError> {
        let _guard = self.reload.lock().await;
        let slot = self.slot(name)?;
        let previous = slot.previous.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(previous) = previous else {
            return Err(PluginError::NoPrevious { plugin: name.to_owned() });
        };
        // The admin chose this version deliberately: give it a clean breaker.
        previous.breaker.reset();
        let outcome = self.swap(&slot, previous, "rollback");
        if let Some(source) = slot.rolled_back_from() {
            tracing::warn!(
                plugin = %slot.name,
                source = %source,
                "rolled back: reloads leave this version serving until the plugin's source changes; a restart \
                 loads the source again"
            );
        }
        Ok(outcome)
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
            match active.continuing(&spec) {
                Some(slot) if slot.spec == spec => {
                    kept.push(slot.clone());
                    slots.push(slot.clone());
                }
                existing => {
                    let (version, stamp) = self.loader().load(&spec, &new).await?;
                    let slot = Slot::new(spec, version.clone(), stamp);
                    match existing {
                        Some(old) => {
                            let old_version = old.current();
                            outcomes.push(swapped(&slot.name, &old_version, &version));
                            *slot.previous.lock().unwrap_or_else(|p| p.into_inner()) = Some(old_version);
                            // A rebuilt slot is the same plugin's next version: its swap
                            // count goes on from the old slot's.
                            slot.swaps.store(old.swaps.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                        }
                        None => outcomes.push(ReloadOutcome::Added {
                            plugin: slot.name.clone(),
                            sha256: version.info.sha256.clone(),
                            config_sha256: version.info.config_sha256.clone(),
                        }),
                    }
                    slots.push(Arc::new(slot));
                }
            }
        }
        let arranged = arrange(slots);
        check_names(&arranged)?;
        check_workload_kinds(&arranged)?;
        self.active.store(Arc::new(arranged));
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = new;
        for slot in active.all() {
            if !kept.iter().any(|k| Arc::ptr_eq(k, slot)) {
                slot.current().drain_warm();
            }
        }
        for slot in self.active.load().all() {
            if kept.iter().any(|k| Arc::ptr_eq(k, slot)) {
                continue;
            }
            if slot.previous.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                if let Some(metrics) = &self.metrics {
                    metrics.swap(&slot.name, "config");
                }
            }
            self.record_loaded(slot);
        }
        for slot in kept {
            match self.reload_slot(&slot).await {
                Ok(outcome) => outcomes.push(outcome),
                Err(err) => tracing::error!(plugin = %slot.name, "reload failed: {err}"),
            }
        }
        Ok(outcomes)
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
        tracing::info!(plugin = %slot.name, "reloading plugin: {why}");
        // Errors are logged and kept for the admin API by `reload_slot`.
        let _ = self.reload_slot(slot).await;
    }
}

fn swapped(plugin: &str, from: &Version, to: &Version) -> ReloadOutcome {
    ReloadOutcome::Swapped {
        plugin: plugin.to_owned(),
        from: from.info.sha256.clone(),
        to: to.info.sha256.clone(),
        from_config: from.info.config_sha256.clone(),
        to_config: to.info.config_sha256.clone(),
    }
}
