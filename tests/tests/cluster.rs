//! Cluster mode on a real `redis-server`: several host replicas in one process, agents
//! spread across them, requests landing anywhere. Crash tests (SIGKILL) are in
//! `cluster_process.rs`.

use std::sync::Arc;
use std::time::Duration;

use burrow_host::time::now_ms;
use burrow_proto::pb::{self, agent_control, agent_tunnel_client::AgentTunnelClient};
use burrow_tests::clients::{self, Mode};
use burrow_tests::redis::RedisServer;
use burrow_tests::workload::{self, Workload};
use burrow_tests::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const HOST: &str = "web-a1.localhost";

/// Agents `a1`, `a2`, `a3` with tokens `token-for-<id>-0123456789`.
fn parts(replica: &str, redis: &RedisServer, cluster_extra: &str) -> ConfigParts {
    let mut p = cluster_parts(replica, &redis.url(), cluster_extra);
    p.authorizer = agents_authorizer(&["a1", "a2", "a3"]);
    p
}

async fn replicas(redis: &RedisServer, n: usize) -> Vec<TestHost> {
    let mut hosts = Vec::new();
    for i in 0..n {
        hosts.push(start(parts(&format!("r{i}"), redis, "")).await);
    }
    hosts
}

/// Starts a replica and waits until it reports ready (its first heartbeat reached Redis).
async fn start(parts: ConfigParts) -> TestHost {
    let host = TestHost::start(parts.build()).await;
    host.wait_ready().await;
    host
}

/// Agent `agent` (by its [`agent_token_of`] token) on `host` with one connection.
async fn agent_on(host: &TestHost, agent: &str, workload: &Workload) -> burrow_agent::AgentHandle {
    agent_serving(host, &agent_token_of(agent), workload, 1).await
}

async fn admin(host: &TestHost, path: &str) -> (StatusCode, String) {
    let (status, _, body) = clients::get(host.admin_addr, "localhost", path).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits until `host` has counted `n` requests waiting for an agent (they are parked).
async fn wait_for_waits(host: &TestHost, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = admin(host, "/metrics").await;
        if metric(&text, "burrow_agent_waits_total") >= n as f64 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no request waited for an agent:\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A loopback address nothing listens on (bound, then released).
fn unused_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_reaches_every_agent() {
    let redis = RedisServer::start();
    let hosts = replicas(&redis, 3).await;
    let workload = Workload::start("w1").await;
    let mut agents = Vec::new();
    for (i, id) in ["a1", "a2", "a3"].iter().enumerate() {
        agents.push(agent_on(&hosts[i], id, &workload).await);
    }
    for (i, host) in hosts.iter().enumerate() {
        let mut client = clients::connect(host.ingress_addr, &Mode::h2()).await;
        for id in ["a1", "a2", "a3"] {
            let (status, _, body) = client.get(&format!("web-{id}.localhost"), "/hello").await;
            assert_eq!(status, StatusCode::OK, "{id} through r{i}: {}", String::from_utf8_lossy(&body));
            assert_eq!(&body[..], b"hello from w1");
        }
    }
    // Requests for agents elsewhere went over the replica API.
    let (_, text) = admin(&hosts[0], "/metrics").await;
    assert!(metric(&text, "burrow_routing_duration_seconds_count{path=\"forwarded\"}") >= 2.0, "{text}");
    assert!(metric(&text, "burrow_routing_duration_seconds_count{path=\"local\"}") >= 1.0, "{text}");
    assert_eq!(metric(&text, "burrow_requests_total{outcome=\"proxied\"}"), 3.0, "{text}");
    let (_, text) = admin(&hosts[1], "/metrics").await;
    assert!(metric(&text, "burrow_forwards_served_total{result=\"ok\"}") >= 2.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_streams_behave_like_local_ones() {
    let redis = RedisServer::start();
    let hosts = replicas(&redis, 2).await;
    let workload = Workload::start("w1").await;
    let _agent = agent_on(&hosts[0], "a1", &workload).await;
    let via = hosts[1].ingress_addr;

    // WebSocket upgrade, both text and a large binary message.
    let mut ws = clients::websocket(via, HOST, "/ws").await;
    for i in 0..10 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(), format!("m{i}"));
    }
    let big = vec![9u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data().as_ref(), &big[..]);
    ws.close(None).await.unwrap();

    // A raw upgrade with half-close: EOF travels through both replicas to the workload.
    let (mut tcp, head) = clients::raw_upgrade(via, HOST).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (mut rd, mut wr) = tcp.split();
    let writer = async {
        wr.write_all(&payload).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::join!(writer, reader);
    assert_eq!(&got[..payload.len()], &payload[..]);
    assert_eq!(&got[payload.len()..], b"bye");

    // Bodies both ways, byte-exact.
    let mut client = clients::connect(via, &Mode::h1()).await;
    let size = 16 * 1024 * 1024u64;
    let (status, _, body) = client.get(HOST, &format!("/download?bytes={size}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len() as u64, size);
    assert!(body.iter().enumerate().all(|(i, b)| *b == workload::pattern_byte(i as u64)));
    let upload: Vec<u8> = (0..size).map(workload::pattern_byte).collect();
    let resp = client.request("POST", HOST, "/upload", &[], clients::full(upload.clone())).await;
    let (status, _, body) = clients::collect(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).starts_with(&format!("{size} ")));

    // Server-sent events arrive one at a time (the workload gates each on the previous).
    let resp = client.request("GET", HOST, "/sse?n=3", &[], clients::empty()).await;
    let mut body = resp.into_body();
    for i in 0..3 {
        let mut got = Vec::new();
        while !got.ends_with(b"\n\n") {
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .unwrap_or_else(|_| panic!("event {i} was held back by the forward"))
                .unwrap()
                .unwrap();
            if let Some(d) = frame.data_ref() {
                got.extend_from_slice(d);
            }
        }
        assert_eq!(String::from_utf8(got).unwrap(), format!("data: event {i}\n\n"));
        workload.release_event();
    }
    // Read to the end so the keep-alive connection can carry the next request.
    body.collect().await.unwrap();

    // The agent's refusal crosses the forward unchanged: 502 with the refusal code.
    let resp = client
        .request("GET", "nope-a1.localhost", "/", &[("accept", "application/json")], clients::empty())
        .await;
    let (status, _, body) = clients::collect(resp).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["refusal_code"], "unknown_service", "{json}");

    // A user who disconnects mid-stream closes the workload's socket across both hops.
    let before = workload.disconnects();
    let mut client = clients::connect(via, &Mode::h2()).await;
    let resp = client.request("GET", HOST, "/drip", &[], clients::empty()).await;
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    drop(client);
    eventually(Duration::from_secs(10), "the workload sees the user go away", || {
        workload.disconnects() > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_wakes_when_the_agent_connects_to_another_replica() {
    let redis = RedisServer::start();
    let mut p0 = parts("r0", &redis, "");
    p0.ingress = "stream_wait = \"20s\"".into();
    let mut p1 = parts("r1", &redis, "");
    p1.ingress = "stream_wait = \"20s\"".into();
    let hosts = [start(p0).await, start(p1).await];
    let workload = Workload::start("w1").await;

    let via = hosts[1].ingress_addr;
    let waiting = tokio::spawn(async move { clients::get(via, HOST, "/hello").await });
    // The request is parked on r1, waiting: the agent does not exist anywhere yet.
    wait_for_waits(&hosts[1], 1).await;
    assert!(!waiting.is_finished(), "answered before the agent existed");
    let _agent = agent_on(&hosts[0], "a1", &workload).await;
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(15), waiting).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (_, text) = admin(&hosts[1], "/metrics").await;
    assert_eq!(metric(&text, "burrow_agent_waits_total"), 1.0, "{text}");
    assert_eq!(metric(&text, "burrow_agent_wait_timeouts_total"), 0.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_comes_times_out_with_504() {
    let redis = RedisServer::start();
    let hosts = replicas(&redis, 2).await;
    let (status, _, _) = clients::get(hosts[1].ingress_addr, HOST, "/hello").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let (_, text) = admin(&hosts[1], "/metrics").await;
    assert_eq!(metric(&text, "burrow_agent_wait_timeouts_total"), 1.0, "{text}");
    assert_eq!(metric(&text, "burrow_requests_total{outcome=\"no_tunnel\"}"), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_drain_under_load_fails_no_request() {
    let redis = RedisServer::start();
    let mut hosts = replicas(&redis, 3).await;
    let workload = Workload::start("w1").await;
    // a1 is held by r1 and r2; users arrive at r0, which forwards.
    let _a = agent_on(&hosts[1], "a1", &workload).await;
    let _b = agent_on(&hosts[2], "a1", &workload).await;
    let via = hosts[0].ingress_addr;
    let stop = tokio_util_stop();
    let served = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (stop, served) = (stop.clone(), served.clone());
        loops.push(tokio::spawn(async move {
            let mut client = clients::connect(via, &Mode::h2()).await;
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, _, body) = client.get(HOST, "/hello").await;
                if status == StatusCode::OK {
                    ok += 1;
                    served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    failed.push(format!("{status}: {}", String::from_utf8_lossy(&body)));
                }
            }
            (ok, failed)
        }));
    }
    let count = || served.load(std::sync::atomic::Ordering::Relaxed);
    // Load is flowing through both agent replicas before the drain...
    eventually(Duration::from_secs(20), "requests flow before the drain", || count() >= 100).await;
    let draining = hosts.remove(2);
    draining.stop().await.expect("r2 drains cleanly");
    // ...and keeps flowing through the one left after it.
    let after = count();
    eventually(Duration::from_secs(20), "requests flow after the drain", || count() >= after + 100).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for l in loops {
        let (ok, failed) = l.await.unwrap();
        assert!(failed.is_empty(), "requests failed during the drain: {failed:?}");
        total += ok;
    }
    assert!(total > 20, "the load actually ran ({total} requests)");
    // r2 withdrew everything it had registered.
    let fields = redis.cli(&["HKEYS", "burrow:agent:{a1}"]);
    assert!(!fields.contains("r2") && fields.contains("r1"), "{fields}");
    assert!(!redis.cli(&["HKEYS", "burrow:replicas"]).contains("r2"));
}

/// Waits until `cond` holds on Redis, with the last answer in the failure message.
fn wait_redis(redis: &RedisServer, args: &[&str], what: &str, cond: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = redis.cli(args);
        if cond(&out) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {args:?} still answers {out:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One replica's membership without a host around it, background loops running, holding
/// agent `a1`, once Redis shows its liveness record and `a1`'s registration. Cancel the
/// token to stop the loops.
fn lone_member(
    redis: &RedisServer,
) -> (std::sync::Arc<burrow_host::cluster::Cluster>, tokio_util::sync::CancellationToken) {
    let config = cluster_config("solo", &redis.url(), "").cluster.expect("cluster table");
    let metrics = std::sync::Arc::new(burrow_host::metrics::Metrics::new());
    let cluster =
        burrow_host::cluster::Cluster::new(config, "solo".into(), "127.0.0.1:1".into(), metrics).unwrap();
    let background = tokio_util::sync::CancellationToken::new();
    let _task = cluster.start(background.clone());
    cluster.agent_up("a1");
    wait_redis(redis, &["HKEYS", "burrow:replicas"], "liveness record written", |o| o.contains("solo"));
    wait_redis(redis, &["HKEYS", "burrow:agent:{a1}"], "agent registered", |o| o.contains("solo"));
    (cluster, background)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_forced_between_leave_and_stop_does_not_resurrect_the_replica() {
    let redis = RedisServer::start();
    let (cluster, background) = lone_member(&redis);

    cluster.leave().await;
    assert!(!redis.cli(&["HKEYS", "burrow:replicas"]).contains("solo"));
    assert!(!redis.cli(&["HKEYS", "burrow:agent:{a1}"]).contains("solo"));
    // The background loops still run (the host stops them after `leave` returns, or
    // before: either order must be safe). A heartbeat now, as the loop's next tick
    // would run one, finds the liveness record gone: before the fix it wrote the record
    // back and, seeing it "created", re-registered every agent.
    cluster.heartbeat().await;
    assert!(
        !redis.cli(&["HKEYS", "burrow:replicas"]).contains("solo"),
        "the replica came back after leaving"
    );
    assert!(
        !redis.cli(&["HKEYS", "burrow:agent:{a1}"]).contains("solo"),
        "its agent came back after leaving"
    );
    background.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_during_a_drain_keeps_the_replica_marked_draining_and_unregistered() {
    let redis = RedisServer::start();
    let (cluster, background) = lone_member(&redis);

    cluster.drain().await;
    // Redis loses its data (a restart without persistence): a heartbeat then "creates"
    // the record, which makes an active replica re-register its agents; a draining one
    // must only refresh its record, still marked draining.
    redis.cli(&["FLUSHALL"]);
    cluster.heartbeat().await;
    let record = redis.cli(&["HGET", "burrow:replicas", "solo"]);
    assert!(record.contains("\"draining\":true"), "{record}");
    assert!(
        !redis.cli(&["HKEYS", "burrow:agent:{a1}"]).contains("solo"),
        "a draining replica registered an agent"
    );
    background.cancel();
}

fn tokio_util_stop() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_false_while_draining_and_in_flight_work_finishes() {
    let redis = RedisServer::start();
    let mut hosts = replicas(&redis, 1).await;
    let workload = Workload::start("w1").await;
    let _agent = agent_on(&hosts[0], "a1", &workload).await;
    let (status, body) = admin(&hosts[0], "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = admin(&hosts[0], "/healthz").await;
    assert_eq!(status, StatusCode::OK);

    // A stream in flight holds the drain open.
    let mut client = clients::connect(hosts[0].ingress_addr, &Mode::h1()).await;
    let resp = client.request("GET", HOST, "/sse?n=2", &[], clients::empty()).await;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    hosts[0].begin_stop();
    let host = &hosts[0];
    let mut ready = (StatusCode::OK, String::new());
    for _ in 0..200 {
        ready = admin(host, "/readyz").await;
        if ready.0 == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ready.0, StatusCode::SERVICE_UNAVAILABLE, "{}", ready.1);
    assert!(ready.1.contains("draining"), "{}", ready.1);
    let (_, text) = admin(host, "/metrics").await;
    assert_eq!(metric(&text, "burrow_draining"), 1.0);
    workload.release_event();
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&rest).contains("event 1"), "the stream in flight finished");
    hosts.remove(0).stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_local_traffic_and_cross_replica_traffic_recovers() {
    let mut redis = RedisServer::start();
    let hosts = replicas(&redis, 2).await;
    let workload = Workload::start("w1").await;
    let _agent = agent_on(&hosts[0], "a1", &workload).await;
    // Forwarding works before the outage. (An upgrade: a plain GET would leave a pooled
    // workload connection behind that later requests could reuse without any lookup.)
    let (_tcp, head) = clients::raw_upgrade(hosts[1].ingress_addr, HOST).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    redis.kill();
    // Local streams need no Redis.
    for _ in 0..5 {
        assert_eq!(clients::get(hosts[0].ingress_addr, HOST, "/hello").await.0, StatusCode::OK);
    }
    // Elsewhere: a clear 503 without waiting out the 3 s stream wait.
    let mut client = clients::connect(hosts[1].ingress_addr, &Mode::h1()).await;
    let resp =
        client.request("GET", HOST, "/hello", &[("accept", "application/json")], clients::empty()).await;
    let (status, _, body) = clients::collect(resp).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", String::from_utf8_lossy(&body));
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "cluster_unavailable", "{json}");
    let mut not_ready = false;
    for _ in 0..100 {
        if admin(&hosts[1], "/readyz").await.0 == StatusCode::SERVICE_UNAVAILABLE {
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(not_ready, "readiness turns false while Redis is down");

    // Redis returns empty; the replicas re-register within a heartbeat (200 ms here).
    redis.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = clients::get(hosts[1].ingress_addr, HOST, "/hello").await;
        if status == StatusCode::OK {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "cross-replica traffic did not recover: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(redis.cli(&["HKEYS", "burrow:agent:{a1}"]).contains("r0"));
    assert_eq!(admin(&hosts[1], "/readyz").await.0, StatusCode::OK);
    let (_, text) = admin(&hosts[1], "/metrics").await;
    assert!(text.contains("burrow_redis_errors_total{op="), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_stale_entries_are_ignored_and_swept() {
    let redis = RedisServer::start();
    let hosts = replicas(&redis, 2).await;
    let workload = Workload::start("w1").await;
    let _agent = agent_on(&hosts[1], "a1", &workload).await;
    // A replica that died without cleaning up: its registration of a1 is still "valid"
    // but its liveness record expired, and its address accepts nothing.
    let dead_addr = unused_addr();
    let exp = now_ms() + 300_000;
    redis.cli(&["HSET", "burrow:agent:{a1}", "ghost", &exp.to_string()]);
    redis.cli(&["SADD", "burrow:replica-agents:{ghost}", "a1", "a9"]);
    redis.cli(&["HSET", "burrow:agent:{a9}", "ghost", &exp.to_string()]);
    let record = format!(r#"{{"addr":"{dead_addr}","exp":{},"load":0}}"#, now_ms() - 1000);
    redis.cli(&["HSET", "burrow:replicas", "ghost", &record]);
    for _ in 0..5 {
        let (status, _, body) = clients::get(hosts[0].ingress_addr, HOST, "/hello").await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    eventually(Duration::from_secs(10), "the sweep removes the dead replica", || {
        !redis.cli(&["HKEYS", "burrow:replicas"]).contains("ghost")
            && !redis.cli(&["HKEYS", "burrow:agent:{a1}"]).contains("ghost")
            && !redis.cli(&["HKEYS", "burrow:agent:{a9}"]).contains("ghost")
    })
    .await;
    assert!(redis.cli(&["HKEYS", "burrow:agent:{a1}"]).contains("r1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_looking_entry_pointing_nowhere_falls_back_to_the_next_candidate() {
    let redis = RedisServer::start();
    let hosts = replicas(&redis, 2).await;
    let workload = Workload::start("w1").await;
    let _agent = agent_on(&hosts[1], "a1", &workload).await;
    // A replica killed a moment ago: its records have not expired yet, nothing listens.
    let dead_addr = unused_addr();
    let far = now_ms() + 300_000;
    // Load 0 so the least-loaded policy tries the dead one first.
    let record = format!(r#"{{"addr":"{dead_addr}","exp":{far},"load":0}}"#);
    redis.cli(&["HSET", "burrow:replicas", "zombie", &record]);
    redis.cli(&["HSET", "burrow:agent:{a1}", "zombie", &far.to_string()]);
    for _ in 0..5 {
        let (status, _, body) = clients::get(hosts[0].ingress_addr, HOST, "/hello").await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    // The dead entry was tried (first: load 0) and failed; the live one served (later
    // requests reuse the pooled connection it opened).
    let (_, text) = admin(&hosts[0], "/metrics").await;
    assert!(metric(&text, "burrow_forward_attempts_total{result=\"failed\"}") >= 1.0, "{text}");
    assert!(metric(&text, "burrow_forward_attempts_total{result=\"ok\"}") >= 1.0, "{text}");
}

async fn control_attempt(url: &str, token: &str) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.replace("grpc://", "http://"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AgentTunnelClient::new(channel);
    let hello = pb::AgentControl {
        msg: Some(agent_control::Msg::Hello(pb::Hello {
            protocol_version: burrow_proto::PROTOCOL_VERSION,
            protocol_minor: 0,
            agent_version: "test".into(),
            replica_id: "raw".into(),
            services: vec![],
        })),
    };
    let mut request =
        tonic::Request::new(futures_util::stream::iter([hello]).chain(futures_util::stream::pending()));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let response = client.control(request).await?;
    let mut stream = response.into_inner();
    stream.message().await?.expect("Welcome");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_rate_limit_is_shared_by_all_replicas() {
    let redis = RedisServer::start();
    let mut hosts = Vec::new();
    for i in 0..2 {
        let mut p = parts(&format!("r{i}"), &redis, "");
        p.agents = "connect_rate_limit = 3".into();
        hosts.push(start(p).await);
    }
    let token = agent_token_of("a1");
    // The limit counts per wall-clock minute: do not start a second before one ends.
    let into_minute = now_ms() % 60_000;
    if into_minute > 55_000 {
        tokio::time::sleep(Duration::from_millis(60_500 - into_minute)).await;
    }
    control_attempt(&hosts[0].agent_url("grpc"), &token).await.unwrap();
    control_attempt(&hosts[1].agent_url("grpc"), &token).await.unwrap();
    control_attempt(&hosts[0].agent_url("grpc"), &token).await.unwrap();
    let err = control_attempt(&hosts[1].agent_url("grpc"), &token).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("3 per minute"), "{}", err.message());
    let retry: u64 =
        err.metadata().get(burrow_proto::RETRY_AFTER_METADATA).unwrap().to_str().unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 60_000, "{retry}");
    // Another token has its own budget.
    control_attempt(&hosts[1].agent_url("grpc"), &agent_token_of("a2")).await.unwrap();
    let (_, text) = admin(&hosts[1], "/metrics").await;
    assert_eq!(metric(&text, "burrow_agent_connections_total{result=\"rate_limited\"}"), 1.0, "{text}");
}

fn mode_parts(replica: &str, mode_toml: &str) -> ConfigParts {
    let mut p = cluster_parts(replica, "redis://unused:1", "");
    p.authorizer = agents_authorizer(&["a1", "a2", "a3"]);
    // Replace the single-server table with the mode's own.
    let start = p.extra.find("[cluster.redis]").unwrap();
    p.extra.truncate(start);
    p.extra.push_str(&format!("[cluster.redis]\ntimeout = \"1s\"\n{mode_toml}\n"));
    p
}

async fn reach_across(hosts: &[TestHost], workload: &Workload) {
    // A waiting request on r1 is woken through pub/sub when a1 connects to r0.
    let via = hosts[1].ingress_addr;
    let waiting = tokio::spawn(async move { clients::get(via, HOST, "/hello").await });
    wait_for_waits(&hosts[1], 1).await;
    let _agent = agent_on(&hosts[0], "a1", workload).await;
    let (status, _, body) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    for host in hosts {
        assert_eq!(clients::get(host.ingress_addr, HOST, "/hello").await.0, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_through_redis_sentinel() {
    let master = RedisServer::start();
    let sentinel = burrow_tests::redis::RedisSentinel::start(master.port());
    let mode = format!(
        "mode = \"sentinel\"\nurls = [\"{}\"]\nmaster_name = \"{}\"",
        sentinel.url(),
        burrow_tests::redis::RedisSentinel::MASTER_NAME
    );
    let hosts = [start(mode_parts("r0", &mode)).await, start(mode_parts("r1", &mode)).await];
    let workload = Workload::start("w1").await;
    reach_across(&hosts, &workload).await;
    // The registry really is on the master the sentinel named.
    assert!(master.cli(&["HKEYS", "burrow:agent:{a1}"]).contains("r0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_redis_cluster() {
    let cluster = burrow_tests::redis::RedisCluster::start(3);
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let mode = format!("mode = \"cluster\"\nurls = [{}]", urls.join(", "));
    let hosts = [start(mode_parts("r0", &mode)).await, start(mode_parts("r1", &mode)).await];
    let workload = Workload::start("w1").await;
    reach_across(&hosts, &workload).await;
    assert!(cluster.cli(&["HKEYS", "burrow:agent:{a1}"]).contains("r0"));
    // The rate-limit script and per-agent keys stayed in one slot each (no CROSSSLOT errors).
    let (_, text) = admin(&hosts[0], "/metrics").await;
    assert!(!text.contains("burrow_redis_errors_total{op=\"register\"}"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_tunnels_are_released_on_the_agent() {
    let redis = RedisServer::start();
    let mut p1 = parts("r1", &redis, "");
    // A fresh tunnel per request, so every request opens and closes one forward.
    p1.ingress = "stream_wait = \"5s\"\nmax_idle_per_workload = 0".into();
    let hosts = [start(parts("r0", &redis, "")).await, start(p1).await];
    let workload = Workload::start("w1").await;
    let agent = agent_on(&hosts[0], "a1", &workload).await;
    let mut client = clients::connect(hosts[1].ingress_addr, &Mode::h1()).await;
    for _ in 0..30 {
        assert_eq!(client.get(HOST, "/hello").await.0, StatusCode::OK);
    }
    for _ in 0..5 {
        let (tcp, head) = clients::raw_upgrade(hosts[1].ingress_addr, HOST).await;
        assert!(head.starts_with("HTTP/1.1 101"));
        drop(tcp); // the user vanishes without closing anything
    }
    drop(client);
    eventually(Duration::from_secs(10), "the agent has no stream left in use", || {
        agent.status().borrow().active_streams == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_replica_keeps_its_registration() {
    let redis = RedisServer::start();
    let hosts = replicas(&redis, 2).await;
    let workload = Workload::start("w1").await;
    let mut config =
        agent_config(&hosts[0].agent_url("grpc"), &agent_token_of("a1"), &[workload.service("web")]);
    config.connections = 1;
    config.min_idle = 1;
    config.max_streams = 1;
    let agent = burrow_agent::spawn(config);
    wait_connected(&agent).await;
    // The agent's only stream is busy with a long response through r1.
    let mut long = clients::connect(hosts[1].ingress_addr, &Mode::h1()).await;
    let resp = long.request("GET", HOST, "/sse?n=2", &[], clients::empty()).await;
    let mut sse = resp.into_body();
    sse.frame().await.unwrap().unwrap();
    // Another request through r1 finds r0 busy: it waits and times out (3 s here)...
    let (status, _, _) = clients::get(hosts[1].ingress_addr, HOST, "/hello").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    // ...but r0 is still registered: busy is not gone.
    assert!(redis.cli(&["HKEYS", "burrow:agent:{a1}"]).contains("r0"));
    // The user leaves, and the agent's stream is freed by that alone (r1 resets the
    // forward, r0 the tunnel) before the workload may finish: released earlier, a loaded
    // machine can let the whole response reach r1 before it notices the user left, and r1
    // then keeps the finished connection (and the agent's only stream) in its pool.
    drop(sse);
    drop(long);
    eventually(Duration::from_secs(10), "the stream is free again", || {
        agent.status().borrow().active_streams == 0
    })
    .await;
    workload.release_event();
    assert_eq!(clients::get(hosts[1].ingress_addr, HOST, "/hello").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_labels_decide_the_same_on_every_replica() {
    let redis = RedisServer::start();
    // a1 connects with labels, a2 without; a label rule lets alice (and only alice) reach
    // agents of team infra, and nothing else is open.
    let authorizer = format!(
        "source = \"builtin:authorizer-static\"\nconfig = {{ default_access = \"deny\", \
         agents = [{{ id = \"a1\", token_sha256 = \"{}\", labels = {{ team = \"infra\" }} }}, \
                   {{ id = \"a2\", token_sha256 = \"{}\" }}], \
         users = [{{ name = \"alice\", token_sha256 = \"{}\" }}, {{ name = \"bob\", token_sha256 = \"{}\" }}], \
         workloads = [{{ agent = \"*\", labels = {{ team = \"infra\" }}, service = \"*\", access = \"token\", users = [\"alice\"] }}] }}",
        sha256_hex(&agent_token_of("a1")),
        sha256_hex(&agent_token_of("a2")),
        sha256_hex(ALICE_TOKEN),
        sha256_hex(BOB_TOKEN),
    );
    let mut hosts = Vec::new();
    for replica in ["r0", "r1"] {
        let mut p = cluster_parts(replica, &redis.url(), "");
        p.authorizer = authorizer.clone();
        hosts.push(start(p).await);
    }
    let workload = Workload::start("w1").await;
    let _a1 = agent_on(&hosts[0], "a1", &workload).await;
    let _a2 = agent_on(&hosts[0], "a2", &workload).await;
    let cases = [
        ("web-a1.localhost", ALICE_TOKEN, StatusCode::OK),
        ("web-a1.localhost", BOB_TOKEN, StatusCode::FORBIDDEN),
        ("web-a2.localhost", ALICE_TOKEN, StatusCode::FORBIDDEN),
    ];
    // r0 holds the agents; r1 knows a1's labels only through the registry.
    for (i, host) in hosts.iter().enumerate() {
        let mut client = clients::connect(host.ingress_addr, &Mode::h1()).await;
        for (name, token, expected) in cases {
            let bearer = format!("Bearer {token}");
            let response =
                client.request("GET", name, "/hello", &[("authorization", &bearer)], clients::empty()).await;
            assert_eq!(response.status(), expected, "{name} for {token} through r{i}");
        }
    }
    // The allowed request through r1 really went over the replica API to r0.
    let (_, text) = admin(&hosts[0], "/metrics").await;
    assert_eq!(metric(&text, "burrow_forwards_served_total{result=\"ok\"}"), 1.0, "{text}");
}
