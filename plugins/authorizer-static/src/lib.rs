//! Burrow's built-in authorizer.
//!
//! Agent tokens and user tokens live in the host configuration as SHA-256 hashes only,
//! so a leaked config file does not leak credentials. Config (JSON from `host.config`):
//!
//! ```json
//! { "agents": [{"id": "demo", "token_sha256": "<hex>"}],
//!   "default_access": "deny",
//!   "workloads": [{"agent": "demo", "service": "*", "access": "token",
//!                  "users": [{"name": "alice", "token_sha256": "<hex>"}]}] }
//! ```

mod policy;

wit_bindgen::generate!({
    path: "../../wit",
    world: "authorizer-plugin",
});

use burrow::plugin::host;
use burrow::plugin::types::{
    AccessAllowed, AccessDecision, AccessDenied, AccessRequest, AgentAuthOutcome, AgentAuthRequest,
    AgentIdentity,
};
use exports::burrow::plugin::authorizer::Guest;
use policy::{Decision, Policy};

struct StaticAuthorizer;

/// Each call runs in a fresh instance, so the config is parsed per call; it is small.
fn policy() -> Policy {
    match Policy::from_json(&host::config()) {
        Ok(policy) => policy,
        // A trap makes the host fail closed and report the plugin with this message.
        Err(err) => panic!("authorizer-static: invalid config: {err}"),
    }
}

impl Guest for StaticAuthorizer {
    fn authenticate_agent(req: AgentAuthRequest) -> AgentAuthOutcome {
        match policy().authenticate_agent(&req.token) {
            Some(agent_id) => AgentAuthOutcome::Accepted(AgentIdentity { agent_id, labels: Vec::new() }),
            None => AgentAuthOutcome::Rejected("agent token not recognised".to_string()),
        }
    }

    fn authorize(req: AccessRequest) -> AccessDecision {
        match policy().authorize(&req.agent_id, &req.service, req.bearer_token.as_deref()) {
            Decision::Allow { principal, strip_credentials } => {
                AccessDecision::Allow(AccessAllowed { principal, strip_credentials })
            }
            Decision::Deny { status, reason } => {
                AccessDecision::Deny(AccessDenied { status, reason: reason.to_string() })
            }
        }
    }
}

export!(StaticAuthorizer);
