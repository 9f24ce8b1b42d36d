//! Dialing: opening a byte stream to a service of a workload's agent.
//!
//! Every ingress asks one [`Dialer`] and gets a [`TunnelStream`] (`AsyncRead +
//! AsyncWrite`) back, whatever carries it. [`LocalDialer`] claims one of this replica's
//! parked tunnels; in cluster mode a cluster dialer wraps it (try local, then look the
//! agent up and forward to another replica), so no ingress knows whether a cluster
//! exists.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use burrow_proto::pb::{self, DialKind, RefusalCode};
use burrow_proto::tunnel::Kind;
use burrow_proto::SESSION_MINOR;
use tokio::time::Instant;

use crate::lifecycle::Lifecycle;
use crate::registry::{ClaimError, IdleTunnel, TunnelRegistry};
use crate::tunnel_io::{self, DialError, Dialed, TunnelStream};
use burrow_host_metrics::Metrics;
use burrow_host_plugins::types::Target;

/// Why a tunnel to a workload could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No tunnel of the agent became available in time (504).
    #[error("agent {agent_id:?} has no tunnel available after waiting {waited:?}: is the agent running and connected?")]
    NoTunnel { agent_id: String, waited: Duration },
    /// The agent refused to dial the service (502).
    #[error("agent refused to connect to the service: {message}")]
    Refused { code: RefusalCode, message: String },
    /// The tunnel failed while dialing (502).
    #[error("tunnel to the agent failed: {0}")]
    Broken(String),
    /// The host is shutting down (503).
    #[error("the host is shutting down")]
    ShuttingDown,
    /// Cluster mode, the agent has no stream on this replica and the registry (Redis)
    /// cannot be reached to find another (503).
    #[error("agent {agent_id:?} is not connected to this replica and the cluster registry is unreachable: {reason}")]
    ClusterUnavailable { agent_id: String, reason: String },
}

/// One stream to open.
#[derive(Debug, Clone, Copy)]
pub struct DialRequest<'a> {
    /// The workload, agent and service (from admission).
    pub target: &'a Target,
    /// Sent to the agent in `Dial`, so its logs name the request.
    pub request_id: &'a str,
    /// How long to wait for a tunnel of the agent to become free or appear.
    pub wait: Duration,
    /// Stable per user session, for routing policies (see `Admitted::session_key`).
    pub session_key: &'a str,
    /// A TCP connection to the service, or a session the agent serves itself.
    pub kind: DialKind,
    /// Who the stream is for (the principal's id), for the agent's logs and a session's
    /// `BURROW_USER`; empty when nobody signed in.
    pub principal: &'a str,
}

impl DialRequest<'_> {
    /// The `Dial` frame the agent gets.
    pub fn message(&self) -> pb::Dial {
        pb::Dial {
            service: self.target.service.clone(),
            request_id: self.request_id.to_owned(),
            kind: self.kind as i32,
            principal: self.principal.to_owned(),
        }
    }
}

/// The future a [`Dialer`] returns.
pub type DialFuture<'a> = Pin<Box<dyn Future<Output = Result<TunnelStream, OpenError>> + Send + 'a>>;

/// Opens streams to workloads. One per host; every ingress uses it.
pub trait Dialer: Send + Sync {
    /// Opens a stream to `request.target`'s service.
    fn dial<'a>(&'a self, request: DialRequest<'a>) -> DialFuture<'a>;
}

/// Dials over this replica's own parked tunnels.
pub struct LocalDialer {
    registry: Arc<dyn TunnelRegistry>,
    dial_answer_timeout: Duration,
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
}

impl LocalDialer {
    /// A dialer over `registry`; `dial_answer_timeout` bounds the wait for the agent's
    /// `DialResult`.
    pub fn new(
        registry: Arc<dyn TunnelRegistry>,
        dial_answer_timeout: Duration,
        lifecycle: Arc<Lifecycle>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { registry, dial_answer_timeout, lifecycle, metrics }
    }

    /// The parked tunnels.
    pub fn registry(&self) -> &Arc<dyn TunnelRegistry> {
        &self.registry
    }

    /// How long the agent may take to answer a `Dial`.
    pub fn dial_answer_timeout(&self) -> Duration {
        self.dial_answer_timeout
    }

    /// Claims one of this replica's tunnels of `agent_id` (waiting up to `wait`) and sends
    /// it `dial`, as frames (the replica API relays them as they are). A tunnel that dies
    /// before the agent answers is replaced by another within the same deadline, so a
    /// racing idle-timeout on the agent never fails a request.
    pub async fn open_raw(
        &self,
        agent_id: &str,
        dial: &pb::Dial,
        wait: Duration,
    ) -> Result<Dialed, OpenError> {
        let deadline = Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let idle = self.registry.claim(agent_id, remaining).await.map_err(|e| match e {
                ClaimError::Timeout { agent_id, .. } => OpenError::NoTunnel { agent_id, waited: wait },
                ClaimError::ShuttingDown => OpenError::ShuttingDown,
            })?;
            match self.dial_claimed_raw(idle, dial).await {
                Ok(dialed) => return Ok(dialed),
                Err(None) => {
                    tracing::debug!(agent_id, request_id = %dial.request_id, "claimed tunnel was gone; claiming another");
                    if Instant::now() >= deadline {
                        return Err(OpenError::NoTunnel { agent_id: agent_id.to_owned(), waited: wait });
                    }
                }
                Err(Some(error)) => return Err(error),
            }
        }
    }

    /// [`Self::open_raw`] as a byte stream.
    pub async fn open(
        &self,
        agent_id: &str,
        dial: &pb::Dial,
        wait: Duration,
    ) -> Result<TunnelStream, OpenError> {
        self.open_raw(agent_id, dial, wait).await.map(|d| TunnelStream::local(d, Some(self.metrics.clone())))
    }

    /// Dials `service` over a tunnel already claimed. `Ok(None)`: the tunnel was gone
    /// before the agent answered, and another one may work.
    pub async fn dial_claimed(
        &self,
        idle: IdleTunnel,
        dial: &pb::Dial,
    ) -> Result<Option<TunnelStream>, OpenError> {
        match self.dial_claimed_raw(idle, dial).await {
            Ok(dialed) => Ok(Some(TunnelStream::local(dialed, Some(self.metrics.clone())))),
            Err(None) => Ok(None),
            Err(Some(error)) => Err(error),
        }
    }

    /// `Err(None)` means "gone, try another tunnel".
    async fn dial_claimed_raw(&self, idle: IdleTunnel, dial: &pb::Dial) -> Result<Dialed, Option<OpenError>> {
        // An agent older than sessions would take a session dial for TCP: refuse here,
        // on the replica that knows the agent's version, and park the tunnel again.
        let minor = idle.session.protocol_minor;
        if Kind::of(dial) == Kind::Session && minor < SESSION_MINOR {
            self.registry.register(idle);
            return Err(Some(OpenError::Refused {
                code: RefusalCode::Unsupported,
                message: format!(
                    "the agent speaks protocol 1.{minor}, which has no sessions (1.{SESSION_MINOR}+): upgrade the agent"
                ),
            }));
        }
        let request_id = dial.request_id.clone();
        match tunnel_io::dial_raw(idle, dial.clone(), self.dial_answer_timeout).await {
            Ok(dialed) => Ok(dialed),
            Err(DialError::Refused { code, message }) => Err(Some(OpenError::Refused { code, message })),
            Err(DialError::Gone(why)) => {
                tracing::debug!(%request_id, %why, "tunnel closed before the agent answered");
                Err(None)
            }
            Err(e @ (DialError::Timeout(_) | DialError::Protocol(_))) => {
                Err(Some(OpenError::Broken(e.to_string())))
            }
        }
    }
}

impl Dialer for LocalDialer {
    fn dial<'a>(&'a self, request: DialRequest<'a>) -> DialFuture<'a> {
        Box::pin(async move {
            if self.lifecycle.is_shutting_down() {
                return Err(OpenError::ShuttingDown);
            }
            let agent_id = &request.target.agent_id;
            if self.registry.idle_count(agent_id) == 0 {
                self.metrics.waits.inc();
            }
            self.open(agent_id, &request.message(), request.wait).await
        })
    }
}
