//! The web terminal: a page served by the host (xterm.js, vendored with provenance by
//! `vendor-xterm.sh`) whose WebSocket carries a PTY session to the workload's agent,
//! through the same admission (action `terminal`) and dialer as SSH sessions.
//!
//! Every workload URL has a terminal at `<url>/_burrow/terminal` (for the path-routed
//! `terminal` kind, `/terminal/<id>/_burrow/terminal`). A plain `GET` returns the
//! page; the page opens a WebSocket on the same URL, which starts a new session in a PTY
//! of the agent's configured shell. The HTTP ingress does the routing, admission, origin
//! check and dial; this crate owns what the browser sees and the session's relay.
//!
//! # Layout
//! - `assets.rs`: the page and its scripts and styles, served from the binary.
//! - `protocol.rs`: the messages between page and host, pure and unit-tested.
//! - `relay.rs`: one session: WebSocket messages to session frames and back.

mod assets;
mod protocol;
mod relay;

pub use assets::{asset_response, page_response, ASSETS_PREFIX};
pub use protocol::{initial_size, ClientControl, ProtocolError, ServerControl};
pub use relay::{relay, RelayOptions};

/// The path suffix naming a workload's terminal.
pub const TERMINAL_SUFFIX: &str = "/_burrow/terminal";

/// Whether `path` (without its query) names a terminal: `/_burrow/terminal` itself, or
/// below a path-routed workload's prefix (`/terminal/abc/_burrow/terminal`).
pub fn is_terminal_path(path: &str) -> bool {
    path.ends_with(TERMINAL_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_paths() {
        assert!(is_terminal_path("/_burrow/terminal"));
        assert!(is_terminal_path("/terminal/abc/_burrow/terminal"));
        assert!(!is_terminal_path("/_burrow/terminal/x"));
        assert!(!is_terminal_path("/my_burrow/terminals"));
        assert!(!is_terminal_path("/"));
    }
}
