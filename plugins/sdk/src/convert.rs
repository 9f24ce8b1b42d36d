//! Conversions between wit-bindgen's generated records and the SDK's own types.

use crate::bindings::imports::burrow::plugin::types as wit;
use crate::types::*;

impl From<wit::Action> for Action {
    fn from(action: wit::Action) -> Self {
        match action {
            wit::Action::Http => Action::Http,
            wit::Action::Websocket => Action::Websocket,
            wit::Action::Upgrade => Action::Upgrade,
            wit::Action::SshSession => Action::SshSession,
            wit::Action::PortForward => Action::PortForward,
            wit::Action::Terminal => Action::Terminal,
        }
    }
}

impl From<wit::AgentHello> for AgentHello {
    fn from(h: wit::AgentHello) -> Self {
        AgentHello {
            token: h.token,
            agent_version: h.agent_version,
            replica_id: h.replica_id,
            remote_addr: h.remote_addr,
            services: h.services,
            metadata: h.metadata,
        }
    }
}

impl From<AgentAuthOutcome> for wit::AgentAuthOutcome {
    fn from(outcome: AgentAuthOutcome) -> Self {
        match outcome {
            AgentAuthOutcome::Accepted(id) => wit::AgentAuthOutcome::Accepted(wit::AgentIdentity {
                agent_id: id.agent_id,
                workload_kind: id.workload_kind,
                workload_id: id.workload_id,
                expires_at: id.expires_at,
                labels: id.labels,
            }),
            AgentAuthOutcome::Rejected(reason) => wit::AgentAuthOutcome::Rejected(reason),
        }
    }
}

impl From<wit::Credential> for Credential {
    fn from(c: wit::Credential) -> Self {
        match c {
            wit::Credential::None => Credential::None,
            wit::Credential::Bearer(token) => Credential::Bearer(token),
            wit::Credential::Cookie(c) => Credential::Cookie { name: c.name, value: c.value },
            wit::Credential::SshPublicKey(k) => Credential::SshPublicKey {
                user: k.user,
                algorithm: k.algorithm,
                key: k.key,
                fingerprint: k.fingerprint,
            },
            wit::Credential::SshPassword(p) => Credential::SshPassword { user: p.user, password: p.password },
        }
    }
}

impl From<wit::UserAuthRequest> for UserAuthRequest {
    fn from(r: wit::UserAuthRequest) -> Self {
        UserAuthRequest {
            credential: r.credential.into(),
            client_addr: r.client_addr,
            host: r.host,
            action: r.action.into(),
        }
    }
}

impl From<wit::Principal> for Principal {
    fn from(p: wit::Principal) -> Self {
        Principal { id: p.id, groups: p.groups, labels: p.labels }
    }
}

impl From<Principal> for wit::Principal {
    fn from(p: Principal) -> Self {
        wit::Principal { id: p.id, groups: p.groups, labels: p.labels }
    }
}

impl From<UserAuthOutcome> for wit::UserAuthOutcome {
    fn from(outcome: UserAuthOutcome) -> Self {
        match outcome {
            UserAuthOutcome::Authenticated(p) => wit::UserAuthOutcome::Authenticated(p.into()),
            UserAuthOutcome::Anonymous => wit::UserAuthOutcome::Anonymous,
            UserAuthOutcome::Rejected(reason) => wit::UserAuthOutcome::Rejected(reason),
        }
    }
}

impl From<wit::Target> for Target {
    fn from(t: wit::Target) -> Self {
        Target {
            workload_kind: t.workload_kind,
            workload_id: t.workload_id,
            agent_id: t.agent_id,
            service: t.service,
        }
    }
}

impl From<wit::AuthorizeRequest> for AuthorizeRequest {
    fn from(r: wit::AuthorizeRequest) -> Self {
        AuthorizeRequest {
            principal: r.principal.map(Into::into),
            target: r.target.into(),
            action: r.action.into(),
            client_addr: r.client_addr,
            host: r.host,
            method: r.method,
            path: r.path,
            agent_labels: r.agent_labels,
        }
    }
}

impl From<Decision> for wit::Decision {
    fn from(d: Decision) -> Self {
        match d {
            Decision::Allow { strip_credentials } => wit::Decision::Allow(wit::Allowed { strip_credentials }),
            Decision::Deny { status, reason } => wit::Decision::Deny(wit::Denied { status, reason }),
        }
    }
}

impl From<wit::ResolveRequest> for ResolveRequest {
    fn from(r: wit::ResolveRequest) -> Self {
        ResolveRequest {
            action: r.action.into(),
            host: r.host,
            path: r.path,
            method: r.method,
            ssh_user: r.ssh_user,
            port: r.port,
        }
    }
}

impl From<Resolved> for wit::Resolved {
    fn from(r: Resolved) -> Self {
        wit::Resolved { workload_id: r.workload_id, agent_id: r.agent_id, service: r.service }
    }
}

impl From<wit::ExpiryRequest> for ExpiryRequest {
    fn from(r: wit::ExpiryRequest) -> Self {
        ExpiryRequest {
            workload_id: r.workload_id,
            agent_id: r.agent_id,
            connected_at: r.connected_at,
            agent_labels: r.agent_labels,
        }
    }
}

impl From<wit::AgentEvent> for AgentEvent {
    fn from(e: wit::AgentEvent) -> Self {
        AgentEvent {
            agent_id: e.agent_id,
            workload_id: e.workload_id,
            replica_id: e.replica_id,
            host_replica: e.host_replica,
            remote_addr: e.remote_addr,
            at: e.at,
            agent_labels: e.agent_labels,
        }
    }
}

impl From<wit::Candidate> for RouteCandidate {
    fn from(c: wit::Candidate) -> Self {
        RouteCandidate { replica_id: c.replica_id, local: c.local, load: c.load, age_ms: c.age_ms }
    }
}

impl From<wit::RouteRequest> for RouteRequest {
    fn from(r: wit::RouteRequest) -> Self {
        RouteRequest {
            target: r.target.into(),
            session_key: r.session_key,
            candidates: r.candidates.into_iter().map(Into::into).collect(),
        }
    }
}
