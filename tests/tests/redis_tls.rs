//! Cluster mode over `rediss://`: replicas share their state through a TLS-only
//! `redis-server` whose certificate comes from a private CA (`[cluster.redis] ca_file`), and
//! `check-config` blames the TLS keys by line. The store's own TLS tests (sentinel, cluster,
//! client certificates, refused CAs) are in `host/redis/tests/rediss.rs`.

use burrow_host::check::{check_config_file, CheckConfigError};
use burrow_tests::redis::{RedisServer, TlsFiles};
use burrow_tests::workload::Workload;
use burrow_tests::*;
use http::StatusCode;

/// Replica `replica` of a cluster on the TLS server `redis`, trusting `ca_file`.
fn rediss_parts(replica: &str, redis: &RedisServer, ca_file: &std::path::Path) -> ConfigParts {
    let mut parts = cluster_parts(replica, &redis.url(), "");
    // `[cluster.redis]` is the last table of the cluster parts.
    parts.extra.push_str(&format!("ca_file = {:?}\n", ca_file.display().to_string()));
    parts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_state_over_rediss_with_a_private_ca() {
    let tls = TlsFiles::generate();
    let redis = RedisServer::start_tls(&tls);
    assert!(redis.url().starts_with("rediss://"), "{}", redis.url());
    let mut hosts = Vec::new();
    for replica in ["r0", "r1"] {
        let host = TestHost::start(rediss_parts(replica, &redis, &tls.ca_cert).build()).await;
        // Ready means the first heartbeat reached Redis, over TLS.
        host.wait_ready().await;
        hosts.push(host);
    }
    let workload = Workload::start("w1").await;
    let agent =
        burrow_agent::spawn(agent_config(&hosts[0].agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;
    // r1 finds the agent's replica in Redis and forwards.
    let (status, _, body) = clients::get(hosts[1].ingress_addr, "web-a1.localhost", "/hello").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], b"hello from w1");
    assert!(redis.cli(&["HKEYS", "burrow:agent:{a1}"]).contains("r0"));
}

#[tokio::test]
async fn rediss_check_config_blames_the_tls_keys() {
    let tls = TlsFiles::generate();
    let dir = tls.dir.clone();
    let check = |name: &str, redis_table: String| {
        let path = dir.join(name);
        let parts = cluster_parts("r0", "rediss://127.0.0.1:6380", "");
        std::fs::write(&path, format!("{}{redis_table}", parts.to_toml())).unwrap();
        path
    };

    let missing = dir.join("missing-ca.pem");
    let path = check("missing.toml", format!("ca_file = {:?}\n", missing.display().to_string()));
    match check_config_file(&path).await {
        Err(CheckConfigError::Refused { key, line, message, .. }) => {
            assert_eq!(key, "cluster.redis.ca_file", "{message}");
            assert!(line.is_some(), "no line for {key}");
            assert!(message.contains("cannot read") && message.contains("missing-ca.pem"), "{message}");
        }
        other => panic!("a missing ca_file was not refused: {other:?}"),
    }

    let path = check("half.toml", format!("client_cert = {:?}\n", tls.cert.display().to_string()));
    match check_config_file(&path).await {
        Err(CheckConfigError::Refused { key, message, .. }) => {
            assert_eq!(key, "cluster.redis.client_key", "{message}");
        }
        other => panic!("client_cert without client_key was not refused: {other:?}"),
    }
}
