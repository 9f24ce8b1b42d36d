//! Browser sign-in with OpenID Connect, done once at the host for every workload.
//!
//! # Layout
//! - [`config`]: the `[sign_in]` table (provider, client, the host's sign-in URL, cookie
//!   secrets, claims, session lifetime).
//! - [`flow`]: the steps (send to sign in, start, callback, redeem a ticket on the
//!   workload's host, logout) as [`flow::Answer`]s the ingress turns into responses.
//! - [`oidc`]: the relying party (discovery, the authorization request with PKCE, the
//!   code exchange and ID token verification; groups from the ID token or userinfo).
//! - [`seal`]: values handed to browsers, encrypted and authenticated per purpose.
//! - [`session`]: what a sign-in carries (identity, login state, ticket, root and
//!   workload sessions; see its docs for the cookie design against sibling workloads).

pub mod config;
pub mod flow;
pub mod oidc;
pub mod seal;
pub mod session;

pub use config::SignInConfig;
pub use flow::{Answer, MarkFuture, SharedMarks, SignIn, LOGOUT_PATH, REDEEM_PATH, START_PATH};
pub use seal::{Purpose, SealError, Sealer};
pub use session::{Identity, LoginState, ReturnTo, RootSession, Ticket, WorkloadSession};

/// Where the provider sends the browser back to, on the sign-in host.
pub const CALLBACK_PATH: &str = "/_burrow/sign-in/callback";
