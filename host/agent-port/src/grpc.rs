//! The `AgentTunnel` gRPC service: agent handshake (`Control`) and parked tunnels (`Tunnel`).

mod wire;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use burrow_host_workloads::{AgentRefusal, Lifecycle, TOKEN_PREFIX};
use burrow_proto::pb::{self, agent_control, host_control, AgentControl, HostControl};
use burrow_proto::{PROTOCOL_MINOR, PROTOCOL_VERSION, RETRY_AFTER_METADATA, SESSION_METADATA};
use futures_util::Stream;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use self::wire::{
    bearer_token, final_status, go_away, go_away_with, handshake_metadata, jittered, new_session_id,
    refusal_status, sha256, tunnel_refusal,
};
use super::io::AgentConnInfo;
use crate::ratelimit::ConnectRateLimiter;
use burrow_host_core::context::HostContext;
use burrow_host_core::registry::{IdleTunnel, Recheck, Session, SessionIdentity};
use burrow_host_plugins::types::{AgentAuthOutcome, AgentEvent, AgentHello, ExpiryRequest};

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
    /// The workload lifecycle (`[control]`): verifies workload tokens (`bwt1.`) and
    /// serves renewals and work queues. `None`: only the authorizer's agents.
    pub lifecycle: Option<Arc<Lifecycle>>,
    /// Sessions one agent identity may hold here (0: no cap).
    pub max_sessions_per_agent: usize,
    /// Tunnels one agent identity may keep parked here (0: no cap).
    pub max_parked_tunnels_per_agent: usize,
    /// Tunnels (parked + active) open per agent identity here, capped.
    pub streams: crate::limits::AgentStreams,
}

/// After a workload ends, how long its agent gets to act on the GoAway before the host
/// cuts the connection, and with it every stream still open through it (well inside the
/// one second in which a terminated workload's users must be cut off).
const ENDED_GRACE: Duration = Duration::from_millis(300);

/// Longest long poll for work.
const MAX_WORK_WAIT: Duration = Duration::from_secs(60);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// After `grace`, cuts the session's tunnels wherever they run ([`Session::cut`]) and the
/// TCP connection its control stream came on.
fn cut_after(info: Option<&AgentConnInfo>, session: &Session, grace: Duration) {
    let kill = info.map(|i| i.kill.clone());
    let cut = session.cut.clone();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        cut.cancel();
        if let Some(kill) = kill {
            kill.cancel();
        }
    });
}

/// What a lifecycle hook needs, detached from `&self` so the session task can use it.
struct LifecycleNotifier {
    ctx: Arc<HostContext>,
}

impl LifecycleNotifier {
    fn lifecycle(&self, session: &Session, connected: bool) {
        notify_lifecycle(&self.ctx, session, connected);
    }
}

fn notify_lifecycle(ctx: &Arc<HostContext>, session: &Session, connected: bool) {
    let Some(id) = &session.identity else { return };
    let event = AgentEvent {
        agent_id: session.agent_id.clone(),
        workload_id: id.identity.workload_id.clone(),
        replica_id: session.agent_replica_id.clone(),
        host_replica: ctx.replica_id.clone(),
        remote_addr: session.remote_addr.clone(),
        at: burrow_host_time::now_ms(),
        agent_labels: id.identity.labels.clone(),
    };
    ctx.plugins.agent_event(&id.identity.workload_kind, connected, event);
}

impl TunnelService {
    fn lifecycle(&self, session: &Session, connected: bool) {
        notify_lifecycle(&self.ctx, session, connected);
    }

    fn clone_for_task(&self) -> LifecycleNotifier {
        LifecycleNotifier { ctx: self.ctx.clone() }
    }

    /// What the authorizer is asked about an agent.
    fn hello_request(
        &self,
        token: &str,
        hello: &pb::Hello,
        remote: &str,
        request_metadata: &MetadataMap,
    ) -> AgentHello {
        AgentHello {
            token: token.to_owned(),
            agent_version: hello.agent_version.clone(),
            replica_id: hello.replica_id.clone(),
            remote_addr: remote.to_owned(),
            services: hello.services.clone(),
            metadata: handshake_metadata(request_metadata),
        }
    }

    /// The identity the authorizer plugin gives a (non-workload) token.
    async fn plugin_identity(
        &self,
        token: &str,
        hello: &pb::Hello,
        remote: &str,
        request_metadata: &MetadataMap,
    ) -> Result<burrow_host_plugins::types::AgentIdentity, Status> {
        let hello_request = self.hello_request(token, hello, remote, request_metadata);
        match self.ctx.plugins.authenticate_agent(&hello_request).await {
            Ok(AgentAuthOutcome::Accepted(identity)) => Ok(identity),
            Ok(AgentAuthOutcome::Rejected(reason)) => {
                self.ctx.metrics.agent_connect("rejected");
                tracing::info!(%remote, replica_id = %hello.replica_id, %reason, "agent rejected by the authorizer");
                Err(Status::unauthenticated(format!("agent token rejected: {reason}")))
            }
            Err(e) => {
                self.ctx.metrics.agent_connect("unavailable");
                tracing::warn!(%remote, error = %e, "authorizer plugin failed; refusing the agent (fail closed)");
                Err(Status::unavailable(format!("authorizer plugin failed: {e}")))
            }
        }
    }

    /// The session an RPC names (`burrow-session`), after checking its token: the one the
    /// session connected with, the one its last renewal handed out, or any valid workload
    /// token for the same agent (the agent renewed on another of its connections).
    fn session_of(&self, metadata: &MetadataMap) -> Result<(Arc<Session>, String), Status> {
        let token = bearer_token(metadata)?;
        let session_id = metadata
            .get(SESSION_METADATA)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated(format!("missing {SESSION_METADATA} metadata")))?;
        let session = self.ctx.sessions.get(session_id).ok_or_else(|| {
            Status::unauthenticated("unknown or expired session; reconnect the control stream")
        })?;
        if let Some(identity) = &session.identity {
            if identity.ended.is_cancelled() {
                let (code, message) = identity.reason();
                let final_code = match code {
                    pb::GoAwayCode::WorkloadTerminated => burrow_proto::FINAL_WORKLOAD_TERMINATED,
                    pb::GoAwayCode::TokenExpired => burrow_proto::FINAL_TOKEN_EXPIRED,
                    pb::GoAwayCode::TokenRevoked => burrow_proto::FINAL_TOKEN_REVOKED,
                    _ => burrow_proto::FINAL_WORKLOAD_ENDED,
                };
                return Err(final_status(tonic::Code::FailedPrecondition, final_code, message));
            }
        }
        let presented = sha256(&token);
        let renewed = session
            .identity
            .as_ref()
            .and_then(|i| *i.renewed_token_sha256.lock().unwrap_or_else(|p| p.into_inner()));
        let known = bool::from(presented.ct_eq(&session.token_sha256))
            || renewed.is_some_and(|r| bool::from(presented.ct_eq(&r)));
        if !known {
            let same_agent = token.starts_with(TOKEN_PREFIX)
                && self.lifecycle.as_ref().is_some_and(|l| {
                    l.verify(&token).is_ok_and(|claims| {
                        session.identity.as_ref().is_some_and(|i| {
                            claims.agent_id == session.agent_id
                                && claims.workload_id == i.identity.workload_id
                                && claims.kind == i.identity.workload_kind
                        })
                    })
                });
            if !same_agent {
                return Err(Status::unauthenticated("token does not match the session"));
            }
        }
        Ok((session, token))
    }

    /// The lifecycle and the workload of a session that connected with a workload token.
    fn workload_session(
        &self,
        metadata: &MetadataMap,
    ) -> Result<(Arc<Lifecycle>, Arc<Session>, String), Status> {
        let lifecycle = self
            .lifecycle
            .clone()
            .ok_or_else(|| Status::failed_precondition("this host runs no workload lifecycle ([control])"))?;
        let (session, token) = self.session_of(metadata)?;
        let managed = session.identity.as_ref().is_some_and(|i| {
            i.identity
                .labels
                .iter()
                .any(|(k, v)| k == burrow_host_workloads::record::MANAGED_LABEL && v == "true")
        });
        if !managed {
            return Err(Status::failed_precondition(
                "only agents of control-plane workloads (workload tokens) renew tokens and take work",
            ));
        }
        Ok((lifecycle, session, token))
    }

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
        let conn_info = request.extensions().get::<AgentConnInfo>().cloned();
        let remote = Self::remote(conn_info.as_ref());
        if let Some(info) = &conn_info {
            if let Err(limited) = self.limiter.check_address(info.remote_addr.ip()) {
                self.ctx.metrics.agent_connect("rate_limited");
                tracing::warn!(%remote, limit = limited.limit, "agent connection attempts over the per-address rate limit");
                let mut status = Status::resource_exhausted(limited.to_string());
                if let Ok(v) = limited.retry_after.as_millis().to_string().parse() {
                    status.metadata_mut().insert(RETRY_AFTER_METADATA, v);
                }
                return Err(status);
            }
        }
        let token = bearer_token(request.metadata())?;
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
        let request_metadata = request.metadata().clone();
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

        let mut workload_ends_at = 0;
        let mut recheck = None;
        let identity = if let (true, Some(lifecycle)) = (token.starts_with(TOKEN_PREFIX), &self.lifecycle) {
            match lifecycle.authenticate(&token).await {
                Ok(accepted) => {
                    let allowed = &accepted.claims.services;
                    if let Some(extra) =
                        hello.services.iter().find(|s| !allowed.is_empty() && !allowed.contains(s))
                    {
                        self.ctx.metrics.agent_connect("rejected");
                        return Err(Status::permission_denied(format!(
                            "service {extra:?} is not among the workload's services {allowed:?}"
                        )));
                    }
                    workload_ends_at = accepted.workload_ends_at;
                    accepted.identity
                }
                Err(refusal) => {
                    let unavailable = matches!(refusal, AgentRefusal::Unavailable(_));
                    self.ctx.metrics.agent_connect(if unavailable { "unavailable" } else { "rejected" });
                    tracing::info!(%remote, replica_id = %hello.replica_id, %refusal, "workload agent refused");
                    return Err(refusal_status(refusal));
                }
            }
        } else {
            let version = self.ctx.plugins.agent_authenticator_version();
            let identity = self.plugin_identity(&token, &hello, &remote, &request_metadata).await?;
            recheck = Some(Recheck {
                hello: self.hello_request(&token, &hello, &remote, &request_metadata),
                accepted_by: version,
            });
            identity
        };
        let now = burrow_host_time::now_ms();
        if identity.expires_at.is_some_and(|at| at <= now) {
            self.ctx.metrics.agent_connect("rejected");
            return Err(Status::permission_denied(format!(
                "the identity of agent {:?} has expired; get a new token",
                identity.agent_id
            )));
        }
        if !self.ctx.plugins.serves_kind(&identity.workload_kind) {
            self.ctx.metrics.agent_connect("rejected");
            tracing::warn!(%remote, agent_id = %identity.agent_id, kind = %identity.workload_kind, "no workload plugin serves the agent's workload kind");
            return Err(Status::failed_precondition(format!(
                "no workload plugin on this host serves workload kind {:?}",
                identity.workload_kind
            )));
        }
        if self.max_sessions_per_agent > 0
            && self.ctx.sessions.sessions_of(&identity.agent_id) >= self.max_sessions_per_agent
        {
            self.ctx.metrics.agent_connect("rate_limited");
            tracing::warn!(%remote, agent_id = %identity.agent_id, cap = self.max_sessions_per_agent, "agent refused: it holds as many sessions here as allowed");
            let mut status = Status::resource_exhausted(format!(
                "agent {:?} already holds {} sessions on this replica (agents.max_sessions_per_agent)",
                identity.agent_id, self.max_sessions_per_agent
            ));
            status
                .metadata_mut()
                .insert(RETRY_AFTER_METADATA, tonic::metadata::MetadataValue::from(10_000u64));
            return Err(status);
        }
        let expiry = ExpiryRequest {
            workload_id: identity.workload_id.clone(),
            agent_id: identity.agent_id.clone(),
            connected_at: now,
            agent_labels: identity.labels.clone(),
        };
        match self.ctx.plugins.expired(&identity.workload_kind, &expiry).await {
            Ok(true) => {
                self.ctx.ended.mark(&identity.workload_kind, &identity.workload_id);
                self.ctx.metrics.agent_connect("rejected");
                tracing::info!(%remote, agent_id = %identity.agent_id, workload = %identity.workload_id, "agent refused: its workload has ended");
                return Err(Status::failed_precondition(format!(
                    "workload {:?} ({}) has ended",
                    identity.workload_id, identity.workload_kind
                )));
            }
            Ok(false) => self.ctx.ended.clear(&identity.workload_kind, &identity.workload_id),
            // The expiry check runs again periodically; a failing check must not lock
            // every agent out.
            Err(e) => {
                tracing::warn!(agent_id = %identity.agent_id, "workload expiry check failed at connect: {e}")
            }
        }

        let expires_at = identity.expires_at;
        let session = Arc::new(Session {
            agent_id: identity.agent_id.clone(),
            agent_replica_id: hello.replica_id.clone(),
            session_id: new_session_id(),
            remote_addr: remote.clone(),
            token_sha256,
            protocol_minor: hello.protocol_minor,
            identity: Some(Arc::new({
                let identity = SessionIdentity::new(identity, now, workload_ends_at);
                *identity.recheck.lock().unwrap_or_else(|p| p.into_inner()) = recheck;
                identity
            })),
            retired: Default::default(),
            cut: Default::default(),
        });
        // A second session of one agent process here is its duplicate connection (fewer
        // replicas than its `--connections`) or a probe for another replica, which it
        // repeats for as long as it runs: routine after the first, so at DEBUG.
        let repeat = self
            .ctx
            .sessions
            .snapshot()
            .iter()
            .any(|s| s.agent_id == session.agent_id && s.agent_replica_id == session.agent_replica_id);
        self.ctx.sessions.opened(&session);
        self.ctx.metrics.agent_connect("accepted");
        self.lifecycle(&session, true);
        if repeat {
            tracing::debug!(
                agent_id = %session.agent_id, replica_id = %session.agent_replica_id, %remote,
                "agent connected again (a second connection of the same agent process)"
            );
        } else {
            tracing::info!(
                agent_id = %session.agent_id, replica_id = %session.agent_replica_id, %remote,
                agent_version = %hello.agent_version, services = ?hello.services, "agent connected"
            );
        }

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
        if let Some(info) = &conn_info {
            info.mark_authenticated();
        }

        let ctx = self.ctx.clone();
        let ended = session.identity.as_ref().map(|i| i.ended.clone()).unwrap_or_default();
        let _ = expires_at;
        let identity = session.identity.clone();
        let service = self.clone_for_task();
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
            // Re-read on waking: a renewal moves the end on.
            let identity_expired = async {
                let Some(identity) = &identity else { return std::future::pending().await };
                loop {
                    let token_end = identity.valid_until();
                    let workload_end = (identity.workload_ends_at != 0).then_some(identity.workload_ends_at);
                    let end = match (token_end, workload_end) {
                        (Some(a), Some(b)) => a.min(b),
                        (Some(a), None) | (None, Some(a)) => a,
                        (None, None) => return std::future::pending().await,
                    };
                    let now = burrow_host_time::now_ms();
                    if now >= end {
                        return if workload_end.is_some_and(|w| now >= w) {
                            (pb::GoAwayCode::WorkloadEnded, "the workload has expired")
                        } else {
                            (pb::GoAwayCode::TokenExpired, "the agent's identity has expired")
                        };
                    }
                    tokio::time::sleep(Duration::from_millis(end - now)).await;
                }
            };
            let reason = tokio::select! {
                _ = ended.cancelled() => {
                    let (code, message) = session.identity.as_ref().map(|i| i.reason()).unwrap_or((pb::GoAwayCode::WorkloadEnded, String::new()));
                    let _ = tx.send(Ok(go_away_with(code, &message))).await;
                    // Traffic stops, not only new connections: whatever still runs
                    // through this connection is cut after a short grace.
                    cut_after(conn_info.as_ref(), &session, ENDED_GRACE);
                    "workload ended"
                }
                (code, message) = identity_expired => {
                    if let Some(i) = session.identity.as_ref() {
                        if code == pb::GoAwayCode::WorkloadEnded {
                            // Users of the workload get 410 from now on, not a wait.
                            ctx.ended.mark(&i.identity.workload_kind, &i.identity.workload_id);
                        }
                        i.end(code, message);
                    }
                    let _ = tx.send(Ok(go_away_with(code, message))).await;
                    cut_after(conn_info.as_ref(), &session, ENDED_GRACE);
                    "identity expired"
                }
                _ = ctx.shutdown.cancelled() => {
                    let _ = tx.send(Ok(go_away("host is shutting down"))).await;
                    "host shutdown"
                }
                // Tunnels in flight (on this or another connection) may finish, as after
                // the age GoAway; then they are cut.
                _ = agent_left => {
                    cut_after(None, &session, age_grace);
                    "agent disconnected"
                }
                _ = tx.closed() => {
                    cut_after(None, &session, age_grace);
                    "control stream closed"
                }
                _ = aged => {
                    tracing::info!(agent_id = %session.agent_id, remote = %session.remote_addr, "connection reached its maximum age; asking the agent to reconnect");
                    let _ = tx.send(Ok(go_away("connection reached its maximum age"))).await;
                    // The agent reconnects (maybe elsewhere) and lets tunnels in flight on
                    // this connection finish; past the grace period the host cuts it.
                    cut_after(conn_info.as_ref(), &session, age_grace);
                    "connection reached its maximum age"
                }
            };
            session.retire();
            ctx.sessions.closed(&session);
            service.lifecycle(&session, false);
            if repeat {
                tracing::debug!(agent_id = %session.agent_id, replica_id = %session.agent_replica_id, remote = %session.remote_addr, reason, "agent session ended");
            } else {
                tracing::info!(agent_id = %session.agent_id, replica_id = %session.agent_replica_id, remote = %session.remote_addr, reason, "agent session ended");
            }
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
        let (session, _) = self.session_of(request.metadata())?;
        if let Some(info) = request.extensions().get::<AgentConnInfo>() {
            info.mark_authenticated();
        }
        // Counted per identity over all its sessions: opening more connections does not
        // buy an agent more tunnels.
        let Some(slot) = self.streams.acquire(&session.agent_id) else {
            self.ctx.metrics.limit_refused("agent_streams");
            tracing::debug!(agent_id = %session.agent_id, "tunnel refused: the agent holds as many open tunnels here as allowed");
            return Err(tunnel_refusal(format!(
                "agent {:?} already holds as many open tunnels on this replica as allowed \
                 (agents.max_streams_per_agent); retry when one ends",
                session.agent_id
            )));
        };
        let (tx, rx) = mpsc::channel(TUNNEL_CHANNEL);
        // The RPC ends when the session is cut, whichever TCP connection it came on.
        let cut = session.cut.clone().cancelled_owned();
        let agent_id = session.agent_id.clone();
        let tunnel = IdleTunnel { inbound: request.into_inner(), outbound: tx, session };
        if self.ctx.registry.register_capped(tunnel, self.max_parked_tunnels_per_agent).is_err() {
            self.ctx.metrics.limit_refused("agent_parked_tunnels");
            tracing::debug!(%agent_id, "tunnel refused: the agent has as many tunnels parked here as allowed");
            return Err(tunnel_refusal(format!(
                "agent {agent_id:?} already has {} tunnels parked on this replica \
                 (agents.max_parked_tunnels_per_agent); retry later",
                self.max_parked_tunnels_per_agent
            )));
        }
        let stream: BoxStream<pb::HostFrame> =
            Box::pin(futures_util::StreamExt::take_until(ReceiverStream::new(rx), cut));
        Ok(Response::new(Box::pin(crate::limits::Holding::new(stream, slot))))
    }

    async fn renew_token(
        &self,
        request: Request<pb::RenewAgentTokenRequest>,
    ) -> Result<Response<pb::RenewAgentTokenResponse>, Status> {
        let (lifecycle, session, token) = self.workload_session(request.metadata())?;
        let (accepted, issued) = lifecycle.renew_agent(&token).await.map_err(refusal_status)?;
        if accepted.claims.agent_id != session.agent_id {
            return Err(Status::permission_denied("the token names another agent than the session"));
        }
        if let Some(identity) = &session.identity {
            *identity.renewed_token_sha256.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(sha256(&issued.token));
            identity.valid_until.store(issued.expires_at, std::sync::atomic::Ordering::Release);
        }
        Ok(Response::new(pb::RenewAgentTokenResponse {
            token: issued.token,
            expires_at_ms: issued.expires_at,
        }))
    }

    async fn get_work(
        &self,
        request: Request<pb::GetWorkRequest>,
    ) -> Result<Response<pb::GetWorkResponse>, Status> {
        let (lifecycle, session, _) = self.workload_session(request.metadata())?;
        let identity = session.identity.clone().expect("workload sessions have an identity");
        let wait = Duration::from_millis(request.get_ref().wait_ms.into()).min(MAX_WORK_WAIT);
        let workload = identity.identity.workload_id.clone();
        tokio::select! {
            next = lifecycle.next_work(&workload, wait) => {
                let item = next.map_err(|e| Status::unavailable(e.to_string()))?;
                Ok(Response::new(pb::GetWorkResponse {
                    item: item.map(|d| pb::WorkItem { item_id: d.id, payload: d.payload.into(), delivery: d.delivery }),
                }))
            }
            _ = identity.ended.cancelled() => {
                let (_, message) = identity.reason();
                Err(Status::failed_precondition(message))
            }
            _ = self.ctx.shutdown.cancelled() => Err(Status::unavailable("host is shutting down")),
        }
    }

    async fn update_status(
        &self,
        request: Request<pb::UpdateStatusRequest>,
    ) -> Result<Response<pb::UpdateStatusResponse>, Status> {
        let (lifecycle, session, _) = self.workload_session(request.metadata())?;
        let identity = session.identity.clone().expect("workload sessions have an identity");
        let r = request.into_inner();
        use burrow_host_workloads::queue::WorkState;
        let state = match pb::WorkItemState::try_from(r.state) {
            Ok(pb::WorkItemState::Running) => WorkState::Running,
            Ok(pb::WorkItemState::Succeeded) => WorkState::Succeeded,
            Ok(pb::WorkItemState::Failed) => WorkState::Failed,
            _ => return Err(Status::invalid_argument("state: RUNNING, SUCCEEDED or FAILED")),
        };
        if r.item_id.is_empty() || r.item_id.len() > 64 {
            return Err(Status::invalid_argument("item_id: 1-64 bytes"));
        }
        match lifecycle.update_work(&identity.identity.workload_id, &r.item_id, state, &r.detail).await {
            Ok(_) => Ok(Response::new(pb::UpdateStatusResponse {})),
            Err(burrow_host_workloads::LifecycleError::UnknownItem(item)) => {
                Err(Status::not_found(format!("no work item {item:?} for this workload")))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}
