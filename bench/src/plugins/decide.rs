//! The decision the ingress makes for a request, asked of the native baseline or of the
//! plugins, and the requests it is made of.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use burrow_host::plugins::types::{
    Action, AuthorizeRequest, Credential, Decision, Principal, ResolveRequest, RouteCandidate, RouteRequest,
    Target, UserAuthOutcome, UserAuthRequest,
};
use burrow_host::plugins::Plugins;
use burrow_tests::AGENT;

use super::native::Native;
use super::{SERVICE, USER, USER_TOKEN};
use crate::HOST;

/// Who makes the decision.
#[derive(Clone)]
pub(super) enum Decider {
    Native(Arc<Native>),
    Plugin(Arc<Plugins>),
}

/// One user request as the ingress sees it.
pub(super) struct Input {
    pub(super) host: String,
    pub(super) path: String,
    pub(super) method: String,
    pub(super) client_addr: String,
    pub(super) token: String,
}

impl Input {
    pub(super) fn new() -> Input {
        Input {
            host: HOST.into(),
            path: "/hello".into(),
            method: "GET".into(),
            client_addr: "127.0.0.1:50000".into(),
            token: USER_TOKEN.into(),
        }
    }
}

/// How long one decision's two host calls took.
pub(super) struct CallTimes {
    pub(super) resolve: Duration,
    pub(super) authorize: Duration,
}

impl Decider {
    /// The ingress's decision for `input`, built the way `admit` builds it; fails unless
    /// the user is let through with the credential stripped.
    pub(super) async fn decide(&self, input: &Input) -> anyhow::Result<CallTimes> {
        let resolve = ResolveRequest {
            action: Action::Http,
            host: input.host.clone(),
            path: input.path.clone(),
            method: input.method.clone(),
            ssh_user: String::new(),
            port: 0,
        };
        let started = Instant::now();
        let target = match self {
            Decider::Native(n) => n.resolve(&resolve),
            Decider::Plugin(p) => p.resolve(&resolve).await?,
        };
        let resolve_time = started.elapsed();
        let target = target.context("no workload claimed the host name")?;
        ensure!(target.agent_id == AGENT && target.service == SERVICE, "resolved to {target:?}");

        let user = UserAuthRequest {
            credential: Credential::Bearer(input.token.clone()),
            client_addr: input.client_addr.clone(),
            host: input.host.clone(),
            action: Action::Http,
        };
        let (client_addr, host, method, path) =
            (input.client_addr.clone(), input.host.clone(), input.method.clone(), input.path.clone());
        let make = move |principal: Option<&Principal>| AuthorizeRequest {
            principal: principal.cloned(),
            target,
            action: Action::Http,
            client_addr,
            host,
            method,
            path,
            agent_labels: Vec::new(),
        };
        let started = Instant::now();
        let (who, decision) = match self {
            Decider::Native(n) => n.authorize_user(&user, make),
            Decider::Plugin(p) => {
                let verdict = p.authorize_user(&user, make).await?;
                (verdict.who, verdict.decision)
            }
        };
        let authorize_time = started.elapsed();
        ensure!(matches!(&who, UserAuthOutcome::Authenticated(p) if p.id == USER), "user outcome {who:?}");
        ensure!(decision == Some(Decision::Allow { strip_credentials: true }), "decision {decision:?}");
        Ok(CallTimes { resolve: resolve_time, authorize: authorize_time })
    }

    /// One router call; fails unless the order is local, then least loaded.
    pub(super) async fn route(&self, req: &RouteRequest) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let order = match self {
            Decider::Native(n) => n.route(req),
            Decider::Plugin(p) => p.try_route(req).await?,
        };
        let elapsed = started.elapsed();
        ensure!(order == [2, 1, 0], "router order {order:?}");
        Ok(elapsed)
    }
}

/// The authorizer's two exports on their own, each a host call (and, fresh, an instance)
/// of its own: what `authorize_user` costs per guest call.
impl Decider {
    pub(super) async fn authenticate_user(&self, req: &UserAuthRequest) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let who = match self {
            Decider::Native(n) => n.authenticate_user(req),
            Decider::Plugin(p) => p.authenticate_user(req).await?,
        };
        let elapsed = started.elapsed();
        ensure!(matches!(&who, UserAuthOutcome::Authenticated(p) if p.id == USER), "user outcome {who:?}");
        Ok(elapsed)
    }

    pub(super) async fn authorize(&self, req: &AuthorizeRequest) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let decision = match self {
            Decider::Native(n) => n.authorize(req),
            Decider::Plugin(p) => p.authorize(req).await?,
        };
        let elapsed = started.elapsed();
        ensure!(decision == Decision::Allow { strip_credentials: true }, "decision {decision:?}");
        Ok(elapsed)
    }
}

pub(super) fn target() -> Target {
    Target {
        workload_kind: "workspace".into(),
        workload_id: AGENT.into(),
        agent_id: AGENT.into(),
        service: SERVICE.into(),
    }
}

pub(super) fn user_request() -> UserAuthRequest {
    UserAuthRequest {
        credential: Credential::Bearer(USER_TOKEN.into()),
        client_addr: "127.0.0.1:50000".into(),
        host: HOST.into(),
        action: Action::Http,
    }
}

/// What the ingress asks about `principal` (`None`: anonymous).
pub(super) fn authorize_request(principal: Option<&Principal>) -> AuthorizeRequest {
    AuthorizeRequest {
        principal: principal.cloned(),
        target: target(),
        action: Action::Http,
        client_addr: "127.0.0.1:50000".into(),
        host: HOST.into(),
        method: "GET".into(),
        path: "/hello".into(),
        agent_labels: Vec::new(),
    }
}

pub(super) fn route_request() -> RouteRequest {
    let candidate = |id: &str, local: bool, load: u32, age_ms: u64| RouteCandidate {
        replica_id: id.into(),
        local,
        load,
        age_ms,
    };
    RouteRequest {
        target: target(),
        session_key: String::new(),
        candidates: vec![
            candidate("r1", false, 7, 60_000),
            candidate("r2", false, 3, 30_000),
            candidate("r0", true, 9, 5_000),
        ],
    }
}
