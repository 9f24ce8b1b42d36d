//! Burrow's built-in callout authorizer (`builtin:authorizer-callout`): asks the
//! deployment's control plane whether a user may reach a workload, the way GitLab's KAS
//! asks GitLab's internal API whether a user may reach an agent. One HTTP POST per
//! decision, cached in the plugin key-value store; any failure denies (fail closed).
//! README.md beside this crate says the same for admins and endpoint authors.
//!
//! # Configuration
//!
//! ```toml
//! [plugins.authorizer]
//! source = "builtin:authorizer-callout"
//! call_timeout = "2s"        # the call waits for the endpoint: keep it above 2 × `timeout`
//! [plugins.authorizer.config]
//! url = "https://gitlab.example.com/api/v4/internal/burrow/authorize"   # required
//! secret = "<at least 16 characters>"  # required: sent as `Authorization: Bearer <secret>`
//! timeout = "500ms"          # connect / first byte / between bytes; > 0, at most 10s
//! cache_allow_ttl = "30s"    # how long an allow is reused; "0": never; at most 1h
//! cache_deny_ttl = "5s"      # how long a deny is reused; "0": never; at most 1h
//! forward_credentials = false  # true: also send the raw credential (https or loopback only)
//! strip_credentials = true   # allowed requests reach the workload without the credential
//!
//! [plugins.authorizer.http]  # REQUIRED: without it the host refuses every POST
//! allow = ["gitlab.example.com"]   # the url's host (an IP literal for private addresses)
//!
//! [plugins.agents]           # agents are authenticated by the static list, not here
//! config = { agents = [{ id = "demo", token_sha256 = "<hex>" }] }
//! ```
//!
//! Unknown keys and bad values are refused at load with the key's name. The secret never
//! appears in a log line, an error or `Debug` output. A plugin cannot read files, so the
//! secret sits in the host config: keep that file readable by the host only.
//!
//! # Who is asked what
//!
//! - **Agents** are not this plugin's business: it rejects every agent token (the SDK's
//!   answer pointing at `[plugins.agents]`). Configure `[plugins.agents]`, whose default
//!   source is the built-in static list; the host then also knows which agents exist (404
//!   for the others). A deployment whose control plane issues agent tokens points
//!   `[plugins.agents]` at its own plugin.
//! - **Users**: `authenticate_user` calls nothing. No credential is `anonymous`; any
//!   credential is `authenticated` as a pseudonym, `callout-<16 hex>` (a keyed hash of the
//!   credential, stable per credential, revealing nothing), which the host uses in its logs
//!   and for sticky routing. The credential itself is kept in the instance for
//!   `authorize`, which the host calls next in the same instance; who the user really
//!   is, is the endpoint's to say, as KAS leaves it to GitLab.
//! - **`authorize`** answers from the cache or POSTs to `url`.
//!
//! # The request
//!
//! `POST <url>` with `Authorization: Bearer <secret>`, `Content-Type: application/json`
//! and this body:
//!
//! ```json
//! {
//!   "version": 1,
//!   "action": "http",
//!   "workload": { "kind": "workspace", "id": "ws-1", "agent_id": "a1", "service": "web" },
//!   "credential": { "kind": "bearer", "sha256": "<hex>" },
//!   "client_addr": "192.0.2.7:50000",
//!   "host": "web-a1.example.com",
//!   "method": "GET",
//!   "path": "/index.html?x=1",
//!   "agent_labels": { "team": "infra" }
//! }
//! ```
//!
//! - `action`: `http`, `websocket`, `upgrade`, `ssh-session`, `port-forward` or `terminal`.
//! - `credential`: `null` for a user who presented none, else an object with `kind` and
//!   `sha256` (lowercase hex SHA-256 of the secret part) and, by kind:
//!   `bearer` (the `Authorization: Bearer` token); `cookie` (+ `name`; hash of the value);
//!   `ssh-password` (+ `user`); `ssh-public-key` (+ `user`, `algorithm`, `fingerprint`
//!   as `ssh-keygen -l` prints it; hash of the key blob). With `forward_credentials =
//!   true` a `value` holds the raw token, cookie value or password (never for public
//!   keys): for control planes that do not store token hashes.
//! - `host`, `method`, `path`: empty strings when not HTTP. `agent_labels`: the agent's
//!   labels, including the host's `burrow.` ones.
//! - `version` changes only when an endpoint must notice; new fields may appear anytime.
//!
//! # The answer
//!
//! HTTP 2xx with a JSON object (unknown fields ignored, at most 64 KiB):
//!
//! ```json
//! { "allow": true, "principal": { "id": "alice", "groups": ["dev"] }, "cache_ttl_ms": 10000 }
//! { "allow": false, "status": 403, "reason": "not a member of this project" }
//! ```
//!
//! - `allow` (required, boolean).
//! - `status` (required when `allow` is false): 401 (unknown or expired credential: log
//!   in) or 403 (known, not allowed). `reason` (optional) is shown to the user: at most
//!   200 characters are kept, control characters dropped.
//! - `principal` (optional): who the endpoint says the user is; logged with the
//!   decision (the host's principal stays the pseudonym).
//! - `cache_ttl_ms` (optional): this answer's TTL; it can shorten the configured TTL
//!   (`0`: do not cache this one, e.g. a decision that depended on the path or client
//!   address), never lengthen it.
//!
//! # Failing closed
//!
//! The endpoint unreachable (refused, DNS, TLS), slower than `timeout`, not on the
//! allowlist, answering outside 2xx (a 401/403 status means it refused *this host*: check
//! `secret`), a body that is not the object above (bad JSON, `allow` missing, a denial
//! without a 401/403 `status`): the plugin logs the reason at `warn` and denies with
//! status 503. The contract has no "unavailable" decision, so the host treats that answer
//! as a plugin failure and fails closed: the user gets 503 and the log names the plugin.
//! Nothing is cached then, so the next request asks again.
//!
//! # The cache
//!
//! Decisions are kept in the plugin's key-value store (shared by all instances and, in a
//! cluster, all replicas through Redis) under a keyed SHA-256 of: the endpoint url, the
//! credential (kind, hash, cookie name, SSH user and key algorithm) or "anonymous", the
//! action, the workload (kind, id, agent, service), the host name and the agent's labels.
//! Method, path and client address are not in the key: one decision covers a page's many
//! requests. Allows live `cache_allow_ttl`, denies `cache_deny_ttl` (each shortened by
//! the answer's `cache_ttl_ms`); an entry is used only while `now < expires_at`, never
//! after, even if the store still holds it. A store that fails is skipped (the endpoint
//! is asked), never trusted.

mod config;
mod wire;

use std::cell::RefCell;
use std::time::Duration;

use burrow_plugin_sdk::{
    export_authorizer, AuthorizeRequest, Authorizer, Decision, Host, HttpRequest, Principal, UserAuthOutcome,
    UserAuthRequest,
};

pub use config::Config;
pub use wire::{
    cache_key, parse_answer, pseudonym, Answer, AnswerPrincipal, Cached, DecisionRequest,
    PresentedCredential, Verdict,
};

/// The status of a fail-closed denial: the host answers a plugin failure with 503.
pub const UNAVAILABLE_STATUS: u16 = 503;
/// The reason of a fail-closed denial (the details go to the log, not to the user).
pub const UNAVAILABLE_REASON: &str = "the authorization service is unavailable";

/// What `authenticate_user` learnt, for the `authorize` that follows in this instance.
struct Presented {
    /// The id `authenticate_user` answered (`None`: anonymous).
    principal_id: Option<String>,
    credential: Option<PresentedCredential>,
}

/// The plugin: its config and the credential of the request in progress.
pub struct Callout {
    config: Config,
    presented: RefCell<Option<Presented>>,
}

impl Callout {
    fn unavailable(&self, host: &impl Host, req: &AuthorizeRequest, why: &str) -> Decision {
        host.warn(&format!(
            "{UNAVAILABLE_REASON}, denying (fail closed): {why} [workload {}/{} agent {} service {}]",
            req.target.workload_kind, req.target.workload_id, req.target.agent_id, req.target.service
        ));
        Decision::Deny { status: UNAVAILABLE_STATUS, reason: UNAVAILABLE_REASON.into() }
    }

    fn decision(&self, verdict: Verdict) -> Decision {
        match verdict {
            Verdict::Allow => Decision::Allow { strip_credentials: self.config.strip_credentials },
            Verdict::Deny { status, reason } => Decision::Deny { status, reason },
        }
    }

    /// A fresh cached verdict, if any. A store error only costs a call to the endpoint.
    fn cached(&self, host: &impl Host, key: &str) -> Option<Verdict> {
        match host.kv_get(key) {
            Ok(Some(bytes)) => serde_json::from_slice::<Cached>(&bytes).ok()?.fresh_verdict(host.now()),
            Ok(None) => None,
            Err(err) => {
                host.debug(&format!("decision cache not read ({err}); asking the endpoint"));
                None
            }
        }
    }

    fn remember(&self, host: &impl Host, key: &str, answer: &Answer) {
        let configured = match answer.verdict {
            Verdict::Allow => self.config.cache_allow_ttl,
            Verdict::Deny { .. } => self.config.cache_deny_ttl,
        };
        let ttl = answer.cache_ttl_ms.map_or(configured, |ms| configured.min(Duration::from_millis(ms)));
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if ttl_ms == 0 {
            return;
        }
        let entry = Cached::new(&answer.verdict, host.now().saturating_add(ttl_ms));
        let bytes = serde_json::to_vec(&entry).expect("plain fields always serialize");
        if let Err(err) = host.kv_set(key, &bytes, Some(ttl_ms)) {
            host.debug(&format!("decision not cached ({err})"));
        }
    }

    fn ask(
        &self,
        host: &impl Host,
        credential: Option<&PresentedCredential>,
        req: &AuthorizeRequest,
    ) -> Decision {
        let key = cache_key(&self.config.secret, &self.config.url, credential, req);
        let caching = !self.config.cache_allow_ttl.is_zero() || !self.config.cache_deny_ttl.is_zero();
        if caching {
            if let Some(verdict) = self.cached(host, &key) {
                return self.decision(verdict);
            }
        }
        let body = DecisionRequest::new(req, credential).to_json();
        let request = HttpRequest::post(&self.config.url, body)
            .header("Authorization", format!("Bearer {}", self.config.secret))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .timeout(self.config.timeout)
            .max_response_bytes(wire::MAX_ANSWER_BYTES);
        let response = match host.http(&request) {
            Ok(response) => response,
            Err(err) => {
                return self.unavailable(host, req, &format!("POST {} failed: {err}", self.config.url))
            }
        };
        let answer = match parse_answer(response.status, &response.body) {
            Ok(answer) => answer,
            Err(why) => return self.unavailable(host, req, &why),
        };
        let who = answer.principal.as_ref().map_or_else(
            || req.principal.as_ref().map_or("anonymous".to_owned(), |p| p.id.clone()),
            |p| format!("{} (groups {:?})", p.id, p.groups),
        );
        let what = match &answer.verdict {
            Verdict::Allow => "allowed".to_owned(),
            Verdict::Deny { status, reason } => format!("denied ({status}: {reason})"),
        };
        host.debug(&format!(
            "{what} {who} {} on {}/{} service {}",
            serde_json::to_string(&req.action).unwrap_or_default(),
            req.target.workload_kind,
            req.target.workload_id,
            req.target.service
        ));
        if caching {
            self.remember(host, &key, &answer);
        }
        self.decision(answer.verdict)
    }
}

impl Authorizer for Callout {
    fn init(host: &impl Host) -> Result<Self, String> {
        let config = Config::parse(&host.config_json())?;
        Ok(Callout { config, presented: RefCell::new(None) })
    }

    // `authenticate_agent` is the SDK's: every agent is rejected with a message pointing
    // at `[plugins.agents]`, which authenticates them.

    fn authenticate_user(&self, _host: &impl Host, req: UserAuthRequest) -> UserAuthOutcome {
        let credential =
            PresentedCredential::from_credential(&req.credential, self.config.forward_credentials);
        let (outcome, principal_id) = match &credential {
            None => (UserAuthOutcome::Anonymous, None),
            Some(credential) => {
                let id = pseudonym(&self.config.secret, credential);
                let principal = Principal {
                    id: id.clone(),
                    groups: Vec::new(),
                    labels: vec![("credential".into(), credential.kind.into())],
                };
                (UserAuthOutcome::Authenticated(principal), Some(id))
            }
        };
        // Replaces whatever an earlier call left: a warm instance serves many requests.
        *self.presented.borrow_mut() = Some(Presented { principal_id, credential });
        outcome
    }

    fn authorize(&self, host: &impl Host, req: AuthorizeRequest) -> Decision {
        let presented = self.presented.borrow_mut().take();
        let principal_id = req.principal.as_ref().map(|p| p.id.as_str());
        let credential =
            match presented {
                Some(p) if p.principal_id.as_deref() == principal_id => p.credential,
                // Asked on its own (a manifest vector) about an anonymous user: nothing to know.
                None if principal_id.is_none() => None,
                // A principal whose credential this instance never saw cannot be vouched for.
                _ => return self.unavailable(
                    host,
                    &req,
                    "authorize was not preceded by authenticate_user for this principal in the same instance",
                ),
            };
        self.ask(host, credential.as_ref(), &req)
    }
}

export_authorizer!(Callout);
burrow_plugin_sdk::embed_manifest!("authorizer-callout.toml");

#[cfg(test)]
mod tests;
