//! Outbound HTTP for plugins: a small blocking request/response API over
//! `wasi:http/outgoing-handler`.
//!
//! The host lets a request out only to hosts on the plugin slot's allowlist
//! ([`HttpError::Denied`] otherwise) and refuses names that resolve to private addresses
//! unless those addresses are themselves allow-listed ([`HttpError::Prohibited`]). A call
//! still runs under the slot's `call_timeout`, so keep [`HttpRequest::timeout`] below it.

use std::fmt;
use std::time::Duration;

/// Default cap on a response body: a plugin's memory is small and bounded.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Header names whose values are credentials: masked in `Debug`.
const SECRET_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie", "set-cookie"];

/// An outbound HTTP request.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Upper-case method, e.g. `GET`.
    pub method: String,
    /// `http://` or `https://` URL, with optional port, path and query.
    pub url: String,
    /// Request headers in order (values of credential headers are masked in `Debug`).
    pub headers: Vec<(String, String)>,
    /// Request body (empty for none).
    pub body: Vec<u8>,
    /// Connect, first-byte and between-bytes timeout. `None` leaves the host's defaults.
    pub timeout: Option<Duration>,
    /// A longer response body fails with [`HttpError::TooLarge`].
    pub max_response_bytes: usize,
}

impl HttpRequest {
    /// A request with no headers and no body.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into().to_ascii_uppercase(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// `GET url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// `POST url` with `body`.
    pub fn post(url: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", url).body(body)
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the connect, first-byte and between-bytes timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the response body cap.
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let secret = SECRET_HEADERS.iter().any(|s| name.eq_ignore_ascii_case(s));
                (name.as_str(), if secret { "<redacted>" } else { value.as_str() })
            })
            .collect();
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &headers)
            .field("body_len", &self.body.len())
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

/// A complete HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Response headers in order; non-UTF-8 bytes are replaced.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with `status`, no headers and `body`.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self { status, headers: Vec::new(), body: body.into() }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why an outbound request produced no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The request is malformed (bad URL, method or header).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The host refused it: the host name is not on the slot's `http.allow` list.
    #[error("request denied by the host: not on the plugin's HTTP allowlist")]
    Denied,
    /// The host refused it: the name resolved to a private, loopback or otherwise
    /// non-global address that is not itself on the allowlist.
    #[error("destination address prohibited: a private or loopback address that is not itself allow-listed")]
    Prohibited,
    /// Connecting, the first byte or the next byte took longer than the timeout.
    #[error("timed out")]
    Timeout,
    /// The response body is longer than [`HttpRequest::max_response_bytes`].
    #[error("response body larger than {limit} bytes")]
    TooLarge {
        /// The limit that was hit.
        limit: usize,
    },
    /// DNS, connection, TLS or protocol failure.
    #[error("{0}")]
    Transport(String),
}

/// The parts of a URL that `wasi:http` takes separately.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UrlParts<'a> {
    pub https: bool,
    pub authority: &'a str,
    pub path_with_query: String,
}

/// Splits `http(s)://authority/path?query`, dropping any `#fragment`.
pub(crate) fn split_url(url: &str) -> Result<UrlParts<'_>, HttpError> {
    let invalid = |why: &str| HttpError::InvalidRequest(format!("url {url:?}: {why}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("expected http:// or https://"))?;
    let https = if scheme.eq_ignore_ascii_case("https") {
        true
    } else if scheme.eq_ignore_ascii_case("http") {
        false
    } else {
        return Err(invalid("only http and https are supported"));
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(invalid("no host"));
    }
    if authority.contains('@') {
        return Err(invalid("user info in URLs is not supported; send an Authorization header"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("contains whitespace or control characters"));
    }
    // `wasi:http` wants an origin-form target, which always starts with '/'.
    let path_with_query = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    Ok(UrlParts { https, authority, path_with_query })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        let parts = split_url("https://gitlab.example.com:8443/api/v4/user?x=1#frag").unwrap();
        assert_eq!(
            parts,
            UrlParts {
                https: true,
                authority: "gitlab.example.com:8443",
                path_with_query: "/api/v4/user?x=1".into()
            }
        );
        let parts = split_url("http://127.0.0.1:9").unwrap();
        assert_eq!(parts.path_with_query, "/");
        assert!(!parts.https);
        assert_eq!(split_url("http://h?q=1").unwrap().path_with_query, "/?q=1");
        for bad in ["ftp://x/", "x", "http:///path", "http://u:p@h/", "http://h/a b"] {
            assert!(matches!(split_url(bad), Err(HttpError::InvalidRequest(_))), "{bad}");
        }
    }

    #[test]
    fn debug_masks_credential_headers() {
        let req =
            HttpRequest::get("https://x/").header("Authorization", "Bearer sekrit").header("accept", "*/*");
        let text = format!("{req:?}");
        assert!(!text.contains("sekrit"), "{text}");
        assert!(text.contains("*/*"), "{text}");
    }

    #[test]
    fn response_helpers() {
        let resp = HttpResponse::new(200, "{\"a\":1}").with_header("Content-Type", "application/json");
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert!(resp.is_success());
        let value: serde_json::Value = resp.json().unwrap();
        assert_eq!(value["a"], 1);
    }
}
