//! Burrow's built-in router: the order in which the host tries the replicas holding a
//! workload's agent.
//!
//! - Default: this replica first (no forwarding hop), then the others by load (active
//!   tunnels, least first); ties go to the replica that has held the agent longest, then
//!   to the replica id, so the order is deterministic.
//! - `sticky = true`: rendezvous hashing of the request's session key over the candidates'
//!   replica ids. A session keeps its replica while that replica holds the agent, and
//!   losing a replica moves only that replica's sessions. Requests without a session key
//!   use the default order.
//!
//! Every candidate is returned, so the host can fall back through all of them.
//!
//! ```toml
//! [plugins.router]
//! source = "builtin:router-prefer-local"
//! config = { sticky = false }
//! ```

use std::cmp::Reverse;

use burrow_plugin_sdk::routing::stable_hash;
use burrow_plugin_sdk::{export_router, Host, RouteCandidate, RouteRequest, Router};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    sticky: bool,
}

/// The plugin: the parsed config.
#[derive(Debug)]
pub struct PreferLocal {
    sticky: bool,
}

/// Local first, then least loaded, then longest held, then replica id.
pub fn preference_order(candidates: &[RouteCandidate]) -> Vec<u32> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| {
        let c = &candidates[i];
        (Reverse(c.local), c.load, Reverse(c.age_ms), c.replica_id.as_str())
    });
    order.into_iter().map(|i| i as u32).collect()
}

/// Highest rendezvous score first; ties (vanishingly rare) by replica id.
pub fn sticky_order(session_key: &str, candidates: &[RouteCandidate]) -> Vec<u32> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| {
        let id = candidates[i].replica_id.as_str();
        (Reverse(stable_hash(&[session_key.as_bytes(), id.as_bytes()])), id)
    });
    order.into_iter().map(|i| i as u32).collect()
}

impl Router for PreferLocal {
    fn init(host: &impl Host) -> Result<Self, String> {
        let config: Config = host.config().map_err(|err| err.to_string())?;
        Ok(PreferLocal { sticky: config.sticky })
    }

    fn route(&self, _host: &impl Host, req: RouteRequest) -> Vec<u32> {
        if self.sticky && !req.session_key.is_empty() {
            sticky_order(&req.session_key, &req.candidates)
        } else {
            preference_order(&req.candidates)
        }
    }
}

export_router!(PreferLocal);
burrow_plugin_sdk::embed_manifest!("router-prefer-local.toml");

#[cfg(test)]
mod tests {
    use burrow_plugin_sdk::manifest::Manifest;
    use burrow_plugin_sdk::{MockHost, Target};

    use super::*;

    fn candidate(id: &str, local: bool, load: u32, age_ms: u64) -> RouteCandidate {
        RouteCandidate { replica_id: id.into(), local, load, age_ms }
    }

    fn request(session_key: &str, candidates: Vec<RouteCandidate>) -> RouteRequest {
        RouteRequest {
            target: Target {
                workload_kind: "workspace".into(),
                workload_id: "demo".into(),
                agent_id: "demo".into(),
                service: "web".into(),
            },
            session_key: session_key.into(),
            candidates,
        }
    }

    #[test]
    fn local_then_least_loaded_then_oldest() {
        let candidates = vec![
            candidate("r0", false, 5, 10),
            candidate("r1", false, 1, 10),
            candidate("r2", true, 100, 1),
            candidate("r3", false, 1, 99),
        ];
        assert_eq!(preference_order(&candidates), vec![2, 3, 1, 0]);
    }

    #[test]
    fn sticky_sessions_keep_their_replica_and_move_little() {
        let host = MockHost::new().with_config_json(r#"{"sticky": true}"#);
        let router = PreferLocal::init(&host).unwrap();
        let three: Vec<RouteCandidate> =
            ["r0", "r1", "r2"].iter().map(|id| candidate(id, false, 0, 0)).collect();
        let mut first_choices = [0usize; 3];
        let mut moved = 0;
        for session in 0..300 {
            let key = format!("user-{session}");
            let order = router.route(&host, request(&key, three.clone()));
            assert_eq!(order.len(), 3);
            assert_eq!(order, router.route(&host, request(&key, three.clone())), "deterministic");
            // The same choice whatever order the host lists candidates in.
            let mut reversed = three.clone();
            reversed.reverse();
            let again = router.route(&host, request(&key, reversed));
            assert_eq!(three[order[0] as usize].replica_id, three[2 - again[0] as usize].replica_id);
            first_choices[order[0] as usize] += 1;
            // Losing r2 moves only the sessions that were on r2.
            let two = three[..2].to_vec();
            let after = router.route(&host, request(&key, two));
            if three[order[0] as usize].replica_id != three[after[0] as usize].replica_id {
                moved += 1;
                assert_eq!(order[0], 2, "{key} moved although its replica stayed");
            }
        }
        assert!(first_choices.iter().all(|&n| n > 50), "sessions spread over replicas: {first_choices:?}");
        assert_eq!(moved, first_choices[2]);
    }

    #[test]
    fn sticky_without_a_session_key_prefers_local() {
        let host = MockHost::new().with_config_json(r#"{"sticky": true}"#);
        let router = PreferLocal::init(&host).unwrap();
        let order =
            router.route(&host, request("", vec![candidate("a", false, 0, 0), candidate("b", true, 9, 0)]));
        assert_eq!(order, vec![1, 0]);
    }

    #[test]
    fn config_is_checked() {
        let err = PreferLocal::init(&MockHost::new().with_config_json(r#"{"stickiness": 1}"#)).err().unwrap();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn manifest_vectors_pass() {
        let manifest = Manifest::from_toml(crate::MANIFEST).unwrap();
        manifest.run_router::<PreferLocal>(&serde_json::json!({})).unwrap();
    }
}
