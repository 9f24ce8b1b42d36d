//! The protocol-neutral core every ingress uses (HTTP today; SSH, web terminals and
//! port-forwards plug into the same two calls).
//!
//! # Layout
//! - [`admission`]: a neutral request (action, host name or SSH user, port, credential,
//!   peer) in; the plugins' decision and the [`burrow_host_plugins::types::Target`] out.
//! - [`dial`]: the [`dial::Dialer`] that turns a target into a byte stream, and the
//!   [`dial::LocalDialer`] over this replica's parked tunnels (a cluster dialer wraps it).
//! - [`registry`]: parked agent tunnels, claimed in O(1), handed straight to waiters.
//! - [`tunnel_io`]: a claimed tunnel as `AsyncRead + AsyncWrite`.
//! - [`sessions`]: agent sessions open here, publishing agent up/down events.
//! - [`workloads`]: workloads found ended (410).
//! - [`lifecycle`]: draining and shutdown flags.
//! - [`limits`]: what one source address holds open, capped (agent port and ingress).
//! - [`context`]: [`context::HostContext`], the parts above assembled once per host.

pub mod admission;
pub mod context;
pub mod dial;
pub mod lifecycle;
pub mod limits;
pub mod registry;
pub mod session_io;
pub mod sessions;
pub mod tunnel_io;
pub mod workloads;
