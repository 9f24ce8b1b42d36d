//! The agent against a small real `AgentTunnel` server (real gRPC over loopback TCP),
//! over all four transports.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use burrow_agent::{AgentConfig, AgentHandle, AgentStatus, ConnState};
use burrow_proto::pb::agent_tunnel_server::{AgentTunnel, AgentTunnelServer};
use burrow_proto::pb::{self, agent_control, agent_frame, host_control, RefusalCode};
use burrow_proto::tunnel::frames;
use burrow_proto::ws::{ws_config, WsIo};
use burrow_proto::{MAX_DATA_FRAME, MAX_MESSAGE_SIZE, SESSION_METADATA, WS_PATH, WS_SUBPROTOCOL};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

/// Hang guard for every wait; generous because CI machines are slow, never a speed check.
const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "agent-token-123";
const SESSION: &str = "session-abc";

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    timeout(WAIT, fut).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// ---------------------------------------------------------------------------------
// A minimal host.

struct ParkedTunnel {
    metadata: MetadataMap,
    to_agent: mpsc::Sender<Result<pb::HostFrame, Status>>,
    from_agent: Streaming<pb::AgentFrame>,
}

#[derive(Clone)]
struct TestHost {
    reject_auth: bool,
    hellos: mpsc::UnboundedSender<(pb::Hello, MetadataMap)>,
    controls: mpsc::UnboundedSender<mpsc::Sender<Result<pb::HostControl, Status>>>,
    tunnels: mpsc::UnboundedSender<ParkedTunnel>,
}

#[tonic::async_trait]
impl AgentTunnel for TestHost {
    type ControlStream = ReceiverStream<Result<pb::HostControl, Status>>;
    type TunnelStream = ReceiverStream<Result<pb::HostFrame, Status>>;

    async fn control(
        &self,
        request: Request<Streaming<pb::AgentControl>>,
    ) -> Result<Response<Self::ControlStream>, Status> {
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::AgentControl { msg: Some(agent_control::Msg::Hello(hello)) }) => hello,
            _ => return Err(Status::invalid_argument("expected Hello")),
        };
        let _ = self.hellos.send((hello, metadata));
        if self.reject_auth {
            return Err(Status::unauthenticated("unknown agent token"));
        }
        let (tx, rx) = mpsc::channel(4);
        let welcome = pb::Welcome {
            protocol_version: burrow_proto::PROTOCOL_VERSION,
            protocol_minor: burrow_proto::PROTOCOL_MINOR,
            host_replica_id: "host-1".into(),
            agent_id: "agent-x".into(),
            session_id: SESSION.into(),
        };
        tx.send(Ok(pb::HostControl { msg: Some(host_control::Msg::Welcome(welcome)) })).await.unwrap();
        let _ = self.controls.send(tx.clone());
        tokio::spawn(async move {
            while let Ok(Some(_)) = inbound.message().await {}
            drop(tx);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn tunnel(
        &self,
        request: Request<Streaming<pb::AgentFrame>>,
    ) -> Result<Response<Self::TunnelStream>, Status> {
        if request.metadata().get(SESSION_METADATA).and_then(|v| v.to_str().ok()) != Some(SESSION) {
            return Err(Status::unauthenticated("unknown session"));
        }
        let (to_agent, rx) = mpsc::channel(4);
        let metadata = request.metadata().clone();
        let _ = self.tunnels.send(ParkedTunnel { metadata, to_agent, from_agent: request.into_inner() });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Any accepted connection, whatever layers it went through.
struct TestIo(Box<dyn Io>);
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

impl AsyncRead for TestIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}
impl AsyncWrite for TestIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
impl tonic::transport::server::Connected for TestIo {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Grpc,
    Grpcs,
    Ws,
    Wss,
}

struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    ca_file: std::path::PathBuf,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA written to a PEM file, and a server certificate for 127.0.0.1 signed by it.
fn tls_setup(alpn: &[u8]) -> Tls {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();

    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "burrow-agent-it-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    server.alpn_protocols = vec![alpn.to_vec()];
    Tls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)), ca_file, _dir: TempDir(dir) }
}

// tungstenite's handshake callback type fixes the large `Err` variant.
#[allow(clippy::result_large_err)]
async fn ws_accept<S: AsyncRead + AsyncWrite + Unpin>(io: S) -> WsIo<S> {
    let check = |req: &WsRequest, mut resp: WsResponse| -> Result<WsResponse, ErrorResponse> {
        let offered = req.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(req.uri().path(), WS_PATH);
        assert!(offered.split(',').any(|p| p.trim() == WS_SUBPROTOCOL), "subprotocol {offered:?}");
        resp.headers_mut().insert("sec-websocket-protocol", WS_SUBPROTOCOL.parse().unwrap());
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(io, check, Some(ws_config())).await.unwrap();
    WsIo::new(ws)
}

struct Host {
    url: String,
    ca_file: Option<std::path::PathBuf>,
    hellos: mpsc::UnboundedReceiver<(pb::Hello, MetadataMap)>,
    controls: mpsc::UnboundedReceiver<mpsc::Sender<Result<pb::HostControl, Status>>>,
    tunnels: mpsc::UnboundedReceiver<ParkedTunnel>,
    _tls: Option<Tls>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Host {
    async fn start(transport: Transport, reject_auth: bool) -> Host {
        let (hellos_tx, hellos) = mpsc::unbounded_channel();
        let (controls_tx, controls) = mpsc::unbounded_channel();
        let (tunnels_tx, tunnels) = mpsc::unbounded_channel();
        let service = TestHost { reject_auth, hellos: hellos_tx, controls: controls_tx, tunnels: tunnels_tx };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = match transport {
            Transport::Grpcs => Some(tls_setup(b"h2")),
            Transport::Wss => Some(tls_setup(b"http/1.1")),
            _ => None,
        };
        let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
        let (conn_tx, conn_rx) = mpsc::channel::<Result<TestIo, std::io::Error>>(16);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                let conn_tx = conn_tx.clone();
                tokio::spawn(async move {
                    let io = match (transport, acceptor) {
                        (Transport::Grpc, _) => TestIo(Box::new(tcp)),
                        (Transport::Ws, _) => TestIo(Box::new(ws_accept(tcp).await)),
                        (Transport::Grpcs, Some(a)) => TestIo(Box::new(a.accept(tcp).await.unwrap())),
                        (Transport::Wss, Some(a)) => {
                            TestIo(Box::new(ws_accept(a.accept(tcp).await.unwrap()).await))
                        }
                        _ => unreachable!(),
                    };
                    let _ = conn_tx.send(Ok(io)).await;
                });
            }
        });
        let server = tokio::spawn(async move {
            let svc = AgentTunnelServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE);
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(ReceiverStream::new(conn_rx))
                .await
                .unwrap();
        });
        let scheme = match transport {
            Transport::Grpc => "grpc",
            Transport::Grpcs => "grpcs",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        };
        Host {
            url: format!("{scheme}://{addr}"),
            ca_file: tls.as_ref().map(|t| t.ca_file.clone()),
            hellos,
            controls,
            tunnels,
            _tls: tls,
            server,
        }
    }

    async fn next_tunnel(&mut self) -> ParkedTunnel {
        within("a parked tunnel", self.tunnels.recv()).await.expect("host stopped")
    }
}

/// A TCP echo service that honours half-close: after EOF it shuts down its write side.
async fn echo_service() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut rd, mut wr) = socket.into_split();
                tokio::io::copy(&mut rd, &mut wr).await.unwrap();
                wr.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// A port with nothing listening.
async fn closed_port() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn config(host: &Host, echo: std::net::SocketAddr, min_idle: usize) -> AgentConfig {
    let mut config = AgentConfig::new(&host.url, TOKEN).unwrap();
    config.services.push(format!("echo={echo}").parse().unwrap());
    config.replica_id = "replica-7".into();
    config.min_idle = min_idle;
    config.ca_file = host.ca_file.clone();
    config
}

async fn wait_status(agent: &AgentHandle, what: &str, f: impl FnMut(&AgentStatus) -> bool) -> AgentStatus {
    let mut status = agent.status();
    let got = within(what, status.wait_for(f)).await.expect("agent stopped").clone();
    got
}

async fn next_frame(from_agent: &mut Streaming<pb::AgentFrame>) -> Option<agent_frame::Frame> {
    within("a frame from the agent", from_agent.message())
        .await
        .expect("tunnel RPC failed")
        .map(|f| f.frame.expect("empty frame"))
}

// ---------------------------------------------------------------------------------

async fn handshake_pool_and_echo(transport: Transport) {
    let echo = echo_service().await;
    let mut host = Host::start(transport, false).await;
    let mut cfg = config(&host, echo, 3);
    cfg.services.push("db=127.0.0.1:5432".parse().unwrap());
    let agent = burrow_agent::spawn(cfg);

    let (hello, metadata) = within("Hello", host.hellos.recv()).await.unwrap();
    assert_eq!(hello.protocol_version, burrow_proto::PROTOCOL_VERSION);
    assert_eq!(hello.protocol_minor, burrow_proto::PROTOCOL_MINOR);
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(hello.replica_id, "replica-7");
    assert_eq!(hello.services, vec!["echo".to_owned(), "db".to_owned()]);
    assert_eq!(metadata.get("authorization").unwrap().to_str().unwrap(), format!("Bearer {TOKEN}"));

    // min_idle tunnels park, each with the token and the session.
    let mut parked = Vec::new();
    for _ in 0..3 {
        let t = host.next_tunnel().await;
        assert_eq!(t.metadata.get("authorization").unwrap().to_str().unwrap(), format!("Bearer {TOKEN}"));
        assert_eq!(t.metadata.get(SESSION_METADATA).unwrap().to_str().unwrap(), SESSION);
        parked.push(t);
    }
    let status = wait_status(&agent, "3 idle streams", |s| s.is_connected() && s.idle_streams == 3).await;
    assert_eq!(
        status.state,
        ConnState::Connected { host_replica_id: "host-1".into(), agent_id: "agent-x".into() }
    );
    assert!(
        timeout(Duration::from_millis(300), host.tunnels.recv()).await.is_err(),
        "no more than min_idle while nothing is claimed"
    );

    // Claim one: the agent dials the echo service and opens a replacement at once.
    let mut t = parked.pop().unwrap();
    t.to_agent.send(Ok(frames::dial("echo", "req-1"))).await.unwrap();
    match next_frame(&mut t.from_agent).await {
        Some(agent_frame::Frame::DialResult(r)) => assert!(r.refusal.is_none(), "{r:?}"),
        other => panic!("expected DialResult, got {other:?}"),
    }
    let replacement = host.next_tunnel().await;
    assert_eq!(replacement.metadata.get(SESSION_METADATA).unwrap().to_str().unwrap(), SESSION);
    wait_status(&agent, "one active", |s| s.active_streams == 1 && s.idle_streams == 3).await;

    // 1 MiB up while reading the echo back; then half-close from the host side.
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 253) as u8).collect();
    let to_agent = t.to_agent.clone();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(MAX_DATA_FRAME) {
            to_agent.send(Ok(frames::host_data(Bytes::copy_from_slice(chunk)))).await.unwrap();
        }
        to_agent.send(Ok(frames::host_eof())).await.unwrap();
    });
    let mut echoed = Vec::new();
    loop {
        match next_frame(&mut t.from_agent).await {
            Some(agent_frame::Frame::Data(d)) => {
                assert!(d.len() <= MAX_DATA_FRAME);
                echoed.extend_from_slice(&d);
            }
            // The service saw our EOF, finished, and shut down: the agent relays its EOF.
            Some(agent_frame::Frame::Eof(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    writer.await.unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload);
    // Both sides sent Eof: the agent ends its request stream.
    assert!(next_frame(&mut t.from_agent).await.is_none());
    drop(t);
    wait_status(&agent, "tunnel finished", |s| s.active_streams == 0).await;

    agent.shutdown().await;
}

#[tokio::test]
async fn grpc_handshake_pool_and_echo() {
    handshake_pool_and_echo(Transport::Grpc).await;
}

#[tokio::test]
async fn grpcs_with_ca_file_handshake_pool_and_echo() {
    handshake_pool_and_echo(Transport::Grpcs).await;
}

#[tokio::test]
async fn ws_handshake_pool_and_echo() {
    handshake_pool_and_echo(Transport::Ws).await;
}

#[tokio::test]
async fn wss_with_ca_file_handshake_pool_and_echo() {
    handshake_pool_and_echo(Transport::Wss).await;
}

#[tokio::test]
async fn unknown_service_and_failed_dial_are_refused() {
    let echo = echo_service().await;
    let dead = closed_port().await;
    let mut host = Host::start(Transport::Grpc, false).await;
    let mut cfg = config(&host, echo, 2);
    cfg.services.push(format!("dead={dead}").parse().unwrap());
    let agent = burrow_agent::spawn(cfg);

    let mut t = host.next_tunnel().await;
    t.to_agent.send(Ok(frames::dial("nope", "req-2"))).await.unwrap();
    match next_frame(&mut t.from_agent).await {
        Some(agent_frame::Frame::DialResult(pb::DialResult { refusal: Some(r) })) => {
            assert_eq!(r.code(), RefusalCode::UnknownService);
            assert_eq!(r.message, "service \"nope\" is not offered by this agent");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(next_frame(&mut t.from_agent).await.is_none(), "agent ends the tunnel after refusing");
    drop(t);

    let mut t = host.next_tunnel().await;
    t.to_agent.send(Ok(frames::dial("dead", "req-3"))).await.unwrap();
    match next_frame(&mut t.from_agent).await {
        Some(agent_frame::Frame::DialResult(pb::DialResult { refusal: Some(r) })) => {
            assert_eq!(r.code(), RefusalCode::DialFailed);
            assert!(r.message.starts_with("could not connect to service \"dead\""), "{}", r.message);
            assert!(!r.message.contains(&dead.to_string()), "the address stays private: {}", r.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(t);
    agent.shutdown().await;
}

#[tokio::test]
async fn unauthenticated_backs_off_hard() {
    let echo = echo_service().await;
    let mut host = Host::start(Transport::Grpc, true).await;
    let agent = burrow_agent::spawn(config(&host, echo, 2));
    let (_, metadata) = within("Hello", host.hellos.recv()).await.unwrap();
    assert!(metadata.get("authorization").is_some());
    let status =
        wait_status(&agent, "auth back-off", |s| matches!(s.state, ConnState::BackingOff { .. })).await;
    match &status.state {
        ConnState::BackingOff { retry_in, reason, auth_failure } => {
            assert!(auth_failure, "{status:?}");
            assert!(*retry_in >= Duration::from_secs(24), "auth back-off starts near 30 s: {retry_in:?}");
            assert!(reason.contains("unknown agent token"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(status.auth_failures, 1);
    assert_eq!(status.connect_attempts, 1);
    assert!(!status.last_error.as_deref().unwrap_or("").contains(TOKEN), "the token never appears in status");
    // It does not hammer: no second attempt arrives soon.
    assert!(timeout(Duration::from_millis(500), host.hellos.recv()).await.is_err());
    agent.shutdown().await;
}

#[tokio::test]
async fn goaway_reconnects_without_penalty_and_active_tunnels_finish() {
    let echo = echo_service().await;
    let mut host = Host::start(Transport::Grpc, false).await;
    let agent = burrow_agent::spawn(config(&host, echo, 2));
    within("Hello", host.hellos.recv()).await.unwrap();
    let control = within("control", host.controls.recv()).await.unwrap();
    let mut active = host.next_tunnel().await;
    let _idle = host.next_tunnel().await;
    active.to_agent.send(Ok(frames::dial("echo", "req-4"))).await.unwrap();
    assert!(matches!(next_frame(&mut active.from_agent).await, Some(agent_frame::Frame::DialResult(_))));
    let _replacement = host.next_tunnel().await;

    control
        .send(Ok(pb::HostControl {
            msg: Some(host_control::Msg::GoAway(pb::GoAway {
                reason: "draining".into(),
                reconnect_after_ms: 0,
            })),
        }))
        .await
        .unwrap();
    within("second Hello", host.hellos.recv()).await.unwrap();
    let status = wait_status(&agent, "reconnected", |s| s.is_connected() && s.connect_attempts == 2).await;
    assert!(status.last_error.is_none(), "GoAway is not an error: {status:?}");

    // The tunnel on the old connection still works.
    active.to_agent.send(Ok(frames::host_data(Bytes::from_static(b"still here")))).await.unwrap();
    active.to_agent.send(Ok(frames::host_eof())).await.unwrap();
    let mut echoed = Vec::new();
    loop {
        match next_frame(&mut active.from_agent).await {
            Some(agent_frame::Frame::Data(d)) => echoed.extend_from_slice(&d),
            Some(agent_frame::Frame::Eof(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(echoed, b"still here");
    drop(active);
    agent.shutdown().await;
}

#[tokio::test]
async fn shutdown_waits_for_active_tunnels_then_stops() {
    let echo = echo_service().await;
    let mut host = Host::start(Transport::Grpc, false).await;
    let agent = burrow_agent::spawn(config(&host, echo, 1));
    let mut t = host.next_tunnel().await;
    t.to_agent.send(Ok(frames::dial("echo", "req-5"))).await.unwrap();
    assert!(matches!(next_frame(&mut t.from_agent).await, Some(agent_frame::Frame::DialResult(_))));
    let status = agent.status();

    let stopping = tokio::spawn(agent.shutdown());
    // Parked tunnels are dropped; the active one still pipes.
    t.to_agent.send(Ok(frames::host_data(Bytes::from_static(b"bye")))).await.unwrap();
    t.to_agent.send(Ok(frames::host_eof())).await.unwrap();
    let mut echoed = Vec::new();
    loop {
        match next_frame(&mut t.from_agent).await {
            Some(agent_frame::Frame::Data(d)) => echoed.extend_from_slice(&d),
            Some(agent_frame::Frame::Eof(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(echoed, b"bye");
    drop(t);
    within("shutdown", stopping).await.unwrap();
    assert_eq!(status.borrow().state, ConnState::Stopped);
}

#[tokio::test]
async fn invalid_config_stops_with_the_reason() {
    let mut cfg = AgentConfig::new("grpc://127.0.0.1:9", TOKEN).unwrap();
    cfg.services.clear();
    let agent = burrow_agent::spawn(cfg);
    let status = wait_status(&agent, "stopped", |s| s.state == ConnState::Stopped).await;
    assert!(status.last_error.unwrap().contains("no services configured"));
    let err = burrow_agent::run(AgentConfig::new("grpc://127.0.0.1:9", TOKEN).unwrap(), async {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no services"));
}

#[tokio::test]
async fn service_socket_is_really_dialed_only_for_configured_names() {
    // A listener the agent is never told about must never see a connection.
    let secret = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let secret_addr = secret.local_addr().unwrap();
    let echo = echo_service().await;
    let mut host = Host::start(Transport::Grpc, false).await;
    let agent = burrow_agent::spawn(config(&host, echo, 1));
    let mut t = host.next_tunnel().await;
    // A host trying to name an address instead of a service gets nothing.
    t.to_agent.send(Ok(frames::dial(&secret_addr.to_string(), "req-6"))).await.unwrap();
    assert!(matches!(
        next_frame(&mut t.from_agent).await,
        Some(agent_frame::Frame::DialResult(pb::DialResult { refusal: Some(_) }))
    ));
    assert!(timeout(Duration::from_millis(200), secret.accept()).await.is_err());
    drop(t);
    agent.shutdown().await;
}

#[tokio::test]
async fn burst_grows_the_pool_and_surplus_idle_tunnels_expire() {
    let echo = echo_service().await;
    let mut host = Host::start(Transport::Grpc, false).await;
    let mut cfg = config(&host, echo, 1);
    cfg.idle_timeout = Duration::from_millis(300);
    let agent = burrow_agent::spawn(cfg);
    let mut only = host.next_tunnel().await;
    // Claiming the only parked tunnel drains the pool: the idle target doubles to 2.
    only.to_agent.send(Ok(frames::dial("echo", "req-7"))).await.unwrap();
    assert!(matches!(next_frame(&mut only.from_agent).await, Some(agent_frame::Frame::DialResult(_))));
    let mut a = host.next_tunnel().await;
    let mut b = host.next_tunnel().await;
    // After the idle timeout the surplus one closes; the floor of 1 stays parked.
    let ended = |r: Result<Option<pb::AgentFrame>, Status>| !matches!(r, Ok(Some(_)));
    let a_first = within("a surplus tunnel to close", async {
        tokio::select! {
            r = a.from_agent.message() => { assert!(ended(r)); true }
            r = b.from_agent.message() => { assert!(ended(r)); false }
        }
    })
    .await;
    let floor = if a_first { &mut b } else { &mut a };
    assert!(
        timeout(Duration::from_millis(800), floor.from_agent.message()).await.is_err(),
        "the last idle tunnel is the floor and stays parked"
    );
    let status = wait_status(&agent, "back to the floor", |s| s.idle_streams == 1).await;
    assert_eq!(status.active_streams, 1);
    drop(only);
    agent.shutdown().await;
}
