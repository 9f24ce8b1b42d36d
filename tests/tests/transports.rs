//! Every agent transport, with and without TLS; agent authentication; reconnection.

use std::time::Duration;

use burrow_tests::clients;
use burrow_tests::tls::TestPki;
use burrow_tests::workload::Workload;
use burrow_tests::*;
use http::StatusCode;

const HOST: &str = "web-a1.localhost";

async fn serves_through(scheme: &str, pki: Option<&TestPki>) {
    let parts = ConfigParts { agents: pki.map(|p| p.tls_toml()).unwrap_or_default(), ..Default::default() };
    let host = TestHost::start(parts.build()).await;
    let workload = Workload::start(scheme).await;
    let mut config = agent_config(&host.agent_url(scheme), TOKEN, &[workload.service("web")]);
    config.ca_file = pki.map(|p| p.ca_cert.clone());
    let agent = burrow_agent::spawn(config);
    wait_connected(&agent).await;
    for _ in 0..3 {
        let (status, _, body) = clients::get(host.ingress_addr, HOST, "/hello").await;
        assert_eq!(status, StatusCode::OK, "{scheme}");
        assert_eq!(String::from_utf8_lossy(&body), format!("hello from {scheme}"));
    }
    // A WebSocket inside the tunnel inside (maybe) a WebSocket.
    let (mut tcp, head) = clients::raw_upgrade(host.ingress_addr, HOST).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"ping").await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut got = Vec::new();
    tcp.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"pingbye");
    agent.shutdown().await;
    host.stop().await.unwrap();
}

#[tokio::test]
async fn grpc_cleartext() {
    serves_through("grpc", None).await;
}

#[tokio::test]
async fn websocket_cleartext() {
    serves_through("ws", None).await;
}

#[tokio::test]
async fn grpc_over_tls() {
    serves_through("grpcs", Some(&TestPki::generate())).await;
}

#[tokio::test]
async fn websocket_over_tls() {
    serves_through("wss", Some(&TestPki::generate())).await;
}

#[tokio::test]
async fn tls_agent_refuses_an_untrusted_host() {
    let pki = TestPki::generate();
    let other = TestPki::generate();
    let host = TestHost::start(ConfigParts { agents: pki.tls_toml(), ..Default::default() }.build()).await;
    let mut config = agent_config(&host.agent_url("grpcs"), TOKEN, &["web=127.0.0.1:9".into()]);
    config.ca_file = Some(other.ca_cert.clone());
    let agent = burrow_agent::spawn(config);
    let mut status = agent.status();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if matches!(status.borrow_and_update().state, burrow_agent::ConnState::BackingOff { .. }) {
                break;
            }
            status.changed().await.unwrap();
        }
    })
    .await
    .expect("agent backs off after the TLS failure");
    let s = agent.status().borrow().clone();
    assert!(!matches!(s.state, burrow_agent::ConnState::Connected { .. }));
    assert!(
        s.last_error.unwrap_or_default().to_lowercase().contains("certificate"),
        "the error names the certificate problem"
    );
}

#[tokio::test]
async fn wrong_agent_token_is_rejected_and_the_agent_backs_off() {
    let host = TestHost::start(default_config()).await;
    let agent = burrow_agent::spawn(agent_config(
        &host.agent_url("grpc"),
        "not-the-token",
        &["web=127.0.0.1:9".into()],
    ));
    let mut status = agent.status();
    let s = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let s = status.borrow_and_update().clone();
            if s.auth_failures > 0 {
                return s;
            }
            status.changed().await.unwrap();
        }
    })
    .await
    .expect("agent reports the authentication failure");
    match &s.state {
        burrow_agent::ConnState::BackingOff { auth_failure, retry_in, reason } => {
            assert!(auth_failure, "{reason}");
            // Harder than the ordinary backoff's 1 s floor: the host is not hammered.
            assert!(*retry_in >= Duration::from_secs(5), "auth backoff is {retry_in:?}");
        }
        other => panic!("expected BackingOff, got {other:?}"),
    }
    assert!(s.last_error.unwrap_or_default().to_lowercase().contains("token"));
    // And the host still serves a good agent.
    let workload = Workload::start("good").await;
    let good = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&good).await;
    let (status, _, _) = clients::get(host.ingress_addr, HOST, "/hello").await;
    assert_eq!(status, StatusCode::OK);
    // One failure per connection slot, then each backs off: no retry storm.
    let slots = agent.status().borrow().connections.len() as u64;
    assert_eq!(agent.status().borrow().auth_failures, slots, "no retry storm");
}

#[tokio::test]
async fn host_restart_agent_reconnects_and_traffic_resumes() {
    let config = default_config();
    let host = TestHost::start(config.clone()).await;
    let (agent_addr, ingress_addr) = (host.agent_addr, host.ingress_addr);
    let workload = Workload::start("survivor").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;
    let (status, _, _) = clients::get(ingress_addr, HOST, "/hello").await;
    assert_eq!(status, StatusCode::OK);

    host.stop().await.unwrap();
    let agents = tokio::net::TcpListener::bind(agent_addr).await.expect("rebind agent port");
    let ingress = tokio::net::TcpListener::bind(ingress_addr).await.expect("rebind ingress port");
    let mut config = config;
    config.ingress.stream_wait = Duration::from_secs(30);
    let _host = TestHost::start_on(config, agents, ingress).await;
    // The request waits for the reconnecting agent rather than failing.
    let (status, _, body) = clients::get(ingress_addr, HOST, "/hello").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"hello from survivor");
}
