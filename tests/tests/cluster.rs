//! Cluster mode on a real `redis-server`: several host replicas in one process, agents
//! spread across them, requests landing anywhere.

use std::time::Duration;

use burrow_tests::clients;
use burrow_tests::redis::RedisServer;
use burrow_tests::workload::Workload;
use burrow_tests::*;
use http::StatusCode;

const HOST: &str = "web-a1.localhost";

async fn replicas(redis: &RedisServer, n: usize) -> Vec<TestHost> {
    let mut hosts = Vec::new();
    for i in 0..n {
        hosts.push(TestHost::start(cluster_config(&format!("r{i}"), &redis.url(), "")).await);
    }
    hosts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_reaches_an_agent_connected_to_one() {
    let redis = RedisServer::start();
    let hosts = replicas(&redis, 3).await;
    let workload = Workload::start("w1").await;
    let agent =
        burrow_agent::spawn(agent_config(&hosts[0].agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;
    for (i, host) in hosts.iter().enumerate() {
        let (status, _, body) = clients::get(host.ingress_addr, HOST, "/hello").await;
        assert_eq!(status, StatusCode::OK, "through replica r{i}: {}", String::from_utf8_lossy(&body));
        assert_eq!(&body[..], b"hello from w1");
    }
    let _ = Duration::ZERO;
}
