//! A plugin's optional manifest. It describes the plugin and carries test vectors the
//! canary runs before a new version is swapped in.
//!
//! Where it lives is one rule for every tool (host, `burrow-host plugin check`, the test
//! harness): the manifest **embedded in the component** (custom section
//! [`EMBEDDED_SECTION`], written by the SDK's `embed_manifest!`), or, for components built
//! without the SDK, `NAME.toml` next to `NAME.wasm`. A component with both is refused:
//! the two could disagree. A built-in's manifest is embedded like any other.
//!
//! The `[plugin]` table's `name` names the plugin (logs, metrics, the admin API) when
//! its slot sets no `name`; its `version` is shown by the admin API and in metrics.
//!
//! ```toml
//! [plugin]
//! name = "office-hours"          # optional
//! kind = "authorizer"            # optional; authorizer | workload | router; must match the slot
//! description = "..."            # optional
//! version = "1.2.0"              # optional, shown by GET /plugins and burrow_plugin_info
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
//! `input` is the call's request record in the serde form of [`crate::types`] (snake_case
//! keys, externally tagged enums, actions in kebab-case); `kind` takes none, and a
//! left-out `input` is an empty table. Every vector is parsed up front, so a malformed one
//! refuses the manifest with its index, name and key: the host (canary, `plugin check`)
//! and the SDK's native runner read manifests with this one parser and refuse the same
//! ones.
//!
//! `expect` is matched as a subset of the call's result by [`crate::matcher::check`]:
//! tables need only the keys they name, so `expect = { allow = {} }` accepts any allow
//! decision.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kind::PluginKind;
use crate::types::{
    AgentHello, AuthorizeRequest, ExpiryRequest, ResolveRequest, RouteRequest, UserAuthRequest,
};

/// The custom section of a component that holds its embedded manifest (UTF-8 TOML).
/// The SDK's `embed_manifest!` writes it (as a literal: attributes cannot name a const).
pub const EMBEDDED_SECTION: &str = "burrow-plugin-manifest";

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// Most test vectors in one manifest: each runs in the canary before a swap.
pub const MAX_TESTS: usize = 256;
/// Longest test name; names appear in error messages and logs.
pub const MAX_TEST_NAME_CHARS: usize = 200;

/// The `[plugin]` table: informative metadata, every key optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginInfo {
    /// The plugin's name in logs, metrics and the admin API unless its slot sets `name`:
    /// 1-64 characters of `[A-Za-z0-9-_.]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Which world it implements; the host refuses the manifest in a slot of another kind.
    #[serde(default)]
    pub kind: Option<PluginKind>,
    /// Free text for admins, at most 4096 characters.
    #[serde(default)]
    pub description: Option<String>,
    /// Free text, e.g. `1.2.0`: shown by the admin API and in `burrow_plugin_info`.
    #[serde(default)]
    pub version: Option<String>,
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Where it came from (a path or `builtin:<name>`), for messages.
    pub origin: String,
    /// The `[plugin]` table.
    pub plugin: PluginInfo,
    /// The `[[test]]` vectors, in order.
    pub tests: Vec<TestVector>,
}

/// The export a vector calls, as manifests spell it (`call = "authenticate_user"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

const CALL_NAMES: &str = "authenticate_agent, authenticate_user, authorize, resolve, expired, route, kind";

impl Call {
    /// Every call, in the order [`CALL_NAMES`] lists them.
    pub const ALL: [Call; 7] = [
        Call::AuthenticateAgent,
        Call::AuthenticateUser,
        Call::Authorize,
        Call::Resolve,
        Call::Expired,
        Call::Route,
        Call::Kind,
    ];

    /// The manifest's name of the call.
    pub fn name(self) -> &'static str {
        match self {
            Call::AuthenticateAgent => "authenticate_agent",
            Call::AuthenticateUser => "authenticate_user",
            Call::Authorize => "authorize",
            Call::Resolve => "resolve",
            Call::Expired => "expired",
            Call::Route => "route",
            Call::Kind => "kind",
        }
    }

    /// The kind of plugin that exports the call.
    pub fn kind(self) -> PluginKind {
        match self {
            Call::AuthenticateAgent | Call::AuthenticateUser | Call::Authorize => PluginKind::Authorizer,
            Call::Resolve | Call::Expired | Call::Kind => PluginKind::Workload,
            Call::Route => PluginKind::Router,
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parsed by hand rather than by serde so an unknown call names the known ones.
impl FromStr for Call {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Call::ALL
            .into_iter()
            .find(|call| call.name() == s)
            .ok_or_else(|| format!("unknown call {s:?} (expected one of: {CALL_NAMES})"))
    }
}

/// One call of a test vector, with its input already parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestCall {
    /// `authenticate_agent` with its request.
    AuthenticateAgent(AgentHello),
    /// `authenticate_user` with its request.
    AuthenticateUser(UserAuthRequest),
    /// `authorize` with its request.
    Authorize(AuthorizeRequest),
    /// `resolve` with its request.
    Resolve(ResolveRequest),
    /// `expired` with its request.
    Expired(ExpiryRequest),
    /// `route` with its request.
    Route(RouteRequest),
    /// `kind`, which takes no input.
    Kind,
}

impl TestCall {
    /// Which export it calls.
    pub fn call(&self) -> Call {
        match self {
            TestCall::AuthenticateAgent(_) => Call::AuthenticateAgent,
            TestCall::AuthenticateUser(_) => Call::AuthenticateUser,
            TestCall::Authorize(_) => Call::Authorize,
            TestCall::Resolve(_) => Call::Resolve,
            TestCall::Expired(_) => Call::Expired,
            TestCall::Route(_) => Call::Route,
            TestCall::Kind => Call::Kind,
        }
    }

    /// The manifest's name of the call.
    pub fn name(&self) -> &'static str {
        self.call().name()
    }

    /// The kind of plugin that exports the call.
    pub fn kind(&self) -> PluginKind {
        self.call().kind()
    }
}

/// One `[[test]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TestVector {
    /// Position in the manifest, from 0.
    pub index: usize,
    /// Unique in the manifest; shown when the vector fails.
    pub name: String,
    /// Fixed wall clock for the call, unix milliseconds.
    pub now: Option<u64>,
    /// Replaces the slot's config table for this vector.
    pub config: Option<toml::Table>,
    /// The export to call, with its input.
    pub call: TestCall,
    /// What the result must contain (see [`crate::matcher::check`]), TOML turned into
    /// JSON by [`toml_to_json`].
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
    pub fn kind(&self) -> Option<PluginKind> {
        self.plugin.kind
    }

    /// Refuses a manifest that declares another kind than the slot's, or whose tests
    /// call exports the slot's world does not have.
    pub fn check_kind(&self, slot: PluginKind) -> Result<(), ManifestError> {
        if let Some(kind) = self.plugin.kind {
            if kind != slot {
                return Err(self.wrong_kind(
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
            check_call(&self.origin, &test.to_string(), test.call.call(), kind, context)?;
        }
        Ok(())
    }

    fn wrong_kind(&self, key: String, message: String) -> ManifestError {
        ManifestError::Kind { origin: self.origin.clone(), key, message }
    }
}

/// `context` completes "..., `context` `kind` plugins"; `at` names the vector.
fn check_call(
    origin: &str,
    at: &str,
    call: Call,
    kind: PluginKind,
    context: &str,
) -> Result<(), ManifestError> {
    if call.kind() == kind {
        return Ok(());
    }
    Err(ManifestError::Kind {
        origin: origin.to_string(),
        key: format!("{at}.call"),
        message: format!("\"{}\" is a {} call, {context} {kind} plugins", call.name(), call.kind()),
    })
}

/// A manifest that cannot be used. Messages name the origin and the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("{origin}: the manifest is {len} bytes, the limit is {MAX_MANIFEST_BYTES}")]
    TooLarge {
        /// Where the manifest came from.
        origin: String,
        /// Its size in bytes.
        len: usize,
    },
    /// Not TOML, or a key serde rejects (unknown field, wrong type, missing field).
    #[error("{origin}: {message}")]
    Syntax {
        /// Where the manifest came from.
        origin: String,
        /// What is wrong, with line and column (never the offending line itself).
        message: String,
    },
    /// A value breaks a rule (limits, unique names, a call's input).
    #[error("{origin}: {key}: {message}")]
    Invalid {
        /// Where the manifest came from.
        origin: String,
        /// The offending key, e.g. `test[3] ("alice").input`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The manifest does not fit the plugin kind: a declared kind other than the slot's,
    /// or a vector calling an export the kind lacks. Separate from [`Self::Invalid`] so
    /// the SDK can report it as a kind error.
    #[error("{origin}: {key}: {message}")]
    Kind {
        /// Where the manifest came from.
        origin: String,
        /// `plugin.kind` or the vector's `call` key.
        key: String,
        /// What does not fit.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    plugin: PluginInfo,
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

const DECLARED: &str = "the manifest declares it is for";

/// Parses and checks a manifest. `origin` names it in errors (a path or `builtin:<name>`).
pub fn parse(text: &str, origin: &str) -> Result<Manifest, ManifestError> {
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

    let declared = raw.plugin.kind;
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
        // A call the declared kind lacks is refused before its input is read: the input
        // of another kind's call says nothing useful.
        if let (Ok(call), Some(kind)) = (raw.call.parse::<Call>(), declared) {
            check_call(origin, &at, call, kind, DECLARED)?;
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
    Ok(manifest)
}

fn check_meta(meta: &PluginInfo) -> Result<(), (&'static str, String)> {
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
    Ok(match call.parse::<Call>().map_err(|message| ("call", message))? {
        Call::AuthenticateAgent => TestCall::AuthenticateAgent(input_as(input)?),
        Call::AuthenticateUser => TestCall::AuthenticateUser(input_as(input)?),
        Call::Authorize => TestCall::Authorize(input_as(input)?),
        Call::Resolve => TestCall::Resolve(input_as(input)?),
        Call::Expired => TestCall::Expired(input_as(input)?),
        Call::Route => TestCall::Route(input_as(input)?),
        Call::Kind => match input {
            None => TestCall::Kind,
            Some(_) => return Err(("input", "the \"kind\" call takes no input".into())),
        },
    })
}

/// A TOML error as `line L, column C: message`. toml's own Display quotes the offending
/// source line, which may hold a secret (a test token here, a credential in a host
/// config): keep its message and point at the line and column instead.
pub fn toml_message(text: &str, err: &toml::de::Error) -> String {
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

/// TOML to JSON, as the host hands configs to plugins and as `expect` is matched. TOML
/// datetimes have no JSON counterpart: they become RFC 3339 strings.
pub fn toml_to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        // NaN and infinities have no JSON form; null is the honest stand-in.
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Value::Object(table_to_json(table)),
    }
}

/// A TOML table as a JSON object (see [`toml_to_json`]).
pub fn table_to_json(table: &toml::Table) -> serde_json::Map<String, Value> {
    table.iter().map(|(k, v)| (k.clone(), toml_to_json(v))).collect()
}

#[cfg(test)]
mod tests;
