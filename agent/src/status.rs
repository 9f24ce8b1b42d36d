//! What the agent is doing, published on a `watch` channel.

use std::time::Duration;

/// Connection state of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConnState {
    /// Dialing the host or waiting for `Welcome`.
    #[default]
    Connecting,
    /// Handshake done; tunnels are parked on this connection.
    Connected {
        /// The host replica that accepted the connection.
        host_replica_id: String,
        /// The identity the host derived from the token.
        agent_id: String,
    },
    /// Waiting before the next connection attempt.
    BackingOff {
        /// The delay chosen for this wait.
        retry_in: Duration,
        /// Why the last attempt or session ended.
        reason: String,
        /// The host rejected the token (or permission); the delay uses the harder policy.
        auth_failure: bool,
    },
    /// `run` has returned.
    Stopped,
}

/// A snapshot of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentStatus {
    /// Connection state.
    pub state: ConnState,
    /// Tunnels parked at the host (acknowledged, unclaimed).
    pub idle_streams: usize,
    /// Tunnels carrying a connection, across the current and draining sessions.
    pub active_streams: usize,
    /// Connection attempts so far, including the current one.
    pub connect_attempts: u64,
    /// Attempts the host rejected as UNAUTHENTICATED or PERMISSION_DENIED.
    pub auth_failures: u64,
    /// The most recent failure, for display.
    pub last_error: Option<String>,
}

impl AgentStatus {
    /// True while a session is established.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, ConnState::Connected { .. })
    }
}
