//! What page and host say to each other over the terminal's WebSocket.
//!
//! - Binary messages carry terminal bytes: keystrokes from the page, output to it.
//! - Text messages carry one JSON object each, tagged by `type`:
//!   - from the page: `{"type":"resize","cols":C,"rows":R}`;
//!   - from the host: `{"type":"started"}` once the shell runs, then at the end either
//!     `{"type":"exit","status":N}` / `{"type":"exit","signal":"TERM"}` or
//!     `{"type":"closed","reason":"..."}` (the host or the workload ended it), followed
//!     by a Close frame.
//! - The WebSocket URL's query gives the first size: `?cols=C&rows=R`.

use burrow_proto::pb;
use burrow_proto::session::MAX_DIMENSION;
use serde::{Deserialize, Serialize};

/// Size used when the page gives none (or nonsense).
const DEFAULT_COLS: u32 = 80;
const DEFAULT_ROWS: u32 = 24;
/// Largest control message: a resize is about 40 bytes.
pub const MAX_CONTROL: usize = 1024;

/// A control message from the page.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientControl {
    /// The terminal's size changed.
    Resize { cols: u32, rows: u32 },
}

/// A control message to the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerControl {
    /// The shell runs.
    Started,
    /// The program ended by itself.
    Exit {
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
    },
    /// The session was ended from outside (host shutdown, workload ended, tunnel lost).
    Closed { reason: String },
}

impl ServerControl {
    /// The JSON text of this message.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain enums always serialise")
    }
}

/// Why a message from the page was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("control message too long ({0} bytes; at most {MAX_CONTROL})")]
    TooLong(usize),
    #[error("invalid control message: {0}")]
    Invalid(String),
    #[error("terminal size {cols}x{rows} is out of range (1 to {MAX_DIMENSION})")]
    Size { cols: u32, rows: u32 },
}

/// Parses a text message from the page.
pub fn parse_control(text: &str) -> Result<ClientControl, ProtocolError> {
    if text.len() > MAX_CONTROL {
        return Err(ProtocolError::TooLong(text.len()));
    }
    let control: ClientControl =
        serde_json::from_str(text).map_err(|error| ProtocolError::Invalid(error.to_string()))?;
    match control {
        ClientControl::Resize { cols, rows } if !in_range(cols) || !in_range(rows) => {
            Err(ProtocolError::Size { cols, rows })
        }
        control => Ok(control),
    }
}

fn in_range(n: u32) -> bool {
    (1..=MAX_DIMENSION).contains(&n)
}

/// The first terminal size, from the WebSocket URL's query; 80x24 for anything missing
/// or out of range (a page that cannot measure itself still gets a usable terminal).
pub fn initial_size(query: Option<&str>) -> pb::WindowSize {
    let mut size = pb::WindowSize { cols: DEFAULT_COLS, rows: DEFAULT_ROWS, width_px: 0, height_px: 0 };
    for pair in query.unwrap_or("").split('&') {
        let Some((key, value)) = pair.split_once('=') else { continue };
        let Ok(n) = value.parse::<u32>() else { continue };
        if !in_range(n) {
            continue;
        }
        match key {
            "cols" => size.cols = n,
            "rows" => size.rows = n,
            _ => {}
        }
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_messages_are_parsed_and_checked() {
        assert_eq!(
            parse_control(r#"{"type":"resize","cols":120,"rows":40}"#),
            Ok(ClientControl::Resize { cols: 120, rows: 40 })
        );
        assert!(matches!(
            parse_control(r#"{"type":"resize","cols":0,"rows":40}"#),
            Err(ProtocolError::Size { .. })
        ));
        assert!(matches!(
            parse_control(r#"{"type":"resize","cols":100001,"rows":1}"#),
            Err(ProtocolError::Size { .. })
        ));
        assert!(matches!(parse_control(r#"{"type":"exec","command":"id"}"#), Err(ProtocolError::Invalid(_))));
        assert!(matches!(parse_control("not json"), Err(ProtocolError::Invalid(_))));
        assert!(matches!(parse_control(&" ".repeat(MAX_CONTROL + 1)), Err(ProtocolError::TooLong(_))));
    }

    #[test]
    fn server_messages_have_the_documented_shape() {
        assert_eq!(ServerControl::Started.to_json(), r#"{"type":"started"}"#);
        assert_eq!(
            ServerControl::Exit { status: Some(3), signal: None }.to_json(),
            r#"{"type":"exit","status":3}"#
        );
        assert_eq!(
            ServerControl::Exit { status: None, signal: Some("TERM".into()) }.to_json(),
            r#"{"type":"exit","signal":"TERM"}"#
        );
        assert_eq!(
            ServerControl::Closed { reason: "the workload has ended".into() }.to_json(),
            r#"{"type":"closed","reason":"the workload has ended"}"#
        );
    }

    #[test]
    fn the_first_size_comes_from_the_query() {
        let size = |q| {
            let s = initial_size(q);
            (s.cols, s.rows)
        };
        assert_eq!(size(Some("cols=132&rows=43")), (132, 43));
        assert_eq!(size(None), (80, 24));
        assert_eq!(size(Some("cols=0&rows=99999999")), (80, 24));
        assert_eq!(size(Some("rows=50&junk&cols=x")), (80, 50));
    }
}
