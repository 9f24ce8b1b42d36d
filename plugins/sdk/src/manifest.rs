//! Plugin manifests (`NAME.toml` next to `NAME.wasm`) and a native runner for their test
//! vectors.
//!
//! The host runs a manifest's vectors as part of the canary before it swaps a new
//! version in; [`Manifest::run_authorizer`] and friends run the same vectors natively
//! against [`MockHost`], so `cargo test` catches a wrong vector (or a regression)
//! before the host does.
//!
//! ```toml
//! [plugin]                       # optional, and so is every key in it
//! name = "office-hours"
//! kind = "authorizer"            # authorizer | workload | router; must match the slot
//! description = "..."
//! version = "1.2.0"
//!
//! [[test]]
//! name = "alice on a Tuesday morning"   # unique
//! now = 1764059400000            # optional fixed clock (unix ms)
//! config = { groups = ["staff"] }  # optional: replaces the slot's config for this vector
//! call = "authenticate_user"     # authenticate_agent | authenticate_user | authorize |
//!                                # resolve | expired | route | kind
//! input = { credential = { bearer = "alice-token" }, action = "http" }
//! expect = { authenticated = { id = "alice" } }
//! ```
//!
//! `input` is the call's request record in the serde form of [`crate::types`] (snake_case
//! keys, externally tagged enums, [`crate::Action`] in kebab-case); `kind` takes none, and
//! a left-out `input` is an empty table. `expect` is matched against the result by
//! [`check`]: tables need only the keys they name, arrays must be equal, `"none"` matches
//! an absent option and a variant's name matches any value of that variant
//! (`expect = "deny"`).
//!
//! The format, its parser and the matcher are the host's own (crate
//! `burrow-plugin-contract`): [`Manifest::from_toml`] refuses exactly what the host
//! refuses, and [`check`] judges results as the canary does. Only the runner is the SDK's.

use std::fmt;
use std::ops::Deref;
use std::path::Path;

use burrow_plugin_contract::manifest as contract;
use serde::Serialize;
use serde_json::Value as Json;

pub use burrow_plugin_contract::manifest::{Call, PluginInfo, TestCall, TestVector};
pub use burrow_plugin_contract::matcher::{check, Mismatch};
pub use burrow_plugin_contract::PluginKind;

/// Why the contract's parser refused a manifest (see [`ManifestError::Parse`]).
pub use burrow_plugin_contract::manifest::ManifestError as ParseError;

use crate::mock::MockHost;
use crate::plugin::{Authorizer, Router, Workload};
use crate::types::*;

/// A parsed manifest: the contract's [`contract::Manifest`] (its `plugin` table and its
/// `tests`, reachable through `Deref`) plus the native runners.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest(contract::Manifest);

impl Deref for Manifest {
    type Target = contract::Manifest;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// A vector that did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorFailure {
    /// The vector's name.
    pub name: String,
    /// What went wrong.
    pub reason: String,
}

/// Why a manifest could not be read or did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The manifest's path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The text is not a valid manifest (the host would refuse it too).
    #[error("invalid manifest: {0}")]
    Parse(ParseError),
    /// A vector calls an export the manifest's kind lacks, or the runner does not fit
    /// the kind.
    #[error("{0}")]
    Kind(String),
    /// Some vectors failed.
    #[error("{} test vector(s) failed:\n{}", .0.len(), Failures(.0))]
    Failed(Vec<VectorFailure>),
}

impl From<ParseError> for ManifestError {
    fn from(err: ParseError) -> Self {
        match err {
            kind @ ParseError::Kind { .. } => ManifestError::Kind(kind.to_string()),
            other => ManifestError::Parse(other),
        }
    }
}

struct Failures<'a>(&'a [VectorFailure]);

impl fmt::Display for Failures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for failure in self.0 {
            writeln!(f, "  - {}: {}", failure.name, failure.reason)?;
        }
        Ok(())
    }
}

impl Manifest {
    /// Parses manifest text with the host's parser: unique, non-empty test names, inputs
    /// that parse as their call's request, calls that fit the declared kind, the host's
    /// size limits.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        Self::parse(text, "manifest")
    }

    /// Reads and parses a manifest file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ManifestError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ManifestError::Io { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> Result<Self, ManifestError> {
        Ok(Manifest(contract::parse(text, origin)?))
    }

    /// The contract's parsed manifest.
    pub fn into_inner(self) -> contract::Manifest {
        self.0
    }

    /// Runs every vector against authorizer `T`, each on a fresh [`MockHost`] with the
    /// vector's config (else `default_config`) and clock. Returns how many ran.
    pub fn run_authorizer<T: Authorizer>(&self, default_config: &Json) -> Result<usize, ManifestError> {
        self.run(PluginKind::Authorizer, default_config, |host, call| {
            let plugin = T::init(host).map_err(|e| format!("init failed: {e}"))?;
            match call {
                TestCall::AuthenticateAgent(req) => {
                    let out = plugin.authenticate_agent(host, req.clone());
                    validate::agent_auth_outcome(&out)?;
                    to_json(&out)
                }
                TestCall::AuthenticateUser(req) => {
                    let out = plugin.authenticate_user(host, req.clone());
                    validate::user_auth_outcome(&out)?;
                    to_json(&out)
                }
                TestCall::Authorize(req) => {
                    let out = plugin.authorize(host, req.clone());
                    validate::decision(&out)?;
                    to_json(&out)
                }
                other => unreachable!("{other:?} was rejected by the kind check"),
            }
        })
    }

    /// Runs every vector against workload `T`; see [`Manifest::run_authorizer`].
    pub fn run_workload<T: Workload>(&self, default_config: &Json) -> Result<usize, ManifestError> {
        self.run(PluginKind::Workload, default_config, |host, call| {
            let plugin = T::init(host).map_err(|e| format!("init failed: {e}"))?;
            match call {
                TestCall::Kind => {
                    let kind = plugin.kind(host);
                    validate::kind(&kind)?;
                    to_json(&kind)
                }
                TestCall::Resolve(req) => {
                    let out = plugin.resolve(host, req.clone());
                    validate::resolved(&out)?;
                    to_json(&out)
                }
                TestCall::Expired(req) => to_json(&plugin.expired(host, req.clone())),
                other => unreachable!("{other:?} was rejected by the kind check"),
            }
        })
    }

    /// Runs every vector against router `T`; see [`Manifest::run_authorizer`].
    pub fn run_router<T: Router>(&self, default_config: &Json) -> Result<usize, ManifestError> {
        self.run(PluginKind::Router, default_config, |host, call| {
            let plugin = T::init(host).map_err(|e| format!("init failed: {e}"))?;
            match call {
                TestCall::Route(req) => {
                    let out = plugin.route(host, req.clone());
                    validate::route(req, &out)?;
                    to_json(&out)
                }
                other => unreachable!("{other:?} was rejected by the kind check"),
            }
        })
    }

    fn run(
        &self,
        kind: PluginKind,
        default_config: &Json,
        call: impl Fn(&MockHost, &TestCall) -> Result<Json, String>,
    ) -> Result<usize, ManifestError> {
        self.0.check_kind(kind)?;
        let mut failures = Vec::new();
        for vector in &self.tests {
            let host = MockHost::new();
            match &vector.config {
                Some(table) => host.set_config(Json::Object(contract::table_to_json(table))),
                None => host.set_config(default_config.clone()),
            }
            if let Some(now) = vector.now {
                host.set_now(now);
            }
            let reason = match call(&host, &vector.call) {
                Ok(actual) => match check(&vector.expect, &actual) {
                    Ok(()) => continue,
                    Err(mismatch) => {
                        let whole = burrow_plugin_contract::matcher::redacted(&actual);
                        format!("{mismatch} (whole result: {whole})")
                    }
                },
                Err(err) => err,
            };
            let logs: Vec<String> = host.logs().into_iter().map(|(l, m)| format!("[{l}] {m}")).collect();
            let reason =
                if logs.is_empty() { reason } else { format!("{reason} (log: {})", logs.join("; ")) };
            failures.push(VectorFailure { name: vector.name.clone(), reason });
        }
        if failures.is_empty() {
            Ok(self.tests.len())
        } else {
            Err(ManifestError::Failed(failures))
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Json, String> {
    serde_json::to_value(value).map_err(|e| format!("result does not serialize: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Host;
    use serde::Deserialize;
    use serde_json::json;

    #[test]
    fn matching_follows_the_host_rules() {
        let ok = |e: serde_json::Value, a: serde_json::Value| check(&e, &a).is_ok();
        let actual = json!({"authenticated": {"id": "alice", "groups": ["a"], "labels": []}});
        assert!(ok(json!({"authenticated": {"id": "alice"}}), actual.clone()));
        assert!(!ok(json!({"authenticated": {"id": "bob"}}), actual.clone()));
        assert!(!ok(json!({"authenticated": {"groups": []}}), actual.clone()), "arrays compare whole");
        assert!(ok(json!("authenticated"), actual.clone()), "a variant name matches the variant");
        assert!(!ok(json!("anonymous"), actual));
        assert!(ok(json!("anonymous"), json!("anonymous")));
        assert!(ok(json!("none"), json!(null)), "\"none\" stands for an absent option");
        assert!(ok(json!([1, 0]), json!([1, 0])));
        assert!(!ok(json!([1]), json!([1, 0])));
        assert!(ok(json!({"deny": {"status": 403}}), json!({"deny": {"status": 403, "reason": "x"}})));
        let mismatch =
            check(&json!({"deny": {"status": 401}}), &json!({"deny": {"status": 403}})).unwrap_err();
        assert_eq!(mismatch.to_string(), "at $.deny.status: expected 401, got 403");
    }

    struct Echo {
        greeting: String,
    }

    impl Router for Echo {
        fn init(host: &impl Host) -> Result<Self, String> {
            #[derive(Deserialize)]
            struct Config {
                greeting: String,
            }
            let config: Config = host.config().map_err(|e| e.to_string())?;
            Ok(Echo { greeting: config.greeting })
        }

        fn route(&self, host: &impl Host, req: RouteRequest) -> Vec<u32> {
            host.info(&self.greeting);
            if host.now() > 1_000 {
                (0..req.candidates.len() as u32).rev().collect()
            } else {
                (0..req.candidates.len() as u32).collect()
            }
        }
    }

    struct Nobody;

    impl Authorizer for Nobody {
        fn init(_host: &impl Host) -> Result<Self, String> {
            Ok(Nobody)
        }
        fn authenticate_agent(&self, _host: &impl Host, _req: AgentHello) -> AgentAuthOutcome {
            AgentAuthOutcome::Rejected("nobody".into())
        }
        fn authenticate_user(&self, _host: &impl Host, _req: UserAuthRequest) -> UserAuthOutcome {
            UserAuthOutcome::Anonymous
        }
        fn authorize(&self, _host: &impl Host, _req: AuthorizeRequest) -> Decision {
            Decision::forbidden("nobody")
        }
    }

    const MANIFEST: &str = r#"
        [plugin]
        name = "echo"
        kind = "router"

        [[test]]
        name = "early"
        now = 5
        call = "route"
        input = { target = { workload_kind = "w", workload_id = "w", agent_id = "a", service = "s" }, candidates = [{ replica_id = "a" }, { replica_id = "b" }] }
        expect = [0, 1]

        [[test]]
        name = "late, own config"
        now = 5000
        config = { greeting = "hi" }
        call = "route"
        input = { target = { workload_kind = "w", workload_id = "w", agent_id = "a", service = "s" }, candidates = [{ replica_id = "a" }, { replica_id = "b" }] }
        expect = [1, 0]
    "#;

    #[test]
    fn runs_vectors_with_their_clock_and_config() {
        let manifest = Manifest::from_toml(MANIFEST).unwrap();
        assert_eq!(manifest.run_router::<Echo>(&json!({"greeting": "hello"})).unwrap(), 2);
    }

    #[test]
    fn reports_failures_by_name() {
        let manifest = Manifest::from_toml(&MANIFEST.replace("expect = [1, 0]", "expect = [0, 1]")).unwrap();
        let err = manifest.run_router::<Echo>(&json!({"greeting": "hello"})).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("late, own config"), "{text}");
        assert!(text.contains("[info] hi"), "the vector's log is shown: {text}");
        assert!(!text.contains("early"), "{text}");
        let err = manifest.run_router::<Echo>(&json!({})).unwrap_err();
        assert!(err.to_string().contains("init failed"), "{err}");
        assert!(matches!(manifest.run_authorizer::<Nobody>(&json!({})), Err(ManifestError::Kind(_))));
    }

    #[test]
    fn rejects_calls_of_another_kind() {
        let text = MANIFEST.replace("call = \"route\"", "call = \"resolve\"");
        assert!(matches!(Manifest::from_toml(&text), Err(ManifestError::Kind(_))));
        assert!(matches!(
            Manifest::from_toml("[plugin]\nname = \"x\"\nkind = \"nope\"\n"),
            Err(ManifestError::Parse(_))
        ));
    }
}
