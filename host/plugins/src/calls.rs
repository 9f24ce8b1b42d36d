//! The front end: what requests call. Each call takes the slot's current version (a
//! clone of its `Arc`, so a swap meanwhile does not disturb it) and applies the kind's
//! failure policy: authorizers fail closed, a workload `closed` or `skip`, a router
//! falls back to the built-in policy (`None`).

use std::sync::Arc;

use super::config::FailurePolicy;
use super::instance::Version;
use super::manager::Plugins;
use super::types::*;
use super::PluginError;

/// Who a user is and what the authorizer decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserVerdict {
    pub who: UserAuthOutcome,
    /// `None` when the credential was rejected (`authorize` is not asked).
    pub decision: Option<Decision>,
}

impl Plugins {
    /// Asks the agent authenticator (`[plugins.agents]`, else the authorizer) whether an
    /// agent may connect. An error means "refuse": authorizers fail closed.
    pub async fn authenticate_agent(&self, hello: &AgentHello) -> Result<AgentAuthOutcome, PluginError> {
        let version = self.active.load().agent_authenticator().current();
        version.authenticate_agent(hello, self.clock()).await
    }

    /// Which agent authenticator version answers now (`sha256/config_sha256`): sessions
    /// it did not accept are asked again after a swap.
    pub fn agent_authenticator_version(&self) -> String {
        let version = self.active.load().agent_authenticator().current();
        format!("{}/{}", version.info.sha256, version.info.config_sha256)
    }

    /// Whether `agent_id` can never connect: true only when the agent authenticator
    /// lists its agents in config (the built-in static list) and this id is not among
    /// them. Any other authenticator decides in code, so an agent not seen yet may
    /// still come: false.
    pub fn agent_unlisted(&self, agent_id: &str) -> bool {
        let version = self.active.load().agent_authenticator().current();
        version.listed_agents.as_ref().is_some_and(|ids| !ids.contains(agent_id))
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
}
