//! The contract's records as plain Rust types.
//!
//! They mirror `wit/types.wit` one to one and come from crate `burrow-plugin-contract`,
//! the same definitions the host uses, so they serialize exactly like the host's:
//! snake_case keys, externally tagged enums in snake_case, [`Action`] in kebab-case. That
//! is the shape plugin manifests spell test vectors in, so a vector that passes in
//! [`crate::manifest`] natively means the same to the host.
//!
//! [`validate`] checks answers with the host's own rules.

pub use burrow_plugin_contract::types::*;
pub use burrow_plugin_contract::validate;
