//! Graceful shutdown: work in flight finishes, new work is refused, agents are told.

use std::time::Duration;

use burrow_tests::clients::{self, Mode};
use burrow_tests::workload::{pattern_byte, Workload};
use burrow_tests::*;
use http::StatusCode;
use http_body_util::BodyExt;

const HOST: &str = "web-a1.localhost";

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish() {
    let host = TestHost::start(default_config()).await;
    let workload = Workload::start("w").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;
    let ingress = host.ingress_addr;

    let size = 16 * 1024 * 1024u64;
    let mut client = clients::connect(ingress, &Mode::h1()).await;
    let resp = client.request("GET", HOST, &format!("/download?bytes={size}"), &[], clients::empty()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let mut received = first.len() as u64;

    // Stop the host while the body is still streaming (a slow reader keeps it in flight).
    let stopping = tokio::spawn(host.stop());
    // The stop closes the listener first (before any grace period): wait for that, with
    // the in-flight body still unread.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(ingress).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the ingress still accepts while stopping");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    while let Some(frame) = body.frame().await {
        let data = frame.expect("the in-flight body is not cut").into_data().unwrap();
        assert!(data.iter().enumerate().all(|(i, b)| *b == pattern_byte(received + i as u64)));
        received += data.len() as u64;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(received, size);
    stopping.await.unwrap().expect("graceful stop succeeds");

    // The agent was told to go away and is now trying to reconnect (the host is gone).
    let mut status = agent.status();
    tokio::time::timeout(Duration::from_secs(10), async {
        while matches!(status.borrow_and_update().state, burrow_agent::ConnState::Connected { .. }) {
            status.changed().await.unwrap();
        }
    })
    .await
    .expect("the agent notices the host went away");
}
