//! The `AgentTunnel` gRPC service: agent handshake (`Control`) and parked tunnels (`Tunnel`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use burrow_proto::pb::{self, agent_control, host_control, AgentControl, HostControl};
use burrow_proto::{PROTOCOL_MINOR, PROTOCOL_VERSION, RETRY_AFTER_METADATA, SESSION_METADATA};
use futures_util::Stream;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::io::AgentConnInfo;
use crate::context::HostContext;
use crate::plugins::{AgentAuthOutcome, AgentAuthRequest};
use crate::ratelimit::ConnectRateLimiter;
use crate::registry::{IdleTunnel, Session};

/// Frames buffered per tunnel in the host → agent direction. Small on purpose: HTTP/2
/// flow control, not this queue, absorbs a slow agent.
const TUNNEL_CHANNEL: usize = 4;

pub(crate) struct TunnelService {
    pub ctx: Arc<HostContext>,
    pub handshake_timeout: Duration,
    pub limiter: Arc<ConnectRateLimiter>,
    /// GoAway after this long (jittered ±10%); `None`: never.
    pub max_connection_age: Option<Duration>,
    /// After the age GoAway, how long tunnels in flight may continue before the
    /// connection is cut.
    pub connection_age_grace: Duration,
}

/// `age` ±10%, so agents that connected together (after a deploy) leave at different times.
fn jittered(age: Duration) -> Duration {
    age.mul_f64(rand::random_range(0.9..1.1))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn bearer_token(metadata: &MetadataMap) -> Result<String, Status> {
    let value = metadata.get("authorization").ok_or_else(|| {
        Status::unauthenticated("missing authorization metadata (expected: Bearer <agent token>)")
    })?;
    let value = value.to_str().map_err(|_| Status::unauthenticated("authorization metadata is not ASCII"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(token.trim().to_owned())
        }
        _ => Err(Status::unauthenticated("authorization metadata must be: Bearer <agent token>")),
    }
}

fn go_away(reason: &str) -> HostControl {
    HostControl {
        msg: Some(host_control::Msg::GoAway(pb::GoAway { reason: reason.into(), reconnect_after_ms: 0 })),
    }
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn new_session_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

impl TunnelService {
    fn remote(req_info: Option<&AgentConnInfo>) -> String {
        req_info.map(|i| format!("{} via {}", i.remote_addr, i.transport.scheme())).unwrap_or_default()
    }
}

#[tonic::async_trait]
impl pb::agent_tunnel_server::AgentTunnel for TunnelService {
    type ControlStream = BoxStream<HostControl>;
    type TunnelStream = BoxStream<pb::HostFrame>;

    async fn control(
        &self,
        request: Request<Streaming<AgentControl>>,
    ) -> Result<Response<Self::ControlStream>, Status> {
        if self.ctx.shutdown.is_cancelled() {
            return Err(Status::unavailable("host is shutting down; reconnect"));
        }
        let token = bearer_token(request.metadata())?;
        let conn_info = request.extensions().get::<AgentConnInfo>().cloned();
        let remote = Self::remote(conn_info.as_ref());
        let token_sha256 = sha256(&token);
        if let Err(limited) = self.limiter.check(&token_sha256).await {
            self.ctx.metrics.agent_connect("rate_limited");
            tracing::warn!(%remote, limit = limited.limit, "agent connection attempt over the per-token rate limit");
            let mut status = Status::resource_exhausted(limited.to_string());
            if let Ok(v) = limited.retry_after.as_millis().to_string().parse() {
                status.metadata_mut().insert(RETRY_AFTER_METADATA, v);
            }
            return Err(status);
        }
        let mut inbound = request.into_inner();

        let hello = match tokio::time::timeout(self.handshake_timeout, inbound.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no Hello within the handshake timeout")),
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => return Err(Status::cancelled("agent closed the control stream before Hello")),
            Ok(Ok(Some(AgentControl { msg: Some(agent_control::Msg::Hello(hello)) }))) => hello,
            Ok(Ok(Some(_))) => {
                return Err(Status::invalid_argument("the first Control message must be Hello"))
            }
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            tracing::warn!(%remote, agent_version = %hello.agent_version, protocol = hello.protocol_version, "agent speaks an unsupported protocol version");
            return Err(Status::failed_precondition(format!(
                "agent speaks tunnel protocol v{} but this host speaks v{PROTOCOL_VERSION}; upgrade the {}",
                hello.protocol_version,
                if hello.protocol_version < PROTOCOL_VERSION { "agent" } else { "host" }
            )));
        }

        let auth_request = AgentAuthRequest {
            token: token.clone(),
            agent_version: hello.agent_version.clone(),
            replica_id: hello.replica_id.clone(),
            remote_addr: remote.clone(),
            services: hello.services.clone(),
        };
        // The call may take up to the plugin's deadline: it runs on a plugin thread.
        let outcome = self
            .ctx
            .plugins
            .run_async(move |plugins| plugins.authenticate_agent(&auth_request))
            .await
            .and_then(|outcome| outcome);
        let identity = match outcome {
            Ok(AgentAuthOutcome::Accepted(identity)) => identity,
            Ok(AgentAuthOutcome::Rejected { reason }) => {
                self.ctx.metrics.agent_connect("rejected");
                tracing::info!(%remote, replica_id = %hello.replica_id, %reason, "agent rejected by the authorizer");
                return Err(Status::unauthenticated(format!("agent token rejected: {reason}")));
            }
            Err(e) => {
                self.ctx.metrics.agent_connect("unavailable");
                tracing::warn!(%remote, error = %e, "authorizer plugin failed; refusing the agent (fail closed)");
                return Err(Status::unavailable(format!("authorizer plugin failed: {e}")));
            }
        };

        let session = Arc::new(Session {
            agent_id: identity.agent_id.clone(),
            agent_replica_id: hello.replica_id.clone(),
            session_id: new_session_id(),
            remote_addr: remote.clone(),
            token_sha256,
        });
        self.ctx.session_opened(&session);
        self.ctx.metrics.agent_connect("accepted");
        tracing::info!(
            agent_id = %session.agent_id, replica_id = %session.agent_replica_id, %remote,
            agent_version = %hello.agent_version, services = ?hello.services, "agent connected"
        );

        let (tx, rx) = mpsc::channel(4);
        let welcome = HostControl {
            msg: Some(host_control::Msg::Welcome(pb::Welcome {
                protocol_version: PROTOCOL_VERSION,
                protocol_minor: PROTOCOL_MINOR,
                host_replica_id: self.ctx.replica_id.clone(),
                agent_id: session.agent_id.clone(),
                session_id: session.session_id.clone(),
            })),
        };
        // Cannot fail: the channel is fresh and has room.
        let _ = tx.try_send(Ok(welcome));

        let ctx = self.ctx.clone();
        let max_age = self.max_connection_age.map(jittered);
        let age_grace = self.connection_age_grace;
        tokio::spawn(async move {
            // Agents send nothing after Hello; the stream ending means the agent left.
            let agent_left = async { while let Ok(Some(_)) = inbound.message().await {} };
            let aged = async {
                match max_age {
                    Some(age) => tokio::time::sleep(age).await,
                    None => std::future::pending().await,
                }
            };
            let reason = tokio::select! {
                _ = ctx.shutdown.cancelled() => {
                    let _ = tx.send(Ok(go_away("host is shutting down"))).await;
                    "host shutdown"
                }
                _ = agent_left => "agent disconnected",
                _ = tx.closed() => "control stream closed",
                _ = aged => {
                    tracing::info!(agent_id = %session.agent_id, remote = %session.remote_addr, "connection reached its maximum age; asking the agent to reconnect");
                    let _ = tx.send(Ok(go_away("connection reached its maximum age"))).await;
                    // The agent reconnects (maybe elsewhere) and lets tunnels in flight on
                    // this connection finish; past the grace period the host cuts it.
                    if let Some(info) = conn_info {
                        tokio::spawn(async move {
                            tokio::time::sleep(age_grace).await;
                            info.kill.cancel();
                        });
                    }
                    "connection reached its maximum age"
                }
            };
            ctx.session_closed(&session);
            tracing::info!(agent_id = %session.agent_id, replica_id = %session.agent_replica_id, remote = %session.remote_addr, reason, "agent session ended");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn tunnel(
        &self,
        request: Request<Streaming<pb::AgentFrame>>,
    ) -> Result<Response<Self::TunnelStream>, Status> {
        if self.ctx.shutdown.is_cancelled() {
            return Err(Status::unavailable("host is shutting down; reconnect"));
        }
        let token = bearer_token(request.metadata())?;
        let session_id = request
            .metadata()
            .get(SESSION_METADATA)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated(format!("missing {SESSION_METADATA} metadata")))?;
        let session =
            self.ctx.sessions.read().unwrap_or_else(|p| p.into_inner()).get(session_id).cloned().ok_or_else(
                || Status::unauthenticated("unknown or expired session; reconnect the control stream"),
            )?;
        if !bool::from(sha256(&token).ct_eq(&session.token_sha256)) {
            return Err(Status::unauthenticated("token does not match the session"));
        }
        let (tx, rx) = mpsc::channel(TUNNEL_CHANNEL);
        self.ctx.registry.register(IdleTunnel { inbound: request.into_inner(), outbound: tx, session });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&md("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(&md("bearer  abc ")).unwrap(), "abc");
        assert_eq!(bearer_token(&md("Basic abc")).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(bearer_token(&md("Bearer ")).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(bearer_token(&MetadataMap::new()).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn session_ids_are_unique_and_long() {
        let a = new_session_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_session_id());
    }
}
