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
