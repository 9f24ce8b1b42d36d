//! The tunnel state machine, shared by host and agent.
//!
//! A tunnel is one `Tunnel` RPC. Its life:
//!
//! ```text
//!  Parked --Dial--> Dialing --DialResult(ok)--> Open --(Eof both ways)--> Closed
//!                          \--DialResult(refused)--> Closed
//!  any state --Reset / stream end--> Closed
//! ```
//!
//! While `Open`, each direction is closed independently by an `Eof` frame (half-close).
//! The machine only validates and records; callers do the I/O. Every method returns an
//! error for a frame that breaks the rules, and the caller answers it with a `Reset`
//! carrying [`ResetCode::ProtocolError`](crate::pb::ResetCode::ProtocolError).
//!
//! A session tunnel (`Dial.kind = SESSION`) adds, while `Open`:
//!
//! ```text
//!  host:  SessionStart (once, before any host data or Eof), then data, WindowSize and
//!         SessionSignal (the last two also after the host's Eof)
//!  agent: data and stderr (only after the start), SessionExit (at most once, before
//!         the agent's Eof), then nothing but Eof or Reset
//! ```
//!
//! Session frames on a TCP tunnel are violations. An unknown dial kind is not: the
//! agent sees the `Dial` and refuses it with `UNSUPPORTED`.

use bytes::Bytes;

use crate::pb::{self, agent_frame, host_frame};

/// Which end of the tunnel this machine tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The host: sends `Dial`, receives `DialResult`.
    Host,
    /// The agent: receives `Dial`, sends `DialResult`.
    Agent,
}

/// Where the tunnel is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opened by the agent, waiting for the host to claim it.
    Parked,
    /// `Dial` sent (host) or received (agent); waiting for the `DialResult`.
    Dialing,
    /// Bytes flow; see [`Tunnel::can_send`] and [`Tunnel::can_receive`] for each direction.
    Open,
    /// Finished: both sides sent `Eof`, a dial was refused, or a reset happened.
    Closed,
}

/// A frame broke the protocol's ordering rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tunnel protocol violation: {what} while {phase:?}")]
pub struct ProtocolError {
    /// What arrived or was attempted.
    pub what: &'static str,
    /// The phase it arrived in.
    pub phase: Phase,
}

/// What a received frame means for the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// (Agent) The host asks for this service.
    Dial(pb::Dial),
    /// (Host) The agent connected to the service.
    DialAccepted,
    /// (Host) The agent refused the dial.
    DialRefused(pb::Refusal),
    /// Payload bytes for the local socket.
    Data(Bytes),
    /// The peer will send no more data.
    Eof,
    /// The peer aborted the tunnel.
    Reset(pb::Reset),
    /// (Agent, session) What to run.
    Start(pb::SessionStart),
    /// (Agent, session) The terminal was resized.
    Resize(pb::WindowSize),
    /// (Agent, session) A signal for the program.
    Signal(pb::SessionSignal),
    /// (Host, session) The program's standard error.
    Stderr(Bytes),
    /// (Host, session) How the program ended.
    Exit(pb::SessionExit),
    /// An empty frame (no `oneof` set): ignored for forward compatibility.
    Ignored,
}

/// What a dialed tunnel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TCP connection (the default, and all a minor-0 peer knows).
    Tcp,
    /// An interactive session served by the agent.
    Session,
    /// A kind this side does not know; the agent refuses such a dial.
    Unknown,
}

impl Kind {
    /// The kind a `Dial` asks for.
    pub fn of(dial: &pb::Dial) -> Self {
        match pb::DialKind::try_from(dial.kind) {
            Ok(pb::DialKind::Tcp) => Kind::Tcp,
            Ok(pb::DialKind::Session) => Kind::Session,
            Err(_) => Kind::Unknown,
        }
    }
}

/// The state of one tunnel, seen from one side.
#[derive(Debug, Clone)]
pub struct Tunnel {
    role: Role,
    phase: Phase,
    kind: Kind,
    sent_eof: bool,
    received_eof: bool,
    /// Session: `SessionStart` sent (host) or received (agent).
    started: bool,
    /// Session: `SessionExit` sent (agent) or received (host).
    exited: bool,
}

impl Tunnel {
    /// A freshly opened, parked tunnel.
    pub fn new(role: Role) -> Self {
        Self {
            role,
            phase: Phase::Parked,
            kind: Kind::Tcp,
            sent_eof: false,
            received_eof: false,
            started: false,
            exited: false,
        }
    }

    /// What the tunnel carries (known once dialed).
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// This side may still send data.
    pub fn can_send(&self) -> bool {
        self.phase == Phase::Open && !self.sent_eof && self.data_allowed(self.role)
    }

    /// The peer may still send data.
    pub fn can_receive(&self) -> bool {
        let peer = match self.role {
            Role::Host => Role::Agent,
            Role::Agent => Role::Host,
        };
        self.phase == Phase::Open && !self.received_eof && self.data_allowed(peer)
    }

    /// On a session, data flows only after the start, and the agent's ends at its exit.
    fn data_allowed(&self, sender: Role) -> bool {
        match self.kind {
            Kind::Session => self.started && !(sender == Role::Agent && self.exited),
            Kind::Tcp | Kind::Unknown => true,
        }
    }

    fn violation(&self, what: &'static str) -> ProtocolError {
        ProtocolError { what, phase: self.phase }
    }

    fn require_role(&self, role: Role, what: &'static str) -> Result<(), ProtocolError> {
        if self.role == role {
            Ok(())
        } else {
            Err(self.violation(what))
        }
    }

    /// (Host) Record that `dial` is being sent.
    pub fn send_dial(&mut self, dial: &pb::Dial) -> Result<(), ProtocolError> {
        self.require_role(Role::Host, "send Dial from agent side")?;
        if self.phase != Phase::Parked {
            return Err(self.violation("send Dial"));
        }
        // Checked before anything is recorded: a refused dial leaves the tunnel parked as it
        // was, not parked with the unknown kind (found by fuzz target `tunnel_frames`).
        let kind = Kind::of(dial);
        if kind == Kind::Unknown {
            return Err(self.violation("send Dial of an unknown kind"));
        }
        self.kind = kind;
        self.phase = Phase::Dialing;
        Ok(())
    }

    /// (Host) Record that `SessionStart` is being sent.
    pub fn send_start(&mut self) -> Result<(), ProtocolError> {
        self.require_role(Role::Host, "send SessionStart from agent side")?;
        self.check_start("send SessionStart")?;
        self.started = true;
        Ok(())
    }

    /// (Host) Record that `WindowSize` or `SessionSignal` is being sent.
    pub fn send_session_control(&mut self) -> Result<(), ProtocolError> {
        self.require_role(Role::Host, "send session control from agent side")?;
        self.check_session_control("send session control")
    }

    /// (Agent) Record that a `stderr` frame is being sent.
    pub fn send_stderr(&mut self) -> Result<(), ProtocolError> {
        self.require_role(Role::Agent, "send stderr from host side")?;
        if self.kind != Kind::Session || !self.can_send() {
            return Err(self.violation("send stderr"));
        }
        Ok(())
    }

    /// (Agent) Record that `SessionExit` is being sent.
    pub fn send_exit(&mut self) -> Result<(), ProtocolError> {
        self.require_role(Role::Agent, "send SessionExit from host side")?;
        if self.kind != Kind::Session || !self.can_send() {
            return Err(self.violation("send SessionExit"));
        }
        self.exited = true;
        Ok(())
    }

    /// A start is allowed once, on an open session, before the host's data or Eof.
    fn check_start(&self, what: &'static str) -> Result<(), ProtocolError> {
        if self.kind != Kind::Session || self.phase != Phase::Open || self.started || self.host_eof() {
            return Err(self.violation(what));
        }
        Ok(())
    }

    /// Resizes and signals need a started, open session; the host's Eof does not end them.
    fn check_session_control(&self, what: &'static str) -> Result<(), ProtocolError> {
        if self.kind != Kind::Session || self.phase != Phase::Open || !self.started {
            return Err(self.violation(what));
        }
        Ok(())
    }

    fn host_eof(&self) -> bool {
        match self.role {
            Role::Host => self.sent_eof,
            Role::Agent => self.received_eof,
        }
    }

    /// (Agent) Record that a `DialResult` is being sent.
    pub fn send_dial_result(&mut self, accepted: bool) -> Result<(), ProtocolError> {
        self.require_role(Role::Agent, "send DialResult from host side")?;
        if self.phase != Phase::Dialing {
            return Err(self.violation("send DialResult"));
        }
        self.phase = if accepted { Phase::Open } else { Phase::Closed };
        Ok(())
    }

    /// Record that a data frame is being sent.
    pub fn send_data(&mut self) -> Result<(), ProtocolError> {
        if !self.can_send() {
            return Err(self.violation("send data"));
        }
        Ok(())
    }

    /// Record that `Eof` is being sent. Returns true when the tunnel is now finished.
    pub fn send_eof(&mut self) -> Result<bool, ProtocolError> {
        if !self.can_send() && !self.eof_after_exit() {
            return Err(self.violation("send Eof"));
        }
        self.sent_eof = true;
        Ok(self.finish_if_done())
    }

    /// Record that a `Reset` is being sent (always allowed; closes the tunnel).
    pub fn send_reset(&mut self) {
        self.phase = Phase::Closed;
    }

    /// The RPC ended without `Eof`/`Reset` from the peer. Returns true if that was a
    /// clean end (the tunnel had already finished), false if it was an abort.
    pub fn stream_ended(&mut self) -> bool {
        let clean = self.phase == Phase::Closed || (self.phase == Phase::Parked);
        self.phase = Phase::Closed;
        clean
    }

    fn finish_if_done(&mut self) -> bool {
        if self.sent_eof && self.received_eof {
            self.phase = Phase::Closed;
        }
        self.phase == Phase::Closed
    }

    /// A session's agent, past its exit, may still close its direction.
    fn eof_after_exit(&self) -> bool {
        self.kind == Kind::Session && self.exited && self.phase == Phase::Open && {
            let agent_eof = match self.role {
                Role::Agent => self.sent_eof,
                Role::Host => self.received_eof,
            };
            !agent_eof
        }
    }

    fn receive_common(&mut self, what: &'static str) -> Result<(), ProtocolError> {
        if !self.can_receive() {
            return Err(self.violation(what));
        }
        Ok(())
    }

    fn receive_eof(&mut self) -> Result<Event, ProtocolError> {
        if !self.can_receive() && !self.eof_after_exit() {
            return Err(self.violation("Eof"));
        }
        self.received_eof = true;
        self.finish_if_done();
        Ok(Event::Eof)
    }

    fn receive_reset(&mut self, reset: pb::Reset) -> Result<Event, ProtocolError> {
        if self.phase == Phase::Closed {
            return Err(self.violation("Reset"));
        }
        self.phase = Phase::Closed;
        Ok(Event::Reset(reset))
    }

    /// (Host) Validate and apply a frame from the agent.
    pub fn receive_agent_frame(&mut self, frame: pb::AgentFrame) -> Result<Event, ProtocolError> {
        self.require_role(Role::Host, "AgentFrame on agent side")?;
        match frame.frame {
            None => Ok(Event::Ignored),
            Some(agent_frame::Frame::DialResult(result)) => {
                if self.phase != Phase::Dialing {
                    return Err(self.violation("DialResult"));
                }
                match result.refusal {
                    None => {
                        self.phase = Phase::Open;
                        Ok(Event::DialAccepted)
                    }
                    Some(refusal) => {
                        self.phase = Phase::Closed;
                        Ok(Event::DialRefused(refusal))
                    }
                }
            }
            Some(agent_frame::Frame::Data(data)) => {
                self.receive_common("data")?;
                Ok(Event::Data(data))
            }
            Some(agent_frame::Frame::Eof(_)) => self.receive_eof(),
            Some(agent_frame::Frame::Reset(reset)) => self.receive_reset(reset),
            Some(agent_frame::Frame::Stderr(data)) => {
                if self.kind != Kind::Session {
                    return Err(self.violation("stderr"));
                }
                self.receive_common("stderr")?;
                Ok(Event::Stderr(data))
            }
            Some(agent_frame::Frame::Exit(exit)) => {
                if self.kind != Kind::Session {
                    return Err(self.violation("SessionExit"));
                }
                self.receive_common("SessionExit")?;
                self.exited = true;
                Ok(Event::Exit(exit))
            }
        }
    }

    /// (Agent) Validate and apply a frame from the host.
    pub fn receive_host_frame(&mut self, frame: pb::HostFrame) -> Result<Event, ProtocolError> {
        self.require_role(Role::Agent, "HostFrame on host side")?;
        match frame.frame {
            None => Ok(Event::Ignored),
            Some(host_frame::Frame::Dial(dial)) => {
                if self.phase != Phase::Parked {
                    return Err(self.violation("Dial"));
                }
                self.phase = Phase::Dialing;
                self.kind = Kind::of(&dial);
                Ok(Event::Dial(dial))
            }
            Some(host_frame::Frame::Data(data)) => {
                self.receive_common("data")?;
                Ok(Event::Data(data))
            }
            Some(host_frame::Frame::Eof(_)) => self.receive_eof(),
            Some(host_frame::Frame::Reset(reset)) => self.receive_reset(reset),
            Some(host_frame::Frame::Start(start)) => {
                self.check_start("SessionStart")?;
                self.started = true;
                Ok(Event::Start(start))
            }
            Some(host_frame::Frame::Resize(size)) => {
                self.check_session_control("WindowSize")?;
                Ok(Event::Resize(size))
            }
            Some(host_frame::Frame::Signal(signal)) => {
                self.check_session_control("SessionSignal")?;
                Ok(Event::Signal(signal))
            }
        }
    }
}

/// Split a payload into frames of at most [`MAX_DATA_FRAME`](crate::MAX_DATA_FRAME)
/// bytes without copying.
pub fn chunks(mut payload: Bytes) -> impl Iterator<Item = Bytes> {
    std::iter::from_fn(move || {
        if payload.is_empty() {
            return None;
        }
        let n = payload.len().min(crate::MAX_DATA_FRAME);
        Some(payload.split_to(n))
    })
}

/// Frame constructors, so callers never spell out the `oneof` plumbing.
pub mod frames {
    use super::*;

    /// Host -> agent: claim the tunnel for a TCP connection to `service`.
    pub fn dial(service: &str, request_id: &str) -> pb::HostFrame {
        dial_kind(pb::DialKind::Tcp, service, request_id, "")
    }
    /// Host -> agent: claim the tunnel for a session on `service`, for `principal`.
    pub fn dial_session(service: &str, request_id: &str, principal: &str) -> pb::HostFrame {
        dial_kind(pb::DialKind::Session, service, request_id, principal)
    }
    /// Host -> agent: claim the tunnel for `kind` on `service`.
    pub fn dial_kind(kind: pb::DialKind, service: &str, request_id: &str, principal: &str) -> pb::HostFrame {
        pb::HostFrame {
            frame: Some(host_frame::Frame::Dial(pb::Dial {
                service: service.to_owned(),
                request_id: request_id.to_owned(),
                kind: kind as i32,
                principal: principal.to_owned(),
            })),
        }
    }
    /// Host -> agent: what the session runs.
    pub fn start(start: pb::SessionStart) -> pb::HostFrame {
        pb::HostFrame { frame: Some(host_frame::Frame::Start(start)) }
    }
    /// Host -> agent: the terminal's new size.
    pub fn resize(size: pb::WindowSize) -> pb::HostFrame {
        pb::HostFrame { frame: Some(host_frame::Frame::Resize(size)) }
    }
    /// Host -> agent: a signal (RFC 4254 name, no "SIG") for the program.
    pub fn signal(name: &str) -> pb::HostFrame {
        pb::HostFrame { frame: Some(host_frame::Frame::Signal(pb::SessionSignal { name: name.to_owned() })) }
    }
    /// Host -> agent data.
    pub fn host_data(data: Bytes) -> pb::HostFrame {
        pb::HostFrame { frame: Some(host_frame::Frame::Data(data)) }
    }
    /// Host -> agent half-close.
    pub fn host_eof() -> pb::HostFrame {
        pb::HostFrame { frame: Some(host_frame::Frame::Eof(pb::Eof {})) }
    }
    /// Host -> agent abort.
    pub fn host_reset(code: pb::ResetCode, message: impl Into<String>) -> pb::HostFrame {
        pb::HostFrame {
            frame: Some(host_frame::Frame::Reset(pb::Reset { code: code as i32, message: message.into() })),
        }
    }
    /// Agent -> host: dial succeeded.
    pub fn dial_ok() -> pb::AgentFrame {
        pb::AgentFrame { frame: Some(agent_frame::Frame::DialResult(pb::DialResult { refusal: None })) }
    }
    /// Agent -> host: dial refused.
    pub fn dial_refused(code: pb::RefusalCode, message: impl Into<String>) -> pb::AgentFrame {
        pb::AgentFrame {
            frame: Some(agent_frame::Frame::DialResult(pb::DialResult {
                refusal: Some(pb::Refusal { code: code as i32, message: message.into() }),
            })),
        }
    }
    /// Agent -> host data.
    pub fn agent_data(data: Bytes) -> pb::AgentFrame {
        pb::AgentFrame { frame: Some(agent_frame::Frame::Data(data)) }
    }
    /// Agent -> host: the program's standard error.
    pub fn stderr(data: Bytes) -> pb::AgentFrame {
        pb::AgentFrame { frame: Some(agent_frame::Frame::Stderr(data)) }
    }
    /// Agent -> host: how the program ended.
    pub fn exit(exit: pb::SessionExit) -> pb::AgentFrame {
        pb::AgentFrame { frame: Some(agent_frame::Frame::Exit(exit)) }
    }
    /// Agent -> host: the program exited with `status`.
    pub fn exit_status(status: u32) -> pb::AgentFrame {
        exit(pb::SessionExit { how: Some(pb::session_exit::How::Status(status)), ..Default::default() })
    }
    /// Agent -> host half-close.
    pub fn agent_eof() -> pb::AgentFrame {
        pb::AgentFrame { frame: Some(agent_frame::Frame::Eof(pb::Eof {})) }
    }
    /// Agent -> host abort.
    pub fn agent_reset(code: pb::ResetCode, message: impl Into<String>) -> pb::AgentFrame {
        pb::AgentFrame {
            frame: Some(agent_frame::Frame::Reset(pb::Reset { code: code as i32, message: message.into() })),
        }
    }
}

#[cfg(test)]
mod tests;
