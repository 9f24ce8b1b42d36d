//! Burrow's plugin contract as plain Rust, shared by the host (`burrow-host`) and the
//! plugin SDK (`burrow-plugin-sdk`).
//!
//! The WIT package `burrow:plugin` (the `.wit` files beside this crate) is the contract
//! on the wire. Both sides also need the same contract as ordinary Rust values: the host
//! to hand requests around and judge answers, the SDK to give plugin authors types to
//! write against, and both to read plugin manifests and their test vectors. Those shapes
//! used to be written twice and kept in step by hand; they live here once, and each side
//! only converts between them and its own generated bindings.
//!
//! The crate builds natively and for `wasm32-wasip2` (inside every plugin), so it depends
//! on data crates only: serde, serde_json, toml, thiserror.
//!
//! # Layout
//!
//! - [`types`]: the records of `types.wit` (`AgentHello`, `Credential`, `Decision`,
//!   `RouteRequest`, ...) with their serde form, which is also the manifest's spelling.
//! - [`validate`]: the rules an answer must follow before anyone trusts it (ids,
//!   workload kinds, deny statuses, route orders).
//! - [`kind`]: [`PluginKind`], one per world, and how configs and manifests spell it.
//! - [`manifest`]: the manifest format (embedded in a component, or `NAME.toml` beside
//!   it) and its parser: plugin metadata and test vectors with their inputs already
//!   parsed into [`types`].
//! - [`matcher`]: whether a result contains a vector's `expect` (subset semantics), and
//!   a readable, credential-masked [`matcher::Mismatch`] when it does not.
//!
//! Running vectors is left to each side: the host runs them against a live wasm instance
//! in its canary, the SDK natively against its `MockHost`.

#![deny(missing_docs)]

pub mod kind;
pub mod manifest;
pub mod matcher;
pub mod types;
pub mod validate;

pub use kind::PluginKind;
