//! Test-only authorizer (never embedded in the host) exercising the host imports that
//! reach outside the instance.
//!
//! - `mode = "http"` (default): `authenticate-user` sends `GET url` with the user's bearer
//!   token as `Authorization: Bearer <token>` (no header without one). A 200 answer's
//!   trimmed body is the principal id; anything else is `rejected` with the status or the
//!   error text (e.g. `request denied by the host ...` for a host off the allowlist).
//! - `mode = "kv"`: `authenticate-user` adds 1 to the key-value counter `calls` and to a
//!   counter inside the instance, and authenticates `calls=<kv count>;instance=<instance
//!   count>`: fresh instances always say `instance=1`, a warm one counts up.
//! - `mode = "remember"`: a deliberately leaky plugin. `authenticate-user` keeps every
//!   bearer token it sees in the instance and authenticates `me=<token>;seen=<the tokens
//!   this instance saw before, comma-separated, or ->`: if an instance ever served two
//!   users, the second one's principal shows the first one's token.
//!
//! `authorize` allows authenticated users (stripping their credential) and answers 401 to
//! anonymous ones. Agents are admitted like `test-misbehave`: `agent_id` (default
//! `test-http`) with optional `agent_token_sha256`.
//!
//! ```toml
//! config = { url = "http://127.0.0.1:8000/whoami", timeout_ms = 1000 }
//! ```

use std::cell::Cell;
use std::time::Duration;

use burrow_plugin_sdk::{
    export_authorizer, AgentAuthOutcome, AgentHello, AgentIdentity, AuthorizeRequest, Authorizer, Credential,
    Decision, Host, HttpRequest, Principal, UserAuthOutcome, UserAuthRequest,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The key-value counter of `kv` mode.
pub const CALLS_KEY: &str = "calls";

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Http,
    Kv,
    Remember,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default = "default_agent_id")]
    agent_id: String,
    #[serde(default)]
    agent_token_sha256: Option<String>,
}

fn default_agent_id() -> String {
    "test-http".to_string()
}

/// The plugin: its config and the per-instance call counter.
pub struct TestHttp {
    mode: Mode,
    url: String,
    timeout: Option<Duration>,
    agent_id: String,
    agent_token_sha256: Option<Vec<u8>>,
    instance_calls: Cell<u64>,
    /// `remember` mode: the bearer tokens this instance has seen.
    seen: std::cell::RefCell<Vec<String>>,
}

impl TestHttp {
    fn ask(&self, host: &impl Host, credential: &Credential) -> UserAuthOutcome {
        let mut request = HttpRequest::get(&self.url);
        if let Credential::Bearer(token) = credential {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(timeout) = self.timeout {
            request = request.timeout(timeout);
        }
        match host.http(&request) {
            Ok(response) if response.status == 200 => {
                let id = response.text().trim().to_string();
                if id.is_empty() {
                    UserAuthOutcome::Rejected("identity service answered an empty id".into())
                } else {
                    UserAuthOutcome::Authenticated(Principal::new(id))
                }
            }
            Ok(response) => {
                UserAuthOutcome::Rejected(format!("identity service answered {}", response.status))
            }
            Err(err) => UserAuthOutcome::Rejected(err.to_string()),
        }
    }

    fn count(&self, host: &impl Host) -> UserAuthOutcome {
        let instance = self.instance_calls.get() + 1;
        self.instance_calls.set(instance);
        match host.kv_increment(CALLS_KEY, 1, None) {
            Ok(calls) => {
                UserAuthOutcome::Authenticated(Principal::new(format!("calls={calls};instance={instance}")))
            }
            Err(err) => UserAuthOutcome::Rejected(err.to_string()),
        }
    }
}

impl TestHttp {
    fn remember(&self, credential: &Credential) -> UserAuthOutcome {
        let me = match credential {
            Credential::Bearer(token) => token.clone(),
            _ => "-".to_string(),
        };
        let mut seen = self.seen.borrow_mut();
        let before = if seen.is_empty() { "-".to_string() } else { seen.join(",") };
        seen.push(me.clone());
        UserAuthOutcome::Authenticated(Principal::new(format!("me={me};seen={before}")))
    }
}

impl Authorizer for TestHttp {
    fn init(host: &impl Host) -> Result<Self, String> {
        let config: Config = host.config().map_err(|err| format!("test-http: {err}"))?;
        let url = match (config.mode, config.url) {
            (Mode::Http, None) => return Err("test-http: invalid config: mode \"http\" needs `url`".into()),
            (_, url) => url.unwrap_or_default(),
        };
        let agent_token_sha256 = match &config.agent_token_sha256 {
            Some(text) => Some(
                hex::decode(text.trim())
                    .map_err(|err| format!("test-http: invalid config: agent_token_sha256: {err}"))?,
            ),
            None => None,
        };
        Ok(TestHttp {
            mode: config.mode,
            url,
            timeout: config.timeout_ms.map(Duration::from_millis),
            agent_id: config.agent_id,
            agent_token_sha256,
            instance_calls: Cell::new(0),
            seen: Default::default(),
        })
    }

    fn authenticate_agent(&self, _host: &impl Host, req: AgentHello) -> AgentAuthOutcome {
        let accepted = !req.token.is_empty()
            && self.agent_token_sha256.as_deref().is_none_or(|expected| {
                let presented: [u8; 32] = Sha256::digest(req.token.as_bytes()).into();
                bool::from(presented[..].ct_eq(expected))
            });
        if !accepted {
            return AgentAuthOutcome::Rejected("agent token not recognised".into());
        }
        AgentAuthOutcome::Accepted(AgentIdentity {
            agent_id: self.agent_id.clone(),
            workload_kind: "workspace".into(),
            workload_id: self.agent_id.clone(),
            expires_at: None,
            labels: Vec::new(),
        })
    }

    fn authenticate_user(&self, host: &impl Host, req: UserAuthRequest) -> UserAuthOutcome {
        match self.mode {
            Mode::Http => self.ask(host, &req.credential),
            Mode::Kv => self.count(host),
            Mode::Remember => self.remember(&req.credential),
        }
    }

    fn authorize(&self, _host: &impl Host, req: AuthorizeRequest) -> Decision {
        match req.principal {
            Some(_) => Decision::allow_stripping_credentials(),
            None => Decision::unauthorized("test-http: log in first"),
        }
    }
}

export_authorizer!(TestHttp);

#[cfg(test)]
mod tests {
    use burrow_plugin_sdk::{Action, HttpError, HttpResponse, KvError, MockHost};

    use super::*;

    const URL: &str = "http://127.0.0.1:9/whoami";

    fn user(credential: Credential) -> UserAuthRequest {
        UserAuthRequest { credential, client_addr: String::new(), host: String::new(), action: Action::Http }
    }

    #[test]
    fn http_mode_asks_the_service_with_the_bearer() {
        let host = MockHost::new().with_config(serde_json::json!({"url": URL, "timeout_ms": 250}));
        host.respond(URL, HttpResponse::new(200, "alice\n"));
        let p = TestHttp::init(&host).unwrap();
        assert_eq!(
            p.authenticate_user(&host, user(Credential::Bearer("good".into()))),
            UserAuthOutcome::Authenticated(Principal::new("alice"))
        );
        let sent = &host.http_requests()[0];
        assert_eq!(sent.method, "GET");
        assert_eq!(sent.headers, vec![("Authorization".to_string(), "Bearer good".to_string())]);
        assert_eq!(sent.timeout, Some(Duration::from_millis(250)));
        p.authenticate_user(&host, user(Credential::None));
        assert!(host.http_requests()[1].headers.is_empty());
    }

    #[test]
    fn http_failures_are_rejections_with_the_reason() {
        let host = MockHost::new().with_config(serde_json::json!({"url": URL}));
        let p = TestHttp::init(&host).unwrap();
        let bearer = || user(Credential::Bearer("t".into()));
        match p.authenticate_user(&host, bearer()) {
            UserAuthOutcome::Rejected(reason) => assert!(reason.contains("denied"), "{reason}"),
            other => panic!("{other:?}"),
        }
        host.respond(URL, HttpResponse::new(401, "no"));
        assert_eq!(
            p.authenticate_user(&host, bearer()),
            UserAuthOutcome::Rejected("identity service answered 401".into())
        );
        host.respond_error(URL, HttpError::Timeout);
        assert_eq!(p.authenticate_user(&host, bearer()), UserAuthOutcome::Rejected("timed out".into()));
        host.respond(URL, HttpResponse::new(200, " \n"));
        assert!(matches!(p.authenticate_user(&host, bearer()), UserAuthOutcome::Rejected(_)));
    }

    #[test]
    fn kv_mode_counts_in_the_store_and_the_instance() {
        let host = MockHost::new().with_config_json(r#"{"mode": "kv"}"#);
        let warm = TestHttp::init(&host).unwrap();
        let id = |outcome| match outcome {
            UserAuthOutcome::Authenticated(p) => p.id,
            other => panic!("{other:?}"),
        };
        assert_eq!(id(warm.authenticate_user(&host, user(Credential::None))), "calls=1;instance=1");
        assert_eq!(id(warm.authenticate_user(&host, user(Credential::None))), "calls=2;instance=2");
        let fresh = TestHttp::init(&host).unwrap();
        assert_eq!(id(fresh.authenticate_user(&host, user(Credential::None))), "calls=3;instance=1");
        host.fail_kv(Some(KvError::Unavailable("redis down".into())));
        assert!(matches!(
            fresh.authenticate_user(&host, user(Credential::None)),
            UserAuthOutcome::Rejected(_)
        ));
    }

    #[test]
    fn http_mode_needs_a_url() {
        let err = TestHttp::init(&MockHost::new()).err().unwrap();
        assert!(err.contains("needs `url`"), "{err}");
    }
}
