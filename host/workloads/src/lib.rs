//! The workload lifecycle: what a control plane creates, the short-lived tokens its
//! agents carry, how a workload ends everywhere at once, and its agent's work queue.
//!
//! # Layout
//! - `token.rs`: agent tokens bound to one workload, signed by the host with Ed25519 and
//!   verified without a round trip, with key rotation (current and previous keys verify).
//! - `record.rs`: the workload record and the checks on a control plane's input.
//! - `queue.rs`: the work queue's rules (head until acknowledged, in order, bounded).
//! - `store.rs`: records and queues in a file (one host) or in Redis (a cluster).
//! - `runtime.rs`: [`Lifecycle`], what the control API and the agent port call: create,
//!   renew, terminate (on every replica: pub/sub plus a resync), authenticate agents,
//!   hand out and acknowledge work; `runtime/directory.rs` answers admission about
//!   control-plane workloads, `runtime/presence.rs` records which replica holds each agent.

pub mod queue;
pub mod record;
pub mod runtime;
pub mod store;
pub mod token;

pub use runtime::{
    AcceptedAgent, AgentRefusal, IssuedToken, Lifecycle, LifecycleError, LifecycleSettings, PresenceObserver,
};
pub use store::{FileStore, Store, StoreError};
pub use token::{AgentClaims, KeyRing, TokenError, TOKEN_PREFIX};
