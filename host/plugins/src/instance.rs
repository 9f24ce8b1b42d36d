//! One loaded version of one plugin, and how a call into it runs.
//!
//! A call: the breaker admits it (a quarantined plugin is refused at once), a permit of
//! `max_concurrent` bounds it, an instance is taken from the warm pool (`per-user`: only
//! one that served the same credential, see [`Isolation`]; `warm`: any) or made, the
//! epoch deadline and fuel are set, and the call — host calls such as outbound HTTP
//! included — runs under `call_timeout`. Making an instance that will be reused
//! (instantiation and `plugin.init`) is bounded apart, by `init_timeout`: it is paid once
//! per pool slot, an `init` may parse a large config, and a burst of first calls on 2
//! cores would otherwise time out together and quarantine a healthy plugin. Under
//! `fresh`, instantiation is part of every call and of its `call_timeout`. A failed call is mapped
//! to a [`PluginError`] naming the plugin, its version (sha256) and the limit hit; a
//! warm instance that failed is discarded, never reused.

mod errors;

use errors::is_guest_failure;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use burrow_plugin_contract::validate;
use tokio::sync::Semaphore;
use wasmtime::component::InstancePre;
use wasmtime::Store;

use super::bindings::{authorizer, router, types as wit, workload, workload_plain};
use super::breaker::SharedBreaker;
use super::config::{FailurePolicy, InstancePolicy, PluginKind};
use super::convert;
use super::engine::PluginEngine;
use super::host_api::{http, kv, CallState, ClockSource, PluginEnv};
pub(crate) use super::isolation::Isolation;
use super::isolation::WarmPool;
use super::types::{
    AgentAuthOutcome, AgentEvent, AgentHello, AuthorizeRequest, Decision, ExpiryRequest, Principal,
    ResolveRequest, Resolved, RouteRequest, UserAuthOutcome, UserAuthRequest,
};
use super::PluginError;
use burrow_host_metrics::PluginMetrics;

/// The future a call body returns: borrows the instance and its store.
pub(crate) type CallFuture<'a, R> = Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>>;

/// The component's exports, ready to instantiate, by world.
#[derive(Clone)]
pub(crate) enum Pre {
    Authorizer(authorizer::AuthorizerPluginPre<CallState>),
    Workload(workload::WorkloadPluginWithLifecyclePre<CallState>),
    WorkloadPlain(workload_plain::WorkloadPluginPre<CallState>),
    Router(router::RouterPluginPre<CallState>),
}

impl Pre {
    /// Type-checks `pre` against `kind`'s world. A workload without the optional
    /// `workload-lifecycle` export (a 1.0 plugin) loads as `WorkloadPlain`.
    pub(crate) fn new(kind: PluginKind, pre: InstancePre<CallState>) -> wasmtime::Result<Pre> {
        Ok(match kind {
            PluginKind::Authorizer => Pre::Authorizer(authorizer::AuthorizerPluginPre::new(pre)?),
            PluginKind::Router => Pre::Router(router::RouterPluginPre::new(pre)?),
            PluginKind::Workload => match workload::WorkloadPluginWithLifecyclePre::new(pre.clone()) {
                Ok(full) => Pre::Workload(full),
                Err(_) => Pre::WorkloadPlain(workload_plain::WorkloadPluginPre::new(pre)?),
            },
        })
    }

    pub(crate) fn has_lifecycle(&self) -> bool {
        matches!(self, Pre::Workload(_))
    }

    async fn instantiate(&self, store: &mut Store<CallState>) -> wasmtime::Result<Bound> {
        Ok(match self {
            Pre::Authorizer(p) => Bound::Authorizer(p.instantiate_async(store).await?),
            Pre::Workload(p) => Bound::Workload(p.instantiate_async(store).await?),
            Pre::WorkloadPlain(p) => Bound::WorkloadPlain(p.instantiate_async(store).await?),
            Pre::Router(p) => Bound::Router(p.instantiate_async(store).await?),
        })
    }
}

/// An instance's exports.
pub(crate) enum Bound {
    Authorizer(authorizer::AuthorizerPlugin),
    Workload(workload::WorkloadPluginWithLifecycle),
    WorkloadPlain(workload_plain::WorkloadPlugin),
    Router(router::RouterPlugin),
}

// Exports are generated per world (`with` only maps imports), so the two workload
// worlds have distinct `Guest` types: the calls below match on the variant.
impl Bound {
    pub(crate) fn authorizer(
        &self,
    ) -> wasmtime::Result<&authorizer::exports::burrow::plugin::authorizer::Guest> {
        match self {
            Bound::Authorizer(b) => Ok(b.burrow_plugin_authorizer()),
            _ => wasmtime::bail!("not an authorizer"),
        }
    }

    pub(crate) fn router(&self) -> wasmtime::Result<&router::exports::burrow::plugin::router::Guest> {
        match self {
            Bound::Router(b) => Ok(b.burrow_plugin_router()),
            _ => wasmtime::bail!("not a router"),
        }
    }

    /// `None` for a workload plugin without the optional lifecycle export.
    pub(crate) fn lifecycle(&self) -> Option<&workload::exports::burrow::plugin::workload_lifecycle::Guest> {
        match self {
            Bound::Workload(b) => Some(b.burrow_plugin_workload_lifecycle()),
            _ => None,
        }
    }

    pub(crate) async fn workload_kind(&self, store: &mut Store<CallState>) -> wasmtime::Result<String> {
        match self {
            Bound::Workload(b) => b.burrow_plugin_workload().call_kind(store).await,
            Bound::WorkloadPlain(b) => b.burrow_plugin_workload().call_kind(store).await,
            _ => wasmtime::bail!("not a workload plugin"),
        }
    }

    pub(crate) async fn workload_resolve(
        &self,
        store: &mut Store<CallState>,
        req: &wit::ResolveRequest,
    ) -> wasmtime::Result<Option<wit::Resolved>> {
        match self {
            Bound::Workload(b) => b.burrow_plugin_workload().call_resolve(store, req).await,
            Bound::WorkloadPlain(b) => b.burrow_plugin_workload().call_resolve(store, req).await,
            _ => wasmtime::bail!("not a workload plugin"),
        }
    }

    pub(crate) async fn workload_expired(
        &self,
        store: &mut Store<CallState>,
        req: &wit::ExpiryRequest,
    ) -> wasmtime::Result<bool> {
        match self {
            Bound::Workload(b) => b.burrow_plugin_workload().call_expired(store, req).await,
            Bound::WorkloadPlain(b) => b.burrow_plugin_workload().call_expired(store, req).await,
            _ => wasmtime::bail!("not a workload plugin"),
        }
    }

    async fn init(&self, store: &mut Store<CallState>) -> wasmtime::Result<Result<(), String>> {
        match self {
            Bound::Authorizer(b) => b.burrow_plugin_plugin().call_init(store).await,
            Bound::Workload(b) => b.burrow_plugin_plugin().call_init(store).await,
            Bound::WorkloadPlain(b) => b.burrow_plugin_plugin().call_init(store).await,
            Bound::Router(b) => b.burrow_plugin_plugin().call_init(store).await,
        }
    }
}

/// What identifies a loaded version, for logs, metrics and the admin API.
#[derive(Debug, Clone)]
pub struct VersionInfo {
    pub name: String,
    pub kind: PluginKind,
    /// The config's `source` (e.g. `builtin:authorizer-static`).
    pub source: String,
    /// The file it was read from (`None`: embedded built-in).
    pub file: Option<std::path::PathBuf>,
    /// Full hex SHA-256 of the component.
    pub sha256: String,
    /// The manifest's `[plugin] version`, if it has one.
    pub version: Option<String>,
    /// Full hex SHA-256 of the slot's `config` table (its canonical JSON): a config
    /// change is a new version even when the component is the same.
    pub config_sha256: String,
    pub loaded_at: SystemTime,
    /// Workload plugins: the kind they serve.
    pub workload_kind: Option<String>,
    /// Workload plugins: whether they export the optional lifecycle hooks.
    pub lifecycle: bool,
    /// Test vectors the canary ran.
    pub tests_passed: usize,
    /// `authorizer office-hours@3f2a9c1b0d4e`.
    pub label: String,
}

impl VersionInfo {
    pub fn sha256_short(&self) -> &str {
        &self.sha256[..12.min(self.sha256.len())]
    }

    /// `3f2a9c1b0d4e` or, when the config differs from the one `other` ran with,
    /// `3f2a9c1b0d4e+config 9a8b7c6d5e4f`: what a swap log line shows for each side.
    pub fn describe_against(&self, other: &VersionInfo) -> String {
        if self.config_sha256 == other.config_sha256 {
            self.sha256_short().to_owned()
        } else {
            format!(
                "{}+config {}",
                self.sha256_short(),
                &self.config_sha256[..12.min(self.config_sha256.len())]
            )
        }
    }
}

/// Per-slot limits.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub call_timeout: Duration,
    pub init_timeout: Duration,
    pub max_memory_bytes: u64,
    pub fuel: Option<u64>,
    pub instances: InstancePolicy,
    pub warm_pool: usize,
    pub failure: FailurePolicy,
}

struct Warm {
    store: Store<CallState>,
    bound: Bound,
}

/// Which time limit a piece of guest work runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    /// A call (`call_timeout`).
    Call,
    /// Making a reusable instance (`init_timeout`).
    Init,
}

/// One loaded version of a plugin. Cheap to share; calls are independent.
pub(crate) struct Version {
    pub info: VersionInfo,
    pub limits: Limits,
    engine: Arc<PluginEngine>,
    pre: Pre,
    env: Arc<PluginEnv>,
    kv: kv::KvStore,
    http: Arc<http::OutboundPolicy>,
    permits: Semaphore,
    max_concurrent: usize,
    warm: Mutex<WarmPool<Warm>>,
    pub breaker: SharedBreaker,
    metrics: Option<PluginMetrics>,
    /// Authorizers whose agents the host can enumerate (the embedded static list): the
    /// ids they can ever admit. `None`: the plugin decides in code.
    pub listed_agents: Option<Arc<std::collections::HashSet<String>>>,
}

/// Everything needed to build a [`Version`] besides the compiled component.
pub(crate) struct VersionParts {
    pub info: VersionInfo,
    pub limits: Limits,
    pub max_concurrent: usize,
    pub env: Arc<PluginEnv>,
    pub kv: kv::KvStore,
    pub http: Arc<http::OutboundPolicy>,
    pub breaker: SharedBreaker,
    pub metrics: Option<PluginMetrics>,
}

impl Version {
    pub(crate) fn new(engine: Arc<PluginEngine>, pre: Pre, parts: VersionParts) -> Version {
        Version {
            info: parts.info,
            limits: parts.limits,
            engine,
            pre,
            env: parts.env,
            kv: parts.kv,
            http: parts.http,
            permits: Semaphore::new(parts.max_concurrent),
            max_concurrent: parts.max_concurrent,
            warm: Mutex::new(WarmPool::default()),
            breaker: parts.breaker,
            metrics: parts.metrics,
            listed_agents: None,
        }
    }

    pub(crate) fn has_lifecycle(&self) -> bool {
        self.pre.has_lifecycle()
    }

    pub(crate) fn set_metrics(&mut self, metrics: Option<PluginMetrics>) {
        self.metrics = metrics;
    }

    fn new_store(&self, clock: ClockSource) -> Store<CallState> {
        let state = CallState::new(
            self.env.clone(),
            clock,
            kv::KvCtx { store: self.kv.clone(), namespace: self.env.name.clone() },
            http::OutboundHooks::new(self.http.clone(), self.env.label.clone()),
            self.limits.max_memory_bytes,
        );
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_trap();
        store
    }

    /// The config key and value of `budget`'s limit.
    fn limit(&self, budget: Budget) -> (&'static str, Duration) {
        match budget {
            Budget::Call => ("call_timeout", self.limits.call_timeout),
            Budget::Init => ("init_timeout", self.limits.init_timeout),
        }
    }

    fn arm(&self, store: &mut Store<CallState>, budget: Budget) {
        store.set_epoch_deadline(PluginEngine::deadline_ticks(self.limit(budget).1));
        if self.engine.fuel {
            // With metering on engine-wide, a slot without a limit still needs fuel.
            let _ = store.set_fuel(self.limits.fuel.unwrap_or(u64::MAX));
        }
    }

    /// Makes an instance under `budget`'s epoch deadline (the caller bounds the wall
    /// time alike); `Budget::Init` makes one to reuse, initialised (`plugin.init`) first.
    async fn instantiate(&self, clock: ClockSource, budget: Budget) -> Result<Warm, PluginError> {
        let mut store = self.new_store(clock);
        self.arm(&mut store, budget);
        let bound = match self.pre.instantiate(&mut store).await {
            Ok(bound) => bound,
            Err(err) if is_guest_failure(&store, &err) => return Err(self.classify(&store, err, budget)),
            Err(err) => return Err(self.unavailable(format!("cannot instantiate: {err:#}"))),
        };
        if budget == Budget::Init {
            match bound.init(&mut store).await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Err(self.init_failed(reason)),
                Err(err) => return Err(self.classify(&store, err, budget)),
            }
        }
        Ok(Warm { store, bound })
    }

    /// Makes an initialised instance to reuse, within `init_timeout`.
    async fn make_reusable(&self, clock: ClockSource) -> Result<Warm, PluginError> {
        match tokio::time::timeout(self.limits.init_timeout, self.instantiate(clock, Budget::Init)).await {
            Ok(result) => result,
            Err(_) => Err(self.timeout(Budget::Init)),
        }
    }

    /// Instantiates once and calls `plugin.init`: the first step of every canary. The
    /// instance then waits in the pool for the first call.
    pub(crate) async fn canary_init(&self, clock: ClockSource) -> Result<(), PluginError> {
        let warm = self.make_reusable(clock).await?;
        self.put_back(Isolation::Shared, warm);
        Ok(())
    }

    /// The pool key of a call with `isolation`: `warm` instances serve anyone.
    fn pool_key(&self, isolation: Isolation) -> Isolation {
        match self.limits.instances {
            InstancePolicy::Warm => Isolation::Shared,
            _ => isolation,
        }
    }

    fn take_warm(&self, isolation: Isolation) -> Option<Warm> {
        if self.limits.instances == InstancePolicy::Fresh {
            return None;
        }
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).take(self.pool_key(isolation))
    }

    fn put_back(&self, isolation: Isolation, warm: Warm) {
        if self.limits.instances == InstancePolicy::Fresh {
            return;
        }
        let key = self.pool_key(isolation);
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).put(key, warm, self.limits.warm_pool);
    }

    /// Drops every warm instance (their pool slots return to the engine).
    pub(crate) fn drain_warm(&self) {
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).idle.clear();
    }

    /// Runs one call. `op` names the export for metrics; `body` calls it.
    pub(crate) async fn call<R, F>(
        &self,
        op: &'static str,
        clock: ClockSource,
        isolation: Isolation,
        body: F,
    ) -> Result<R, PluginError>
    where
        R: Send,
        F: for<'a> FnOnce(&'a Bound, &'a mut Store<CallState>) -> CallFuture<'a, R> + Send,
    {
        let started = Instant::now();
        let result = self.call_inner(clock, isolation, body).await;
        if let Some(metrics) = &self.metrics {
            metrics.call(&self.info.name, self.info.kind, op, started.elapsed(), result.as_ref().err());
        }
        result
    }

    async fn call_inner<R, F>(
        &self,
        clock: ClockSource,
        isolation: Isolation,
        body: F,
    ) -> Result<R, PluginError>
    where
        R: Send,
        F: for<'a> FnOnce(&'a Bound, &'a mut Store<CallState>) -> CallFuture<'a, R> + Send,
    {
        let admission = match self.breaker.admit(Instant::now()) {
            Ok(admission) => admission,
            Err(quarantined) => {
                return Err(PluginError::Quarantined {
                    plugin: self.info.label.clone(),
                    sha256: self.info.sha256_short().to_owned(),
                    until: quarantined.remaining(Instant::now()),
                })
            }
        };
        if admission.is_trial() {
            tracing::info!(plugin = %self.info.label, "quarantine over: trying the plugin with one call");
        }
        let mut deadline = tokio::time::Instant::now() + self.limits.call_timeout;
        let permit = match tokio::time::timeout_at(deadline, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                admission.abandon();
                return Err(PluginError::Busy {
                    plugin: self.info.label.clone(),
                    sha256: self.info.sha256_short().to_owned(),
                    limit: self.max_concurrent,
                });
            }
        };
        let instance = match self.take_warm(isolation) {
            Some(warm) => Ok(Some(warm)),
            None if self.limits.instances == InstancePolicy::Fresh => Ok(None),
            None => {
                let made = self.make_reusable(clock).await;
                // The call's own time starts now that it has an instance.
                deadline = tokio::time::Instant::now() + self.limits.call_timeout;
                made.map(Some)
            }
        };
        let run = async {
            let mut instance = match instance? {
                Some(warm) => warm,
                None => self.instantiate(clock, Budget::Call).await?,
            };
            instance.store.data_mut().begin_call(clock);
            self.arm(&mut instance.store, Budget::Call);
            let Warm { store, bound } = &mut instance;
            match body(bound, store).await {
                Ok(value) => Ok((value, instance)),
                Err(err) => Err(self.classify(&instance.store, err, Budget::Call)),
            }
        };
        let outcome = match tokio::time::timeout_at(deadline, run).await {
            Ok(outcome) => outcome,
            Err(_) => Err(self.timeout(Budget::Call)),
        };
        drop(permit);
        match outcome {
            Ok((value, instance)) => {
                if let Some(super::breaker::Transition::Recovered) = admission.succeeded() {
                    tracing::info!(plugin = %self.info.label, "plugin recovered: its trial call succeeded");
                    if let Some(metrics) = &self.metrics {
                        metrics.set_quarantined(&self.info.name, false);
                    }
                }
                self.put_back(isolation, instance);
                Ok(value)
            }
            Err(err) => {
                if err.is_guest_failure() {
                    if let Some(transition) = admission.failed(Instant::now(), &err.to_string()) {
                        tracing::error!(
                            plugin = %self.info.label,
                            "plugin quarantined after repeated failures ({transition}); last error: {err}"
                        );
                        if let Some(metrics) = &self.metrics {
                            metrics.set_quarantined(&self.info.name, true);
                        }
                    }
                } else {
                    admission.abandon();
                }
                Err(err)
            }
        }
    }
}

/// The outcome labels of `burrow_plugin_decisions_total`.
fn agent_label(outcome: &AgentAuthOutcome) -> &'static str {
    match outcome {
        AgentAuthOutcome::Accepted(_) => "accepted",
        AgentAuthOutcome::Rejected(_) => "rejected",
    }
}

fn user_label(outcome: &UserAuthOutcome) -> &'static str {
    match outcome {
        UserAuthOutcome::Authenticated(_) => "authenticated",
        UserAuthOutcome::Anonymous => "anonymous",
        UserAuthOutcome::Rejected(_) => "rejected",
    }
}

fn decision_label(decision: &Decision) -> &'static str {
    match decision {
        Decision::Allow { .. } => "allow",
        Decision::Deny { status: 401, .. } => "unauthorized",
        Decision::Deny { status: 403, .. } => "forbidden",
        Decision::Deny { .. } => "deny",
    }
}

/// The typed calls: each converts the request, calls the export, checks the answer and
/// counts it by outcome.
impl Version {
    fn decided(&self, op: &'static str, outcome: &'static str) {
        if let Some(metrics) = &self.metrics {
            metrics.decision(&self.info.name, op, outcome);
        }
    }

    pub(crate) async fn authenticate_agent(
        &self,
        req: &AgentHello,
        clock: ClockSource,
    ) -> Result<AgentAuthOutcome, PluginError> {
        let wit_req = wit::AgentHello::from(req);
        let out = self
            .call("authenticate-agent", clock, Isolation::of_agent_token(&req.token), move |b, s| {
                Box::pin(async move { b.authorizer()?.call_authenticate_agent(s, &wit_req).await })
            })
            .await?;
        let outcome = convert::agent_outcome(out).map_err(|e| self.invalid(e))?;
        self.decided("authenticate-agent", agent_label(&outcome));
        Ok(outcome)
    }

    pub(crate) async fn authenticate_user(
        &self,
        req: &UserAuthRequest,
        clock: ClockSource,
    ) -> Result<UserAuthOutcome, PluginError> {
        let wit_req = wit::UserAuthRequest::from(req);
        let out = self
            .call("authenticate-user", clock, Isolation::of_credential(&req.credential), move |b, s| {
                Box::pin(async move { b.authorizer()?.call_authenticate_user(s, &wit_req).await })
            })
            .await?;
        let outcome = convert::user_outcome(out).map_err(|e| self.invalid(e))?;
        self.decided("authenticate-user", user_label(&outcome));
        Ok(outcome)
    }

    pub(crate) async fn authorize(
        &self,
        req: &AuthorizeRequest,
        clock: ClockSource,
    ) -> Result<Decision, PluginError> {
        let isolation = req.principal.as_ref().map_or(Isolation::Shared, Isolation::of_principal);
        let wit_req = wit::AuthorizeRequest::from(req);
        let out = self
            .call("authorize", clock, isolation, move |b, s| {
                Box::pin(async move { b.authorizer()?.call_authorize(s, &wit_req).await })
            })
            .await?;
        let decision = convert::decision(out).map_err(|e| self.invalid(e))?;
        self.decided("authorize", decision_label(&decision));
        Ok(decision)
    }

    /// `authenticate-user` then, unless the credential was rejected, `authorize` with
    /// the request `make` builds from the principal: in ONE instance, so a fresh-instance
    /// plugin pays one instantiation per request. Its latency is recorded under op
    /// `authenticate-user+authorize`; each answer is counted under its own export.
    pub(crate) async fn authenticate_and_authorize<M>(
        &self,
        req: &UserAuthRequest,
        make: M,
        clock: ClockSource,
    ) -> Result<(UserAuthOutcome, Option<Decision>), PluginError>
    where
        M: FnOnce(Option<&Principal>) -> AuthorizeRequest + Send + 'static,
    {
        let wit_req = wit::UserAuthRequest::from(req);
        let (who, decision) = self
            .call(
                "authenticate-user+authorize",
                clock,
                Isolation::of_credential(&req.credential),
                move |b, s| {
                    Box::pin(async move {
                        let a = b.authorizer()?;
                        let who = a.call_authenticate_user(&mut *s, &wit_req).await?;
                        let principal = match &who {
                            wit::UserAuthOutcome::Rejected(_) => return Ok((who, None)),
                            wit::UserAuthOutcome::Anonymous => None,
                            wit::UserAuthOutcome::Authenticated(p) => Some(Principal::from(p.clone())),
                        };
                        let authz = wit::AuthorizeRequest::from(&make(principal.as_ref()));
                        let decision = a.call_authorize(&mut *s, &authz).await?;
                        Ok((who, Some(decision)))
                    })
                },
            )
            .await?;
        let who = convert::user_outcome(who).map_err(|e| self.invalid(e))?;
        let decision = decision.map(convert::decision).transpose().map_err(|e| self.invalid(e))?;
        self.decided("authenticate-user", user_label(&who));
        if let Some(decision) = &decision {
            self.decided("authorize", decision_label(decision));
        }
        Ok((who, decision))
    }

    pub(crate) async fn kind_name(&self, clock: ClockSource) -> Result<String, PluginError> {
        let kind = self
            .call("kind", clock, Isolation::Shared, |b, s| Box::pin(async move { b.workload_kind(s).await }))
            .await?;
        validate::kind(&kind).map_err(|e| self.invalid(e))?;
        Ok(kind)
    }

    pub(crate) async fn resolve(
        &self,
        req: &ResolveRequest,
        clock: ClockSource,
    ) -> Result<Option<Resolved>, PluginError> {
        let wit_req = wit::ResolveRequest::from(req);
        let out = self
            .call("resolve", clock, Isolation::Shared, move |b, s| {
                Box::pin(async move { b.workload_resolve(s, &wit_req).await })
            })
            .await?;
        let resolved = convert::resolved(out).map_err(|e| self.invalid(e))?;
        self.decided("resolve", if resolved.is_some() { "resolved" } else { "none" });
        Ok(resolved)
    }

    pub(crate) async fn expired(&self, req: &ExpiryRequest, clock: ClockSource) -> Result<bool, PluginError> {
        let wit_req = wit::ExpiryRequest::from(req);
        let expired = self
            .call("expired", clock, Isolation::Shared, move |b, s| {
                Box::pin(async move { b.workload_expired(s, &wit_req).await })
            })
            .await?;
        self.decided("expired", if expired { "expired" } else { "live" });
        Ok(expired)
    }

    /// Tells a workload plugin an agent came or went; a no-op for plugins without the
    /// optional lifecycle export.
    pub(crate) async fn agent_event(
        &self,
        connected: bool,
        event: &AgentEvent,
        clock: ClockSource,
    ) -> Result<(), PluginError> {
        if !self.has_lifecycle() {
            return Ok(());
        }
        let wit_event = wit::AgentEvent::from(event);
        let op = if connected { "agent-connected" } else { "agent-disconnected" };
        self.call(op, clock, Isolation::Shared, move |b, s| {
            Box::pin(async move {
                let Some(hooks) = b.lifecycle() else { return Ok(()) };
                match connected {
                    true => hooks.call_agent_connected(s, &wit_event).await,
                    false => hooks.call_agent_disconnected(s, &wit_event).await,
                }
            })
        })
        .await
    }

    pub(crate) async fn route(
        &self,
        req: &RouteRequest,
        clock: ClockSource,
    ) -> Result<Vec<usize>, PluginError> {
        let wit_req = wit::RouteRequest::from(req);
        let candidates = req.candidates.len();
        let out = self
            .call("route", clock, Isolation::Shared, move |b, s| {
                Box::pin(async move { b.router()?.call_route(s, &wit_req).await })
            })
            .await?;
        validate::route_order(&out, candidates).map_err(|e| self.invalid(e))
    }
}
