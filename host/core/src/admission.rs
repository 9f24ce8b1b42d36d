//! Admission: the steps every user connection passes before a byte reaches a workload,
//! whatever protocol brought it (HTTP, WebSocket, SSH, web terminal, port-forward).
//!
//! 1. The workload plugins say which workload the request names (404 if none does).
//! 2. A workload found ended is refused (410) without asking anyone else.
//! 3. One authorizer instance authenticates the credential and authorizes the action on
//!    that target (401/403), both calls in one instance so the pair costs one set-up.
//!
//! Each ingress turns its protocol into an [`AdmissionRequest`] and its refusals back
//! into its own words (an HTTP status page, an SSH auth failure); nothing here knows a
//! protocol. The result names the [`Target`] the ingress then hands to a
//! [`crate::dial::Dialer`].

use std::net::SocketAddr;
use std::sync::Arc;

use crate::sessions::AgentSessions;
use crate::workloads::EndedWorkloads;
use burrow_host_plugins::types::{
    Action, AuthorizeRequest, Credential, Decision, Principal, ResolveRequest, Target, UserAuthOutcome,
    UserAuthRequest,
};
use burrow_host_plugins::{PluginError, Plugins, UserVerdict};

/// What a user connection asks for, in no protocol's terms.
#[derive(Debug, Clone)]
pub struct AdmissionRequest {
    /// What the user wants to do.
    pub action: Action,
    /// The host name asked for (lower-case, no port); empty when the protocol has none.
    pub host: String,
    /// The SSH user name, which names the target of SSH sessions; empty for other protocols.
    pub ssh_user: String,
    /// The HTTP method; empty for other protocols.
    pub method: String,
    /// The HTTP path with its query; empty for other protocols.
    pub path: String,
    /// A port inside the workload the user names (port-forwards); 0 when none.
    pub port: u16,
    /// The user's credential (masked in `Debug`).
    pub credential: Credential,
    /// Who the user is when the host itself signed them in (browser sign-in with
    /// OpenID Connect): the authorizer is then asked only to authorize this principal.
    pub signed_in: Option<Principal>,
    /// The user's address.
    pub peer: SocketAddr,
    /// The request id, for logs.
    pub request_id: String,
}

/// A request the plugins let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The workload, agent and service to carry the connection to.
    pub target: Target,
    /// Who the user is; `None` for an anonymous user the authorizer let in.
    pub principal: Option<Principal>,
    /// The authorizer asks that the credential not reach the workload.
    pub strip_credentials: bool,
    /// Stable per user session, for routing policies that keep a user on one replica:
    /// the principal's id, or the client's address for anonymous users.
    pub session_key: String,
}

impl Admitted {
    /// The principal's id, or `anonymous`.
    pub fn principal_id(&self) -> &str {
        self.principal.as_ref().map_or("anonymous", |p| p.id.as_str())
    }

    /// The stream to open for this user's connection: to the admitted target, with its
    /// session key and principal (empty when nobody signed in).
    pub fn dial<'a>(
        &'a self,
        request_id: &'a str,
        wait: std::time::Duration,
        kind: burrow_proto::pb::DialKind,
    ) -> crate::dial::DialRequest<'a> {
        crate::dial::DialRequest {
            target: &self.target,
            request_id,
            wait,
            session_key: &self.session_key,
            kind,
            principal: self.principal.as_ref().map_or("", |p| p.id.as_str()),
        }
    }
}

/// Why a request was not admitted. Each ingress maps these to its protocol's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No workload plugin claims the host name or SSH user (404).
    #[error("no workload is served at {name}")]
    NoRoute {
        /// The host name or SSH user asked for.
        name: String,
    },
    /// The workload was found ended (a finished CI job, an expired terminal) (410).
    #[error("workload {workload_id:?} ({kind}) has ended")]
    WorkloadEnded { kind: String, workload_id: String },
    /// The credential was rejected, or the authorizer wants one (401).
    #[error("access denied: {reason}")]
    Unauthenticated { reason: String },
    /// The user is known but may not do this (403).
    #[error("access denied: {reason}")]
    Forbidden { reason: String },
    /// A plugin trapped, ran out of time or memory, or broke the contract (503, fail closed).
    #[error("the {stage} plugin failed: {message}")]
    Plugin { stage: &'static str, message: String },
}

/// The label the host sets on the agent of every workload a control plane created (the
/// workload lifecycle); agents cannot set `burrow.` labels themselves.
pub const MANAGED_LABEL: &str = "burrow.managed";

/// What a directory knows of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryAnswer {
    /// Created by a control plane and live: its agent's labels.
    Live(Vec<(String, String)>),
    /// Created by a control plane and over (terminated or expired).
    Ended,
    /// Not a control-plane workload (or the directory could not tell).
    Unknown,
}

/// A boxed future of a directory lookup.
pub type LabelsFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = DirectoryAnswer> + Send + 'a>>;

/// Where admission learns the labels of a control-plane workload whose agent has no
/// session on this replica (held elsewhere in the cluster, or not connected yet), so
/// every replica decides the same.
pub trait WorkloadDirectory: Send + Sync {
    /// What the directory knows of workload (kind, id).
    fn labels<'a>(&'a self, kind: &'a str, workload_id: &'a str) -> LabelsFuture<'a>;
}

/// A boxed future of an agent-labels lookup.
pub type AgentLabelsFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Vec<(String, String)>> + Send + 'a>>;

/// Where admission learns the labels of an agent that has no session on this replica
/// (held by another replica of the cluster), so a label-based policy decides the same on
/// every replica. Empty when nobody knows the agent.
pub trait AgentLabelSource: Send + Sync {
    /// The labels `agent_id` connected with.
    fn agent_labels<'a>(&'a self, agent_id: &'a str) -> AgentLabelsFuture<'a>;
}

/// The admission steps, over the plugins and the host's view of workloads and agents.
pub struct Admission {
    plugins: Arc<Plugins>,
    ended: Arc<EndedWorkloads>,
    sessions: Arc<AgentSessions>,
    directory: Option<Arc<dyn WorkloadDirectory>>,
    remote_labels: Option<Arc<dyn AgentLabelSource>>,
}

impl Admission {
    /// Admission over these parts.
    pub fn new(plugins: Arc<Plugins>, ended: Arc<EndedWorkloads>, sessions: Arc<AgentSessions>) -> Self {
        Self { plugins, ended, sessions, directory: None, remote_labels: None }
    }

    /// Admission that asks `source` for the labels of agents held by other replicas.
    pub fn with_remote_labels(mut self, source: Option<Arc<dyn AgentLabelSource>>) -> Self {
        self.remote_labels = source;
        self
    }

    /// Admission that also asks `directory` about control-plane workloads.
    pub fn with_directory(mut self, directory: Option<Arc<dyn WorkloadDirectory>>) -> Self {
        self.directory = directory;
        self
    }

    /// Runs the steps for one request.
    pub async fn admit(&self, request: AdmissionRequest) -> Result<Admitted, Refusal> {
        let request_id = request.request_id.clone();
        let action = request.action;
        let result = self.decide(request).await;
        if let Err(refusal) = &result {
            // The ingress tells the user in its own words; this line ties the plugin's
            // reason to the request id whatever the protocol.
            tracing::debug!(%request_id, action = action.as_str(), %refusal, "admission refused");
        }
        result
    }

    async fn decide(&self, request: AdmissionRequest) -> Result<Admitted, Refusal> {
        let AdmissionRequest {
            action,
            host,
            ssh_user,
            method,
            path,
            port,
            credential,
            signed_in,
            peer,
            request_id: _,
        } = request;
        let resolve = ResolveRequest {
            action,
            host: host.clone(),
            path: path.clone(),
            method: method.clone(),
            ssh_user: ssh_user.clone(),
            port,
        };
        let target = match self.plugins.resolve(&resolve).await {
            Ok(Some(target)) => target,
            Ok(None) => {
                return Err(Refusal::NoRoute { name: if ssh_user.is_empty() { host } else { ssh_user } })
            }
            Err(error) => return Err(Refusal::Plugin { stage: "workload", message: error.to_string() }),
        };
        if self.ended.contains(&target.workload_kind, &target.workload_id) {
            return Err(Refusal::WorkloadEnded {
                kind: target.workload_kind,
                workload_id: target.workload_id,
            });
        }

        // Canonical, so an IPv4 user over a dual-stack socket is the same user either way.
        let client_ip = peer.ip().to_canonical();
        let client_addr = SocketAddr::new(client_ip, peer.port()).to_string();
        let user =
            UserAuthRequest { credential, client_addr: client_addr.clone(), host: host.clone(), action };
        let host_name = host.clone();
        let mut agent_labels = self.sessions.agent_labels(&target.agent_id);
        let mut managed = agent_labels.iter().any(|(k, v)| k == MANAGED_LABEL && v == "true");
        if let (false, Some(directory)) = (managed, &self.directory) {
            match directory.labels(&target.workload_kind, &target.workload_id).await {
                DirectoryAnswer::Live(labels) => {
                    agent_labels = labels;
                    managed = true;
                }
                DirectoryAnswer::Ended => {
                    self.ended.mark(&target.workload_kind, &target.workload_id);
                    return Err(Refusal::WorkloadEnded {
                        kind: target.workload_kind,
                        workload_id: target.workload_id,
                    });
                }
                DirectoryAnswer::Unknown => {}
            }
        }
        // Not a control-plane workload, and its agent is not here: another replica holds it
        // and registered its labels, so this replica decides as that one would.
        if let (false, true, Some(source)) = (managed, agent_labels.is_empty(), &self.remote_labels) {
            if !self.sessions.holds_agent(&target.agent_id) {
                agent_labels = source.agent_labels(&target.agent_id).await;
            }
        }
        let authz_target = target.clone();
        let make = move |principal: Option<&Principal>| AuthorizeRequest {
            principal: principal.cloned(),
            target: authz_target,
            action,
            client_addr,
            host,
            method,
            path,
            agent_labels,
        };
        let plugin_failed =
            |error: PluginError| Refusal::Plugin { stage: "authorizer", message: error.to_string() };
        let verdict = match signed_in {
            // The host signed the user in: who they are is settled; only access is asked.
            Some(principal) => {
                let decision =
                    self.plugins.authorize(&make(Some(&principal))).await.map_err(plugin_failed)?;
                UserVerdict { who: UserAuthOutcome::Authenticated(principal), decision: Some(decision) }
            }
            None => self.plugins.authorize_user(&user, make).await.map_err(plugin_failed)?,
        };
        let principal = match verdict.who {
            UserAuthOutcome::Rejected(reason) => return Err(Refusal::Unauthenticated { reason }),
            UserAuthOutcome::Anonymous => None,
            UserAuthOutcome::Authenticated(p) => Some(p),
        };
        match verdict.decision {
            // An agent the agent list does not name can never connect: say so now
            // rather than wait `stream_wait` for it. Only admitted requests learn this,
            // so it tells no one which agents exist.
            Some(Decision::Allow { .. }) if !managed && self.plugins.agent_unlisted(&target.agent_id) => {
                Err(Refusal::NoRoute { name: if ssh_user.is_empty() { host_name } else { ssh_user } })
            }
            Some(Decision::Allow { strip_credentials }) => {
                let session_key = principal.as_ref().map_or_else(|| client_ip.to_string(), |p| p.id.clone());
                Ok(Admitted { target, principal, strip_credentials, session_key })
            }
            Some(Decision::Deny { status: 401, reason }) => Err(Refusal::Unauthenticated { reason }),
            Some(Decision::Deny { status: 403, reason }) => Err(Refusal::Forbidden { reason }),
            // The contract allows only 401 and 403; anything else is the plugin's bug and
            // fails closed like any other plugin failure.
            Some(Decision::Deny { status, .. }) => Err(Refusal::Plugin {
                stage: "authorizer",
                message: format!("denied with status {status}, but only 401 or 403 are allowed"),
            }),
            None => Err(Refusal::Plugin {
                stage: "authorizer",
                message: "the authorizer gave no decision".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Admission outcomes over the real built-in plugins (wasmtime, no sockets): which
    //! workload, which refusal, for each action and credential.

    use std::net::{IpAddr, Ipv6Addr};

    use sha2::{Digest, Sha256};

    use super::*;
    use burrow_host_plugins::{PluginsConfig, PluginsOptions};

    fn sha(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    /// Agents `demo` (alice and the `ops` group only) and `open` (anyone); users alice
    /// (`dev`) and bob (`ops`); workspaces at `<service>-<agent>.localhost` and SSH users
    /// named after the agent.
    async fn admission() -> (Admission, Arc<EndedWorkloads>) {
        let config: PluginsConfig = toml::from_str(&format!(
            r#"
            [authorizer]
            source = "builtin:authorizer-static"
            [authorizer.config]
            default_access = "deny"
            agents = [{{ id = "demo", token_sha256 = "{agent}" }}, {{ id = "open", token_sha256 = "{agent2}" }}]
            users = [
                {{ name = "alice", token_sha256 = "{alice}", groups = ["dev"] }},
                {{ name = "carol", token_sha256 = "{carol}", groups = ["dev"] }},
            ]
            workloads = [
                {{ agent = "demo", service = "*", access = "token", users = ["alice"] }},
                {{ agent = "open", service = "*", access = "open" }},
            ]
            [[workload]]
            source = "builtin:workload-workspace"
            config = {{ root_domains = ["localhost"], ssh_users = true }}
            "#,
            alice = sha("alice-token"),
            carol = sha("carol-token"),
            agent = sha("demo-agent-token"),
            agent2 = sha("open-agent-token"),
        ))
        .expect("test plugin config parses");
        admission_with(&config).await
    }

    async fn admission_with(config: &PluginsConfig) -> (Admission, Arc<EndedWorkloads>) {
        let plugins = Plugins::load(config, PluginsOptions::default()).await.expect("built-ins load");
        let ended = Arc::new(EndedWorkloads::new());
        (Admission::new(plugins, ended.clone(), Arc::new(AgentSessions::new())), ended)
    }

    fn request(action: Action, host: &str, ssh_user: &str, credential: Credential) -> AdmissionRequest {
        AdmissionRequest {
            action,
            host: host.into(),
            ssh_user: ssh_user.into(),
            method: if host.is_empty() { String::new() } else { "GET".into() },
            path: if host.is_empty() { String::new() } else { "/".into() },
            port: 0,
            credential,
            signed_in: None,
            // An IPv4 user seen through a dual-stack socket.
            peer: SocketAddr::new(IpAddr::V6(Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001])), 50000),
            request_id: "req-1".into(),
        }
    }

    fn alice() -> Credential {
        Credential::Bearer("alice-token".into())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn every_action_by_host_name_reaches_the_named_service_for_an_allowed_user() {
        let (admission, _) = admission().await;
        for action in
            [Action::Http, Action::Websocket, Action::Upgrade, Action::Terminal, Action::PortForward]
        {
            let admitted = admission
                .admit(request(action, "web-demo.localhost", "", alice()))
                .await
                .unwrap_or_else(|e| panic!("{action:?} refused: {e}"));
            assert_eq!(admitted.target.agent_id, "demo", "{action:?}");
            // A web terminal on any of the agent's names is a session, like SSH's.
            let service = if action == Action::Terminal { "ssh" } else { "web" };
            assert_eq!(admitted.target.service, service, "{action:?}");
            assert_eq!(admitted.target.workload_kind, "workspace", "{action:?}");
            assert_eq!(admitted.principal_id(), "alice");
            assert_eq!(admitted.session_key, "alice");
            assert!(admitted.strip_credentials, "a token rule strips the credential");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn ssh_sessions_and_port_forwards_are_named_by_their_ssh_user() {
        let (admission, _) = admission().await;
        let admitted = admission.admit(request(Action::SshSession, "", "demo", alice())).await.unwrap();
        assert_eq!((admitted.target.agent_id.as_str(), admitted.target.service.as_str()), ("demo", "ssh"));
        let admitted = admission.admit(request(Action::PortForward, "", "web+demo", alice())).await.unwrap();
        assert_eq!((admitted.target.agent_id.as_str(), admitted.target.service.as_str()), ("demo", "web"));
        // A name of no shape the workspace scheme knows.
        let refused = admission.admit(request(Action::SshSession, "", "a+b+c", alice())).await;
        assert_eq!(refused, Err(Refusal::NoRoute { name: "a+b+c".into() }));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unknown_host_name_is_no_route() {
        let (admission, _) = admission().await;
        let refused = admission.admit(request(Action::Http, "example.com", "", alice())).await;
        assert_eq!(refused, Err(Refusal::NoRoute { name: "example.com".into() }));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_admitted_request_for_an_agent_the_static_list_lacks_is_no_route() {
        let (admission, _) = admission().await;
        // `nope` could never connect, but users the authorizer refuses learn nothing of it.
        let refused = admission.admit(request(Action::Http, "web-nope.localhost", "", alice())).await;
        assert!(matches!(refused, Err(Refusal::Forbidden { .. })), "{refused:?}");
        // Users it admits get 404 at once instead of a wait for an agent that never comes.
        let (admission, _) = admission_with_open_default().await;
        let refused =
            admission.admit(request(Action::Http, "web-nope.localhost", "", Credential::None)).await;
        assert_eq!(refused, Err(Refusal::NoRoute { name: "web-nope.localhost".into() }));
    }

    async fn admission_with_open_default() -> (Admission, Arc<EndedWorkloads>) {
        let config: PluginsConfig = toml::from_str(&format!(
            r#"
            [authorizer]
            source = "builtin:authorizer-static"
            config = {{ default_access = "open", agents = [{{ id = "demo", token_sha256 = "{agent}" }}] }}
            "#,
            agent = sha("demo-agent-token"),
        ))
        .expect("test plugin config parses");
        admission_with(&config).await
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_ended_workload_is_refused_before_the_authorizer_is_asked() {
        let (admission, ended) = admission().await;
        ended.mark("workspace", "demo");
        // Even a credential the authorizer would reject gets 410, not 401.
        let refused = admission
            .admit(request(Action::Http, "web-demo.localhost", "", Credential::Bearer("junk".into())))
            .await;
        assert_eq!(
            refused,
            Err(Refusal::WorkloadEnded { kind: "workspace".into(), workload_id: "demo".into() })
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn credentials_decide_401_and_403() {
        let (admission, _) = admission().await;
        let unknown = admission
            .admit(request(Action::Http, "web-demo.localhost", "", Credential::Bearer("junk".into())))
            .await;
        assert!(matches!(unknown, Err(Refusal::Unauthenticated { .. })), "{unknown:?}");
        let anonymous =
            admission.admit(request(Action::Http, "web-demo.localhost", "", Credential::None)).await;
        assert!(matches!(anonymous, Err(Refusal::Unauthenticated { .. })), "{anonymous:?}");
        let carol = admission
            .admit(request(Action::SshSession, "", "demo", Credential::Bearer("carol-token".into())))
            .await;
        assert!(matches!(carol, Err(Refusal::Forbidden { .. })), "{carol:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_anonymous_user_of_an_open_workload_is_keyed_by_address() {
        let (admission, _) = admission().await;
        let admitted = admission
            .admit(request(Action::Websocket, "web-open.localhost", "", Credential::None))
            .await
            .unwrap();
        assert_eq!(admitted.principal, None);
        assert_eq!(admitted.principal_id(), "anonymous");
        // The canonical IPv4 form: the same user whichever socket family they came in on.
        assert_eq!(admitted.session_key, "10.0.0.1");
        assert!(!admitted.strip_credentials);
    }
}
