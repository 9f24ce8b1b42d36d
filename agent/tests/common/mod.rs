//! A small real `AgentTunnel` server (real gRPC over loopback TCP) for the agent's
//! integration tests, over all four transports, plus an echo service and a round-robin
//! TCP proxy that stands in for a load balancer in front of several host replicas.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use burrow_agent::{AgentConfig, AgentHandle, AgentStatus};
use burrow_proto::pb::agent_tunnel_server::{AgentTunnel, AgentTunnelServer};
use burrow_proto::pb::{self, agent_control, agent_frame, host_control};
use burrow_proto::tunnel::frames;
use burrow_proto::ws::{ws_config, WsIo};
use burrow_proto::{MAX_MESSAGE_SIZE, SESSION_METADATA, WS_PATH, WS_SUBPROTOCOL};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status, Streaming};

/// Hang guard for every wait; generous because CI machines are slow, never a speed check.
pub const WAIT: Duration = Duration::from_secs(20);
pub const TOKEN: &str = "agent-token-123";
/// Session ids are `session-abc-<n>`, one per accepted control stream.
pub const SESSION: &str = "session-abc";

pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    timeout(WAIT, fut).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// ---------------------------------------------------------------------------------
// A minimal host.

pub struct ParkedTunnel {
    pub metadata: MetadataMap,
    /// The session named in the tunnel's metadata.
    pub session: String,
    pub to_agent: mpsc::Sender<Result<pb::HostFrame, Status>>,
    pub from_agent: Streaming<pb::AgentFrame>,
}

/// An accepted control stream.
pub struct Control {
    pub session: String,
    pub tx: mpsc::Sender<Result<pb::HostControl, Status>>,
}

/// The host's work queue for the agent: the head is handed out (again and again) until
/// a final status acknowledges it.
#[derive(Clone, Default)]
pub struct WorkQueue {
    items: Arc<Mutex<VecDeque<pb::WorkItem>>>,
    changed: Arc<Notify>,
}

impl WorkQueue {
    pub fn push(&self, item_id: &str, payload: &[u8]) {
        let item =
            pb::WorkItem { item_id: item_id.into(), payload: Bytes::copy_from_slice(payload), delivery: 0 };
        self.items.lock().unwrap().push_back(item);
        self.changed.notify_waiters();
    }

    pub fn len(&self) -> usize {
        self.items.lock().unwrap().len()
    }

    async fn next(&self, wait: Duration) -> Option<pb::WorkItem> {
        let deadline = Instant::now() + wait;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(head) = self.items.lock().unwrap().front_mut() {
                head.delivery += 1;
                return Some(head.clone());
            }
            if timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    fn acknowledge(&self, item_id: &str) {
        let mut items = self.items.lock().unwrap();
        if items.front().is_some_and(|i| i.item_id == item_id) {
            items.pop_front();
        }
    }
}

/// A `bwt1.` token shaped like the host's (made-up key id and signature), valid from
/// `issued_at` to `expires_at` (Unix ms).
pub fn workload_token(issued_at: u64, expires_at: u64, token_id: &str) -> String {
    fn encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
    let claims = format!(
        r#"{{"kind":"ci-job","workload_id":"w1","agent_id":"w1","services":[],"issued_at":{issued_at},"expires_at":{expires_at},"token_id":"{token_id}"}}"#
    );
    format!("bwt1.0123456789abcdef.{}.{}", encode(claims.as_bytes()), encode(&[7; 64]))
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn final_status(code: tonic::Code, message: &str, value: &'static str) -> Status {
    let mut md = MetadataMap::new();
    md.insert(burrow_proto::FINAL_METADATA, MetadataValue::from_static(value));
    Status::with_metadata(code, message, md)
}

#[derive(Clone)]
struct TestHost {
    options: Arc<HostOptions>,
    rate_limited_once: Arc<AtomicBool>,
    next_session: Arc<AtomicUsize>,
    sessions: Arc<Mutex<Vec<String>>>,
    attempts: Arc<Mutex<Vec<Instant>>>,
    hellos: mpsc::UnboundedSender<(pb::Hello, MetadataMap)>,
    controls: mpsc::UnboundedSender<Control>,
    ended: mpsc::UnboundedSender<String>,
    tunnels: mpsc::UnboundedSender<ParkedTunnel>,
    renewals: mpsc::UnboundedSender<MetadataMap>,
    renewed: Arc<AtomicUsize>,
    polls: mpsc::UnboundedSender<MetadataMap>,
    statuses: mpsc::UnboundedSender<(pb::UpdateStatusRequest, MetadataMap)>,
    queue: WorkQueue,
}

impl TestHost {
    fn known_session(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let session = metadata.get(SESSION_METADATA).and_then(|v| v.to_str().ok()).unwrap_or("");
        if self.sessions.lock().unwrap().iter().any(|s| s == session) {
            Ok(())
        } else {
            Err(Status::unauthenticated("unknown session"))
        }
    }
}

#[tonic::async_trait]
impl AgentTunnel for TestHost {
    type ControlStream = ReceiverStream<Result<pb::HostControl, Status>>;
    type TunnelStream = ReceiverStream<Result<pb::HostFrame, Status>>;

    async fn control(
        &self,
        request: Request<Streaming<pb::AgentControl>>,
    ) -> Result<Response<Self::ControlStream>, Status> {
        self.attempts.lock().unwrap().push(Instant::now());
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::AgentControl { msg: Some(agent_control::Msg::Hello(hello)) }) => hello,
            _ => return Err(Status::invalid_argument("expected Hello")),
        };
        let _ = self.hellos.send((hello, metadata));
        if let Some((code, value)) = self.options.final_control {
            return Err(final_status(code, "the workload is over", value));
        }
        if self.options.reject_auth {
            return Err(Status::unauthenticated("unknown agent token"));
        }
        if let Some(ms) = self.options.rate_limit_first_ms {
            if !self.rate_limited_once.swap(true, Ordering::SeqCst) {
                let mut md = MetadataMap::new();
                md.insert(burrow_proto::RETRY_AFTER_METADATA, MetadataValue::from(ms));
                return Err(Status::with_metadata(
                    tonic::Code::ResourceExhausted,
                    "too many connection attempts for this token",
                    md,
                ));
            }
        }
        let session = format!("{SESSION}-{}", self.next_session.fetch_add(1, Ordering::SeqCst));
        self.sessions.lock().unwrap().push(session.clone());
        let (tx, rx) = mpsc::channel(4);
        let welcome = pb::Welcome {
            protocol_version: burrow_proto::PROTOCOL_VERSION,
            protocol_minor: burrow_proto::PROTOCOL_MINOR,
            host_replica_id: self.options.replica_id.clone(),
            agent_id: "agent-x".into(),
            session_id: session.clone(),
        };
        tx.send(Ok(pb::HostControl { msg: Some(host_control::Msg::Welcome(welcome)) })).await.unwrap();
        let _ = self.controls.send(Control { session: session.clone(), tx: tx.clone() });
        let ended = self.ended.clone();
        tokio::spawn(async move {
            while let Ok(Some(_)) = inbound.message().await {}
            let _ = ended.send(session);
            drop(tx);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn tunnel(
        &self,
        request: Request<Streaming<pb::AgentFrame>>,
    ) -> Result<Response<Self::TunnelStream>, Status> {
        let session = request.metadata().get(SESSION_METADATA).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !self.sessions.lock().unwrap().iter().any(|s| s == session) {
            return Err(Status::unauthenticated("unknown session"));
        }
        let session = session.to_owned();
        let (to_agent, rx) = mpsc::channel(4);
        let metadata = request.metadata().clone();
        let _ =
            self.tunnels.send(ParkedTunnel { metadata, session, to_agent, from_agent: request.into_inner() });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn renew_token(
        &self,
        request: Request<pb::RenewAgentTokenRequest>,
    ) -> Result<Response<pb::RenewAgentTokenResponse>, Status> {
        self.known_session(request.metadata())?;
        let _ = self.renewals.send(request.metadata().clone());
        if let Some(value) = self.options.final_renew {
            return Err(final_status(tonic::Code::Unauthenticated, "the token was revoked", value));
        }
        let Some(ttl) = self.options.renew_ttl else {
            return Err(Status::unimplemented("no renewals here"));
        };
        let n = self.renewed.fetch_add(1, Ordering::SeqCst) + 1;
        let now = unix_ms();
        let expires_at_ms = now + ttl.as_millis() as u64;
        let token = workload_token(now, expires_at_ms, &format!("renewed-{n}"));
        Ok(Response::new(pb::RenewAgentTokenResponse { token, expires_at_ms }))
    }

    async fn get_work(
        &self,
        request: Request<pb::GetWorkRequest>,
    ) -> Result<Response<pb::GetWorkResponse>, Status> {
        self.known_session(request.metadata())?;
        let _ = self.polls.send(request.metadata().clone());
        if !self.options.work {
            return Err(Status::failed_precondition("no work queue for this agent"));
        }
        let wait = Duration::from_millis(u64::from(request.get_ref().wait_ms.min(60_000)));
        Ok(Response::new(pb::GetWorkResponse { item: self.queue.next(wait).await }))
    }

    async fn update_status(
        &self,
        request: Request<pb::UpdateStatusRequest>,
    ) -> Result<Response<pb::UpdateStatusResponse>, Status> {
        self.known_session(request.metadata())?;
        let metadata = request.metadata().clone();
        let update = request.into_inner();
        if matches!(update.state(), pb::WorkItemState::Succeeded | pb::WorkItemState::Failed) {
            self.queue.acknowledge(&update.item_id);
        }
        let _ = self.statuses.send((update, metadata));
        Ok(Response::new(pb::UpdateStatusResponse {}))
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
pub enum Transport {
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

/// How a test host behaves.
#[derive(Debug, Clone)]
pub struct HostOptions {
    pub transport: Transport,
    /// Answer every `Hello` with UNAUTHENTICATED.
    pub reject_auth: bool,
    /// `Welcome.host_replica_id`.
    pub replica_id: String,
    /// Answer the first attempt with RESOURCE_EXHAUSTED and this retry-after.
    pub rate_limit_first_ms: Option<u64>,
    /// Refuse every `Control` with this code and `burrow-final: <value>`.
    pub final_control: Option<(tonic::Code, &'static str)>,
    /// Answer `RenewToken` with a fresh workload token valid this long; `None`:
    /// UNIMPLEMENTED.
    pub renew_ttl: Option<Duration>,
    /// Refuse `RenewToken` with UNAUTHENTICATED and `burrow-final: <value>`.
    pub final_renew: Option<&'static str>,
    /// Serve a work queue ([`Host::queue`]); without one `GetWork` is FAILED_PRECONDITION.
    pub work: bool,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            transport: Transport::Grpc,
            reject_auth: false,
            replica_id: "host-1".into(),
            rate_limit_first_ms: None,
            final_control: None,
            renew_ttl: None,
            final_renew: None,
            work: false,
        }
    }
}

impl HostOptions {
    pub fn replica(id: &str) -> Self {
        Self { replica_id: id.into(), ..Self::default() }
    }
}

pub struct Host {
    pub url: String,
    pub addr: SocketAddr,
    pub ca_file: Option<std::path::PathBuf>,
    pub hellos: mpsc::UnboundedReceiver<(pb::Hello, MetadataMap)>,
    pub controls: mpsc::UnboundedReceiver<Control>,
    /// Sessions whose control stream the agent ended.
    pub ended: mpsc::UnboundedReceiver<String>,
    pub tunnels: mpsc::UnboundedReceiver<ParkedTunnel>,
    /// When each `Control` RPC arrived.
    pub attempts: Arc<Mutex<Vec<Instant>>>,
    /// The metadata of each `RenewToken` call.
    pub renewals: mpsc::UnboundedReceiver<MetadataMap>,
    /// The metadata of each `GetWork` call.
    pub polls: mpsc::UnboundedReceiver<MetadataMap>,
    /// Each `UpdateStatus` call.
    pub statuses: mpsc::UnboundedReceiver<(pb::UpdateStatusRequest, MetadataMap)>,
    pub queue: WorkQueue,
    /// Raw handles on every accepted socket, so `kill` can cut them.
    sockets: Arc<Mutex<Vec<std::net::TcpStream>>>,
    _tls: Option<Tls>,
    accept: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.accept.abort();
        self.server.abort();
    }
}

impl Host {
    pub async fn start(transport: Transport, reject_auth: bool) -> Host {
        Self::start_with(HostOptions { transport, reject_auth, ..HostOptions::default() }).await
    }

    pub async fn start_with(options: HostOptions) -> Host {
        let (hellos_tx, hellos) = mpsc::unbounded_channel();
        let (controls_tx, controls) = mpsc::unbounded_channel();
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let (tunnels_tx, tunnels) = mpsc::unbounded_channel();
        let (renewals_tx, renewals) = mpsc::unbounded_channel();
        let (polls_tx, polls) = mpsc::unbounded_channel();
        let (statuses_tx, statuses) = mpsc::unbounded_channel();
        let queue = WorkQueue::default();
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let transport = options.transport;
        let service = TestHost {
            options: Arc::new(options),
            rate_limited_once: Arc::new(AtomicBool::new(false)),
            next_session: Arc::new(AtomicUsize::new(1)),
            sessions: Arc::new(Mutex::new(Vec::new())),
            attempts: attempts.clone(),
            hellos: hellos_tx,
            controls: controls_tx,
            ended: ended_tx,
            tunnels: tunnels_tx,
            renewals: renewals_tx,
            renewed: Arc::new(AtomicUsize::new(0)),
            polls: polls_tx,
            statuses: statuses_tx,
            queue: queue.clone(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = match transport {
            Transport::Grpcs => Some(tls_setup(b"h2")),
            Transport::Wss => Some(tls_setup(b"http/1.1")),
            _ => None,
        };
        let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let (conn_tx, conn_rx) = mpsc::channel::<Result<TestIo, std::io::Error>>(16);
        let registry = sockets.clone();
        let accept = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                // Keep a clone of the socket: shutting it down cuts the connection
                // whatever task owns the other handle.
                let std = tcp.into_std().unwrap();
                registry.lock().unwrap().push(std.try_clone().unwrap());
                let tcp = TcpStream::from_std(std).unwrap();
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
                .max_encoding_message_size(burrow_proto::MAX_HOST_MESSAGE_SIZE);
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
            addr,
            ca_file: tls.as_ref().map(|t| t.ca_file.clone()),
            hellos,
            controls,
            ended,
            tunnels,
            attempts,
            renewals,
            polls,
            statuses,
            queue,
            sockets,
            _tls: tls,
            accept,
            server,
        }
    }

    pub async fn next_tunnel(&mut self) -> ParkedTunnel {
        within("a parked tunnel", self.tunnels.recv()).await.expect("host stopped")
    }

    /// Die like a killed process: stop listening and cut every connection.
    pub fn kill(&mut self) {
        self.accept.abort();
        self.server.abort();
        for socket in self.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// `Control` RPCs received so far.
    pub fn attempt_count(&self) -> usize {
        self.attempts.lock().unwrap().len()
    }
}

/// A TCP echo service that honours half-close: after EOF it shuts down its write side.
pub async fn echo_service() -> SocketAddr {
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
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A load balancer stand-in: connection `i` goes to `backends[i % len]` (the list may
/// change while it runs), bytes copied both ways.
pub async fn round_robin_proxy(backends: Arc<Mutex<Vec<SocketAddr>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut next = 0usize;
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let backend = {
                let list = backends.lock().unwrap();
                list[next % list.len()]
            };
            next += 1;
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

/// One connection, no distinct-replica logic: what most tests want from a single host.
pub fn config(host: &Host, echo: SocketAddr, min_idle: usize) -> AgentConfig {
    let mut config = AgentConfig::new(&host.url, TOKEN).unwrap();
    config.services.push(format!("echo={echo}").parse().unwrap());
    config.replica_id = "replica-7".into();
    config.min_idle = min_idle;
    config.connections = 1;
    config.ca_file = host.ca_file.clone();
    config
}

pub async fn wait_status(
    agent: &AgentHandle,
    what: &str,
    f: impl FnMut(&AgentStatus) -> bool,
) -> AgentStatus {
    let mut status = agent.status();
    let got = within(what, status.wait_for(f)).await.expect("agent stopped").clone();
    got
}

pub async fn next_frame(from_agent: &mut Streaming<pb::AgentFrame>) -> Option<agent_frame::Frame> {
    within("a frame from the agent", from_agent.message())
        .await
        .expect("tunnel RPC failed")
        .map(|f| f.frame.expect("empty frame"))
}

/// Claim `t` for the echo service and check it is accepted.
pub async fn dial_echo(t: &mut ParkedTunnel, request_id: &str) {
    t.to_agent.send(Ok(frames::dial("echo", request_id))).await.unwrap();
    match next_frame(&mut t.from_agent).await {
        Some(agent_frame::Frame::DialResult(r)) => assert!(r.refusal.is_none(), "{r:?}"),
        other => panic!("expected DialResult, got {other:?}"),
    }
}

/// Send `data` and EOF through a dialed tunnel; return what the echo sent back.
pub async fn echo_round_trip(t: &mut ParkedTunnel, data: &'static [u8]) -> Vec<u8> {
    t.to_agent.send(Ok(frames::host_data(Bytes::from_static(data)))).await.unwrap();
    t.to_agent.send(Ok(frames::host_eof())).await.unwrap();
    let mut echoed = Vec::new();
    loop {
        match next_frame(&mut t.from_agent).await {
            Some(agent_frame::Frame::Data(d)) => echoed.extend_from_slice(&d),
            Some(agent_frame::Frame::Eof(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    echoed
}
