//! The authorizer's config and decisions as plain functions, testable natively.
//!
//! Every credential lives in the config as a SHA-256 hash only, so a leaked config file
//! does not leak credentials; presented secrets are hashed and looked up by hash
//! ([`secrets`] says why that is safe and what stays constant-time).

// An explicit path: the bench compiles this file from elsewhere (`#[path]`).
#[path = "policy/secrets.rs"]
mod secrets;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use burrow_plugin_sdk::{AgentIdentity, Credential, Principal};
use secrets::{Hash, Secrets, SecretsBuilder};
use serde::Deserialize;
use sha2::{Digest, Sha256};

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    agents: Vec<RawAgent>,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    ssh_keys: Vec<RawSshKey>,
    #[serde(default)]
    session_cookie: Option<String>,
    /// A user's token also works as their SSH password (for tools without keys).
    #[serde(default = "yes")]
    ssh_password_tokens: bool,
    #[serde(default)]
    default_access: DefaultAccess,
    #[serde(default)]
    unknown_credentials: UnknownCredentials,
    #[serde(default)]
    workloads: Vec<RawWorkload>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: String,
    token_sha256: String,
    #[serde(default = "default_workload_kind")]
    workload_kind: String,
    #[serde(default)]
    workload_id: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    expires_at: Option<u64>,
}

fn default_workload_kind() -> String {
    "workspace".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    #[serde(default)]
    token_sha256: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSshKey {
    user: String,
    fingerprint: String,
}

/// Access for workloads no rule names.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAccess {
    #[default]
    Deny,
    Open,
}

/// What an unrecognised credential gets.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum UnknownCredentials {
    /// 401 with a reason (default).
    #[default]
    Reject,
    /// Treated as no credential, so an open workload still receives its own tokens.
    Anonymous,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    agent: String,
    service: String,
    /// Labels the agent must carry (all of them); required when `agent` is `"*"`.
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    access: Access,
    #[serde(default)]
    users: Vec<RuleUser>,
    #[serde(default)]
    groups: Vec<String>,
}

/// A rule's user: a name from `users`, or (the original config form) a user defined
/// inline with its token hash.
#[derive(Deserialize)]
#[serde(untagged)]
enum RuleUser {
    Name(String),
    Inline(RawInlineUser),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInlineUser {
    name: String,
    token_sha256: String,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Access {
    Open,
    Token,
}

struct Agent {
    identity: AgentIdentity,
}

struct User {
    name: String,
    groups: Vec<String>,
}

struct Rule {
    /// `None` is the `"*"` wildcard: the rule selects agents by `labels` alone.
    agent: Option<String>,
    /// Label pairs the agent must all carry (empty: no condition; never for `agent = "*"`).
    labels: Vec<(String, String)>,
    /// `None` is the `"*"` wildcard.
    service: Option<String>,
    access: Access,
    users: Vec<String>,
    groups: Vec<String>,
}

impl Rule {
    /// Whether this rule is about `agent`, whose labels are `labels`: it names the agent or
    /// is `"*"`, and the agent carries every label pair of the rule.
    fn applies_to(&self, agent: &str, labels: &[(String, String)]) -> bool {
        self.agent.as_deref().is_none_or(|a| a == agent)
            && self.labels.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }
}

/// The parsed, validated config.
pub struct Policy {
    agents: Vec<Agent>,
    agent_tokens: Secrets,
    users: Vec<User>,
    user_tokens: Secrets,
    /// Fingerprint → owner.
    ssh_keys: HashMap<String, usize>,
    session_cookie: Option<String>,
    ssh_password_tokens: bool,
    default_access: DefaultAccess,
    unknown_credentials: UnknownCredentials,
    rules: Vec<Rule>,
}

/// Hashes are not secrets, but the list is long and dull: show counts only.
impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("agents", &self.agents.len())
            .field("users", &self.users.len())
            .field("user_tokens", &self.user_tokens.len())
            .field("ssh_keys", &self.ssh_keys.len())
            .field("session_cookie", &self.session_cookie)
            .field("default_access", &self.default_access)
            .field("unknown_credentials", &self.unknown_credentials)
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// The authorizer's verdict on an agent token.
#[derive(Debug, PartialEq, Eq)]
pub enum AgentVerdict {
    Accepted(AgentIdentity),
    Rejected(&'static str),
}

/// The authorizer's verdict on a user credential.
#[derive(Debug, PartialEq, Eq)]
pub enum UserVerdict {
    Authenticated(Principal),
    Anonymous,
    Rejected(&'static str),
}

/// The authorizer's verdict on a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow { strip_credentials: bool },
    Deny { status: u16, reason: &'static str },
}

pub const UNKNOWN_AGENT: &str = "agent token not recognised";
pub const EXPIRED_AGENT: &str = "agent credentials have expired";
pub const UNKNOWN_TOKEN: &str = "token not recognised";
pub const UNKNOWN_SESSION: &str = "session not recognised";
pub const UNKNOWN_SSH_KEY: &str = "ssh key not recognised";
pub const NO_PASSWORDS: &str = "password logins are not accepted";
pub const NEEDS_CREDENTIALS: &str = "this workload requires credentials";
pub const NOT_ALLOWED: &str = "not allowed for this workload";
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

fn valid_kind(kind: &str) -> bool {
    !kind.is_empty() && kind.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl Policy {
    pub fn from_json(json: &str) -> Result<Policy, String> {
        // Through a JSON value, so errors name the field (its path, `agents[3].id`) and not
        // the position in the JSON the host made of the config: admins wrote TOML, so
        // that position is noise.
        let value: serde_json::Value = serde_json::from_str(json).map_err(|err| err.to_string())?;
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            match path.as_str() {
                "." => err.into_inner().to_string(),
                _ => format!("{path}: {}", err.into_inner()),
            }
        })?;

        let mut agents = Vec::with_capacity(raw.agents.len());
        let mut agent_tokens = SecretsBuilder::with_capacity(raw.agents.len());
        for (i, agent) in raw.agents.into_iter().enumerate() {
            if agent.id.is_empty() {
                return Err(format!("agents[{i}].id: must not be empty"));
            }
            if !valid_kind(&agent.workload_kind) {
                return Err(format!(
                    "agents[{i}].workload_kind: {:?} must be lowercase letters, digits and '-'",
                    agent.workload_kind
                ));
            }
            if agent.workload_id.as_deref() == Some("") {
                return Err(format!(
                    "agents[{i}].workload_id: must not be empty (leave it out to use the id)"
                ));
            }
            let field = format!("agents[{i}].token_sha256");
            agent_tokens.add(&field, parse_hash(&field, &agent.token_sha256)?, i)?;
            agents.push(Agent {
                identity: AgentIdentity {
                    workload_id: agent.workload_id.unwrap_or_else(|| agent.id.clone()),
                    agent_id: agent.id,
                    workload_kind: agent.workload_kind,
                    expires_at: agent.expires_at,
                    labels: agent.labels.into_iter().collect(),
                },
            });
        }

        let mut users: Vec<User> = Vec::with_capacity(raw.users.len());
        // Name → index into `users`, so long user lists load in linear time.
        let mut user_index: HashMap<String, usize> = HashMap::with_capacity(raw.users.len());
        let mut user_tokens = SecretsBuilder::with_capacity(raw.users.len());
        for (i, user) in raw.users.into_iter().enumerate() {
            if user.name.is_empty() {
                return Err(format!("users[{i}].name: must not be empty"));
            }
            if user_index.insert(user.name.clone(), users.len()).is_some() {
                return Err(format!("users[{i}].name: {:?} is listed twice", user.name));
            }
            if let Some(j) = user.groups.iter().position(String::is_empty) {
                return Err(format!("users[{i}].groups[{j}]: must not be empty"));
            }
            if let Some(hex_text) = &user.token_sha256 {
                let field = format!("users[{i}].token_sha256");
                user_tokens.add(&field, parse_hash(&field, hex_text)?, i)?;
            }
            users.push(User { name: user.name, groups: user.groups });
        }

        let mut rules: Vec<Rule> = Vec::with_capacity(raw.workloads.len());
        for (i, rule) in raw.workloads.into_iter().enumerate() {
            let agent = match rule.agent.as_str() {
                "" => return Err(format!("workloads[{i}].agent: must be an agent id or \"*\"")),
                "*" => None,
                _ => Some(rule.agent),
            };
            let labels: Vec<(String, String)> = match rule.labels {
                None if agent.is_none() => {
                    return Err(format!("workloads[{i}].labels: required when agent = \"*\""));
                }
                None => Vec::new(),
                Some(labels) if labels.is_empty() => {
                    return Err(match agent {
                        None => format!("workloads[{i}].labels: required when agent = \"*\""),
                        Some(_) => format!(
                            "workloads[{i}].labels: must not be empty (leave it out to match on the agent alone)"
                        ),
                    });
                }
                Some(labels) => labels.into_iter().collect(),
            };
            if labels.iter().any(|(key, _)| key.trim().is_empty()) {
                return Err(format!("workloads[{i}].labels: keys must not be empty"));
            }
            let service = match rule.service.as_str() {
                "" => return Err(format!("workloads[{i}].service: must be a service name or \"*\"")),
                "*" => None,
                _ => Some(rule.service),
            };
            if rules.iter().any(|r| r.agent == agent && r.labels == labels && r.service == service) {
                return Err(format!(
                    "workloads[{i}]: a rule for agent {:?}{} and service {:?} already exists",
                    agent.as_deref().unwrap_or("*"),
                    if labels.is_empty() { "" } else { " with these labels" },
                    service.as_deref().unwrap_or("*")
                ));
            }
            if rule.access == Access::Open && (!rule.users.is_empty() || !rule.groups.is_empty()) {
                return Err(format!(
                    "workloads[{i}]: users and groups are only allowed with access = \"token\""
                ));
            }
            if let Some(j) = rule.groups.iter().position(String::is_empty) {
                return Err(format!("workloads[{i}].groups[{j}]: must not be empty"));
            }
            let mut names = Vec::with_capacity(rule.users.len());
            for (j, user) in rule.users.into_iter().enumerate() {
                let name = match user {
                    RuleUser::Name(name) => {
                        if !user_index.contains_key(&name) {
                            return Err(format!("workloads[{i}].users[{j}]: no user {name:?} in `users`"));
                        }
                        name
                    }
                    RuleUser::Inline(inline) => {
                        if inline.name.is_empty() {
                            return Err(format!("workloads[{i}].users[{j}].name: must not be empty"));
                        }
                        let owner = match user_index.get(&inline.name) {
                            Some(owner) => *owner,
                            None => {
                                users.push(User { name: inline.name.clone(), groups: Vec::new() });
                                user_index.insert(inline.name.clone(), users.len() - 1);
                                users.len() - 1
                            }
                        };
                        let field = format!("workloads[{i}].users[{j}].token_sha256");
                        user_tokens.add(&field, parse_hash(&field, &inline.token_sha256)?, owner)?;
                        inline.name
                    }
                };
                names.push(name);
            }
            rules.push(Rule {
                agent,
                labels,
                service,
                access: rule.access,
                users: names,
                groups: rule.groups,
            });
        }

        let mut ssh_keys: HashMap<String, usize> = HashMap::with_capacity(raw.ssh_keys.len());
        for (i, key) in raw.ssh_keys.into_iter().enumerate() {
            let Some(&owner) = user_index.get(&key.user) else {
                return Err(format!("ssh_keys[{i}].user: no user {:?} in `users`", key.user));
            };
            let fingerprint = key.fingerprint.trim().to_string();
            if !fingerprint.starts_with("SHA256:") || fingerprint.len() <= "SHA256:".len() {
                return Err(format!(
                    "ssh_keys[{i}].fingerprint: expected \"SHA256:<base64>\" as `ssh-keygen -l` prints it"
                ));
            }
            if ssh_keys.insert(fingerprint, owner).is_some() {
                return Err(format!("ssh_keys[{i}].fingerprint: listed twice"));
            }
        }

        if raw.session_cookie.as_deref().is_some_and(|name| name.trim().is_empty()) {
            return Err("session_cookie: must not be empty (leave it out to ignore cookies)".into());
        }

        Ok(Policy {
            agents,
            agent_tokens: agent_tokens.build(),
            users,
            user_tokens: user_tokens.build(),
            ssh_keys,
            session_cookie: raw.session_cookie,
            ssh_password_tokens: raw.ssh_password_tokens,
            default_access: raw.default_access,
            unknown_credentials: raw.unknown_credentials,
            rules,
        })
    }

    /// The identity whose token hash matches, unless it has expired at `now` (unix ms).
    pub fn authenticate_agent(&self, token: &str, now: u64) -> AgentVerdict {
        if token.is_empty() {
            return AgentVerdict::Rejected(UNKNOWN_AGENT);
        }
        let Some(i) = self.agent_tokens.owner(&sha256(token)) else {
            return AgentVerdict::Rejected(UNKNOWN_AGENT);
        };
        let identity = &self.agents[i].identity;
        if identity.expires_at.is_some_and(|at| now >= at) {
            return AgentVerdict::Rejected(EXPIRED_AGENT);
        }
        AgentVerdict::Accepted(identity.clone())
    }

    pub fn authenticate_user(&self, credential: &Credential) -> UserVerdict {
        let (owner, method, unknown) = match credential {
            Credential::None => return UserVerdict::Anonymous,
            Credential::Bearer(token) if token.is_empty() => return UserVerdict::Anonymous,
            Credential::Bearer(token) => (self.user_tokens.owner(&sha256(token)), "bearer", UNKNOWN_TOKEN),
            Credential::Cookie { name, value } => {
                // Only the configured session cookie is ours; others belong to the workload.
                if self.session_cookie.as_deref() != Some(name.as_str()) || value.is_empty() {
                    return UserVerdict::Anonymous;
                }
                (self.user_tokens.owner(&sha256(value)), "cookie", UNKNOWN_SESSION)
            }
            Credential::SshPublicKey { fingerprint, .. } => {
                // Fingerprints are public: an ordinary comparison reveals nothing.
                let owner = self.ssh_keys.get(fingerprint.as_str()).copied();
                (owner, "ssh-key", UNKNOWN_SSH_KEY)
            }
            Credential::SshPassword { password, .. } if self.ssh_password_tokens && !password.is_empty() => {
                (self.user_tokens.owner(&sha256(password)), "ssh-password", UNKNOWN_TOKEN)
            }
            Credential::SshPassword { .. } => (None, "ssh-password", NO_PASSWORDS),
        };
        match owner {
            Some(i) => {
                let user = &self.users[i];
                UserVerdict::Authenticated(Principal {
                    id: user.name.clone(),
                    groups: user.groups.clone(),
                    labels: vec![("authenticated-by".to_string(), method.to_string())],
                })
            }
            None => match self.unknown_credentials {
                UnknownCredentials::Reject => UserVerdict::Rejected(unknown),
                UnknownCredentials::Anonymous => UserVerdict::Anonymous,
            },
        }
    }

    /// The rule deciding `service` on `agent`, whose labels are `labels`: among the rules
    /// that apply to the agent (see [`Rule::applies_to`]), those naming it beat the
    /// `agent = "*"` label rules; within each group an exact service beats `"*"`; then the
    /// first in config order.
    fn rule_for(&self, agent: &str, labels: &[(String, String)], service: &str) -> Option<&Rule> {
        let applying = |named: bool| {
            self.rules.iter().filter(move |r| r.agent.is_some() == named && r.applies_to(agent, labels))
        };
        let pick = |named: bool| {
            applying(named)
                .find(|r| r.service.as_deref() == Some(service))
                .or_else(|| applying(named).find(|r| r.service.is_none()))
        };
        pick(true).or_else(|| pick(false))
    }

    /// Whether `principal` (`None`: anonymous) may use `service` on `agent`, whose labels
    /// (as the host reports them: the agent's own and the host's `burrow.` ones) are
    /// `labels`.
    pub fn authorize(
        &self,
        agent: &str,
        labels: &[(String, String)],
        service: &str,
        principal: Option<&Principal>,
    ) -> Verdict {
        let Some(rule) = self.rule_for(agent, labels, service) else {
            return match self.default_access {
                DefaultAccess::Open => Verdict::Allow { strip_credentials: false },
                DefaultAccess::Deny => Verdict::Deny { status: 403, reason: DENIED_BY_DEFAULT },
            };
        };
        match rule.access {
            Access::Open => Verdict::Allow { strip_credentials: false },
            Access::Token => {
                let Some(principal) = principal else {
                    return Verdict::Deny { status: 401, reason: NEEDS_CREDENTIALS };
                };
                let by_name = rule.users.contains(&principal.id);
                let by_group = rule.groups.iter().any(|g| principal.in_group(g));
                if by_name || by_group {
                    Verdict::Allow { strip_credentials: true }
                } else {
                    Verdict::Deny { status: 403, reason: NOT_ALLOWED }
                }
            }
        }
    }

    /// Access to a workload a control plane created, from the labels the host set on its
    /// agent (`burrow.owner`, `burrow.users`, `burrow.groups`; agents cannot set
    /// `burrow.` labels). `None` when the agent is not such a workload's, or when a rule in
    /// this config applies to the agent (an admin's explicit rule wins): one naming it (its
    /// `labels`, if any, held) or an `agent = "*"` rule whose labels the agent carries. That
    /// rule then decides for every service of the agent, like any rule: services no rule
    /// covers fall to `default_access`.
    pub fn authorize_managed(
        &self,
        agent: &str,
        labels: &[(String, String)],
        principal: Option<&Principal>,
    ) -> Option<Verdict> {
        let label = |name: &str| labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        if label("burrow.managed") != Some("true") || self.rules.iter().any(|r| r.applies_to(agent, labels)) {
            return None;
        }
        let Some(principal) = principal else {
            return Some(Verdict::Deny { status: 401, reason: NEEDS_CREDENTIALS });
        };
        let list = |name: &str| {
            label(name).map(|v| v.split(',').map(str::trim).collect::<Vec<_>>()).unwrap_or_default()
        };
        let allowed = label("burrow.owner") == Some(principal.id.as_str())
            || list("burrow.users").contains(&principal.id.as_str())
            || list("burrow.groups").iter().any(|g| principal.in_group(g));
        Some(if allowed {
            Verdict::Allow { strip_credentials: true }
        } else {
            Verdict::Deny { status: 403, reason: NOT_ALLOWED }
        })
    }
}

// A path, not the default lookup: bench/src/plugins includes this file by path too.
#[cfg(test)]
#[path = "policy/tests.rs"]
mod tests;
