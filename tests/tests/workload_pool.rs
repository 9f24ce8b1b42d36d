//! The ingress's keep-alive pool of workload connections (one agent tunnel each), keyed
//! by (agent, service): reuse, the idle limit, and no reuse when switched off.

use std::time::Duration;

use burrow_tests::clients;
use burrow_tests::workload::Workload;
use burrow_tests::*;
use http::StatusCode;

const HOST: &str = "web-a1.localhost";

async fn setup(ingress: &str) -> (TestHost, Workload, burrow_agent::AgentHandle) {
    let parts = ConfigParts { ingress: ingress.into(), ..Default::default() };
    let host = TestHost::start(parts.build()).await;
    let workload = Workload::start("w1").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;
    (host, workload, agent)
}

/// One request on a new user connection each time, so only the host's pool can explain a
/// shared workload connection.
async fn get_hello(host: &TestHost) {
    let (status, _, body) = clients::get(host.ingress_addr, HOST, "/hello").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"hello from w1");
}

#[tokio::test]
async fn pool_sequential_requests_share_one_workload_connection() {
    let (host, workload, _agent) = setup("stream_wait = \"3s\"").await;
    for _ in 0..5 {
        get_hello(&host).await;
    }
    assert_eq!(workload.connections(), 1, "each request after the first reused the pooled connection");
}

#[tokio::test]
async fn pool_an_idle_connection_is_closed_after_its_timeout_and_its_tunnel_freed() {
    let (host, workload, agent) = setup("stream_wait = \"3s\"\nidle_connection_timeout = \"300ms\"").await;
    get_hello(&host).await;
    assert_eq!(workload.connections(), 1);
    // Closing the idle connection ends its tunnel on the agent.
    eventually(Duration::from_secs(10), "the pooled tunnel is released", || {
        agent.status().borrow().active_streams == 0
    })
    .await;
    get_hello(&host).await;
    assert_eq!(workload.connections(), 2, "the expired connection was not reused");
}

#[tokio::test]
async fn pool_switched_off_opens_a_connection_per_request() {
    let (host, workload, agent) = setup("stream_wait = \"3s\"\nmax_idle_per_workload = 0").await;
    for _ in 0..3 {
        get_hello(&host).await;
    }
    assert_eq!(workload.connections(), 3);
    eventually(Duration::from_secs(10), "no tunnel stays busy", || {
        agent.status().borrow().active_streams == 0
    })
    .await;
}
