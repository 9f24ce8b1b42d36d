//! `burrow-host plugin check FILE.wasm`: validates a component offline, as the host
//! would load it (world, imports, init, probe, manifest test vectors), and describes it.

use std::path::{Path, PathBuf};

use serde::Serialize;
use wasmtime::component::Component;

use super::config::{PluginKind, PluginSlotConfig, PluginSource, PluginsConfig, RuntimeConfig, SlotSpec};
use super::engine::PluginEngine;
use super::host_api::{kv, ClockSource};
use super::instance::Pre;
use super::loader::{check_header, export_names, import_names, Loader};
use super::PluginError;

/// What `plugin check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub file: PathBuf,
    pub size_bytes: u64,
    pub sha256: String,
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

/// Loads `path` the way the host would: detects its world (or checks `kind`), runs
/// `init`, the kind's probe and the test vectors of `<path>.toml` with `config` as the
/// plugin's config.
pub async fn check_file(
    path: &Path,
    kind: Option<PluginKind>,
    config: toml::Table,
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
    let candidates = match kind {
        Some(kind) => vec![kind],
        None => PluginKind::ALL.to_vec(),
    };
    let kind =
        candidates.into_iter().find(|k| Pre::new(*k, instance_pre.clone()).is_ok()).ok_or_else(|| {
            err(format!(
                "it implements none of the worlds authorizer-plugin, workload-plugin, router-plugin \
                 (burrow:plugin@1.x); it exports: {}",
                exports.join(", ")
            ))
        })?;

    let slot = PluginSlotConfig::with_source(PluginSource::File(path.to_path_buf()), config);
    let plugins_cfg = PluginsConfig::default();
    let spec = SlotSpec { kind, key: "plugin".into(), name: slot.plugin_name(kind), config: slot };
    let kv = kv::KvStore::memory(kv::KvLimits::default());
    let loader = Loader { engine: &engine, kv: &kv, metrics: None, clock: ClockSource::System };
    let (version, _) = loader.load(&spec, &plugins_cfg).await?;
    let info = &version.info;
    Ok(CheckReport {
        file: path.to_path_buf(),
        size_bytes: bytes.len() as u64,
        sha256: info.sha256.clone(),
        kind,
        world: kind.world(),
        workload_kind: info.workload_kind.clone(),
        lifecycle_hooks: info.lifecycle,
        imports,
        exports,
        tests_passed: info.tests_passed,
    })
}
