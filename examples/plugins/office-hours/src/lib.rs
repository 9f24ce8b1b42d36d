//! Example Burrow authorizer: users in the configured groups may reach workloads during
//! office hours only; everything else is denied with a reason that says why.
//!
//! - Agents authenticate with a token whose SHA-256 is listed in `agents`.
//! - Users authenticate with a bearer token whose SHA-256 is listed in `users`, which also
//!   gives their groups. No credential is anonymous; an unknown token is rejected.
//! - `authorize` allows a user in one of `groups` while the clock (the host's `clock`
//!   import, in the fixed `timezone_offset_minutes`) is inside that group's window:
//!   `days` from `start` to `end`, or the group's entry in `overrides`.
//!
//! See README.md for the config and office-hours.toml for test vectors.

mod schedule;

use std::collections::BTreeMap;

use burrow_plugin_sdk::{
    export_authorizer, AgentAuthOutcome, AgentHello, AgentIdentity, AuthorizeRequest, Authorizer, Credential,
    Decision, Host, Principal, UserAuthOutcome, UserAuthRequest,
};
use schedule::{describe_offset, local_time, Window};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    groups: Vec<String>,
    #[serde(default)]
    timezone_offset_minutes: i32,
    #[serde(default = "default_days")]
    days: Vec<String>,
    #[serde(default = "default_start")]
    start: String,
    #[serde(default = "default_end")]
    end: String,
    #[serde(default)]
    overrides: BTreeMap<String, RawOverride>,
    #[serde(default)]
    agents: Vec<RawAgent>,
    #[serde(default)]
    users: Vec<RawUser>,
}

fn default_days() -> Vec<String> {
    ["mon", "tue", "wed", "thu", "fri"].map(String::from).to_vec()
}

fn default_start() -> String {
    "09:00".into()
}

fn default_end() -> String {
    "17:00".into()
}

/// A group's own window; what it leaves out comes from the top level.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    days: Option<Vec<String>>,
    start: Option<String>,
    end: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: String,
    token_sha256: String,
    #[serde(default = "default_kind")]
    workload_kind: String,
    workload_id: Option<String>,
}

fn default_kind() -> String {
    "workspace".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    token_sha256: String,
    #[serde(default)]
    groups: Vec<String>,
}

type Hash = [u8; 32];

/// The plugin: the validated config.
pub struct OfficeHours {
    /// Allowed groups with their windows, in config order.
    groups: Vec<(String, Window)>,
    offset_minutes: i32,
    agents: Vec<(Hash, AgentIdentity)>,
    users: Vec<(Hash, Principal)>,
}

fn parse_hash(field: &str, text: &str) -> Result<Hash, String> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut hash)
        .map_err(|err| format!("{field}: expected 64 hex digits (a SHA-256 hash): {err}"))?;
    Ok(hash)
}

/// Index of the entry whose hash equals the secret's, visiting every entry with no early
/// exit, so timing reveals nothing about which (or whether any) entry matched.
fn find<T>(entries: &[(Hash, T)], secret: &str) -> Option<usize> {
    let hash: Hash = Sha256::digest(secret.as_bytes()).into();
    let mut found = subtle::Choice::from(0);
    let mut index = 0u64;
    for (i, (candidate, _)) in entries.iter().enumerate() {
        let matches = candidate.ct_eq(&hash);
        found |= matches;
        index = u64::conditional_select(&index, &(i as u64), matches);
    }
    bool::from(found).then_some(index as usize)
}

impl OfficeHours {
    fn from_config(raw: RawConfig) -> Result<Self, String> {
        if raw.groups.is_empty() {
            return Err("groups: list at least one group (nobody could ever get in)".into());
        }
        if !(-12 * 60..=14 * 60).contains(&raw.timezone_offset_minutes) {
            return Err(format!(
                "timezone_offset_minutes: {} is outside -720..=840",
                raw.timezone_offset_minutes
            ));
        }
        let default_window = Window::parse("", &raw.days, &raw.start, &raw.end)?;
        if let Some(name) = raw.overrides.keys().find(|name| !raw.groups.contains(name)) {
            return Err(format!("overrides.{name}: not one of `groups`"));
        }
        let mut groups = Vec::with_capacity(raw.groups.len());
        for (i, group) in raw.groups.iter().enumerate() {
            if group.is_empty() {
                return Err(format!("groups[{i}]: must not be empty"));
            }
            let window = match raw.overrides.get(group) {
                None => default_window.clone(),
                Some(o) => Window::parse(
                    &format!("overrides.{group}."),
                    o.days.as_deref().unwrap_or(&raw.days),
                    o.start.as_deref().unwrap_or(&raw.start),
                    o.end.as_deref().unwrap_or(&raw.end),
                )?,
            };
            groups.push((group.clone(), window));
        }
        let mut agents = Vec::with_capacity(raw.agents.len());
        for (i, agent) in raw.agents.into_iter().enumerate() {
            if agent.id.is_empty() || agent.workload_kind.is_empty() {
                return Err(format!("agents[{i}]: id and workload_kind must not be empty"));
            }
            let hash = parse_hash(&format!("agents[{i}].token_sha256"), &agent.token_sha256)?;
            let identity = AgentIdentity {
                workload_id: agent.workload_id.unwrap_or_else(|| agent.id.clone()),
                agent_id: agent.id,
                workload_kind: agent.workload_kind,
                expires_at: None,
                labels: Vec::new(),
            };
            agents.push((hash, identity));
        }
        let mut users = Vec::with_capacity(raw.users.len());
        for (i, user) in raw.users.into_iter().enumerate() {
            if user.name.is_empty() {
                return Err(format!("users[{i}].name: must not be empty"));
            }
            let hash = parse_hash(&format!("users[{i}].token_sha256"), &user.token_sha256)?;
            if users.iter().any(|(h, _)| *h == hash) {
                return Err(format!("users[{i}].token_sha256: the same token is listed for another user"));
            }
            users.push((hash, Principal { id: user.name, groups: user.groups, labels: Vec::new() }));
        }
        Ok(OfficeHours { groups, offset_minutes: raw.timezone_offset_minutes, agents, users })
    }

    /// The decision for `principal` at `now_ms`.
    fn decide(&self, principal: Option<&Principal>, now_ms: u64) -> Decision {
        let Some(principal) = principal else {
            return Decision::unauthorized("log in with your bearer token to use this workload");
        };
        let theirs: Vec<&(String, Window)> =
            self.groups.iter().filter(|(g, _)| principal.in_group(g)).collect();
        if theirs.is_empty() {
            let allowed: Vec<&str> = self.groups.iter().map(|(g, _)| g.as_str()).collect();
            return Decision::forbidden(format!(
                "{} is not in an allowed group ({})",
                principal.id,
                allowed.join(", ")
            ));
        }
        let (weekday, minute) = local_time(now_ms, self.offset_minutes);
        if theirs.iter().any(|(_, window)| window.contains(weekday, minute)) {
            return Decision::allow_stripping_credentials();
        }
        let hours: Vec<String> = theirs.iter().map(|(g, w)| format!("{g}: {w}")).collect();
        Decision::forbidden(format!(
            "outside office hours ({}, {})",
            hours.join("; "),
            describe_offset(self.offset_minutes)
        ))
    }
}

impl Authorizer for OfficeHours {
    fn init(host: &impl Host) -> Result<Self, String> {
        let raw: RawConfig = host.config().map_err(|err| err.to_string())?;
        OfficeHours::from_config(raw).map_err(|err| format!("invalid config: {err}"))
    }

    fn authenticate_agent(&self, _host: &impl Host, req: AgentHello) -> AgentAuthOutcome {
        match (req.token.is_empty(), find(&self.agents, &req.token)) {
            (false, Some(i)) => AgentAuthOutcome::Accepted(self.agents[i].1.clone()),
            _ => AgentAuthOutcome::Rejected("agent token not recognised".into()),
        }
    }

    fn authenticate_user(&self, _host: &impl Host, req: UserAuthRequest) -> UserAuthOutcome {
        match req.credential {
            Credential::Bearer(token) if !token.is_empty() => match find(&self.users, &token) {
                Some(i) => UserAuthOutcome::Authenticated(self.users[i].1.clone()),
                None => UserAuthOutcome::Rejected("token not recognised".into()),
            },
            Credential::SshPublicKey { .. } | Credential::SshPassword { .. } => {
                UserAuthOutcome::Rejected("only bearer tokens are accepted".into())
            }
            // No credential, or a cookie that belongs to the workload.
            _ => UserAuthOutcome::Anonymous,
        }
    }

    fn authorize(&self, host: &impl Host, req: AuthorizeRequest) -> Decision {
        self.decide(req.principal.as_ref(), host.now())
    }
}

export_authorizer!(OfficeHours);
burrow_plugin_sdk::embed_manifest!("office-hours.toml");

#[cfg(test)]
mod tests {
    use burrow_plugin_sdk::manifest::Manifest;
    use burrow_plugin_sdk::{Action, MockHost, Target};
    use serde_json::json;

    use super::*;

    /// 2025-11-25T08:30:00Z, a Tuesday.
    const TUESDAY_0830_UTC: u64 = 1_764_059_400_000;
    const HOUR: u64 = 3_600_000;

    fn sha(secret: &str) -> String {
        hex::encode(Sha256::digest(secret.as_bytes()))
    }

    /// The config the manifest's vectors use by default.
    fn config() -> serde_json::Value {
        json!({
            "groups": ["staff", "oncall"],
            "timezone_offset_minutes": 60,
            "overrides": {"oncall": {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"}},
            "agents": [{"id": "demo", "token_sha256": sha("agent-token")}],
            "users": [
                {"name": "alice", "token_sha256": sha("alice-token"), "groups": ["staff"]},
                {"name": "olga", "token_sha256": sha("olga-token"), "groups": ["oncall"]},
                {"name": "mallory", "token_sha256": sha("mallory-token"), "groups": ["contractors"]},
            ],
        })
    }

    fn setup() -> (MockHost, OfficeHours) {
        let host = MockHost::new().with_config(config());
        let plugin = OfficeHours::init(&host).unwrap();
        (host, plugin)
    }

    fn login(plugin: &OfficeHours, host: &MockHost, token: &str) -> UserAuthOutcome {
        let req = UserAuthRequest {
            credential: Credential::Bearer(token.into()),
            client_addr: "192.0.2.1:5000".into(),
            host: "web-demo.localhost".into(),
            action: Action::Http,
        };
        plugin.authenticate_user(host, req)
    }

    fn authorize(plugin: &OfficeHours, host: &MockHost, principal: Option<Principal>) -> Decision {
        let req = AuthorizeRequest {
            principal,
            target: Target {
                workload_kind: "workspace".into(),
                workload_id: "demo".into(),
                agent_id: "demo".into(),
                service: "web".into(),
            },
            action: Action::Http,
            client_addr: "192.0.2.1:5000".into(),
            host: "web-demo.localhost".into(),
            method: "GET".into(),
            path: "/".into(),
            agent_labels: Vec::new(),
        };
        plugin.authorize(host, req)
    }

    fn principal(plugin: &OfficeHours, host: &MockHost, token: &str) -> Principal {
        match login(plugin, host, token) {
            UserAuthOutcome::Authenticated(p) => p,
            other => panic!("{token}: {other:?}"),
        }
    }

    #[test]
    fn staff_get_in_during_office_hours_only() {
        let (host, plugin) = setup();
        let alice = principal(&plugin, &host, "alice-token");
        host.set_now(TUESDAY_0830_UTC); // 09:30 local
        assert_eq!(authorize(&plugin, &host, Some(alice.clone())), Decision::allow_stripping_credentials());
        host.set_now(TUESDAY_0830_UTC + 7 * HOUR + HOUR / 2); // 17:00 local
        match authorize(&plugin, &host, Some(alice.clone())) {
            Decision::Deny { status: 403, reason } => {
                assert_eq!(reason, "outside office hours (staff: mon-fri 09:00-17:00, UTC+01:00)")
            }
            other => panic!("{other:?}"),
        }
        host.set_now(TUESDAY_0830_UTC + 4 * 24 * HOUR); // Saturday
        assert!(!authorize(&plugin, &host, Some(alice)).is_allow());
    }

    #[test]
    fn oncall_override_is_always_open() {
        let (host, plugin) = setup();
        let olga = principal(&plugin, &host, "olga-token");
        host.set_now(TUESDAY_0830_UTC + 4 * 24 * HOUR + 15 * HOUR); // Saturday night
        assert!(authorize(&plugin, &host, Some(olga)).is_allow());
    }

    #[test]
    fn everyone_else_is_denied_with_a_reason() {
        let (host, plugin) = setup();
        host.set_now(TUESDAY_0830_UTC);
        let mallory = principal(&plugin, &host, "mallory-token");
        assert_eq!(
            authorize(&plugin, &host, Some(mallory)),
            Decision::forbidden("mallory is not in an allowed group (staff, oncall)")
        );
        assert!(matches!(authorize(&plugin, &host, None), Decision::Deny { status: 401, .. }));
        assert_eq!(login(&plugin, &host, "guess"), UserAuthOutcome::Rejected("token not recognised".into()));
    }

    #[test]
    fn agents_by_token_hash() {
        let (host, plugin) = setup();
        let hello = |token: &str| AgentHello { token: token.into(), ..AgentHello::default() };
        match plugin.authenticate_agent(&host, hello("agent-token")) {
            AgentAuthOutcome::Accepted(id) => {
                assert_eq!((id.agent_id.as_str(), id.workload_id.as_str()), ("demo", "demo"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(plugin.authenticate_agent(&host, hello("")), AgentAuthOutcome::Rejected(_)));
        assert!(matches!(plugin.authenticate_agent(&host, hello("x")), AgentAuthOutcome::Rejected(_)));
    }

    #[test]
    fn config_errors_name_the_field() {
        for (patch, field) in [
            (json!({"groups": []}), "groups"),
            (json!({"start": "9am"}), "start"),
            (json!({"timezone_offset_minutes": 900}), "timezone_offset_minutes"),
            (json!({"overrides": {"ghosts": {}}}), "overrides.ghosts"),
            (json!({"overrides": {"oncall": {"end": "25:00"}}}), "overrides.oncall.end"),
            (json!({"users": [{"name": "x", "token_sha256": "zz"}]}), "users[0].token_sha256"),
            (json!({"colour": "blue"}), "unknown field"),
        ] {
            let mut config = config();
            for (k, v) in patch.as_object().unwrap() {
                config[k] = v.clone();
            }
            let err = OfficeHours::init(&MockHost::new().with_config(config)).err().unwrap();
            assert!(err.contains(field), "{patch}: {err}");
        }
    }

    #[test]
    fn manifest_vectors_pass() {
        let manifest = Manifest::from_toml(crate::MANIFEST).unwrap();
        let ran = manifest.run_authorizer::<OfficeHours>(&config()).unwrap();
        assert!(ran >= 6, "{ran}");
    }
}
