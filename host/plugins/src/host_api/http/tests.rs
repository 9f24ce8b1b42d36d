//! Tests of the outbound HTTP settings and, end to end against a local HTTP(S) server,
//! of the client through the `wasi:http` hooks.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::*;

#[test]
fn config_parses_and_validates() {
    let config: OutboundHttpConfig = toml::from_str("").unwrap();
    assert_eq!(config, OutboundHttpConfig::default());
    assert_eq!(config.timeout, DEFAULT_TIMEOUT);
    config.validate().unwrap();

    let config: OutboundHttpConfig = toml::from_str(
        r#"
        allow = ["gitlab.example.com", "*.example.org:8443", "[::1]:8080"]
        timeout = "2s 500ms"
        max_response_bytes = 4096
        ca_file = "/etc/ca.pem"
        "#,
    )
    .unwrap();
    assert_eq!(config.timeout, Duration::from_millis(2500));
    assert_eq!(config.max_response_bytes, 4096);
    config.validate().unwrap();

    assert!(toml::from_str::<OutboundHttpConfig>("allowed = []").is_err(), "unknown keys are refused");

    let err =
        |toml: &str| toml::from_str::<OutboundHttpConfig>(toml).unwrap().validate().unwrap_err().to_string();
    let e = err(r#"allow = ["a.example", "b.example", "http://c.example"]"#);
    assert!(e.starts_with("allow[2]: \"http://c.example\": "), "{e}");
    assert!(err(r#"timeout = "61s""#).starts_with("timeout: "));
    assert!(err(r#"timeout = "0s""#).starts_with("timeout: "));
    assert!(err("max_response_bytes = 0").starts_with("max_response_bytes: "));
    assert!(err("max_response_bytes = 67108865").starts_with("max_response_bytes: "));
}

#[test]
fn ca_file_must_hold_certificates() {
    let dir = std::env::temp_dir().join(format!("burrow-http-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let config = |path: PathBuf| OutboundHttpConfig { ca_file: Some(path), ..Default::default() };
    let e = OutboundPolicy::new(&config(empty)).unwrap_err();
    assert!(matches!(e, OutboundHttpConfigError::CaFileInvalid { .. }), "{e}");
    let e = OutboundPolicy::new(&config(dir.join("missing.pem"))).unwrap_err();
    assert!(matches!(e, OutboundHttpConfigError::CaFileRead { .. }), "{e}");
    assert!(e.to_string().starts_with("ca_file: cannot read "), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Method, path, `Host` header and body of a request the test server received.
type Logged = (String, String, Option<String>, Bytes);

/// What the local test server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: std::sync::Mutex<Vec<Logged>>,
}

/// An HTTP/1.1 server on 127.0.0.1:0: `/big` answers 2000 bytes (`/big-chunked`
/// without a length), `/stall` never answers, anything else echoes `hello <body>`.
async fn server(tls: Option<Arc<rustls::ServerConfig>>) -> (u16, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let state = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            state.connections.fetch_add(1, Ordering::SeqCst);
            let state = state.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let host =
                            parts.headers.get(http::header::HOST).map(|h| h.to_str().unwrap().to_owned());
                        let path = parts.uri.to_string();
                        state.requests.lock().unwrap().push((
                            parts.method.to_string(),
                            path.clone(),
                            host,
                            body.clone(),
                        ));
                        let response = match path.as_str() {
                            "/big" => http::Response::new(Full::new(Bytes::from(vec![b'x'; 2000])).boxed()),
                            "/big-chunked" => {
                                let chunks = (0..20).map(|_| {
                                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![
                                        b'x';
                                        100
                                    ])))
                                });
                                http::Response::new(
                                    http_body_util::StreamBody::new(futures_util::stream::iter(chunks))
                                        .boxed(),
                                )
                            }
                            "/stall" => {
                                std::future::pending::<()>().await;
                                unreachable!()
                            }
                            _ => {
                                let mut text = b"hello ".to_vec();
                                text.extend_from_slice(&body);
                                http::Response::new(Full::new(Bytes::from(text)).boxed())
                            }
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let builder = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    Some(config) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else {
                            return;
                        };
                        builder.serve_connection(TokioIo::new(stream), service).await
                    }
                    None => builder.serve_connection(TokioIo::new(tcp), service).await,
                };
            });
        }
    });
    (port, seen)
}

fn hooks_for(config: &OutboundHttpConfig) -> OutboundHooks {
    OutboundHooks::new(Arc::new(OutboundPolicy::new(config).unwrap()), Arc::from("test-plugin"))
}

fn hooks(allow: &[String]) -> OutboundHooks {
    let config = OutboundHttpConfig { allow: allow.to_vec(), ..Default::default() };
    hooks_for(&config)
}

fn get(url: &str) -> http::Request<WasiBody> {
    http::Request::get(url).body(Empty::new().map_err(|never| match never {}).boxed_unsync()).unwrap()
}

async fn send(
    hooks: &mut OutboundHooks,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<(u16, Result<Bytes, HttpError>), HttpError> {
    let (response, io) = Pin::from(hooks.send_request(request, options, Box::new(async { Ok(()) }))).await?;
    // Run the connection as wasmtime-wasi-http does: beside the body.
    let io = tokio::spawn(Pin::from(io));
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map(|b| b.to_bytes());
    if body.is_ok() {
        io.await.unwrap().unwrap();
    }
    Ok((status, body))
}

#[tokio::test]
async fn reaches_an_allow_listed_local_server() {
    let (port, seen) = server(None).await;
    let mut hooks = hooks(&[format!("127.0.0.1:{port}")]);
    let (status, body) =
        send(&mut hooks, get(&format!("http://127.0.0.1:{port}/x?y=1")), None).await.unwrap();
    assert_eq!((status, body.unwrap()), (200, Bytes::from("hello ")));

    let post = http::Request::post(format!("http://127.0.0.1:{port}/echo"))
        .body(Full::new(Bytes::from("ping")).map_err(|never| match never {}).boxed_unsync())
        .unwrap();
    let (status, body) = send(&mut hooks, post, None).await.unwrap();
    assert_eq!((status, body.unwrap()), (200, Bytes::from("hello ping")));

    let requests = seen.requests.lock().unwrap().clone();
    let host = Some(format!("127.0.0.1:{port}"));
    assert_eq!(
        requests,
        vec![
            ("GET".into(), "/x?y=1".into(), host.clone(), Bytes::new()),
            ("POST".into(), "/echo".into(), host, Bytes::from("ping")),
        ],
        "origin-form path and a Host header on the wire"
    );
}

#[tokio::test]
async fn refuses_hosts_not_on_the_list() {
    let (port, seen) = server(None).await;
    let url = format!("http://127.0.0.1:{port}/");
    for allow in
        [vec![], vec![format!("127.0.0.1:{}", port.wrapping_add(1).max(1))], vec!["127.0.0.1".into()]]
    {
        let result = send(&mut hooks(&allow), get(&url), None).await;
        assert!(matches!(result, Err(HttpError::HttpRequestDenied)), "{allow:?}: {result:?}");
    }
    // Not http(s).
    let mut allowed = hooks(&[format!("127.0.0.1:{port}")]);
    let result = send(&mut allowed, get(&format!("ftp://127.0.0.1:{port}/")), None).await;
    assert!(matches!(result, Err(HttpError::HttpRequestDenied)), "{result:?}");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 0, "a refused request never connects");
}

#[tokio::test]
async fn refuses_names_that_resolve_to_private_addresses() {
    let (port, seen) = server(None).await;
    // `localhost` is on the list, but it resolves to loopback, which is not.
    let mut hooks = hooks(&[format!("localhost:{port}")]);
    let result = send(&mut hooks, get(&format!("http://localhost:{port}/")), None).await;
    assert!(matches!(result, Err(HttpError::DestinationIpProhibited)), "{result:?}");
    // Listing the loopback address too is what allows it.
    let mut both =
        self::hooks(&[format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}")]);
    let (status, _) = send(&mut both, get(&format!("http://localhost:{port}/")), None).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1, "only the allowed request connected");
}

#[tokio::test]
async fn response_size_is_limited() {
    let (port, _) = server(None).await;
    let config = OutboundHttpConfig {
        allow: vec![format!("127.0.0.1:{port}")],
        max_response_bytes: 1000,
        ..Default::default()
    };
    let mut hooks = hooks_for(&config);
    // Declared too long: refused at the head.
    let result = send(&mut hooks, get(&format!("http://127.0.0.1:{port}/big")), None).await;
    assert!(matches!(result, Err(HttpError::HttpResponseBodySize(Some(2000)))), "{result:?}");
    // A HEAD response declares the length without sending the body.
    let head = http::Request::head(format!("http://127.0.0.1:{port}/big"))
        .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
        .unwrap();
    let (status, body) = send(&mut hooks, head, None).await.unwrap();
    assert_eq!((status, body.unwrap()), (200, Bytes::new()));
    // Streamed too long: the read fails past the limit.
    let (status, body) =
        send(&mut hooks, get(&format!("http://127.0.0.1:{port}/big-chunked")), None).await.unwrap();
    assert_eq!(status, 200);
    assert!(matches!(body, Err(HttpError::HttpResponseBodySize(Some(n))) if n > 1000), "{body:?}");
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let (port, _) = server(None).await;
    let url = format!("http://127.0.0.1:{port}/stall");
    // The guest's own deadline...
    let mut hooks = hooks(&[format!("127.0.0.1:{port}")]);
    let options =
        RequestOptions { first_byte_timeout: Some(Duration::from_millis(50)), ..Default::default() };
    let result = send(&mut hooks, get(&url), Some(options)).await;
    assert!(matches!(result, Err(HttpError::ConnectionReadTimeout)), "{result:?}");
    // ...or the plugin's cap when the guest asks for more (or nothing).
    let config = OutboundHttpConfig {
        allow: vec![format!("127.0.0.1:{port}")],
        timeout: Duration::from_millis(100),
        ..Default::default()
    };
    let mut capped = hooks_for(&config);
    let options =
        RequestOptions { first_byte_timeout: Some(Duration::from_secs(3600)), ..Default::default() };
    let result = send(&mut capped, get(&url), Some(options)).await;
    assert!(matches!(result, Err(HttpError::ConnectionReadTimeout)), "{result:?}");
}

#[tokio::test]
async fn connection_refused_is_reported() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut hooks = hooks(&[format!("127.0.0.1:{port}")]);
    let result = send(&mut hooks, get(&format!("http://127.0.0.1:{port}/")), None).await;
    assert!(matches!(result, Err(HttpError::ConnectionRefused)), "{result:?}");
}

/// A CA file and a server config for a certificate valid for 127.0.0.1.
fn pki(dir: &std::path::Path) -> (PathBuf, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Burrow test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca_file, Arc::new(config))
}

#[tokio::test]
async fn https_trusts_the_extra_ca() {
    let dir = std::env::temp_dir().join(format!("burrow-http-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_file, server_config) = pki(&dir);
    let (port, _) = server(Some(server_config)).await;
    let allow = vec![format!("127.0.0.1:{port}")];
    let url = format!("https://127.0.0.1:{port}/");

    let config = OutboundHttpConfig { allow: allow.clone(), ca_file: Some(ca_file), ..Default::default() };
    let mut trusting = hooks_for(&config);
    let (status, body) = send(&mut trusting, get(&url), None).await.unwrap();
    assert_eq!((status, body.unwrap()), (200, Bytes::from("hello ")));

    // Without the CA the certificate is refused.
    let result = send(&mut hooks(&allow), get(&url), None).await;
    assert!(matches!(result, Err(HttpError::TlsCertificateError)), "{result:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
