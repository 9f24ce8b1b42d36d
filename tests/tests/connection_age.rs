//! `[agents] max_connection_age`: agents are asked to reconnect (spreading them over
//! replicas added since), traffic never notices, and a connection still busy past the
//! grace period is cut.

use std::time::Duration;

use burrow_tests::clients::{self, Mode};
use burrow_tests::workload::Workload;
use burrow_tests::*;
use http::StatusCode;
use http_body_util::BodyExt;

const HOST: &str = "web-a1.localhost";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aged_connections_are_replaced_without_failing_requests_and_cut_after_the_grace() {
    let parts = ConfigParts {
        agents: "max_connection_age = \"1s\"\nconnection_age_grace = \"3s\"".into(),
        ..Default::default()
    };
    let host = TestHost::start(parts.build()).await;
    let workload = Workload::start("w1").await;
    let agent = agent_serving(&host, TOKEN, &workload, 1).await;
    let attempts_at_start = agent.status().borrow().connect_attempts;

    // A stream that outlives the grace period, opened on the first connection.
    let mut streaming = clients::connect(host.ingress_addr, &Mode::h1()).await;
    let resp = streaming.request("GET", HOST, "/sse?n=2", &[], clients::empty()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut sse = resp.into_body();
    sse.frame().await.unwrap().unwrap();

    // Requests keep succeeding while connections age out and are replaced.
    let mut client = clients::connect(host.ingress_addr, &Mode::h2()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut served = 0;
    while tokio::time::Instant::now() < deadline {
        let (status, _, body) = client.get(HOST, "/hello").await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served > 50);
    let attempts = agent.status().borrow().connect_attempts;
    assert!(attempts >= attempts_at_start + 2, "the agent reconnected after each GoAway ({attempts})");

    // The old connection was cut once its grace ran out: the stream on it ended early,
    // before the workload sent its second event.
    let rest = tokio::time::timeout(Duration::from_secs(5), sse.collect()).await.expect("stream ended");
    match rest {
        Err(_) => {}
        Ok(body) => {
            assert!(
                !String::from_utf8_lossy(&body.to_bytes()).contains("event 1"),
                "the stream outlived the grace"
            )
        }
    }
}
