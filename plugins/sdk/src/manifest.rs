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

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::mock::MockHost;
use crate::plugin::{Authorizer, Router, Workload};
use crate::types::*;

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The `[plugin]` table.
    #[serde(default)]
    pub plugin: PluginInfo,
    /// The `[[test]]` vectors.
    #[serde(default, rename = "test")]
    pub tests: Vec<TestVector>,
}

/// The `[plugin]` table: informative, every key optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginInfo {
    /// The plugin's name (as in `NAME.wasm`).
    #[serde(default)]
    pub name: Option<String>,
    /// Which world it implements; the host refuses the manifest in a slot of another kind.
    #[serde(default)]
    pub kind: Option<PluginKind>,
    /// Free text for admins.
    #[serde(default)]
    pub description: Option<String>,
    /// Free text, e.g. `1.2.0`.
    #[serde(default)]
    pub version: Option<String>,
}

/// The plugin kinds, as manifests spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// World `authorizer-plugin`.
    Authorizer,
    /// World `workload-plugin` (with or without lifecycle).
    Workload,
    /// World `router-plugin`.
    Router,
}

/// The export a vector calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// `authorizer.authenticate-agent`, input [`AgentHello`].
    AuthenticateAgent,
    /// `authorizer.authenticate-user`, input [`UserAuthRequest`].
    AuthenticateUser,
    /// `authorizer.authorize`, input [`AuthorizeRequest`].
    Authorize,
    /// `workload.resolve`, input [`ResolveRequest`].
    Resolve,
    /// `workload.expired`, input [`ExpiryRequest`].
    Expired,
    /// `router.route`, input [`RouteRequest`].
    Route,
    /// `workload.kind`, no input.
    Kind,
}

impl Call {
    /// The plugin kind that exports this call.
    pub fn kind(self) -> PluginKind {
        match self {
            Call::AuthenticateAgent | Call::AuthenticateUser | Call::Authorize => PluginKind::Authorizer,
            Call::Resolve | Call::Expired | Call::Kind => PluginKind::Workload,
            Call::Route => PluginKind::Router,
        }
    }
}

/// One `[[test]]` vector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestVector {
    /// Shown when it fails.
    pub name: String,
    /// Fixed clock for the vector (unix ms).
    #[serde(default)]
    pub now: Option<u64>,
    /// Config for the vector instead of the slot's.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// The export to call.
    pub call: Call,
    /// The request record (absent for `kind`; absent elsewhere means an empty table,
    /// which suits requests whose fields all have defaults).
    #[serde(default)]
    pub input: Option<toml::Value>,
    /// What the result must contain.
    pub expect: toml::Value,
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
    /// The text is not a valid manifest.
    #[error("invalid manifest: {0}")]
    Parse(#[from] toml::de::Error),
    /// A vector calls an export the manifest's kind lacks, or the runner does not fit
    /// the kind.
    #[error("{0}")]
    Kind(String),
    /// Some vectors failed.
    #[error("{} test vector(s) failed:\n{}", .0.len(), Failures(.0))]
    Failed(Vec<VectorFailure>),
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
    /// Parses manifest text and checks what the host checks: unique, non-empty test names
    /// and calls that fit the declared kind.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = toml::from_str(text)?;
        let mut names = std::collections::HashSet::new();
        for (i, vector) in manifest.tests.iter().enumerate() {
            if vector.name.trim().is_empty() {
                return Err(ManifestError::Kind(format!("test[{i}].name: must not be empty")));
            }
            if !names.insert(vector.name.as_str()) {
                return Err(ManifestError::Kind(format!(
                    "test[{i}] ({:?}): another test has the same name",
                    vector.name
                )));
            }
            if let Some(kind) = manifest.plugin.kind {
                if vector.call.kind() != kind {
                    return Err(ManifestError::Kind(format!(
                        "test[{i}] ({:?}): call {:?} is not exported by a {kind:?} plugin",
                        vector.name, vector.call
                    )));
                }
            }
            if vector.call == Call::Kind && vector.input.is_some() {
                return Err(ManifestError::Kind(format!(
                    "test[{i}] ({:?}): call \"kind\" takes no input",
                    vector.name
                )));
            }
        }
        Ok(manifest)
    }

    /// Reads and parses a manifest file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ManifestError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ManifestError::Io { path: path.display().to_string(), source })?;
        Self::from_toml(&text)
    }

    /// Runs every vector against authorizer `T`, each on a fresh [`MockHost`] with the
    /// vector's config (else `default_config`) and clock. Returns how many ran.
    pub fn run_authorizer<T: Authorizer>(&self, default_config: &Json) -> Result<usize, ManifestError> {
        self.run(PluginKind::Authorizer, default_config, |host, call, input| {
            let plugin = T::init(host).map_err(|e| format!("init failed: {e}"))?;
            match call {
                Call::AuthenticateAgent => {
                    let out = plugin.authenticate_agent(host, parse(input)?);
                    validate::agent_auth_outcome(&out)?;
                    to_json(&out)
                }
                Call::AuthenticateUser => {
                    let out = plugin.authenticate_user(host, parse(input)?);
                    validate::user_auth_outcome(&out)?;
                    to_json(&out)
                }
                Call::Authorize => {
                    let out = plugin.authorize(host, parse(input)?);
                    validate::decision(&out)?;
                    to_json(&out)
                }
                other => unreachable!("{other:?} was rejected when the manifest was parsed"),
            }
        })
    }

    /// Runs every vector against workload `T`; see [`Manifest::run_authorizer`].
    pub fn run_workload<T: Workload>(&self, default_config: &Json) -> Result<usize, ManifestError> {
        self.run(PluginKind::Workload, default_config, |host, call, input| {
            let plugin = T::init(host).map_err(|e| format!("init failed: {e}"))?;
            match call {
                Call::Kind => {
                    let kind = plugin.kind(host);
                    validate::kind(&kind)?;
                    to_json(&kind)
                }
                Call::Resolve => {
                    let out = plugin.resolve(host, parse(input)?);
                    validate::resolved(&out)?;
                    to_json(&out)
                }
                Call::Expired => to_json(&plugin.expired(host, parse(input)?)),
                other => unreachable!("{other:?} was rejected when the manifest was parsed"),
            }
        })
    }

    /// Runs every vector against router `T`; see [`Manifest::run_authorizer`].
    pub fn run_router<T: Router>(&self, default_config: &Json) -> Result<usize, ManifestError> {
        self.run(PluginKind::Router, default_config, |host, call, input| {
            let plugin = T::init(host).map_err(|e| format!("init failed: {e}"))?;
            match call {
                Call::Route => {
                    let req: RouteRequest = parse(input)?;
                    let out = plugin.route(host, req.clone());
                    validate::route(&req, &out)?;
                    to_json(&out)
                }
                other => unreachable!("{other:?} was rejected when the manifest was parsed"),
            }
        })
    }

    fn run(
        &self,
        kind: PluginKind,
        default_config: &Json,
        call: impl Fn(&MockHost, Call, Json) -> Result<Json, String>,
    ) -> Result<usize, ManifestError> {
        if let Some(declared) = self.plugin.kind.filter(|declared| *declared != kind) {
            return Err(ManifestError::Kind(format!(
                "the manifest is for a {declared:?} plugin, not a {kind:?}"
            )));
        }
        if let Some(vector) = self.tests.iter().find(|v| v.call.kind() != kind) {
            return Err(ManifestError::Kind(format!(
                "test {:?}: call {:?} is not exported by a {kind:?} plugin",
                vector.name, vector.call
            )));
        }
        let mut failures = Vec::new();
        for vector in &self.tests {
            let host = MockHost::new();
            match &vector.config {
                Some(table) => host.set_config(Json::Object(table_to_json(table))),
                None => host.set_config(default_config.clone()),
            }
            if let Some(now) = vector.now {
                host.set_now(now);
            }
            let input = vector.input.as_ref().map_or_else(|| Json::Object(Default::default()), toml_to_json);
            let expect = toml_to_json(&vector.expect);
            let reason = match call(&host, vector.call, input) {
                Ok(actual) => match check(&expect, &actual) {
                    Ok(()) => continue,
                    Err(mismatch) => format!("{mismatch} (whole result: {actual})"),
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

fn parse<T: DeserializeOwned>(input: Json) -> Result<T, String> {
    serde_json::from_value(input).map_err(|e| format!("invalid input: {e}"))
}

fn to_json<T: Serialize>(value: &T) -> Result<Json, String> {
    serde_json::to_value(value).map_err(|e| format!("result does not serialize: {e}"))
}

/// Where a result differs from `expect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// JSON path of the difference, e.g. `$.authenticated.groups[1]`.
    pub path: String,
    /// The expected value, as JSON.
    pub expected: String,
    /// The actual value, as JSON (`<missing>` for an absent key).
    pub actual: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: expected {}, got {}", self.path, self.expected, self.actual)
    }
}

/// Whether `actual` contains `expect`, by the host's rules:
/// - a table matches a table holding at least its keys, each value matching recursively;
/// - arrays match exactly: same length, every element equal;
/// - scalars match when equal; numbers compare by value;
/// - TOML has no null, so the string `"none"` matches a null (an absent option);
/// - a string matches a single-key table with that key, so `expect = "deny"` matches any
///   `deny { .. }` decision, as `expect = "anonymous"` matches the unit variant.
pub fn check(expect: &Json, actual: &Json) -> Result<(), Mismatch> {
    check_at(expect, actual, &mut String::from("$"))
}

fn check_at(expect: &Json, actual: &Json, path: &mut String) -> Result<(), Mismatch> {
    match (expect, actual) {
        (Json::Object(expected), Json::Object(actual_map)) => {
            for (key, expected) in expected {
                let len = path.len();
                path.push('.');
                path.push_str(key);
                match actual_map.get(key) {
                    Some(actual) => check_at(expected, actual, path)?,
                    None => {
                        return Err(Mismatch {
                            path: path.clone(),
                            expected: expected.to_string(),
                            actual: "<missing>".into(),
                        })
                    }
                }
                path.truncate(len);
            }
            Ok(())
        }
        (Json::Array(expected), Json::Array(items)) if expected.len() == items.len() => {
            for (i, (e, a)) in expected.iter().zip(items).enumerate() {
                if !equal(e, a) {
                    path.push_str(&format!("[{i}]"));
                    return Err(Mismatch {
                        path: path.clone(),
                        expected: e.to_string(),
                        actual: a.to_string(),
                    });
                }
            }
            Ok(())
        }
        _ if equal(expect, actual) => Ok(()),
        _ => Err(Mismatch { path: path.clone(), expected: expect.to_string(), actual: actual.to_string() }),
    }
}

/// Exact equality, but for the `"none"` and variant-name shorthands and numbers compared
/// by value.
fn equal(expect: &Json, actual: &Json) -> bool {
    match (expect, actual) {
        (Json::String(s), Json::Null) => s == "none",
        (Json::String(s), Json::Object(map)) => map.len() == 1 && map.contains_key(s),
        (Json::Number(e), Json::Number(a)) => match (e.as_i64(), a.as_i64(), e.as_u64(), a.as_u64()) {
            (Some(e), Some(a), _, _) => e == a,
            (_, _, Some(e), Some(a)) => e == a,
            _ if e.is_f64() || a.is_f64() => e.as_f64() == a.as_f64(),
            _ => false,
        },
        (Json::Array(e), Json::Array(a)) => e.len() == a.len() && e.iter().zip(a).all(|(e, a)| equal(e, a)),
        (Json::Object(e), Json::Object(a)) => {
            e.len() == a.len() && e.iter().all(|(k, e)| a.get(k).is_some_and(|a| equal(e, a)))
        }
        _ => expect == actual,
    }
}

/// TOML to JSON as the host converts configs: datetimes become RFC 3339 strings.
fn toml_to_json(value: &toml::Value) -> Json {
    match value {
        toml::Value::String(s) => Json::String(s.clone()),
        toml::Value::Integer(i) => Json::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        toml::Value::Boolean(b) => Json::Bool(*b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(items) => Json::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Json::Object(table_to_json(table)),
    }
}

fn table_to_json(table: &toml::Table) -> serde_json::Map<String, Json> {
    table.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Host;
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
