//! The contract's records (`wit/types.wit`) as plain Rust types.
//!
//! They mirror `types.wit` one to one. The host converts them to and from wasmtime's
//! generated records, the SDK to and from wit-bindgen's, so neither side's generated code
//! leaks into the rest of its crate; this one definition is what both sides agree on.
//!
//! They are `serde` types too, because plugin manifests spell test vectors in them:
//! snake_case keys, externally tagged enums in snake_case, [`Action`] in kebab-case. A
//! vector that passes natively (the SDK's runner) therefore means the same to the host.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `key = value` facts (agent labels, principal attributes), in order.
pub type Labels = Vec<(String, String)>;

/// The value of `key` in `labels` (the first one, if repeated).
pub fn label<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// How a user reaches a workload: what the host was asked to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// A plain HTTP request/response exchange (HTTP/1.1 or HTTP/2).
    Http,
    /// An HTTP/1.1 `Upgrade: websocket` request.
    #[serde(alias = "web-socket")]
    Websocket,
    /// Any other HTTP `Upgrade` (e.g. SPDY/3.1 for `kubectl exec`).
    Upgrade,
    /// An interactive SSH session.
    SshSession,
    /// A TCP port-forward (SSH `direct-tcpip` or the host's forward API).
    PortForward,
    /// A web terminal.
    Terminal,
}

impl Action {
    /// The WIT spelling: `http`, `websocket`, `upgrade`, `ssh-session`, `port-forward`,
    /// `terminal`.
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

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agent asks to join the host: its handshake plus connection facts.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentHello {
    /// The bearer token the agent presented. A credential: never log it (masked in
    /// `Debug`).
    pub token: String,
    /// The agent's self-reported software version.
    pub agent_version: String,
    /// Identifies one agent process when several share one identity.
    pub replica_id: String,
    /// Peer address of the agent connection, `ip:port`.
    pub remote_addr: String,
    /// Service names the agent offers.
    pub services: Vec<String>,
    /// Handshake metadata the agent sent (gRPC metadata, lowercased keys).
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

/// Who an accepted agent is and which workload it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentIdentity {
    /// Stable id that routing and access rules refer to. Non-empty.
    pub agent_id: String,
    /// The workload kind (`workspace`, `ci-job`, `terminal` or an admin's own): selects
    /// the workload plugin that receives this agent's lifecycle events.
    pub workload_kind: String,
    /// The workload this agent serves. Non-empty.
    pub workload_id: String,
    /// When the identity stops being valid (unix ms): the host disconnects the agent then.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Facts about the agent, handed back in [`AuthorizeRequest::agent_labels`] and
    /// [`ExpiryRequest::agent_labels`].
    #[serde(default)]
    pub labels: Labels,
}

/// The authorizer's verdict on an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentAuthOutcome {
    /// The agent may connect with this identity.
    Accepted(AgentIdentity),
    /// The reason is shown to the agent and logged; keep secrets out of it.
    Rejected(String),
}

/// What a user presented. The host extracts it; the authorizer judges it.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// No credential at all.
    #[default]
    None,
    /// `Authorization: Bearer <token>` (a credential: never log it).
    Bearer(String),
    /// A browser cookie the host found on the request.
    Cookie {
        /// The cookie's name.
        name: String,
        /// A credential: never log it.
        value: String,
    },
    /// An SSH public key the client has signed for.
    SshPublicKey {
        /// The SSH user name the client asked for.
        user: String,
        /// Key algorithm, e.g. `ssh-ed25519`.
        algorithm: String,
        /// The key in OpenSSH wire format.
        key: Vec<u8>,
        /// `SHA256:<base64>` as `ssh-keygen -l` prints it.
        fingerprint: String,
    },
    /// An SSH password login.
    SshPassword {
        /// The SSH user name.
        user: String,
        /// A credential: never log it.
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
    /// What the user presented.
    #[serde(default)]
    pub credential: Credential,
    /// Peer address of the user connection, `ip:port`.
    #[serde(default)]
    pub client_addr: String,
    /// Host name the user asked for, lowercased, without port (empty for SSH).
    #[serde(default)]
    pub host: String,
    /// What the user wants to do.
    pub action: Action,
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// Stable user id, shown in logs. Non-empty.
    pub id: String,
    /// Groups the user belongs to, for group-based rules.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Further facts about the user.
    #[serde(default)]
    pub labels: Labels,
}

impl Principal {
    /// A principal with no groups and no labels.
    pub fn new(id: impl Into<String>) -> Self {
        Self { id: id.into(), groups: Vec::new(), labels: Vec::new() }
    }

    /// Whether the principal belongs to `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// The authorizer's answer to "who is this?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserAuthOutcome {
    /// The credential identifies this principal.
    Authenticated(Principal),
    /// No usable credential: `authorize` decides whether anonymous access is allowed.
    Anonymous,
    /// The credential is wrong (bad token, expired cookie): the user gets 401 with this
    /// reason.
    Rejected(String),
}

/// The workload a request is for, as the workload plugin resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The workload kind that resolved the request.
    pub workload_kind: String,
    /// The workload's id.
    pub workload_id: String,
    /// The agent serving it.
    pub agent_id: String,
    /// The service on the agent (e.g. `ide`, `ssh`).
    pub service: String,
}

/// Asks whether a user may do `action` on `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    /// `None` for an anonymous user.
    #[serde(default)]
    pub principal: Option<Principal>,
    /// Where the request goes.
    pub target: Target,
    /// What the user wants to do.
    pub action: Action,
    /// Peer address of the user connection, `ip:port`.
    #[serde(default)]
    pub client_addr: String,
    /// Host name, lowercased, without port (empty for SSH).
    #[serde(default)]
    pub host: String,
    /// HTTP method (empty when not HTTP).
    #[serde(default)]
    pub method: String,
    /// HTTP path and query (empty when not HTTP).
    #[serde(default)]
    pub path: String,
    /// Labels of the agent serving the target, from its identity.
    #[serde(default)]
    pub agent_labels: Labels,
}

/// The authorizer's verdict on a user's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Let the request through.
    Allow {
        /// Remove the user's credential (the `Authorization` header or the session
        /// cookie) before the request reaches the workload.
        strip_credentials: bool,
    },
    /// Refuse it.
    Deny {
        /// 401 (no or unusable credentials) or 403 (credentials not allowed). Any other
        /// value is treated as a plugin failure by the host.
        status: u16,
        /// Shown to the user; keep secrets out of it.
        reason: String,
    },
}

impl Decision {
    /// Allow, forwarding the user's credential to the workload.
    pub fn allow() -> Self {
        Decision::Allow { strip_credentials: false }
    }

    /// Allow, removing the user's credential before the request reaches the workload.
    pub fn allow_stripping_credentials() -> Self {
        Decision::Allow { strip_credentials: true }
    }

    /// Deny with 401: the user has no usable credential.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Decision::Deny { status: 401, reason: reason.into() }
    }

    /// Deny with 403: the user is known but not allowed.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Decision::Deny { status: 403, reason: reason.into() }
    }

    /// Whether this is an `Allow`.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// A user request that needs a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// What the user wants to do.
    pub action: Action,
    /// Host name, lowercased, without port (empty for SSH).
    #[serde(default)]
    pub host: String,
    /// HTTP path and query (empty when not HTTP).
    #[serde(default)]
    pub path: String,
    /// HTTP method (empty when not HTTP).
    #[serde(default)]
    pub method: String,
    /// The SSH user name (empty when not SSH), e.g. `workspace-42` or `ci+job-7`.
    #[serde(default)]
    pub ssh_user: String,
    /// Port asked for by a port-forward (0 otherwise).
    #[serde(default)]
    pub port: u16,
}

impl ResolveRequest {
    /// For an SSH port-forward (`ssh -L 8080:web:80`, `ssh -W web:80`): the destination
    /// host when it names a service (`[a-z0-9_]+`, not `localhost`), which then replaces
    /// the service the SSH user routes to. `None` for anything else, so `-L
    /// 8080:localhost:80` reaches the SSH user's own service.
    pub fn forward_service(&self) -> Option<&str> {
        let host = self.host.as_str();
        let named = self.action == Action::PortForward
            && !self.ssh_user.is_empty()
            && !host.is_empty()
            && host != "localhost"
            && host.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !host.chars().all(|c| c.is_ascii_digit());
        named.then_some(host)
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolved {
    /// Non-empty.
    pub workload_id: String,
    /// Non-empty: the agent identity serving the workload.
    pub agent_id: String,
    /// Non-empty: the service on the agent.
    pub service: String,
}

/// Asks whether a workload has ended (a finished CI job, an expired workspace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpiryRequest {
    /// The workload's id.
    pub workload_id: String,
    /// The agent serving it.
    pub agent_id: String,
    /// When the agent's current session began (unix ms).
    #[serde(default)]
    pub connected_at: u64,
    /// Labels of the agent, from its identity.
    #[serde(default)]
    pub agent_labels: Labels,
}

/// An agent of this plugin's workload kind connected or went away (contract 1.1.0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEvent {
    /// The agent's id.
    pub agent_id: String,
    /// The workload it serves.
    pub workload_id: String,
    /// The agent process (several may share one identity).
    #[serde(default)]
    pub replica_id: String,
    /// The host replica holding the connection.
    #[serde(default)]
    pub host_replica: String,
    /// Peer address of the agent connection, `ip:port`.
    #[serde(default)]
    pub remote_addr: String,
    /// When it happened (unix ms).
    #[serde(default)]
    pub at: u64,
    /// Labels of the agent, from its identity.
    #[serde(default)]
    pub agent_labels: Labels,
}

/// One place a workload's request could go: a host replica holding streams of the
/// workload's agent (this replica when `local`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCandidate {
    /// The host replica's id.
    pub replica_id: String,
    /// Served by this replica's own streams, with no forwarding hop.
    #[serde(default)]
    pub local: bool,
    /// The replica's load (active tunnels) from its last heartbeat.
    #[serde(default)]
    pub load: u32,
    /// How long the replica has held the agent, in milliseconds.
    #[serde(default)]
    pub age_ms: u64,
}

/// Asks the router to order candidates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRequest {
    /// The workload the request is for.
    pub target: Target,
    /// Stable for one user session (the principal id, else the client address): hash it
    /// to make routing sticky.
    #[serde(default)]
    pub session_key: String,
    /// At least two: the host never asks when there is no choice.
    pub candidates: Vec<RouteCandidate>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_forward_destination_names_a_service_only_when_it_looks_like_one() {
        let req = |action: Action, host: &str, user: &str| ResolveRequest {
            action,
            host: host.into(),
            path: String::new(),
            method: String::new(),
            ssh_user: user.into(),
            port: 80,
        };
        assert_eq!(req(Action::PortForward, "web", "demo").forward_service(), Some("web"));
        assert_eq!(req(Action::PortForward, "localhost", "web+demo").forward_service(), None);
        assert_eq!(req(Action::PortForward, "10.0.0.1", "demo").forward_service(), None);
        assert_eq!(req(Action::PortForward, "8080", "demo").forward_service(), None);
        assert_eq!(req(Action::PortForward, "web", "").forward_service(), None, "not over SSH");
        assert_eq!(req(Action::SshSession, "web", "demo").forward_service(), None);
    }

    #[test]
    fn serde_shapes_match_the_host() {
        let outcome = UserAuthOutcome::Authenticated(Principal::new("alice"));
        assert_eq!(
            serde_json::to_value(&outcome).unwrap(),
            serde_json::json!({"authenticated": {"id": "alice", "groups": [], "labels": []}})
        );
        assert_eq!(serde_json::to_value(UserAuthOutcome::Anonymous).unwrap(), serde_json::json!("anonymous"));
        assert_eq!(
            serde_json::to_value(Decision::forbidden("no")).unwrap(),
            serde_json::json!({"deny": {"status": 403, "reason": "no"}})
        );
        let req: UserAuthRequest = serde_json::from_value(
            serde_json::json!({"credential": {"bearer": "t"}, "action": "ssh-session"}),
        )
        .unwrap();
        assert_eq!(req.credential, Credential::Bearer("t".into()));
        assert_eq!(req.action, Action::SshSession);
        let cookie: Credential =
            serde_json::from_value(serde_json::json!({"cookie": {"name": "s", "value": "v"}})).unwrap();
        assert_eq!(cookie, Credential::Cookie { name: "s".into(), value: "v".into() });
    }

    #[test]
    fn debug_masks_credentials() {
        let hello = AgentHello { token: "sekrit".into(), ..AgentHello::default() };
        assert!(!format!("{hello:?}").contains("sekrit"));
        let cred = Credential::Cookie { name: "s".into(), value: "sekrit".into() };
        assert!(!format!("{cred:?}").contains("sekrit"));
        let cred = Credential::SshPassword { user: "u".into(), password: "sekrit".into() };
        assert!(!format!("{cred:?}").contains("sekrit"));
    }
}
