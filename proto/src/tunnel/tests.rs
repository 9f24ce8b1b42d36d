use super::frames::*;
use super::*;
use crate::pb::{RefusalCode, ResetCode};

fn tcp_dial() -> pb::Dial {
    pb::Dial { service: "web".into(), request_id: "r1".into(), ..Default::default() }
}

fn open_pair() -> (Tunnel, Tunnel) {
    let mut host = Tunnel::new(Role::Host);
    let mut agent = Tunnel::new(Role::Agent);
    host.send_dial(&tcp_dial()).unwrap();
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
    host.send_dial(&tcp_dial()).unwrap();
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
    host.send_dial(&tcp_dial()).unwrap();
    assert!(host.send_dial(&tcp_dial()).is_err(), "second Dial");
    let mut agent = Tunnel::new(Role::Agent);
    assert!(agent.send_dial_result(true).is_err(), "DialResult before Dial");
    agent.receive_host_frame(dial("a", "b")).unwrap();
    assert!(agent.receive_host_frame(dial("a", "b")).is_err(), "second Dial");
    assert!(agent.send_dial(&tcp_dial()).is_err(), "agent never dials");
    assert!(host.receive_host_frame(dial("a", "b")).is_err(), "host never receives HostFrames");
}

#[test]
fn refused_dial_of_unknown_kind_changes_nothing() {
    let mut host = Tunnel::new(Role::Host);
    let unknown = pb::Dial { kind: 7, ..tcp_dial() };
    assert!(host.send_dial(&unknown).is_err());
    assert_eq!((host.phase(), host.kind()), (Phase::Parked, Kind::Tcp));
}

#[test]
fn refusal_closes() {
    let mut host = Tunnel::new(Role::Host);
    host.send_dial(&tcp_dial()).unwrap();
    match host.receive_agent_frame(dial_refused(RefusalCode::UnknownService, "no such service: db")).unwrap()
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

// Session tunnels (`Dial.kind = SESSION`).

fn session_dial() -> pb::Dial {
    pb::Dial {
        service: "shell".into(),
        request_id: "r2".into(),
        kind: pb::DialKind::Session as i32,
        principal: "alice".into(),
    }
}

fn open_session() -> (Tunnel, Tunnel) {
    let mut host = Tunnel::new(Role::Host);
    let mut agent = Tunnel::new(Role::Agent);
    host.send_dial(&session_dial()).unwrap();
    match agent.receive_host_frame(dial_session("shell", "r2", "alice")).unwrap() {
        Event::Dial(d) => assert_eq!((d.principal.as_str(), Kind::of(&d)), ("alice", Kind::Session)),
        other => panic!("unexpected {other:?}"),
    }
    agent.send_dial_result(true).unwrap();
    assert_eq!(host.receive_agent_frame(dial_ok()).unwrap(), Event::DialAccepted);
    assert_eq!((host.kind(), agent.kind()), (Kind::Session, Kind::Session));
    (host, agent)
}

fn shell_start() -> pb::SessionStart {
    pb::SessionStart {
        pty: Some(pb::Pty {
            term: "xterm".into(),
            size: Some(pb::WindowSize { cols: 80, rows: 24, ..Default::default() }),
            modes: vec![],
        }),
        env: vec![pb::EnvVar { name: "LANG".into(), value: "C.UTF-8".into() }],
        command: Some(pb::session_start::Command::Shell(pb::Shell {})),
    }
}

fn size(cols: u32, rows: u32) -> pb::WindowSize {
    pb::WindowSize { cols, rows, ..Default::default() }
}

/// Starts the session on both sides.
fn started() -> (Tunnel, Tunnel) {
    let (mut host, mut agent) = open_session();
    host.send_start().unwrap();
    assert!(
        matches!(agent.receive_host_frame(start(shell_start())).unwrap(), Event::Start(s) if s.pty.is_some())
    );
    (host, agent)
}

#[test]
fn session_full_life_start_resize_signal_exit_eof() {
    let (mut host, mut agent) = started();
    host.send_data().unwrap();
    assert!(matches!(
        agent.receive_host_frame(host_data(Bytes::from_static(b"ls\r"))).unwrap(),
        Event::Data(_)
    ));
    host.send_session_control().unwrap();
    assert_eq!(agent.receive_host_frame(resize(size(120, 40))).unwrap(), Event::Resize(size(120, 40)));
    host.send_session_control().unwrap();
    assert!(matches!(agent.receive_host_frame(signal("INT")).unwrap(), Event::Signal(s) if s.name == "INT"));
    agent.send_data().unwrap();
    assert!(matches!(
        host.receive_agent_frame(agent_data(Bytes::from_static(b"a b"))).unwrap(),
        Event::Data(_)
    ));
    agent.send_stderr().unwrap();
    assert_eq!(
        host.receive_agent_frame(stderr(Bytes::from_static(b"warn"))).unwrap(),
        Event::Stderr(Bytes::from_static(b"warn"))
    );
    agent.send_exit().unwrap();
    match host.receive_agent_frame(exit_status(3)).unwrap() {
        Event::Exit(e) => assert_eq!(e.how, Some(pb::session_exit::How::Status(3))),
        other => panic!("unexpected {other:?}"),
    }
    assert!(!agent.send_eof().unwrap(), "the host has not closed its direction yet");
    assert_eq!(host.receive_agent_frame(agent_eof()).unwrap(), Event::Eof);
    assert!(host.send_eof().unwrap(), "both directions closed");
    assert_eq!(agent.receive_host_frame(host_eof()).unwrap(), Event::Eof);
    assert_eq!((host.phase(), agent.phase()), (Phase::Closed, Phase::Closed));
}

#[test]
fn session_frames_on_tcp_tunnel_are_violations() {
    let (mut host, mut agent) = open_pair();
    assert!(host.send_start().is_err());
    assert!(host.send_session_control().is_err());
    assert!(agent.receive_host_frame(start(shell_start())).is_err());
    let (_, mut agent) = open_pair();
    assert!(agent.receive_host_frame(resize(size(1, 1))).is_err());
    let (_, mut agent) = open_pair();
    assert!(agent.receive_host_frame(signal("TERM")).is_err());
    assert!(agent.send_stderr().is_err());
    assert!(agent.send_exit().is_err());
    let (mut host, _) = open_pair();
    assert!(host.receive_agent_frame(stderr(Bytes::from_static(b"x"))).is_err());
    let (mut host, _) = open_pair();
    assert!(host.receive_agent_frame(exit_status(0)).is_err());
}

#[test]
fn session_start_twice_or_after_eof_is_a_violation() {
    let (mut host, mut agent) = started();
    assert!(host.send_start().is_err(), "host: second start");
    assert!(agent.receive_host_frame(start(shell_start())).is_err(), "agent: second start");
    let (_, mut agent) = open_session();
    let (mut host, _) = open_session();
    assert!(host.send_eof().is_err(), "host Eof before the start");
    assert!(agent.receive_host_frame(host_eof()).is_err(), "agent: Eof before the start");
}

#[test]
fn session_data_before_start_is_a_violation_both_ways() {
    let (mut host, mut agent) = open_session();
    assert!(host.send_data().is_err());
    assert!(agent.send_data().is_err());
    assert!(agent.send_stderr().is_err());
    assert!(agent.send_exit().is_err());
    assert!(host.receive_agent_frame(agent_data(Bytes::from_static(b"x"))).is_err());
    assert!(agent.receive_host_frame(host_data(Bytes::from_static(b"x"))).is_err());
    let (_, mut agent) = open_session();
    assert!(agent.receive_host_frame(resize(size(1, 1))).is_err(), "resize before the start");
}

#[test]
fn session_resize_and_signal_allowed_after_host_eof() {
    let (mut host, mut agent) = started();
    host.send_eof().unwrap();
    agent.receive_host_frame(host_eof()).unwrap();
    host.send_session_control().unwrap();
    assert!(matches!(agent.receive_host_frame(resize(size(10, 5))).unwrap(), Event::Resize(_)));
    assert!(matches!(agent.receive_host_frame(signal("HUP")).unwrap(), Event::Signal(_)));
    assert!(host.send_data().is_err(), "but no more data");
}

#[test]
fn session_exit_twice_after_eof_or_before_start_is_a_violation() {
    let (mut host, mut agent) = started();
    agent.send_exit().unwrap();
    assert!(agent.send_exit().is_err(), "agent: exit twice");
    host.receive_agent_frame(exit_status(0)).unwrap();
    assert!(host.receive_agent_frame(exit_status(0)).is_err(), "host: exit twice");
    let (mut host, mut agent) = started();
    agent.send_eof().unwrap();
    assert!(agent.send_exit().is_err(), "agent: exit after its Eof");
    host.receive_agent_frame(agent_eof()).unwrap();
    assert!(host.receive_agent_frame(exit_status(0)).is_err(), "host: exit after the agent's Eof");
    let (mut host, _) = open_session();
    assert!(host.receive_agent_frame(exit_status(0)).is_err(), "exit before the start");
}

#[test]
fn session_data_after_exit_is_a_violation() {
    let (mut host, mut agent) = started();
    agent.send_exit().unwrap();
    assert!(agent.send_data().is_err());
    assert!(agent.send_stderr().is_err());
    host.receive_agent_frame(exit_status(1)).unwrap();
    assert!(host.receive_agent_frame(agent_data(Bytes::from_static(b"late"))).is_err());
    let (mut host, _) = started();
    host.receive_agent_frame(exit_status(1)).unwrap();
    assert!(host.receive_agent_frame(stderr(Bytes::from_static(b"late"))).is_err());
}

#[test]
fn session_unknown_dial_kind_is_refused_not_fatal() {
    let mut agent = Tunnel::new(Role::Agent);
    let mut unknown = dial_session("shell", "r3", "");
    if let Some(host_frame::Frame::Dial(d)) = &mut unknown.frame {
        d.kind = 99;
    }
    match agent.receive_host_frame(unknown).unwrap() {
        Event::Dial(d) => assert_eq!(Kind::of(&d), Kind::Unknown),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(agent.kind(), Kind::Unknown);
    agent.send_dial_result(false).unwrap();
    assert_eq!(agent.phase(), Phase::Closed);
    let mut host = Tunnel::new(Role::Host);
    let bad = pb::Dial { kind: 99, ..session_dial() };
    assert!(host.send_dial(&bad).is_err(), "the host never sends a kind it does not know");
}

#[test]
fn session_reset_still_ends_a_session_at_any_point() {
    let (mut host, mut agent) = started();
    agent.send_exit().unwrap();
    host.receive_agent_frame(exit_status(0)).unwrap();
    assert!(matches!(
        host.receive_agent_frame(agent_reset(ResetCode::Cancelled, "bye")).unwrap(),
        Event::Reset(_)
    ));
    assert_eq!(host.phase(), Phase::Closed);
    let (_, mut agent) = open_session();
    assert!(matches!(
        agent.receive_host_frame(host_reset(ResetCode::WorkloadEnded, "ended")).unwrap(),
        Event::Reset(r) if r.code() == ResetCode::WorkloadEnded
    ));
}
