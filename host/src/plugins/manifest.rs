//! A plugin's optional manifest: `NAME.toml` next to `NAME.wasm` (or embedded text for a
//! built-in). It describes the plugin and carries test vectors the canary runs before a
//! new version is swapped in.
//!
//! ```toml
//! [plugin]
//! name = "office-hours"          # optional
//! kind = "authorizer"            # optional; authorizer | workload | router; must match the slot
//! description = "..."            # optional
//! version = "1.2.0"              # optional, informative
//!
//! [[test]]
//! name = "alice on a Tuesday morning"
//! now = 1763973000000            # optional fixed clock (unix ms) for this vector
//! config = { ... }               # optional: config table for this vector instead of the slot's
//! call = "authenticate_user"     # authenticate_agent | authenticate_user | authorize | resolve
//!                                # | expired | route | kind
//! input = { credential = { bearer = "alice-token" }, action = "http" }
//! expect = { authenticated = { id = "alice" } }
//! ```
//!
//! `input` is the call's request record in the serde form of `types.rs` (snake_case keys,
//! externally tagged enums); `kind` takes none. Every vector is parsed up front, so a
//! malformed one refuses the manifest with its index, name and key.
//!
//! `expect` is matched as a subset of the call's result (see [`check`]): tables need only
//! the keys they name, so `expect = { allow = {} }` accepts any allow decision.

use std::collections::HashSet;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::config::PluginKind;
use super::types::{
    AgentHello, AuthorizeRequest, ExpiryRequest, ResolveRequest, RouteRequest, UserAuthRequest,
};

/// Largest manifest accepted, in bytes.
pub(crate) const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// Most test vectors in one manifest: each runs in the canary before a swap.
pub(crate) const MAX_TESTS: usize = 256;
/// Longest test name; names appear in error messages and logs.
pub(crate) const MAX_TEST_NAME_CHARS: usize = 200;
/// Rendered values in a [`Mismatch`] are cut to this many characters.
pub(crate) const MAX_RENDERED_CHARS: usize = 120;

/// `[plugin]`: informative metadata, all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PluginMeta {
    pub name: Option<String>,
    pub kind: Option<PluginKind>,
    pub description: Option<String>,
    pub version: Option<String>,
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Manifest {
    /// Where it came from (a path or `builtin:<name>`), for messages.
    pub origin: String,
    pub plugin: PluginMeta,
    pub tests: Vec<TestVector>,
}

/// One call of a test vector, with its input already parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TestCall {
    AuthenticateAgent(AgentHello),
    AuthenticateUser(UserAuthRequest),
    Authorize(AuthorizeRequest),
    Resolve(ResolveRequest),
    Expired(ExpiryRequest),
    Route(RouteRequest),
    Kind,
}

const CALL_NAMES: &str = "authenticate_agent, authenticate_user, authorize, resolve, expired, route, kind";

impl TestCall {
    /// The manifest's name of the call.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            TestCall::AuthenticateAgent(_) => "authenticate_agent",
            TestCall::AuthenticateUser(_) => "authenticate_user",
            TestCall::Authorize(_) => "authorize",
            TestCall::Resolve(_) => "resolve",
            TestCall::Expired(_) => "expired",
            TestCall::Route(_) => "route",
            TestCall::Kind => "kind",
        }
    }

    /// The kind of plugin that exports the call.
    pub(crate) fn kind(&self) -> PluginKind {
        match self {
            TestCall::AuthenticateAgent(_) | TestCall::AuthenticateUser(_) | TestCall::Authorize(_) => {
                PluginKind::Authorizer
            }
            TestCall::Resolve(_) | TestCall::Expired(_) | TestCall::Kind => PluginKind::Workload,
            TestCall::Route(_) => PluginKind::Router,
        }
    }
}

/// One `[[test]]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TestVector {
    /// Position in the manifest, from 0.
    pub index: usize,
    pub name: String,
    /// Fixed wall clock for the call, unix milliseconds.
    pub now: Option<u64>,
    /// Replaces the slot's config table for this vector.
    pub config: Option<toml::Table>,
    pub call: TestCall,
    /// What the result must contain (see [`check`]).
    pub expect: Value,
}

/// `test[3] ("alice on a Tuesday morning")`
impl fmt::Display for TestVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "test[{}] ({:?})", self.index, self.name)
    }
}

impl Manifest {
    /// The kind declared in `[plugin]`, if any.
    pub(crate) fn kind(&self) -> Option<PluginKind> {
        self.plugin.kind
    }

    /// Refuses a manifest that declares another kind than the slot's, or whose tests
    /// call exports the slot's world does not have.
    pub(crate) fn check_kind(&self, slot: PluginKind) -> Result<(), ManifestError> {
        if let Some(kind) = self.plugin.kind {
            if kind != slot {
                return Err(self.invalid(
                    "plugin.kind".into(),
                    format!("the manifest is for a {kind} plugin, this slot takes {slot} plugins"),
                ));
            }
        }
        self.check_calls(slot, "this slot takes")
    }

    /// `context` completes "..., `context` `kind` plugins".
    fn check_calls(&self, kind: PluginKind, context: &str) -> Result<(), ManifestError> {
        for test in &self.tests {
            if test.call.kind() != kind {
                return Err(self.invalid(
                    format!("{test}.call"),
                    format!(
                        "\"{}\" is a {} call, {context} {kind} plugins",
                        test.call.name(),
                        test.call.kind()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn invalid(&self, key: String, message: String) -> ManifestError {
        ManifestError::Invalid { origin: self.origin.clone(), key, message }
    }
}

/// A manifest that cannot be used. Messages name the origin and the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ManifestError {
    #[error("{origin}: the manifest is {len} bytes, the limit is {MAX_MANIFEST_BYTES}")]
    TooLarge { origin: String, len: usize },
    /// Not TOML, or a key serde rejects (unknown field, wrong type, missing field).
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: {key}: {message}")]
    Invalid { origin: String, key: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    plugin: PluginMeta,
    #[serde(default)]
    test: Vec<RawTest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: String,
    #[serde(default)]
    now: Option<u64>,
    #[serde(default)]
    config: Option<toml::Table>,
    call: String,
    #[serde(default)]
    input: Option<toml::Value>,
    expect: toml::Value,
}

/// Parses and checks a manifest. `origin` names it in errors (a path or `builtin:<name>`).
pub(crate) fn parse(text: &str, origin: &str) -> Result<Manifest, ManifestError> {
    let invalid =
        |key: String, message: String| ManifestError::Invalid { origin: origin.to_string(), key, message };
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge { origin: origin.to_string(), len: text.len() });
    }
    let raw: RawManifest = toml::from_str(text).map_err(|err| ManifestError::Syntax {
        origin: origin.to_string(),
        message: toml_message(text, &err),
    })?;

    check_meta(&raw.plugin).map_err(|(key, message)| invalid(key.into(), message))?;
    if raw.test.len() > MAX_TESTS {
        return Err(invalid("test".into(), format!("{} tests, the limit is {MAX_TESTS}", raw.test.len())));
    }

    let mut names = HashSet::new();
    let mut tests = Vec::with_capacity(raw.test.len());
    for (index, raw) in raw.test.into_iter().enumerate() {
        let at = format!("test[{index}] ({:?})", raw.name);
        if raw.name.trim().is_empty() {
            return Err(invalid(format!("test[{index}].name"), "must not be empty".into()));
        }
        if raw.name.chars().count() > MAX_TEST_NAME_CHARS {
            return Err(invalid(
                format!("test[{index}].name"),
                format!("longer than {MAX_TEST_NAME_CHARS} characters"),
            ));
        }
        if !names.insert(raw.name.clone()) {
            return Err(invalid(format!("{at}.name"), "another test has the same name".into()));
        }
        let call = parse_call(&raw.call, raw.input)
            .map_err(|(key, message)| invalid(format!("{at}.{key}"), message))?;
        tests.push(TestVector {
            index,
            name: raw.name,
            now: raw.now,
            config: raw.config,
            call,
            expect: toml_to_json(&raw.expect),
        });
    }
    let manifest = Manifest { origin: origin.to_string(), plugin: raw.plugin, tests };
    if let Some(kind) = manifest.plugin.kind {
        manifest.check_calls(kind, "the manifest declares it is for")?;
    }
    Ok(manifest)
}

fn check_meta(meta: &PluginMeta) -> Result<(), (&'static str, String)> {
    if let Some(name) = &meta.name {
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(("plugin.name", format!("{name:?}: 1-64 characters of [A-Za-z0-9-_.]")));
        }
    }
    if let Some(version) = &meta.version {
        if version.trim().is_empty() || version.chars().count() > 64 {
            return Err(("plugin.version", "1-64 characters".into()));
        }
    }
    if let Some(description) = &meta.description {
        if description.chars().count() > 4096 {
            return Err(("plugin.description", "longer than 4096 characters".into()));
        }
    }
    Ok(())
}

/// Returns `(key, message)` on error, the key relative to the test.
fn parse_call(call: &str, input: Option<toml::Value>) -> Result<TestCall, (&'static str, String)> {
    fn input_as<T: DeserializeOwned>(input: Option<toml::Value>) -> Result<T, (&'static str, String)> {
        // Requests whose fields all have defaults may leave `input` out.
        let input = input.unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
        input.try_into().map_err(|err: toml::de::Error| ("input", err.message().trim_end().to_string()))
    }
    Ok(match call {
        "authenticate_agent" => TestCall::AuthenticateAgent(input_as(input)?),
        "authenticate_user" => TestCall::AuthenticateUser(input_as(input)?),
        "authorize" => TestCall::Authorize(input_as(input)?),
        "resolve" => TestCall::Resolve(input_as(input)?),
        "expired" => TestCall::Expired(input_as(input)?),
        "route" => TestCall::Route(input_as(input)?),
        "kind" => match input {
            None => TestCall::Kind,
            Some(_) => return Err(("input", "the \"kind\" call takes no input".into())),
        },
        other => return Err(("call", format!("unknown call {other:?} (expected one of: {CALL_NAMES})"))),
    })
}

/// toml's own Display quotes the offending source line, which may hold a test token:
/// keep its message and point at the line and column instead.
fn toml_message(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim_end();
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_string(),
    }
}

/// TOML datetimes have no JSON counterpart: they become RFC 3339 strings.
fn toml_to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        // NaN and infinities have no JSON form; null is the honest stand-in.
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => {
            Value::Object(table.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect())
        }
    }
}

/// Where and how a result differs from `expect`. Values are rendered as JSON, cut to
/// [`MAX_RENDERED_CHARS`], with anything under a secret-looking key masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mismatch {
    /// JSON path of the difference, e.g. `$.authenticated.groups[1]`.
    pub path: String,
    pub expected: String,
    pub actual: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: expected {}, got {}", self.path, self.expected, self.actual)
    }
}

impl std::error::Error for Mismatch {}

/// Whether `actual` contains `expect`:
/// - a table matches a table holding at least its keys, each value matching recursively
///   (extra keys in `actual` are fine);
/// - arrays match exactly: same length, every element equal;
/// - scalars match when equal; integers compare by value;
/// - TOML has no null, so the string `"none"` matches a null (an absent option);
/// - a string matches a single-key table with that key, so `expect = "deny"` matches
///   any `deny { .. }` decision, as `expect = "anonymous"` matches the unit variant.
pub(crate) fn check(expect: &Value, actual: &Value) -> Result<(), Mismatch> {
    let mut path = String::from("$");
    check_at(expect, actual, &mut path, false)
}

fn check_at(expect: &Value, actual: &Value, path: &mut String, secret: bool) -> Result<(), Mismatch> {
    match (expect, actual) {
        (Value::Object(expected), Value::Object(actual_map)) => {
            for (key, expected) in expected {
                let len = path.len();
                push_key(path, key);
                let secret = secret || is_secret_key(key);
                match actual_map.get(key) {
                    Some(actual) => check_at(expected, actual, path, secret)?,
                    None => {
                        return Err(Mismatch {
                            path: path.clone(),
                            expected: render(expected, secret),
                            actual: "<missing>".into(),
                        })
                    }
                }
                path.truncate(len);
            }
            Ok(())
        }
        (Value::Array(expected), Value::Array(actual_items)) if expected.len() == actual_items.len() => {
            for (i, (e, a)) in expected.iter().zip(actual_items).enumerate() {
                if !equal(e, a) {
                    path.push_str(&format!("[{i}]"));
                    return Err(mismatch(path, e, a, secret));
                }
            }
            Ok(())
        }
        _ if equal(expect, actual) => Ok(()),
        _ => Err(mismatch(path, expect, actual, secret)),
    }
}

/// Exact equality, but for the `"none"` and variant-name shorthands and numbers compared
/// by value (`200` from TOML is an `i64`, a status is a `u16`).
fn equal(expect: &Value, actual: &Value) -> bool {
    match (expect, actual) {
        (Value::String(s), Value::Null) => s == "none",
        (Value::String(s), Value::Object(map)) => map.len() == 1 && map.contains_key(s),
        (Value::Number(e), Value::Number(a)) => match (e.as_i64(), a.as_i64(), e.as_u64(), a.as_u64()) {
            (Some(e), Some(a), _, _) => e == a,
            (_, _, Some(e), Some(a)) => e == a,
            _ if e.is_f64() || a.is_f64() => e.as_f64() == a.as_f64(),
            _ => false,
        },
        (Value::Array(e), Value::Array(a)) => e.len() == a.len() && e.iter().zip(a).all(|(e, a)| equal(e, a)),
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len() && e.iter().all(|(k, e)| a.get(k).is_some_and(|a| equal(e, a)))
        }
        _ => expect == actual,
    }
}

fn mismatch(path: &str, expect: &Value, actual: &Value, secret: bool) -> Mismatch {
    Mismatch { path: path.to_string(), expected: render(expect, secret), actual: render(actual, secret) }
}

fn push_key(path: &mut String, key: &str) {
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        path.push('.');
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&Value::String(key.to_string()).to_string());
        path.push(']');
    }
}

/// Keys whose values are credentials in the plugin types (`token`, `bearer`, a cookie's
/// or label's `value`, `password`) and the usual suspects of a plugin's own results.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key == "value"
        || key == "bearer"
        || key.contains("token")
        || key.contains("password")
        || key.contains("secret")
        || key.contains("authorization")
}

fn render(value: &Value, secret: bool) -> String {
    let text = if secret { masked(value) } else { mask_nested(value).to_string() };
    match text.char_indices().nth(MAX_RENDERED_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn masked(value: &Value) -> String {
    match value {
        Value::String(s) => format!("<redacted string of {} chars>", s.chars().count()),
        Value::Null => "null".into(),
        _ => "<redacted>".into(),
    }
}

/// A copy with every value under a secret key masked, including `[key, value]` label pairs.
fn mask_nested(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) { Value::String(masked(v)) } else { mask_nested(v) };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => match items.as_slice() {
            [Value::String(k), v] if is_secret_key(k) => {
                Value::Array(vec![Value::String(k.clone()), Value::String(masked(v))])
            }
            _ => Value::Array(items.iter().map(mask_nested).collect()),
        },
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::types::{
        Action, AgentAuthOutcome, AgentIdentity, Credential, Decision, Principal, Resolved, UserAuthOutcome,
    };
    use super::*;

    const ALL_CALLS: &str = r#"
        [plugin]
        name = "office-hours"
        description = "allows staff during office hours"
        version = "1.2.0"

        [[test]]
        name = "agent"
        call = "authenticate_agent"
        input = { token = "agent-token", services = ["http"], metadata = [["zone", "a"]] }
        expect = { accepted = { agent_id = "a1" } }

        [[test]]
        name = "alice on a Tuesday morning"
        now = 1763973000000
        config = { groups = ["staff"], open = "09:00" }
        call = "authenticate_user"
        input = { credential = { bearer = "alice-token" }, action = "http" }
        expect = { authenticated = { id = "alice" } }

        [[test]]
        name = "authorize"
        call = "authorize"
        input = { principal = { id = "alice", groups = ["staff"] }, action = "ssh-session", target = { workload_kind = "workspace", workload_id = "w1", agent_id = "a1", service = "ssh" } }
        expect = { deny = { status = 403 } }

        [[test]]
        name = "resolve"
        call = "resolve"
        input = { action = "http", host = "w1.example.com" }
        expect = { workload_id = "w1" }

        [[test]]
        name = "expired"
        call = "expired"
        input = { workload_id = "w1", agent_id = "a1", connected_at = 5 }
        expect = false

        [[test]]
        name = "route"
        call = "route"
        expect = [1, 0]
        [test.input]
        session_key = "s"
        target = { workload_kind = "workspace", workload_id = "w1", agent_id = "a1", service = "http" }
        candidates = [{ replica_id = "r1", local = true }, { replica_id = "r2", load = 3 }]

        [[test]]
        name = "kind"
        call = "kind"
        expect = "workspace"
    "#;

    fn parse_ok(text: &str) -> Manifest {
        parse(text, "plugins/office-hours.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(text: &str) -> String {
        parse(text, "plugins/x.toml").unwrap_err().to_string()
    }

    #[test]
    fn every_call_kind_parses() {
        let m = parse_ok(ALL_CALLS);
        assert_eq!(m.origin, "plugins/office-hours.toml");
        assert_eq!(m.plugin.name.as_deref(), Some("office-hours"));
        assert_eq!(m.plugin.kind, None);
        assert_eq!(m.plugin.version.as_deref(), Some("1.2.0"));
        let calls: Vec<&str> = m.tests.iter().map(|t| t.call.name()).collect();
        assert_eq!(
            calls,
            ["authenticate_agent", "authenticate_user", "authorize", "resolve", "expired", "route", "kind"]
        );
        assert!(m.tests.iter().enumerate().all(|(i, t)| t.index == i));

        let TestCall::AuthenticateAgent(hello) = &m.tests[0].call else { panic!() };
        assert_eq!(hello.token, "agent-token");
        assert_eq!(hello.metadata, vec![("zone".to_string(), "a".to_string())]);
        assert!(!format!("{:?}", m.tests[0]).contains("agent-token"), "Debug masks the token");

        let t = &m.tests[1];
        assert_eq!(t.to_string(), "test[1] (\"alice on a Tuesday morning\")");
        assert_eq!(t.now, Some(1763973000000));
        assert_eq!(t.config.as_ref().unwrap()["open"].as_str(), Some("09:00"));
        let TestCall::AuthenticateUser(req) = &t.call else { panic!() };
        assert_eq!(req.credential, Credential::Bearer("alice-token".into()));
        assert_eq!(req.action, Action::Http);
        assert_eq!(t.expect, json!({ "authenticated": { "id": "alice" } }));

        let TestCall::Authorize(req) = &m.tests[2].call else { panic!() };
        assert_eq!(req.action, Action::SshSession);
        assert_eq!(req.principal.as_ref().unwrap().groups, ["staff"]);
        let TestCall::Resolve(req) = &m.tests[3].call else { panic!() };
        assert_eq!(req.host, "w1.example.com");
        let TestCall::Expired(req) = &m.tests[4].call else { panic!() };
        assert_eq!(req.connected_at, 5);
        assert_eq!(m.tests[4].expect, json!(false));
        let TestCall::Route(req) = &m.tests[5].call else { panic!() };
        assert_eq!(req.candidates.len(), 2);
        assert_eq!(req.candidates[1].load, 3);
        assert_eq!(m.tests[5].expect, json!([1, 0]));
        assert_eq!(m.tests[6].call, TestCall::Kind);
        assert_eq!(m.tests[6].call.kind(), PluginKind::Workload);

        // An empty manifest is valid; so is one with metadata only.
        assert_eq!(parse_ok("").tests, vec![]);
        assert_eq!(parse_ok("[plugin]\nkind = \"router\"").plugin.kind, Some(PluginKind::Router));
    }

    #[test]
    fn bad_call_name() {
        let err = parse_err("[[test]]\nname = \"n\"\ncall = \"authorise\"\nexpect = true");
        assert!(err.starts_with("plugins/x.toml: test[0] (\"n\").call: unknown call \"authorise\""), "{err}");
        assert!(err.contains("authenticate_agent, authenticate_user, authorize"), "{err}");
    }

    #[test]
    fn bad_input_shape() {
        let test = |input: &str| {
            parse_err(&format!(
                "[[test]]\nname = \"first\"\ncall = \"route\"\ninput = {{ target = {{ workload_kind = \"w\", workload_id = \"w\", agent_id = \"a\", service = \"s\" }}, candidates = [] }}\nexpect = []\n\
                 [[test]]\nname = \"second\"\ncall = \"authenticate_user\"\ninput = {input}\nexpect = \"anonymous\""
            ))
        };
        let err = test("{ action = \"http\", credentials = {} }");
        assert!(
            err.starts_with("plugins/x.toml: test[1] (\"second\").input: unknown field `credentials`"),
            "{err}"
        );
        let err = test("{ credential = { bearer = \"t\" } }");
        assert_eq!(err, "plugins/x.toml: test[1] (\"second\").input: missing field `action`");
        let err = test("{ action = \"telnet\" }");
        assert!(
            err.starts_with("plugins/x.toml: test[1] (\"second\").input: unknown variant `telnet`"),
            "{err}"
        );
        let err = test("\"alice\"");
        assert!(err.starts_with("plugins/x.toml: test[1] (\"second\").input: invalid type"), "{err}");

        // A request with required fields cannot leave `input` out.
        let err = parse_err("[[test]]\nname = \"e\"\ncall = \"expired\"\nexpect = true");
        assert_eq!(err, "plugins/x.toml: test[0] (\"e\").input: missing field `workload_id`");
        // One whose fields all default can.
        let m = parse_ok("[[test]]\nname = \"a\"\ncall = \"authenticate_agent\"\nexpect = \"rejected\"");
        assert_eq!(m.tests[0].call, TestCall::AuthenticateAgent(AgentHello::default()));
        // `kind` takes none.
        let err = parse_err("[[test]]\nname = \"k\"\ncall = \"kind\"\ninput = {}\nexpect = \"x\"");
        assert_eq!(err, "plugins/x.toml: test[0] (\"k\").input: the \"kind\" call takes no input");
    }

    #[test]
    fn unknown_keys_and_syntax_name_the_place() {
        let err = parse_err("[plugin]\nname = \"a\"\nauthor = \"me\"");
        assert!(err.starts_with("plugins/x.toml: line 3, column 1: unknown field `author`"), "{err}");
        let err = parse_err("[[test]]\nname = \"n\"\ncall = \"kind\"\nexpect = 1\nexpected = 2");
        assert!(err.contains("unknown field `expected`"), "{err}");
        let err = parse_err("[plugins]\n");
        assert!(err.contains("unknown field `plugins`"), "{err}");
        let err = parse_err("[[test]]\nname = \"n\"\ncall = \"kind\"");
        assert!(err.contains("missing field `expect`"), "{err}");
        let err = parse_err("[plugin]\nkind = \"policy\"");
        assert!(err.contains("unknown variant `policy`"), "{err}");
        let err = parse_err("[[test]]\nname = \"n\"\ncall = \"kind\"\nexpect = 1\nnow = -5");
        assert!(err.starts_with("plugins/x.toml: line "), "{err}");
        // The offending line is not quoted (it may hold a test credential).
        let err = parse_err("[[test]]\nname = \"n\"\ncall = \"kind\"\nexpect = 1\ntoken = \"hunter2\"");
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse_err("this is not toml");
        assert!(err.starts_with("plugins/x.toml: line 1, column "), "{err}");
    }

    #[test]
    fn limits_and_names() {
        let big = format!("[plugin]\ndescription = \"{}\"", "x".repeat(MAX_MANIFEST_BYTES));
        assert!(matches!(parse(&big, "o"), Err(ManifestError::TooLarge { .. })));

        let vector = |i: usize| format!("[[test]]\nname = \"t{i}\"\ncall = \"kind\"\nexpect = \"k\"\n");
        let ok: String = (0..MAX_TESTS).map(vector).collect();
        assert_eq!(parse_ok(&ok).tests.len(), MAX_TESTS);
        let too_many: String = (0..=MAX_TESTS).map(vector).collect();
        assert_eq!(parse_err(&too_many), "plugins/x.toml: test: 257 tests, the limit is 256");

        let dup = format!("{}{}", vector(1), vector(1));
        assert_eq!(parse_err(&dup), "plugins/x.toml: test[1] (\"t1\").name: another test has the same name");
        let err = parse_err("[[test]]\nname = \" \"\ncall = \"kind\"\nexpect = 1");
        assert_eq!(err, "plugins/x.toml: test[0].name: must not be empty");
        let err = parse_err("[plugin]\nname = \"a b\"");
        assert!(err.starts_with("plugins/x.toml: plugin.name: "), "{err}");
    }

    #[test]
    fn declared_kind_must_match_calls_and_slot() {
        let m = parse_ok("[plugin]\nkind = \"router\"\n[[test]]\nname = \"r\"\ncall = \"route\"\ninput = { target = { workload_kind = \"w\", workload_id = \"w\", agent_id = \"a\", service = \"s\" }, candidates = [] }\nexpect = []");
        m.check_kind(PluginKind::Router).unwrap();
        let err = m.check_kind(PluginKind::Authorizer).unwrap_err().to_string();
        assert_eq!(
            err,
            "plugins/office-hours.toml: plugin.kind: the manifest is for a router plugin, this slot takes authorizer plugins"
        );

        let err = parse_err(
            "[plugin]\nkind = \"authorizer\"\n[[test]]\nname = \"k\"\ncall = \"kind\"\nexpect = \"x\"",
        );
        assert_eq!(
            err,
            "plugins/x.toml: test[0] (\"k\").call: \"kind\" is a workload call, the manifest declares it is for authorizer plugins"
        );

        // Without a declared kind, the slot still refuses foreign calls.
        let m = parse_ok("[[test]]\nname = \"k\"\ncall = \"kind\"\nexpect = \"x\"");
        m.check_kind(PluginKind::Workload).unwrap();
        let err = m.check_kind(PluginKind::Router).unwrap_err().to_string();
        assert!(err.contains("test[0] (\"k\").call: \"kind\" is a workload call"), "{err}");
    }

    #[test]
    fn subset_matching() {
        let actual = json!({
            "authenticated": { "id": "alice", "groups": ["staff", "ops"], "labels": [["team", "a"]] }
        });
        check(&json!({}), &actual).unwrap();
        check(&json!({ "authenticated": {} }), &actual).unwrap();
        check(&json!({ "authenticated": { "id": "alice" } }), &actual).unwrap();
        check(&json!({ "authenticated": { "groups": ["staff", "ops"] } }), &actual).unwrap();

        // Missing key, nested.
        let m = check(&json!({ "authenticated": { "uid": 7 } }), &actual).unwrap_err();
        assert_eq!(
            m,
            Mismatch { path: "$.authenticated.uid".into(), expected: "7".into(), actual: "<missing>".into() }
        );
        // Wrong scalar, nested.
        let m = check(&json!({ "authenticated": { "id": "bob" } }), &actual).unwrap_err();
        assert_eq!(m.to_string(), "at $.authenticated.id: expected \"bob\", got \"alice\"");
        // Wrong variant.
        let m = check(&json!({ "rejected": "no" }), &actual).unwrap_err();
        assert_eq!(m.path, "$.rejected");

        // Arrays compare exactly: no subset, no reordering, same length.
        let m = check(&json!({ "authenticated": { "groups": ["staff"] } }), &actual).unwrap_err();
        assert_eq!(m.path, "$.authenticated.groups");
        assert_eq!(m.actual, "[\"staff\",\"ops\"]");
        let m = check(&json!({ "authenticated": { "groups": ["ops", "staff"] } }), &actual).unwrap_err();
        assert_eq!(m.path, "$.authenticated.groups[0]");
        check(&json!([2, 0, 1]), &json!([2, 0, 1])).unwrap();
        assert!(check(&json!([2, 0]), &json!([2, 0, 1])).is_err());
        // Objects inside arrays are exact too.
        assert!(check(&json!([{ "a": 1 }]), &json!([{ "a": 1, "b": 2 }])).is_err());
        check(&json!([{ "a": 1 }]), &json!([{ "a": 1 }])).unwrap();

        // Scalars and types.
        check(&json!(true), &json!(true)).unwrap();
        assert!(check(&json!(true), &json!(false)).is_err());
        assert!(check(&json!("1"), &json!(1)).is_err());
        assert!(check(&json!({ "a": 1 }), &json!([1])).is_err());
        check(&json!(-3), &json!(-3)).unwrap();
        check(&json!(1.5), &json!(1.5)).unwrap();
        assert!(check(&json!(1), &json!(1.5)).is_err());
    }

    /// The canary's way: the call's result through `serde_json::to_value`, then `check`.
    struct Expect(Value);

    impl Expect {
        fn check_result<T: serde::Serialize + ?Sized>(&self, actual: &T) -> Result<(), Mismatch> {
            check(&self.0, &serde_json::to_value(actual).unwrap())
        }
    }

    #[test]
    fn results_of_every_type() {
        let vector = Expect;
        // Unit variants and the variant-name shorthand.
        vector(json!("anonymous")).check_result(&UserAuthOutcome::Anonymous).unwrap();
        vector(json!("rejected")).check_result(&UserAuthOutcome::Rejected("nope".into())).unwrap();
        assert!(vector(json!("anonymous")).check_result(&UserAuthOutcome::Rejected("x".into())).is_err());
        let deny = Decision::Deny { status: 403, reason: "closed".into() };
        vector(json!("deny")).check_result(&deny).unwrap();
        vector(json!({ "deny": { "status": 403 } })).check_result(&deny).unwrap();
        let m = vector(json!({ "deny": { "status": 401 } })).check_result(&deny).unwrap_err();
        assert_eq!(m.to_string(), "at $.deny.status: expected 401, got 403");
        let m = vector(json!({ "allow": {} })).check_result(&deny).unwrap_err();
        assert_eq!(m.path, "$.allow");
        vector(json!({ "allow": {} })).check_result(&Decision::Allow { strip_credentials: true }).unwrap();

        // Options: "none" stands for the null TOML cannot write.
        vector(json!("none")).check_result(&None::<Resolved>).unwrap();
        let some = Some(Resolved { workload_id: "w".into(), agent_id: "a".into(), service: "http".into() });
        assert!(vector(json!("none")).check_result(&some).is_err());
        vector(json!({ "service": "http" })).check_result(&some).unwrap();
        let m = vector(json!({ "service": "ssh" })).check_result(&None::<Resolved>).unwrap_err();
        assert_eq!((m.path.as_str(), m.actual.as_str()), ("$", "null"));
        let identity = AgentAuthOutcome::Accepted(AgentIdentity {
            agent_id: "a".into(),
            workload_kind: "workspace".into(),
            workload_id: "w".into(),
            expires_at: None,
            labels: vec![],
        });
        vector(json!({ "accepted": { "expires_at": "none" } })).check_result(&identity).unwrap();

        // Plain values: bool, list of indices, string; TOML integers are i64, results u32.
        vector(json!(true)).check_result(&true).unwrap();
        vector(json!([1, 0])).check_result(&vec![1u32, 0]).unwrap();
        let m = vector(json!([0, 1])).check_result(&vec![1u32, 0]).unwrap_err();
        assert_eq!(m.to_string(), "at $[0]: expected 0, got 1");
        vector(json!("workspace")).check_result("workspace").unwrap();
        vector(json!({ "authenticated": { "id": "a", "groups": [] } }))
            .check_result(&UserAuthOutcome::Authenticated(Principal {
                id: "a".into(),
                groups: vec![],
                labels: vec![],
            }))
            .unwrap();
    }

    #[test]
    fn secrets_are_masked() {
        // Under a secret key: only the type and length show.
        let m = check(&json!({ "token": "expected-secret" }), &json!({ "token": "actual-secret-x" }))
            .unwrap_err();
        assert_eq!(m.path, "$.token");
        assert_eq!(m.expected, "<redacted string of 15 chars>");
        assert_eq!(m.actual, "<redacted string of 15 chars>");
        // Anywhere below one, too.
        let m = check(
            &json!({ "credential": { "cookie": { "name": "sid", "value": "s3cr3t" } } }),
            &json!({ "credential": { "cookie": { "name": "sid", "value": "other" } } }),
        )
        .unwrap_err();
        assert_eq!(m.path, "$.credential.cookie.value");
        assert!(!m.to_string().contains("s3cr3t") && !m.to_string().contains("other"), "{m}");
        let m = check(&json!({ "bearer": { "x": 1 } }), &json!({ "bearer": { "x": 2 } })).unwrap_err();
        assert_eq!((m.expected.as_str(), m.actual.as_str()), ("<redacted>", "<redacted>"));
        let m = check(&json!({ "api_token": "a" }), &json!({})).unwrap_err();
        assert_eq!(m.expected, "<redacted string of 1 chars>");
        let m = check(&json!({ "Password": "a" }), &json!({ "Password": "b" })).unwrap_err();
        assert!(!m.to_string().contains("\"a\""), "{m}");

        // Secrets nested in a rendered value are masked, the rest shows.
        let m = check(
            &json!({ "hello": [{ "token": "hunter2", "agent_version": "1" }] }),
            &json!({ "hello": [{ "token": "hunter3", "agent_version": "2" }] }),
        )
        .unwrap_err();
        assert_eq!(m.path, "$.hello[0]");
        assert!(!m.to_string().contains("hunter"), "{m}");
        assert!(m.expected.contains("\"agent_version\":\"1\""), "{m}");
        // Label pairs named like secrets.
        let m =
            check(&json!({ "labels": [["session_token", "abc"]] }), &json!({ "labels": [] })).unwrap_err();
        assert!(!m.to_string().contains("abc"), "{m}");
        assert!(m.expected.contains("session_token"), "{m}");
        // Over-long values are cut.
        let long = "x".repeat(1000);
        let m = check(&json!({ "reason": long }), &json!({ "reason": "short" })).unwrap_err();
        assert_eq!(m.expected.chars().count(), MAX_RENDERED_CHARS + 1);
        assert!(m.expected.ends_with('…'));
        // Odd keys are quoted in the path.
        let m = check(&json!({ "a b": 1 }), &json!({})).unwrap_err();
        assert_eq!(m.path, "$[\"a b\"]");
    }
}
