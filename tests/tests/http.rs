//! HTTP through the tunnel: both client protocols, headers, errors, waiting, concurrency.

use std::time::Duration;

use burrow_tests::clients::{self, Mode};
use burrow_tests::workload::Workload;
use burrow_tests::*;
use http::StatusCode;

const HOST: &str = "web-a1.localhost";

async fn setup(config: burrow_host::Config) -> (TestHost, Workload, burrow_agent::AgentHandle) {
    let host = TestHost::start(config).await;
    let workload = Workload::start("w1").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;
    (host, workload, agent)
}

fn request_id(headers: &http::HeaderMap) -> String {
    headers.get("x-request-id").expect("every response carries x-request-id").to_str().unwrap().to_owned()
}

#[tokio::test]
async fn http1_and_http2_reach_the_workload() {
    let (host, _workload, _agent) = setup(default_config()).await;
    for mode in [Mode::h1(), Mode::h2()] {
        let mut client = clients::connect(host.ingress_addr, &mode).await;
        for _ in 0..3 {
            let (status, headers, body) = client.get(HOST, "/hello").await;
            assert_eq!(status, StatusCode::OK, "h2={}", mode.h2);
            assert_eq!(&body[..], b"hello from w1");
            assert_eq!(request_id(&headers).len(), 32);
        }
        // Host names are case-insensitive and may carry a port.
        let (status, _, _) = client.get("WEB-A1.localhost:8080", "/hello").await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn forwarded_headers_and_request_id_reach_the_workload() {
    let (host, _workload, _agent) = setup(default_config()).await;
    let mut client = clients::connect(host.ingress_addr, &Mode::h1()).await;
    let resp = client
        .request(
            "GET",
            HOST,
            "/headers",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("connection", "x-secret"),
                ("x-secret", "hop"),
                ("x-request-id", "spoofed"),
            ],
            clients::empty(),
        )
        .await;
    let (status, headers, body) = clients::collect(resp).await;
    assert_eq!(status, StatusCode::OK);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "untrusted X-Forwarded-For is replaced: {seen}");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], HOST);
    assert_eq!(seen["host"], HOST);
    assert!(seen.get("x-secret").is_none(), "headers named in Connection are hop-by-hop: {seen}");
    let rid = request_id(&headers);
    assert_ne!(rid, "spoofed");
    assert_eq!(seen["x-request-id"], rid.as_str(), "the workload sees the same request id");
}

#[tokio::test]
async fn unknown_host_is_404_with_a_clear_message() {
    let (host, _workload, _agent) = setup(default_config()).await;
    let (status, headers, body) = clients::get(host.ingress_addr, "nothing.example.com", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    request_id(&headers);
    assert!(String::from_utf8_lossy(&body).contains("nothing.example.com"), "{body:?}");
}

#[tokio::test]
async fn unlisted_service_is_502_with_the_agents_reason() {
    let (host, _workload, _agent) = setup(default_config()).await;
    let (status, headers, body) = clients::get(host.ingress_addr, "db-a1.localhost", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    request_id(&headers);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("db"), "the refusal names the service: {body}");
    assert!(
        body.to_lowercase().contains("not offered")
            || body.contains("UNKNOWN_SERVICE")
            || body.contains("UnknownService"),
        "{body}"
    );
}

#[tokio::test]
async fn service_that_cannot_be_dialed_is_502() {
    let host = TestHost::start(default_config()).await;
    // A port with nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[format!("web={dead}")]));
    wait_connected(&agent).await;
    let (status, _, body) = clients::get(host.ingress_addr, HOST, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
}

#[tokio::test]
async fn json_errors_when_asked() {
    let (host, _workload, _agent) = setup(default_config()).await;
    let mut client = clients::connect(host.ingress_addr, &Mode::h1()).await;
    let resp = client
        .request("GET", "nope.localhost.invalid", "/", &[("accept", "application/json")], clients::empty())
        .await;
    let (status, headers, body) = clients::collect(resp).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(headers[http::header::CONTENT_TYPE].to_str().unwrap().starts_with("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON error body");
    assert_eq!(v["request_id"].as_str().unwrap(), request_id(&headers));
}

#[tokio::test]
async fn user_access_rules_401_403_and_allow() {
    let user_token = "alice-secret-token";
    let rules = format!(
        "workloads = [{{ agent = \"{AGENT}\", service = \"web\", access = \"token\", users = [{{ name = \"alice\", token_sha256 = \"{}\" }}] }}]",
        sha256_hex(user_token)
    );
    let config = ConfigParts { authorizer: static_authorizer("deny", &rules), ..Default::default() }.build();
    let (host, _workload, _agent) = setup(config).await;
    let mut client = clients::connect(host.ingress_addr, &Mode::h1()).await;

    let (status, headers, _) = client.get(HOST, "/hello").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.contains_key(http::header::WWW_AUTHENTICATE));

    let resp =
        client.request("GET", HOST, "/hello", &[("authorization", "Bearer wrong")], clients::empty()).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "an unknown credential is rejected");
    clients::collect(resp).await;

    let bearer = format!("Bearer {user_token}");
    let resp = client.request("GET", HOST, "/headers", &[("authorization", &bearer)], clients::empty()).await;
    let (status, _, body) = clients::collect(resp).await;
    assert_eq!(status, StatusCode::OK);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        seen.get("authorization").is_none(),
        "the user's Burrow token is not passed to the workload: {seen}"
    );

    // default_access = deny covers workloads without a rule.
    let (status, _, _) = client.get("other-a1.localhost", "/").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn agent_not_connected_is_504_after_the_wait() {
    let config = ConfigParts { ingress: "stream_wait = \"300ms\"".into(), ..Default::default() }.build();
    let host = TestHost::start(config).await;
    let (status, headers, body) = clients::get(host.ingress_addr, HOST, "/hello").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    request_id(&headers);
    assert!(String::from_utf8_lossy(&body).contains("a1"), "names the agent: {body:?}");
}

#[tokio::test]
async fn an_agent_the_static_list_does_not_name_is_404_at_once() {
    // The built-in static authorizer lists every agent that can ever connect: waiting
    // `stream_wait` for any other one would only end in a 504.
    let config = ConfigParts { ingress: "stream_wait = \"20s\"".into(), ..Default::default() }.build();
    let host = TestHost::start(config).await;
    let (status, headers, body) =
        clients::get_within(Duration::from_secs(10), host.ingress_addr, "web-nope.localhost", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&body));
    request_id(&headers);
}

#[tokio::test]
async fn request_waiting_for_an_agent_succeeds_when_it_connects() {
    let config = ConfigParts { ingress: "stream_wait = \"20s\"".into(), ..Default::default() }.build();
    let host = TestHost::start(config).await;
    let workload = Workload::start("late").await;
    let addr = host.ingress_addr;
    let request = tokio::spawn(async move { clients::get(addr, HOST, "/hello").await });
    // The request is parked before the agent exists (the host counts it as waiting).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = clients::get(host.admin_addr, "localhost", "/metrics").await;
        if metric(&String::from_utf8_lossy(&body), "burrow_agent_waits_total") >= 1.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the request never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!request.is_finished());
    let _agent =
        burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    let (status, _, body) = request.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"hello from late");
}

#[tokio::test]
async fn five_hundred_concurrent_requests_over_one_agent() {
    let (host, _workload, _agent) = setup(default_config()).await;
    // Half over one HTTP/2 connection (multiplexed), half over separate HTTP/1.1 connections.
    let h2 = clients::connect(host.ingress_addr, &Mode::h2()).await;
    let mut tasks = Vec::new();
    for i in 0..500 {
        let addr = host.ingress_addr;
        let mut h2 = match &h2 {
            clients::Client::H2(s) => Some(clients::Client::H2(s.clone())),
            clients::Client::H1(_) => unreachable!(),
        };
        tasks.push(tokio::spawn(async move {
            let payload = format!("request {i}");
            let resp = if i % 2 == 0 {
                h2.as_mut().unwrap().request("POST", HOST, "/echo", &[], clients::full(payload.clone())).await
            } else {
                clients::connect(addr, &Mode::h1())
                    .await
                    .request("POST", HOST, "/echo", &[], clients::full(payload.clone()))
                    .await
            };
            let (status, _, body) = clients::collect(resp).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, payload.as_bytes());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn tls_ingress_serves_http1_and_http2_by_alpn() {
    let pki = burrow_tests::tls::TestPki::generate();
    let config =
        ConfigParts { ingress: format!("stream_wait = \"3s\"\n{}", pki.tls_toml()), ..Default::default() }
            .build();
    let (host, _workload, _agent) = setup(config).await;
    for h2 in [false, true] {
        let mode = Mode { h2, tls: Some(pki.client_config()) };
        let mut client = clients::connect(host.ingress_addr, &mode).await;
        let (status, _, body) = client.get(HOST, "/headers").await;
        assert_eq!(status, StatusCode::OK, "h2={h2}");
        let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(seen["x-forwarded-proto"], "https", "h2={h2}");
    }
}

#[tokio::test]
async fn agent_replicas_sharing_one_identity_both_serve() {
    let host = TestHost::start(default_config()).await;
    let (w1, w2) = (Workload::start("replica-1").await, Workload::start("replica-2").await);
    let a1 = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[w1.service("web")]));
    let a2 = burrow_agent::spawn(agent_config(&host.agent_url("ws"), TOKEN, &[w2.service("web")]));
    wait_connected(&a1).await;
    wait_connected(&a2).await;
    // Eight requests held open at once need eight tunnels: more than one replica parks.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut client = clients::connect(host.ingress_addr, &Mode::h1()).await;
        let resp = client.request("GET", HOST, "/sse?n=2", &[], clients::empty()).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        http_body_util::BodyExt::frame(&mut body).await.unwrap().unwrap();
        held.push((client, body));
    }
    assert!(
        w1.connections() > 0 && w2.connections() > 0,
        "both replicas served: {} and {}",
        w1.connections(),
        w2.connections()
    );
    drop(held);
    // One replica leaving does not take the identity down.
    a1.shutdown().await;
    for _ in 0..5 {
        let (status, _, body) = clients::get(host.ingress_addr, HOST, "/hello").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"hello from replica-2");
    }
}
