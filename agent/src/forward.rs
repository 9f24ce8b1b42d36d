//! `burrow forward`: the user's side of a port-forward, for users who have HTTPS but no
//! SSH. Like `kubectl port-forward`, it listens on a local port and carries each
//! connection to a workload's service through the host's ingress, as one WebSocket per
//! connection (binary messages, so it passes ordinary HTTP proxies and load balancers)
//! to `<workload URL>/_burrow/forward`.
//!
//! The host runs the same admission as for any request (action `port-forward`, the
//! user's bearer token) and dials the service the URL names. Before listening, a plain
//! `GET` of the endpoint checks the URL and token, so a typo or a missing grant is
//! reported at once, in the host's words, instead of at the first connection.
//!
//! A WebSocket has no half-close: when either side ends its direction, the connection
//! ends, as with `kubectl port-forward`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use burrow_proto::ws::{ws_config, WsIo};
use burrow_proto::Secret;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{self, HeaderValue, Uri};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{is_loopback_host, is_loopback_ip};
use crate::transport::{load_roots, tls_connector, Io};

/// The endpoint's path, appended to the workload URL's path.
pub const FORWARD_SUFFIX: &str = "/_burrow/forward";

/// Longest error body read from the host.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// What to forward where.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// The workload's address: `http://` or `https://`, a host name, an optional port
    /// and an optional path prefix (path-routed workloads); no query.
    pub url: String,
    /// The user's token, sent as `Authorization: Bearer`.
    pub token: Option<Secret>,
    /// Extra trusted CA certificates (PEM), for hosts with a private CA.
    pub ca_file: Option<PathBuf>,
    /// Connections carried at once; more wait for a slot.
    pub max_connections: usize,
    /// Deadline for reaching the host and its answer, per connection.
    pub connect_timeout: Duration,
    /// Dial this address instead of resolving the URL's host name (which still goes in
    /// `Host` and TLS SNI), as curl's `--connect-to`: for split DNS, or a host reached
    /// through a tunnel of its own.
    pub connect_to: Option<SocketAddr>,
    /// Allow `http://` to a host that is not loopback (`--insecure`; default false):
    /// the token and the forwarded bytes then cross the network unencrypted. Loopback is
    /// where the bytes go: `connect_to` if set, else the URL's host as written (a literal
    /// loopback address or a `localhost`/`*.localhost` name; nothing is resolved).
    pub insecure: bool,
}

impl ForwardConfig {
    /// Defaults: 256 connections at once, 30 s to connect.
    pub fn new(url: impl Into<String>, token: Option<Secret>) -> Self {
        Self {
            url: url.into(),
            token,
            ca_file: None,
            max_connections: 256,
            connect_timeout: Duration::from_secs(30),
            connect_to: None,
            insecure: false,
        }
    }
}

/// Why a forward could not start or a connection could not be carried.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The workload URL is not usable.
    #[error("invalid workload URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// An `http://` URL to a host that is not loopback, without `insecure`.
    #[error(
        "refusing cleartext URL {url:?}: your token and the forwarded traffic would cross the network \
         unencrypted to {to}; use https://, or pass --insecure to allow it (http:// is allowed without \
         --insecure only to a loopback address or a localhost name)"
    )]
    Cleartext { url: String, to: String },
    /// The TLS client could not be set up (a bad `--ca-file`).
    #[error(transparent)]
    Setup(#[from] crate::AgentError),
    /// The host could not be reached or the connection broke.
    #[error("cannot reach {authority}: {reason}")]
    Unreachable { authority: String, reason: String },
    /// The host answered with an error (unknown workload, denied, agent gone, ...).
    #[error("the host refused: {status} {code}: {message}{}", request_id.as_ref().map(|id| format!(" (request id {id})")).unwrap_or_default())]
    Refused { status: u16, code: String, message: String, request_id: Option<String> },
    /// The local listener failed.
    #[error("local listener: {0}")]
    Listener(std::io::Error),
}

/// A prepared forward: the URL parsed and TLS set up once.
pub struct Forwarder {
    config: ForwardConfig,
    tls: bool,
    host: String,
    port: u16,
    /// `host[:port]` as the `Host` header and the WebSocket URL carry it.
    authority: String,
    path: String,
    connector: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").field("url", &self.config.url).finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Parses the URL and prepares TLS.
    pub fn new(config: ForwardConfig) -> Result<Self, ForwardError> {
        let bad = |reason: &str| ForwardError::Url { url: redacted(&config.url), reason: reason.to_owned() };
        let uri: Uri = config.url.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("use http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host name"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user info is not allowed; pass the token with BURROW_TOKEN or --token-file"));
        }
        if uri.query().is_some() {
            return Err(bad("a query is not allowed"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri.path().trim_end_matches('/').to_owned();
        if !tls {
            let (to, loopback) = match config.connect_to {
                Some(addr) => (addr.to_string(), is_loopback_ip(addr.ip())),
                None => (authority.as_str().to_owned(), is_loopback_host(&host)),
            };
            if !loopback && !config.insecure {
                return Err(ForwardError::Cleartext { url: redacted(&config.url), to });
            }
            let what =
                if loopback { "(loopback only)" } else { "across the network (allowed by --insecure)" };
            warn!(
                url = %redacted(&config.url),
                %to,
                "cleartext http://: your token and the forwarded traffic travel unencrypted {what}"
            );
        }
        let connector = if tls {
            Some(tls_connector(&load_roots(config.ca_file.as_deref())?, b"http/1.1")?)
        } else {
            None
        };
        Ok(Self { tls, host, port, authority: authority.as_str().to_owned(), path, connector, config })
    }

    fn endpoint_path(&self) -> String {
        format!("{}{FORWARD_SUFFIX}", self.path)
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> ForwardError {
        ForwardError::Unreachable { authority: self.authority.clone(), reason: reason.to_string() }
    }

    /// TCP, then TLS for `https`.
    async fn connect(&self) -> Result<Box<dyn Io>, ForwardError> {
        let tcp = match self.config.connect_to {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect((self.host.as_str(), self.port)).await,
        }
        .map_err(|e| self.unreachable(e))?;
        let _ = tcp.set_nodelay(true);
        match &self.connector {
            None => Ok(Box::new(tcp)),
            Some(connector) => {
                let name = ServerName::try_from(self.host.clone()).map_err(|e| self.unreachable(e))?;
                let tls =
                    connector.connect(name, tcp).await.map_err(|e| self.unreachable(format!("TLS: {e}")))?;
                Ok(Box::new(tls))
            }
        }
    }

    fn authorization(&self) -> Option<HeaderValue> {
        let token = self.config.token.as_ref()?;
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// Asks the host whether this user may forward to this workload (a plain `GET` of
    /// the endpoint: admission only, nothing is dialed).
    pub async fn check(&self) -> Result<(), ForwardError> {
        tokio::time::timeout(self.config.connect_timeout, self.check_inner())
            .await
            .map_err(|_| self.unreachable(format!("no answer within {:?}", self.config.connect_timeout)))?
    }

    async fn check_inner(&self) -> Result<(), ForwardError> {
        let io = self.connect().await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| self.unreachable(e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = http::Request::get(self.endpoint_path())
            .header(http::header::HOST, &self.authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, user_agent());
        if let Some(value) = self.authorization() {
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let request = request.body(Empty::<bytes::Bytes>::new()).map_err(|e| self.unreachable(e))?;
        let response = sender.send_request(request).await.map_err(|e| self.unreachable(e))?;
        if response.status().is_success() {
            return Ok(());
        }
        let status = response.status();
        let request_id = header_text(response.headers(), "x-request-id");
        let body = http_body_util::Limited::new(response.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Err(refusal(status, request_id, &body))
    }

    /// Opens one forwarded connection (a WebSocket to the endpoint): the host has
    /// admitted it and dialed the service when this returns.
    pub async fn open(
        &self,
    ) -> Result<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static, ForwardError>
    {
        tokio::time::timeout(self.config.connect_timeout, self.open_inner())
            .await
            .map_err(|_| self.unreachable(format!("no answer within {:?}", self.config.connect_timeout)))?
    }

    async fn open_inner(&self) -> Result<WsIo<Box<dyn Io>>, ForwardError> {
        let io = self.connect().await?;
        let scheme = if self.tls { "wss" } else { "ws" };
        let mut request = format!("{scheme}://{}{}", self.authority, self.endpoint_path())
            .into_client_request()
            .map_err(|e| self.unreachable(e))?;
        let headers = request.headers_mut();
        headers.insert(http::header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Ok(value) = HeaderValue::from_str(&user_agent()) {
            headers.insert(http::header::USER_AGENT, value);
        }
        if let Some(value) = self.authorization() {
            headers.insert(http::header::AUTHORIZATION, value);
        }
        match tokio_tungstenite::client_async_with_config(request, io, Some(ws_config())).await {
            Ok((ws, _)) => Ok(WsIo::new(ws)),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let request_id = header_text(response.headers(), "x-request-id");
                let body = response.body().clone().unwrap_or_default();
                Err(refusal(response.status(), request_id, &body))
            }
            Err(error) => Err(self.unreachable(format!("WebSocket: {error}"))),
        }
    }

    /// Accepts local connections on `listener` and carries each through its own
    /// WebSocket until `shutdown`; a connection the host refuses is closed and the
    /// reason logged, and the forward keeps serving the next.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ForwardError> {
        let slots = Arc::new(Semaphore::new(self.config.max_connections.max(1)));
        let connections = tokio_util::task::TaskTracker::new();
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let (local, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted.map_err(ForwardError::Listener)?,
            };
            let forwarder = self.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let _permit = permit;
                tokio::select! {
                    () = forwarder.carry(local, peer) => {}
                    () = shutdown.cancelled() => {}
                }
            });
        }
        connections.close();
        connections.wait().await;
        Ok(())
    }

    async fn carry(&self, mut local: TcpStream, peer: SocketAddr) {
        let _ = local.set_nodelay(true);
        let mut remote = match self.open().await {
            Ok(remote) => remote,
            Err(error) => {
                warn!(%peer, "connection not forwarded: {error}");
                return;
            }
        };
        debug!(%peer, "forwarding");
        match tokio::io::copy_bidirectional(&mut local, &mut remote).await {
            Ok((up, down)) => debug!(%peer, up, down, "connection closed"),
            Err(error) => info!(%peer, %error, "connection ended with an error"),
        }
    }
}

/// `url` with any user info (`user:password@`) masked, for error messages.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

fn header_text(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The host's error page (JSON, as asked) as an error; any other body is quoted.
fn refusal(status: http::StatusCode, request_id: Option<String>, body: &[u8]) -> ForwardError {
    #[derive(serde::Deserialize)]
    struct Page {
        error: String,
        message: String,
        request_id: Option<String>,
    }
    match serde_json::from_slice::<Page>(body) {
        Ok(page) => ForwardError::Refused {
            status: status.as_u16(),
            code: page.error,
            message: page.message,
            request_id: page.request_id.or(request_id),
        },
        Err(_) => ForwardError::Refused {
            status: status.as_u16(),
            code: status.canonical_reason().unwrap_or("error").to_ascii_lowercase().replace(' ', "_"),
            message: String::from_utf8_lossy(body).trim().chars().take(300).collect(),
            request_id,
        },
    }
}

fn user_agent() -> String {
    format!("burrow-forward/{}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Forwarder, ForwardError> {
        Forwarder::new(ForwardConfig::new(url, None))
    }

    #[test]
    fn urls_are_parsed_with_defaults() {
        let f = parse("http://db-a1.localhost").unwrap();
        assert_eq!((f.host.as_str(), f.port, f.tls), ("db-a1.localhost", 80, false));
        assert_eq!(f.endpoint_path(), "/_burrow/forward");
        let f = parse("https://term.example.com:8443/terminal/t1/").unwrap();
        assert_eq!((f.port, f.tls, f.authority.as_str()), (8443, true, "term.example.com:8443"));
        assert_eq!(f.endpoint_path(), "/terminal/t1/_burrow/forward");
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for (url, reason) in [
            ("ftp://x.example", "http:// or https://"),
            ("db-a1.localhost:8080", "http:// or https://"),
            ("http://alice:secret@x.example", "\"http://***@x.example\": user info"),
            ("http://x.example/?a=b", "query"),
        ] {
            let error = parse(url).unwrap_err().to_string();
            assert!(error.contains(reason), "{url}: {error}");
        }
    }

    #[test]
    fn cleartext_http_off_loopback_needs_insecure() {
        let with = |url: &str, connect_to: Option<&str>, insecure: bool| {
            let mut config = ForwardConfig::new(url, Some(Secret::new("t")));
            config.connect_to = connect_to.map(|a| a.parse().unwrap());
            config.insecure = insecure;
            Forwarder::new(config)
        };
        for url in [
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
            "http://localhost",
            "http://db-ws1.localhost:8080/x",
            "https://db-ws1.example.com",
            "https://10.0.0.1",
        ] {
            assert!(with(url, None, false).is_ok(), "{url}");
        }
        for url in ["http://db-ws1.example.com", "http://10.0.0.1:8080", "http://[2001:db8::1]"] {
            let error = with(url, None, false).unwrap_err();
            assert!(matches!(error, ForwardError::Cleartext { .. }), "{url}: {error}");
            let text = error.to_string();
            assert!(text.contains(url) && text.contains("--insecure"), "{text}");
            assert!(with(url, None, true).is_ok(), "{url} with insecure");
        }
        // Where the bytes go decides: --connect-to overrides the URL's host.
        assert!(with("http://db-ws1.example.com", Some("127.0.0.1:8080"), false).is_ok());
        assert!(with("http://db-ws1.example.com", Some("[::1]:8080"), false).is_ok());
        let error = with("http://db-ws1.localhost", Some("10.0.0.1:80"), false).unwrap_err().to_string();
        assert!(error.contains("to 10.0.0.1:80") && error.contains("--insecure"), "{error}");
        assert!(with("http://db-ws1.localhost", Some("10.0.0.1:80"), true).is_ok());
        assert!(with("https://db-ws1.localhost", Some("10.0.0.1:80"), false).is_ok());
        assert!(!ForwardConfig::new("http://x", None).insecure, "off by default");
    }

    #[test]
    fn refusals_carry_the_hosts_words() {
        let body =
            br#"{"error":"no_route","status":404,"message":"no workload is served at x","request_id":"r1"}"#;
        let error = refusal(http::StatusCode::NOT_FOUND, None, body).to_string();
        assert_eq!(error, "the host refused: 404 no_route: no workload is served at x (request id r1)");
        let error = refusal(http::StatusCode::BAD_GATEWAY, Some("r2".into()), b"upstream down").to_string();
        assert_eq!(error, "the host refused: 502 bad_gateway: upstream down (request id r2)");
    }
}
