//! `burrow forward`'s engine (`burrow_agent::forward`) against a real host and agent:
//! local connections carried as WebSockets through the ingress's `/_burrow/forward`,
//! admitted with the user's token, to the service the URL names. `cargo test forward`
//! runs them (with the CLI's own tests in agent/tests/forward_cli.rs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use burrow_agent::forward::{ForwardConfig, ForwardError, Forwarder};
use burrow_proto::Secret;
use burrow_tests::clients;
use burrow_tests::workload::Workload;
use burrow_tests::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A host with users alice (allowed on agent a1) and bob (known, not allowed), and a1
/// serving workload w1 as service `web`.
struct Fixture {
    host: TestHost,
    agent: Option<burrow_agent::AgentHandle>,
    _workload: Workload,
}

impl Fixture {
    async fn start() -> Fixture {
        let users = alice_and_bob(&[AGENT]);
        let parts = ConfigParts { authorizer: static_authorizer("deny", &users), ..Default::default() };
        let host = TestHost::start(parts.build()).await;
        let workload = Workload::start("w1").await;
        let agent =
            burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
        wait_connected(&agent).await;
        Fixture { host, agent: Some(agent), _workload: workload }
    }

    /// A forwarder to `url_host` (a host name of the ingress) with `token`.
    fn forwarder(&self, url_host: &str, token: Option<&str>) -> Arc<Forwarder> {
        let url = format!("http://{url_host}:{}", self.host.ingress_addr.port());
        let mut config = ForwardConfig::new(url, token.map(Secret::new));
        // *.localhost names do not resolve here; dial the ingress, send the name.
        config.connect_to = Some(self.host.ingress_addr);
        config.connect_timeout = Duration::from_secs(10);
        Arc::new(Forwarder::new(config).expect("a valid forward"))
    }

    /// Starts forwarding to a1's `web` as alice; returns the local address.
    async fn forward(&self) -> (SocketAddr, CancellationToken) {
        let forwarder = self.forwarder("web-a1.localhost", Some(ALICE_TOKEN));
        forwarder.check().await.expect("alice may forward to web-a1");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(forwarder.run(listener, stop.clone()));
        (local, stop)
    }
}

#[tokio::test]
async fn forward_carries_an_http_request_to_the_service() {
    let fixture = Fixture::start().await;
    let (local, _stop) = fixture.forward().await;
    // The forwarded connection reaches the service itself: any Host works.
    let (status, _, body) = clients::get(local, "localhost", "/hello").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"hello from w1");
    // Keep-alive: a second request on the same forwarded connection.
    let mut client = clients::connect(local, &clients::Mode::h1()).await;
    for _ in 0..3 {
        let (status, _, body) = client.get("localhost", "/hello").await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello from w1"[..]));
    }
}

#[tokio::test]
async fn forward_carries_a_long_lived_bidirectional_stream() {
    let fixture = Fixture::start().await;
    let (local, _stop) = fixture.forward().await;
    // `/raw` switches to a raw byte echo: a long-lived stream both ways.
    let mut stream = TcpStream::connect(local).await.unwrap();
    stream
        .write_all(b"GET /raw HTTP/1.1\r\nHost: w1\r\nConnection: Upgrade\r\nUpgrade: burrow-raw\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("the workload's 101");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));

    // Many exchanges of varied sizes, then 8 MiB written while reading the echo.
    let (mut read, mut write) = stream.into_split();
    for round in 0..200usize {
        let size = 1 + (round * 7919) % 65_536;
        let chunk: Vec<u8> = (0..size).map(|i| (i + round) as u8).collect();
        write.write_all(&chunk).await.unwrap();
        let mut echo = vec![0u8; size];
        read.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo, chunk, "round {round}");
    }
    const BULK: usize = 8 * 1024 * 1024;
    let writer = tokio::spawn(async move {
        let block: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        for _ in 0..BULK / block.len() {
            write.write_all(&block).await.unwrap();
        }
        write
    });
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while received < BULK {
        let n = read.read(&mut buf).await.unwrap();
        assert!(n > 0, "the echo ended after {received} of {BULK} bytes");
        for (i, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, ((received + i) % (64 * 1024) % 251) as u8);
        }
        received += n;
    }
    drop(writer.await.unwrap());
}

fn refused(error: ForwardError) -> (u16, String) {
    match error {
        ForwardError::Refused { status, code, .. } => (status, code),
        other => panic!("expected the host's refusal, got: {other}"),
    }
}

#[tokio::test]
async fn forward_reports_unknown_workload_denied_user_and_agent_gone() {
    let mut fixture = Fixture::start().await;
    let nobody = fixture.forwarder("web-a1.localhost", None);
    assert_eq!(refused(nobody.check().await.unwrap_err()), (401, "unauthenticated".into()));
    let bob = fixture.forwarder("web-a1.localhost", Some(BOB_TOKEN));
    let error = bob.check().await.unwrap_err();
    assert!(error.to_string().contains("request id"), "the user gets a request id: {error}");
    assert_eq!(refused(error), (403, "forbidden".into()));
    // A name no workload plugin claims; and a workload nobody granted alice, which
    // under `default_access = "deny"` looks the same as one she may not use.
    let unknown = fixture.forwarder("example.com", Some(ALICE_TOKEN));
    assert_eq!(refused(unknown.check().await.unwrap_err()), (404, "no_route".into()));
    let ungranted = fixture.forwarder("web-nosuch.localhost", Some(ALICE_TOKEN));
    assert_eq!(refused(ungranted.check().await.unwrap_err()), (403, "forbidden".into()));

    // The agent goes away: admission still passes, a connection cannot be carried.
    let alice = fixture.forwarder("web-a1.localhost", Some(ALICE_TOKEN));
    assert!(alice.open().await.is_ok(), "carried while the agent is there");
    fixture.agent.take().unwrap().shutdown().await;
    let error = match alice.open().await {
        Ok(_) => panic!("a connection was carried with no agent"),
        Err(error) => error,
    };
    let (status, code) = refused(error);
    assert!(status == 504 || status == 502, "{status} {code}");
    assert_eq!(code, "no_tunnel");
}

#[tokio::test]
async fn forward_closes_the_local_connection_when_it_cannot_be_carried() {
    let mut fixture = Fixture::start().await;
    let (local, _stop) = fixture.forward().await;
    fixture.agent.take().unwrap().shutdown().await;
    let mut stream = TcpStream::connect(local).await.unwrap();
    let mut buf = [0u8; 16];
    // Closed once the host answers that no tunnel came (the fixture waits 3 s).
    let n =
        tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}
