//! Slow and idle peers (agent port, ingress, admin port) are closed within their timeouts
//! while real agents and users are served, and every per-peer resource is capped: agent
//! sessions, parked tunnels and open tunnels per agent identity, connections and requests
//! in progress per address and per port. `cargo test slowloris` and `cargo test bounded`
//! run these.

use std::time::Duration;

use burrow_tests::workload::Workload;
use burrow_tests::{
    agent_config, agent_serving, clients, metric, wait_connected, ConfigParts, TestHost, TOKEN,
};
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
    let _agent = agent_serving(&host, TOKEN, &workload, 1).await;
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

/// A TCP connection to `to` from loopback address `from` (any of 127.0.0.0/8).
async fn connect_from(from: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bounded_connections_on_the_agent_port_close_the_excess_from_any_address() {
    let parts = ConfigParts {
        agents: "max_connections = 3\nmax_connections_per_address = 3".into(),
        ..Default::default()
    };
    let host = TestHost::start(parts.build()).await;
    let workload = Workload::start("w1").await;
    let _agent = agent_serving(&host, TOKEN, &workload, 1).await;
    // The agent holds one; silent peers from two other addresses fill the port's cap.
    let _second = connect_from("127.0.0.2", host.agent_addr).await;
    let _third = connect_from("127.0.0.3", host.agent_addr).await;
    let mut excess = connect_from("127.0.0.4", host.agent_addr).await;
    let took = closed_within(&mut excess, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(1),
        "the excess connection waited {took:?} (the preface timeout is 2 s)"
    );
    let (_, _, body) = clients::get(host.admin_addr, "localhost", "/metrics").await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(metric(&text, "burrow_agent_connections_total{result=\"port_limited\"}"), 1.0, "{text}");
    let (status, _, _) = clients::get(host.ingress_addr, "web-a1.localhost", "/hello").await;
    assert_eq!(status.as_u16(), 200, "the agent kept serving");
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

/// The admin port's `/metrics` text.
async fn metrics(host: &TestHost) -> String {
    let (status, _, body) = clients::get(host.admin_addr, "localhost", "/metrics").await;
    assert_eq!(status.as_u16(), 200);
    String::from_utf8(body.to_vec()).unwrap()
}

/// `burrow_limit_refusals_total{limit}` on the admin port.
async fn refusals(host: &TestHost, limit: &str) -> f64 {
    burrow_tests::metric(&metrics(host).await, &format!("burrow_limit_refusals_total{{limit=\"{limit}\"}}"))
}

/// Polls `/metrics` until `limit`'s refusals reach `at_least`; fails the test after 20 s.
async fn wait_refusals(host: &TestHost, limit: &str, at_least: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = refusals(host, limit).await;
        if n >= at_least {
            return n;
        }
        assert!(tokio::time::Instant::now() < deadline, "{limit}: {n} refusals, waited for {at_least}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `check` holds for the agent's status; fails the test after 20 s.
async fn wait_agent(
    agent: &burrow_agent::AgentHandle,
    what: &str,
    check: impl Fn(&burrow_agent::AgentStatus) -> bool,
) {
    let mut status = agent.status();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !check(&status.borrow_and_update()) {
            status.changed().await.expect("agent running");
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("timed out waiting for the agent: {what}; status {:?}", agent.status().borrow())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn bounded_parked_tunnels_per_agent_are_refused_and_the_agent_backs_off_keeping_its_session() {
    let parts = ConfigParts { agents: "max_parked_tunnels_per_agent = 2".into(), ..Default::default() };
    let host = TestHost::start(parts.build()).await;
    let workload = Workload::start("w1").await;
    let mut config = agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]);
    config.connections = 1;
    config.min_idle = 4;
    let agent = burrow_agent::spawn(config);
    wait_connected(&agent).await;

    // The agent opens 4 at once: 2 park, 2 are refused.
    wait_refusals(&host, "agent_parked_tunnels", 2.0).await;
    let first_round = tokio::time::Instant::now();
    wait_agent(&agent, "2 parked, 2 refused", |s| s.idle_streams == 2 && s.tunnels_refused >= 2).await;
    // Users are served by what is parked.
    let (status, _, body) = clients::get(host.ingress_addr, "web-a1.localhost", "/hello").await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"hello from w1"[..]));

    // Each refused tunnel comes back after the host's retry-after (5 s, ±20% on the
    // agent's side), not at once: the second round of refusals is seconds away, and
    // between the two rounds there is none. A spinning agent would have sent thousands.
    let second_round = wait_refusals(&host, "agent_parked_tunnels", 4.0).await;
    let between = first_round.elapsed();
    assert!(between >= Duration::from_millis(3500), "the refused tunnels came back after {between:?}");
    assert!(second_round <= 5.0, "{second_round} refusals within {between:?}: the agent is not backing off");
    // A refused tunnel does not cost the agent its session: one connection, still up.
    let status = agent.status().borrow().clone();
    assert!(matches!(status.state, burrow_agent::ConnState::Connected { .. }), "{status:?}");
    assert_eq!(status.connect_attempts, 1, "the agent reconnected: {status:?}");
    assert_eq!(
        burrow_tests::metric(&metrics(&host).await, "burrow_agent_connections_total{result=\"accepted\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bounded_streams_per_agent_refuse_tunnels_past_the_cap_until_one_ends() {
    let parts = ConfigParts {
        agents: "max_streams_per_agent = 3".into(),
        // No keep-alive reuse: each request's tunnel ends with it, so the count shows
        // exactly the requests in progress; a short wait so the refused request ends soon.
        ingress: "stream_wait = \"1s\"\nmax_idle_per_workload = 0".into(),
        ..Default::default()
    };
    let host = TestHost::start(parts.build()).await;
    let workload = Workload::start("w1").await;
    let mut config = agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]);
    config.connections = 1;
    config.min_idle = 2;
    let agent = burrow_agent::spawn(config);
    wait_connected(&agent).await;

    // Three requests held open by the workload take every tunnel the agent may hold.
    let held: Vec<_> = (0..3)
        .map(|_| {
            let addr = host.ingress_addr;
            tokio::spawn(async move { clients::get(addr, "web-a1.localhost", "/hold").await })
        })
        .collect();
    burrow_tests::eventually(Duration::from_secs(20), "3 requests held by the workload", || {
        workload.held() == 3
    })
    .await;
    // The agent's replacements for them were refused: nothing is parked.
    wait_refusals(&host, "agent_streams", 1.0).await;
    wait_agent(&agent, "3 active, none parked", |s| s.active_streams == 3 && s.idle_streams == 0).await;
    // A fourth request finds no tunnel and gets the usual 504 after `stream_wait`.
    let (status, _, body) = clients::get(host.ingress_addr, "web-a1.localhost", "/hello").await;
    assert_eq!(status.as_u16(), 504, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("no_tunnel"));

    // Once they end, the agent's next retry is accepted and users are served again,
    // without the agent reconnecting.
    workload.release_holds();
    for request in held {
        assert_eq!(request.await.unwrap().0.as_u16(), 200);
    }
    wait_agent(&agent, "a tunnel parked again", |s| s.idle_streams > 0).await;
    let (status, _, _) = clients::get(host.ingress_addr, "web-a1.localhost", "/hello").await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(agent.status().borrow().connect_attempts, 1, "the refusals did not cost the session");
}

/// GET `http://host/path` over a fresh HTTP/1.1 connection from source address `from`
/// (any of 127.0.0.0/8 is this machine's loopback), so the ingress sees another user.
async fn get_from(
    from: std::net::Ipv4Addr,
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
) -> (http::StatusCode, http::HeaderMap, bytes::Bytes) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::get(path).header(http::header::HOST, host).body(clients::empty()).unwrap();
    clients::collect(sender.send_request(request).await.unwrap()).await
}

/// Starts `n` `/hold` requests from `from`, and waits until the workload holds `total`.
async fn hold_from(
    host: &TestHost,
    workload: &Workload,
    from: std::net::Ipv4Addr,
    n: usize,
    total: usize,
) -> Vec<tokio::task::JoinHandle<(http::StatusCode, http::HeaderMap, bytes::Bytes)>> {
    let held = (0..n)
        .map(|_| {
            let addr = host.ingress_addr;
            tokio::spawn(async move { get_from(from, addr, "web-a1.localhost", "/hold").await })
        })
        .collect();
    burrow_tests::eventually(Duration::from_secs(20), "requests held by the workload", || {
        workload.held() == total
    })
    .await;
    held
}

/// The error page's parts every refusal carries: status, `Retry-After`, stable code,
/// request id (header and body).
fn assert_refusal(answer: &(http::StatusCode, http::HeaderMap, bytes::Bytes), status: u16, code: &str) {
    let (got, headers, body) = answer;
    let text = String::from_utf8_lossy(body);
    assert_eq!(got.as_u16(), status, "{text}");
    assert_eq!(headers[http::header::RETRY_AFTER], "5");
    let id = headers["x-request-id"].to_str().unwrap();
    assert!(text.contains(&format!("error: {code}")) && text.contains(id), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bounded_requests_per_address_get_429_with_retry_after_while_another_address_is_served() {
    let parts = ConfigParts { ingress: "max_requests_per_address = 2".into(), ..Default::default() };
    let host = TestHost::start(parts.build()).await;
    let workload = Workload::start("w1").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;
    let busy: std::net::Ipv4Addr = [127, 0, 0, 1].into();
    let other: std::net::Ipv4Addr = [127, 0, 0, 2].into();

    let held = hold_from(&host, &workload, busy, 2, 2).await;
    // The third from the same address is answered at once, not queued.
    let refused = tokio::time::timeout(
        Duration::from_secs(2),
        get_from(busy, host.ingress_addr, "web-a1.localhost", "/hello"),
    )
    .await
    .expect("answered at once");
    assert_refusal(&refused, 429, "too_many_requests");
    // Another address is served meanwhile.
    let (status, _, body) = get_from(other, host.ingress_addr, "web-a1.localhost", "/hello").await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"hello from w1"[..]));
    assert_eq!(refusals(&host, "ingress_requests_per_address").await, 1.0);

    // The cap counts requests in progress: once they end, the address is served again.
    workload.release_holds();
    for request in held {
        assert_eq!(request.await.unwrap().0.as_u16(), 200);
    }
    assert_eq!(get_from(busy, host.ingress_addr, "web-a1.localhost", "/hello").await.0.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn bounded_requests_on_the_whole_port_get_503_with_retry_after() {
    let parts = ConfigParts {
        ingress: "max_requests = 2\nmax_requests_per_address = 0".into(),
        ..Default::default()
    };
    let host = TestHost::start(parts.build()).await;
    let workload = Workload::start("w1").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;

    // Two users, one request each, fill the port.
    let mut held = hold_from(&host, &workload, [127, 0, 0, 1].into(), 1, 1).await;
    held.extend(hold_from(&host, &workload, [127, 0, 0, 2].into(), 1, 2).await);
    // A third user, who holds nothing, is refused at once with 503.
    let refused = tokio::time::timeout(
        Duration::from_secs(2),
        get_from([127, 0, 0, 3].into(), host.ingress_addr, "web-a1.localhost", "/hello"),
    )
    .await
    .expect("answered at once");
    assert_refusal(&refused, 503, "overloaded");
    assert_eq!(refusals(&host, "ingress_requests").await, 1.0);

    workload.release_holds();
    for request in held {
        assert_eq!(request.await.unwrap().0.as_u16(), 200);
    }
    let (status, _, _) =
        get_from([127, 0, 0, 3].into(), host.ingress_addr, "web-a1.localhost", "/hello").await;
    assert_eq!(status.as_u16(), 200, "served again once the port has room");
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_on_the_admin_port_is_closed_while_others_are_served() {
    // 3 s: room for the checks below to finish while the slow head is still open, on a
    // loaded machine too.
    let parts = ConfigParts { extra: "[admin]\nheader_read_timeout = \"3s\"".into(), ..Default::default() };
    let host = TestHost::start(parts.build()).await;

    // A client that trickles a request head, one byte every 100 ms, and never ends it.
    let mut slow = tokio::net::TcpStream::connect(host.admin_addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let (mut reader, mut writer) = slow.into_split();
    let trickle = tokio::spawn(async move {
        for byte in b"X-Slow: ".iter().chain(std::iter::repeat(&b'a')) {
            if writer.write_all(&[*byte]).await.is_err() {
                return; // closed by the host
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let since = tokio::time::Instant::now();
    // Health checks and scrapes are answered meanwhile, on their own connections.
    let (status, _, _) = clients::get(host.admin_addr, "localhost", "/healthz").await;
    assert_eq!(status.as_u16(), 200);
    metrics(&host).await;
    // Nothing to read and not closed: the slow head was still being held open.
    let mut probe = [0u8; 1];
    assert!(
        matches!(reader.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the slow connection was no longer open when the checks were answered ({:?})",
        since.elapsed()
    );

    let mut buf = [0u8; 1024];
    let took = loop {
        match tokio::time::timeout_at(since + Duration::from_secs(8), reader.read(&mut buf)).await {
            Err(_) => panic!("the admin port kept a trickling request head open for 8 s"),
            Ok(Ok(0)) | Ok(Err(_)) => break since.elapsed(),
            Ok(Ok(_)) => continue, // hyper may answer 408 before closing
        }
    };
    assert!(took >= Duration::from_millis(2900), "closed before its timeout: {took:?}");
    trickle.abort();
    // Still serving afterwards.
    assert_eq!(clients::get(host.admin_addr, "localhost", "/healthz").await.0.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_http2_connections_without_a_complete_request_are_closed_while_others_are_served() {
    let parts = ConfigParts { ingress: "header_read_timeout = \"1s\"".into(), ..Default::default() };
    let host = TestHost::start(parts.build()).await;
    let workload = Workload::start("w1").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;

    // Preface and an empty SETTINGS frame: a valid HTTP/2 connection.
    let mut hello = burrow_proto::H2_PREFACE.to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    // One that never sends a request.
    let mut silent = tokio::net::TcpStream::connect(host.ingress_addr).await.unwrap();
    silent.write_all(&hello).await.unwrap();
    // One that starts a request's HEADERS on stream 1 (`:method GET`, HPACK index 2)
    // without END_HEADERS and never sends the CONTINUATION.
    let mut partial = tokio::net::TcpStream::connect(host.ingress_addr).await.unwrap();
    partial.write_all(&hello).await.unwrap();
    partial.write_all(&[0, 0, 1, 1, 0x1, 0, 0, 0, 1, 0x82]).await.unwrap();
    let opened = tokio::time::Instant::now();

    // Another user's HTTP/2 request is served meanwhile.
    let mut client = clients::connect(host.ingress_addr, &clients::Mode::h2()).await;
    let (status, _, body) = client.get("web-a1.localhost", "/hello").await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"hello from w1"[..]));

    let (a, b) = tokio::join!(
        closed_within(&mut silent, Duration::from_secs(10)),
        closed_within(&mut partial, Duration::from_secs(10)),
    );
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "closed before their timeout: {:?}",
        opened.elapsed()
    );
    for took in [a, b] {
        assert!(took < Duration::from_secs(5), "closed long after the 1 s header timeout: {took:?}");
    }
    assert_eq!(client.get("web-a1.localhost", "/hello").await.0.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_on_the_control_api_is_closed_while_the_control_plane_is_served() {
    use burrow_tests::lifecycle;
    let dir = lifecycle::Dir::new("control-slowloris");
    let mut parts = lifecycle::single_host(dir.path());
    parts.extra = parts.extra.replace("[control]\n", "[control]\nhandshake_timeout = \"1s\"\n");
    let host = TestHost::start(parts.build()).await;
    let addr = host.control_addr.unwrap();
    // One connection says nothing; another trickles part of the HTTP/2 preface.
    let opened = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
    trickle.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    // Meanwhile the control plane is served.
    let mut client = lifecycle::client(&host).await;
    let token = lifecycle::create(&mut client, lifecycle::workspace("w-slow")).await;
    assert!(!token.token.is_empty());
    for stream in [&mut silent, &mut trickle] {
        let took = closed_within(stream, Duration::from_secs(5)).await;
        let since_open = opened.elapsed();
        assert!(since_open >= Duration::from_millis(900), "closed before its deadline: {since_open:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    // And still is, on a connection made after.
    let mut client = lifecycle::client(&host).await;
    assert_eq!(lifecycle::get(&mut client, "w-slow").await.id, "w-slow");
}
