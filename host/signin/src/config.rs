//! The `[sign_in]` table: browser sign-in with OpenID Connect.
//!
//! ```toml
//! [sign_in]
//! issuer = "https://gitlab.example.com"          # the provider (its discovery document)
//! client_id = "burrow"
//! client_secret_file = "/etc/burrow/oidc-client-secret"
//! url = "https://burrow.example.com"             # the host's own pages; the provider
//!                                                 # redirects to <url>/_burrow/sign-in/callback
//! cookie_secret_files = ["/etc/burrow/cookie.key"]   # >= 32 bytes; first seals, all open
//! scopes = ["openid", "profile", "email"]
//! username_claim = "preferred_username"
//! groups_claim = "groups"
//! session_lifetime = "12h"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use burrow_proto::Secret;
use serde::Deserialize;

use crate::seal::MIN_SECRET_LEN;

/// `[sign_in]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignInConfig {
    /// The provider's issuer URL (https, or http on a loopback address for tests).
    pub issuer: String,
    /// This host's client id at the provider.
    pub client_id: String,
    /// File holding the client secret. One of `client_secret_file` / `client_secret`;
    /// neither: a public client (PKCE alone).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The client secret inline (prefer the file, or an env-substituted config).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// The URL browsers reach the host's own sign-in pages at (scheme, host, optional
    /// port; no path). Its host must route to this ingress; cookies are `Secure` when
    /// it is https.
    pub url: String,
    /// Files holding the secrets cookies are sealed with (each at least 32 bytes; the
    /// same on every replica). The first seals, all open: rotate by putting a new one
    /// first.
    pub cookie_secret_files: Vec<PathBuf>,
    /// Scopes asked for; `openid` is always included. Default `openid profile email`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The claim that names the user (the principal id authorizers see). Default
    /// `preferred_username`; `sub` when the provider sends none.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// The claim listing the user's groups, from the ID token or else userinfo. Default `groups`.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// How long a sign-in lasts before the user signs in again. Default 12h.
    #[serde(default = "default_session_lifetime", with = "humantime_serde")]
    pub session_lifetime: Duration,
    /// The cookie holding a sign-in. Default `burrow_sign_in`.
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
}

fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email"].map(String::from).to_vec()
}
fn default_username_claim() -> String {
    "preferred_username".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_session_lifetime() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_cookie_name() -> String {
    "burrow_sign_in".into()
}

/// Whether `url` is `scheme://host[:port]` with nothing after, and https unless the host
/// is a loopback name (a test's provider or ingress).
fn check_origin(key: &str, url: &str, allow_path: bool) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{key}: {url:?} is not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback =
        host == "localhost" || host.ends_with(".localhost") || host == "127.0.0.1" || host == "[::1]";
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err(format!("{key}: must be https (http only on a loopback name)")),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.fragment().is_some() {
        return Err(format!("{key}: no user info or fragment"));
    }
    if !allow_path && (parsed.path() != "/" || parsed.query().is_some()) {
        return Err(format!("{key}: scheme, host and port only (no path)"));
    }
    Ok(parsed)
}

impl SignInConfig {
    /// Checks values serde cannot; reads the secret files to check them.
    pub fn validate(&self) -> Result<(), String> {
        check_origin("sign_in.issuer", &self.issuer, true)?;
        check_origin("sign_in.url", &self.url, false)?;
        if self.client_id.is_empty() {
            return Err("sign_in.client_id: required".into());
        }
        self.client_secret()?;
        self.cookie_secrets()?;
        if self.session_lifetime < Duration::from_secs(60)
            || self.session_lifetime > Duration::from_secs(30 * 86400)
        {
            return Err("sign_in.session_lifetime: from 1m to 30 days".into());
        }
        // RFC 6265 cookie-name is an RFC 7230 token.
        if self.cookie_name.is_empty()
            || !self.cookie_name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return Err(format!("sign_in.cookie_name: {:?} is not a valid cookie name", self.cookie_name));
        }
        for (key, claim) in [("username_claim", &self.username_claim), ("groups_claim", &self.groups_claim)] {
            if claim.is_empty() {
                return Err(format!("sign_in.{key}: must not be empty"));
            }
        }
        Ok(())
    }

    /// The client secret, if the client is confidential.
    pub fn client_secret(&self) -> Result<Option<String>, String> {
        match (&self.client_secret_file, &self.client_secret) {
            (Some(_), Some(_)) => Err("sign_in: set client_secret_file or client_secret, not both".into()),
            (None, None) => Ok(None),
            (None, Some(secret)) => Ok(Some(secret.expose().to_owned())),
            (Some(path), None) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("sign_in.client_secret_file: cannot read {}: {e}", path.display())
                })?;
                let secret = text.trim_end_matches(['\n', '\r']).to_owned();
                if secret.is_empty() {
                    return Err(format!("sign_in.client_secret_file: {} is empty", path.display()));
                }
                Ok(Some(secret))
            }
        }
    }

    /// The cookie secrets' bytes, first the one that seals.
    pub fn cookie_secrets(&self) -> Result<Vec<Vec<u8>>, String> {
        if self.cookie_secret_files.is_empty() || self.cookie_secret_files.len() > 4 {
            return Err("sign_in.cookie_secret_files: one to four files (the first seals)".into());
        }
        self.cookie_secret_files
            .iter()
            .map(|path| {
                let mut bytes = std::fs::read(path).map_err(|e| {
                    format!("sign_in.cookie_secret_files: cannot read {}: {e}", path.display())
                })?;
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                if bytes.len() < MIN_SECRET_LEN {
                    return Err(format!(
                        "sign_in.cookie_secret_files: {} holds fewer than {MIN_SECRET_LEN} bytes",
                        path.display()
                    ));
                }
                Ok(bytes)
            })
            .collect()
    }

    /// The provider's redirect target on this host.
    pub fn callback_url(&self) -> String {
        format!("{}{}", self.url.trim_end_matches('/'), crate::CALLBACK_PATH)
    }

    /// Whether cookies must be `Secure` (the sign-in URL is https).
    pub fn secure_cookies(&self) -> bool {
        self.url.starts_with("https://")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_file(tag: &str, bytes: &[u8]) -> PathBuf {
        // One file per call: tests run in parallel, and one test rewriting a file another
        // is reading would show it a truncated secret.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("burrow-signin-{tag}-{}-{n}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn valid() -> SignInConfig {
        toml::from_str(&format!(
            "issuer = \"https://idp.example.com\"\nclient_id = \"burrow\"\nclient_secret = \"s3cret\"\n\
             url = \"https://burrow.example.com\"\ncookie_secret_files = [{:?}]\n",
            secret_file("valid", &[7u8; 32]).display().to_string()
        ))
        .unwrap()
    }

    #[test]
    fn sign_in_config_defaults_and_validates() {
        let config = valid();
        config.validate().unwrap();
        assert_eq!(config.scopes, ["openid", "profile", "email"]);
        assert_eq!(config.session_lifetime, Duration::from_secs(12 * 3600));
        assert_eq!(config.callback_url(), "https://burrow.example.com/_burrow/sign-in/callback");
        assert!(config.secure_cookies());
        assert!(!format!("{config:?}").contains("s3cret"), "the client secret never prints");
    }

    #[test]
    fn sign_in_config_errors_name_their_key() {
        let short = secret_file("short", b"too short\n");
        let cases: Vec<(SignInConfig, &str)> = vec![
            (SignInConfig { issuer: "http://idp.example.com".into(), ..valid() }, "sign_in.issuer"),
            (SignInConfig { url: "https://burrow.example.com/x".into(), ..valid() }, "sign_in.url"),
            (SignInConfig { url: "http://burrow.example.com".into(), ..valid() }, "sign_in.url"),
            (SignInConfig { client_id: String::new(), ..valid() }, "sign_in.client_id"),
            (SignInConfig { cookie_secret_files: vec![short], ..valid() }, "fewer than 32"),
            (SignInConfig { cookie_secret_files: vec![], ..valid() }, "sign_in.cookie_secret_files"),
            (SignInConfig { session_lifetime: Duration::from_secs(5), ..valid() }, "session_lifetime"),
            (SignInConfig { cookie_name: "bad name".into(), ..valid() }, "cookie_name"),
            (SignInConfig { client_secret_file: Some("/nonexistent".into()), ..valid() }, "not both"),
        ];
        for (config, needle) in cases {
            let err = config.validate().unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        // Loopback names may use http (tests, a local provider).
        SignInConfig {
            issuer: "http://127.0.0.1:9999".into(),
            url: "http://burrow.localhost:8080".into(),
            ..valid()
        }
        .validate()
        .unwrap();
    }
}
