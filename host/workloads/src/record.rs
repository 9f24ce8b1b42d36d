//! Workload records: what the control plane created, and the checks on its input.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Label carrying the workload's owner (a user name), set by the host, never by the agent.
pub const OWNER_LABEL: &str = "burrow.owner";
/// Label carrying the users allowed besides the owner, comma-separated.
pub const USERS_LABEL: &str = "burrow.users";
/// Label carrying the groups allowed, comma-separated.
pub const GROUPS_LABEL: &str = "burrow.groups";
/// Label set on every control-plane workload's agent, so a policy can tell them apart.
pub use burrow_host_core::admission::MANAGED_LABEL;

/// Longest workload id (it is also the agent id and part of host names: a DNS label).
pub const MAX_ID_LEN: usize = 63;
/// Most users, groups, services or labels one workload may list.
pub const MAX_LIST: usize = 256;
/// Longest user, group, service or label text.
pub const MAX_TEXT: usize = 256;

/// How a workload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndState {
    /// Terminated through the control API.
    Terminated,
    /// Past its expiry.
    Expired,
}

/// A workload created through the control API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRecord {
    pub kind: String,
    pub id: String,
    pub owner: String,
    pub allowed_users: Vec<String>,
    pub allowed_groups: Vec<String>,
    /// Services the agent may offer; empty: any.
    pub services: Vec<String>,
    /// Unix ms; 0: no expiry.
    pub expires_at: u64,
    pub labels: BTreeMap<String, String>,
    pub created_at: u64,
    /// Set once the workload has ended (never cleared: ids are not reused while kept).
    pub ended: Option<Ended>,
}

/// When and why a workload ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ended {
    pub state: EndState,
    pub at: u64,
    pub reason: String,
}

impl WorkloadRecord {
    /// Whether the workload is over at `now` (terminated, or past its expiry).
    pub fn is_over(&self, now: u64) -> bool {
        self.ended.is_some() || (self.expires_at != 0 && now >= self.expires_at)
    }

    /// How it ended at `now`, if it has: terminated beats an expiry that passed later.
    pub fn end(&self, now: u64) -> Option<Ended> {
        if let Some(ended) = &self.ended {
            return Some(ended.clone());
        }
        (self.expires_at != 0 && now >= self.expires_at).then(|| Ended {
            state: EndState::Expired,
            at: self.expires_at,
            reason: "the workload expired".into(),
        })
    }

    /// The labels its agent carries: the control plane's own, then the access labels,
    /// which the host sets (an agent cannot choose them) so policies may trust them.
    pub fn agent_labels(&self) -> Vec<(String, String)> {
        let mut labels: Vec<(String, String)> = self
            .labels
            .iter()
            .filter(|(k, _)| !k.starts_with("burrow."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.push((MANAGED_LABEL.into(), "true".into()));
        if !self.owner.is_empty() {
            labels.push((OWNER_LABEL.into(), self.owner.clone()));
        }
        if !self.allowed_users.is_empty() {
            labels.push((USERS_LABEL.into(), self.allowed_users.join(",")));
        }
        if !self.allowed_groups.is_empty() {
            labels.push((GROUPS_LABEL.into(), self.allowed_groups.join(",")));
        }
        labels
    }
}

/// Why a control-plane request was refused; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidField {
    pub field: &'static str,
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> InvalidField {
    InvalidField { field, problem: problem.into() }
}

/// A workload id: a DNS label in lower case (it names the agent and appears in host
/// names), `[a-z0-9][a-z0-9-]{0,62}`.
pub fn check_id(id: &str) -> Result<(), InvalidField> {
    if id.is_empty() {
        return Err(invalid("id", "required"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(invalid("id", format!("at most {MAX_ID_LEN} characters")));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !id.chars().all(ok_char) || id.starts_with('-') || id.ends_with('-') {
        return Err(invalid("id", "only a-z, 0-9 and '-', not at either end"));
    }
    Ok(())
}

/// A workload kind: like an id, but up to 64 characters.
pub fn check_kind(kind: &str) -> Result<(), InvalidField> {
    if kind.is_empty() {
        return Err(invalid("kind", "required"));
    }
    if kind.len() > 64 || !kind.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err(invalid("kind", "1-64 characters of a-z, 0-9 and '-'"));
    }
    Ok(())
}

fn check_text(field: &'static str, value: &str) -> Result<(), InvalidField> {
    if value.is_empty() || value.len() > MAX_TEXT {
        return Err(invalid(field, format!("each entry must be 1-{MAX_TEXT} bytes")));
    }
    if value.chars().any(|c| c.is_control() || c == ',') {
        return Err(invalid(field, "entries may not contain control characters or ','"));
    }
    Ok(())
}

fn check_list(field: &'static str, values: &[String]) -> Result<(), InvalidField> {
    if values.len() > MAX_LIST {
        return Err(invalid(field, format!("at most {MAX_LIST} entries")));
    }
    values.iter().try_for_each(|v| check_text(field, v))
}

impl WorkloadRecord {
    /// Checks everything a control plane sent (ids, sizes, label names).
    pub fn validate(&self, now: u64) -> Result<(), InvalidField> {
        check_kind(&self.kind)?;
        check_id(&self.id)?;
        if !self.owner.is_empty() {
            check_text("owner", &self.owner)?;
        }
        check_list("allowed_users", &self.allowed_users)?;
        check_list("allowed_groups", &self.allowed_groups)?;
        check_list("services", &self.services)?;
        if self.labels.len() > MAX_LIST {
            return Err(invalid("labels", format!("at most {MAX_LIST} labels")));
        }
        for (k, v) in &self.labels {
            check_text("labels", k)?;
            if v.len() > MAX_TEXT || v.chars().any(char::is_control) {
                return Err(invalid(
                    "labels",
                    format!("label {k:?}: values are at most {MAX_TEXT} bytes, no control characters"),
                ));
            }
            if k.starts_with("burrow.") {
                return Err(invalid("labels", format!("label {k:?}: the burrow. prefix is the host's own")));
            }
        }
        if self.expires_at != 0 && self.expires_at <= now {
            return Err(invalid("expires_at_ms", "is in the past"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> WorkloadRecord {
        WorkloadRecord {
            kind: "workspace".into(),
            id: "ws-1".into(),
            owner: "alice".into(),
            allowed_users: vec!["bob".into()],
            allowed_groups: vec!["dev".into(), "ops".into()],
            services: vec!["web".into()],
            expires_at: 0,
            labels: BTreeMap::from([("team".into(), "infra".into())]),
            created_at: 1,
            ended: None,
        }
    }

    #[test]
    fn workload_ids_are_dns_labels() {
        for good in ["a", "ws-1", "job-1234", &"x".repeat(63)] {
            check_id(good).unwrap();
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", "a b", &"x".repeat(64), "ä"] {
            assert_eq!(check_id(bad).unwrap_err().field, "id", "{bad:?}");
        }
    }

    #[test]
    fn workload_input_is_checked_field_by_field() {
        record().validate(10).unwrap();
        let mut r = record();
        r.labels.insert("burrow.owner".into(), "mallory".into());
        assert_eq!(r.validate(10).unwrap_err().field, "labels");
        let mut r = record();
        r.allowed_users = vec!["a,b".into()];
        assert_eq!(r.validate(10).unwrap_err().field, "allowed_users");
        let mut r = record();
        r.services = vec!["s".into(); MAX_LIST + 1];
        assert_eq!(r.validate(10).unwrap_err().field, "services");
        let mut r = record();
        r.expires_at = 5;
        assert_eq!(r.validate(10).unwrap_err().field, "expires_at_ms");
        let mut r = record();
        r.kind = String::new();
        assert_eq!(r.validate(10).unwrap_err().field, "kind");
    }

    #[test]
    fn workload_access_labels_come_from_the_record_not_the_control_planes_labels() {
        let labels = record().agent_labels();
        let get = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("team"), Some("infra"));
        assert_eq!(get(OWNER_LABEL), Some("alice"));
        assert_eq!(get(USERS_LABEL), Some("bob"));
        assert_eq!(get(GROUPS_LABEL), Some("dev,ops"));
        assert_eq!(get(MANAGED_LABEL), Some("true"));
    }

    #[test]
    fn a_workload_is_over_once_terminated_or_past_its_expiry() {
        let mut r = record();
        assert!(!r.is_over(100));
        r.expires_at = 50;
        assert!(r.is_over(50));
        assert_eq!(r.end(60).unwrap().state, EndState::Expired);
        r.ended = Some(Ended { state: EndState::Terminated, at: 40, reason: "done".into() });
        assert_eq!(r.end(60).unwrap().state, EndState::Terminated);
    }
}
