//! The workload lifecycle's protocol-free parts, which the control API and the agent
//! port share (issue 11 builds the rest on them).
//!
//! # Layout
//! - `token.rs`: short-lived agent tokens bound to one workload, signed by the host with
//!   Ed25519 and verified without a round trip, with key rotation (current and previous
//!   keys both verify).

pub mod token;

pub use token::{AgentClaims, KeyRing, TokenError, TOKEN_PREFIX};
