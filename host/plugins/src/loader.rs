//! Builds a plugin version: read the file (or the embedded built-in) and its manifest
//! (embedded in the component, or `NAME.toml` beside it: never both), hash, compile off
//! the async workers, type-check against the slot's world, then the canary (`init`, the
//! kind's probe, the manifest's test vectors) on an instance of its own whose log lines
//! are marked as the canary's. Only a version that passes all of it is handed back to be
//! swapped in (`manager.rs` at the first load, `reload.rs` afterwards).

use std::collections::HashSet;
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
        let (bytes, beside) = match &file {
            Some(path) => read_plugin_file(path).await.map_err(load_err)?,
            None => match &source {
                PluginSource::Builtin(name) => match builtin(name) {
                    Some(b) => (b.bytes.to_vec(), None),
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

        let manifest = match manifest_text(&bytes, beside, &source).map_err(load_err)? {
            Some((text, origin)) => {
                let manifest = manifest::parse(&text, &origin).map_err(|e| load_err(e.to_string()))?;
                manifest.check_kind(spec.kind).map_err(|e| load_err(e.to_string()))?;
                tracing::debug!(plugin = %label, declared = ?manifest.kind(), tests = manifest.tests.len(), "plugin manifest read");
                Some(manifest)
            }
            None => None,
        };
        // The slot's `name` wins; else the manifest's; else the built-in's name or the
        // file stem (what `spec.name` already holds).
        let name = match (&spec.config.name, manifest.as_ref().and_then(|m| m.plugin.name.clone())) {
            (Some(name), _) => name.clone(),
            (None, Some(name)) => name,
            (None, None) => spec.name.clone(),
        };
        let label = format!("{} {name}@{}", spec.kind, &sha256_hex[..12]);
        let load_err = |reason: String| PluginError::Load { plugin: label.clone(), reason };

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
            name: name.clone(),
            kind: spec.kind,
            source: source.to_string(),
            file: file.clone(),
            sha256: sha256_hex,
            version: manifest.as_ref().and_then(|m| m.plugin.version.clone()),
            config_sha256: config_sha256(&spec.config.config),
            loaded_at: SystemTime::now(),
            workload_kind: None,
            lifecycle: pre.has_lifecycle(),
            tests_passed: 0,
            label: label.clone(),
        };
        // The canary runs on a version of its own, so its log lines say they are the
        // canary's and its warm instances never serve a request.
        let canary = self.version_with(
            spec,
            pre.clone(),
            info.clone(),
            &spec.config.config,
            self.kv.clone(),
            "canary",
        )?;
        canary.canary_init(self.clock).await.map_err(|e| canary_err(&label, "init", e))?;
        let mut info = info;
        match spec.kind {
            PluginKind::Authorizer => {
                // An authorizer that accepts an empty token would let anyone in.
                match canary.authenticate_agent(&AgentHello::default(), self.clock).await {
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
                let kind = canary.kind_name(self.clock).await.map_err(|e| canary_err(&label, "kind", e))?;
                info.workload_kind = Some(kind);
            }
            PluginKind::Router => {}
        }
        if let Some(manifest) = &manifest {
            info.tests_passed = self.run_tests(spec, &pre, &info, manifest).await.map_err(load_err)?;
        }
        let mut version = self.version_with(spec, pre, info, &spec.config.config, self.kv.clone(), "")?;
        version.listed_agents = listed_agents(spec, &source, file.as_deref());
        version.set_metrics(self.metrics.cloned());
        Ok((Arc::new(version), stamp))
    }

    /// A version of `spec` with `config` and `kv`; `stage` (`canary`, a test vector's
    /// name) marks its log lines, empty for the version that serves.
    fn version_with(
        &self,
        spec: &SlotSpec,
        pre: Pre,
        info: VersionInfo,
        config: &toml::Table,
        kv: kv::KvStore,
        stage: &str,
    ) -> Result<Version, PluginError> {
        let slot = &spec.config;
        let env = Arc::new(PluginEnv {
            label: info.label.clone().into(),
            name: info.name.clone().into(),
            stage: (!stage.is_empty()).then(|| stage.into()),
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
            init_timeout: slot.init_timeout,
            max_memory_bytes: slot.max_memory_bytes(),
            fuel: slot.fuel,
            instances: slot.instance_policy(spec.kind),
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
            let stage = format!("test vector {:?}", test.name);
            let own = self
                .version_with(spec, pre.clone(), info.clone(), config, sandbox, &stage)
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

fn canary_err(label: &str, step: &'static str, err: PluginError) -> PluginError {
    PluginError::Canary { plugin: label.to_owned(), step, error: Box::new(err) }
}

/// A manifest file beside the component: its text and its path (for messages).
type Beside = Option<(String, String)>;

async fn read_plugin_file(path: &Path) -> Result<(Vec<u8>, Beside), String> {
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
        Ok(text) => Some((text, manifest_path.display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read the manifest {}: {e}", manifest_path.display())),
    };
    Ok((bytes, manifest))
}

/// The manifest to use and where it came from: the one embedded in the component, or the
/// one beside its file. Both is an error: they could disagree, and which one the canary
/// ran would depend on who asked.
fn manifest_text(bytes: &[u8], beside: Beside, source: &PluginSource) -> Result<Beside, String> {
    match (embedded_manifest(bytes)?, beside) {
        (Some(_), Some((_, path))) => Err(format!(
            "it embeds a manifest and {path} is a second one: remove the file (the embedded one \
             travels with the component)"
        )),
        (Some(text), None) => Ok(Some((text, format!("{source} (embedded manifest)")))),
        (None, beside) => Ok(beside),
    }
}

/// The manifest in the component's [`manifest::EMBEDDED_SECTION`] custom section,
/// searched in nested modules too (the SDK writes it into the core module, which the
/// component wraps).
pub(crate) fn embedded_manifest(bytes: &[u8]) -> Result<Option<String>, String> {
    let mut found = None;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        // A malformed binary is the compiler's to report, with a better message.
        let Ok(payload) = payload else { break };
        let wasmparser::Payload::CustomSection(section) = payload else { continue };
        if section.name() != manifest::EMBEDDED_SECTION {
            continue;
        }
        if found.is_some() {
            return Err(format!("it embeds more than one {} section", manifest::EMBEDDED_SECTION));
        }
        let text = std::str::from_utf8(section.data())
            .map_err(|e| format!("its embedded manifest is not UTF-8: {e}"))?;
        found = Some(text.to_owned());
    }
    Ok(found)
}

/// The SHA-256 of a slot's config table (its canonical JSON), so a swap caused by a
/// config change shows as one even when the component's bytes did not change.
pub(crate) fn config_sha256(config: &toml::Table) -> String {
    let json = serde_json::Value::Object(super::config::table_to_json(config)).to_string();
    hex::encode(Sha256::digest(json.as_bytes()))
}

/// The agent ids a slot can ever admit, when the host can know them: the embedded
/// built-in static authorizer admits exactly the `agents` of its config. Any other
/// plugin decides in code, so `None` (the host cannot tell an unknown agent from one
/// that has not connected yet).
fn listed_agents(
    spec: &SlotSpec,
    source: &PluginSource,
    file: Option<&Path>,
) -> Option<Arc<HashSet<String>>> {
    let is_static = matches!(source, PluginSource::Builtin(name) if name == "authorizer-static");
    if spec.kind != PluginKind::Authorizer || !is_static || file.is_some() {
        return None;
    }
    let agents = match spec.config.config.get("agents") {
        Some(toml::Value::Array(agents)) => agents,
        _ => return Some(Arc::default()),
    };
    let ids = agents.iter().filter_map(|a| a.get("id")?.as_str().map(str::to_owned)).collect();
    Some(Arc::new(ids))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(name: &str) -> Vec<u8> {
        std::fs::read(Path::new(crate::ARTIFACTS_DIR).join(name)).expect("the build made it")
    }

    #[test]
    fn the_manifest_embedded_by_the_sdk_is_found_inside_the_component() {
        let text = embedded_manifest(&artifact("workload_workspace.wasm")).unwrap().expect("embedded");
        let manifest = manifest::parse(&text, "workload-workspace").unwrap();
        assert_eq!(manifest.plugin.name.as_deref(), Some("workload-workspace"));
        assert!(!manifest.tests.is_empty());
        assert_eq!(embedded_manifest(&artifact("test_misbehave.wasm")).unwrap(), None);
        assert_eq!(
            embedded_manifest(b"\0asm junk").unwrap(),
            None,
            "a broken binary is the compiler's to report"
        );
    }

    #[test]
    fn a_manifest_embedded_and_one_beside_the_file_are_refused() {
        let bytes = artifact("workload_workspace.wasm");
        let source = PluginSource::File("w.wasm".into());
        let beside = Some(("[plugin]\n".to_owned(), "w.toml".to_owned()));
        let err = manifest_text(&bytes, beside.clone(), &source).unwrap_err();
        assert!(err.contains("w.toml is a second one"), "{err}");
        let (_, origin) = manifest_text(&bytes, None, &source).unwrap().unwrap();
        assert!(origin.contains("embedded"), "{origin}");
        let plain = artifact("test_misbehave.wasm");
        assert_eq!(manifest_text(&plain, beside.clone(), &source).unwrap(), beside);
    }

    #[test]
    fn only_the_embedded_static_list_tells_which_agents_exist() {
        let slot = |source: &str| {
            let config: toml::Table =
                toml::from_str("agents = [{ id = \"a1\", token_sha256 = \"00\" }]").unwrap();
            let source: PluginSource = source.parse().unwrap();
            let config = super::super::PluginSlotConfig::with_source(source.clone(), config);
            let spec = SlotSpec {
                kind: PluginKind::Authorizer,
                role: super::super::SlotRole::Agents,
                key: "plugins.agents".into(),
                name: "x".into(),
                config,
            };
            (spec, source)
        };
        let (spec, source) = slot("builtin:authorizer-static");
        let ids = listed_agents(&spec, &source, None).expect("the static list is known");
        assert!(ids.contains("a1") && ids.len() == 1);
        assert_eq!(
            listed_agents(&spec, &source, Some(Path::new("dir/authorizer-static.wasm"))),
            None,
            "an override"
        );
        let (spec, source) = slot("my-authorizer.wasm");
        assert_eq!(listed_agents(&spec, &source, None), None);
    }
}
