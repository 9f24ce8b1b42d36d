//! Plugin runtime: WebAssembly components (WIT package `burrow:plugin@0.1.0`, see
//! `wit/`) that authenticate agents, authorize users and route requests.
//!
//! Each slot (`authorizer`, `router`) holds one component, either a built-in embedded
//! in this binary or a `.wasm` file; both go through the same load path. A call runs in
//! a fresh instance bounded by the slot's `call_timeout` and `max_memory_mb`; a plugin
//! that traps, runs too long or exhausts its memory yields a [`PluginError`] naming
//! the plugin, its SHA-256 and the limit it hit, and the host keeps serving.

mod bindings;
mod config;
mod runtime;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use bindings::{types as wit, AuthorizerPluginPre, RouterPluginPre};
pub use config::{
    PluginConfigError, PluginKind, PluginSlotConfig, PluginSource, PluginsConfig, MAX_CALL_TIMEOUT,
    MAX_MEMORY_MB, MIN_CALL_TIMEOUT,
};
use runtime::SlotInfo;

/// Directory holding this build's compiled plugin components (set by `build.rs`),
/// including the test-only `test_misbehave.wasm`.
pub const ARTIFACTS_DIR: &str = env!("BURROW_PLUGIN_ARTIFACTS");

/// A component compiled into the host binary.
pub(crate) struct Builtin {
    pub name: &'static str,
    pub kind: PluginKind,
    pub bytes: &'static [u8],
}

static BUILTINS: &[Builtin] = &[
    Builtin {
        name: "authorizer-static",
        kind: PluginKind::Authorizer,
        bytes: include_bytes!(concat!(env!("BURROW_PLUGIN_ARTIFACTS"), "/authorizer_static.wasm")),
    },
    Builtin {
        name: "router-hostname",
        kind: PluginKind::Router,
        bytes: include_bytes!(concat!(env!("BURROW_PLUGIN_ARTIFACTS"), "/router_hostname.wasm")),
    },
];

pub(crate) fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

pub(crate) fn builtin_names() -> String {
    BUILTINS.iter().map(|b| format!("builtin:{}", b.name)).collect::<Vec<_>>().join(", ")
}

/// A plugin failed to load or to answer. Every message names the plugin (slot and
/// source) and, once its bytes are known, the first 12 hex digits of its SHA-256.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The component could not be read, compiled, linked or probed.
    #[error("plugin {plugin}: cannot load: {reason}")]
    Load { plugin: String, reason: String },
    /// The plugin trapped (a Rust plugin's panic ends up here, with its message).
    #[error("plugin {plugin} (sha256 {sha256}) trapped: {message}")]
    Trap { plugin: String, sha256: String, message: String },
    /// The call ran past the slot's `call_timeout`.
    #[error("plugin {plugin} (sha256 {sha256}) exceeded its call timeout of {}", humantime::format_duration(*.limit))]
    Timeout { plugin: String, sha256: String, limit: Duration },
    /// The plugin tried to grow its memory past the slot's `max_memory_mb`.
    #[error("plugin {plugin} (sha256 {sha256}) exceeded its memory limit of {} MiB", .limit_bytes / (1024 * 1024))]
    Memory { plugin: String, sha256: String, limit_bytes: u64 },
    /// The plugin recursed past the wasm stack limit.
    #[error("plugin {plugin} (sha256 {sha256}) overflowed its wasm stack of {} KiB", .limit_bytes / 1024)]
    StackOverflow { plugin: String, sha256: String, limit_bytes: u64 },
    /// The plugin answered something the WIT contract forbids.
    #[error("plugin {plugin} (sha256 {sha256}) returned an invalid result: {reason}")]
    InvalidResult { plugin: String, sha256: String, reason: String },
    /// The host could not run the call (not the plugin's fault, e.g. no free instance slot).
    #[error("plugin {plugin} (sha256 {sha256}) could not be run: {reason}")]
    Unavailable { plugin: String, sha256: String, reason: String },
}

/// An agent asks to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentAuthRequest {
    /// The agent's bearer token (masked in `Debug`).
    pub token: String,
    pub agent_version: String,
    pub replica_id: String,
    pub remote_addr: String,
    pub services: Vec<String>,
}

impl fmt::Debug for AgentAuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentAuthRequest")
            .field("token", &"<redacted>")
            .field("agent_version", &self.agent_version)
            .field("replica_id", &self.replica_id)
            .field("remote_addr", &self.remote_addr)
            .field("services", &self.services)
            .finish()
    }
}

/// The authorizer's verdict on an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAuthOutcome {
    Accepted(AgentIdentity),
    Rejected { reason: String },
}

/// Who an accepted agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    pub agent_id: String,
    pub labels: Vec<(String, String)>,
}

/// How a user's request reaches the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    WebSocket,
    /// Any other `Upgrade` protocol.
    Upgrade,
}

/// A user's request to a routed workload.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessRequest {
    pub agent_id: String,
    pub service: String,
    pub workload_id: String,
    pub host: String,
    pub method: String,
    pub path: String,
    pub protocol: Protocol,
    pub client_addr: String,
    /// From `Authorization: Bearer` (masked in `Debug`).
    pub bearer_token: Option<String>,
}

impl fmt::Debug for AccessRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessRequest")
            .field("agent_id", &self.agent_id)
            .field("service", &self.service)
            .field("workload_id", &self.workload_id)
            .field("host", &self.host)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("protocol", &self.protocol)
            .field("client_addr", &self.client_addr)
            .field("bearer_token", &self.bearer_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The authorizer's verdict on a user request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessDecision {
    Allow {
        principal: String,
        /// Remove the user's `Authorization` header before forwarding.
        strip_credentials: bool,
    },
    Deny {
        /// 401 or 403 (anything else is rejected as [`PluginError::InvalidResult`]).
        status: u16,
        reason: String,
    },
}

/// A user request that needs a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRequest {
    /// Host header, lowercased, port stripped (by the caller).
    pub host: String,
    pub path: String,
    pub method: String,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub agent_id: String,
    pub service: String,
    pub workload_id: String,
}

/// What was loaded into a slot, for start-up logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedPlugin {
    pub kind: PluginKind,
    pub source: PluginSource,
    /// Full hex SHA-256 of the component.
    pub sha256: String,
}

struct Slot<P> {
    info: Arc<SlotInfo>,
    loaded: LoadedPlugin,
    pre: P,
}

/// The loaded authorizer and router. Cheap to share behind an `Arc`; every call is
/// independent.
pub struct Plugins {
    runtime: &'static runtime::Runtime,
    authorizer: Arc<Slot<AuthorizerPluginPre<runtime::CallState>>>,
    router: Arc<Slot<RouterPluginPre<runtime::CallState>>>,
}

impl fmt::Debug for Plugins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugins")
            .field("authorizer", &self.authorizer.loaded)
            .field("router", &self.router.loaded)
            .finish()
    }
}

impl Plugins {
    /// Loads both slots: reads and compiles each component (CPU-heavy: call it off the
    /// async workers), checks it implements its slot's world, and probes it once with
    /// an empty request so that a broken component or config fails here rather than on
    /// the first request.
    pub fn load(cfg: &PluginsConfig) -> Result<Plugins, PluginError> {
        let authorizer = load_slot(PluginKind::Authorizer, cfg.slot(PluginKind::Authorizer), |rt, pre| {
            AuthorizerPluginPre::new(rt.linker().instantiate_pre(pre)?)
        })?;
        let router = load_slot(PluginKind::Router, cfg.slot(PluginKind::Router), |rt, pre| {
            RouterPluginPre::new(rt.linker().instantiate_pre(pre)?)
        })?;
        let runtime = shared_runtime(&authorizer.info.label)?;
        let plugins = Plugins { runtime, authorizer: Arc::new(authorizer), router: Arc::new(router) };
        plugins.probe()?;
        Ok(plugins)
    }

    /// What each slot holds.
    pub fn loaded(&self) -> [&LoadedPlugin; 2] {
        [&self.authorizer.loaded, &self.router.loaded]
    }

    /// Asks the authorizer whether an agent may connect.
    /// Runs `work` (plugin calls) for an async caller without stalling other tasks.
    ///
    /// On a multi-threaded tokio runtime the calls run inline inside `block_in_place`: the
    /// request keeps its thread and tokio moves the worker's other tasks elsewhere. Waking
    /// another thread for each request costs more than the calls themselves on an idle
    /// machine. Elsewhere (a current-thread runtime) `work` goes to a plugin thread in one
    /// hand-off; calls inside it run inline there.
    pub async fn run_async<F, R>(self: &Arc<Self>, work: F) -> Result<R, PluginError>
    where
        F: FnOnce(&Plugins) -> R + Send + 'static,
        R: Send + 'static,
    {
        if tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        {
            return Ok(tokio::task::block_in_place(|| runtime::Runtime::inline(|| work(self))));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let submitted = self.runtime.submit(Box::new(move || {
            let _ = reply.send(work(&this));
        }));
        let unavailable = |reason: &str| runtime::unavailable(&self.authorizer.info, reason.to_owned());
        submitted.map_err(|()| unavailable("the plugin threads have stopped"))?;
        answer.await.map_err(|_| unavailable("the plugin call panicked inside the runtime"))
    }

    pub fn authenticate_agent(&self, req: &AgentAuthRequest) -> Result<AgentAuthOutcome, PluginError> {
        let wit_req = wit::AgentAuthRequest {
            token: req.token.clone(),
            agent_version: req.agent_version.clone(),
            replica_id: req.replica_id.clone(),
            remote_addr: req.remote_addr.clone(),
            services: req.services.clone(),
        };
        let slot = self.authorizer.clone();
        let pre = slot.pre.clone();
        let outcome = self.runtime.call(
            &slot.info,
            move |store| pre.instantiate(store),
            move |instance, store| {
                instance.burrow_plugin_authorizer().call_authenticate_agent(store, &wit_req)
            },
        )?;
        match outcome {
            wit::AgentAuthOutcome::Accepted(identity) if identity.agent_id.is_empty() => {
                Err(invalid(&slot.info, "accepted an agent with an empty agent-id".into()))
            }
            wit::AgentAuthOutcome::Accepted(identity) => Ok(AgentAuthOutcome::Accepted(AgentIdentity {
                agent_id: identity.agent_id,
                labels: identity.labels,
            })),
            wit::AgentAuthOutcome::Rejected(reason) => Ok(AgentAuthOutcome::Rejected { reason }),
        }
    }

    /// Asks the authorizer whether a user request may reach its workload.
    pub fn authorize(&self, req: &AccessRequest) -> Result<AccessDecision, PluginError> {
        let wit_req = wit::AccessRequest {
            agent_id: req.agent_id.clone(),
            service: req.service.clone(),
            workload_id: req.workload_id.clone(),
            host: req.host.clone(),
            method: req.method.clone(),
            path: req.path.clone(),
            protocol: match req.protocol {
                Protocol::Http => wit::Protocol::Http,
                Protocol::WebSocket => wit::Protocol::Websocket,
                Protocol::Upgrade => wit::Protocol::Upgrade,
            },
            client_addr: req.client_addr.clone(),
            bearer_token: req.bearer_token.clone(),
        };
        let slot = self.authorizer.clone();
        let pre = slot.pre.clone();
        let decision = self.runtime.call(
            &slot.info,
            move |store| pre.instantiate(store),
            move |instance, store| instance.burrow_plugin_authorizer().call_authorize(store, &wit_req),
        )?;
        match decision {
            wit::AccessDecision::Allow(allow) => Ok(AccessDecision::Allow {
                principal: allow.principal,
                strip_credentials: allow.strip_credentials,
            }),
            wit::AccessDecision::Deny(deny) if deny.status == 401 || deny.status == 403 => {
                Ok(AccessDecision::Deny { status: deny.status, reason: deny.reason })
            }
            wit::AccessDecision::Deny(deny) => {
                Err(invalid(&slot.info, format!("denied with status {}, expected 401 or 403", deny.status)))
            }
        }
    }

    /// Asks the router which workload serves a request; `None` means no such workload.
    pub fn route(&self, req: &RouteRequest) -> Result<Option<Route>, PluginError> {
        let wit_req =
            wit::RouteRequest { host: req.host.clone(), path: req.path.clone(), method: req.method.clone() };
        let slot = self.router.clone();
        let pre = slot.pre.clone();
        let target = self.runtime.call(
            &slot.info,
            move |store| pre.instantiate(store),
            move |instance, store| instance.burrow_plugin_router().call_route(store, &wit_req),
        )?;
        match target {
            None => Ok(None),
            Some(t) if t.agent_id.is_empty() || t.service.is_empty() || t.workload_id.is_empty() => Err(
                invalid(&slot.info, "returned a route with an empty agent-id, service or workload-id".into()),
            ),
            Some(t) => {
                Ok(Some(Route { agent_id: t.agent_id, service: t.service, workload_id: t.workload_id }))
            }
        }
    }

    /// One call per slot with empty requests: it exercises instantiation, the exports
    /// and the plugin's config parsing. The authorizer is probed through
    /// `authenticate-agent` (an empty token must be rejected, never accepted).
    fn probe(&self) -> Result<(), PluginError> {
        let probe_failed = |info: &SlotInfo, err: PluginError| PluginError::Load {
            plugin: info.label.clone(),
            reason: format!("the load-time probe call failed: {err}"),
        };
        let empty_agent = AgentAuthRequest {
            token: String::new(),
            agent_version: String::new(),
            replica_id: String::new(),
            remote_addr: String::new(),
            services: Vec::new(),
        };
        match self.authenticate_agent(&empty_agent) {
            Ok(AgentAuthOutcome::Rejected { .. }) => {}
            Ok(AgentAuthOutcome::Accepted(identity)) => {
                return Err(PluginError::Load {
                    plugin: self.authorizer.info.label.clone(),
                    reason: format!("it accepted an empty agent token (as agent {:?})", identity.agent_id),
                })
            }
            Err(err) => return Err(probe_failed(&self.authorizer.info, err)),
        }
        let empty_route = RouteRequest { host: String::new(), path: "/".into(), method: "GET".into() };
        self.route(&empty_route).map_err(|err| probe_failed(&self.router.info, err))?;
        Ok(())
    }
}

fn invalid(info: &SlotInfo, reason: String) -> PluginError {
    PluginError::InvalidResult { plugin: info.label.clone(), sha256: info.sha256_short.clone(), reason }
}

fn shared_runtime(plugin: &str) -> Result<&'static runtime::Runtime, PluginError> {
    runtime::shared().map_err(|reason| PluginError::Load {
        plugin: plugin.to_string(),
        reason: format!("cannot start the WebAssembly runtime: {reason}"),
    })
}

/// The magic and layer fields of a WebAssembly binary's header.
const WASM_MAGIC: &[u8] = b"\0asm";
const CORE_MODULE_LAYER: [u8; 2] = [0, 0];

fn load_slot<P>(
    kind: PluginKind,
    cfg: &PluginSlotConfig,
    pre: impl FnOnce(&runtime::Runtime, &wasmtime::component::Component) -> wasmtime::Result<P>,
) -> Result<Slot<P>, PluginError> {
    let source = cfg.source_or_default(kind);
    let label = format!("{kind} ({source})");
    let load_err = |reason: String| PluginError::Load { plugin: label.clone(), reason };
    cfg.validate(kind).map_err(|err| load_err(err.to_string()))?;

    let owned;
    let bytes: &[u8] = match &source {
        PluginSource::Builtin(name) => match builtin(name) {
            Some(builtin) => builtin.bytes,
            None => return Err(load_err(format!("unknown built-in (known: {})", builtin_names()))),
        },
        PluginSource::File(path) => {
            owned =
                std::fs::read(path).map_err(|e| load_err(format!("cannot read {}: {e}", path.display())))?;
            &owned
        }
    };
    let sha256: [u8; 32] = Sha256::digest(bytes).into();
    let sha256_hex = hex::encode(sha256);
    let sha256_short = sha256_hex[..12].to_string();
    let load_err = |reason: String| load_err(format!("sha256 {sha256_short}: {reason}"));

    if !bytes.starts_with(WASM_MAGIC) || bytes.len() < 8 {
        return Err(load_err("not a WebAssembly binary".into()));
    }
    if bytes[6..8] == CORE_MODULE_LAYER {
        return Err(load_err(
            "this is a core WebAssembly module, not a component: build it for wasm32-wasip2 \
             (or wrap it with `wasm-tools component new`)"
                .into(),
        ));
    }

    let rt = shared_runtime(&label)?;
    let component = rt.compile(sha256, bytes).map_err(|e| load_err(format!("cannot compile: {e}")))?;
    let pre = pre(rt, &component).map_err(|e| {
        load_err(format!("the component does not implement the world {}: {e:#}", kind.world()))
    })?;
    tracing::debug!(plugin = %label, sha256 = %sha256_hex, "plugin compiled");

    let info = Arc::new(SlotInfo {
        label,
        sha256_short,
        config_json: cfg.config_json().into(),
        call_timeout: cfg.call_timeout,
        max_memory_bytes: cfg.max_memory_bytes(),
    });
    Ok(Slot { info, loaded: LoadedPlugin { kind, source, sha256: sha256_hex }, pre })
}
