//! A session tunnel (`DialKind::Session`) as frames: what to run, input, resizes and
//! signals go to the agent; output, stderr and the exit come back. Every ingress that
//! carries an interactive session (the SSH server, the web terminal) drives one.
//!
//! The two halves run concurrently and share the tunnel's state machine under a lock
//! never held across an await, so input waiting on a slow program never stops its
//! output, and the other way round.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use burrow_proto::pb::{self, ResetCode};
use burrow_proto::tunnel::{chunks, frames, Event, Phase, Tunnel};
use bytes::Bytes;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::registry::Session;
use burrow_host_metrics::{Metrics, RoutePath};

/// Why a frame could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The tunnel has ended (the agent or the host closed it).
    #[error("the session's tunnel has ended")]
    Closed,
    /// The frame is not allowed now (a bug in the caller, or a start sent twice).
    #[error("{0}")]
    Protocol(String),
}

/// What the agent sent.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// Output: the terminal's, or the program's standard output.
    Data(Bytes),
    /// The program's standard error (sessions without a terminal).
    Stderr(Bytes),
    /// How the program ended; the agent's `Eof` follows.
    Exit(pb::SessionExit),
    /// The agent will send nothing more.
    Eof,
    /// The agent (or the tunnel) aborted the session, with the reason.
    Reset(ResetCode, String),
}

struct Shared {
    state: Mutex<Tunnel>,
    /// For a reset when both halves are dropped before the session finished.
    outbound: Option<mpsc::Sender<Result<pb::HostFrame, Status>>>,
    session: Arc<Session>,
    path: RoutePath,
    metrics: Option<Arc<Metrics>>,
    to_agent: AtomicU64,
    from_agent: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Tunnel> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if state.phase() != Phase::Closed {
            // The user went away: the agent hangs up the program.
            state.send_reset();
            if let Some(tx) = &self.outbound {
                let _ =
                    tx.try_send(Ok(frames::host_reset(ResetCode::Cancelled, "the user closed the session")));
            }
        }
        if let Some(m) = &self.metrics {
            m.tunnel_bytes(self.to_agent.load(Ordering::Relaxed), self.from_agent.load(Ordering::Relaxed));
            if self.path == RoutePath::Local {
                m.tunnels_active.dec();
            }
        }
    }
}

/// Builds the halves from a dialed tunnel's parts (see `TunnelStream::into_session`).
pub(crate) fn split(
    inbound: Streaming<pb::AgentFrame>,
    outbound: Option<mpsc::Sender<Result<pb::HostFrame, Status>>>,
    state: Tunnel,
    session: Arc<Session>,
    path: RoutePath,
    metrics: Option<Arc<Metrics>>,
) -> (SessionSender, SessionReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        outbound: outbound.clone(),
        session,
        path,
        metrics,
        to_agent: AtomicU64::new(0),
        from_agent: AtomicU64::new(0),
    });
    (SessionSender { tx: outbound, shared: shared.clone() }, SessionReceiver { inbound, shared, done: false })
}

/// The host's half: what to run, input, resizes, signals.
pub struct SessionSender {
    tx: Option<mpsc::Sender<Result<pb::HostFrame, Status>>>,
    shared: Arc<Shared>,
}

impl SessionSender {
    async fn send(&self, frame: pb::HostFrame) -> Result<(), SessionError> {
        let tx = self.tx.as_ref().ok_or(SessionError::Closed)?;
        tx.send(Ok(frame)).await.map_err(|_| SessionError::Closed)
    }

    fn check(
        &self,
        f: impl FnOnce(&mut Tunnel) -> Result<(), burrow_proto::tunnel::ProtocolError>,
    ) -> Result<(), SessionError> {
        let mut state = self.shared.lock();
        if state.phase() == Phase::Closed {
            return Err(SessionError::Closed);
        }
        f(&mut state).map_err(|e| SessionError::Protocol(e.to_string()))
    }

    /// Sends what to run; once, before any input.
    pub async fn start(&self, start: pb::SessionStart) -> Result<(), SessionError> {
        self.check(Tunnel::send_start)?;
        self.send(frames::start(start)).await
    }

    /// The terminal was resized.
    pub async fn resize(&self, size: pb::WindowSize) -> Result<(), SessionError> {
        self.check(Tunnel::send_session_control)?;
        self.send(frames::resize(size)).await
    }

    /// Delivers a signal (RFC 4254 name, no `SIG`).
    pub async fn signal(&self, name: &str) -> Result<(), SessionError> {
        self.check(Tunnel::send_session_control)?;
        self.send(frames::signal(name)).await
    }

    /// Input, split into frames; waits while the agent's window is full.
    pub async fn data(&self, data: Bytes) -> Result<(), SessionError> {
        for chunk in chunks(data) {
            self.check(Tunnel::send_data)?;
            let n = chunk.len() as u64;
            self.send(frames::host_data(chunk)).await?;
            self.shared.to_agent.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }

    /// End of input.
    pub async fn eof(&self) -> Result<(), SessionError> {
        self.check(|t| t.send_eof().map(|_| ()))?;
        self.send(frames::host_eof()).await
    }

    /// Aborts the session; the agent hangs up the program.
    pub fn reset(&self, code: ResetCode, message: impl Into<String>) {
        let mut state = self.shared.lock();
        if state.phase() != Phase::Closed {
            state.send_reset();
            if let Some(tx) = &self.tx {
                let _ = tx.try_send(Ok(frames::host_reset(code, message)));
            }
        }
    }

    /// The agent session serving this tunnel.
    pub fn session(&self) -> &Arc<Session> {
        &self.shared.session
    }
}

/// The agent's half: output, stderr, the exit.
pub struct SessionReceiver {
    inbound: Streaming<pb::AgentFrame>,
    shared: Arc<Shared>,
    done: bool,
}

impl SessionReceiver {
    /// The next thing the agent sent; `None` after `Eof` or a reset.
    pub async fn next(&mut self) -> Option<SessionEvent> {
        while !self.done {
            let cut = async {
                match self.shared.session.identity.is_some() {
                    true => self.shared.session.cut.cancelled().await,
                    false => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                m = self.inbound.message() => m,
                () = cut => {
                    self.done = true;
                    if let Some(tx) = &self.shared.outbound {
                        let _ = tx.try_send(Ok(frames::host_reset(ResetCode::Cancelled, "the agent's session was ended")));
                    }
                    self.shared.lock().send_reset();
                    return Some(SessionEvent::Reset(ResetCode::Cancelled, "the agent's session was ended".into()));
                }
            };
            let frame = match message {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    self.done = true;
                    let clean = self.shared.lock().stream_ended();
                    return (!clean).then(|| {
                        SessionEvent::Reset(ResetCode::IoError, "the agent ended the tunnel".into())
                    });
                }
                Err(status) => {
                    self.done = true;
                    self.shared.lock().stream_ended();
                    return Some(SessionEvent::Reset(
                        ResetCode::IoError,
                        format!("tunnel RPC failed: {}", status.message()),
                    ));
                }
            };
            let event = self.shared.lock().receive_agent_frame(frame);
            match event {
                Ok(Event::Data(data)) => {
                    self.shared.from_agent.fetch_add(data.len() as u64, Ordering::Relaxed);
                    return Some(SessionEvent::Data(data));
                }
                Ok(Event::Stderr(data)) => {
                    self.shared.from_agent.fetch_add(data.len() as u64, Ordering::Relaxed);
                    return Some(SessionEvent::Stderr(data));
                }
                Ok(Event::Exit(exit)) => return Some(SessionEvent::Exit(exit)),
                Ok(Event::Eof) => {
                    self.done = true;
                    return Some(SessionEvent::Eof);
                }
                Ok(Event::Reset(reset)) => {
                    self.done = true;
                    return Some(SessionEvent::Reset(reset.code(), reset.message));
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    if let Some(tx) = &self.shared.outbound {
                        let _ = tx.try_send(Ok(frames::host_reset(ResetCode::ProtocolError, e.to_string())));
                    }
                    self.shared.lock().send_reset();
                    return Some(SessionEvent::Reset(ResetCode::ProtocolError, e.to_string()));
                }
            }
        }
        None
    }
}
