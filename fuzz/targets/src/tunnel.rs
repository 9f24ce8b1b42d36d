//! Target `tunnel_frames`: the tunnel state machine (`burrow_proto::tunnel`) fed with
//! protobuf frames decoded from the fuzz bytes, as a peer would send them.
//!
//! The first byte picks a mode:
//! - host or agent alone: each step is a frame received from the peer, a frame this
//!   side sends, the RPC ending, a reset, or a frame of the wrong direction;
//! - a host and an agent in lockstep: a frame one side's machine lets it send is
//!   delivered to the other side's machine at once.
//!
//! Each step is an op byte and a length-prefixed protobuf payload (see [`Input`]).
//!
//! Asserted for every input:
//! - a frame or action that is refused leaves the state exactly as it was;
//! - an accepted frame yields the event of its own kind and was legal in the state it
//!   arrived in (data only while the peer may send, a `DialResult` only while dialing,
//!   session frames only on a session, nothing at all once closed);
//! - the phase only moves forward: Parked → Dialing → Open → Closed, or to Closed;
//! - in lockstep, a frame the sender's machine allowed is accepted by the receiver's,
//!   and both sides agree on phase, kind and who may still send;
//! - decoded frames re-encode to the same frame, and `chunks` splits data losslessly
//!   into non-empty frames of at most `MAX_DATA_FRAME` bytes.

use burrow_proto::pb::{self, agent_frame, host_frame};
use burrow_proto::tunnel::{chunks, Event, Kind, Phase, Role, Tunnel};
use bytes::Bytes;
use prost::Message;

use crate::input::Input;

/// Runs one input; panics when an invariant breaks.
pub fn tunnel_frames(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(mode) = input.byte() else { return };
    match mode % 3 {
        0 => alone(Role::Host, &mut input),
        1 => alone(Role::Agent, &mut input),
        _ => lockstep(&mut input),
    }
}

/// Decodes a frame the way tonic's codec does; a payload that is not one is skipped
/// (the codec turns it into an RPC error before the state machine sees anything).
fn decode<M: Message + Default + PartialEq>(payload: &[u8]) -> Option<M> {
    let frame = M::decode(payload).ok()?;
    let again = M::decode(frame.encode_to_vec().as_slice()).expect("a re-encoded frame decodes");
    assert!(again == frame, "a decoded frame re-encodes to itself");
    Some(frame)
}

/// The state as a value to compare: `Tunnel` has no `PartialEq`, but its `Debug` shows
/// every field.
fn snapshot(tunnel: &Tunnel) -> String {
    format!("{tunnel:?}")
}

fn rank(phase: Phase) -> u8 {
    match phase {
        Phase::Parked => 0,
        Phase::Dialing => 1,
        Phase::Open => 2,
        Phase::Closed => 3,
    }
}

/// The phase moved along an edge of the documented graph (or stayed).
fn assert_transition(before: &Tunnel, after: &Tunnel) {
    let (from, to) = (before.phase(), after.phase());
    let legal = from == to
        || to == Phase::Closed
        || (from == Phase::Parked && to == Phase::Dialing)
        || (from == Phase::Dialing && to == Phase::Open);
    assert!(legal, "illegal phase change {from:?} -> {to:?}");
    assert!(rank(to) >= rank(from));
    if from == Phase::Closed {
        assert!(!after.can_send() && !after.can_receive(), "a closed tunnel carries nothing");
    }
}

/// Refused means untouched: the caller answers with a reset, and must not find the
/// machine half-way through a change it refused.
fn assert_refused_unchanged<T, E: std::fmt::Debug>(before: &str, after: &Tunnel, result: &Result<T, E>) {
    if let Err(err) = result {
        assert_eq!(before, snapshot(after), "refused ({err:?}) but the state changed");
    }
}

fn check_data(data: &Bytes) {
    let pieces: Vec<Bytes> = chunks(data.clone()).collect();
    assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= burrow_proto::MAX_DATA_FRAME));
    assert_eq!(pieces.concat(), data.as_ref(), "chunks loses or reorders nothing");
}

fn alone(role: Role, input: &mut Input<'_>) {
    let mut tunnel = Tunnel::new(role);
    while let Some(op) = input.byte() {
        let payload = input.chunk();
        let before = tunnel.clone();
        match (op % 5, role) {
            (0, Role::Host) => {
                if let Some(frame) = decode::<pb::AgentFrame>(payload) {
                    host_receives(&mut tunnel, frame);
                }
            }
            (0, Role::Agent) => {
                if let Some(frame) = decode::<pb::HostFrame>(payload) {
                    agent_receives(&mut tunnel, frame);
                }
            }
            (1, Role::Host) => {
                if let Some(frame) = decode::<pb::HostFrame>(payload) {
                    let _ = host_sends(&mut tunnel, &frame);
                }
            }
            (1, Role::Agent) => {
                if let Some(frame) = decode::<pb::AgentFrame>(payload) {
                    let _ = agent_sends(&mut tunnel, &frame);
                }
            }
            (2, _) => {
                let clean = tunnel.stream_ended();
                assert_eq!(clean, matches!(before.phase(), Phase::Parked | Phase::Closed));
                assert_eq!(tunnel.phase(), Phase::Closed);
            }
            (3, _) => {
                tunnel.send_reset();
                assert_eq!(tunnel.phase(), Phase::Closed);
            }
            // A frame for the other side's machine: refused whatever it holds.
            (_, Role::Host) => {
                if let Some(frame) = decode::<pb::HostFrame>(payload) {
                    let result = tunnel.receive_host_frame(frame);
                    assert!(result.is_err(), "the host accepted a host frame");
                    assert_refused_unchanged(&snapshot(&before), &tunnel, &result);
                }
            }
            (_, Role::Agent) => {
                if let Some(frame) = decode::<pb::AgentFrame>(payload) {
                    let result = tunnel.receive_agent_frame(frame);
                    assert!(result.is_err(), "the agent accepted an agent frame");
                    assert_refused_unchanged(&snapshot(&before), &tunnel, &result);
                }
            }
        }
        assert_transition(&before, &tunnel);
    }
}

/// The host's machine takes a frame from the agent; returns the event when accepted.
fn host_receives(tunnel: &mut Tunnel, frame: pb::AgentFrame) -> Option<Event> {
    let before = tunnel.clone();
    let result = tunnel.receive_agent_frame(frame.clone());
    assert_refused_unchanged(&snapshot(&before), tunnel, &result);
    let event = result.ok()?;
    if before.phase() == Phase::Closed {
        assert!(frame.frame.is_none(), "a closed tunnel accepted {frame:?}");
    }
    match frame.frame {
        None => {
            assert_eq!(event, Event::Ignored);
            assert_eq!(snapshot(&before), snapshot(tunnel), "an empty frame changes nothing");
        }
        Some(agent_frame::Frame::DialResult(result)) => {
            assert_eq!(before.phase(), Phase::Dialing);
            match result.refusal {
                None => {
                    assert_eq!(event, Event::DialAccepted);
                    assert_eq!(tunnel.phase(), Phase::Open);
                }
                Some(refusal) => {
                    assert_eq!(event, Event::DialRefused(refusal));
                    assert_eq!(tunnel.phase(), Phase::Closed);
                }
            }
        }
        Some(agent_frame::Frame::Data(data)) => {
            assert!(before.can_receive(), "data accepted while the agent may not send");
            check_data(&data);
            assert_eq!(event, Event::Data(data));
        }
        Some(agent_frame::Frame::Eof(_)) => {
            assert_eq!(event, Event::Eof);
            assert!(!tunnel.can_receive(), "data may follow the agent's Eof");
        }
        Some(agent_frame::Frame::Reset(reset)) => {
            assert_eq!(event, Event::Reset(reset));
            assert_eq!(tunnel.phase(), Phase::Closed);
        }
        Some(agent_frame::Frame::Stderr(data)) => {
            assert_eq!(before.kind(), Kind::Session, "stderr on a tunnel that is no session");
            assert!(before.can_receive(), "stderr accepted while the agent may not send");
            assert_eq!(event, Event::Stderr(data));
        }
        Some(agent_frame::Frame::Exit(exit)) => {
            assert_eq!(before.kind(), Kind::Session, "SessionExit on a tunnel that is no session");
            assert!(before.can_receive(), "SessionExit accepted while the agent may not send");
            assert!(!tunnel.can_receive(), "the agent's data continues after its exit");
            assert_eq!(event, Event::Exit(exit));
        }
    }
    Some(event)
}

/// The agent's machine takes a frame from the host; returns the event when accepted.
fn agent_receives(tunnel: &mut Tunnel, frame: pb::HostFrame) -> Option<Event> {
    let before = tunnel.clone();
    let result = tunnel.receive_host_frame(frame.clone());
    assert_refused_unchanged(&snapshot(&before), tunnel, &result);
    let event = result.ok()?;
    if before.phase() == Phase::Closed {
        assert!(frame.frame.is_none(), "a closed tunnel accepted {frame:?}");
    }
    match frame.frame {
        None => {
            assert_eq!(event, Event::Ignored);
            assert_eq!(snapshot(&before), snapshot(tunnel), "an empty frame changes nothing");
        }
        Some(host_frame::Frame::Dial(dial)) => {
            assert_eq!(before.phase(), Phase::Parked);
            assert_eq!(tunnel.phase(), Phase::Dialing);
            assert_eq!(tunnel.kind(), Kind::of(&dial));
            assert_eq!(event, Event::Dial(dial));
        }
        Some(host_frame::Frame::Data(data)) => {
            assert!(before.can_receive(), "data accepted while the host may not send");
            check_data(&data);
            assert_eq!(event, Event::Data(data));
        }
        Some(host_frame::Frame::Eof(_)) => {
            assert_eq!(event, Event::Eof);
            assert!(!tunnel.can_receive(), "data may follow the host's Eof");
        }
        Some(host_frame::Frame::Reset(reset)) => {
            assert_eq!(event, Event::Reset(reset));
            assert_eq!(tunnel.phase(), Phase::Closed);
        }
        Some(host_frame::Frame::Start(start)) => {
            assert_eq!((before.kind(), before.phase()), (Kind::Session, Phase::Open));
            assert_eq!(event, Event::Start(start));
        }
        Some(host_frame::Frame::Resize(size)) => {
            assert_eq!((before.kind(), before.phase()), (Kind::Session, Phase::Open));
            assert_eq!(event, Event::Resize(size));
        }
        Some(host_frame::Frame::Signal(signal)) => {
            assert_eq!((before.kind(), before.phase()), (Kind::Session, Phase::Open));
            assert_eq!(event, Event::Signal(signal));
        }
    }
    Some(event)
}

/// The host's machine is asked whether it may send `frame`, as the host's I/O code asks
/// before each write. `Ok(true)`: allowed; `Ok(false)`: an empty frame, which no send
/// method covers.
fn host_sends(tunnel: &mut Tunnel, frame: &pb::HostFrame) -> Result<bool, ()> {
    let before = tunnel.clone();
    let result = match &frame.frame {
        None => return Ok(false),
        Some(host_frame::Frame::Dial(dial)) => tunnel.send_dial(dial).map(|()| {
            assert_eq!(before.phase(), Phase::Parked);
            assert_eq!(tunnel.phase(), Phase::Dialing);
            assert_ne!(tunnel.kind(), Kind::Unknown, "the host dialed a kind it does not know");
        }),
        Some(host_frame::Frame::Data(data)) => tunnel.send_data().map(|()| {
            assert!(before.can_send());
            check_data(data);
        }),
        Some(host_frame::Frame::Eof(_)) => tunnel.send_eof().map(|finished| {
            assert_eq!(finished, tunnel.phase() == Phase::Closed);
            assert!(!tunnel.can_send());
        }),
        Some(host_frame::Frame::Reset(_)) => {
            tunnel.send_reset();
            assert_eq!(tunnel.phase(), Phase::Closed);
            Ok(())
        }
        Some(host_frame::Frame::Start(_)) => tunnel.send_start(),
        Some(host_frame::Frame::Resize(_) | host_frame::Frame::Signal(_)) => tunnel.send_session_control(),
    };
    assert_refused_unchanged(&snapshot(&before), tunnel, &result);
    assert_transition(&before, tunnel);
    result.map(|()| true).map_err(drop)
}

/// The agent's counterpart of [`host_sends`].
fn agent_sends(tunnel: &mut Tunnel, frame: &pb::AgentFrame) -> Result<bool, ()> {
    let before = tunnel.clone();
    let result = match &frame.frame {
        None => return Ok(false),
        Some(agent_frame::Frame::DialResult(result)) => {
            let accepted = result.refusal.is_none();
            tunnel.send_dial_result(accepted).map(|()| {
                assert_eq!(before.phase(), Phase::Dialing);
                let expected = if accepted { Phase::Open } else { Phase::Closed };
                assert_eq!(tunnel.phase(), expected);
            })
        }
        Some(agent_frame::Frame::Data(data)) => tunnel.send_data().map(|()| {
            assert!(before.can_send());
            check_data(data);
        }),
        Some(agent_frame::Frame::Eof(_)) => tunnel.send_eof().map(|finished| {
            assert_eq!(finished, tunnel.phase() == Phase::Closed);
            assert!(!tunnel.can_send());
        }),
        Some(agent_frame::Frame::Reset(_)) => {
            tunnel.send_reset();
            assert_eq!(tunnel.phase(), Phase::Closed);
            Ok(())
        }
        Some(agent_frame::Frame::Stderr(_)) => tunnel.send_stderr(),
        Some(agent_frame::Frame::Exit(_)) => tunnel.send_exit().map(|()| {
            assert!(!tunnel.can_send(), "the agent may send data after its exit");
        }),
    };
    assert_refused_unchanged(&snapshot(&before), tunnel, &result);
    assert_transition(&before, tunnel);
    result.map(|()| true).map_err(drop)
}

/// Both ends agree on everything the other can observe.
fn assert_agree(host: &Tunnel, agent: &Tunnel) {
    assert_eq!(host.phase(), agent.phase(), "host and agent disagree on the phase");
    assert_eq!(host.kind(), agent.kind(), "host and agent disagree on the kind");
    assert_eq!(host.can_send(), agent.can_receive(), "who may send host -> agent");
    assert_eq!(agent.can_send(), host.can_receive(), "who may send agent -> host");
}

fn lockstep(input: &mut Input<'_>) {
    let mut host = Tunnel::new(Role::Host);
    let mut agent = Tunnel::new(Role::Agent);
    while let Some(op) = input.byte() {
        let payload = input.chunk();
        if op % 2 == 0 {
            let Some(frame) = decode::<pb::HostFrame>(payload) else { continue };
            let was_closed = host.phase() == Phase::Closed;
            let allowed = host_sends(&mut host, &frame);
            // A reset after the end goes nowhere: the RPC is over.
            let is_reset = matches!(frame.frame, Some(host_frame::Frame::Reset(_)));
            if allowed.is_ok() && !(is_reset && was_closed) {
                let event = agent_receives(&mut agent, frame.clone());
                assert!(event.is_some(), "the host may send {frame:?} but the agent refuses it");
            }
        } else {
            let Some(frame) = decode::<pb::AgentFrame>(payload) else { continue };
            let was_closed = agent.phase() == Phase::Closed;
            let allowed = agent_sends(&mut agent, &frame);
            let is_reset = matches!(frame.frame, Some(agent_frame::Frame::Reset(_)));
            if allowed.is_ok() && !(is_reset && was_closed) {
                let event = host_receives(&mut host, frame.clone());
                assert!(event.is_some(), "the agent may send {frame:?} but the host refuses it");
            }
        }
        assert_agree(&host, &agent);
    }
}
