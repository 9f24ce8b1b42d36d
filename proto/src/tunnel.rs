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
    /// An empty frame (no `oneof` set): ignored for forward compatibility.
    Ignored,
}

/// The state of one tunnel, seen from one side.
#[derive(Debug, Clone)]
pub struct Tunnel {
    role: Role,
    phase: Phase,
    sent_eof: bool,
    received_eof: bool,
}

impl Tunnel {
    /// A freshly opened, parked tunnel.
    pub fn new(role: Role) -> Self {
        Self { role, phase: Phase::Parked, sent_eof: false, received_eof: false }
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// This side may still send data.
    pub fn can_send(&self) -> bool {
        self.phase == Phase::Open && !self.sent_eof
    }

    /// The peer may still send data.
    pub fn can_receive(&self) -> bool {
        self.phase == Phase::Open && !self.received_eof
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

    /// (Host) Record that `Dial` is being sent.
    pub fn send_dial(&mut self) -> Result<(), ProtocolError> {
        self.require_role(Role::Host, "send Dial from agent side")?;
        if self.phase != Phase::Parked {
            return Err(self.violation("send Dial"));
        }
        self.phase = Phase::Dialing;
        Ok(())
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
        if !self.can_send() {
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

    fn receive_common(&mut self, what: &'static str) -> Result<(), ProtocolError> {
        if !self.can_receive() {
            return Err(self.violation(what));
        }
        Ok(())
    }

    fn receive_eof(&mut self) -> Result<Event, ProtocolError> {
        self.receive_common("Eof")?;
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
                Ok(Event::Dial(dial))
            }
            Some(host_frame::Frame::Data(data)) => {
                self.receive_common("data")?;
                Ok(Event::Data(data))
            }
            Some(host_frame::Frame::Eof(_)) => self.receive_eof(),
            Some(host_frame::Frame::Reset(reset)) => self.receive_reset(reset),
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

    /// Host -> agent: claim the tunnel for `service`.
    pub fn dial(service: &str, request_id: &str) -> pb::HostFrame {
        pb::HostFrame {
            frame: Some(host_frame::Frame::Dial(pb::Dial {
                service: service.to_owned(),
                request_id: request_id.to_owned(),
            })),
        }
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
mod tests {
    use super::frames::*;
    use super::*;
    use crate::pb::{RefusalCode, ResetCode};

    fn open_pair() -> (Tunnel, Tunnel) {
        let mut host = Tunnel::new(Role::Host);
        let mut agent = Tunnel::new(Role::Agent);
        host.send_dial().unwrap();
        assert!(
            matches!(agent.receive_host_frame(dial("web", "r1")).unwrap(), Event::Dial(d) if d.service == "web")
        );
        agent.send_dial_result(true).unwrap();
        assert_eq!(host.receive_agent_frame(dial_ok()).unwrap(), Event::DialAccepted);
        (host, agent)
    }

    #[test]
    fn full_life_with_half_close_each_way() {
        let (mut host, mut agent) = open_pair();
        host.send_data().unwrap();
        assert_eq!(
            agent.receive_host_frame(host_data(Bytes::from_static(b"GET"))).unwrap(),
            Event::Data(Bytes::from_static(b"GET"))
        );
        // Host half-closes; the agent may keep sending.
        assert!(!host.send_eof().unwrap());
        assert_eq!(agent.receive_host_frame(host_eof()).unwrap(), Event::Eof);
        assert!(!agent.can_receive());
        assert!(agent.can_send());
        agent.send_data().unwrap();
        assert_eq!(
            host.receive_agent_frame(agent_data(Bytes::from_static(b"200"))).unwrap(),
            Event::Data(Bytes::from_static(b"200"))
        );
        assert!(agent.send_eof().unwrap(), "both directions closed finishes the agent side");
        assert_eq!(host.receive_agent_frame(agent_eof()).unwrap(), Event::Eof);
        assert_eq!(host.phase(), Phase::Closed);
        assert_eq!(agent.phase(), Phase::Closed);
    }

    #[test]
    fn data_after_eof_is_a_violation() {
        let (mut host, _agent) = open_pair();
        host.receive_agent_frame(agent_eof()).unwrap();
        let err = host.receive_agent_frame(agent_data(Bytes::from_static(b"x"))).unwrap_err();
        assert_eq!(err.what, "data");
        host.send_eof().unwrap();
        assert!(host.send_data().is_err());
        assert!(host.send_eof().is_err(), "Eof twice is refused");
    }

    #[test]
    fn data_before_dial_result_is_a_violation() {
        let mut host = Tunnel::new(Role::Host);
        host.send_dial().unwrap();
        assert!(host.receive_agent_frame(agent_data(Bytes::from_static(b"x"))).is_err());
        let mut agent = Tunnel::new(Role::Agent);
        assert!(
            agent.receive_host_frame(host_data(Bytes::from_static(b"x"))).is_err(),
            "data on a parked tunnel"
        );
        assert!(agent.send_data().is_err());
    }

    #[test]
    fn dial_rules() {
        let mut host = Tunnel::new(Role::Host);
        assert!(host.receive_agent_frame(dial_ok()).is_err(), "DialResult before Dial");
        host.send_dial().unwrap();
        assert!(host.send_dial().is_err(), "second Dial");
        let mut agent = Tunnel::new(Role::Agent);
        assert!(agent.send_dial_result(true).is_err(), "DialResult before Dial");
        agent.receive_host_frame(dial("a", "b")).unwrap();
        assert!(agent.receive_host_frame(dial("a", "b")).is_err(), "second Dial");
        assert!(agent.send_dial().is_err(), "agent never dials");
        assert!(host.receive_host_frame(dial("a", "b")).is_err(), "host never receives HostFrames");
    }

    #[test]
    fn refusal_closes() {
        let mut host = Tunnel::new(Role::Host);
        host.send_dial().unwrap();
        match host
            .receive_agent_frame(dial_refused(RefusalCode::UnknownService, "no such service: db"))
            .unwrap()
        {
            Event::DialRefused(r) => {
                assert_eq!(r.code(), RefusalCode::UnknownService);
                assert_eq!(r.message, "no such service: db");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(host.phase(), Phase::Closed);
        let mut agent = Tunnel::new(Role::Agent);
        agent.receive_host_frame(dial("a", "b")).unwrap();
        agent.send_dial_result(false).unwrap();
        assert_eq!(agent.phase(), Phase::Closed);
        assert!(agent.send_data().is_err());
    }

    #[test]
    fn reset_closes_from_any_live_phase_once() {
        let (mut host, mut agent) = open_pair();
        assert!(
            matches!(host.receive_agent_frame(agent_reset(ResetCode::IoError, "boom")).unwrap(), Event::Reset(r) if r.message == "boom")
        );
        assert_eq!(host.phase(), Phase::Closed);
        assert!(host.receive_agent_frame(agent_reset(ResetCode::IoError, "again")).is_err());
        agent.send_reset();
        assert_eq!(agent.phase(), Phase::Closed);
        let mut parked = Tunnel::new(Role::Agent);
        assert!(matches!(
            parked.receive_host_frame(host_reset(ResetCode::Shutdown, "bye")).unwrap(),
            Event::Reset(_)
        ));
    }

    #[test]
    fn stream_end_is_clean_only_when_finished_or_parked() {
        let mut parked = Tunnel::new(Role::Agent);
        assert!(parked.stream_ended(), "host may drop idle tunnels");
        let (mut host, _) = open_pair();
        assert!(!host.stream_ended(), "an open tunnel ending without Eof is an abort");
    }

    #[test]
    fn empty_frames_are_ignored() {
        let (mut host, mut agent) = open_pair();
        assert_eq!(host.receive_agent_frame(pb::AgentFrame { frame: None }).unwrap(), Event::Ignored);
        assert_eq!(agent.receive_host_frame(pb::HostFrame { frame: None }).unwrap(), Event::Ignored);
    }

    #[test]
    fn chunks_split_without_exceeding_max() {
        let payload = Bytes::from(vec![7u8; crate::MAX_DATA_FRAME * 2 + 5]);
        let parts: Vec<Bytes> = chunks(payload).collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            vec![crate::MAX_DATA_FRAME, crate::MAX_DATA_FRAME, 5]
        );
        assert_eq!(chunks(Bytes::new()).count(), 0);
    }
}
