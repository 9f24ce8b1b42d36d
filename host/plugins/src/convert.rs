//! Conversions between the contract's types (crate `burrow-plugin-contract`, re-exported
//! as `super::types`) and wasmtime's generated WIT types (`bindings.rs`), and the checks
//! on what a plugin answers.

use burrow_plugin_contract::validate;

use super::bindings::types as wit;
use super::types::*;

impl From<Action> for wit::Action {
    fn from(a: Action) -> Self {
        match a {
            Action::Http => wit::Action::Http,
            Action::Websocket => wit::Action::Websocket,
            Action::Upgrade => wit::Action::Upgrade,
            Action::SshSession => wit::Action::SshSession,
            Action::PortForward => wit::Action::PortForward,
            Action::Terminal => wit::Action::Terminal,
        }
    }
}

impl From<&AgentHello> for wit::AgentHello {
    fn from(h: &AgentHello) -> Self {
        wit::AgentHello {
            token: h.token.clone(),
            agent_version: h.agent_version.clone(),
            replica_id: h.replica_id.clone(),
            remote_addr: h.remote_addr.clone(),
            services: h.services.clone(),
            metadata: h.metadata.clone(),
        }
    }
}

impl From<&Credential> for wit::Credential {
    fn from(c: &Credential) -> Self {
        match c {
            Credential::None => wit::Credential::None,
            Credential::Bearer(t) => wit::Credential::Bearer(t.clone()),
            Credential::Cookie { name, value } => {
                wit::Credential::Cookie(wit::Cookie { name: name.clone(), value: value.clone() })
            }
            Credential::SshPublicKey { user, algorithm, key, fingerprint } => {
                wit::Credential::SshPublicKey(wit::SshPublicKey {
                    user: user.clone(),
                    algorithm: algorithm.clone(),
                    key: key.clone(),
                    fingerprint: fingerprint.clone(),
                })
            }
            Credential::SshPassword { user, password } => wit::Credential::SshPassword(wit::SshPassword {
                user: user.clone(),
                password: password.clone(),
            }),
        }
    }
}

impl From<&UserAuthRequest> for wit::UserAuthRequest {
    fn from(r: &UserAuthRequest) -> Self {
        wit::UserAuthRequest {
            credential: (&r.credential).into(),
            client_addr: r.client_addr.clone(),
            host: r.host.clone(),
            action: r.action.into(),
        }
    }
}

impl From<&Principal> for wit::Principal {
    fn from(p: &Principal) -> Self {
        wit::Principal { id: p.id.clone(), groups: p.groups.clone(), labels: p.labels.clone() }
    }
}

impl From<wit::Principal> for Principal {
    fn from(p: wit::Principal) -> Self {
        Principal { id: p.id, groups: p.groups, labels: p.labels }
    }
}

impl From<&Target> for wit::Target {
    fn from(t: &Target) -> Self {
        wit::Target {
            workload_kind: t.workload_kind.clone(),
            workload_id: t.workload_id.clone(),
            agent_id: t.agent_id.clone(),
            service: t.service.clone(),
        }
    }
}

impl From<&AuthorizeRequest> for wit::AuthorizeRequest {
    fn from(r: &AuthorizeRequest) -> Self {
        wit::AuthorizeRequest {
            principal: r.principal.as_ref().map(Into::into),
            target: (&r.target).into(),
            action: r.action.into(),
            client_addr: r.client_addr.clone(),
            host: r.host.clone(),
            method: r.method.clone(),
            path: r.path.clone(),
            agent_labels: r.agent_labels.clone(),
        }
    }
}

impl From<&ResolveRequest> for wit::ResolveRequest {
    fn from(r: &ResolveRequest) -> Self {
        wit::ResolveRequest {
            action: r.action.into(),
            host: r.host.clone(),
            path: r.path.clone(),
            method: r.method.clone(),
            ssh_user: r.ssh_user.clone(),
            port: r.port,
        }
    }
}

impl From<&ExpiryRequest> for wit::ExpiryRequest {
    fn from(r: &ExpiryRequest) -> Self {
        wit::ExpiryRequest {
            workload_id: r.workload_id.clone(),
            agent_id: r.agent_id.clone(),
            connected_at: r.connected_at,
            agent_labels: r.agent_labels.clone(),
        }
    }
}

impl From<&AgentEvent> for wit::AgentEvent {
    fn from(e: &AgentEvent) -> Self {
        wit::AgentEvent {
            agent_id: e.agent_id.clone(),
            workload_id: e.workload_id.clone(),
            replica_id: e.replica_id.clone(),
            host_replica: e.host_replica.clone(),
            remote_addr: e.remote_addr.clone(),
            at: e.at,
            agent_labels: e.agent_labels.clone(),
        }
    }
}

impl From<&RouteRequest> for wit::RouteRequest {
    fn from(r: &RouteRequest) -> Self {
        wit::RouteRequest {
            target: (&r.target).into(),
            session_key: r.session_key.clone(),
            candidates: r
                .candidates
                .iter()
                .map(|c| wit::Candidate {
                    replica_id: c.replica_id.clone(),
                    local: c.local,
                    load: c.load,
                    age_ms: c.age_ms,
                })
                .collect(),
        }
    }
}

// Answers: converted first, then judged by the contract's `validate` rules, the same
// functions the SDK's native manifest runner applies, so a vector that passes there is
// not refused here.

pub(crate) fn agent_outcome(o: wit::AgentAuthOutcome) -> Result<AgentAuthOutcome, String> {
    let outcome = match o {
        wit::AgentAuthOutcome::Accepted(id) => AgentAuthOutcome::Accepted(AgentIdentity {
            agent_id: id.agent_id,
            workload_kind: id.workload_kind,
            workload_id: id.workload_id,
            expires_at: id.expires_at,
            labels: id.labels,
        }),
        wit::AgentAuthOutcome::Rejected(reason) => AgentAuthOutcome::Rejected(reason),
    };
    validate::agent_auth_outcome(&outcome)?;
    Ok(outcome)
}

pub(crate) fn user_outcome(o: wit::UserAuthOutcome) -> Result<UserAuthOutcome, String> {
    let outcome = match o {
        wit::UserAuthOutcome::Authenticated(p) => UserAuthOutcome::Authenticated(p.into()),
        wit::UserAuthOutcome::Anonymous => UserAuthOutcome::Anonymous,
        wit::UserAuthOutcome::Rejected(reason) => UserAuthOutcome::Rejected(reason),
    };
    validate::user_auth_outcome(&outcome)?;
    Ok(outcome)
}

pub(crate) fn decision(d: wit::Decision) -> Result<Decision, String> {
    let decision = match d {
        wit::Decision::Allow(a) => Decision::Allow { strip_credentials: a.strip_credentials },
        wit::Decision::Deny(d) => Decision::Deny { status: d.status, reason: d.reason },
    };
    validate::decision(&decision)?;
    Ok(decision)
}

pub(crate) fn resolved(r: Option<wit::Resolved>) -> Result<Option<Resolved>, String> {
    let resolved =
        r.map(|r| Resolved { workload_id: r.workload_id, agent_id: r.agent_id, service: r.service });
    validate::resolved(&resolved)?;
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked() {
        let bad = wit::Decision::Deny(wit::Denied { status: 500, reason: "x".into() });
        assert!(decision(bad).is_err());
        assert!(resolved(Some(wit::Resolved {
            workload_id: "w".into(),
            agent_id: "".into(),
            service: "s".into()
        }))
        .is_err());
    }
}
