//! Burrow's reverse-tunnel protocol.
//!
//! - [`pb`]: the protobuf messages and the tonic client/server for `AgentTunnel`.
//! - [`tunnel`]: the per-tunnel state machine, free of I/O so every ordering rule is
//!   tested deterministically (in the spirit of `quinn-proto`). Host and agent drive
//!   their sockets and consult it before acting on each frame.
//! - [`ws`]: a WebSocket as a byte stream, so HTTP/2 can ride inside it (`ws://`, `wss://`).
//! - [`session`]: limits on what a session may ask for, checked by host and agent.
//! - [`codec`]: the gRPC codec of the tunnel and replica services (small stream buffers).
//! - [`Secret`]: a configured credential that `Debug` masks, shared by agent and host config.
//! - Constants both sides must agree on.

pub mod codec;
pub mod secret;
pub mod session;
pub mod tunnel;
pub mod ws;

pub use secret::Secret;

/// Generated protobuf and gRPC code for `burrow.tunnel.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("burrow.tunnel.v1");
}

/// Generated gRPC code for the private replica-to-replica API `burrow.cluster.v1`.
#[allow(clippy::all, missing_docs)]
pub mod cluster_pb {
    include!(concat!(env!("OUT_DIR"), "/cluster/burrow.cluster.v1.rs"));
}

/// Generated gRPC code for the control API `burrow.control.v1` (control plane → host).
#[allow(clippy::all, missing_docs)]
pub mod control_pb {
    include!(concat!(env!("OUT_DIR"), "/control/burrow.control.v1.rs"));
}

/// Binary metadata naming the agent on a replica-to-replica `Forward` call (binary, so
/// any agent id the authorizer chose fits).
pub const AGENT_ID_METADATA: &str = "burrow-agent-id-bin";

/// Metadata on a `Forward` call: how long the serving replica may wait for a free stream.
pub const WAIT_MS_METADATA: &str = "burrow-wait-ms";

/// Major protocol version. A host refuses agents that speak another major.
pub const PROTOCOL_VERSION: u32 = 1;
/// Minor protocol version: additions only. 1: session dials (`DialKind::Session`).
/// 2: workload agents (`GoAway.code`, `RenewToken`, `GetWork`, `UpdateStatus`).
pub const PROTOCOL_MINOR: u32 = 2;

/// The first minor version whose agents serve session dials.
pub const SESSION_MINOR: u32 = 1;

/// Largest `data` payload either side sends in one frame. Small frames keep per-stream
/// buffering bounded and let HTTP/2 flow control do the backpressure.
pub const MAX_DATA_FRAME: usize = 32 * 1024;

/// Largest gRPC message either side accepts on the tunnel service: a data frame plus
/// protobuf overhead, with room for the small control messages. Anything larger is a
/// malformed or hostile peer and fails that RPC alone.
pub const MAX_MESSAGE_SIZE: usize = MAX_DATA_FRAME + 4 * 1024;

/// Metadata key carrying `Welcome.session_id` on every `Tunnel` RPC.
pub const SESSION_METADATA: &str = "burrow-session";

/// Metadata on a RESOURCE_EXHAUSTED answer to `Control` (the per-token connection rate
/// limit): milliseconds until the agent may try again.
pub const RETRY_AFTER_METADATA: &str = "burrow-retry-after-ms";

/// Metadata on a refused `Control` (or `Tunnel`) call when reconnecting cannot help: the
/// workload is over or the token is dead. Values: [`FINAL_WORKLOAD_TERMINATED`],
/// [`FINAL_WORKLOAD_ENDED`], [`FINAL_TOKEN_EXPIRED`], [`FINAL_TOKEN_REVOKED`]. An agent
/// that sees it exits instead of retrying.
pub const FINAL_METADATA: &str = "burrow-final";
/// The workload was terminated through the control API.
pub const FINAL_WORKLOAD_TERMINATED: &str = "workload-terminated";
/// The workload ended by itself (expired, or its plugin says so).
pub const FINAL_WORKLOAD_ENDED: &str = "workload-ended";
/// The agent token has expired.
pub const FINAL_TOKEN_EXPIRED: &str = "token-expired";
/// The agent token is not (or no longer) valid: bad signature, unknown key, unknown workload.
pub const FINAL_TOKEN_REVOKED: &str = "token-revoked";

/// Longest work item payload the host accepts from the control plane and hands an agent.
pub const MAX_WORK_PAYLOAD: usize = 256 * 1024;

/// Largest message the host sends an agent: a work item with room for its envelope.
/// Agents accept this much from the host; the host still accepts only
/// [`MAX_MESSAGE_SIZE`] from agents.
pub const MAX_HOST_MESSAGE_SIZE: usize = MAX_WORK_PAYLOAD + 4 * 1024;

/// WebSocket subprotocol an agent must request when it tunnels gRPC through WebSocket.
pub const WS_SUBPROTOCOL: &str = "burrow-tunnel.v1";

/// HTTP path of the WebSocket endpoint on the agent port.
pub const WS_PATH: &str = "/burrow/agent";

/// The 24-byte HTTP/2 client connection preface (RFC 9113 §3.4); the host sniffs it to
/// tell gRPC from WebSocket on one cleartext port.
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
