//! Burrow's built-in authorizer: agents, users and access rules from the host config.
//!
//! Credentials live in the config as SHA-256 hashes only (`printf %s "$TOKEN" | sha256sum`),
//! so a leaked config file does not leak them.
//!
//! ```toml
//! [plugins.authorizer.config]
//! default_access = "deny"              # workloads no rule names: "deny" (default) or "open"
//! unknown_credentials = "reject"       # an unrecognised credential: "reject" (401, default)
//!                                      # or "anonymous" (an open workload gets its own tokens)
//! session_cookie = "burrow_session"    # optional: this cookie's value is a user token
//!
//! [[plugins.authorizer.config.agents]]
//! id = "demo"
//! token_sha256 = "<hex>"
//! workload_kind = "workspace"          # default
//! workload_id = "demo"                 # default: the id
//! labels = { team = "infra" }          # optional
//! expires_at = 1767225600000           # optional, unix ms: rejected from then on
//!
//! [[plugins.authorizer.config.users]]
//! name = "alice"
//! token_sha256 = "<hex>"               # bearer token or session cookie value
//! groups = ["dev"]
//!
//! # ssh_password_tokens = true         # default: a user's token is also their SSH password
//!
//! [[plugins.authorizer.config.ssh_keys]]
//! user = "alice"                       # a name from `users`
//! fingerprint = "SHA256:..."           # as `ssh-keygen -l` prints it
//!
//! [[plugins.authorizer.config.workloads]]
//! agent = "demo"
//! service = "admin"                    # or "*"; an exact service beats "*"
//! access = "token"                     # "open": anyone; "token": the users/groups below
//! users = ["alice"]                    # names from `users`, or inline
//!                                      # { name = "bob", token_sha256 = "<hex>" }
//! groups = ["ops"]
//!
//! [[plugins.authorizer.config.workloads]]
//! agent = "*"                          # every agent whose labels include ALL of these
//! labels = { team = "infra", env = "prod" }   # required with "*"; optional with a named
//! service = "ssh"                      # agent (then the name and the labels must both hold)
//! access = "token"
//! groups = ["infra"]
//! ```
//!
//! Which rule decides a request, among the rules that apply to its agent (named, with any
//! `labels` held, or `"*"` with all its labels carried by the agent):
//! 1. rules naming the agent beat `agent = "*"` label rules;
//! 2. within each group, an exact service beats `service = "*"`;
//! 3. among several that are still equal (label rules, or named rules with different
//!    `labels`), the first in config order wins.
//!
//! With none, `default_access` decides. The labels are the agent's as the host reports them:
//! its own (`agents[].labels`, or what another agent authenticator gave it) and the host's
//! `burrow.` labels.
//!
//! Workloads a control plane created (`burrow-host workload create`) need no rule: their
//! owner, users and groups travel in labels the host sets on the agent (`burrow.owner`,
//! `burrow.users`, `burrow.groups`, which agents cannot set), and this plugin allows
//! exactly those, with credentials stripped. A `workloads` rule that applies to the agent
//! (naming it, or a label rule it matches) wins: an admin's rule replaces the managed access
//! for all the agent's services, and services no rule covers fall to `default_access`.
//!
//! A credential the plugin does not know is rejected (401); none at all is anonymous, which
//! only open workloads admit. Requests allowed by a `token` rule have the credential
//! stripped before they reach the workload.

mod policy;

use burrow_plugin_sdk::{
    export_authorizer, AgentAuthOutcome, AgentHello, AuthorizeRequest, Authorizer, Decision, Host,
    UserAuthOutcome, UserAuthRequest,
};
use policy::{AgentVerdict, Policy, UserVerdict, Verdict};

/// The plugin: the parsed config.
pub struct StaticAuthorizer {
    policy: Policy,
}

impl Authorizer for StaticAuthorizer {
    fn init(host: &impl Host) -> Result<Self, String> {
        let policy =
            Policy::from_json(&host.config_json()).map_err(|err| format!("invalid config: {err}"))?;
        Ok(StaticAuthorizer { policy })
    }

    fn authenticate_agent(&self, host: &impl Host, req: AgentHello) -> AgentAuthOutcome {
        match self.policy.authenticate_agent(&req.token, host.now()) {
            AgentVerdict::Accepted(identity) => AgentAuthOutcome::Accepted(identity),
            AgentVerdict::Rejected(reason) => AgentAuthOutcome::Rejected(reason.to_string()),
        }
    }

    fn authenticate_user(&self, _host: &impl Host, req: UserAuthRequest) -> UserAuthOutcome {
        match self.policy.authenticate_user(&req.credential) {
            UserVerdict::Authenticated(principal) => UserAuthOutcome::Authenticated(principal),
            UserVerdict::Anonymous => UserAuthOutcome::Anonymous,
            UserVerdict::Rejected(reason) => UserAuthOutcome::Rejected(reason.to_string()),
        }
    }

    fn authorize(&self, _host: &impl Host, req: AuthorizeRequest) -> Decision {
        let managed =
            self.policy.authorize_managed(&req.target.agent_id, &req.agent_labels, req.principal.as_ref());
        let verdict = managed.unwrap_or_else(|| {
            self.policy.authorize(
                &req.target.agent_id,
                &req.agent_labels,
                &req.target.service,
                req.principal.as_ref(),
            )
        });
        match verdict {
            Verdict::Allow { strip_credentials } => Decision::Allow { strip_credentials },
            Verdict::Deny { status, reason } => Decision::Deny { status, reason: reason.to_string() },
        }
    }
}

export_authorizer!(StaticAuthorizer);

#[cfg(test)]
mod tests {
    use burrow_plugin_sdk::{Action, Credential, MockHost, Principal, Target};
    use sha2::{Digest, Sha256};

    use super::*;

    fn hex_sha256(secret: &str) -> String {
        hex::encode(Sha256::digest(secret.as_bytes()))
    }

    fn host() -> MockHost {
        MockHost::new().with_config(serde_json::json!({
            "agents": [{"id": "a1", "token_sha256": hex_sha256("agent-token"), "expires_at": MockHost::DEFAULT_NOW + 10}],
            "users": [{"name": "alice", "token_sha256": hex_sha256("alice-token"), "groups": ["dev"]}],
            "workloads": [{"agent": "a1", "service": "*", "access": "token", "groups": ["dev"]}],
        }))
    }

    fn hello(token: &str) -> AgentHello {
        AgentHello { token: token.into(), ..AgentHello::default() }
    }

    fn authorize_request(principal: Option<Principal>) -> AuthorizeRequest {
        AuthorizeRequest {
            principal,
            target: Target {
                workload_kind: "workspace".into(),
                workload_id: "a1".into(),
                agent_id: "a1".into(),
                service: "web".into(),
            },
            action: Action::Http,
            client_addr: "127.0.0.1:1".into(),
            host: "web-a1.localhost".into(),
            method: "GET".into(),
            path: "/".into(),
            agent_labels: Vec::new(),
        }
    }

    #[test]
    fn agent_identity_and_expiry_follow_the_host_clock() {
        let host = host();
        let plugin = StaticAuthorizer::init(&host).unwrap();
        assert!(matches!(
            plugin.authenticate_agent(&host, hello("agent-token")),
            AgentAuthOutcome::Accepted(_)
        ));
        host.advance(10);
        assert_eq!(
            plugin.authenticate_agent(&host, hello("agent-token")),
            AgentAuthOutcome::Rejected(policy::EXPIRED_AGENT.into())
        );
        assert!(matches!(plugin.authenticate_agent(&host, hello("")), AgentAuthOutcome::Rejected(_)));
    }

    #[test]
    fn user_flow_through_the_trait() {
        let host = host();
        let plugin = StaticAuthorizer::init(&host).unwrap();
        let req = UserAuthRequest {
            credential: Credential::Bearer("alice-token".into()),
            client_addr: "127.0.0.1:1".into(),
            host: "web-a1.localhost".into(),
            action: Action::Http,
        };
        let UserAuthOutcome::Authenticated(alice) = plugin.authenticate_user(&host, req) else {
            panic!("alice is known")
        };
        assert_eq!(
            plugin.authorize(&host, authorize_request(Some(alice))),
            Decision::allow_stripping_credentials()
        );
        assert_eq!(
            plugin.authorize(&host, authorize_request(None)),
            Decision::unauthorized(policy::NEEDS_CREDENTIALS)
        );
    }

    #[test]
    fn label_rules_see_the_agent_labels_of_the_request() {
        let host = MockHost::new().with_config(serde_json::json!({
            "workloads": [{"agent": "*", "labels": {"team": "infra"}, "service": "web", "access": "open"}],
        }));
        let plugin = StaticAuthorizer::init(&host).unwrap();
        let mut req = authorize_request(None);
        assert!(!plugin.authorize(&host, req.clone()).is_allow(), "no labels: default deny");
        req.agent_labels = vec![("team".into(), "infra".into())];
        assert_eq!(plugin.authorize(&host, req), Decision::Allow { strip_credentials: false });
        let host = MockHost::new().with_config(serde_json::json!({
            "workloads": [{"agent": "*", "service": "web", "access": "open"}],
        }));
        let err = StaticAuthorizer::init(&host).err().expect("config refused");
        assert!(err.contains("workloads[0].labels: required when agent = \"*\""), "{err}");
    }

    #[test]
    fn invalid_config_fails_init_with_the_field() {
        let host = MockHost::new().with_config_json(r#"{"agents": [{"id": "", "token_sha256": "00"}]}"#);
        let err = StaticAuthorizer::init(&host).err().expect("config refused");
        assert!(err.contains("agents[0].id"), "{err}");
    }
}
