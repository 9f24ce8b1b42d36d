//! Cluster crash tests: host replicas as real processes, one SIGKILLed mid-traffic.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use burrow_tests::clients::{self, Mode};
use burrow_tests::process::ReplicaProcess;
use burrow_tests::redis::RedisServer;
use burrow_tests::workload::Workload;
use burrow_tests::*;
use http::StatusCode;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_burrow-replica");

fn parts(replica: &str, redis: &RedisServer) -> ConfigParts {
    let mut p = cluster_parts(replica, &redis.url(), "");
    p.authorizer = agents_authorizer(&["a1", "a2"]);
    p
}

async fn wait_ready(r: &ReplicaProcess) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), async {
            let tcp = tokio::net::TcpStream::connect(r.admin_addr).await?;
            drop(tcp);
            Ok::<_, std::io::Error>(clients::get(r.admin_addr, "localhost", "/readyz").await.0)
        })
        .await
        {
            if s == StatusCode::OK {
                return;
            }
        }
        assert!(Instant::now() < deadline, "replica never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_replicas(
    agent: &burrow_agent::AgentHandle,
    what: &str,
    f: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let mut status = agent.status();
    let r = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let replicas = status.borrow_and_update().connected_replicas();
            if f(&replicas) {
                return replicas;
            }
            status.changed().await.unwrap();
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("agent never reached: {what}; status {:?}", *agent.status().borrow()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_costs_no_new_request_and_no_stream_through_others() {
    let redis = RedisServer::start();
    let mut reps: Vec<ReplicaProcess> =
        (0..3).map(|i| ReplicaProcess::start(BIN, &parts(&format!("r{i}"), &redis))).collect();
    for r in &reps {
        wait_ready(r).await;
    }
    let workload = Workload::start("w1").await;

    // a1 keeps k=2 connections, initially to r1 and r2 (its list also names r0).
    let mut config = agent_config(&reps[1].agent_url(), &agent_token_of("a1"), &[workload.service("web")]);
    config = config.with_host(&reps[2].agent_url()).unwrap().with_host(&reps[0].agent_url()).unwrap();
    config.connections = 2;
    let a1 = burrow_agent::spawn(config);
    let before = wait_replicas(&a1, "two distinct replicas", |r| r.len() == 2).await;
    assert!(before.contains(&"r1".to_owned()) && before.contains(&"r2".to_owned()), "{before:?}");

    // a2 lives on r1 only; a user streams from it through r0 across the whole crash.
    let mut config = agent_config(&reps[1].agent_url(), &agent_token_of("a2"), &[workload.service("web")]);
    config.connections = 1;
    let a2 = burrow_agent::spawn(config);
    wait_connected(&a2).await;
    let mut sse_client = clients::connect(reps[0].ingress_addr, &Mode::h1()).await;
    let resp = sse_client.request("GET", "web-a2.localhost", "/sse?n=2", &[], clients::empty()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut sse = resp.into_body();
    let first = next_event(&mut sse).await;
    assert_eq!(first, "data: event 0\n\n");

    // Steady traffic for a1 through r0 (which forwards to r1 or r2).
    let stop = Arc::new(AtomicBool::new(false));
    // Requests answered so far, all loops: the test waits on it rather than on the clock.
    let answered = Arc::new(AtomicUsize::new(0));
    let via = reps[0].ingress_addr;
    let mut loops = Vec::new();
    for _ in 0..3 {
        let (stop, answered) = (stop.clone(), answered.clone());
        loops.push(tokio::spawn(async move {
            let mut client = clients::connect(via, &Mode::h2()).await;
            let mut results = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (status, _, body) = client.get("web-a1.localhost", "/hello").await;
                results.push((started, status, String::from_utf8_lossy(&body).into_owned()));
                answered.fetch_add(1, Ordering::SeqCst);
            }
            results
        }));
    }
    let answered_at_least = |n: usize| {
        let answered = answered.clone();
        move || answered.load(Ordering::SeqCst) >= n
    };
    eventually(Duration::from_secs(20), "traffic before the crash", answered_at_least(10)).await;
    reps[2].kill();
    let killed_at = Instant::now();
    // At most one request per loop straddles the kill: 3 + 11 more answers mean at least
    // 11 requests started after it.
    let at_kill = answered.load(Ordering::SeqCst);
    eventually(Duration::from_secs(20), "traffic after the crash", answered_at_least(at_kill + 14)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut after, mut total) = (0, 0);
    for l in loops {
        for (started, status, body) in l.await.unwrap() {
            total += 1;
            if started >= killed_at {
                after += 1;
                assert_eq!(status, StatusCode::OK, "a request started after the crash failed: {body}");
            }
        }
    }
    assert!(after > 10 && total > after, "traffic ran before and after the crash ({total} / {after})");

    // The stream through r0 and r1 never noticed.
    workload.release_event();
    assert_eq!(next_event(&mut sse).await, "data: event 1\n\n");

    // a1's lost connection found another replica.
    let now =
        wait_replicas(&a1, "two distinct live replicas", |r| r.len() == 2 && !r.contains(&"r2".to_owned()))
            .await;
    assert!(now.contains(&"r0".to_owned()) && now.contains(&"r1".to_owned()), "{now:?}");
    // And a request through r1 reaches it too.
    assert_eq!(clients::get(reps[1].ingress_addr, "web-a1.localhost", "/hello").await.0, StatusCode::OK);
}

async fn next_event(body: &mut hyper::body::Incoming) -> String {
    use http_body_util::BodyExt;
    let mut got = Vec::new();
    while !got.ends_with(b"\n\n") {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("event within 10 s")
            .expect("stream open")
            .expect("frame");
        if let Some(d) = frame.data_ref() {
            got.extend_from_slice(d);
        }
    }
    String::from_utf8(got).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_k_2_holds_two_distinct_replicas_and_redis_agrees() {
    let redis = RedisServer::start();
    let reps: Vec<ReplicaProcess> =
        (0..3).map(|i| ReplicaProcess::start(BIN, &parts(&format!("r{i}"), &redis))).collect();
    for r in &reps {
        wait_ready(r).await;
    }
    let workload = Workload::start("w1").await;
    let mut config = agent_config(&reps[0].agent_url(), &agent_token_of("a1"), &[workload.service("web")]);
    for r in &reps[1..] {
        config = config.with_host(&r.agent_url()).unwrap();
    }
    config.connections = 2;
    let a1 = burrow_agent::spawn(config);
    let held = wait_replicas(&a1, "two distinct replicas", |r| r.len() == 2).await;
    eventually(Duration::from_secs(10), "Redis lists both replicas for a1", || {
        let fields = redis.cli(&["HKEYS", "burrow:agent:{a1}"]);
        held.iter().all(|r| fields.contains(r.as_str())) && fields.lines().count() == 2
    })
    .await;
    for r in &reps {
        assert_eq!(clients::get(r.ingress_addr, "web-a1.localhost", "/hello").await.0, StatusCode::OK);
    }
}
