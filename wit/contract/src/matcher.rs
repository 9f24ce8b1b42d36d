//! The `expect` matcher: whether a call's result (as serde JSON) contains what a test
//! vector expects, and where it differs, with credentials masked.
//!
//! The host's canary and the SDK's native runner both judge vectors with [`check`], so a
//! vector means the same in `cargo test` as in a swap.

use std::fmt;

use serde_json::Value;

/// Rendered values in a [`Mismatch`] are cut to this many characters.
pub const MAX_RENDERED_CHARS: usize = 120;

/// Where and how a result differs from `expect`. Values are rendered as JSON, cut to
/// [`MAX_RENDERED_CHARS`], with anything under a secret-looking key masked.
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

impl std::error::Error for Mismatch {}

/// Whether `actual` contains `expect`:
/// - a table matches a table holding at least its keys, each value matching recursively
///   (extra keys in `actual` are fine);
/// - arrays match exactly: same length, every element equal;
/// - scalars match when equal; integers compare by value;
/// - TOML has no null, so the string `"none"` matches a null (an absent option);
/// - a string matches a single-key table with that key, so `expect = "deny"` matches
///   any `deny { .. }` decision, as `expect = "anonymous"` matches the unit variant.
pub fn check(expect: &Value, actual: &Value) -> Result<(), Mismatch> {
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
    let text = if secret { masked(value) } else { redacted(value).to_string() };
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

/// A copy with every value under a secret-looking key masked, including `[key, value]`
/// label pairs: safe to print in a failure message.
pub fn redacted(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) { Value::String(masked(v)) } else { redacted(v) };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => match items.as_slice() {
            [Value::String(k), v] if is_secret_key(k) => {
                Value::Array(vec![Value::String(k.clone()), Value::String(masked(v))])
            }
            _ => Value::Array(items.iter().map(redacted).collect()),
        },
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::types::{AgentAuthOutcome, AgentIdentity, Decision, Principal, Resolved, UserAuthOutcome};

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
