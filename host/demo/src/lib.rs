//! The quickstart: a host, an agent and a small demo workload in one process.
//!
//! The agent reaches the host over a real loopback socket with the same code a separate
//! `burrow-agent` process runs; only the processes are merged, for a one-command start.
//!
//! # Layout
//! One file: [`run`] binds the ports, starts the workload and the agent, and hands the
//! host's share to a [`DemoHost`] callback (the binary passes `burrow_host::run`, so this
//! crate depends on the agent but on no host crate, and no host crate on the agent);
//! [`demo_config_toml`] is the host's config; [`serve_workload`] is the demo workload
//! (page, WebSocket echo, server-sent events, health).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// Quickstart options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// User-facing port on 127.0.0.1.
    pub port: u16,
    /// Agent port on 127.0.0.1 (0 = any).
    pub agent_port: u16,
    /// `grpc` or `ws`.
    pub transport: String,
}

/// The demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A port is taken.
    #[error("cannot listen on {addr}: {source} (pass --port to use another port)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Unknown transport.
    #[error("--transport must be grpc or ws, not {0:?}")]
    Transport(String),
    /// The host failed.
    #[error(transparent)]
    Host(Box<dyn std::error::Error + Send + Sync>),
    /// The agent's configuration was refused.
    #[error("demo agent: {0}")]
    Agent(String),
}

/// The config the demo host runs with, as `host.toml` text: one agent `demo` with `token`,
/// open access, and `*.localhost` host names.
pub fn demo_config_toml(token: &str) -> String {
    let token_sha256 = hex::encode(Sha256::digest(token.as_bytes()));
    format!(
        r#"
[agents]
listen = "127.0.0.1:0"
[ingress]
listen = "127.0.0.1:0"
[shutdown]
grace = "5s"
[plugins.authorizer]
source = "builtin:authorizer-static"
config = {{ agents = [{{ id = "demo", token_sha256 = "{token_sha256}" }}], default_access = "open" }}
[[plugins.workload]]
source = "builtin:workload-workspace"
config = {{ root_domains = ["localhost"] }}
"#
    )
}

/// What the demo hands the host: its config and listeners, and a token cancelled when the
/// host should stop.
pub struct DemoHost {
    /// `host.toml` text ([`demo_config_toml`]).
    pub config_toml: String,
    /// The agent port's listener.
    pub agents: TcpListener,
    /// The users' listener.
    pub ingress: TcpListener,
    /// Cancelled when the demo stops.
    pub stop: CancellationToken,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, DemoError> {
    TcpListener::bind(addr).await.map_err(|source| DemoError::Bind { addr, source })
}

/// Runs the quickstart until `shutdown` completes. `start_host` runs the host on what it is
/// given until [`DemoHost::stop`] is cancelled.
pub async fn run<H, F, E>(
    options: DemoOptions,
    shutdown: impl Future<Output = ()> + Send,
    start_host: H,
) -> Result<(), DemoError>
where
    H: FnOnce(DemoHost) -> F,
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let scheme = match options.transport.as_str() {
        "grpc" | "ws" => options.transport.clone(),
        other => return Err(DemoError::Transport(other.to_owned())),
    };
    let ingress = bind(([127, 0, 0, 1], options.port).into()).await?;
    let agents = bind(([127, 0, 0, 1], options.agent_port).into()).await?;
    let workload = bind(([127, 0, 0, 1], 0).into()).await?;
    let agent_addr =
        agents.local_addr().map_err(|source| DemoError::Bind { addr: ([127, 0, 0, 1], 0).into(), source })?;
    let workload_addr = workload
        .local_addr()
        .map_err(|source| DemoError::Bind { addr: ([127, 0, 0, 1], 0).into(), source })?;
    let ingress_port = ingress.local_addr().map(|a| a.port()).unwrap_or(options.port);

    let token = hex::encode(rand::random::<[u8; 24]>());
    let stop = CancellationToken::new();

    let workload_task = tokio::spawn(serve_workload(workload, stop.clone()));
    let mut host = tokio::spawn(start_host(DemoHost {
        config_toml: demo_config_toml(&token),
        agents,
        ingress,
        stop: stop.clone(),
    }));

    let mut agent_config = burrow_agent::AgentConfig::new(&format!("{scheme}://{agent_addr}"), token)
        .map_err(|e| DemoError::Agent(e.to_string()))?;
    agent_config.services = vec![burrow_agent::ServiceSpec::parse(&format!("web={workload_addr}"))
        .map_err(|e| DemoError::Agent(e.to_string()))?];
    agent_config.replica_id = "demo-agent".into();
    let agent = burrow_agent::spawn(agent_config);

    println!();
    println!("  Burrow demo is running.");
    println!("  Open  http://web-demo.localhost:{ingress_port}/");
    println!("  (host ingress 127.0.0.1:{ingress_port}, agent port {agent_addr} over {scheme}://, workload {workload_addr})");
    println!("  Try   curl -N http://web-demo.localhost:{ingress_port}/events");
    println!("  Press ctrl-c to stop.");
    println!();

    let result = tokio::select! {
        _ = shutdown => Ok(()),
        r = &mut host => Err(r),
    };
    stop.cancel();
    agent.shutdown().await;
    let _ = workload_task.await;
    match result {
        Ok(()) => match host.await {
            Ok(r) => r.map_err(|e| DemoError::Host(e.into())),
            Err(e) => Err(DemoError::Host(format!("internal task failed: {e}").into())),
        },
        Err(Ok(r)) => r.map_err(|e| DemoError::Host(e.into())),
        Err(Err(e)) => Err(DemoError::Host(format!("internal task failed: {e}").into())),
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()).boxed())
        .expect("static response parts are valid")
}

/// Serves the demo workload: `/` (page), `/ws` (WebSocket echo), `/events` (SSE clock),
/// `/health`.
pub async fn serve_workload(listener: TcpListener, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| workload_request(req, stop.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn workload_request(
    mut req: Request<Incoming>,
    stop: CancellationToken,
) -> Result<Response<Body>, Infallible> {
    Ok(match req.uri().path() {
        "/" => {
            let forwarded_for =
                req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or("-");
            let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            let page = PAGE
                .replace("{forwarded_for}", &html_escape(forwarded_for))
                .replace("{request_id}", &html_escape(request_id));
            full(StatusCode::OK, "text/html; charset=utf-8", page)
        }
        "/health" => full(StatusCode::OK, "text/plain", "ok\n"),
        "/events" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                    if tx.send(Ok(Frame::data(Bytes::from(format!("data: {now}\n\n"))))).await.is_err() {
                        return; // the browser went away
                    }
                }
            });
            Response::builder()
                .header(http::header::CONTENT_TYPE, "text/event-stream")
                .header(http::header::CACHE_CONTROL, "no-cache")
                .body(BodyExt::boxed(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx))))
                .expect("static response parts are valid")
        }
        "/ws" => match websocket_echo(&mut req) {
            Some(switching) => switching.map(|empty| empty.map_err(|never| match never {}).boxed()),
            None => full(StatusCode::BAD_REQUEST, "text/plain", "expected a WebSocket upgrade\n"),
        },
        _ => full(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    })
}

/// Answers a WebSocket upgrade with `101` and echoes every text and binary message until
/// the client closes. `None` when the request is not a WebSocket upgrade.
pub fn websocket_echo<B>(req: &mut Request<B>) -> Option<Response<http_body_util::Empty<Bytes>>> {
    let key = req.headers().get(http::header::SEC_WEBSOCKET_KEY)?.clone();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::SEC_WEBSOCKET_ACCEPT, derive_accept_key(key.as_bytes()))
        .body(http_body_util::Empty::new())
        .expect("static response parts are valid");
    Some(response)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Burrow demo workload</title>
<style>body{font:16px system-ui,sans-serif;max-width:46em;margin:2em auto;padding:0 1em}code{background:#eee;padding:0 .3em}#log,#clock{font-family:monospace}</style>
</head><body>
<h1>Hello through the burrow</h1>
<p>This page is served by a workload that accepts no inbound connections: the Burrow agent beside it dialed out to the host, and your request came back through one of its reverse tunnels.</p>
<p>X-Forwarded-For: <code>{forwarded_for}</code>, request id: <code>{request_id}</code></p>
<h2>Server-Sent Events clock</h2><p id="clock">waiting…</p>
<h2>WebSocket echo</h2>
<form id="f"><input id="msg" value="hello, workload"> <button>send</button></form><pre id="log"></pre>
<script>
const es = new EventSource('/events');
es.onmessage = e => document.getElementById('clock').textContent = e.data;
const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
const log = t => document.getElementById('log').textContent += t + '\n';
ws.onopen = () => log('connected');
ws.onmessage = e => log('echo: ' + e.data);
ws.onclose = () => log('closed');
document.getElementById('f').onsubmit = e => { e.preventDefault(); ws.send(document.getElementById('msg').value); };
</script>
</body></html>
"#;
