//! Example Burrow router: sends `canary_percent` percent of user sessions to the replicas
//! listed in `canary_replicas`, and every other session to the least-loaded other replica.
//!
//! - A session is in the canary share when the stable hash of its session key falls in
//!   the first `canary_percent` of 100 buckets, so it stays there for as long as the
//!   canary runs. Requests without a session key are never in the canary share.
//! - Within a group the least-loaded replica comes first; on equal load this replica (no
//!   forwarding hop), then the replica id.
//! - Every candidate is returned: after its own group a request falls back to the other
//!   one, so a session is still served when only the other group holds the agent.
//!
//! See README.md for the config and canary-router.toml for test vectors.

use std::cmp::Reverse;

use burrow_plugin_sdk::routing::stable_hash;
use burrow_plugin_sdk::{export_router, Host, RouteCandidate, RouteRequest, Router};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    canary_percent: u8,
    canary_replicas: Vec<String>,
}

/// The plugin: the validated config.
#[derive(Debug)]
pub struct CanaryRouter {
    percent: u8,
    replicas: Vec<String>,
}

/// Salts the session hash so the canary share is independent of other uses of the key.
const SALT: &[u8] = b"canary-router";

impl CanaryRouter {
    fn from_config(config: Config) -> Result<Self, String> {
        if config.canary_percent > 100 {
            return Err(format!("canary_percent: {} is more than 100", config.canary_percent));
        }
        if let Some(i) = config.canary_replicas.iter().position(|r| r.trim().is_empty()) {
            return Err(format!("canary_replicas[{i}]: must not be empty"));
        }
        Ok(CanaryRouter { percent: config.canary_percent, replicas: config.canary_replicas })
    }

    /// Whether the session belongs to the canary share.
    pub fn is_canary_session(&self, session_key: &str) -> bool {
        !session_key.is_empty()
            && stable_hash(&[SALT, session_key.as_bytes()]) % 100 < u64::from(self.percent)
    }

    fn is_canary_replica(&self, candidate: &RouteCandidate) -> bool {
        self.replicas.contains(&candidate.replica_id)
    }
}

/// Least loaded first, then local, then replica id.
fn by_load(candidates: &[RouteCandidate], mut group: Vec<usize>) -> Vec<usize> {
    group.sort_by_key(|&i| {
        let c = &candidates[i];
        (c.load, Reverse(c.local), c.replica_id.as_str())
    });
    group
}

impl Router for CanaryRouter {
    fn init(host: &impl Host) -> Result<Self, String> {
        let config: Config = host.config().map_err(|err| err.to_string())?;
        CanaryRouter::from_config(config).map_err(|err| format!("invalid config: {err}"))
    }

    fn route(&self, _host: &impl Host, req: RouteRequest) -> Vec<u32> {
        let (canary, stable): (Vec<usize>, Vec<usize>) =
            (0..req.candidates.len()).partition(|&i| self.is_canary_replica(&req.candidates[i]));
        let canary = by_load(&req.candidates, canary);
        let stable = by_load(&req.candidates, stable);
        let (first, then) =
            if self.is_canary_session(&req.session_key) { (canary, stable) } else { (stable, canary) };
        first.into_iter().chain(then).map(|i| i as u32).collect()
    }
}

export_router!(CanaryRouter);
burrow_plugin_sdk::embed_manifest!("canary-router.toml");

#[cfg(test)]
mod tests {
    use burrow_plugin_sdk::manifest::Manifest;
    use burrow_plugin_sdk::{MockHost, Target};
    use serde_json::json;

    use super::*;

    fn config() -> serde_json::Value {
        json!({"canary_percent": 10, "canary_replicas": ["r-canary"]})
    }

    fn candidate(id: &str, local: bool, load: u32) -> RouteCandidate {
        RouteCandidate { replica_id: id.into(), local, load, age_ms: 1000 }
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

    fn three() -> Vec<RouteCandidate> {
        vec![candidate("r-a", true, 8), candidate("r-canary", false, 50), candidate("r-b", false, 3)]
    }

    #[test]
    fn about_the_configured_share_goes_to_the_canary() {
        let host = MockHost::new().with_config(config());
        let router = CanaryRouter::init(&host).unwrap();
        let mut canary = 0;
        for session in 0..2000 {
            let key = format!("user-{session}");
            let order = router.route(&host, request(&key, three()));
            assert_eq!(order.len(), 3);
            if order[0] == 1 {
                canary += 1;
                assert_eq!(order, vec![1, 2, 0], "then the others by load");
            } else {
                assert_eq!(order, vec![2, 0, 1], "least-loaded stable replica first, canary last");
            }
            assert_eq!(order, router.route(&host, request(&key, three())), "sticky");
        }
        assert!((120..=280).contains(&canary), "about 10% of 2000 sessions: {canary}");
    }

    #[test]
    fn equal_load_prefers_local() {
        let host = MockHost::new().with_config(json!({"canary_percent": 0, "canary_replicas": []}));
        let router = CanaryRouter::init(&host).unwrap();
        let order =
            router.route(&host, request("s", vec![candidate("r-b", false, 2), candidate("r-a", true, 2)]));
        assert_eq!(order, vec![1, 0]);
    }

    #[test]
    fn falls_back_when_a_group_is_empty() {
        let all = CanaryRouter::init(
            &MockHost::new().with_config(json!({"canary_percent": 100, "canary_replicas": ["r-canary"]})),
        )
        .unwrap();
        let host = MockHost::new();
        // Every session is canary, but no canary replica holds the agent.
        let order =
            all.route(&host, request("s", vec![candidate("r-a", false, 5), candidate("r-b", false, 1)]));
        assert_eq!(order, vec![1, 0]);
        // No session is canary, but only the canary holds the agent.
        let none = CanaryRouter::init(
            &MockHost::new().with_config(json!({"canary_percent": 0, "canary_replicas": ["r-canary"]})),
        )
        .unwrap();
        assert_eq!(none.route(&host, request("s", vec![candidate("r-canary", false, 0)])), vec![0]);
        // No session key: never canary.
        assert_eq!(all.route(&host, request("", three())), vec![2, 0, 1]);
    }

    #[test]
    fn config_is_checked() {
        for (config, field) in [
            (json!({"canary_percent": 101, "canary_replicas": []}), "canary_percent"),
            (json!({"canary_percent": 5, "canary_replicas": [""]}), "canary_replicas[0]"),
            (json!({"canary_percent": 5}), "missing field"),
        ] {
            let err = CanaryRouter::init(&MockHost::new().with_config(config.clone())).unwrap_err();
            assert!(err.contains(field), "{config}: {err}");
        }
    }

    #[test]
    fn manifest_vectors_pass() {
        let manifest = Manifest::from_toml(crate::MANIFEST).unwrap();
        let ran = manifest.run_router::<CanaryRouter>(&config()).unwrap();
        assert!(ran >= 4, "{ran}");
    }
}
