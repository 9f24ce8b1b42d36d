//! The agent port: one listener for every agent transport.
//!
//! Cleartext connections are sniffed (HTTP/2 preface → gRPC; HTTP/1.1 → must be a
//! WebSocket upgrade carrying gRPC); TLS connections are routed by ALPN. Every accepted
//! transport ends up as an [`io::AgentConn`] on one channel feeding one tonic server, so
//! the RPC code never knows how the agent arrived.
//!
//! # Layout
//! - this file: [`serve`], the accept loop (TLS by ALPN or sniffing, one tonic server).
//! - [`sniff`]: tells gRPC, WebSocket and TLS apart from a connection's first bytes.
//! - [`io`]: [`io::AgentConn`], any transport as one byte stream for tonic.
//! - `grpc`: the `AgentTunnel` service: authentication, the control stream, parked tunnels.
//! - [`expiry`]: ends an agent's session when its identity expires.
//! - [`ratelimit`]: connection attempts per token per minute, shared through Redis when
//!   clustered.
//! - `limits`: tunnels open per agent identity (parked + active), capped.
//! - `config`: the `[agents]` table.

mod config;
pub mod expiry;
mod grpc;
pub mod io;
mod limits;
pub mod ratelimit;
pub mod sniff;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

pub use config::AgentListenerConfig;
use io::{AgentConn, Io, Prefixed, Transport};
use sniff::{classify, Sniff};

use burrow_host_core::context::HostContext;

/// The agent port failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentServerError {
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] burrow_host_tls::TlsError),
    /// The gRPC server stopped with an error.
    #[error("agent gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

type ConnSender = mpsc::Sender<Result<AgentConn, std::io::Error>>;

/// How long agents get to withdraw their parked tunnels after GoAway, during a drain.
const GOAWAY_HEAD_START: Duration = Duration::from_secs(1);

struct Acceptor {
    config: Arc<AgentListenerConfig>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    conns: ConnSender,
}

/// Serves agents on `listener` until `shutdown` is cancelled, then drains: agents are
/// told to go away, parked tunnels are dropped, and tunnels in use get `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    config: Arc<AgentListenerConfig>,
    ctx: Arc<HostContext>,
    rate_store: Option<Arc<burrow_host_redis::Store>>,
    lifecycle: Option<Arc<burrow_host_workloads::Lifecycle>>,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), AgentServerError> {
    let tls = match &config.tls {
        Some(tls) => {
            Some(tokio_rustls::TlsAcceptor::from(burrow_host_tls::server_config(tls, &[b"h2", b"http/1.1"])?))
        }
        None => None,
    };
    let (conns, incoming) = mpsc::channel(64);
    let acceptor = Arc::new(Acceptor { config: config.clone(), tls, conns });
    let limits = io::ConnectionLimits::new(config.max_connections, config.max_connections_per_address);

    let service = pb_server(ctx.clone(), rate_store, lifecycle, &config);
    let grpc = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_streams_per_connection)
        .initial_stream_window_size(config.stream_window_bytes)
        .initial_connection_window_size(config.connection_window_bytes)
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .add_service(service);
    let grpc_shutdown = shutdown.clone();
    let mut grpc_task = tokio::spawn(async move {
        grpc.serve_with_incoming_shutdown(ReceiverStream::new(incoming), grpc_shutdown.cancelled_owned())
            .await
    });

    let sweeper = {
        let registry = ctx.registry.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => registry.sweep(),
                }
            }
        })
    };

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    // Counted from accept, before anything is read: a source that opens
                    // connections and says nothing cannot hold more than its share.
                    let slot = match limits.acquire(remote.ip()) {
                        Ok(slot) => slot,
                        Err(io::ConnectionRefused::Address) => {
                            tracing::debug!(%remote, "agent port: too many connections from this address; closed");
                            ctx.metrics.agent_connect("address_limited");
                            drop(stream);
                            continue;
                        }
                        Err(io::ConnectionRefused::Port) => {
                            tracing::debug!(%remote, "agent port: at its connection cap; closed");
                            ctx.metrics.agent_connect("port_limited");
                            drop(stream);
                            continue;
                        }
                    };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move { acceptor.handle(stream, remote, slot).await });
                }
                Err(e) => {
                    // EMFILE and friends: keep serving the connections we have.
                    tracing::warn!(error = %e, "agent port accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    sweeper.abort();
    // Agents act on GoAway by cancelling their parked tunnels and reconnecting at once.
    // Give them a moment to do so before dropping what is left: a tunnel the host drops
    // first looks like a failure to the agent, which then waits out a backoff delay.
    let deadline = tokio::time::Instant::now() + GOAWAY_HEAD_START;
    while tokio::time::Instant::now() < deadline {
        ctx.registry.sweep();
        if ctx.registry.stats().idle_tunnels == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Parked tunnels would otherwise hold the graceful shutdown open forever.
    ctx.registry.close();
    tracing::info!(grace = ?grace, "agent port draining");
    match tokio::time::timeout(grace, &mut grpc_task).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => tracing::error!(error = %join, "agent gRPC server task failed"),
        Err(_) => {
            tracing::warn!("agent tunnels still open after the grace period; closing them");
            grpc_task.abort();
        }
    }
    Ok(())
}

/// `rate_store`, in cluster mode, shares the connection rate limit across replicas.
fn pb_server(
    ctx: Arc<HostContext>,
    rate_store: Option<Arc<burrow_host_redis::Store>>,
    lifecycle: Option<Arc<burrow_host_workloads::Lifecycle>>,
    config: &AgentListenerConfig,
) -> burrow_proto::pb::agent_tunnel_server::AgentTunnelServer<grpc::TunnelService> {
    burrow_proto::pb::agent_tunnel_server::AgentTunnelServer::new(grpc::TunnelService {
        ctx,
        handshake_timeout: config.handshake_timeout,
        limiter: Arc::new(crate::ratelimit::ConnectRateLimiter::with_address_limit(
            config.connect_rate_limit,
            rate_store,
            config.connect_rate_limit_per_address,
        )),
        max_connection_age: (!config.max_connection_age.is_zero()).then_some(config.max_connection_age),
        connection_age_grace: config.connection_age_grace,
        lifecycle,
        max_sessions_per_agent: config.max_sessions_per_agent,
        max_parked_tunnels_per_agent: config.max_parked_tunnels_per_agent,
        streams: crate::limits::AgentStreams::new(config.max_streams_per_agent),
    })
    .max_decoding_message_size(burrow_proto::MAX_MESSAGE_SIZE)
    // Work items are the one thing larger than a data frame, and only the host sends them.
    .max_encoding_message_size(burrow_proto::MAX_HOST_MESSAGE_SIZE)
}

impl Acceptor {
    async fn handle(self: Arc<Self>, stream: TcpStream, remote: SocketAddr, slot: io::ConnectionSlot) {
        let _ = stream.set_nodelay(true);
        let result = match &self.tls {
            Some(tls) => self.handle_tls(tls.clone(), stream, remote, slot).await,
            None => self.handle_cleartext(stream, remote, slot).await,
        };
        if let Err(reason) = result {
            tracing::info!(%remote, %reason, "agent port: closed connection");
        }
    }

    async fn handle_cleartext(
        &self,
        mut stream: TcpStream,
        remote: SocketAddr,
        slot: io::ConnectionSlot,
    ) -> Result<(), String> {
        let mut buf = BytesMut::with_capacity(64);
        let sniffed = tokio::time::timeout(self.config.preface_timeout, async {
            loop {
                match classify(&buf) {
                    Sniff::NeedMore => {}
                    decided => return Ok(decided),
                }
                if stream.read_buf(&mut buf).await.map_err(|e| format!("read failed: {e}"))? == 0 {
                    return Err("connection closed before a protocol preface".to_owned());
                }
            }
        })
        .await
        .map_err(|_| format!("no protocol preface within {:?}", self.config.preface_timeout))??;
        let io = Prefixed::new(buf.freeze(), stream);
        match sniffed {
            Sniff::Http2 => self.hand_to_grpc(io, remote, Transport::Grpc, slot).await,
            Sniff::Http1 => self.serve_websocket(io, remote, Transport::Ws, slot).await,
            Sniff::Garbage(why) => Err(format!("rejected: {why}")),
            Sniff::NeedMore => unreachable!("the loop only returns a decision"),
        }
    }

    async fn handle_tls(
        &self,
        tls: tokio_rustls::TlsAcceptor,
        stream: TcpStream,
        remote: SocketAddr,
        slot: io::ConnectionSlot,
    ) -> Result<(), String> {
        let stream = tokio::time::timeout(self.config.preface_timeout, tls.accept(stream))
            .await
            .map_err(|_| format!("no TLS handshake within {:?}", self.config.preface_timeout))?
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        if h2 {
            self.hand_to_grpc(stream, remote, Transport::Grpcs, slot).await
        } else {
            self.serve_websocket(stream, remote, Transport::Wss, slot).await
        }
    }

    async fn hand_to_grpc(
        &self,
        io: impl Io,
        remote: SocketAddr,
        transport: Transport,
        slot: io::ConnectionSlot,
    ) -> Result<(), String> {
        let conn = AgentConn::new(Box::new(io), remote, transport, self.config.handshake_timeout, slot);
        self.conns.send(Ok(conn)).await.map_err(|_| "host is shutting down".to_owned())
    }

    /// Serves one HTTP/1.1 connection that must upgrade to a WebSocket with Burrow's
    /// subprotocol; the upgraded socket then carries HTTP/2 to the gRPC server.
    async fn serve_websocket(
        &self,
        io: impl Io,
        remote: SocketAddr,
        transport: Transport,
        slot: io::ConnectionSlot,
    ) -> Result<(), String> {
        // The HTTP/1.1 connection holds the slot until it upgrades; the upgraded agent
        // connection then holds it (one slot per TCP connection either way).
        let slot = Arc::new(std::sync::Mutex::new(Some(slot)));
        let conns = self.conns.clone();
        let deadline = self.config.handshake_timeout;
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let conns = conns.clone();
            let slot = slot.clone();
            async move {
                Ok::<_, std::convert::Infallible>(websocket_upgrade(
                    req, conns, remote, transport, deadline, slot,
                ))
            }
        });
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // Not keep_alive(false): hyper would then overwrite `Connection: Upgrade` on the
            // 101 with `close`. An idle keep-alive connection is cut by the header timeout.
            .header_read_timeout(self.config.preface_timeout)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
            .await
            .map_err(|e| format!("HTTP/1.1 on the agent port: {e}"))
    }
}

fn plain(status: StatusCode, message: &str) -> Response<Full<bytes::Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(bytes::Bytes::from(format!("{message}\n"))))
        .expect("static response parts are valid")
}

fn header_has_token(req: &Request<Incoming>, name: http::header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn websocket_upgrade(
    mut req: Request<Incoming>,
    conns: ConnSender,
    remote: SocketAddr,
    transport: Transport,
    deadline: Duration,
    slot: Arc<std::sync::Mutex<Option<io::ConnectionSlot>>>,
) -> Response<Full<bytes::Bytes>> {
    let path = req.uri().path();
    if path.trim_end_matches('/') != burrow_proto::WS_PATH {
        return plain(
            StatusCode::NOT_FOUND,
            &format!(
                "this is a Burrow agent port: agents connect to ws(s)://<host>:<port>{}",
                burrow_proto::WS_PATH
            ),
        );
    }
    let upgrade_ok = header_has_token(&req, http::header::CONNECTION, "upgrade")
        && header_has_token(&req, http::header::UPGRADE, "websocket")
        && req.headers().get(http::header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let Some(key) = req.headers().get(http::header::SEC_WEBSOCKET_KEY).cloned().filter(|_| upgrade_ok) else {
        return plain(
            StatusCode::UPGRADE_REQUIRED,
            "this port accepts Burrow agents only: gRPC over HTTP/2, or a WebSocket (version 13) upgrade",
        );
    };
    if !header_has_token(&req, http::header::SEC_WEBSOCKET_PROTOCOL, burrow_proto::WS_SUBPROTOCOL) {
        return plain(
            StatusCode::BAD_REQUEST,
            &format!(
                "missing WebSocket subprotocol {:?}; is this a Burrow agent?",
                burrow_proto::WS_SUBPROTOCOL
            ),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(burrow_proto::ws::ws_server_config()),
                )
                .await;
                let io = burrow_proto::ws::WsIo::new(ws);
                let slot = slot.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
                let conn = AgentConn::new(Box::new(io), remote, transport, deadline, slot);
                let _ = conns.send(Ok(conn)).await;
            }
            Err(e) => tracing::info!(%remote, error = %e, "agent WebSocket upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::SEC_WEBSOCKET_ACCEPT, derive_accept_key(key.as_bytes()))
        .header(http::header::SEC_WEBSOCKET_PROTOCOL, burrow_proto::WS_SUBPROTOCOL)
        .body(Full::new(bytes::Bytes::new()))
        .expect("static response parts are valid")
}
