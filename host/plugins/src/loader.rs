//! Builds a plugin version: read the file (or the embedded built-in) and its manifest,
//! hash, compile off the async workers, type-check against the slot's world, then the
//! canary (`init`, the kind's probe, the manifest's test vectors). Only a version that
//! passes all of it is handed back to be swapped in (`manager.rs` at the first load,
//! `reload.rs` afterwards).

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use burrow_plugin_contract::manifest::{self, Manifest, TestCall};
use burrow_plugin_contract::matcher;
use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::Component;
use wasmtime::Engine;

use super::breaker::SharedBreaker;
use super::config::{PluginKind, PluginSource, PluginsConfig, SlotSpec};
use super::engine::PluginEngine;
use super::host_api::{http, kv, ClockSource, PluginEnv};
use super::instance::{Limits, Pre, Version, VersionInfo, VersionParts};
use super::types::*;
use super::{builtin, PluginError};
use burrow_host_metrics::PluginMetrics;

/// The magic and layer fields of a WebAssembly binary's header.
const WASM_MAGIC: &[u8] = b"\0asm";
const CORE_MODULE_LAYER: [u8; 2] = [0, 0];
/// Plugin files larger than this are refused before reading them whole.
const MAX_PLUGIN_BYTES: u64 = 64 * 1024 * 1024;

/// What a plugin file looked like when it was last loaded: the watcher reloads a slot
/// when this changes (the file or its manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    manifest: Option<(Option<SystemTime>, u64)>,
}

pub(super) fn stamp_of(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    let manifest = std::fs::metadata(path.with_extension("toml")).ok().map(|m| (m.modified().ok(), m.len()));
    Some(FileStamp { modified: meta.modified().ok(), len: meta.len(), manifest })
}

/// Builds versions: read, hash, compile, type-check, canary, test vectors.
pub(super) struct Loader<'a> {
    pub(super) engine: &'a Arc<PluginEngine>,
    pub(super) kv: &'a kv::KvStore,
    pub(super) metrics: Option<&'a PluginMetrics>,
    pub(super) clock: ClockSource,
}

impl Loader<'_> {
    pub(super) async fn load(
        &self,
        spec: &SlotSpec,
        cfg: &PluginsConfig,
    ) -> Result<(Arc<Version>, Option<FileStamp>), PluginError> {
        let source = spec.config.source_or_default(spec.kind).ok_or_else(|| PluginError::Load {
            plugin: spec.key.clone(),
            reason: "no source configured".into(),
        })?;
        let base_label = format!("{} {}", spec.kind, spec.name);
        let load_err = |reason: String| PluginError::Load { plugin: base_label.clone(), reason };
        let file = cfg.resolve_file(&source);
        let stamp = file.as_deref().and_then(stamp_of);
        let (bytes, manifest_text) = match &file {
            Some(path) => read_plugin_file(path).await.map_err(load_err)?,
            None => match &source {
                PluginSource::Builtin(name) => match builtin(name) {
                    Some(b) => (b.bytes.to_vec(), b.manifest.map(str::to_owned)),
                    None => {
                        return Err(load_err(format!("unknown built-in (known: {})", super::builtin_names())))
                    }
                },
                PluginSource::File(path) => {
                    return Err(load_err(format!("cannot resolve {}", path.display())))
                }
            },
        };
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        let sha256_hex = hex::encode(sha256);
        let label = format!("{base_label}@{}", &sha256_hex[..12]);
        let load_err = |reason: String| PluginError::Load { plugin: label.clone(), reason };
        check_header(&bytes).map_err(load_err)?;

        let manifest = match &manifest_text {
            Some(text) => {
                let origin = match &file {
                    Some(path) => path.with_extension("toml").display().to_string(),
                    None => format!("{source} manifest"),
                };
                let manifest = manifest::parse(text, &origin).map_err(|e| load_err(e.to_string()))?;
                manifest.check_kind(spec.kind).map_err(|e| load_err(e.to_string()))?;
                tracing::debug!(plugin = %label, declared = ?manifest.kind(), tests = manifest.tests.len(), "plugin manifest read");
                Some(manifest)
            }
            None => None,
        };

        let engine = self.engine.clone();
        let compiled = tokio::task::spawn_blocking(move || engine.compile(&sha256, &bytes))
            .await
            .map_err(|e| load_err(format!("the compiler task failed: {e}")))?
            .map_err(|e| load_err(format!("cannot compile: {e}")))?;
        let component = compiled.0;
        let instance_pre = self
            .engine
            .linker
            .instantiate_pre(&component)
            .map_err(|e| load_err(describe_link_error(&self.engine.engine, &component, &e)))?;
        let pre = Pre::new(spec.kind, instance_pre).map_err(|e| {
            load_err(format!(
                "it does not implement the world {}: {e:#} (it exports: {})",
                spec.kind.world(),
                export_names(&self.engine.engine, &component).join(", ")
            ))
        })?;

        let info = VersionInfo {
            name: spec.name.clone(),
            kind: spec.kind,
            source: source.to_string(),
            file: file.clone(),
            sha256: sha256_hex,
            loaded_at: SystemTime::now(),
            workload_kind: None,
            lifecycle: pre.has_lifecycle(),
            tests_passed: 0,
            label: label.clone(),
        };
        let mut version = self.version(spec, pre.clone(), info.clone(), &spec.config.config)?;
        version.canary_init(self.clock).await.map_err(|e| canary_err(&label, "init", e))?;
        match spec.kind {
            PluginKind::Authorizer => {
                // An authorizer that accepts an empty token would let anyone in.
                match version.authenticate_agent(&AgentHello::default(), self.clock).await {
                    Ok(AgentAuthOutcome::Rejected(_)) => {}
                    Ok(AgentAuthOutcome::Accepted(id)) => {
                        return Err(load_err(format!(
                            "it accepted an empty agent token (as agent {:?})",
                            id.agent_id
                        )))
                    }
                    Err(e) => return Err(canary_err(&label, "authenticate-agent probe", e)),
                }
            }
            PluginKind::Workload => {
                let kind = version.kind_name(self.clock).await.map_err(|e| canary_err(&label, "kind", e))?;
                version.info.workload_kind = Some(kind);
            }
            PluginKind::Router => {}
        }
        if let Some(manifest) = &manifest {
            let passed = self.run_tests(spec, &pre, &version.info, manifest).await.map_err(load_err)?;
            version.info.tests_passed = passed;
        }
        version.set_metrics(self.metrics.cloned());
        Ok((Arc::new(version), stamp))
    }

    fn version(
        &self,
        spec: &SlotSpec,
        pre: Pre,
        info: VersionInfo,
        config: &toml::Table,
    ) -> Result<Version, PluginError> {
        self.version_with_kv(spec, pre, info, config, self.kv.clone())
    }

    fn version_with_kv(
        &self,
        spec: &SlotSpec,
        pre: Pre,
        info: VersionInfo,
        config: &toml::Table,
        kv: kv::KvStore,
    ) -> Result<Version, PluginError> {
        let slot = &spec.config;
        let env = Arc::new(PluginEnv {
            label: info.label.clone().into(),
            name: spec.name.clone().into(),
            config_json: serde_json::Value::Object(super::config::table_to_json(config)).to_string().into(),
            config_toml: toml::to_string(config).unwrap_or_default().into(),
            config: config.clone(),
        });
        let http = http::OutboundPolicy::new(&slot.http).map_err(|e| PluginError::Load {
            plugin: info.label.clone(),
            reason: format!("{}.http: {e}", spec.key),
        })?;
        let limits = Limits {
            call_timeout: slot.call_timeout,
            max_memory_bytes: slot.max_memory_bytes(),
            fuel: slot.fuel,
            instances: slot.instances,
            warm_pool: slot.warm_pool as usize,
            failure: slot.failure_policy(spec.kind),
        };
        Ok(Version::new(
            self.engine.clone(),
            pre,
            VersionParts {
                info,
                limits,
                max_concurrent: slot.max_concurrent as usize,
                env,
                kv,
                http: Arc::new(http),
                breaker: SharedBreaker::new(self.engine.breaker),
                // Canary calls stay out of the metrics; the live version gets them once
                // it passed (see `load`).
                metrics: None,
            },
        ))
    }

    /// Runs the manifest's test vectors against the candidate; the first mismatch
    /// refuses it.
    async fn run_tests(
        &self,
        spec: &SlotSpec,
        pre: &Pre,
        info: &VersionInfo,
        manifest: &Manifest,
    ) -> Result<usize, String> {
        for (i, test) in manifest.tests.iter().enumerate() {
            let clock = test.now.map_or(self.clock, ClockSource::Fixed);
            // Each vector gets an empty kv store of its own: vectors must not see each
            // other's writes, nor write into the store the live version uses.
            let sandbox = kv::KvStore::memory(kv::KvLimits::default());
            let config = test.config.as_ref().unwrap_or(&spec.config.config);
            let own = self
                .version_with_kv(spec, pre.clone(), info.clone(), config, sandbox)
                .map_err(|e| e.to_string())?;
            let target = &own;
            let actual = run_call(target, &test.call, clock)
                .await
                .map_err(|e| format!("test[{i}] ({:?}) failed: {e}", test.name))?;
            matcher::check(&test.expect, &actual)
                .map_err(|m| format!("test[{i}] ({:?}) did not give the expected answer: {m}", test.name))?;
        }
        Ok(manifest.tests.len())
    }
}

async fn run_call(
    v: &Version,
    call: &TestCall,
    clock: ClockSource,
) -> Result<serde_json::Value, PluginError> {
    let json = |r: Result<serde_json::Value, serde_json::Error>| r.unwrap_or(serde_json::Value::Null);
    Ok(match call {
        TestCall::AuthenticateAgent(req) => {
            json(serde_json::to_value(v.authenticate_agent(req, clock).await?))
        }
        TestCall::AuthenticateUser(req) => json(serde_json::to_value(v.authenticate_user(req, clock).await?)),
        TestCall::Authorize(req) => json(serde_json::to_value(v.authorize(req, clock).await?)),
        TestCall::Resolve(req) => json(serde_json::to_value(v.resolve(req, clock).await?)),
        TestCall::Expired(req) => json(serde_json::to_value(v.expired(req, clock).await?)),
        TestCall::Route(req) => json(serde_json::to_value(v.route(req, clock).await?)),
        TestCall::Kind => json(serde_json::to_value(v.kind_name(clock).await?)),
    })
}

fn canary_err(label: &str, step: &str, err: PluginError) -> PluginError {
    PluginError::Load { plugin: label.to_owned(), reason: format!("the canary's {step} call failed: {err}") }
}

async fn read_plugin_file(path: &Path) -> Result<(Vec<u8>, Option<String>), String> {
    let meta = tokio::fs::metadata(path).await.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("not a file: {}", path.display()));
    }
    if meta.len() > MAX_PLUGIN_BYTES {
        return Err(format!("{} is larger than {} MiB", path.display(), MAX_PLUGIN_BYTES / (1024 * 1024)));
    }
    let bytes = tokio::fs::read(path).await.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let manifest_path = path.with_extension("toml");
    let manifest = match tokio::fs::read_to_string(&manifest_path).await {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read the manifest {}: {e}", manifest_path.display())),
    };
    Ok((bytes, manifest))
}

/// Refuses what is not a component before the compiler sees it, with advice.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), String> {
    if !bytes.starts_with(WASM_MAGIC) || bytes.len() < 8 {
        return Err("not a WebAssembly binary".into());
    }
    if bytes[6..8] == CORE_MODULE_LAYER {
        return Err("this is a core WebAssembly module, not a component: build it for wasm32-wasip2 \
                    (or wrap it with `wasm-tools component new`)"
            .into());
    }
    Ok(())
}

/// Explains a failed link: most often a plugin built against a contract this host does
/// not implement (an old 0.x `burrow:plugin`, or a newer major).
fn describe_link_error(engine: &Engine, component: &Component, err: &wasmtime::Error) -> String {
    let imports = import_names(engine, component);
    if let Some(old) = imports.iter().find(|i| i.starts_with("burrow:plugin/") && !i.contains("@1.")) {
        return format!(
            "it was built against {old}, which this host (burrow:plugin@1.1) does not load: rebuild it against \
             burrow:plugin 1.x (see wit/README.md)"
        );
    }
    format!("it imports something this host does not provide: {err:#}")
}

/// Top-level export names; instances list their functions: `burrow:plugin/router@1.1.0{route}`.
pub(crate) fn export_names(engine: &Engine, component: &Component) -> Vec<String> {
    let ty = component.component_type();
    ty.exports(engine).map(|(name, item)| describe(engine, name, &item.ty)).collect()
}

/// Top-level import names.
pub(crate) fn import_names(engine: &Engine, component: &Component) -> Vec<String> {
    let ty = component.component_type();
    ty.imports(engine).map(|(name, _)| name.to_owned()).collect()
}

fn describe(engine: &Engine, name: &str, item: &ComponentItem) -> String {
    match item {
        ComponentItem::ComponentInstance(instance) => {
            let funcs: Vec<&str> = instance
                .exports(engine)
                .filter(|(_, e)| matches!(e.ty, ComponentItem::ComponentFunc(_)))
                .map(|(n, _)| n)
                .collect();
            format!("{name}{{{}}}", funcs.join(", "))
        }
        _ => name.to_owned(),
    }
}
