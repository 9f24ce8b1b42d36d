//! The private replica-to-replica API: forwarding a user's connection to the replica
//! that holds the agent's stream, and serving such forwards.
//!
//! The relayed stream is the agent tunnel itself (see `cluster.proto`): the serving
//! replica claims one of its parked tunnels, sends the caller's `Dial`, and then copies
//! frames both ways without decoding payloads. One HTTP/2 connection per peer replica
//! carries every forwarded stream, so a forward costs no handshake.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_proto::cluster_pb::replica_tunnel_client::ReplicaTunnelClient;
use burrow_proto::cluster_pb::replica_tunnel_server::{ReplicaTunnel, ReplicaTunnelServer};
use burrow_proto::pb::{self, agent_frame, host_frame, ResetCode};
use burrow_proto::tunnel::{frames, Event, Role, Tunnel};
use burrow_proto::{AGENT_ID_METADATA, MAX_MESSAGE_SIZE, WAIT_MS_METADATA};
use futures_util::Stream;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{BinaryMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status, Streaming};

use super::config::ClusterTlsConfig;
use super::policy::Candidate;
use super::token::TokenError;
use super::{Cluster, ClusterError};
use burrow_host_core::context::HostContext;
use burrow_host_core::dial::OpenError;
use burrow_host_core::limits::{h2_preface, ConnectionLimits, Incoming};
use burrow_host_core::registry::Session;
use burrow_host_core::tunnel_io::TunnelStream;

/// Frames buffered per relayed stream in each direction; HTTP/2 flow control does the rest.
const RELAY_CHANNEL: usize = 4;
/// The longest a serving replica waits for a free stream of the agent.
const MAX_SERVE_WAIT: Duration = Duration::from_secs(10);
/// How long a serving replica waits for the caller's `Dial`.
const DIAL_FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a forward through one candidate failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    /// The agent refused the dial: the answer for every candidate (502).
    #[error("agent refused to connect to the service: {message}")]
    Refused { code: pb::RefusalCode, message: String },
    /// The candidate holds no stream of the agent (any more): try the next.
    #[error("replica {0} holds no stream of the agent")]
    NotThere(String),
    /// The candidate could not be reached or failed: try the next.
    #[error("replica {replica} failed: {message}")]
    Failed { replica: String, message: String },
}

/// Connections to the other replicas, one HTTP/2 channel per address.
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    tls: Option<(tokio_rustls::TlsConnector, Option<String>)>,
}

impl Peers {
    /// Peers reached over mutual TLS (`tls`), or in cleartext when the config opted out.
    pub fn new(tls: Option<&ClusterTlsConfig>) -> Result<Self, ClusterError> {
        let tls = match tls {
            None => None,
            Some(tls) => Some((
                tokio_rustls::TlsConnector::from(super::mtls::client_config(tls)?),
                tls.server_name.clone(),
            )),
        };
        Ok(Self { channels: Mutex::new(HashMap::new()), tls })
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        if let Some(c) = self.channels.lock().unwrap_or_else(|p| p.into_inner()).get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad replica address {addr:?}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(1024 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024);
        let target = addr.to_owned();
        let tls = self.tls.clone();
        let connector = tower::service_fn(move |_: Uri| {
            let target = target.clone();
            let tls = tls.clone();
            async move {
                let tcp = TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                match tls {
                    None => Ok::<_, std::io::Error>(TokioIo::new(PeerIo::Left(tcp))),
                    Some((connector, name)) => {
                        let host = name.unwrap_or_else(|| {
                            target.rsplit_once(':').map_or(target.clone(), |(h, _)| {
                                h.trim_start_matches('[').trim_end_matches(']').to_owned()
                            })
                        });
                        let server_name = ServerName::try_from(host)
                            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                        let tls = connector.connect(server_name, tcp).await?;
                        Ok(TokioIo::new(PeerIo::Right(Box::new(tls))))
                    }
                }
            }
        });
        let channel = endpoint.connect_with_connector_lazy(connector);
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Keeps only the channels to `live` addresses: a dead replica's connection would
    /// otherwise linger, and a new replica may reuse its address.
    pub fn retain(&self, live: &std::collections::HashSet<&str>) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|addr, _| live.contains(addr.as_str()));
    }
}

/// TCP or TLS-over-TCP to a peer.
type PeerIo = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// Opens a tunnel to `agent_id`'s `service` relayed by `candidate`'s replica API.
pub(crate) async fn open(
    cluster: &Cluster,
    candidate: &Candidate,
    agent_id: &str,
    dial: &pb::Dial,
    wait: Duration,
    answer_timeout: Duration,
) -> Result<TunnelStream, ForwardError> {
    let failed = |message: String| ForwardError::Failed { replica: candidate.replica_id.clone(), message };
    let channel = cluster.peers.channel(&candidate.address).map_err(failed)?;
    let mut client = ReplicaTunnelClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);

    let (tx, rx) = mpsc::channel::<Result<pb::HostFrame, Status>>(RELAY_CHANNEL);
    let mut state = Tunnel::new(Role::Host);
    state.send_dial(dial).map_err(|e| failed(e.to_string()))?;
    // Cannot fail: the channel is fresh and has room.
    let _ = tx.try_send(Ok(pb::HostFrame { frame: Some(host_frame::Frame::Dial(dial.clone())) }));
    // A `Reset` the local side queues is sent; an `Err` would only be a local signal, so
    // the request stream ends there (the peer sees the stream end and resets the agent).
    let outgoing = tokio_stream::StreamExt::map_while(ReceiverStream::new(rx), Result::ok);
    let mut request = Request::new(outgoing);
    let token =
        cluster.token_key().mint_bound(cluster.replica_id(), &candidate.replica_id, &binding(agent_id, dial));
    let md = request.metadata_mut();
    md.insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).map_err(|e| failed(e.to_string()))?,
    );
    md.insert_bin(AGENT_ID_METADATA, BinaryMetadataValue::from_bytes(agent_id.as_bytes()));
    md.insert(WAIT_MS_METADATA, MetadataValue::from(wait.as_millis().min(u64::MAX as u128) as u64));

    let call = async {
        let response = client.forward(request).await.map_err(|status| match status.code() {
            tonic::Code::NotFound => ForwardError::NotThere(candidate.replica_id.clone()),
            _ => failed(format!("{}: {}", code_name(status.code()), status.message())),
        })?;
        let mut inbound = response.into_inner();
        let first = inbound.message().await.map_err(|s| failed(s.message().to_owned()))?;
        Ok::<_, ForwardError>((inbound, first))
    };
    let (inbound, first) = tokio::time::timeout(wait + answer_timeout, call)
        .await
        .map_err(|_| failed(format!("no answer within {:?}", wait + answer_timeout)))??;
    let Some(first) = first else {
        return Err(failed("the replica ended the stream before the agent answered".into()));
    };
    match state.receive_agent_frame(first) {
        Ok(Event::DialAccepted) => {
            let session = Arc::new(Session {
                agent_id: agent_id.to_owned(),
                agent_replica_id: String::new(),
                session_id: String::new(),
                remote_addr: format!("via replica {}", candidate.replica_id),
                token_sha256: [0; 32],
                protocol_minor: 0,
                identity: None,
                retired: Default::default(),
                cut: Default::default(),
            });
            Ok(TunnelStream::forwarded(inbound, tx, state, session, Some(cluster.metrics.clone())))
        }
        Ok(Event::DialRefused(r)) => Err(ForwardError::Refused { code: r.code(), message: r.message }),
        Ok(Event::Reset(r)) => Err(failed(format!("reset: {}", r.message))),
        Ok(other) => Err(failed(format!("expected DialResult, got {other:?}"))),
        Err(e) => Err(failed(e.to_string())),
    }
}

/// The digest a replica token is bound to: the agent and every field of the `Dial` that
/// decides what the tunnel opens. Fields are length-prefixed so no two requests share a
/// digest by shifting bytes between fields.
pub fn binding(agent_id: &str, dial: &pb::Dial) -> String {
    use base64::Engine as _;
    let mut digest = Sha256::new();
    for part in [agent_id, &dial.service, &dial.request_id, &dial.principal] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    digest.update(dial.kind.to_be_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.finalize())
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}").to_lowercase()
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves forwards from other replicas out of this replica's parked tunnels.
pub struct ForwardService {
    ctx: Arc<HostContext>,
    cluster: Arc<Cluster>,
}

fn bearer(request: &Request<Streaming<pb::HostFrame>>) -> Option<&str> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

#[tonic::async_trait]
impl ReplicaTunnel for ForwardService {
    type ForwardStream = BoxStream<pb::AgentFrame>;

    async fn forward(
        &self,
        request: Request<Streaming<pb::HostFrame>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let metrics = &self.ctx.metrics;
        let refuse = |e: TokenError| {
            metrics.forward_served(if e == TokenError::Replayed { "replayed" } else { "unauthenticated" });
            tracing::warn!(error = %e, "refused a replica API call");
            Status::unauthenticated(e.to_string())
        };
        let claims = match bearer(&request) {
            Some(token) => {
                self.cluster.token_key().verify_bound(token, self.cluster.replica_id()).map_err(refuse)?
            }
            None => {
                metrics.forward_served("unauthenticated");
                return Err(Status::unauthenticated("missing replica token"));
            }
        };
        let caller = claims.issuer.clone();
        if self.cluster.draining() || self.ctx.shutdown.is_cancelled() {
            metrics.forward_served("draining");
            return Err(Status::unavailable("replica is draining"));
        }
        let agent_id = request
            .metadata()
            .get_bin(AGENT_ID_METADATA)
            .and_then(|v| v.to_bytes().ok())
            .and_then(|b| String::from_utf8(b.to_vec()).ok())
            .ok_or_else(|| Status::invalid_argument(format!("missing {AGENT_ID_METADATA}")))?;
        let wait = request
            .metadata()
            .get(WAIT_MS_METADATA)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_millis)
            .min(MAX_SERVE_WAIT);
        let mut from_caller = request.into_inner();
        let dial = match tokio::time::timeout(DIAL_FRAME_TIMEOUT, from_caller.message()).await {
            Ok(Ok(Some(pb::HostFrame { frame: Some(host_frame::Frame::Dial(dial)) }))) => dial,
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no Dial from the calling replica")),
            _ => return Err(Status::invalid_argument("the first frame must be Dial")),
        };
        // The token opens the one request it was minted for, once: another agent, service
        // or request id, or a second use, is refused before any tunnel is claimed.
        claims.check_binding(&binding(&agent_id, &dial)).map_err(refuse)?;
        match self.cluster.replay_guard().admit(&claims) {
            Ok(()) => {}
            Err(TokenError::Busy) => {
                metrics.forward_served("busy");
                return Err(Status::resource_exhausted(TokenError::Busy.to_string()));
            }
            Err(e) => return Err(refuse(e)),
        }
        if !self.ctx.sessions.holds_agent(&agent_id) {
            metrics.forward_served("no_tunnel");
            return Err(Status::not_found("this replica holds no stream of the agent"));
        }
        let dialed = match self.ctx.local.open_raw(&agent_id, &dial, wait).await {
            Ok(d) => d,
            Err(OpenError::Refused { code, message }) => {
                metrics.forward_served("refused");
                let refusal = frames::dial_refused(code, message);
                return Ok(Response::new(Box::pin(futures_util::stream::iter([Ok(refusal)]))));
            }
            // Busy, not absent: the caller must try elsewhere but keep our registration.
            Err(OpenError::NoTunnel { .. }) => {
                metrics.forward_served("busy");
                return Err(Status::unavailable("no free stream of the agent on this replica in time"));
            }
            Err(OpenError::ShuttingDown) => return Err(Status::unavailable("replica is shutting down")),
            Err(e) => {
                metrics.forward_served("failed");
                return Err(Status::unavailable(e.to_string()));
            }
        };
        metrics.forward_served("ok");
        tracing::debug!(%caller, agent_id, service = %dial.service, request_id = %dial.request_id, "serving a forwarded connection");
        let (to_caller, rx) = mpsc::channel(RELAY_CHANNEL);
        // Cannot fail: fresh channel with room.
        let _ = to_caller.try_send(Ok(frames::dial_ok()));
        let metrics = self.ctx.metrics.clone();
        metrics.tunnels_active.inc();
        // The calling replica cannot see the agent's session: it is told here when the
        // workload ends, so its users' sessions end too.
        let ended = dialed.session.identity.clone();
        let cut = dialed.session.cut.clone();
        tokio::spawn(async move {
            relay(from_caller, dialed.outbound, dialed.inbound, to_caller, ended, cut).await;
            metrics.tunnels_active.dec();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Copies frames between the calling replica and the agent until both directions ended
/// or either side reset. A side that vanishes without `Eof`/`Reset` is reported to the
/// other as a `Reset`, so neither end is left half-open. When the agent's workload ends
/// (`ended`), both ends are reset with `WORKLOAD_ENDED`.
async fn relay(
    mut from_caller: Streaming<pb::HostFrame>,
    to_agent: burrow_host_core::registry::HostFrameSender,
    mut from_agent: Streaming<pb::AgentFrame>,
    to_caller: mpsc::Sender<Result<pb::AgentFrame, Status>>,
    ended: Option<Arc<burrow_host_core::registry::SessionIdentity>>,
    cut: CancellationToken,
) {
    let done = CancellationToken::new();
    // Runs beside the two directions (not as a task of its own) until the relay is done.
    let workload_end = {
        let (done, to_agent, to_caller) = (done.clone(), to_agent.clone(), to_caller.clone());
        async move {
            let Some(ended) = ended else { return };
            tokio::select! {
                _ = done.cancelled() => {}
                // The agent's session was cut (it ignored a GoAway, or left): so is this relay.
                _ = cut.cancelled() => {
                    let message = "the agent's session was ended";
                    let _ = to_caller.try_send(Ok(frames::agent_reset(ResetCode::Cancelled, message)));
                    let _ = to_agent.try_send(Ok(frames::host_reset(ResetCode::Cancelled, message)));
                    done.cancel();
                }
                _ = ended.ended.cancelled() => {
                    let message = ended.notice();
                    let _ = to_caller.try_send(Ok(frames::agent_reset(ResetCode::WorkloadEnded, &message)));
                    let _ = to_agent.try_send(Ok(frames::host_reset(ResetCode::WorkloadEnded, &message)));
                    done.cancel();
                }
            }
        }
    };
    let upstream = {
        let done = done.clone();
        let to_agent = to_agent.clone();
        async move {
            let mut saw_eof = false;
            loop {
                let next = tokio::select! {
                    _ = done.cancelled() => return,
                    n = from_caller.message() => n,
                };
                match next {
                    Ok(Some(frame)) => {
                        let end = match &frame.frame {
                            Some(host_frame::Frame::Reset(_)) => true,
                            Some(host_frame::Frame::Eof(_)) => {
                                saw_eof = true;
                                false
                            }
                            Some(host_frame::Frame::Dial(_)) | None => {
                                let _ = to_agent
                                    .send(Ok(frames::host_reset(
                                        ResetCode::ProtocolError,
                                        "calling replica broke the protocol",
                                    )))
                                    .await;
                                done.cancel();
                                return;
                            }
                            _ => false,
                        };
                        if to_agent.send(Ok(frame)).await.is_err() || end {
                            if end {
                                done.cancel();
                            }
                            return;
                        }
                    }
                    // After the caller's Eof the agent side carries on until it ends too.
                    // Without one, the caller went away (a cancelled HTTP/2 stream can
                    // look like a clean end here): the agent must drop its socket.
                    Ok(None) => {
                        if !saw_eof {
                            let _ = to_agent
                                .send(Ok(frames::host_reset(
                                    ResetCode::Cancelled,
                                    "the calling replica went away",
                                )))
                                .await;
                            done.cancel();
                        }
                        return;
                    }
                    Err(_) => {
                        let _ = to_agent
                            .send(Ok(frames::host_reset(
                                ResetCode::Cancelled,
                                "the calling replica went away",
                            )))
                            .await;
                        done.cancel();
                        return;
                    }
                }
            }
        }
    };
    let downstream = {
        let done = done.clone();
        let to_agent = to_agent.clone();
        async move {
            loop {
                let next = tokio::select! {
                    _ = done.cancelled() => {
                        let _ = to_caller.try_send(Ok(frames::agent_reset(ResetCode::Cancelled, "relay cancelled")));
                        return;
                    }
                    // The caller dropped its response stream while the agent is quiet.
                    _ = to_caller.closed() => {
                        let _ = to_agent
                            .send(Ok(frames::host_reset(ResetCode::Cancelled, "the calling replica went away")))
                            .await;
                        done.cancel();
                        return;
                    }
                    n = from_agent.message() => n,
                };
                match next {
                    Ok(Some(frame)) => {
                        let end = matches!(frame.frame, Some(agent_frame::Frame::Reset(_)));
                        if to_caller.send(Ok(frame)).await.is_err() {
                            let _ = to_agent.try_send(Ok(frames::host_reset(
                                ResetCode::Cancelled,
                                "the calling replica went away",
                            )));
                            done.cancel();
                            return;
                        }
                        if end {
                            done.cancel();
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let _ = to_caller
                            .send(Ok(frames::agent_reset(
                                ResetCode::IoError,
                                format!("agent stream failed: {}", status.message()),
                            )))
                            .await;
                        done.cancel();
                        return;
                    }
                }
            }
        }
    };
    let directions = async {
        tokio::join!(upstream, downstream);
        // Both ended cleanly (Eof both ways): the end watch stops too.
        done.cancel();
    };
    tokio::join!(directions, workload_end);
    drop(to_agent);
}

/// Serves the private API on `listener` until `shutdown`, then lets relays in flight
/// finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<HostContext>,
    cluster: Arc<Cluster>,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), ClusterError> {
    let tls = match &cluster.config().tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(super::mtls::server_config(t)?)),
        None => None,
    };
    let handshake_timeout = cluster.config().handshake_timeout;
    let limits = ConnectionLimits::new(cluster.config().max_connections, 0);
    let service = ReplicaTunnelServer::new(ForwardService { ctx, cluster })
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    // Until the peer has proved itself (its TLS handshake with a replica certificate, or
    // in cleartext at least the HTTP/2 preface) it gets `handshake_timeout`, so a slow or
    // silent connection cannot sit here; only other replicas dial this port, so beyond
    // `cluster.max_connections` a connection is closed at once.
    let incoming: Incoming<CallerIo> = Incoming::new(
        listener,
        limits,
        handshake_timeout,
        shutdown.clone(),
        "replica API",
        move |tcp: TcpStream| {
            let tls = tls.clone();
            async move {
                match tls {
                    None => {
                        h2_preface(&tcp).await.map_err(|e| format!("no HTTP/2 preface: {e}"))?;
                        Ok(Either::Left(tcp))
                    }
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(tls) => Ok(Either::Right(Box::new(tls))),
                        Err(e) => {
                            // A caller without a certificate from the cluster CA ends here.
                            tracing::warn!(error = %e, "replica API TLS handshake failed");
                            Err(format!("TLS handshake: {e}"))
                        }
                    },
                }
            }
        },
    );
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(service);
    // Polled here, not spawned: dropping this future (the host aborting it) drops the
    // listener with it.
    let served = server.serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    tokio::pin!(served);
    tokio::select! {
        r = &mut served => return r.map_err(ClusterError::from),
        _ = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(grace, &mut served).await {
        Ok(r) => r.map_err(ClusterError::from),
        Err(_) => Ok(()),
    }
}

/// TCP or TLS-over-TCP from a calling replica.
type CallerIo = Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;
