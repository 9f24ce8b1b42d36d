//! The host's session cookie belongs to the host: a workload can neither read it nor plant
//! it (or any cookie for the parent domain every workload shares) for its siblings.
//! `cargo test cookie` runs these.

use burrow_tests::clients::{self, Mode};
use burrow_tests::workload::Workload;
use burrow_tests::*;
use http::StatusCode;

const HOST: &str = "web-a1.localhost";

/// A host whose users may carry their token in cookie `burrow_session`; every workload open.
async fn start() -> (TestHost, Workload, burrow_agent::AgentHandle) {
    let parts = ConfigParts { ingress: "session_cookie = \"burrow_session\"".into(), ..Default::default() };
    let host = TestHost::start(parts.build()).await;
    let workload = Workload::start("w1").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;
    (host, workload, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_a_workload_cannot_plant_the_session_or_a_parent_domain_cookie() {
    let (host, _workload, _agent) = start().await;
    for (label, mode) in [("HTTP/1.1", Mode::h1()), ("HTTP/2", Mode::h2())] {
        let mut client = clients::connect(host.ingress_addr, &mode).await;
        let (status, headers, _) = client.get(HOST, "/set-cookie").await;
        assert_eq!(status, StatusCode::OK);
        let set: Vec<&str> =
            headers.get_all(http::header::SET_COOKIE).iter().map(|v| v.to_str().unwrap()).collect();
        // Its own cookies pass; the session cookie and the parent-domain one do not.
        // (`burrow_sign_in` is a workload's own cookie here: this host has no `[sign_in]`.)
        let own = format!("own=1; Domain={HOST}; Path=/");
        assert_eq!(
            set,
            ["theme=dark; Path=/", own.as_str(), "burrow_sign_in=planted-by-the-workload; Path=/"],
            "{label}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_the_session_cookie_never_reaches_a_workload() {
    let (host, _workload, _agent) = start().await;
    let mut client = clients::connect(host.ingress_addr, &Mode::h1()).await;
    // An open workload: the request is admitted either way, and the workload still must
    // not see the user's session (it could replay it where the user has access).
    let response = client
        .request(
            "GET",
            HOST,
            "/headers",
            &[("cookie", "theme=dark; burrow_session=users-secret; lang=en")],
            clients::empty(),
        )
        .await;
    let (status, _, body) = clients::collect(response).await;
    assert_eq!(status, StatusCode::OK);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let cookie = seen["cookie"].as_str().unwrap_or_default();
    assert!(!cookie.contains("users-secret"), "the workload saw the session cookie: {cookie}");
    assert!(cookie.contains("theme=dark") && cookie.contains("lang=en"), "its own cookies pass: {cookie}");
}
