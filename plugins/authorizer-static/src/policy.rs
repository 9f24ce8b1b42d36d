//! The authorizer's decisions as plain functions, testable natively.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    agents: Vec<RawAgent>,
    #[serde(default)]
    default_access: DefaultAccess,
    #[serde(default)]
    workloads: Vec<RawWorkload>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: String,
    token_sha256: String,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum DefaultAccess {
    #[default]
    Deny,
    Open,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    agent: String,
    service: String,
    access: Access,
    #[serde(default)]
    users: Vec<RawUser>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Access {
    Open,
    Token,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    token_sha256: String,
}

type Hash = [u8; 32];

struct Credential {
    name: String,
    sha256: Hash,
}

struct Workload {
    agent: String,
    /// `None` is the `"*"` wildcard.
    service: Option<String>,
    access: Access,
    users: Vec<Credential>,
}

pub struct Policy {
    agents: Vec<Credential>,
    default_access: DefaultAccess,
    workloads: Vec<Workload>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow { principal: String, strip_credentials: bool },
    Deny { status: u16, reason: &'static str },
}

pub const NO_BEARER: &str = "this workload requires a bearer token";
pub const BAD_BEARER: &str = "token not allowed for this workload";
pub const DENIED_BY_DEFAULT: &str = "no access rule allows this workload";

fn parse_hash(field: &str, hex_text: &str) -> Result<Hash, String> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_text.trim(), &mut hash)
        .map_err(|err| format!("{field}: expected 64 hex digits (a SHA-256 hash): {err}"))?;
    Ok(hash)
}

fn sha256(secret: &str) -> Hash {
    Sha256::digest(secret.as_bytes()).into()
}

/// Index of the credential whose hash equals `hash`, visiting every entry with no
/// early exit and no data-dependent branch so timing reveals nothing about which
/// (or whether any) entry matched.
fn find_constant_time(credentials: &[Credential], hash: &Hash) -> Option<usize> {
    let mut found = subtle::Choice::from(0);
    let mut index = 0u64;
    for (i, credential) in credentials.iter().enumerate() {
        let matches = credential.sha256.ct_eq(hash);
        found |= matches;
        index = u64::conditional_select(&index, &(i as u64), matches);
    }
    bool::from(found).then_some(index as usize)
}

impl Policy {
    pub fn from_json(json: &str) -> Result<Policy, String> {
        let raw: RawConfig = serde_json::from_str(json).map_err(|err| err.to_string())?;
        let mut agents = Vec::with_capacity(raw.agents.len());
        for (i, agent) in raw.agents.into_iter().enumerate() {
            if agent.id.is_empty() {
                return Err(format!("agents[{i}].id: must not be empty"));
            }
            let sha256 = parse_hash(&format!("agents[{i}].token_sha256"), &agent.token_sha256)?;
            agents.push(Credential { name: agent.id, sha256 });
        }
        let mut workloads: Vec<Workload> = Vec::with_capacity(raw.workloads.len());
        for (i, rule) in raw.workloads.into_iter().enumerate() {
            if rule.agent.is_empty() {
                return Err(format!("workloads[{i}].agent: must not be empty"));
            }
            let service = match rule.service.as_str() {
                "" => return Err(format!("workloads[{i}].service: must be a service name or \"*\"")),
                "*" => None,
                _ => Some(rule.service),
            };
            if workloads.iter().any(|w| w.agent == rule.agent && w.service == service) {
                return Err(format!(
                    "workloads[{i}]: a rule for agent {:?} and service {:?} already exists",
                    rule.agent,
                    service.as_deref().unwrap_or("*")
                ));
            }
            if rule.access == Access::Open && !rule.users.is_empty() {
                return Err(format!("workloads[{i}].users: only allowed with access = \"token\""));
            }
            let mut users = Vec::with_capacity(rule.users.len());
            for (j, user) in rule.users.into_iter().enumerate() {
                if user.name.is_empty() {
                    return Err(format!("workloads[{i}].users[{j}].name: must not be empty"));
                }
                let field = format!("workloads[{i}].users[{j}].token_sha256");
                users.push(Credential { sha256: parse_hash(&field, &user.token_sha256)?, name: user.name });
            }
            workloads.push(Workload { agent: rule.agent, service, access: rule.access, users });
        }
        Ok(Policy { agents, default_access: raw.default_access, workloads })
    }

    /// The agent id whose token hash matches, if any.
    pub fn authenticate_agent(&self, token: &str) -> Option<String> {
        if token.is_empty() {
            return None;
        }
        find_constant_time(&self.agents, &sha256(token)).map(|i| self.agents[i].name.clone())
    }

    pub fn authorize(&self, agent: &str, service: &str, bearer: Option<&str>) -> Decision {
        let exact = self.workloads.iter().find(|w| w.agent == agent && w.service.as_deref() == Some(service));
        let rule = exact.or_else(|| self.workloads.iter().find(|w| w.agent == agent && w.service.is_none()));
        let Some(rule) = rule else {
            return match self.default_access {
                DefaultAccess::Open => open(),
                DefaultAccess::Deny => Decision::Deny { status: 403, reason: DENIED_BY_DEFAULT },
            };
        };
        match rule.access {
            Access::Open => open(),
            Access::Token => {
                let Some(bearer) = bearer.filter(|b| !b.is_empty()) else {
                    return Decision::Deny { status: 401, reason: NO_BEARER };
                };
                match find_constant_time(&rule.users, &sha256(bearer)) {
                    Some(i) => {
                        Decision::Allow { principal: rule.users[i].name.clone(), strip_credentials: true }
                    }
                    None => Decision::Deny { status: 403, reason: BAD_BEARER },
                }
            }
        }
    }
}

fn open() -> Decision {
    Decision::Allow { principal: "anonymous".to_string(), strip_credentials: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_sha256(secret: &str) -> String {
        hex::encode(sha256(secret))
    }

    fn policy() -> Policy {
        let json = format!(
            r#"{{
                "agents": [
                    {{"id": "demo", "token_sha256": "{}"}},
                    {{"id": "edge-eu-1", "token_sha256": "{}"}}
                ],
                "workloads": [
                    {{"agent": "demo", "service": "*", "access": "open"}},
                    {{"agent": "demo", "service": "admin", "access": "token",
                      "users": [{{"name": "alice", "token_sha256": "{}"}}]}}
                ]
            }}"#,
            hex_sha256("agent-secret"),
            hex_sha256("edge-secret"),
            hex_sha256("alice-secret"),
        );
        Policy::from_json(&json).unwrap()
    }

    #[test]
    fn authenticates_by_token_hash() {
        let p = policy();
        assert_eq!(p.authenticate_agent("agent-secret").as_deref(), Some("demo"));
        assert_eq!(p.authenticate_agent("edge-secret").as_deref(), Some("edge-eu-1"));
        assert_eq!(p.authenticate_agent("nope"), None);
        assert_eq!(p.authenticate_agent(""), None);
    }

    #[test]
    fn exact_service_beats_wildcard() {
        let p = policy();
        assert_eq!(
            p.authorize("demo", "web", None),
            Decision::Allow { principal: "anonymous".into(), strip_credentials: false }
        );
        assert_eq!(p.authorize("demo", "admin", None), Decision::Deny { status: 401, reason: NO_BEARER });
        assert_eq!(
            p.authorize("demo", "admin", Some("wrong")),
            Decision::Deny { status: 403, reason: BAD_BEARER }
        );
        assert_eq!(
            p.authorize("demo", "admin", Some("alice-secret")),
            Decision::Allow { principal: "alice".into(), strip_credentials: true }
        );
    }

    #[test]
    fn default_access_applies_without_rule() {
        let p = policy();
        assert_eq!(
            p.authorize("edge-eu-1", "web", None),
            Decision::Deny { status: 403, reason: DENIED_BY_DEFAULT }
        );
        let open = Policy::from_json(r#"{"default_access": "open"}"#).unwrap();
        assert!(matches!(open.authorize("x", "y", None), Decision::Allow { .. }));
        let empty = Policy::from_json("{}").unwrap();
        assert!(matches!(empty.authorize("x", "y", None), Decision::Deny { status: 403, .. }));
    }

    fn config_error(json: &str) -> String {
        match Policy::from_json(json) {
            Ok(_) => panic!("config accepted: {json}"),
            Err(err) => err,
        }
    }

    #[test]
    fn bad_config_names_the_field() {
        let err = config_error(r#"{"agents": [{"id": "a", "token_sha256": "xyz"}]}"#);
        assert!(err.starts_with("agents[0].token_sha256"), "{err}");
        let err = config_error(r#"{"agents": [], "extra": 1}"#);
        assert!(err.contains("unknown field"), "{err}");
        let err = config_error(r#"{"default_access": "maybe"}"#);
        assert!(err.contains("unknown variant"), "{err}");
        let dup = r#"{"workloads": [{"agent": "a", "service": "*", "access": "open"},
                                    {"agent": "a", "service": "*", "access": "open"}]}"#;
        assert!(config_error(dup).starts_with("workloads[1]"));
    }
}
