//! Which replica's streams serve a request, in what order: the one place routing policy
//! lives, so the router plugin can take it over without touching the forwarding code.

use std::time::Duration;

/// One place the agent's streams can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The replica holding streams.
    pub replica_id: String,
    /// Its private API address (`host:port`); empty for this replica.
    pub address: String,
    /// True for this replica (its own parked streams).
    pub local: bool,
    /// The replica's agent streams in use at its last heartbeat (0 when unknown).
    pub load: u64,
    /// How long ago the replica registered or refreshed the agent (`None`: unknown).
    pub age: Option<Duration>,
}

/// Orders candidates; the first is tried first, the next ones after the speculative delay.
pub trait RoutingPolicy: Send + Sync + 'static {
    /// Reorders (and may drop) `candidates` for `agent_id`.
    fn order(&self, agent_id: &str, candidates: Vec<Candidate>) -> Vec<Candidate>;
}

/// The default: this replica's own streams first (no network hop), then the least loaded
/// replica, ties broken by the freshest registration.
#[derive(Debug, Default, Clone, Copy)]
pub struct PreferLocalLeastLoaded;

impl RoutingPolicy for PreferLocalLeastLoaded {
    fn order(&self, _agent_id: &str, mut candidates: Vec<Candidate>) -> Vec<Candidate> {
        candidates.sort_by(|a, b| {
            b.local
                .cmp(&a.local)
                .then(a.load.cmp(&b.load))
                .then(a.age.unwrap_or(Duration::MAX).cmp(&b.age.unwrap_or(Duration::MAX)))
                .then_with(|| a.replica_id.cmp(&b.replica_id))
        });
        candidates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, local: bool, load: u64) -> Candidate {
        Candidate { replica_id: id.into(), address: String::new(), local, load, age: None }
    }

    #[test]
    fn local_first_then_least_loaded() {
        let ordered =
            PreferLocalLeastLoaded.order("a", vec![c("r1", false, 9), c("r2", false, 1), c("me", true, 50)]);
        let ids: Vec<_> = ordered.iter().map(|c| c.replica_id.as_str()).collect();
        assert_eq!(ids, ["me", "r2", "r1"]);
    }

    #[test]
    fn ties_are_deterministic() {
        let a = PreferLocalLeastLoaded.order("a", vec![c("r2", false, 1), c("r1", false, 1)]);
        assert_eq!(a[0].replica_id, "r1");
    }
}
