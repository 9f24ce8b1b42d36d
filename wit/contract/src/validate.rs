//! Checks on what a plugin answers, before anyone trusts it; `Err` names the rule broken.
//!
//! The host applies these to every answer that crosses the WIT boundary (an answer that
//! fails is a plugin failure, `invalid result`), and the SDK's native manifest runner
//! applies the same functions to every test vector. They live here, once, so a vector
//! that passes in `cargo test` cannot be refused by the host for a rule the SDK did not
//! know about. Authors may call them in their own tests.

use crate::types::{AgentAuthOutcome, Decision, Resolved, RouteRequest, UserAuthOutcome};

/// Longest id (agent, workload, principal, service) the host accepts: ids end up in logs,
/// metrics labels and Redis keys.
pub const MAX_ID_BYTES: usize = 256;
/// Longest workload kind: kinds are metric labels and config keys.
pub const MAX_KIND_BYTES: usize = 64;

/// An id must be non-empty, at most [`MAX_ID_BYTES`] and free of control characters, so
/// it is usable in logs, metrics and Redis keys. `what` names it in the error.
pub fn id(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.len() > MAX_ID_BYTES || value.chars().any(|c| c.is_control()) {
        return Err(format!("{what} is longer than {MAX_ID_BYTES} bytes or holds control characters"));
    }
    Ok(())
}

/// A workload kind: 1 to [`MAX_KIND_BYTES`] lowercase letters, digits and `-`.
pub fn kind(kind: &str) -> Result<(), String> {
    if kind.is_empty()
        || kind.len() > MAX_KIND_BYTES
        || !kind.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!(
            "workload kind {kind:?} must be 1-{MAX_KIND_BYTES} lowercase letters, digits or '-'"
        ));
    }
    Ok(())
}

/// An accepted identity needs valid `agent_id` and `workload_id` ([`id`]) and a valid
/// `workload_kind` ([`kind()`]).
pub fn agent_auth_outcome(outcome: &AgentAuthOutcome) -> Result<(), String> {
    let AgentAuthOutcome::Accepted(identity) = outcome else { return Ok(()) };
    id("agent-id", &identity.agent_id)?;
    id("workload-id", &identity.workload_id)?;
    kind(&identity.workload_kind)
}

/// An authenticated principal needs a valid id ([`id`]).
pub fn user_auth_outcome(outcome: &UserAuthOutcome) -> Result<(), String> {
    match outcome {
        UserAuthOutcome::Authenticated(principal) => id("principal id", &principal.id),
        _ => Ok(()),
    }
}

/// A denial must be 401 or 403.
pub fn decision(decision: &Decision) -> Result<(), String> {
    match decision {
        Decision::Deny { status, .. } if *status != 401 && *status != 403 => {
            Err(format!("denied with status {status}, expected 401 or 403"))
        }
        _ => Ok(()),
    }
}

/// Every field of a resolution must be a valid id ([`id`]).
pub fn resolved(resolved: &Option<Resolved>) -> Result<(), String> {
    let Some(r) = resolved else { return Ok(()) };
    id("workload-id", &r.workload_id)?;
    id("agent-id", &r.agent_id)?;
    id("service", &r.service)
}

/// A router's order: indices into `req.candidates`, in range and not repeated.
pub fn route(req: &RouteRequest, order: &[u32]) -> Result<(), String> {
    route_order(order, req.candidates.len()).map(drop)
}

/// [`route`] for `candidates` candidates, returning the order as `usize` indices (what
/// the host goes on to use).
pub fn route_order(order: &[u32], candidates: usize) -> Result<Vec<usize>, String> {
    let mut seen = vec![false; candidates];
    let mut out = Vec::with_capacity(order.len());
    for &index in order {
        let i = index as usize;
        match seen.get_mut(i) {
            None => return Err(format!("index {i} is out of range (there are {candidates} candidates)")),
            Some(true) => return Err(format!("index {i} appears twice")),
            Some(seen) => *seen = true,
        }
        out.push(i);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::*;

    #[test]
    fn validation_rules() {
        assert!(decision(&Decision::Deny { status: 500, reason: String::new() }).is_err());
        assert!(decision(&Decision::unauthorized("x")).is_ok());
        let req = RouteRequest {
            target: Target {
                workload_kind: "w".into(),
                workload_id: "w".into(),
                agent_id: "a".into(),
                service: "s".into(),
            },
            session_key: String::new(),
            candidates: vec![
                RouteCandidate { replica_id: "a".into(), local: true, load: 0, age_ms: 0 },
                RouteCandidate { replica_id: "b".into(), local: false, load: 0, age_ms: 0 },
            ],
        };
        assert!(route(&req, &[1, 0]).is_ok());
        assert!(route(&req, &[1, 1]).is_err());
        assert!(route(&req, &[2]).is_err());
        assert!(kind("ci-job").is_ok());
        assert!(kind("CI").is_err());
        assert!(kind("").is_err());
    }

    #[test]
    fn route_order_is_checked() {
        assert_eq!(route_order(&[2, 0], 3), Ok(vec![2, 0]));
        assert!(route_order(&[3], 3).unwrap_err().contains("out of range"));
        assert!(route_order(&[1, 1], 3).unwrap_err().contains("twice"));
    }

    #[test]
    fn answers_are_checked() {
        let bad = Some(Resolved { workload_id: "w".into(), agent_id: "".into(), service: "s".into() });
        assert!(resolved(&bad).is_err());
        assert!(kind(&"k".repeat(MAX_KIND_BYTES)).is_ok());
        assert!(kind(&"k".repeat(MAX_KIND_BYTES + 1)).is_err());
        assert!(id("agent-id", &"a".repeat(MAX_ID_BYTES + 1)).is_err());
        assert!(id("agent-id", "a\nb").is_err());
        let accepted = |agent_id: &str| {
            AgentAuthOutcome::Accepted(AgentIdentity {
                agent_id: agent_id.into(),
                workload_kind: "workspace".into(),
                workload_id: "w".into(),
                expires_at: None,
                labels: vec![],
            })
        };
        assert!(agent_auth_outcome(&accepted("a1")).is_ok());
        assert!(agent_auth_outcome(&accepted("")).is_err());
        assert!(user_auth_outcome(&UserAuthOutcome::Authenticated(Principal::new(""))).is_err());
        assert!(user_auth_outcome(&UserAuthOutcome::Anonymous).is_ok());
    }
}
