//! Reload and rollback: a candidate version is built by the loader (compiled off the
//! request path, type-checked, initialised, probed and run against its manifest's test
//! vectors) and only then swapped in atomically; a refused candidate leaves the old one
//! serving and its error is kept for the admin API. The previous version is kept for
//! `rollback`. Triggers: the admin API, SIGHUP (`apply_config`) and the file watcher.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::config::PluginsConfig;
use super::instance::Version;
use super::loader::stamp_of;
use super::manager::{arrange, check_workload_kinds, Plugins, Slot};
use super::PluginError;

/// What a reload did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// A new version serves now.
    Swapped { plugin: String, from: String, to: String },
    /// The source has the same bytes and settings: nothing to do.
    Unchanged { plugin: String, sha256: String },
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
