//! Test-only authorizers for hot-swap tests (never embedded in the host): two versions
//! with the same config and different decisions, so a test can tell which one answered.
//!
//! - `test-swap-v1` (`Swap<1>`) allows every request;
//! - `test-swap-v2` (`Swap<2>`) denies every request with 403 `denied by test-swap v2`.
//!
//! Both admit the agent `agent_id` whose token hashes to `agent_token_sha256`, exactly like
//! `test-misbehave`, and ignore a `mode` key, so the same slot config fits all three.
//!
//! ```toml
//! config = { agent_id = "a1", agent_token_sha256 = "<hex>" }
//! ```

use burrow_plugin_sdk::{
    AgentAuthOutcome, AgentHello, AgentIdentity, AuthorizeRequest, Authorizer, Credential, Decision, Host,
    Principal, UserAuthOutcome, UserAuthRequest,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    agent_id: String,
    agent_token_sha256: String,
    /// test-misbehave's key, accepted so one slot config serves every test plugin.
    #[serde(default)]
    #[allow(dead_code, reason = "read only to be accepted")]
    mode: Option<serde::de::IgnoredAny>,
}

/// The authorizer, version `V` (1 or 2).
pub struct Swap<const V: u8> {
    agent_id: String,
    agent_token_sha256: Vec<u8>,
}

impl<const V: u8> Authorizer for Swap<V> {
    fn init(host: &impl Host) -> Result<Self, String> {
        let config: Config = host.config().map_err(|err| format!("test-swap v{V}: {err}"))?;
        if config.agent_id.is_empty() {
            return Err(format!("test-swap v{V}: invalid config: agent_id must not be empty"));
        }
        let agent_token_sha256 = hex::decode(config.agent_token_sha256.trim())
            .map_err(|err| format!("test-swap v{V}: invalid config: agent_token_sha256: {err}"))?;
        Ok(Swap { agent_id: config.agent_id, agent_token_sha256 })
    }

    fn authenticate_agent(&self, _host: &impl Host, req: AgentHello) -> AgentAuthOutcome {
        let presented: [u8; 32] = Sha256::digest(req.token.as_bytes()).into();
        if !req.token.is_empty() && bool::from(presented[..].ct_eq(&self.agent_token_sha256)) {
            AgentAuthOutcome::Accepted(AgentIdentity {
                agent_id: self.agent_id.clone(),
                workload_kind: "workspace".into(),
                workload_id: self.agent_id.clone(),
                expires_at: None,
                labels: vec![("test-swap".into(), format!("v{V}"))],
            })
        } else {
            AgentAuthOutcome::Rejected(format!("agent token not recognised by test-swap v{V}"))
        }
    }

    fn authenticate_user(&self, _host: &impl Host, req: UserAuthRequest) -> UserAuthOutcome {
        match req.credential {
            Credential::None => UserAuthOutcome::Anonymous,
            _ => UserAuthOutcome::Authenticated(Principal::new("swap-user")),
        }
    }

    fn authorize(&self, _host: &impl Host, _req: AuthorizeRequest) -> Decision {
        match V {
            1 => Decision::allow(),
            _ => Decision::forbidden(format!("denied by test-swap v{V}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use burrow_plugin_sdk::{Action, MockHost, Target};

    use super::*;

    fn host() -> MockHost {
        let hash = hex::encode(Sha256::digest(b"token"));
        MockHost::new()
            .with_config(serde_json::json!({"agent_id": "a1", "agent_token_sha256": hash, "mode": "trap"}))
    }

    fn request() -> AuthorizeRequest {
        AuthorizeRequest {
            principal: None,
            target: Target {
                workload_kind: "workspace".into(),
                workload_id: "a1".into(),
                agent_id: "a1".into(),
                service: "web".into(),
            },
            action: Action::Http,
            client_addr: String::new(),
            host: String::new(),
            method: String::new(),
            path: String::new(),
            agent_labels: Vec::new(),
        }
    }

    #[test]
    fn v1_allows_v2_denies_naming_itself() {
        let host = host();
        assert_eq!(Swap::<1>::init(&host).unwrap().authorize(&host, request()), Decision::allow());
        match Swap::<2>::init(&host).unwrap().authorize(&host, request()) {
            Decision::Deny { status: 403, reason } => assert!(reason.contains("v2"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn both_admit_the_configured_agent() {
        let host = host();
        let hello = |token: &str| AgentHello { token: token.into(), ..AgentHello::default() };
        let v2 = Swap::<2>::init(&host).unwrap();
        assert!(matches!(v2.authenticate_agent(&host, hello("token")), AgentAuthOutcome::Accepted(_)));
        assert!(matches!(v2.authenticate_agent(&host, hello("other")), AgentAuthOutcome::Rejected(_)));
        assert!(matches!(v2.authenticate_agent(&host, hello("")), AgentAuthOutcome::Rejected(_)));
    }

    #[test]
    fn config_needs_the_agent() {
        let host = MockHost::new().with_config_json(r#"{"agent_id": "a1"}"#);
        assert!(Swap::<1>::init(&host).err().unwrap().contains("agent_token_sha256"));
    }
}
