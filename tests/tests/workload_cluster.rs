//! The workload lifecycle across two replicas on a real `redis-server`: records and
//! revocation are shared, a terminate on one replica closes user connections on both.
//! `cargo test workload` / `cargo test revok` run these with the single-host ones.

use std::time::Duration;

use burrow_host::control_api::client::ControlClient;
use burrow_proto::control_pb as pb;
use burrow_tests::lifecycle::{
    client, control_table, create, echo, refusal, terminate, users_only, wait_closed, wait_workload,
    websocket_as_alice, workspace, Dir,
};
use burrow_tests::workload::Workload;
use burrow_tests::{agent_config, cluster_parts, wait_connected, TestHost};

struct Cluster {
    hosts: Vec<TestHost>,
    controls: Vec<ControlClient>,
    web: Workload,
    _redis: burrow_tests::redis::RedisServer,
    _dir: Dir,
}

impl Cluster {
    async fn start() -> Cluster {
        let redis = burrow_tests::redis::RedisServer::start();
        let dir = Dir::new("workload-cluster");
        // Every replica holds the same signing key: the first host's key file is made
        // here, before either starts (in a cluster the host never creates it).
        let key = burrow_host::workloads::token::generate_pkcs8().unwrap();
        std::fs::write(dir.path().join("agent-token.key"), key).unwrap();
        let mut hosts = Vec::new();
        let mut controls = Vec::new();
        for replica in ["r0", "r1"] {
            let mut parts = cluster_parts(replica, &redis.url(), "");
            parts.authorizer = users_only();
            parts.extra.push_str(&control_table(dir.path(), ""));
            let host = TestHost::start(parts.build()).await;
            host.wait_ready().await;
            controls.push(client(&host).await);
            hosts.push(host);
        }
        let web = Workload::start("ws").await;
        Cluster { hosts, controls, web, _redis: redis, _dir: dir }
    }

    /// An agent for the workload, connected to r0 only.
    async fn agent_on_r0(&self, token: &str) -> burrow_agent::AgentHandle {
        let mut config =
            agent_config(&self.hosts[0].agent_url("grpc"), token, &[format!("web={}", self.web.addr)]);
        config.connections = 1;
        let agent = burrow_agent::spawn(config);
        wait_connected(&agent).await;
        agent
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_created_on_one_replica_is_served_and_listed_by_both() {
    let mut c = Cluster::start().await;
    let token = create(&mut c.controls[1], workspace("ws-c1")).await;
    let _agent = c.agent_on_r0(&token.token).await;
    for control in &mut c.controls {
        wait_workload(control, "ws-c1", "held by r0", |w| {
            w.state == pb::WorkloadState::Connected as i32
                && w.connections.iter().any(|c| c.replica_id == "r0")
        })
        .await;
    }
    // A user landing on r1 reaches the agent on r0, and r1's authorizer sees the same
    // owner as r0's.
    for host in &c.hosts {
        let mut ws = websocket_as_alice(host.ingress_addr, "web-ws-c1.localhost").await;
        echo(&mut ws).await;
        ws.close(None).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_on_one_replica_closes_websockets_on_both_and_the_token_is_refused_on_both() {
    let mut c = Cluster::start().await;
    let token = create(&mut c.controls[0], workspace("ws-c2")).await;
    let _agent = c.agent_on_r0(&token.token).await;
    // One WebSocket through each replica: r0 holds the agent, r1 forwards to it.
    let mut local = websocket_as_alice(c.hosts[0].ingress_addr, "web-ws-c2.localhost").await;
    echo(&mut local).await;
    let mut forwarded = websocket_as_alice(c.hosts[1].ingress_addr, "web-ws-c2.localhost").await;
    echo(&mut forwarded).await;

    // Terminated through r1, which holds no agent session: the news reaches r0 on the
    // cluster channel.
    let since = tokio::time::Instant::now();
    terminate(&mut c.controls[1], "ws-c2", "done").await;
    let (a, b) = tokio::join!(wait_closed(&mut local, since), wait_closed(&mut forwarded, since));
    assert!(a < Duration::from_secs(1), "the WebSocket through r0 closed after {a:?}");
    assert!(b < Duration::from_secs(1), "the WebSocket through r1 closed after {b:?}");

    for host in &c.hosts {
        let (fin, _, message) = refusal(host.agent_addr, &token.token).await;
        assert_eq!(fin.as_deref(), Some(burrow_proto::FINAL_WORKLOAD_TERMINATED), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_by_expiry_a_token_is_refused_on_every_replica() {
    let mut c = Cluster::start().await;
    let mut request = workspace("ws-c3");
    request.token_ttl_s = 1;
    let token = create(&mut c.controls[0], request).await;
    let now = burrow_host::time::now_ms();
    tokio::time::sleep(Duration::from_millis(token.expires_at_ms.saturating_sub(now) + 50)).await;
    for host in &c.hosts {
        let (fin, code, _) = refusal(host.agent_addr, &token.token).await;
        assert_eq!(fin.as_deref(), Some(burrow_proto::FINAL_TOKEN_EXPIRED));
        assert_eq!(code, tonic::Code::Unauthenticated);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_item_enqueued_through_one_replica_reaches_the_agent_held_by_the_other() {
    let mut c = Cluster::start().await;
    let token = create(&mut c.controls[0], workspace("ws-c4")).await;
    let out = c._dir.path().join("applied");
    let mut config =
        agent_config(&c.hosts[0].agent_url("grpc"), &token.token, &[format!("web={}", c.web.addr)]);
    config.connections = 1;
    config.work_hook =
        Some(burrow_agent::WorkHook::new("/bin/sh").arg("-c").arg(format!("cat > {}", out.display())));
    let agent = burrow_agent::spawn(config);
    wait_connected(&agent).await;

    // Queued on r1, which holds no session of the agent; its long poll is on r0.
    let request =
        c.controls[1].request(pb::EnqueueWorkRequest { id: "ws-c4".into(), payload: b"v2".to_vec() });
    let item = c.controls[1].api().enqueue_work(request).await.unwrap().into_inner().item_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let done = loop {
        let request = c.controls[0].request(pb::ListWorkRequest { id: "ws-c4".into() });
        let items = c.controls[0].api().list_work(request).await.unwrap().into_inner().items;
        if let Some(i) =
            items.iter().find(|i| i.item_id == item && i.state == pb::WorkState::Succeeded as i32)
        {
            break i.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "the item never succeeded: {items:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done.deliveries, 1);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "v2");
}
