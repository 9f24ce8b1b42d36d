//! Slow and idle peers on the agent port are closed within their timeouts while real
//! agents and users are served. `cargo test slowloris` runs these.

use std::time::Duration;

use burrow_tests::workload::Workload;
use burrow_tests::{agent_config, clients, wait_connected, ConfigParts, TestHost, TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads until the host closes the connection; fails the test after `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Duration {
    let start = tokio::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(start + limit, stream.read(&mut buf)).await {
            Err(_) => panic!("the host kept the idle connection open for {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_on_the_agent_port_is_closed_while_agents_are_served() {
    let parts = ConfigParts {
        // (The test config's preface_timeout is 2 s.)
        agents: "handshake_timeout = \"1s\"".into(),
        ..Default::default()
    };
    let host = TestHost::start(parts.build()).await;
    let workload = Workload::start("w1").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;

    // A peer that connects and sends nothing.
    let mut silent = tokio::net::TcpStream::connect(host.agent_addr).await.unwrap();
    // A peer that speaks HTTP/2 (preface and SETTINGS) and then never makes a call.
    let mut idle_h2 = tokio::net::TcpStream::connect(host.agent_addr).await.unwrap();
    idle_h2.write_all(burrow_proto::H2_PREFACE).await.unwrap();
    idle_h2.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();

    let (a, b) = tokio::join!(
        closed_within(&mut silent, Duration::from_secs(10)),
        closed_within(&mut idle_h2, Duration::from_secs(10)),
    );
    assert!(a >= Duration::from_millis(1900), "closed before its timeout: {a:?}");
    assert!(b >= Duration::from_millis(900), "closed before its timeout: {b:?}");
    // The real agent, authenticated on its own connection, kept serving throughout.
    let (status, _, body) = clients::get(host.ingress_addr, "web-a1.localhost", "/hello").await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"hello from w1"[..]));
    assert!(matches!(agent.status().borrow().state, burrow_agent::ConnState::Connected { .. }));
}

/// An open agent session: dropping it ends the control stream (the agent left).
struct OpenSession {
    _stream: tonic::Streaming<burrow_proto::pb::HostControl>,
    _hello: tokio::sync::mpsc::Sender<burrow_proto::pb::AgentControl>,
}

/// Opens `Control` with the test token: the session, or the host's refusal.
async fn control(agent_addr: std::net::SocketAddr) -> Result<OpenSession, tonic::Status> {
    control_with(agent_addr, TOKEN).await
}

/// [`control`] with `token`.
async fn control_with(agent_addr: std::net::SocketAddr, token: &str) -> Result<OpenSession, tonic::Status> {
    use burrow_proto::pb;
    let channel = tonic::transport::Channel::from_shared(format!("http://{agent_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (hello, requests) = tokio::sync::mpsc::channel(1);
    hello
        .send(pb::AgentControl {
            msg: Some(pb::agent_control::Msg::Hello(pb::Hello {
                protocol_version: burrow_proto::PROTOCOL_VERSION,
                protocol_minor: burrow_proto::PROTOCOL_MINOR,
                agent_version: "test".into(),
                replica_id: "raw".into(),
                services: vec![],
            })),
        })
        .await
        .unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(requests));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut stream =
        pb::agent_tunnel_client::AgentTunnelClient::new(channel).control(request).await?.into_inner();
    stream.message().await?.expect("Welcome");
    Ok(OpenSession { _stream: stream, _hello: hello })
}

#[tokio::test(flavor = "multi_thread")]
async fn bounded_sessions_per_agent_are_refused_with_a_retry_after() {
    let parts = ConfigParts { agents: "max_sessions_per_agent = 2".into(), ..Default::default() };
    let host = TestHost::start(parts.build()).await;
    let _one = control(host.agent_addr).await.expect("first session");
    let _two = control(host.agent_addr).await.expect("second session");
    let refused = control(host.agent_addr).await.err().expect("a third session is refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("max_sessions_per_agent"), "{}", refused.message());
    assert!(refused.metadata().get(burrow_proto::RETRY_AFTER_METADATA).is_some());
    drop(_one);
    // Once one ends, a new one is welcomed again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while control(host.agent_addr).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the freed session never made room");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bounded_connections_per_address_close_the_excess_at_once_and_serve_the_rest() {
    let parts = ConfigParts { agents: "max_connections_per_address = 3".into(), ..Default::default() };
    let host = TestHost::start(parts.build()).await;
    let workload = Workload::start("w1").await;
    let mut config = agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]);
    config.connections = 1;
    let agent = burrow_agent::spawn(config);
    wait_connected(&agent).await;
    // The agent holds one connection from 127.0.0.1; two silent peers fill the cap.
    let first = tokio::net::TcpStream::connect(host.agent_addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(host.agent_addr).await.unwrap();
    let mut excess = tokio::net::TcpStream::connect(host.agent_addr).await.unwrap();
    let took = closed_within(&mut excess, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(1),
        "the excess connection waited {took:?} (the preface timeout is 2 s)"
    );
    // The cap counts open connections: one closing makes room for the next.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut next = tokio::net::TcpStream::connect(host.agent_addr).await.unwrap();
        let mut buf = [0u8; 1];
        if tokio::time::timeout(Duration::from_millis(300), next.read(&mut buf)).await.is_err() {
            break; // held open, waiting for its preface
        }
        assert!(tokio::time::Instant::now() < deadline, "the freed slot was never reused");
    }
    let (status, _, _) = clients::get(host.ingress_addr, "web-a1.localhost", "/hello").await;
    assert_eq!(status.as_u16(), 200, "the agent kept serving");
    let _ = second.write_all(b"").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bounded_random_tokens_from_one_address_share_one_rate_limit() {
    // Minute windows: do not start in the last two seconds of one.
    let into_minute = burrow_host::time::now_ms() % 60_000;
    if into_minute > 58_000 {
        tokio::time::sleep(Duration::from_millis(60_500 - into_minute)).await;
    }
    let parts = ConfigParts { agents: "connect_rate_limit_per_address = 3".into(), ..Default::default() };
    let host = TestHost::start(parts.build()).await;
    for i in 0..3 {
        let refused = match control_with(host.agent_addr, &format!("random-token-{i}")).await {
            Ok(_) => panic!("random-token-{i} was welcomed"),
            Err(status) => status,
        };
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "an unknown token: {refused:?}");
    }
    // The fourth, whatever its token, is not even looked at.
    let refused = control_with(host.agent_addr, "random-token-3").await.err().unwrap();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.metadata().get(burrow_proto::RETRY_AFTER_METADATA).is_some());
    let refused = control(host.agent_addr).await.err().unwrap();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "a good token from the flooding address waits too"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_idle_user_connections_are_closed_after_their_last_request() {
    use http_body_util::BodyExt;
    let parts = ConfigParts {
        ingress: "stream_wait = \"3s\"\nidle_timeout = \"1s\"\nheader_read_timeout = \"1s\"".into(),
        ..Default::default()
    };
    let host = TestHost::start(parts.build()).await;
    let workload = Workload::start("w1").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;

    // An HTTP/2 client that makes one request and then holds the connection open.
    let tcp = tokio::net::TcpStream::connect(host.ingress_addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get("http://web-a1.localhost/hello").body(clients::empty()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    let since = tokio::time::Instant::now();
    // The host ends it (GOAWAY) once nothing was asked for a second; the client sees the
    // connection finish.
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the idle HTTP/2 connection was still open 10 s later")
        .unwrap()
        .ok();
    assert!(
        since.elapsed() >= Duration::from_millis(900),
        "closed before it was idle: {:?}",
        since.elapsed()
    );
    // Others are still served.
    assert_eq!(clients::get(host.ingress_addr, "web-a1.localhost", "/hello").await.0.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_upgraded_pipes_are_closed_when_idle_and_kept_while_busy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let parts = ConfigParts {
        ingress: "stream_wait = \"3s\"\nupgrade_idle_timeout = \"1s\"".into(),
        ..Default::default()
    };
    let host = TestHost::start(parts.build()).await;
    let workload = Workload::start("w1").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;

    let mut idle = clients::websocket(host.ingress_addr, "web-a1.localhost", "/ws").await;
    let mut busy = clients::websocket(host.ingress_addr, "web-a1.localhost", "/ws").await;
    let since = tokio::time::Instant::now();
    // The busy one echoes a message every 200 ms for 2.5 s: never a second of silence.
    let busy_task = tokio::spawn(async move {
        for i in 0..12 {
            busy.send(Message::text(format!("m{i}"))).await.unwrap();
            match busy.next().await {
                Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), format!("m{i}")),
                other => panic!("the busy pipe broke at message {i}: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let took = burrow_tests::lifecycle::wait_closed(&mut idle, since).await;
    assert!(took >= Duration::from_millis(900), "closed before it was idle a second: {took:?}");
    busy_task.await.expect("the busy pipe stayed open");
}
