//! Reaching the host: TCP, optional TLS, optional WebSocket, then one HTTP/2 connection
//! that every RPC of a session shares.
//!
//! All four schemes produce a byte stream that tonic drives through one custom
//! connector. The connector hands out the stream exactly once: if the connection drops,
//! tonic's channel cannot silently dial a second one behind the session's back (its
//! `Tunnel` RPCs would carry a session id the new connection never announced). Instead
//! the control stream fails and the agent reconnects deliberately, with backoff.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use burrow_proto::ws::{ws_config, WsIo};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::{AgentConfig, HostUrl};
use crate::AgentError;

/// Receive window per stream: one tunnel can have this much in flight, enough for
/// high single-stream throughput on long links without buffering much per tunnel.
const STREAM_WINDOW: u32 = 1024 * 1024;
/// Receive window for the whole connection, shared by all tunnels.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// A byte stream to the host, whatever the scheme.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
type BoxIo = Box<dyn Io>;

/// Everything needed to open a connection to one host URL, prepared once at start-up.
pub(crate) struct Transport {
    url: HostUrl,
    tls: Option<tokio_rustls::TlsConnector>,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
}

/// The trusted roots: built-in web PKI plus `ca_file`.
pub(crate) fn load_roots(ca_file: Option<&std::path::Path>) -> Result<rustls::RootCertStore, AgentError> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        let ca_err = |reason: String| AgentError::CaFile { path: path.to_path_buf(), reason };
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))? {
            let cert = cert.map_err(|e| ca_err(e.to_string()))?;
            roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(ca_err("no PEM certificates found".to_owned()));
        }
    }
    Ok(roots)
}

pub(crate) fn tls_connector(
    roots: &rustls::RootCertStore,
    alpn: &[u8],
) -> Result<tokio_rustls::TlsConnector, AgentError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Tls(e.to_string()))?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    // ALPN is how the host's single TLS port tells gRPC from WebSocket.
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(tls)))
}

impl Transport {
    /// One transport per `config.hosts` entry, in order. The CA file is read once, and
    /// only if some URL uses TLS.
    pub(crate) fn for_hosts(config: &AgentConfig) -> Result<Vec<Self>, AgentError> {
        let roots = if config.hosts.iter().any(|h| h.scheme().is_tls()) {
            Some(load_roots(config.ca_file.as_deref())?)
        } else {
            None
        };
        let (mut h2, mut http1) = (None, None);
        let mut out = Vec::with_capacity(config.hosts.len());
        for url in &config.hosts {
            let tls = match &roots {
                Some(roots) if url.scheme().is_tls() => {
                    let (cached, alpn): (&mut Option<tokio_rustls::TlsConnector>, &[u8]) =
                        if url.scheme().is_websocket() {
                            (&mut http1, b"http/1.1")
                        } else {
                            (&mut h2, b"h2")
                        };
                    if cached.is_none() {
                        *cached = Some(tls_connector(roots, alpn)?);
                    }
                    cached.clone()
                }
                _ => None,
            };
            out.push(Self {
                url: url.clone(),
                tls,
                keepalive_interval: config.keepalive_interval,
                keepalive_timeout: config.keepalive_timeout,
            });
        }
        Ok(out)
    }

    /// The URL this transport dials.
    pub(crate) fn url(&self) -> &HostUrl {
        &self.url
    }

    /// Open the byte stream: TCP, then TLS and/or the WebSocket upgrade.
    async fn dial(&self) -> Result<BoxIo, String> {
        let host = self.url.host();
        let tcp = TcpStream::connect((host, self.url.port()))
            .await
            .map_err(|e| format!("could not connect to {}: {e}", self.url.authority()))?;
        tcp.set_nodelay(true).map_err(|e| format!("setting TCP_NODELAY: {e}"))?;
        let io: BoxIo = match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {} failed: {e}", self.url.authority()))?;
                let want: &[u8] = if self.url.scheme().is_websocket() { b"http/1.1" } else { b"h2" };
                match tls.get_ref().1.alpn_protocol() {
                    Some(got) if got != want => {
                        return Err(format!(
                            "host negotiated ALPN {:?}, expected {:?}",
                            String::from_utf8_lossy(got),
                            String::from_utf8_lossy(want)
                        ))
                    }
                    _ => Box::new(tls),
                }
            }
        };
        if !self.url.scheme().is_websocket() {
            return Ok(io);
        }
        let ws_scheme = if self.url.scheme().is_tls() { "wss" } else { "ws" };
        let mut request = format!("{ws_scheme}://{}{}", self.url.authority(), burrow_proto::WS_PATH)
            .into_client_request()
            .map_err(|e| format!("building the WebSocket request: {e}"))?;
        let headers = request.headers_mut();
        headers.insert("sec-websocket-protocol", HeaderValue::from_static(burrow_proto::WS_SUBPROTOCOL));
        if let Ok(ua) = HeaderValue::try_from(user_agent()) {
            headers.insert("user-agent", ua);
        }
        let (ws, _response) = tokio_tungstenite::client_async_with_config(request, io, Some(ws_config()))
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => {
                    let body = resp
                        .body()
                        .as_deref()
                        .map(String::from_utf8_lossy)
                        .map(|b| b.trim().chars().take(200).collect::<String>())
                        .unwrap_or_default();
                    format!("host refused the WebSocket upgrade with HTTP {}: {body}", resp.status())
                }
                other => format!("WebSocket upgrade failed: {other}"),
            })?;
        Ok(Box::new(WsIo::new(ws)))
    }

    /// Dial the host and start HTTP/2 on the connection. The returned channel is bound
    /// to this one connection for its whole life.
    pub(crate) async fn connect(&self) -> Result<Channel, String> {
        let io = self.dial().await?;
        let authority = self.url.authority();
        // The connector below bypasses tonic's own TLS, so the endpoint URI stays
        // `http`; the `:scheme` the host sees follows the real transport.
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| format!("invalid host address {authority:?}: {e}"))?;
        let origin_scheme = if self.url.scheme().is_tls() { "https" } else { "http" };
        let origin: Uri = format!("{origin_scheme}://{authority}")
            .parse()
            .map_err(|e| format!("invalid host address {authority:?}: {e}"))?;
        let endpoint = endpoint
            .origin(origin)
            .user_agent(user_agent())
            .map_err(|e| format!("invalid user agent: {e}"))?
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        let mut io = Some(io);
        let connector = tower::service_fn(move |_: Uri| {
            let io = io.take();
            async move {
                io.map(TokioIo::new).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        "the connection to the host is gone; the agent reconnects with a new session",
                    )
                })
            }
        });
        endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| format!("HTTP/2 setup failed: {}", chain(&e)))
    }
}

fn user_agent() -> String {
    format!("burrow-agent/{}", env!("CARGO_PKG_VERSION"))
}

/// An error and its sources, `a: b: c`, skipping repeats (tonic nests identical texts).
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_ca_file_is_a_clear_error() {
        let mut config =
            AgentConfig::new("grpc://localhost:1", "t").unwrap().with_host("grpcs://localhost:1").unwrap();
        config.ca_file = Some("/nonexistent/burrow-ca.pem".into());
        let err = Transport::for_hosts(&config).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/burrow-ca.pem"), "{err}");

        let dir = std::env::temp_dir().join(format!("burrow-agent-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        config.ca_file = Some(empty);
        let err = Transport::for_hosts(&config).err().unwrap().to_string();
        assert!(err.contains("no PEM certificates"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cleartext_schemes_need_no_tls() {
        let mut config =
            AgentConfig::new("grpc://127.0.0.1:1", "t").unwrap().with_host("ws://127.0.0.1:1").unwrap();
        // Ignored without TLS.
        config.ca_file = Some("/nonexistent".into());
        let transports = Transport::for_hosts(&config).unwrap();
        assert_eq!(transports.len(), 2);
        assert!(transports.iter().all(|t| t.tls.is_none()));
    }

    #[test]
    fn each_url_gets_its_own_scheme_and_alpn() {
        let config = AgentConfig::new("grpcs://a:1", "t")
            .unwrap()
            .with_host("grpc://b:2")
            .unwrap()
            .with_host("wss://c:3")
            .unwrap();
        let transports = Transport::for_hosts(&config).unwrap();
        let urls: Vec<String> = transports.iter().map(|t| t.url().to_string()).collect();
        assert_eq!(urls, ["grpcs://a:1", "grpc://b:2", "wss://c:3"]);
        let tls: Vec<bool> = transports.iter().map(|t| t.tls.is_some()).collect();
        assert_eq!(tls, [true, false, true]);
    }

    #[test]
    fn error_chain_joins_sources_and_skips_repeats() {
        #[derive(Debug)]
        struct Wrap(&'static str, std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl StdError for Wrap {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.1)
            }
        }
        assert_eq!(
            chain(&Wrap("transport error", std::io::Error::other("refused"))),
            "transport error: refused"
        );
        assert_eq!(chain(&Wrap("refused", std::io::Error::other("refused"))), "refused");
    }
}
