//! Real HTTP/1.1, HTTP/2, WebSocket and raw-upgrade clients aimed at the ingress.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Request body type used by the clients.
pub type ReqBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// An empty request body.
pub fn empty() -> ReqBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A complete request body.
pub fn full(data: impl Into<Bytes>) -> ReqBody {
    Full::new(data.into()).map_err(|never| match never {}).boxed()
}

/// Which protocol a client speaks.
#[derive(Clone)]
pub struct Mode {
    /// HTTP/2 (prior knowledge on cleartext, ALPN on TLS) instead of HTTP/1.1.
    pub h2: bool,
    /// TLS with this config (ALPN set by [`connect`]).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Mode {
    /// Cleartext HTTP/1.1.
    pub fn h1() -> Self {
        Mode { h2: false, tls: None }
    }
    /// Cleartext HTTP/2 (prior knowledge).
    pub fn h2() -> Self {
        Mode { h2: true, tls: None }
    }
}

/// One client connection.
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

async fn dial(addr: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>, alpn: &[u8]) -> Box<dyn Io> {
    let tcp = TcpStream::connect(addr).await.expect("connect to ingress");
    tcp.set_nodelay(true).unwrap();
    match tls {
        None => Box::new(tcp),
        Some(config) => {
            let mut config = (*config).clone();
            config.alpn_protocols = vec![alpn.to_vec()];
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            Box::new(connector.connect(name, tcp).await.expect("TLS handshake with ingress"))
        }
    }
}

/// Opens a connection to `addr`.
pub async fn connect(addr: SocketAddr, mode: &Mode) -> Client {
    if mode.h2 {
        let io = dial(addr, mode.tls.clone(), b"h2").await;
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        Client::H2(sender)
    } else {
        let io = dial(addr, mode.tls.clone(), b"http/1.1").await;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await.expect("h1 handshake");
        tokio::spawn(conn.with_upgrades());
        Client::H1(sender)
    }
}

impl Client {
    /// Sends a request for `http(s)://host/path`; `Host` (h1) or `:authority` (h2) is `host`.
    pub async fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> Response<Incoming> {
        let mut builder = Request::builder().method(method);
        builder = match self {
            Client::H1(_) => builder.uri(path).header(http::header::HOST, host),
            Client::H2(_) => builder.uri(format!("http://{host}{path}")),
        };
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder.body(body).unwrap();
        match self {
            Client::H1(s) => {
                s.ready().await.expect("h1 connection ready");
                s.send_request(req).await.expect("h1 response")
            }
            Client::H2(s) => {
                s.ready().await.expect("h2 connection ready");
                s.send_request(req).await.expect("h2 response")
            }
        }
    }

    /// GET, collecting the whole response.
    pub async fn get(&mut self, host: &str, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        collect(self.request("GET", host, path, &[], empty()).await).await
    }
}

/// Reads a whole response.
pub async fn collect(resp: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    (parts.status, parts.headers, body)
}

/// One-shot GET over a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    connect(addr, &Mode::h1()).await.get(host, path).await
}

/// [`get`] for an answer that must not wait (for an agent, say): fails the test if it
/// takes `limit`.
pub async fn get_within(
    limit: std::time::Duration,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> (StatusCode, HeaderMap, Bytes) {
    tokio::time::timeout(limit, get(addr, host, path))
        .await
        .unwrap_or_else(|_| panic!("GET {host}{path} was not answered within {limit:?}"))
}

/// Opens a WebSocket through the ingress.
pub async fn websocket(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!("ws://{host}{path}").into_client_request().unwrap();
    let (ws, response) = tokio_tungstenite::client_async(request, tcp).await.expect("WebSocket handshake");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// Sends a raw `Upgrade: burrow-raw` request and returns the socket after the `101`
/// plus the response head.
pub async fn raw_upgrade(addr: SocketAddr, host: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET /raw HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: burrow-raw\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tcp.read(&mut byte).await.unwrap();
        assert!(n == 1, "connection closed during the upgrade response: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    (tcp, String::from_utf8(head).unwrap())
}
