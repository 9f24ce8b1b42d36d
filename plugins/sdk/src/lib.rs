//! Write [Burrow](https://example.invalid/burrow) plugins in Rust.
//!
//! A Burrow plugin is a WebAssembly component (`wasm32-wasip2`) implementing one of the
//! worlds of WIT package `burrow:plugin@1.1.0`. This crate hides the generated bindings
//! behind plain Rust:
//!
//! - [`types`]: the contract's records ([`AgentHello`], [`Principal`], [`Decision`],
//!   [`ResolveRequest`], [`RouteRequest`], ...);
//! - [`Host`]: the host's imports (log, config, clock, key-value store, outbound HTTP),
//!   implemented by [`WasmHost`] inside the component and by [`MockHost`] in native
//!   tests;
//! - one trait per plugin kind ([`Authorizer`], [`Workload`], [`Router`]) and one macro
//!   exporting it ([`export_authorizer!`], [`export_workload!`], [`export_router!`]);
//! - [`manifest`]: run a plugin manifest's test vectors natively; [`embed_manifest!`]
//!   puts the manifest into the component, where the host reads it;
//! - [`routing::stable_hash`]: a platform- and release-stable hash for sticky routing.
//!
//! ```
//! use burrow_plugin_sdk::*;
//!
//! /// Lets in whoever presents the one configured bearer token.
//! struct SharedSecret {
//!     token: String,
//! }
//!
//! impl Authorizer for SharedSecret {
//!     fn init(host: &impl Host) -> Result<Self, String> {
//!         match host.config_get("token") {
//!             Some(ConfigValue::Text(token)) if !token.is_empty() => Ok(SharedSecret { token }),
//!             _ => Err("config: `token` must be a non-empty string".into()),
//!         }
//!     }
//!
//!     // `authenticate_agent` is left to the host's `[plugins.agents]` slot (the default
//!     // rejects every agent).
//!
//!     fn authenticate_user(&self, _host: &impl Host, req: UserAuthRequest) -> UserAuthOutcome {
//!         match req.credential {
//!             Credential::None => UserAuthOutcome::Anonymous,
//!             // (A real plugin compares in constant time: see the authorizer-static plugin.)
//!             Credential::Bearer(token) if token == self.token => {
//!                 UserAuthOutcome::Authenticated(Principal::new("friend"))
//!             }
//!             _ => UserAuthOutcome::Rejected("unknown credential".into()),
//!         }
//!     }
//!
//!     fn authorize(&self, _host: &impl Host, req: AuthorizeRequest) -> Decision {
//!         match req.principal {
//!             Some(_) => Decision::allow_stripping_credentials(),
//!             None => Decision::unauthorized("log in first"),
//!         }
//!     }
//! }
//!
//! export_authorizer!(SharedSecret);
//!
//! # fn main() {
//! let host = MockHost::new().with_config_json(r#"{"token": "s3cret"}"#);
//! let plugin = SharedSecret::init(&host).unwrap();
//! let req = UserAuthRequest {
//!     credential: Credential::Bearer("s3cret".into()),
//!     client_addr: "127.0.0.1:1234".into(),
//!     host: "web-demo.localhost".into(),
//!     action: Action::Http,
//! };
//! assert!(matches!(plugin.authenticate_user(&host, req), UserAuthOutcome::Authenticated(_)));
//! # }
//! ```
//!
//! See `README.md` next to this crate for the whole path from an empty directory to a
//! plugin loaded by the host.

#![deny(missing_docs)]

#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings;
mod convert;
mod export;
mod host;
pub mod http;
pub mod manifest;
mod mock;
mod plugin;
pub mod routing;
pub mod types;
mod wasm_host;

pub use host::{ConfigError, ConfigValue, Host, KvError, LogLevel, KV_MAX_KEY_BYTES, KV_MAX_VALUE_BYTES};
pub use http::{HttpError, HttpRequest, HttpResponse};
pub use mock::MockHost;
pub use plugin::{Authorizer, Router, Workload, NO_AGENTS};
pub use types::{
    label, Action, AgentAuthOutcome, AgentEvent, AgentHello, AgentIdentity, AuthorizeRequest, Credential,
    Decision, ExpiryRequest, Labels, Principal, ResolveRequest, Resolved, RouteCandidate, RouteRequest,
    Target, UserAuthOutcome, UserAuthRequest,
};
pub use wasm_host::WasmHost;

/// Used by the export macros; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings;
    pub use crate::export::{AuthorizerExport, InstanceCell, RouterExport, Slot, WorkloadExport};
}
