//! What goes over the wire to the decision endpoint and back, and what the cache holds.
//! The shapes are documented in the crate docs and README.md; the tests below pin them.

use std::collections::BTreeMap;
use std::fmt;

use burrow_plugin_sdk::{Action, AuthorizeRequest, Credential};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `version` of the request body: bumped only for a change an endpoint must notice.
pub const WIRE_VERSION: u32 = 1;
/// Longest denial reason passed on to the user; the rest is cut (it is shown on a page).
pub const MAX_REASON_CHARS: usize = 200;
/// The answer is a small JSON object; anything bigger is not one.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The user's credential as the endpoint sees it: its kind, the SHA-256 of its secret
/// part, the non-secret facts that go with it and, only with `forward_credentials`, the
/// secret itself.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct PresentedCredential {
    /// `bearer`, `cookie`, `ssh-public-key` or `ssh-password`.
    pub kind: &'static str,
    /// Lowercase hex SHA-256 of the token, cookie value, password, or public key blob.
    pub sha256: String,
    /// The cookie's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The SSH user name asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The SSH key's algorithm, e.g. `ssh-ed25519`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// The SSH key's `SHA256:<base64>` fingerprint, as `ssh-keygen -l` prints it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The raw token, cookie value or password: `forward_credentials = true` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

// By hand: `value` is a credential and must never reach a log line.
impl fmt::Debug for PresentedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedCredential")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("user", &self.user)
            .field("fingerprint", &self.fingerprint)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl PresentedCredential {
    /// `None` for no credential at all (an anonymous user).
    pub fn from_credential(credential: &Credential, forward: bool) -> Option<PresentedCredential> {
        let blank = |kind, sha256| PresentedCredential {
            kind,
            sha256,
            name: None,
            user: None,
            algorithm: None,
            fingerprint: None,
            value: None,
        };
        let secret = |value: &str| forward.then(|| value.to_owned());
        Some(match credential {
            Credential::None => return None,
            Credential::Bearer(token) => {
                PresentedCredential { value: secret(token), ..blank("bearer", sha256_hex(token.as_bytes())) }
            }
            Credential::Cookie { name, value } => PresentedCredential {
                name: Some(name.clone()),
                value: secret(value),
                ..blank("cookie", sha256_hex(value.as_bytes()))
            },
            // A public key is no secret, and its fingerprint already names it: never a value.
            Credential::SshPublicKey { user, algorithm, key, fingerprint } => PresentedCredential {
                user: Some(user.clone()),
                algorithm: Some(algorithm.clone()),
                fingerprint: Some(fingerprint.clone()),
                ..blank("ssh-public-key", sha256_hex(key))
            },
            Credential::SshPassword { user, password } => PresentedCredential {
                user: Some(user.clone()),
                value: secret(password),
                ..blank("ssh-password", sha256_hex(password.as_bytes()))
            },
        })
    }

    /// Everything that identifies the credential, for keyed hashes (never `value`: the
    /// hash already stands for it).
    fn identity(&self) -> [&str; 5] {
        fn opt(o: &Option<String>) -> &str {
            o.as_deref().unwrap_or("")
        }
        [self.kind, &self.sha256, opt(&self.name), opt(&self.user), opt(&self.algorithm)]
    }
}

/// The workload a decision is about.
#[derive(Debug, Serialize)]
pub struct WorkloadRef<'a> {
    pub kind: &'a str,
    pub id: &'a str,
    pub agent_id: &'a str,
    pub service: &'a str,
}

/// The body of the POST: one per decision the cache cannot answer.
#[derive(Debug, Serialize)]
pub struct DecisionRequest<'a> {
    pub version: u32,
    pub action: Action,
    pub workload: WorkloadRef<'a>,
    /// `null` for an anonymous user.
    pub credential: Option<&'a PresentedCredential>,
    pub client_addr: &'a str,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub agent_labels: BTreeMap<&'a str, &'a str>,
}

impl<'a> DecisionRequest<'a> {
    pub fn new(req: &'a AuthorizeRequest, credential: Option<&'a PresentedCredential>) -> Self {
        DecisionRequest {
            version: WIRE_VERSION,
            action: req.action,
            workload: WorkloadRef {
                kind: &req.target.workload_kind,
                id: &req.target.workload_id,
                agent_id: &req.target.agent_id,
                service: &req.target.service,
            },
            credential,
            client_addr: &req.client_addr,
            host: &req.host,
            method: &req.method,
            path: &req.path,
            agent_labels: req.agent_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain strings and maps always serialize")
    }
}

/// The endpoint's answer as it must be written.
#[derive(Deserialize)]
struct RawAnswer {
    allow: bool,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    principal: Option<AnswerPrincipal>,
    #[serde(default)]
    cache_ttl_ms: Option<u64>,
}

/// Who the endpoint says the user is: logged with the decision, nothing more (the
/// host's principal was fixed before the decision was asked for).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AnswerPrincipal {
    pub id: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// What the endpoint decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// 401 or 403, and the reason shown to the user.
    Deny {
        status: u16,
        reason: String,
    },
}

/// A well-formed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub verdict: Verdict,
    pub principal: Option<AnswerPrincipal>,
    /// The endpoint's own TTL for this answer, which can only shorten the config's.
    pub cache_ttl_ms: Option<u64>,
}

pub const DEFAULT_DENY_REASON: &str = "denied by the authorization service";

/// Reads the endpoint's HTTP answer. `Err` is every way it can fail to be a decision
/// (the caller fails closed with it as the logged reason).
pub fn parse_answer(status: u16, body: &[u8]) -> Result<Answer, String> {
    if !(200..300).contains(&status) {
        let hint =
            if status == 401 || status == 403 { " (does it accept this host's `secret`?)" } else { "" };
        return Err(format!("the decision endpoint answered HTTP {status}{hint}"));
    }
    let raw: RawAnswer = serde_json::from_slice(body)
        .map_err(|err| format!("the decision endpoint's answer is malformed: {err}"))?;
    let verdict = if raw.allow {
        Verdict::Allow
    } else {
        let status = raw
            .status
            .ok_or("the decision endpoint's answer is malformed: a denial needs `status` (401 or 403)")?;
        if status != 401 && status != 403 {
            return Err(format!(
                "the decision endpoint's answer is malformed: `status` must be 401 or 403, got {status}"
            ));
        }
        let reason = raw.reason.as_deref().map(clean_reason).filter(|r| !r.is_empty());
        Verdict::Deny { status, reason: reason.unwrap_or_else(|| DEFAULT_DENY_REASON.to_owned()) }
    };
    if let Some(principal) = &raw.principal {
        if principal.id.is_empty() {
            return Err("the decision endpoint's answer is malformed: `principal.id` is empty".into());
        }
    }
    Ok(Answer { verdict, principal: raw.principal, cache_ttl_ms: raw.cache_ttl_ms })
}

/// A reason fit for a user's error page and a log line: no control characters, bounded.
fn clean_reason(reason: &str) -> String {
    reason.chars().filter(|c| !c.is_control()).take(MAX_REASON_CHARS).collect::<String>().trim().to_owned()
}

/// One decision as the cache keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    pub allow: bool,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub reason: String,
    /// Unix ms: the entry is not used from then on, whatever the store still holds.
    pub expires_at: u64,
}

impl Cached {
    pub fn new(verdict: &Verdict, expires_at: u64) -> Cached {
        match verdict {
            Verdict::Allow => Cached { allow: true, status: 0, reason: String::new(), expires_at },
            Verdict::Deny { status, reason } => {
                Cached { allow: false, status: *status, reason: reason.clone(), expires_at }
            }
        }
    }

    /// The verdict, if the entry is one this plugin wrote and it is still fresh at `now`.
    pub fn fresh_verdict(&self, now: u64) -> Option<Verdict> {
        if now >= self.expires_at {
            return None;
        }
        if self.allow {
            Some(Verdict::Allow)
        } else if self.status == 401 || self.status == 403 {
            Some(Verdict::Deny { status: self.status, reason: self.reason.clone() })
        } else {
            None
        }
    }
}

/// SHA-256 over length-prefixed parts, keyed with the shared secret: a credential's hash
/// never appears bare in a store key or a log, where a weak password's hash could be
/// looked up in a dictionary.
fn keyed_hash(secret: &str, domain: &str, parts: &[&str]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in [domain, secret].iter().chain(parts) {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// The principal id this plugin gives a user who presented `credential`: stable for one
/// credential, reveals nothing about it.
pub fn pseudonym(secret: &str, credential: &PresentedCredential) -> String {
    let hash = keyed_hash(secret, "burrow-callout-principal", &credential.identity());
    format!("callout-{}", hex::encode(&hash[..8]))
}

/// The kv key of a decision: who (the credential, or nobody), what (action), where
/// (workload, agent, service, host name and the agent's labels) and which endpoint.
/// Method, path and client address are left out, so one decision covers a page's
/// many requests; an endpoint that decides on them answers `cache_ttl_ms: 0`.
pub fn cache_key(
    secret: &str,
    url: &str,
    credential: Option<&PresentedCredential>,
    req: &AuthorizeRequest,
) -> String {
    let who = credential.map(PresentedCredential::identity).unwrap_or(["anonymous", "", "", "", ""]);
    let action = serde_json::to_string(&req.action).unwrap_or_default();
    let mut labels: Vec<String> = req.agent_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    let labels = labels.join("\n");
    let mut parts: Vec<&str> = vec![url];
    parts.extend(who);
    parts.extend([
        action.as_str(),
        &req.target.workload_kind,
        &req.target.workload_id,
        &req.target.agent_id,
        &req.target.service,
        &req.host,
        &labels,
    ]);
    format!("decision:{}", hex::encode(keyed_hash(secret, "burrow-callout-cache", &parts)))
}

#[cfg(test)]
mod tests {
    use burrow_plugin_sdk::{Principal, Target};
    use serde_json::json;

    use super::*;

    fn request() -> AuthorizeRequest {
        AuthorizeRequest {
            principal: Some(Principal::new("callout-0011223344556677")),
            target: Target {
                workload_kind: "workspace".into(),
                workload_id: "ws-1".into(),
                agent_id: "a1".into(),
                service: "web".into(),
            },
            action: Action::Websocket,
            client_addr: "192.0.2.7:50000".into(),
            host: "web-a1.example.com".into(),
            method: "GET".into(),
            path: "/socket?x=1".into(),
            agent_labels: vec![("team".into(), "infra".into()), ("env".into(), "prod".into())],
        }
    }

    fn body(credential: Option<&PresentedCredential>) -> serde_json::Value {
        serde_json::from_slice(&DecisionRequest::new(&request(), credential).to_json()).unwrap()
    }

    #[test]
    fn the_request_body_has_the_documented_shape() {
        let bearer = PresentedCredential::from_credential(&Credential::Bearer("tok".into()), false).unwrap();
        assert_eq!(
            body(Some(&bearer)),
            json!({
                "version": 1,
                "action": "websocket",
                "workload": { "kind": "workspace", "id": "ws-1", "agent_id": "a1", "service": "web" },
                "credential": {
                    "kind": "bearer",
                    // printf %s tok | sha256sum
                    "sha256": "1a7674eb4ee78df7e1ac439a93c3fa8e3c945784d4dec9fd8e3011738b2f1d62"
                },
                "client_addr": "192.0.2.7:50000",
                "host": "web-a1.example.com",
                "method": "GET",
                "path": "/socket?x=1",
                "agent_labels": { "env": "prod", "team": "infra" }
            })
        );
        assert_eq!(body(None)["credential"], serde_json::Value::Null);
    }

    #[test]
    fn credentials_are_hashed_unless_forwarding_is_on() {
        let cookie = Credential::Cookie { name: "session".into(), value: "c00kie".into() };
        let hashed = PresentedCredential::from_credential(&cookie, false).unwrap();
        let text = String::from_utf8(DecisionRequest::new(&request(), Some(&hashed)).to_json()).unwrap();
        assert!(!text.contains("c00kie"), "{text}");
        assert_eq!(
            body(Some(&hashed))["credential"],
            json!({"kind": "cookie", "name": "session", "sha256": sha256_hex(b"c00kie")})
        );

        let forwarded = PresentedCredential::from_credential(&cookie, true).unwrap();
        assert_eq!(body(Some(&forwarded))["credential"]["value"], "c00kie");
        assert!(!format!("{forwarded:?}").contains("c00kie"), "Debug never shows the value");

        let password = Credential::SshPassword { user: "ws-1".into(), password: "hunter2".into() };
        let p = PresentedCredential::from_credential(&password, false).unwrap();
        assert_eq!(
            body(Some(&p))["credential"],
            json!({"kind": "ssh-password", "user": "ws-1", "sha256": sha256_hex(b"hunter2")})
        );

        let key = Credential::SshPublicKey {
            user: "ws-1".into(),
            algorithm: "ssh-ed25519".into(),
            key: vec![1, 2, 3],
            fingerprint: "SHA256:abc".into(),
        };
        let k = PresentedCredential::from_credential(&key, true).unwrap();
        assert_eq!(
            body(Some(&k))["credential"],
            json!({"kind": "ssh-public-key", "user": "ws-1", "algorithm": "ssh-ed25519", "fingerprint": "SHA256:abc", "sha256": sha256_hex(&[1, 2, 3])})
        );
        assert!(PresentedCredential::from_credential(&Credential::None, true).is_none());
    }

    #[test]
    fn answers_parse_strictly() {
        let ok = |text: &str| parse_answer(200, text.as_bytes()).unwrap();
        let bad = |status: u16, text: &str| parse_answer(status, text.as_bytes()).unwrap_err();

        assert_eq!(
            ok(
                r#"{"allow": true, "principal": {"id": "alice", "groups": ["dev"]}, "cache_ttl_ms": 1000, "extra": 1}"#
            ),
            Answer {
                verdict: Verdict::Allow,
                principal: Some(AnswerPrincipal { id: "alice".into(), groups: vec!["dev".into()] }),
                cache_ttl_ms: Some(1000),
            }
        );
        assert_eq!(
            ok(r#"{"allow": false, "status": 403, "reason": "not a member\n of the project"}"#).verdict,
            Verdict::Deny { status: 403, reason: "not a member of the project".into() }
        );
        assert_eq!(
            ok(r#"{"allow": false, "status": 401}"#).verdict,
            Verdict::Deny { status: 401, reason: DEFAULT_DENY_REASON.into() }
        );
        let long = format!(r#"{{"allow": false, "status": 403, "reason": "{}"}}"#, "x".repeat(1000));
        assert!(
            matches!(ok(&long).verdict, Verdict::Deny { reason, .. } if reason.len() == MAX_REASON_CHARS)
        );

        assert!(bad(500, r#"{"allow": true}"#).contains("HTTP 500"));
        assert!(
            bad(401, r#"{"allow": true}"#).contains("secret"),
            "an answer outside 2xx is never a decision"
        );
        assert!(bad(200, "").contains("malformed"));
        assert!(bad(200, "<html>").contains("malformed"));
        assert!(bad(200, r#"{"allowed": true}"#).contains("missing field `allow`"));
        assert!(bad(200, r#"{"allow": "yes"}"#).contains("malformed"));
        assert!(bad(200, r#"{"allow": false}"#).contains("`status`"));
        assert!(bad(200, r#"{"allow": false, "status": 500}"#).contains("401 or 403"));
        assert!(bad(200, r#"{"allow": true, "principal": {"id": ""}}"#).contains("principal.id"));
        assert!(bad(200, r#"{"allow": true, "cache_ttl_ms": -1}"#).contains("malformed"));
    }

    #[test]
    fn cached_entries_expire_and_keep_their_verdict() {
        let deny = Verdict::Deny { status: 403, reason: "no".into() };
        let entry: Cached =
            serde_json::from_slice(&serde_json::to_vec(&Cached::new(&deny, 1_000)).unwrap()).unwrap();
        assert_eq!(entry.fresh_verdict(999), Some(deny));
        assert_eq!(entry.fresh_verdict(1_000), None);
        assert_eq!(Cached::new(&Verdict::Allow, 5).fresh_verdict(4), Some(Verdict::Allow));
        let odd = Cached { allow: false, status: 500, reason: String::new(), expires_at: 10 };
        assert_eq!(odd.fresh_verdict(0), None, "an entry that is not a valid denial is ignored");
    }

    #[test]
    fn keys_separate_what_must_be_decided_separately() {
        let secret = "shared-secret-0123456789";
        let url = "https://cp/authorize";
        let alice = PresentedCredential::from_credential(&Credential::Bearer("alice".into()), false).unwrap();
        let bob = PresentedCredential::from_credential(&Credential::Bearer("bob".into()), false).unwrap();
        let req = request();
        let key = cache_key(secret, url, Some(&alice), &req);
        assert!(key.starts_with("decision:") && key.len() < 100, "{key}");
        assert!(!key.contains(&alice.sha256));

        // Same decision: only method, path and client address differ.
        let mut same = request();
        same.method = "POST".into();
        same.path = "/other".into();
        same.client_addr = "198.51.100.1:1".into();
        same.agent_labels.reverse();
        assert_eq!(cache_key(secret, url, Some(&alice), &same), key);

        let mut others = vec![
            cache_key(secret, url, Some(&bob), &req),
            cache_key(secret, url, None, &req),
            cache_key("another-secret-0123456789", url, Some(&alice), &req),
            cache_key(secret, "https://cp/v2", Some(&alice), &req),
        ];
        let variants: [fn(&mut AuthorizeRequest); 6] = [
            |r| r.action = Action::Http,
            |r| r.target.service = "ssh".into(),
            |r| r.target.agent_id = "a2".into(),
            |r| r.target.workload_id = "ws-2".into(),
            |r| r.host = "ssh-a1.example.com".into(),
            |r| r.agent_labels.push(("burrow.users".into(), "bob".into())),
        ];
        for change in variants {
            let mut r = request();
            change(&mut r);
            others.push(cache_key(secret, url, Some(&alice), &r));
        }
        for other in &others {
            assert_ne!(other, &key);
        }
    }

    #[test]
    fn pseudonyms_are_stable_and_opaque() {
        let secret = "shared-secret-0123456789";
        let a = PresentedCredential::from_credential(&Credential::Bearer("alice".into()), false).unwrap();
        let b = PresentedCredential::from_credential(&Credential::Bearer("bob".into()), false).unwrap();
        let id = pseudonym(secret, &a);
        assert_eq!(id, pseudonym(secret, &a));
        assert_ne!(id, pseudonym(secret, &b));
        assert!(id.starts_with("callout-") && id.len() == "callout-".len() + 16, "{id}");
        assert!(!a.sha256.starts_with(&id["callout-".len()..]));
    }
}
