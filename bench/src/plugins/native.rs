//! The built-in plugins' request-path logic on native types: the baseline the wasm paths
//! are measured against.

use burrow_host::plugins::types::{
    Action, AuthorizeRequest, Credential, Decision, Principal, ResolveRequest, RouteCandidate, RouteRequest,
    Target, UserAuthOutcome, UserAuthRequest,
};
use burrow_plugin_sdk as sdk;

use super::static_policy::{Policy, UserVerdict, Verdict};
use super::workspace_scheme::{Route, Scheme};

/// The three built-ins' request-path logic with their configs parsed once (what a
/// warm instance holds).
pub struct Native {
    policy: Policy,
    scheme: Scheme,
}

impl Native {
    pub fn new(authorizer_json: &str, workload_json: &str) -> Result<Native, String> {
        Ok(Native { policy: parse_policy(authorizer_json)?, scheme: parse_scheme(workload_json)? })
    }

    /// `Workspace::resolve`, answered as `Plugins::resolve` answers (with the kind).
    pub fn resolve(&self, req: &ResolveRequest) -> Option<Target> {
        let req = sdk::ResolveRequest {
            action: action(req.action),
            host: req.host.clone(),
            path: req.path.clone(),
            method: req.method.clone(),
            ssh_user: req.ssh_user.clone(),
            port: req.port,
        };
        let route = if req.ssh_user.is_empty() {
            self.scheme.route_host(&req.host)?
        } else {
            self.scheme.route_ssh_user(&req.ssh_user)?
        };
        let Route { service, agent } = route;
        let resolved = sdk::Resolved {
            workload_id: agent.to_string(),
            agent_id: agent.to_string(),
            service: service.to_string(),
        };
        Some(Target {
            workload_kind: "workspace".to_string(),
            workload_id: resolved.workload_id,
            agent_id: resolved.agent_id,
            service: resolved.service,
        })
    }

    /// `StaticAuthorizer::authenticate_user`.
    pub fn authenticate_user(&self, req: &UserAuthRequest) -> UserAuthOutcome {
        let req = sdk::UserAuthRequest {
            credential: credential(&req.credential),
            client_addr: req.client_addr.clone(),
            host: req.host.clone(),
            action: action(req.action),
        };
        match self.policy.authenticate_user(&req.credential) {
            UserVerdict::Authenticated(p) => {
                UserAuthOutcome::Authenticated(Principal { id: p.id, groups: p.groups, labels: p.labels })
            }
            UserVerdict::Anonymous => UserAuthOutcome::Anonymous,
            UserVerdict::Rejected(reason) => UserAuthOutcome::Rejected(reason.to_string()),
        }
    }

    /// `StaticAuthorizer::authorize`.
    pub fn authorize(&self, req: &AuthorizeRequest) -> Decision {
        let req = sdk::AuthorizeRequest {
            principal: req.principal.as_ref().map(|p| sdk::Principal {
                id: p.id.clone(),
                groups: p.groups.clone(),
                labels: p.labels.clone(),
            }),
            target: sdk::Target {
                workload_kind: req.target.workload_kind.clone(),
                workload_id: req.target.workload_id.clone(),
                agent_id: req.target.agent_id.clone(),
                service: req.target.service.clone(),
            },
            action: action(req.action),
            client_addr: req.client_addr.clone(),
            host: req.host.clone(),
            method: req.method.clone(),
            path: req.path.clone(),
            agent_labels: req.agent_labels.clone(),
        };
        let (agent, labels, service) = (&req.target.agent_id, &req.agent_labels, &req.target.service);
        match self.policy.authorize(agent, labels, service, req.principal.as_ref()) {
            Verdict::Allow { strip_credentials } => Decision::Allow { strip_credentials },
            Verdict::Deny { status, reason } => Decision::Deny { status, reason: reason.to_string() },
        }
    }

    /// [`Self::authenticate_user`] then, unless the credential was rejected,
    /// [`Self::authorize`] with the request `make` builds: what
    /// `Plugins::authorize_user` runs in one instance.
    pub fn authorize_user(
        &self,
        req: &UserAuthRequest,
        make: impl FnOnce(Option<&Principal>) -> AuthorizeRequest,
    ) -> (UserAuthOutcome, Option<Decision>) {
        let who = self.authenticate_user(req);
        let principal = match &who {
            UserAuthOutcome::Rejected(_) => return (who, None),
            UserAuthOutcome::Anonymous => None,
            UserAuthOutcome::Authenticated(p) => Some(p),
        };
        let decision = self.authorize(&make(principal));
        (who, Some(decision))
    }

    /// `PreferLocal::route` without `sticky` (the config measured).
    pub fn route(&self, req: &RouteRequest) -> Vec<usize> {
        let req = sdk::RouteRequest {
            target: sdk::Target {
                workload_kind: req.target.workload_kind.clone(),
                workload_id: req.target.workload_id.clone(),
                agent_id: req.target.agent_id.clone(),
                service: req.target.service.clone(),
            },
            session_key: req.session_key.clone(),
            candidates: req.candidates.iter().map(candidate).collect(),
        };
        preference_order(&req.candidates).into_iter().map(|i| i as usize).collect()
    }
}

/// authorizer-static's `init` minus the SDK call that fetches the config.
pub fn parse_policy(json: &str) -> Result<Policy, String> {
    Policy::from_json(json).map_err(|err| format!("authorizer-static config: {err}"))
}

/// workload-workspace's `init` minus the SDK call that fetches the config.
pub fn parse_scheme(json: &str) -> Result<Scheme, String> {
    Scheme::from_json(json).map_err(|err| format!("workload-workspace config: {err}"))
}

/// A copy of `preference_order` in plugins/router-prefer-local/src/lib.rs. That file
/// cannot be included like the others: it also expands `export_router!`, the
/// component's entry points, which have no place in a native binary.
fn preference_order(candidates: &[sdk::RouteCandidate]) -> Vec<u32> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| {
        let c = &candidates[i];
        (std::cmp::Reverse(c.local), c.load, std::cmp::Reverse(c.age_ms), c.replica_id.as_str())
    });
    order.into_iter().map(|i| i as u32).collect()
}

fn candidate(c: &RouteCandidate) -> sdk::RouteCandidate {
    sdk::RouteCandidate { replica_id: c.replica_id.clone(), local: c.local, load: c.load, age_ms: c.age_ms }
}

fn action(a: Action) -> sdk::Action {
    match a {
        Action::Http => sdk::Action::Http,
        Action::Websocket => sdk::Action::Websocket,
        Action::Upgrade => sdk::Action::Upgrade,
        Action::SshSession => sdk::Action::SshSession,
        Action::PortForward => sdk::Action::PortForward,
        Action::Terminal => sdk::Action::Terminal,
    }
}

fn credential(c: &Credential) -> sdk::Credential {
    match c {
        Credential::None => sdk::Credential::None,
        Credential::Bearer(token) => sdk::Credential::Bearer(token.clone()),
        Credential::Cookie { name, value } => {
            sdk::Credential::Cookie { name: name.clone(), value: value.clone() }
        }
        Credential::SshPublicKey { user, algorithm, key, fingerprint } => sdk::Credential::SshPublicKey {
            user: user.clone(),
            algorithm: algorithm.clone(),
            key: key.clone(),
            fingerprint: fingerprint.clone(),
        },
        Credential::SshPassword { user, password } => {
            sdk::Credential::SshPassword { user: user.clone(), password: password.clone() }
        }
    }
}
