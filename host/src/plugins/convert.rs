//! Conversions between the host's plugin types (`types.rs`) and the generated WIT
//! types (`bindings.rs`), and the checks on what a plugin answers.

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

/// A workload kind or id must be usable in logs, metrics and Redis keys.
fn check_id(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.len() > 256 || value.chars().any(|c| c.is_control()) {
        return Err(format!("{what} is longer than 256 bytes or holds control characters"));
    }
    Ok(())
}

pub(crate) fn check_kind_name(kind: &str) -> Result<(), String> {
    if kind.is_empty()
        || kind.len() > 64
        || !kind.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!("workload kind {kind:?} must be 1-64 lowercase letters, digits or '-'"));
    }
    Ok(())
}

pub(crate) fn agent_outcome(o: wit::AgentAuthOutcome) -> Result<AgentAuthOutcome, String> {
    match o {
        wit::AgentAuthOutcome::Accepted(id) => {
            check_id("agent-id", &id.agent_id)?;
            check_id("workload-id", &id.workload_id)?;
            check_kind_name(&id.workload_kind)?;
            Ok(AgentAuthOutcome::Accepted(AgentIdentity {
                agent_id: id.agent_id,
                workload_kind: id.workload_kind,
                workload_id: id.workload_id,
                expires_at: id.expires_at,
                labels: id.labels,
            }))
        }
        wit::AgentAuthOutcome::Rejected(reason) => Ok(AgentAuthOutcome::Rejected(reason)),
    }
}

pub(crate) fn user_outcome(o: wit::UserAuthOutcome) -> Result<UserAuthOutcome, String> {
    match o {
        wit::UserAuthOutcome::Authenticated(p) => {
            check_id("principal id", &p.id)?;
            Ok(UserAuthOutcome::Authenticated(p.into()))
        }
        wit::UserAuthOutcome::Anonymous => Ok(UserAuthOutcome::Anonymous),
        wit::UserAuthOutcome::Rejected(reason) => Ok(UserAuthOutcome::Rejected(reason)),
    }
}

pub(crate) fn decision(d: wit::Decision) -> Result<Decision, String> {
    match d {
        wit::Decision::Allow(a) => Ok(Decision::Allow { strip_credentials: a.strip_credentials }),
        wit::Decision::Deny(d) if d.status == 401 || d.status == 403 => {
            Ok(Decision::Deny { status: d.status, reason: d.reason })
        }
        wit::Decision::Deny(d) => Err(format!("denied with status {}, expected 401 or 403", d.status)),
    }
}

pub(crate) fn resolved(r: Option<wit::Resolved>) -> Result<Option<Resolved>, String> {
    let Some(r) = r else { return Ok(None) };
    check_id("workload-id", &r.workload_id)?;
    check_id("agent-id", &r.agent_id)?;
    check_id("service", &r.service)?;
    Ok(Some(Resolved { workload_id: r.workload_id, agent_id: r.agent_id, service: r.service }))
}

/// A router's answer must be a list of distinct indices into the candidates.
pub(crate) fn route_order(order: Vec<u32>, candidates: usize) -> Result<Vec<usize>, String> {
    let mut seen = vec![false; candidates];
    let mut out = Vec::with_capacity(order.len());
    for i in order {
        let i = i as usize;
        match seen.get_mut(i) {
            None => return Err(format!("index {i} is out of range (there are {candidates} candidates)")),
            Some(true) => return Err(format!("index {i} appears twice")),
            Some(seen) => *seen = true,
        }
        out.push(i);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_order_is_checked() {
        assert_eq!(route_order(vec![2, 0], 3), Ok(vec![2, 0]));
        assert!(route_order(vec![3], 3).unwrap_err().contains("out of range"));
        assert!(route_order(vec![1, 1], 3).unwrap_err().contains("twice"));
    }

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
        assert!(check_kind_name("ci-job").is_ok());
        assert!(check_kind_name("CI").is_err());
    }
}
