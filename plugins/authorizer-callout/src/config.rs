//! The plugin's `config` table, checked strictly: every error names the key to fix, and
//! none quotes the secret.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// Bounds of `timeout`: above 10 s a user would rather get the 503 than wait, and the
/// slot's `call_timeout` (at most 60 s) must still cover the whole call.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds of the cache TTLs: a decision older than an hour is no longer the control
/// plane's answer, whatever it says.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Shortest `secret`: it is the only thing telling the endpoint the caller is this host.
pub const MIN_SECRET_CHARS: usize = 16;

/// The table as written; durations are text (`"500ms"`), parsed by [`Config::parse`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    url: String,
    secret: String,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    cache_allow_ttl: Option<String>,
    #[serde(default)]
    cache_deny_ttl: Option<String>,
    #[serde(default)]
    forward_credentials: bool,
    #[serde(default = "yes")]
    strip_credentials: bool,
}

fn yes() -> bool {
    true
}

/// The parsed config.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// The decision endpoint: `http://` or `https://`, on the slot's HTTP allowlist.
    pub url: String,
    /// Sent as `Authorization: Bearer <secret>`; also keys the cache's hashes.
    pub secret: String,
    /// Connect, first-byte and between-bytes timeout of the POST. Default 500 ms.
    pub timeout: Duration,
    /// How long an allow is reused. Default 30 s; zero: never cached.
    pub cache_allow_ttl: Duration,
    /// How long a deny is reused. Default 5 s; zero: never cached.
    pub cache_deny_ttl: Duration,
    /// Send the raw credential (`credential.value`) besides its hash. Default false.
    pub forward_credentials: bool,
    /// Remove the user's credential before an allowed request reaches the workload.
    /// Default true: it is a control-plane credential, not the workload's.
    pub strip_credentials: bool,
}

// By hand, so the secret never reaches a log through `{:?}`.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("cache_allow_ttl", &self.cache_allow_ttl)
            .field("cache_deny_ttl", &self.cache_deny_ttl)
            .field("forward_credentials", &self.forward_credentials)
            .field("strip_credentials", &self.strip_credentials)
            .finish()
    }
}

impl Config {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
    pub const DEFAULT_ALLOW_TTL: Duration = Duration::from_secs(30);
    pub const DEFAULT_DENY_TTL: Duration = Duration::from_secs(5);

    /// Parses the config table (JSON text, as the host hands it over).
    pub fn parse(json: &str) -> Result<Config, String> {
        let raw: Raw = serde_json::from_str::<serde_json::Value>(json)
            .and_then(serde_json::from_value)
            .map_err(|err| format!("invalid config: {err}"))?;
        let rule = |key: &str, why: String| format!("invalid config: {key}: {why}");

        check_url(&raw.url).map_err(|why| rule("url", why))?;
        if raw.forward_credentials && !secure_or_loopback(&raw.url) {
            return Err(rule(
                "forward_credentials",
                "raw credentials are sent over https only (or to a loopback address): use an https:// url"
                    .into(),
            ));
        }
        if raw.secret.chars().count() < MIN_SECRET_CHARS {
            return Err(rule("secret", format!("must be at least {MIN_SECRET_CHARS} characters")));
        }
        // It goes into a header value: no whitespace or control characters inside.
        if raw.secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(rule("secret", "must not contain whitespace or control characters".into()));
        }
        let duration = |key: &str, text: Option<&str>, default: Duration| match text {
            None => Ok(default),
            Some(text) => parse_duration(text).map_err(|why| rule(key, why)),
        };
        let timeout = duration("timeout", raw.timeout.as_deref(), Self::DEFAULT_TIMEOUT)?;
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(rule("timeout", format!("must be more than 0 and at most {}", show(MAX_TIMEOUT))));
        }
        let cache_allow_ttl =
            duration("cache_allow_ttl", raw.cache_allow_ttl.as_deref(), Self::DEFAULT_ALLOW_TTL)?;
        let cache_deny_ttl =
            duration("cache_deny_ttl", raw.cache_deny_ttl.as_deref(), Self::DEFAULT_DENY_TTL)?;
        for (key, ttl) in [("cache_allow_ttl", cache_allow_ttl), ("cache_deny_ttl", cache_deny_ttl)] {
            if ttl > MAX_CACHE_TTL {
                return Err(rule(
                    key,
                    format!("must be at most {} (0 turns caching off)", show(MAX_CACHE_TTL)),
                ));
            }
        }
        Ok(Config {
            url: raw.url,
            secret: raw.secret,
            timeout,
            cache_allow_ttl,
            cache_deny_ttl,
            forward_credentials: raw.forward_credentials,
            strip_credentials: raw.strip_credentials,
        })
    }
}

/// `http(s)://host[:port]/path`, nothing the SDK's request would refuse later.
fn check_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} must start with https:// or http://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if authority.contains('@') {
        return Err(format!("{url:?}: no user info in the url; the plugin sends `secret` instead"));
    }
    if url.contains('#') {
        return Err(format!("{url:?}: no #fragment"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?} contains whitespace or control characters"));
    }
    Ok(())
}

/// Whether raw credentials may travel to `url`: TLS, or a loopback literal (a sidecar).
fn secure_or_loopback(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return true;
    }
    let rest = lower.strip_prefix("http://").unwrap_or_default();
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// `"500ms"`, `"30s"`, `"5m"`, `"1h"` or `"0"`: one number and one unit, like the host's
/// own durations in their common form.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not a duration (like \"500ms\", \"30s\", \"5m\" or \"0\")");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let millis = match unit.trim() {
        "ms" => Some(number),
        "s" => number.checked_mul(1000),
        "m" | "min" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => return Err(bad()),
    };
    millis.map(Duration::from_millis).ok_or_else(bad)
}

fn show(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "shared-secret-0123456789";

    fn parse(extra: serde_json::Value) -> Result<Config, String> {
        let mut table =
            serde_json::json!({ "url": "https://cp.example.com/burrow/authorize", "secret": SECRET });
        for (k, v) in extra.as_object().unwrap() {
            table[k] = v.clone();
        }
        Config::parse(&table.to_string())
    }

    fn err(extra: serde_json::Value) -> String {
        parse(extra).expect_err("the config must be refused")
    }

    #[test]
    fn defaults() {
        let config = parse(serde_json::json!({})).unwrap();
        assert_eq!(config.timeout, Duration::from_millis(500));
        assert_eq!(config.cache_allow_ttl, Duration::from_secs(30));
        assert_eq!(config.cache_deny_ttl, Duration::from_secs(5));
        assert!(!config.forward_credentials);
        assert!(config.strip_credentials);
    }

    #[test]
    fn durations_parse() {
        let config =
            parse(serde_json::json!({"timeout": "250ms", "cache_allow_ttl": "2m", "cache_deny_ttl": "0"}))
                .unwrap();
        assert_eq!(config.timeout, Duration::from_millis(250));
        assert_eq!(config.cache_allow_ttl, Duration::from_secs(120));
        assert_eq!(config.cache_deny_ttl, Duration::ZERO);
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "ms", "5", "5 parsecs", "-1s", "1.5s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (serde_json::json!({"urll": "x"}), "unknown field `urll`"),
            (serde_json::json!({"url": "ftp://cp/"}), "url: "),
            (serde_json::json!({"url": "https://u:p@cp/"}), "url: "),
            (serde_json::json!({"url": "https:///x"}), "url: "),
            (serde_json::json!({"secret": "short"}), "secret: must be at least 16"),
            (serde_json::json!({"secret": "has a space in it!!"}), "secret: must not contain whitespace"),
            (serde_json::json!({"timeout": "soon"}), "timeout: \"soon\" is not a duration"),
            (serde_json::json!({"timeout": "0"}), "timeout: must be more than 0"),
            (serde_json::json!({"timeout": "11s"}), "timeout: must be more than 0 and at most 10s"),
            (serde_json::json!({"cache_allow_ttl": "2h"}), "cache_allow_ttl: must be at most 3600s"),
            (serde_json::json!({"cache_deny_ttl": 5}), "invalid type"),
            (serde_json::json!({"forward_credentials": "yes"}), "invalid type"),
        ];
        for (extra, want) in cases {
            let err = err(extra.clone());
            assert!(err.starts_with("invalid config: "), "{extra}: {err}");
            assert!(err.contains(want), "{extra}: {err}");
        }
        assert!(Config::parse("{}").unwrap_err().contains("missing field `url`"));
        let no_secret = Config::parse(r#"{"url": "https://cp/"}"#).unwrap_err();
        assert!(no_secret.contains("missing field `secret`"), "{no_secret}");
    }

    #[test]
    fn raw_credentials_need_tls_or_loopback() {
        let err = err(serde_json::json!({"url": "http://cp.example.com/a", "forward_credentials": true}));
        assert!(err.contains("forward_credentials: "), "{err}");
        for url in
            ["https://cp.example.com/a", "http://127.0.0.1:8000/a", "http://[::1]:80/a", "http://localhost/a"]
        {
            assert!(parse(serde_json::json!({"url": url, "forward_credentials": true})).is_ok(), "{url}");
        }
        // Hashes only: plain http is the admin's choice.
        assert!(parse(serde_json::json!({"url": "http://cp.example.com/a"})).is_ok());
    }

    #[test]
    fn the_secret_stays_out_of_debug_and_errors() {
        let config = parse(serde_json::json!({})).unwrap();
        assert!(!format!("{config:?}").contains(SECRET));
        let err = err(serde_json::json!({"timeout": "bad"}));
        assert!(!err.contains(SECRET), "{err}");
    }
}
