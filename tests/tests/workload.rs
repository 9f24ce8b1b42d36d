//! The workload lifecycle end to end: a control plane creates workloads through the
//! control API (real gRPC), agents run with the token it returns, users reach them by
//! host name, and terminating or expiring a workload stops its agent and its users'
//! connections. `cargo test workload` runs these; `cargo test revok` the revocation ones.

use std::time::Duration;

use burrow_host::control_api::client::ControlClient;
use burrow_proto::control_pb as pb;
use burrow_tests::clients::{collect, connect, empty, Mode};
use burrow_tests::lifecycle::{
    client, create, echo, get, refusal, single_host, terminate, wait_closed, wait_workload,
    websocket_as_alice, workspace, Dir,
};
use burrow_tests::workload::Workload;
use burrow_tests::{agent_config, wait_connected, TestHost, ALICE_TOKEN, BOB_TOKEN};

/// A host with the lifecycle, a control API client and a web workload.
struct Fixture {
    host: TestHost,
    control: ControlClient,
    web: Workload,
    _dir: Dir,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = Dir::new("workload");
        let host = TestHost::start(single_host(dir.path()).build()).await;
        let control = client(&host).await;
        let web = Workload::start("ws").await;
        Fixture { host, control, web, _dir: dir }
    }

    /// Starts an agent for workload `id` with `token`, offering `web`.
    async fn agent(&self, token: &str) -> burrow_agent::AgentHandle {
        let config = agent_config(&self.host.agent_url("grpc"), token, &[format!("web={}", self.web.addr)]);
        let agent = burrow_agent::spawn(config);
        wait_connected(&agent).await;
        agent
    }
}

/// GET `path` on `host` through the ingress, as the user with `token` (if any).
async fn get_as(ingress: std::net::SocketAddr, host: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let response = connect(ingress, &Mode::h1()).await.request("GET", host, path, &headers, empty()).await;
    let (status, _, body) = collect(response).await;
    (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_created_through_the_control_api_is_reached_by_its_host_name_by_its_users_only() {
    let mut f = Fixture::start().await;
    let mut request = workspace("ws-1");
    request.allowed_groups = vec!["ops".into()];
    let token = create(&mut f.control, request).await;
    assert!(token.token.starts_with("bwt1."), "a workload token");
    assert_eq!(get(&mut f.control, "ws-1").await.state, pb::WorkloadState::Waiting as i32);
    let _agent = f.agent(&token.token).await;

    let ingress = f.host.ingress_addr;
    let (status, body) = get_as(ingress, "web-ws-1.localhost", "/hello", Some(ALICE_TOKEN)).await;
    assert_eq!((status, body.as_str()), (200, "hello from ws"));
    // Bob is a known user, neither the owner nor in an allowed group; nobody is anonymous.
    assert_eq!(get_as(ingress, "web-ws-1.localhost", "/hello", Some(BOB_TOKEN)).await.0, 403);
    assert_eq!(get_as(ingress, "web-ws-1.localhost", "/hello", None).await.0, 401);

    let w = get(&mut f.control, "ws-1").await;
    assert_eq!(w.state, pb::WorkloadState::Connected as i32);
    assert_eq!(w.connections.len(), 1, "{w:?}");
    assert!(w.connections[0].since_ms > 0);
    assert_eq!(w.owner, "alice");
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_records_and_agent_tokens_survive_a_host_restart() {
    let mut f = Fixture::start().await;
    let token = create(&mut f.control, workspace("ws-2")).await;
    let agent = f.agent(&token.token).await;
    assert_eq!(get_as(f.host.ingress_addr, "web-ws-2.localhost", "/hello", Some(ALICE_TOKEN)).await.0, 200);

    f.host.restart().await;
    // The agent reconnects with the same token: the record and the signing key were kept.
    let mut control = client(&f.host).await;
    wait_workload(&mut control, "ws-2", "the agent is back", |w| {
        w.state == pb::WorkloadState::Connected as i32
    })
    .await;
    assert_eq!(get_as(f.host.ingress_addr, "web-ws-2.localhost", "/hello", Some(ALICE_TOKEN)).await.0, 200);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_workload_token_is_refused_and_its_agent_and_websocket_are_stopped() {
    let mut f = Fixture::start().await;
    let token = create(&mut f.control, workspace("ws-3")).await;
    let agent = f.agent(&token.token).await;
    let mut ws = websocket_as_alice(f.host.ingress_addr, "web-ws-3.localhost").await;
    echo(&mut ws).await;

    let since = tokio::time::Instant::now();
    let ended = terminate(&mut f.control, "ws-3", "the workspace was deleted").await;
    assert_eq!(ended.state, pb::WorkloadState::Terminated as i32);
    assert_eq!(ended.end_reason, "the workspace was deleted");
    let took = wait_closed(&mut ws, since).await;
    assert!(took < Duration::from_secs(1), "the WebSocket closed {took:?} after the terminate was sent");

    // The running agent stops for good, with the reason.
    let reason = burrow_tests::lifecycle::final_reason(&agent).await;
    assert_eq!(reason, burrow_agent::FinalReason::WorkloadTerminated);
    // Users get 410; the token is refused for good at connect.
    assert_eq!(get_as(f.host.ingress_addr, "web-ws-3.localhost", "/hello", Some(ALICE_TOKEN)).await.0, 410);
    let (fin, code, message) = refusal(f.host.agent_addr, &token.token).await;
    assert_eq!(fin.as_deref(), Some(burrow_proto::FINAL_WORKLOAD_TERMINATED), "{code:?} {message}");
    // Terminating again changes nothing.
    let again = terminate(&mut f.control, "ws-3", "another reason").await;
    assert_eq!(again.end_reason, "the workspace was deleted");
    let (_, _, body) = burrow_tests::clients::get(f.host.admin_addr, "127.0.0.1", "/metrics").await;
    let text = String::from_utf8_lossy(&body);
    let events = |event: &str| {
        burrow_tests::metric(&text, &format!("burrow_workload_events_total{{event=\"{event}\"}}"))
    };
    assert_eq!(events("created"), 1.0, "{text}");
    assert_eq!(events("terminated"), 1.0, "a second terminate changes nothing");
    assert!(events("sessions_ended") >= 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_by_expiry_a_workload_token_is_refused_with_its_reason() {
    let mut f = Fixture::start().await;
    let mut request = workspace("ws-4");
    request.token_ttl_s = 1;
    let token = create(&mut f.control, request).await;
    // Wait for the token's own expiry to pass (its lifetime is the subject here).
    let now = burrow_host::time::now_ms();
    tokio::time::sleep(Duration::from_millis(token.expires_at_ms.saturating_sub(now) + 50)).await;
    let (fin, code, _) = refusal(f.host.agent_addr, &token.token).await;
    assert_eq!(fin.as_deref(), Some(burrow_proto::FINAL_TOKEN_EXPIRED));
    assert_eq!(code, tonic::Code::Unauthenticated);
    // The workload itself lives: the control plane can hand out a new token.
    let request = f.control.request(pb::RenewTokenRequest { id: "ws-4".into(), token_ttl_s: 60 });
    let fresh = f.control.api().renew_token(request).await.unwrap().into_inner().token.unwrap();
    let _agent = f.agent(&fresh.token).await;
    assert_eq!(get_as(f.host.ingress_addr, "web-ws-4.localhost", "/hello", Some(ALICE_TOKEN)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_agent_renews_its_token_and_keeps_serving_past_the_first_expiry() {
    let mut f = Fixture::start().await;
    let mut request = workspace("ws-5");
    request.token_ttl_s = 3;
    let token = create(&mut f.control, request).await;
    let _agent = f.agent(&token.token).await;
    // Past the first token's expiry (plus a margin): had the agent not renewed, the host
    // would have sent it away by now.
    let now = burrow_host::time::now_ms();
    tokio::time::sleep(Duration::from_millis(token.expires_at_ms.saturating_sub(now) + 1500)).await;
    assert_eq!(get_as(f.host.ingress_addr, "web-ws-5.localhost", "/hello", Some(ALICE_TOKEN)).await.0, 200);
    assert_eq!(get(&mut f.control, "ws-5").await.state, pb::WorkloadState::Connected as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_ci_job_ends_with_its_job() {
    let mut f = Fixture::start().await;
    let deadline = burrow_host::time::now_ms() + 3_000;
    let request = pb::CreateWorkloadRequest {
        kind: "ci-job".into(),
        id: "job-7".into(),
        owner: "alice".into(),
        expires_at_ms: deadline,
        ..workspace("job-7")
    };
    let token = create(&mut f.control, request).await;
    assert!(token.expires_at_ms <= deadline, "the token never outlives the job");
    let agent = f.agent(&token.token).await;
    assert_eq!(
        get_as(f.host.ingress_addr, "web-job-7.ci.localhost", "/hello", Some(ALICE_TOKEN)).await.0,
        200
    );
    // The job's end: the agent stops with the workload-ended reason, users get 410.
    let reason = burrow_tests::lifecycle::final_reason(&agent).await;
    assert_eq!(reason, burrow_agent::FinalReason::WorkloadEnded);
    assert_eq!(
        get_as(f.host.ingress_addr, "web-job-7.ci.localhost", "/hello", Some(ALICE_TOKEN)).await.0,
        410
    );
    assert_eq!(get(&mut f.control, "job-7").await.state, pb::WorkloadState::Expired as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_control_api_refuses_bad_input_and_changes_nothing() {
    let mut f = Fixture::start().await;
    create(&mut f.control, workspace("ws-6")).await;

    let c = &mut f.control;
    let r = c.request(pb::GetWorkloadRequest { id: "nope".into() });
    assert_eq!(c.api().get_workload(r).await.unwrap_err().code(), tonic::Code::NotFound);
    let r = c.request(workspace("ws-6"));
    assert_eq!(c.api().create_workload(r).await.unwrap_err().code(), tonic::Code::AlreadyExists);
    let r = c.request(workspace("Bad_Id"));
    let err = c.api().create_workload(r).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("id:"), "{}", err.message());
    let r = c.request(pb::CreateWorkloadRequest { kind: "no-such-kind".into(), ..workspace("ws-7") });
    assert_eq!(c.api().create_workload(r).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
    let mut labels = std::collections::HashMap::new();
    labels.insert("burrow.owner".to_string(), "mallory".to_string());
    let r = c.request(pb::CreateWorkloadRequest { labels, ..workspace("ws-8") });
    assert_eq!(c.api().create_workload(r).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let r = c.request(pb::EnqueueWorkRequest {
        id: "ws-6".into(),
        payload: vec![0; burrow_proto::MAX_WORK_PAYLOAD + 1],
    });
    assert_eq!(c.api().enqueue_work(r).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let r = c.request(pb::TerminateWorkloadRequest { id: "nope".into(), reason: String::new() });
    assert_eq!(c.api().terminate_workload(r).await.unwrap_err().code(), tonic::Code::NotFound);

    // A control token signed with another secret.
    let addr = f.host.control_addr.unwrap();
    let mut foreign =
        ControlClient::connect(&format!("http://{addr}"), b"another-secret-0123456789abcdef012345", "x")
            .await
            .unwrap();
    let r = foreign.request(pb::ListWorkloadsRequest::default());
    assert_eq!(foreign.api().list_workloads(r).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    // No token at all.
    let r = tonic::Request::new(pb::ListWorkloadsRequest::default());
    assert_eq!(c.api().list_workloads(r).await.unwrap_err().code(), tonic::Code::Unauthenticated);

    // Malformed and foreign agent tokens are refused for good, without quoting them.
    let (fin, _, message) = refusal(f.host.agent_addr, "bwt1.garbage").await;
    assert_eq!(fin.as_deref(), Some(burrow_proto::FINAL_TOKEN_REVOKED));
    assert!(!message.contains("garbage"), "{message}");
    let other_key = burrow_host::workloads::token::generate_pkcs8().unwrap();
    let other = burrow_host::workloads::KeyRing::from_pkcs8(&[&other_key]).unwrap();
    let now = burrow_host::time::now_ms();
    let forged = other.sign(&burrow_host::workloads::AgentClaims {
        kind: "workspace".into(),
        workload_id: "ws-6".into(),
        agent_id: "ws-6".into(),
        services: vec![],
        issued_at: now,
        expires_at: now + 60_000,
        token_id: "forged".into(),
    });
    let (fin, _, message) = refusal(f.host.agent_addr, &forged).await;
    assert_eq!(fin.as_deref(), Some(burrow_proto::FINAL_TOKEN_REVOKED), "{message}");

    // Nothing changed: one live workload, still waiting for its agent.
    let r = c.request(pb::ListWorkloadsRequest { kind: String::new(), include_ended: true });
    let list = c.api().list_workloads(r).await.unwrap().into_inner().workloads;
    assert_eq!(list.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(), vec!["ws-6"]);
    assert_eq!(list[0].state, pb::WorkloadState::Waiting as i32);
}
