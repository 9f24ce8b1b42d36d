//! The plugin contract as plain Rust types: what the rest of the host passes to and gets
//! from plugins, independent of wasmtime's generated bindings (converted in
//! `convert.rs`). They are `serde` types too, because plugin manifests spell test
//! vectors in them (snake_case keys, externally tagged enums).

use std::fmt;

use serde::{Deserialize, Serialize};

/// `key = value` facts.
pub type Labels = Vec<(String, String)>;

/// What a user asks the host to carry to a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Http,
    #[serde(alias = "web-socket")]
    Websocket,
    Upgrade,
    SshSession,
    PortForward,
    Terminal,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Http => "http",
            Action::Websocket => "websocket",
            Action::Upgrade => "upgrade",
            Action::SshSession => "ssh-session",
            Action::PortForward => "port-forward",
            Action::Terminal => "terminal",
        }
    }
}

/// An agent asks to connect.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentHello {
    /// The agent's bearer token (masked in `Debug`).
    pub token: String,
    pub agent_version: String,
    pub replica_id: String,
    pub remote_addr: String,
    pub services: Vec<String>,
    pub metadata: Labels,
}

impl fmt::Debug for AgentHello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentHello")
            .field("token", &"<redacted>")
            .field("agent_version", &self.agent_version)
            .field("replica_id", &self.replica_id)
            .field("remote_addr", &self.remote_addr)
            .field("services", &self.services)
            .field("metadata", &self.metadata)
            .finish()
    }
}

/// Who an accepted agent is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentIdentity {
    pub agent_id: String,
    pub workload_kind: String,
    pub workload_id: String,
    /// Unix milliseconds.
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub labels: Labels,
}

/// The authorizer's verdict on an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentAuthOutcome {
    Accepted(AgentIdentity),
    Rejected(String),
}

/// What a user presented.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    #[default]
    None,
    Bearer(String),
    Cookie {
        name: String,
        value: String,
    },
    SshPublicKey {
        user: String,
        algorithm: String,
        key: Vec<u8>,
        fingerprint: String,
    },
    SshPassword {
        user: String,
        password: String,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::None => f.write_str("None"),
            Credential::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credential::Cookie { name, .. } => write!(f, "Cookie({name}=<redacted>)"),
            Credential::SshPublicKey { user, algorithm, fingerprint, .. } => {
                write!(f, "SshPublicKey({user}, {algorithm} {fingerprint})")
            }
            Credential::SshPassword { user, .. } => write!(f, "SshPassword({user}, <redacted>)"),
        }
    }
}

/// Asks who a user is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserAuthRequest {
    #[serde(default)]
    pub credential: Credential,
    #[serde(default)]
    pub client_addr: String,
    #[serde(default)]
    pub host: String,
    pub action: Action,
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    pub id: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub labels: Labels,
}

/// The authorizer's answer to "who is this?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserAuthOutcome {
    Authenticated(Principal),
    Anonymous,
    Rejected(String),
}

/// The workload a request is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub workload_kind: String,
    pub workload_id: String,
    pub agent_id: String,
    pub service: String,
}

/// Asks whether a user may do an action on a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    #[serde(default)]
    pub principal: Option<Principal>,
    pub target: Target,
    pub action: Action,
    #[serde(default)]
    pub client_addr: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub agent_labels: Labels,
}

/// The authorizer's verdict on a user's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow {
        /// Remove the user's credential before forwarding.
        strip_credentials: bool,
    },
    Deny {
        /// 401 or 403 (anything else is a plugin failure).
        status: u16,
        reason: String,
    },
}

/// A request that needs a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    pub action: Action,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub ssh_user: String,
    #[serde(default)]
    pub port: u16,
}

/// Where a request goes, as a workload plugin resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolved {
    pub workload_id: String,
    pub agent_id: String,
    pub service: String,
}

/// Asks whether a workload has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpiryRequest {
    pub workload_id: String,
    pub agent_id: String,
    /// Unix milliseconds.
    #[serde(default)]
    pub connected_at: u64,
    #[serde(default)]
    pub agent_labels: Labels,
}

/// An agent of a workload kind connected or went away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEvent {
    pub agent_id: String,
    pub workload_id: String,
    #[serde(default)]
    pub replica_id: String,
    #[serde(default)]
    pub host_replica: String,
    #[serde(default)]
    pub remote_addr: String,
    /// Unix milliseconds.
    #[serde(default)]
    pub at: u64,
    #[serde(default)]
    pub agent_labels: Labels,
}

/// One place a workload's request could go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCandidate {
    pub replica_id: String,
    #[serde(default)]
    pub local: bool,
    #[serde(default)]
    pub load: u32,
    #[serde(default)]
    pub age_ms: u64,
}

/// Asks the router to order candidates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRequest {
    pub target: Target,
    #[serde(default)]
    pub session_key: String,
    pub candidates: Vec<RouteCandidate>,
}
