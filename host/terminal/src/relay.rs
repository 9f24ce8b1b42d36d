//! One web terminal session: the page's WebSocket on one side, a session tunnel to the
//! agent's PTY on the other.
//!
//! Input and output run concurrently, as for SSH sessions: keystrokes waiting on a full
//! agent window never stop output, and a page that stops reading stops the agent (the
//! WebSocket's send waits), which stops reading the program.

use std::time::Duration;

use burrow_host_core::session_io::{SessionEvent, SessionReceiver, SessionSender};
use burrow_host_core::tunnel_io::TunnelStream;
use burrow_proto::pb::{self, session_exit::How, session_start::Command, ResetCode};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::protocol::{parse_control, ClientControl, ServerControl};

/// The terminal type xterm.js emulates.
const TERM: &str = "xterm-256color";

/// What one session needs besides its two ends.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The request that opened the WebSocket, for logs.
    pub request_id: String,
    /// The terminal's first size.
    pub size: pb::WindowSize,
    /// How often the host pings the page, so proxies keep the connection and a page
    /// that vanished without a close is noticed.
    pub ping_interval: Duration,
    /// Cancelled when the host starts shutting down: the page is told why.
    pub shutdown: CancellationToken,
}

/// Runs the session until the program exits, the page goes away, or the host or the
/// workload ends it; the page is told which.
pub async fn relay<S>(ws: WebSocketStream<S>, stream: TunnelStream, options: RelayOptions)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = options.request_id.as_str();
    let identity = stream.session().identity.clone();
    let (sender, receiver) = stream.into_session();
    let (mut sink, source) = ws.split();
    let start = pb::SessionStart {
        pty: Some(pb::Pty { term: TERM.to_owned(), size: Some(options.size), modes: Vec::new() }),
        env: Vec::new(),
        command: Some(Command::Shell(pb::Shell {})),
    };
    if let Err(error) = sender.start(start).await {
        debug!(request_id = id, %error, "terminal session could not start");
        let reason = "the session ended before it started".to_owned();
        finish(&mut sink, ServerControl::Closed { reason }).await;
        return;
    }
    if sink.send(text(ServerControl::Started)).await.is_err() {
        sender.reset(ResetCode::Cancelled, "the page went away");
        return;
    }
    debug!(request_id = id, cols = options.size.cols, rows = options.size.rows, "terminal session started");

    let end = {
        let input = relay_input(source, &sender, id);
        let output = relay_output(receiver, &mut sink, options.ping_interval);
        let ended = async {
            match identity.as_ref().map(|i| &i.ended) {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            end = output => end,
            () = input => {
                debug!(request_id = id, "the page closed the terminal");
                sender.reset(ResetCode::Cancelled, "the user closed the terminal");
                return;
            }
            () = ended => ServerControl::Closed {
                reason: identity.as_ref().map(|i| i.notice()).unwrap_or_default(),
            },
            () = options.shutdown.cancelled() => ServerControl::Closed { reason: "the host is shutting down".into() },
        }
    };
    if let ServerControl::Closed { reason } = &end {
        sender.reset(ResetCode::Shutdown, reason.clone());
    }
    debug!(request_id = id, end = %end.to_json(), "terminal session ended");
    finish(&mut sink, end).await;
}

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

fn text(control: ServerControl) -> Message {
    Message::Text(control.to_json().into())
}

/// Tells the page how the session ended and closes the WebSocket.
async fn finish<S: AsyncRead + AsyncWrite + Unpin>(sink: &mut Sink<S>, end: ServerControl) {
    let _ = sink.send(text(end)).await;
    let close = CloseFrame { code: CloseCode::Normal, reason: "session ended".into() };
    let _ = sink.send(Message::Close(Some(close))).await;
    let _ = sink.close().await;
}

/// Keystrokes and resizes to the agent. Returns when the page closed the WebSocket.
async fn relay_input<S: AsyncRead + AsyncWrite + Unpin>(
    mut source: SplitStream<WebSocketStream<S>>,
    sender: &SessionSender,
    id: &str,
) {
    while let Some(message) = source.next().await {
        match message {
            Ok(Message::Binary(data)) => {
                // A failed send means the session is over; output tells the page why.
                let _ = sender.data(data).await;
            }
            Ok(Message::Text(text)) => match parse_control(&text) {
                Ok(ClientControl::Resize { cols, rows }) => {
                    let _ = sender.resize(pb::WindowSize { cols, rows, width_px: 0, height_px: 0 }).await;
                }
                // A confused page must not end the user's session; the log says why.
                Err(error) => debug!(request_id = id, %error, "ignored a terminal control message"),
            },
            Ok(Message::Close(_)) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Output to the page, with pings; returns how the session ended.
async fn relay_output<S: AsyncRead + AsyncWrite + Unpin>(
    mut receiver: SessionReceiver,
    sink: &mut Sink<S>,
    ping_interval: Duration,
) -> ServerControl {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    let mut exit = None;
    loop {
        let event = tokio::select! {
            event = receiver.next() => event,
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return ServerControl::Closed { reason: "the page stopped answering".into() };
                }
                continue;
            }
        };
        match event {
            Some(SessionEvent::Data(data) | SessionEvent::Stderr(data)) => {
                if sink.send(Message::Binary(data)).await.is_err() {
                    return ServerControl::Closed { reason: "the page stopped reading".into() };
                }
            }
            Some(SessionEvent::Exit(e)) => {
                // The agent's own words (a refused start, say) belong on the screen.
                if !e.message.is_empty() {
                    let line = format!("\r\nburrow: {}\r\n", e.message);
                    let _ = sink.send(Message::Binary(line.into())).await;
                }
                exit = Some(e);
            }
            Some(SessionEvent::Eof) | None => break,
            Some(SessionEvent::Reset(ResetCode::WorkloadEnded, reason)) => {
                return ServerControl::Closed { reason: burrow_host_core::registry::ended_notice(&reason) };
            }
            Some(SessionEvent::Reset(_, reason)) => {
                return ServerControl::Closed { reason: format!("the session was lost: {reason}") };
            }
        }
    }
    match exit.and_then(|e| e.how) {
        Some(How::Status(status)) => ServerControl::Exit { status: Some(status), signal: None },
        Some(How::Signal(name)) => ServerControl::Exit { status: None, signal: Some(name) },
        None => ServerControl::Closed { reason: "the agent ended the session without an exit status".into() },
    }
}
