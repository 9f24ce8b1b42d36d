use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use burrow_host_tls::TlsConfig;

/// The `[agents]` table: the port agents dial.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentListenerConfig {
    /// Address to listen on. Default `0.0.0.0:8081`.
    pub listen: SocketAddr,
    /// TLS for `grpcs://` and `wss://` agents. When set, the port speaks only TLS
    /// (ALPN `h2` → gRPC, `http/1.1` → WebSocket). Default: cleartext.
    pub tls: Option<TlsConfig>,
    /// How long a new connection may take to send its HTTP/2 preface, HTTP/1.1 request
    /// line or TLS handshake. Default 10s.
    #[serde(with = "humantime_serde")]
    pub preface_timeout: Duration,
    /// How long an agent may take to send `Hello` after opening `Control`. Default 10s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How long the host waits for an agent to answer a `Dial`. Default 15s (above the
    /// agent's default 10 s dial timeout, so the agent's own error wins).
    #[serde(with = "humantime_serde")]
    pub dial_answer_timeout: Duration,
    /// HTTP/2 streams one agent connection may hold (parked + active tunnels + control).
    /// Default 2048: above the agent's default `max_streams` of 1000.
    pub max_streams_per_connection: u32,
    /// HTTP/2 receive window per tunnel. Default 1 MiB.
    pub stream_window_bytes: u32,
    /// HTTP/2 receive window per agent connection: the most one agent can have in flight
    /// towards the host. Default 16 MiB.
    pub connection_window_bytes: u32,
    /// HTTP/2 PING interval to detect dead agents. Default 30s.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How long an unanswered PING may wait before the connection is closed. Default 20s.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Connection attempts (`Control` handshakes) allowed per agent token per minute,
    /// counted across all replicas in cluster mode; 0 disables the limit. Default 600.
    /// KAS allows 40,000 RPCs per token per minute, but counts every RPC; a healthy agent
    /// makes a handful of handshakes an hour, and each one runs the authorizer.
    pub connect_rate_limit: u32,
    /// Connection attempts allowed per source address per minute on this replica,
    /// counted before the token is looked at (no Redis call, no plugin call); 0 disables.
    /// Default 1200: many agents may share a NAT address.
    pub connect_rate_limit_per_address: u32,
    /// After this long (±10% jitter) an agent connection is asked to reconnect (GoAway),
    /// which spreads agents over replicas added since they connected. 0s disables.
    /// Default 30m.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
    /// After that GoAway, how long tunnels in flight on the old connection may continue
    /// before the host cuts it. Default 1h (long downloads and watches finish).
    #[serde(with = "humantime_serde")]
    pub connection_age_grace: Duration,
    /// Agent sessions (`Control` connections) one agent identity may hold on this
    /// replica; more are refused with RESOURCE_EXHAUSTED and a retry-after. Default 16
    /// (an agent keeps 2, a few processes may share an identity). 0: no cap.
    pub max_sessions_per_agent: usize,
    /// TCP connections the agent port holds open in all, counted from accept; more are
    /// closed at once. Default 32768: 10,000 agents with their two connections each, and
    /// room for reconnection storms. 0: no cap.
    pub max_connections: usize,
    /// TCP connections one source address may hold open on the agent port, counted from
    /// accept (before any authentication); more are closed at once. Default 256. 0: no
    /// cap. Raise it when many agents share one NAT address.
    pub max_connections_per_address: usize,
    /// Tunnels one agent identity may keep parked (idle, waiting for a user) on this
    /// replica, over all its sessions; more are refused with RESOURCE_EXHAUSTED and a
    /// retry-after, and the agent retries them later. Default 256: an agent parks 4 per
    /// connection and 2 connections (8), doubling its pool after a burst; 256 leaves a
    /// burst of that size its headroom while no identity can park thousands of streams,
    /// each of which costs the host memory and a task. 0: no cap.
    pub max_parked_tunnels_per_agent: usize,
    /// Tunnels one agent identity may hold open at once on this replica, over all its
    /// sessions: parked ones plus those carrying a user's connection. A tunnel opened
    /// past it is refused like a parked one over its cap, so an agent whose tunnels are
    /// all busy gets no more until one ends. Default 4096: two agent processes at their
    /// default ceiling (2 connections × 1000 streams each). 0: no cap.
    pub max_streams_per_agent: usize,
}

impl Default for AgentListenerConfig {
    fn default() -> Self {
        Self {
            listen: ([0, 0, 0, 0], 8081).into(),
            tls: None,
            preface_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            dial_answer_timeout: Duration::from_secs(15),
            max_streams_per_connection: 2048,
            stream_window_bytes: 1024 * 1024,
            connection_window_bytes: 16 * 1024 * 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            connect_rate_limit: 600,
            connect_rate_limit_per_address: 1200,
            max_connection_age: Duration::from_secs(30 * 60),
            connection_age_grace: Duration::from_secs(3600),
            max_sessions_per_agent: 16,
            max_connections: 32_768,
            max_connections_per_address: 256,
            max_parked_tunnels_per_agent: 256,
            max_streams_per_agent: 4096,
        }
    }
}

impl AgentListenerConfig {
    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(tls) = &self.tls {
            tls.validate("agents.tls")?;
        }
        for (key, value) in [
            ("agents.preface_timeout", self.preface_timeout),
            ("agents.handshake_timeout", self.handshake_timeout),
            ("agents.dial_answer_timeout", self.dial_answer_timeout),
            ("agents.keepalive_interval", self.keepalive_interval),
            ("agents.keepalive_timeout", self.keepalive_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("{key}: must be greater than zero"));
            }
        }
        if !self.max_connection_age.is_zero() && self.max_connection_age < Duration::from_secs(1) {
            return Err("agents.max_connection_age: at least 1s, or 0s to disable".into());
        }
        if self.connection_age_grace.is_zero() {
            return Err("agents.connection_age_grace: must be greater than zero".into());
        }
        if self.max_streams_per_connection < 2 {
            return Err("agents.max_streams_per_connection: must be at least 2 (control + one tunnel)".into());
        }
        // RFC 9113 §6.9.2: windows are 31-bit; below 64 KiB throughput collapses.
        for (key, value) in [
            ("agents.stream_window_bytes", self.stream_window_bytes),
            ("agents.connection_window_bytes", self.connection_window_bytes),
        ] {
            if !(65_535..=(1u32 << 31) - 1).contains(&value) {
                return Err(format!("{key}: must be between 65535 and 2147483647"));
            }
        }
        if self.max_connections > 0 && self.max_connections_per_address > self.max_connections {
            return Err("agents.max_connections_per_address: must not exceed agents.max_connections".into());
        }
        Ok(())
    }
}
