//! State shared by the agent port and the ingress.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use burrow_proto::pb::RefusalCode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::plugins::Plugins;
use crate::registry::{ClaimError, Session, TunnelRegistry};
use crate::tunnel_io::{self, DialError, TunnelStream};

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
}

/// Everything a request handler needs.
pub struct HostContext {
    /// Authorizer and router plugins.
    pub plugins: Arc<Plugins>,
    /// Parked tunnels.
    pub registry: Arc<dyn TunnelRegistry>,
    /// This host replica's id.
    pub replica_id: String,
    /// Live agent sessions by session id.
    pub sessions: RwLock<HashMap<String, Arc<Session>>>,
    /// How long the host waits for an agent's DialResult.
    pub dial_answer_timeout: Duration,
    /// Cancelled when the host begins to shut down.
    pub shutdown: CancellationToken,
}

impl HostContext {
    /// Claims a tunnel of `agent_id` (waiting up to `wait`) and dials `service` over it.
    /// A tunnel that dies before the agent answers is replaced by another within the
    /// same deadline, so a racing idle-timeout on the agent never fails a request.
    pub async fn open_tunnel(
        &self,
        agent_id: &str,
        service: &str,
        request_id: &str,
        wait: Duration,
    ) -> Result<TunnelStream, OpenError> {
        if self.shutdown.is_cancelled() {
            return Err(OpenError::ShuttingDown);
        }
        let deadline = Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let idle = self.registry.claim(agent_id, remaining).await.map_err(|e| match e {
                ClaimError::Timeout { agent_id, .. } => OpenError::NoTunnel { agent_id, waited: wait },
                ClaimError::ShuttingDown => OpenError::ShuttingDown,
            })?;
            match tunnel_io::dial(idle, service, request_id, self.dial_answer_timeout).await {
                Ok(stream) => return Ok(stream),
                Err(DialError::Refused { code, message }) => {
                    return Err(OpenError::Refused { code, message })
                }
                Err(DialError::Gone(why)) => {
                    tracing::debug!(agent_id, request_id, %why, "claimed tunnel was gone; claiming another");
                    if Instant::now() >= deadline {
                        return Err(OpenError::NoTunnel { agent_id: agent_id.to_owned(), waited: wait });
                    }
                }
                Err(e @ (DialError::Timeout(_) | DialError::Protocol(_))) => {
                    return Err(OpenError::Broken(e.to_string()))
                }
            }
        }
    }
}
