//! Replica-to-replica trust: the private API is mutual TLS by default, and a replica
//! token opens the one request it was minted for, once. `cargo test replay` runs the
//! token tests; `cargo test replica_` the rest.

use std::net::SocketAddr;
use std::time::Duration;

use burrow_host::cluster::forward::binding;
use burrow_host::cluster::token::TokenKey;
use burrow_host::time::now_ms;
use burrow_proto::cluster_pb::replica_tunnel_client::ReplicaTunnelClient;
use burrow_proto::pb::{self, agent_frame, host_frame};
use burrow_proto::tunnel::frames;
use burrow_tests::clients;
use burrow_tests::redis::RedisServer;
use burrow_tests::replica::{channel, Caller};
use burrow_tests::workload::Workload;
use burrow_tests::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "web-a1.localhost";

fn parts(replica: &str, redis: &RedisServer, cluster_extra: &str) -> ConfigParts {
    let mut p = cluster_parts(replica, &redis.url(), cluster_extra);
    p.authorizer = agents_authorizer(&["a1", "a2"]);
    p
}

async fn start(parts: ConfigParts) -> TestHost {
    let host = TestHost::start(parts.build()).await;
    host.wait_ready().await;
    host
}

/// Agent `agent` (by its [`agent_token_of`] token) on `host` with one connection.
async fn agent_on(host: &TestHost, agent: &str, workload: &Workload) -> burrow_agent::AgentHandle {
    agent_serving(host, &agent_token_of(agent), workload, 1).await
}

async fn metrics(host: &TestHost) -> String {
    let (_, _, body) = clients::get(host.admin_addr, "localhost", "/metrics").await;
    String::from_utf8_lossy(&body).into_owned()
}

/// The key every test replica signs with.
fn key() -> TokenKey {
    TokenKey::new(CLUSTER_SECRET.as_bytes(), Duration::from_secs(10))
}

/// A forward call to the replica API at `addr` for `agent` with `token`, whose stream
/// sends `dial` and then `then` (and stays open). Returns the status or the stream.
async fn forward(
    addr: SocketAddr,
    caller: Caller,
    agent: &str,
    token: &str,
    dial: pb::Dial,
    then: Vec<pb::HostFrame>,
) -> Result<tonic::Streaming<pb::AgentFrame>, tonic::Status> {
    let channel = channel(addr, caller).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = ReplicaTunnelClient::new(channel);
    let first = pb::HostFrame { frame: Some(host_frame::Frame::Dial(dial)) };
    let frames = futures_util::stream::iter(std::iter::once(first).chain(then));
    let mut request =
        tonic::Request::new(futures_util::StreamExt::chain(frames, futures_util::stream::pending()));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request.metadata_mut().insert_bin(
        burrow_proto::AGENT_ID_METADATA,
        tonic::metadata::BinaryMetadataValue::from_bytes(agent.as_bytes()),
    );
    client.forward(request).await.map(|r| r.into_inner())
}

fn dial(service: &str, request_id: &str) -> pb::Dial {
    match frames::dial(service, request_id).frame {
        Some(host_frame::Frame::Dial(dial)) => dial,
        _ => unreachable!("frames::dial makes a Dial"),
    }
}

/// Reads the agent's answer: the `DialResult` must accept, then the HTTP response's bytes.
async fn read_response(mut inbound: tonic::Streaming<pb::AgentFrame>) -> String {
    let first = inbound.message().await.unwrap().expect("a DialResult");
    assert!(
        matches!(first.frame, Some(agent_frame::Frame::DialResult(pb::DialResult { refusal: None }))),
        "{first:?}"
    );
    let mut body = Vec::new();
    while let Ok(Some(frame)) = inbound.message().await {
        match frame.frame {
            Some(agent_frame::Frame::Data(data)) => body.extend_from_slice(&data),
            _ => break,
        }
        if body.windows(13).any(|w| w == b"hello from w1") {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

fn get_hello() -> Vec<pb::HostFrame> {
    vec![frames::host_data(bytes::Bytes::from_static(
        b"GET /hello HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    ))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_a_replica_token_opens_its_request_once() {
    let redis = RedisServer::start();
    let host = start(parts("r0", &redis, "")).await;
    let workload = Workload::start("w1").await;
    let _agent = agent_on(&host, "a1", &workload).await;
    let addr = host.cluster_addr.unwrap();
    let request = dial("web", "req-1");
    let token = key().mint_bound("r9", "r0", &binding("a1", &request));

    // First use: the agent's service answers through the relayed tunnel.
    let inbound = forward(addr, Caller::Replica, "a1", &token, request.clone(), get_hello()).await.unwrap();
    let response = read_response(inbound).await;
    assert!(response.starts_with("HTTP/1.1 200") && response.contains("hello from w1"), "{response}");

    // The same token again, for the same request: a replay.
    let status = forward(addr, Caller::Replica, "a1", &token, request, get_hello()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("replayed"), "{status:?}");
    let text = metrics(&host).await;
    assert_eq!(metric(&text, "burrow_forwards_served_total{result=\"replayed\"}"), 1.0, "{text}");
    assert_eq!(metric(&text, "burrow_forwards_served_total{result=\"ok\"}"), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_a_replica_token_opens_no_other_agent_service_or_request() {
    let redis = RedisServer::start();
    let host = start(parts("r0", &redis, "")).await;
    let workload = Workload::start("w1").await;
    let _a1 = agent_on(&host, "a1", &workload).await;
    let _a2 = agent_on(&host, "a2", &workload).await;
    let addr = host.cluster_addr.unwrap();
    let minted_for = dial("web", "req-1");
    let token = key().mint_bound("r9", "r0", &binding("a1", &minted_for));
    let mut session = dial("web", "req-1");
    session.kind = pb::DialKind::Session as i32;
    let mut as_someone_else = dial("web", "req-1");
    as_someone_else.principal = "mallory".into();
    let cases = [
        ("another agent", "a2", dial("web", "req-1")),
        ("another service", "a1", dial("ssh", "req-1")),
        ("another request id", "a1", dial("web", "req-2")),
        ("another kind", "a1", session),
        ("another principal", "a1", as_someone_else),
    ];
    for (what, agent, request) in cases {
        let status = forward(addr, Caller::Replica, agent, &token, request, get_hello()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{what}: {status:?}");
        assert!(status.message().contains("bound to another request"), "{what}: {status:?}");
    }
    // None of them used it up: the request it was minted for still opens.
    let inbound = forward(addr, Caller::Replica, "a1", &token, minted_for, get_hello()).await.unwrap();
    assert!(read_response(inbound).await.contains("hello from w1"));
    let text = metrics(&host).await;
    assert_eq!(metric(&text, "burrow_forwards_served_total{result=\"unauthenticated\"}"), 5.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_bad_expired_and_unbound_replica_tokens_are_refused() {
    let redis = RedisServer::start();
    let host = start(parts("r0", &redis, "")).await;
    let workload = Workload::start("w1").await;
    let _agent = agent_on(&host, "a1", &workload).await;
    let addr = host.cluster_addr.unwrap();
    let request = dial("web", "req-1");
    let digest = binding("a1", &request);
    let wrong = TokenKey::new(b"another-secret-another-secret-0000", Duration::from_secs(10));
    let control = TokenKey::with_domain(
        b"burrow-control-token.v1.",
        CLUSTER_SECRET.as_bytes(),
        Duration::from_secs(10),
    );
    let cases = [
        ("garbage", "not-a-token".to_owned(), "malformed"),
        ("wrong secret", wrong.mint_bound("r9", "r0", &digest), "signature"),
        ("wrong audience", key().mint_bound("r9", "r1", &digest), "not this one"),
        ("expired", key().mint_at("r9", "r0", now_ms() - 60_000), "expired"),
        // The old, unbound form would open any tunnel for its lifetime.
        ("unbound", key().mint("r9", "r0"), "not bound"),
        // A control-API token under the same secret is of another domain.
        ("control token", control.mint("cli", "r0"), "signature"),
    ];
    for (what, token, needle) in cases {
        let status = forward(addr, Caller::Replica, "a1", &token, request.clone(), vec![]).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{what}: {status:?}");
        assert!(status.message().contains(needle), "{what}: {status:?}");
    }
    let text = metrics(&host).await;
    assert_eq!(metric(&text, "burrow_forwards_served_total{result=\"unauthenticated\"}"), 6.0, "{text}");
    assert_eq!(metric(&text, "burrow_forwards_served_total{result=\"ok\"}"), 0.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_mtls_refuses_callers_without_a_replica_certificate() {
    let redis = RedisServer::start();
    let hosts = [start(parts("r0", &redis, "")).await, start(parts("r1", &redis, "")).await];
    let workload = Workload::start("w1").await;
    let _agent = agent_on(&hosts[0], "a1", &workload).await;
    // Replicas reach each other: a request on r1 is forwarded to r0 over mutual TLS.
    let (status, _, body) = clients::get(hosts[1].ingress_addr, HOST, "/hello").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(metric(&metrics(&hosts[0]).await, "burrow_forwards_served_total{result=\"ok\"}"), 1.0);

    // A caller with a perfectly good token but no replica certificate gets nowhere: not
    // over TLS without a client certificate, not in cleartext.
    let addr = hosts[0].cluster_addr.unwrap();
    let request = dial("web", "req-1");
    for (what, caller) in [("no certificate", Caller::NoCertificate), ("cleartext", Caller::Cleartext)] {
        let token = key().mint_bound("r9", "r0", &binding("a1", &request));
        let result = forward(addr, caller, "a1", &token, request.clone(), get_hello()).await;
        let status = result.expect_err(what);
        // The connection fails (refused handshake, or closed right after it under TLS 1.3,
        // where the server checks the client's certificate last): the call never reaches
        // the service, which would have answered with a gRPC status of its own.
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Cancelled
            ),
            "{what}: {status:?}"
        );
    }
    // Neither reached the service: only the replica's own forward was served.
    let text = metrics(&hosts[0]).await;
    assert_eq!(metric(&text, "burrow_forwards_served_total{result=\"ok\"}"), 1.0, "{text}");
}

/// How long after `started` the server closed `stream` (EOF or an error), at most `limit`.
async fn closed_within(
    stream: &mut tokio::net::TcpStream,
    started: tokio::time::Instant,
    limit: Duration,
) -> Duration {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(started + limit, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the connection was still open after {limit:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_replica_port_is_closed_while_forwards_are_served() {
    let redis = RedisServer::start();
    let extra = "handshake_timeout = \"1s\"";
    let hosts = [start(parts("r0", &redis, extra)).await, start(parts("r1", &redis, extra)).await];
    let workload = Workload::start("w1").await;
    let _agent = agent_on(&hosts[0], "a1", &workload).await;
    let addr = hosts[0].cluster_addr.unwrap();
    // One connection says nothing; another trickles the start of a TLS ClientHello.
    let opened = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut trickle = tokio::net::TcpStream::connect(addr).await.unwrap();
    trickle.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    // Meanwhile forwards are served.
    let (status, _, body) = clients::get(hosts[1].ingress_addr, HOST, "/hello").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let limit = Duration::from_secs(5);
    let silent_for = closed_within(&mut silent, opened, limit).await;
    let trickle_for = closed_within(&mut trickle, opened, limit).await;
    assert!(silent_for >= Duration::from_millis(900), "closed before its deadline: {silent_for:?}");
    assert!(trickle_for >= Duration::from_millis(900), "closed before its deadline: {trickle_for:?}");
    let (status, _, _) = clients::get(hosts[1].ingress_addr, HOST, "/hello").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_cleartext_opt_out_still_binds_tokens_and_times_out_silent_peers() {
    let redis = RedisServer::start();
    let extra = "insecure_cleartext = true\nhandshake_timeout = \"1s\"";
    let hosts = [start(parts("r0", &redis, extra)).await, start(parts("r1", &redis, extra)).await];
    let workload = Workload::start("w1").await;
    let _agent = agent_on(&hosts[0], "a1", &workload).await;
    let (status, _, body) = clients::get(hosts[1].ingress_addr, HOST, "/hello").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let addr = hosts[0].cluster_addr.unwrap();
    // Tokens stay bound and single-use without TLS.
    let request = dial("web", "req-1");
    let token = key().mint_bound("r9", "r0", &binding("a1", &request));
    let inbound = forward(addr, Caller::Cleartext, "a1", &token, request.clone(), get_hello()).await.unwrap();
    assert!(read_response(inbound).await.contains("hello from w1"));
    let status = forward(addr, Caller::Cleartext, "a1", &token, request, get_hello()).await.unwrap_err();
    assert!(status.message().contains("replayed"), "{status:?}");
    // A connection that never sends the HTTP/2 preface is closed at the deadline.
    let opened = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let waited = closed_within(&mut silent, opened, Duration::from_secs(5)).await;
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
}
