//! Offline checks: `burrow-host plugin check FILE.wasm` validates one component as the
//! host would load it (world, imports, init, probe, manifest test vectors) and describes
//! it; `burrow-host check-config` loads every slot of a config exactly as `run` would.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use wasmtime::component::Component;

use super::config::SlotSpec;
use super::config::{PluginKind, PluginSlotConfig, PluginSource, PluginsConfig, RuntimeConfig, SlotRole};
use super::engine::PluginEngine;
use super::host_api::{kv, ClockSource};
use super::instance::Pre;
use super::loader::{check_header, export_names, import_names, Loader};
use super::manager::{arrange, check_names, check_workload_kinds, Slot};
use super::PluginError;

/// What `plugin check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub file: PathBuf,
    pub size_bytes: u64,
    pub sha256: String,
    /// The name the host would give it in a slot without `name` (the manifest's, else
    /// the file stem).
    pub name: String,
    /// The manifest's `[plugin] version`.
    pub version: Option<String>,
    pub kind: PluginKind,
    pub world: &'static str,
    /// Workloads: the kind they serve, and whether they export the lifecycle hooks.
    pub workload_kind: Option<String>,
    pub lifecycle_hooks: bool,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Manifest test vectors run and passed.
    pub tests_passed: usize,
}

/// Loads `path` the way the host would in `slot` (its config, limits and outbound HTTP
/// allowlist; its `source` is ignored): detects its world (or checks `kind`), runs
/// `init`, the kind's probe and its manifest's test vectors.
pub async fn check_file(
    path: &Path,
    kind: Option<PluginKind>,
    slot: PluginSlotConfig,
) -> Result<CheckReport, PluginError> {
    let err = |reason: String| PluginError::Load { plugin: path.display().to_string(), reason };
    let bytes = tokio::fs::read(path).await.map_err(|e| err(format!("cannot read: {e}")))?;
    check_header(&bytes).map_err(err)?;
    let runtime = RuntimeConfig { max_instances: 16, ..RuntimeConfig::default() };
    let engine = tokio::task::spawn_blocking(move || PluginEngine::new(&runtime, None))
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(err)?;
    let compile_engine = engine.clone();
    let compile_bytes = bytes.clone();
    let component =
        tokio::task::spawn_blocking(move || Component::new(&compile_engine.engine, &compile_bytes))
            .await
            .map_err(|e| err(e.to_string()))?
            .map_err(|e| err(format!("cannot compile: {e:#}")))?;
    let exports = export_names(&engine.engine, &component);
    let imports = import_names(&engine.engine, &component);
    let instance_pre = engine.linker.instantiate_pre(&component).map_err(|e| {
        err(format!(
            "it imports something the host does not provide: {e:#} (imports: {})",
            imports.join(", ")
        ))
    })?;
    let implemented: Vec<PluginKind> =
        PluginKind::ALL.into_iter().filter(|k| Pre::new(*k, instance_pre.clone()).is_ok()).collect();
    let kind = match (kind, implemented.first()) {
        (Some(asked), _) if implemented.contains(&asked) => asked,
        (Some(asked), Some(actual)) => {
            let an = |kind: PluginKind| if kind == PluginKind::Authorizer { "an" } else { "a" };
            return Err(err(format!(
                "it does not implement the world {} (--kind {asked}): it is {} {actual} plugin (world {}); \
                 check it with --kind {actual}, or build it with the export macro for {} {asked}",
                asked.world(),
                an(*actual),
                actual.world(),
                an(asked)
            )));
        }
        (None, Some(actual)) => *actual,
        (_, None) => {
            return Err(err(format!(
                "it implements none of the worlds authorizer-plugin, workload-plugin, router-plugin \
                 (burrow:plugin@1.x); it exports: {}",
                exports.join(", ")
            )))
        }
    };

    let slot = PluginSlotConfig { source: Some(PluginSource::File(path.to_path_buf())), ..slot };
    let plugins_cfg = PluginsConfig::default();
    let role = match kind {
        PluginKind::Authorizer => SlotRole::Authorizer,
        PluginKind::Workload => SlotRole::Workload,
        PluginKind::Router => SlotRole::Router,
    };
    let spec = SlotSpec { kind, role, key: "plugin".into(), name: slot.plugin_name(kind), config: slot };
    let kv = kv::KvStore::memory(kv::KvLimits::default());
    let loader = Loader { engine: &engine, kv: &kv, metrics: None, clock: ClockSource::System };
    let (version, _) = loader.load(&spec, &plugins_cfg).await?;
    let info = &version.info;
    Ok(CheckReport {
        file: path.to_path_buf(),
        size_bytes: bytes.len() as u64,
        sha256: info.sha256.clone(),
        name: info.name.clone(),
        version: info.version.clone(),
        kind,
        world: kind.world(),
        workload_kind: info.workload_kind.clone(),
        lifecycle_hooks: info.lifecycle,
        imports,
        exports,
        tests_passed: info.tests_passed,
    })
}

/// A slot of the config the host would refuse, with the key to blame: `<slot>.config`
/// when the plugin's `init` refused (its config, almost always), `<slot>.source` when
/// the component itself would not load, `plugins` when two slots clash.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {error}")]
pub struct SlotError {
    /// `plugins.authorizer.config`, `plugins.workload[1].source`, ...
    pub key: String,
    pub error: PluginError,
}

/// One slot `check-config` loaded.
#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    /// `plugins.authorizer`, ...
    pub key: String,
    pub name: String,
    pub sha256: String,
    pub tests_passed: usize,
}

/// Loads every slot of `cfg` as `run` would (compile, world, `init` with the slot's
/// config, probe, manifest vectors, unique names and workload kinds), without starting
/// anything or writing the compile cache. `cfg` must have passed `validate()`.
pub async fn check_config(cfg: &PluginsConfig) -> Result<Vec<SlotReport>, SlotError> {
    let plugins = |error: PluginError| SlotError { key: "plugins".into(), error };
    let runtime = cfg.runtime.clone();
    let engine = tokio::task::spawn_blocking(move || PluginEngine::new(&runtime, None))
        .await
        .map_err(|e| plugins(PluginError::Load { plugin: "runtime".into(), reason: e.to_string() }))?
        .map_err(|reason| plugins(PluginError::Load { plugin: "runtime".into(), reason }))?;
    let kv = kv::KvStore::memory(kv::KvLimits::default());
    let loader = Loader { engine: &engine, kv: &kv, metrics: None, clock: ClockSource::System };
    let mut slots = Vec::new();
    for spec in cfg.slots() {
        match loader.load(&spec, cfg).await {
            Ok((version, stamp)) => slots.push(Arc::new(Slot::new(spec, version, stamp))),
            Err(error) => {
                let part = if error.is_init() { "config" } else { "source" };
                return Err(SlotError { key: format!("{}.{part}", spec.key), error });
            }
        }
    }
    let active = arrange(slots);
    check_names(&active).map_err(plugins)?;
    check_workload_kinds(&active).map_err(plugins)?;
    Ok(active
        .all()
        .map(|slot| {
            let v = slot.current();
            SlotReport {
                key: slot.spec.key.clone(),
                name: slot.name.clone(),
                sha256: v.info.sha256.clone(),
                tests_passed: v.info.tests_passed,
            }
        })
        .collect())
}
