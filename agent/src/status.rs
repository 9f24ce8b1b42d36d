//! What the agent is doing, published on a `watch` channel.

use std::time::Duration;

use crate::config::HostUrl;
use crate::final_reason::FinalReason;

/// State of one connection slot.
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
    /// The host refused the attempt with RESOURCE_EXHAUSTED: this token made too many
    /// connection attempts. Not an authentication failure.
    RateLimited {
        /// The delay chosen: the host's retry-after (at most 5 min) or the backoff delay,
        /// whichever is longer.
        retry_in: Duration,
        /// The host's message.
        reason: String,
    },
    /// `run` has returned.
    Stopped,
}

impl ConnState {
    /// The replica this state is connected to.
    pub fn host_replica_id(&self) -> Option<&str> {
        match self {
            ConnState::Connected { host_replica_id, .. } => Some(host_replica_id),
            _ => None,
        }
    }
}

/// One connection slot: an independent session with its own tunnel pool and backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionStatus {
    /// Slot index, `0..connections`.
    pub slot: usize,
    /// The URL this slot is connected to or dialing.
    pub host: HostUrl,
    /// What the slot is doing.
    pub state: ConnState,
    /// The slot kept a connection to a replica another slot holds, because it found no
    /// distinct one; it retries every `diversify_interval`.
    pub duplicate: bool,
    /// Tunnels parked at the host (acknowledged, unclaimed).
    pub idle_streams: usize,
    /// Tunnels carrying a connection, on the current and draining sessions of this slot.
    pub active_streams: usize,
    /// Connection attempts by this slot, including dials closed as duplicates.
    pub connect_attempts: u64,
    /// This slot's most recent failure.
    pub last_error: Option<String>,
}

impl ConnectionStatus {
    pub(crate) fn new(slot: usize, host: HostUrl) -> Self {
        Self {
            slot,
            host,
            state: ConnState::Connecting,
            duplicate: false,
            idle_streams: 0,
            active_streams: 0,
            connect_attempts: 0,
            last_error: None,
        }
    }

    /// True while this slot's session is established.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, ConnState::Connected { .. })
    }
}

/// A snapshot of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentStatus {
    /// Summary of the slots: `Connected` (of the lowest connected slot) if any slot is
    /// connected; else the lowest slot that is backing off or rate-limited; else
    /// `Connecting`; `Stopped` once `run` has returned. See
    /// [`connections`](Self::connections) for each slot.
    pub state: ConnState,
    /// Every connection slot, by index. Empty until the configuration is validated.
    pub connections: Vec<ConnectionStatus>,
    /// Tunnels parked at the host, all slots.
    pub idle_streams: usize,
    /// Tunnels carrying a connection, all slots and sessions.
    pub active_streams: usize,
    /// Connection attempts so far, all slots, including the current ones.
    pub connect_attempts: u64,
    /// Attempts the host rejected as UNAUTHENTICATED or PERMISSION_DENIED.
    pub auth_failures: u64,
    /// Attempts the host refused with RESOURCE_EXHAUSTED (connection rate limit).
    pub rate_limited: u64,
    /// Tunnels the host refused with RESOURCE_EXHAUSTED because this agent holds as many
    /// (parked or open) as it allows; each is opened again after the host's retry-after.
    pub tunnels_refused: u64,
    /// The most recent failure of any slot, for display.
    pub last_error: Option<String>,
    /// The host refused this agent for good (the workload is over, or the token is
    /// dead): the agent stops without reconnecting. The host's message is in
    /// [`last_error`](Self::last_error).
    pub final_reason: Option<FinalReason>,
}

impl AgentStatus {
    /// True while at least one slot has an established session.
    pub fn is_connected(&self) -> bool {
        self.connections.iter().any(ConnectionStatus::is_connected)
    }

    /// The distinct host replicas the connected slots are on, in slot order.
    pub fn connected_replicas(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for id in self.connections.iter().filter_map(|c| c.state.host_replica_id()) {
            if !out.iter().any(|o| o == id) {
                out.push(id.to_owned());
            }
        }
        out
    }

    /// Recompute the summary fields from the slots.
    pub(crate) fn summarize(&mut self) {
        if self.connections.is_empty() {
            return;
        }
        self.idle_streams = self.connections.iter().map(|c| c.idle_streams).sum();
        self.active_streams = self.connections.iter().map(|c| c.active_streams).sum();
        self.connect_attempts = self.connections.iter().map(|c| c.connect_attempts).sum();
        let states = || self.connections.iter().map(|c| &c.state);
        self.state = states()
            .find(|s| matches!(s, ConnState::Connected { .. }))
            .or_else(|| {
                states().find(|s| matches!(s, ConnState::BackingOff { .. } | ConnState::RateLimited { .. }))
            })
            .cloned()
            .unwrap_or_else(|| {
                if states().all(|s| *s == ConnState::Stopped) {
                    ConnState::Stopped
                } else {
                    ConnState::Connecting
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(i: usize, state: ConnState) -> ConnectionStatus {
        ConnectionStatus { state, ..ConnectionStatus::new(i, HostUrl::parse("grpc://h").unwrap()) }
    }

    fn connected(replica: &str) -> ConnState {
        ConnState::Connected { host_replica_id: replica.into(), agent_id: "a".into() }
    }

    fn backing_off() -> ConnState {
        ConnState::BackingOff { retry_in: Duration::from_secs(1), reason: "x".into(), auth_failure: false }
    }

    #[test]
    fn summary_prefers_connected_then_backing_off() {
        let mut s = AgentStatus {
            connections: vec![
                slot(0, ConnState::Connecting),
                slot(1, backing_off()),
                slot(2, connected("r2")),
            ],
            ..AgentStatus::default()
        };
        s.connections[1].idle_streams = 3;
        s.connections[2].idle_streams = 4;
        s.connections[2].active_streams = 1;
        s.connections[0].connect_attempts = 2;
        s.connections[2].connect_attempts = 1;
        s.summarize();
        assert_eq!(s.state, connected("r2"));
        assert_eq!((s.idle_streams, s.active_streams, s.connect_attempts), (7, 1, 3));
        assert!(s.is_connected());

        s.connections[2].state = ConnState::Connecting;
        s.summarize();
        assert_eq!(s.state, backing_off());
        assert!(!s.is_connected());

        s.connections[1].state = ConnState::Stopped;
        s.summarize();
        assert_eq!(s.state, ConnState::Connecting);
        for c in &mut s.connections {
            c.state = ConnState::Stopped;
        }
        s.summarize();
        assert_eq!(s.state, ConnState::Stopped);
    }

    #[test]
    fn connected_replicas_are_distinct_and_in_slot_order() {
        let s = AgentStatus {
            connections: vec![
                slot(0, connected("b")),
                slot(1, backing_off()),
                slot(2, connected("a")),
                slot(3, connected("b")),
            ],
            ..AgentStatus::default()
        };
        assert_eq!(s.connected_replicas(), ["b", "a"]);
        assert!(AgentStatus::default().connected_replicas().is_empty());
        assert!(!AgentStatus::default().is_connected());
    }
}
