//! The agent against a small real `AgentTunnel` server (real gRPC over loopback TCP),
//! over all four transports, with one connection.

mod common;

use std::time::Duration;

use burrow_agent::{AgentConfig, ConnState};
use burrow_proto::pb::{self, agent_frame, host_control, RefusalCode};
use burrow_proto::tunnel::frames;
use burrow_proto::{MAX_DATA_FRAME, SESSION_METADATA};
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::time::timeout;
use tonic::Status;

use common::*;

// ---------------------------------------------------------------------------------

async fn handshake_pool_and_echo(transport: Transport) {
    let echo = echo_service().await;
    let mut host = Host::start(transport, false).await;
    let mut cfg = config(&host, echo, 3);
    cfg.services.push("db=127.0.0.1:5432".parse().unwrap());
    let agent = burrow_agent::spawn(cfg);

    let (hello, metadata) = within("Hello", host.hellos.recv()).await.unwrap();
    let control = within("control", host.controls.recv()).await.unwrap();
    assert!(control.session.starts_with(SESSION));
    assert_eq!(hello.protocol_version, burrow_proto::PROTOCOL_VERSION);
    assert_eq!(hello.protocol_minor, burrow_proto::PROTOCOL_MINOR);
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(hello.replica_id, "replica-7");
    assert_eq!(hello.services, vec!["echo".to_owned(), "db".to_owned()]);
    assert_eq!(metadata.get("authorization").unwrap().to_str().unwrap(), format!("Bearer {TOKEN}"));

    // min_idle tunnels park, each with the token and the session.
    let mut parked = Vec::new();
    for _ in 0..3 {
        let t = host.next_tunnel().await;
        assert_eq!(t.metadata.get("authorization").unwrap().to_str().unwrap(), format!("Bearer {TOKEN}"));
        assert_eq!(t.metadata.get(SESSION_METADATA).unwrap().to_str().unwrap(), control.session);
        parked.push(t);
    }
    let status = wait_status(&agent, "3 idle streams", |s| s.is_connected() && s.idle_streams == 3).await;
    let connected = ConnState::Connected { host_replica_id: "host-1".into(), agent_id: "agent-x".into() };
    assert_eq!(status.state, connected);
    assert_eq!(status.connections.len(), 1);
    let slot = &status.connections[0];
    assert_eq!((slot.slot, slot.host.to_string(), &slot.state), (0, host.url.clone(), &connected));
    assert_eq!((slot.idle_streams, slot.active_streams, slot.connect_attempts), (3, 0, 1));
    assert!(!slot.duplicate);
    assert_eq!(status.connected_replicas(), ["host-1"]);
    assert!(
        timeout(Duration::from_millis(300), host.tunnels.recv()).await.is_err(),
        "no more than min_idle while nothing is claimed"
    );

    // Claim one: the agent dials the echo service and opens a replacement at once.
    let mut t = parked.pop().unwrap();
    t.to_agent.send(Ok(frames::dial("echo", "req-1"))).await.unwrap();
    match next_frame(&mut t.from_agent).await {
        Some(agent_frame::Frame::DialResult(r)) => assert!(r.refusal.is_none(), "{r:?}"),
        other => panic!("expected DialResult, got {other:?}"),
    }
    let replacement = host.next_tunnel().await;
    assert_eq!(replacement.metadata.get(SESSION_METADATA).unwrap().to_str().unwrap(), control.session);
    wait_status(&agent, "one active", |s| s.active_streams == 1 && s.idle_streams == 3).await;

    // 1 MiB up while reading the echo back; then half-close from the host side.
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 253) as u8).collect();
    let to_agent = t.to_agent.clone();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(MAX_DATA_FRAME) {
            to_agent.send(Ok(frames::host_data(Bytes::copy_from_slice(chunk)))).await.unwrap();
        }
        to_agent.send(Ok(frames::host_eof())).await.unwrap();
    });
    let mut echoed = Vec::new();
    loop {
        match next_frame(&mut t.from_agent).await {
            Some(agent_frame::Frame::Data(d)) => {
                assert!(d.len() <= MAX_DATA_FRAME);
                echoed.extend_from_slice(&d);
            }
            // The service saw our EOF, finished, and shut down: the agent relays its EOF.
            Some(agent_frame::Frame::Eof(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    writer.await.unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload);
    // Both sides sent Eof: the agent ends its request stream.
    assert!(next_frame(&mut t.from_agent).await.is_none());
    drop(t);
    wait_status(&agent, "tunnel finished", |s| s.active_streams == 0).await;

    agent.shutdown().await;
}

#[tokio::test]
async fn grpc_handshake_pool_and_echo() {
    handshake_pool_and_echo(Transport::Grpc).await;
}

#[tokio::test]
async fn grpcs_with_ca_file_handshake_pool_and_echo() {
    handshake_pool_and_echo(Transport::Grpcs).await;
}

#[tokio::test]
async fn ws_handshake_pool_and_echo() {
    handshake_pool_and_echo(Transport::Ws).await;
}

#[tokio::test]
async fn wss_with_ca_file_handshake_pool_and_echo() {
    handshake_pool_and_echo(Transport::Wss).await;
}

#[tokio::test]
async fn unknown_service_and_failed_dial_are_refused() {
    let echo = echo_service().await;
    let dead = closed_port().await;
    let mut host = Host::start(Transport::Grpc, false).await;
    let mut cfg = config(&host, echo, 2);
    cfg.services.push(format!("dead={dead}").parse().unwrap());
    let agent = burrow_agent::spawn(cfg);

    let mut t = host.next_tunnel().await;
    t.to_agent.send(Ok(frames::dial("nope", "req-2"))).await.unwrap();
    match next_frame(&mut t.from_agent).await {
        Some(agent_frame::Frame::DialResult(pb::DialResult { refusal: Some(r) })) => {
            assert_eq!(r.code(), RefusalCode::UnknownService);
            assert_eq!(r.message, "service \"nope\" is not offered by this agent");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(next_frame(&mut t.from_agent).await.is_none(), "agent ends the tunnel after refusing");
    drop(t);

    let mut t = host.next_tunnel().await;
    t.to_agent.send(Ok(frames::dial("dead", "req-3"))).await.unwrap();
    match next_frame(&mut t.from_agent).await {
        Some(agent_frame::Frame::DialResult(pb::DialResult { refusal: Some(r) })) => {
            assert_eq!(r.code(), RefusalCode::DialFailed);
            assert!(r.message.starts_with("could not connect to service \"dead\""), "{}", r.message);
            assert!(!r.message.contains(&dead.to_string()), "the address stays private: {}", r.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(t);
    agent.shutdown().await;
}

#[tokio::test]
async fn unauthenticated_backs_off_hard() {
    let echo = echo_service().await;
    let mut host = Host::start(Transport::Grpc, true).await;
    let agent = burrow_agent::spawn(config(&host, echo, 2));
    let (_, metadata) = within("Hello", host.hellos.recv()).await.unwrap();
    assert!(metadata.get("authorization").is_some());
    let status =
        wait_status(&agent, "auth back-off", |s| matches!(s.state, ConnState::BackingOff { .. })).await;
    match &status.state {
        ConnState::BackingOff { retry_in, reason, auth_failure } => {
            assert!(auth_failure, "{status:?}");
            assert!(*retry_in >= Duration::from_secs(24), "auth back-off starts near 30 s: {retry_in:?}");
            assert!(reason.contains("unknown agent token"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(status.auth_failures, 1);
    assert_eq!(status.connect_attempts, 1);
    assert!(!status.last_error.as_deref().unwrap_or("").contains(TOKEN), "the token never appears in status");
    // It does not hammer: no second attempt arrives soon.
    assert!(timeout(Duration::from_millis(500), host.hellos.recv()).await.is_err());
    agent.shutdown().await;
}

#[tokio::test]
async fn goaway_reconnects_without_penalty_and_active_tunnels_finish() {
    let echo = echo_service().await;
    let mut host = Host::start(Transport::Grpc, false).await;
    let agent = burrow_agent::spawn(config(&host, echo, 2));
    within("Hello", host.hellos.recv()).await.unwrap();
    let control = within("control", host.controls.recv()).await.unwrap().tx;
    let mut active = host.next_tunnel().await;
    let _idle = host.next_tunnel().await;
    active.to_agent.send(Ok(frames::dial("echo", "req-4"))).await.unwrap();
    assert!(matches!(next_frame(&mut active.from_agent).await, Some(agent_frame::Frame::DialResult(_))));
    let _replacement = host.next_tunnel().await;

    control
        .send(Ok(pb::HostControl {
            msg: Some(host_control::Msg::GoAway(pb::GoAway {
                reason: "draining".into(),
                reconnect_after_ms: 0,
                code: pb::GoAwayCode::Reconnect as i32,
            })),
        }))
        .await
        .unwrap();
    within("second Hello", host.hellos.recv()).await.unwrap();
    let status = wait_status(&agent, "reconnected", |s| s.is_connected() && s.connect_attempts == 2).await;
    assert!(status.last_error.is_none(), "GoAway is not an error: {status:?}");

    // The tunnel on the old connection still works.
    active.to_agent.send(Ok(frames::host_data(Bytes::from_static(b"still here")))).await.unwrap();
    active.to_agent.send(Ok(frames::host_eof())).await.unwrap();
    let mut echoed = Vec::new();
    loop {
        match next_frame(&mut active.from_agent).await {
            Some(agent_frame::Frame::Data(d)) => echoed.extend_from_slice(&d),
            Some(agent_frame::Frame::Eof(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(echoed, b"still here");
    drop(active);
    agent.shutdown().await;
}

#[tokio::test]
async fn shutdown_waits_for_active_tunnels_then_stops() {
    let echo = echo_service().await;
    let mut host = Host::start(Transport::Grpc, false).await;
    let agent = burrow_agent::spawn(config(&host, echo, 1));
    let mut t = host.next_tunnel().await;
    t.to_agent.send(Ok(frames::dial("echo", "req-5"))).await.unwrap();
    assert!(matches!(next_frame(&mut t.from_agent).await, Some(agent_frame::Frame::DialResult(_))));
    let status = agent.status();

    let stopping = tokio::spawn(agent.shutdown());
    // Parked tunnels are dropped; the active one still pipes.
    t.to_agent.send(Ok(frames::host_data(Bytes::from_static(b"bye")))).await.unwrap();
    t.to_agent.send(Ok(frames::host_eof())).await.unwrap();
    let mut echoed = Vec::new();
    loop {
        match next_frame(&mut t.from_agent).await {
            Some(agent_frame::Frame::Data(d)) => echoed.extend_from_slice(&d),
            Some(agent_frame::Frame::Eof(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(echoed, b"bye");
    drop(t);
    within("shutdown", stopping).await.unwrap();
    assert_eq!(status.borrow().state, ConnState::Stopped);
}

#[tokio::test]
async fn invalid_config_stops_with_the_reason() {
    let mut cfg = AgentConfig::new("grpc://127.0.0.1:9", TOKEN).unwrap();
    cfg.services.clear();
    let agent = burrow_agent::spawn(cfg);
    let status = wait_status(&agent, "stopped", |s| s.state == ConnState::Stopped).await;
    assert!(status.last_error.unwrap().contains("no services configured"));
    let err = burrow_agent::run(AgentConfig::new("grpc://127.0.0.1:9", TOKEN).unwrap(), async {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no services"));
}

#[tokio::test]
async fn service_socket_is_really_dialed_only_for_configured_names() {
    // A listener the agent is never told about must never see a connection.
    let secret = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let secret_addr = secret.local_addr().unwrap();
    let echo = echo_service().await;
    let mut host = Host::start(Transport::Grpc, false).await;
    let agent = burrow_agent::spawn(config(&host, echo, 1));
    let mut t = host.next_tunnel().await;
    // A host trying to name an address instead of a service gets nothing.
    t.to_agent.send(Ok(frames::dial(&secret_addr.to_string(), "req-6"))).await.unwrap();
    assert!(matches!(
        next_frame(&mut t.from_agent).await,
        Some(agent_frame::Frame::DialResult(pb::DialResult { refusal: Some(_) }))
    ));
    assert!(timeout(Duration::from_millis(200), secret.accept()).await.is_err());
    drop(t);
    agent.shutdown().await;
}

#[tokio::test]
async fn burst_grows_the_pool_and_surplus_idle_tunnels_expire() {
    let echo = echo_service().await;
    let mut host = Host::start(Transport::Grpc, false).await;
    let mut cfg = config(&host, echo, 1);
    cfg.idle_timeout = Duration::from_millis(300);
    let agent = burrow_agent::spawn(cfg);
    let mut only = host.next_tunnel().await;
    // Claiming the only parked tunnel drains the pool: the idle target doubles to 2.
    only.to_agent.send(Ok(frames::dial("echo", "req-7"))).await.unwrap();
    assert!(matches!(next_frame(&mut only.from_agent).await, Some(agent_frame::Frame::DialResult(_))));
    let mut a = host.next_tunnel().await;
    let mut b = host.next_tunnel().await;
    // After the idle timeout the surplus one closes; the floor of 1 stays parked.
    let ended = |r: Result<Option<pb::AgentFrame>, Status>| !matches!(r, Ok(Some(_)));
    let a_first = within("a surplus tunnel to close", async {
        tokio::select! {
            r = a.from_agent.message() => { assert!(ended(r)); true }
            r = b.from_agent.message() => { assert!(ended(r)); false }
        }
    })
    .await;
    let floor = if a_first { &mut b } else { &mut a };
    assert!(
        timeout(Duration::from_millis(800), floor.from_agent.message()).await.is_err(),
        "the last idle tunnel is the floor and stays parked"
    );
    let status = wait_status(&agent, "back to the floor", |s| s.idle_streams == 1).await;
    assert_eq!(status.active_streams, 1);
    drop(only);
    agent.shutdown().await;
}
