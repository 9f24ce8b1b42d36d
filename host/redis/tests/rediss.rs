//! `rediss://`: the store over TLS against real TLS-only `redis-server`s (single, Sentinel,
//! Cluster), with a private CA in `ca_file` and client certificates; and the checks
//! `validate()` (what `check-config` runs) makes on the TLS keys.

use std::path::PathBuf;
use std::time::Duration;

use burrow_host_redis::{RedisConfig, RedisMode, Store, StoreError};
use burrow_test_redis::{RedisCluster, RedisSentinel, RedisServer, TlsFiles};

/// False (after saying so) when redis-server is not installed outside CI.
fn redis_available() -> bool {
    let found = burrow_test_redis::available();
    if !found {
        eprintln!("SKIPPED: redis-server is not installed; install it to run this test");
    }
    found
}

fn tls_config(urls: Vec<String>, ca_file: &TlsFiles) -> RedisConfig {
    RedisConfig {
        urls,
        ca_file: Some(ca_file.ca_cert.clone()),
        timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

fn store(config: RedisConfig) -> Store {
    config.validate().unwrap_or_else(|e| panic!("{e}: {config:?}"));
    Store::new(config)
}

/// Reads and writes through `store`: plugin kv and an agent registration.
async fn round_trip(store: &Store) {
    store.ping().await.unwrap();
    store.kv_set("plugin", "k", b"over tls", None).await.unwrap();
    assert_eq!(store.kv_get("plugin", "k").await.unwrap().as_deref(), Some(&b"over tls"[..]));
    let labels: burrow_host_redis::AgentLabels = vec![("team".to_string(), "infra".to_string())].into();
    let agents = vec![("a1".to_string(), labels.clone()), ("a2".to_string(), labels.clone())];
    assert_eq!(store.register("r0", &agents, Duration::from_secs(60)).await.unwrap(), 2);
    assert!(store.lookup("a2").await.unwrap().contains_key("r0"));
    assert_eq!(store.agent_labels("a2").await.unwrap(), Some(labels));
}

fn redis_error(result: Result<(), StoreError>) -> String {
    match result {
        Err(StoreError::Redis(message)) => message,
        other => panic!("expected a Redis error, got {other:?}"),
    }
}

#[tokio::test]
async fn rediss_with_a_private_ca_in_ca_file_works() {
    if !redis_available() {
        return;
    }
    let tls = TlsFiles::generate();
    let server = RedisServer::start_tls(&tls);
    assert!(server.url().starts_with("rediss://"), "{}", server.url());
    let store = store(tls_config(vec![server.url()], &tls));
    round_trip(&store).await;
    assert_eq!(server.cli(&["GET", "burrow:plugin-kv:{plugin}:k"]).trim(), "over tls");

    // Pub/sub (the agent-online channel) takes the same TLS settings.
    let client = store.pubsub_client().await.unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("ch").await.unwrap();
}

#[tokio::test]
async fn rediss_refuses_a_server_certificate_from_another_ca() {
    if !redis_available() {
        return;
    }
    let tls = TlsFiles::generate();
    let other = TlsFiles::generate();
    let server = RedisServer::start_tls(&tls);

    let message = redis_error(store(tls_config(vec![server.url()], &other)).ping().await);
    assert!(message.contains("invalid peer certificate") && message.contains("UnknownIssuer"), "{message}");

    // Without ca_file only the public roots are trusted: a private CA is refused too.
    let config = RedisConfig { ca_file: None, ..tls_config(vec![server.url()], &tls) };
    let message = redis_error(store(config).ping().await);
    assert!(message.contains("UnknownIssuer"), "{message}");
}

#[tokio::test]
async fn rediss_presents_client_certificates_to_a_server_that_asks() {
    if !redis_available() {
        return;
    }
    let tls = TlsFiles::generate();
    let server = RedisServer::start_tls_with(&tls, &["--tls-auth-clients", "yes"]);

    let with_cert = RedisConfig {
        client_cert: Some(tls.cert.clone()),
        client_key: Some(tls.key.clone()),
        ..tls_config(vec![server.url()], &tls)
    };
    round_trip(&store(with_cert)).await;

    let without = store(tls_config(vec![server.url()], &tls)).ping().await;
    assert!(without.is_err(), "the server asks for a client certificate, none was sent: {without:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_through_sentinel_reaches_the_master_over_tls() {
    if !redis_available() {
        return;
    }
    let tls = TlsFiles::generate();
    let master = RedisServer::start_tls(&tls);
    let sentinel = RedisSentinel::start_tls(master.port(), &tls);
    assert!(sentinel.url().starts_with("rediss://"), "{}", sentinel.url());
    let config = RedisConfig {
        mode: RedisMode::Sentinel,
        master_name: Some(RedisSentinel::MASTER_NAME.into()),
        ..tls_config(vec![sentinel.url()], &tls)
    };
    let store = store(config);
    round_trip(&store).await;
    assert_eq!(master.cli(&["GET", "burrow:plugin-kv:{plugin}:k"]).trim(), "over tls");
    store.pubsub_client().await.unwrap().get_multiplexed_async_connection().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_on_a_redis_cluster_reaches_every_node_over_tls() {
    if !redis_available() {
        return;
    }
    let tls = TlsFiles::generate();
    let cluster = RedisCluster::start_tls(3, &tls);
    let config = RedisConfig { mode: RedisMode::Cluster, ..tls_config(cluster.urls(), &tls) };
    let store = store(config);
    round_trip(&store).await;
    // Enough keys that every node holds some: each was reached over TLS.
    for i in 0..30 {
        store.kv_set("plugin", &format!("k{i}"), b"v", None).await.unwrap();
    }
    for node in &cluster.nodes {
        let keys: usize = node.cli(&["DBSIZE"]).trim().parse().unwrap();
        assert!(keys > 0, "node {} holds no key", node.port());
    }
    store.pubsub_client().await.unwrap().get_multiplexed_async_connection().await.unwrap();
}

/// The `cluster.redis.*` key an error names, checked along with the error itself.
fn refused(config: RedisConfig, key: &str, wanted: &str) {
    let err = config.validate().expect_err(&format!("accepted {config:?}"));
    assert!(err.starts_with(&format!("cluster.redis.{key}:")), "{err} (wanted the key {key})");
    assert!(err.contains(wanted), "{err} (wanted {wanted:?})");
}

#[test]
fn rediss_config_errors_name_the_key() {
    let tls = TlsFiles::generate();
    let url = vec!["rediss://127.0.0.1:6380".to_string()];
    let valid = || tls_config(url.clone(), &tls);
    valid().validate().unwrap();
    RedisConfig { client_cert: Some(tls.cert.clone()), client_key: Some(tls.key.clone()), ..valid() }
        .validate()
        .unwrap();
    // No ca_file at all is fine: the public roots.
    RedisConfig { ca_file: None, ..valid() }.validate().unwrap();

    let missing = tls.dir.join("missing.pem");
    refused(RedisConfig { ca_file: Some(missing.clone()), ..valid() }, "ca_file", "cannot read");
    refused(RedisConfig { ca_file: Some(tls.key.clone()), ..valid() }, "ca_file", "no CERTIFICATE");
    let garbage: PathBuf = tls.dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
        .unwrap();
    refused(RedisConfig { ca_file: Some(garbage), ..valid() }, "ca_file", "bad PEM");

    // TLS keys with plain redis:// URLs would be silently ignored: refused.
    let plain = vec!["redis://127.0.0.1:6379".to_string()];
    refused(tls_config(plain.clone(), &tls), "ca_file", "rediss://");
    refused(
        RedisConfig { urls: plain, client_cert: Some(tls.cert.clone()), ..Default::default() },
        "client_cert",
        "rediss://",
    );

    refused(RedisConfig { client_cert: Some(tls.cert.clone()), ..valid() }, "client_key", "required");
    refused(RedisConfig { client_key: Some(tls.key.clone()), ..valid() }, "client_cert", "required");
    refused(
        RedisConfig { client_cert: Some(tls.cert.clone()), client_key: Some(missing), ..valid() },
        "client_key",
        "cannot read",
    );
    refused(
        RedisConfig { client_cert: Some(tls.cert.clone()), client_key: Some(tls.cert.clone()), ..valid() },
        "client_key",
        "no PEM private key",
    );
    let other = TlsFiles::generate();
    refused(
        RedisConfig { client_cert: Some(tls.cert.clone()), client_key: Some(other.key.clone()), ..valid() },
        "client_key",
        "does not fit",
    );

    refused(
        RedisConfig { urls: vec!["rediss://127.0.0.1:6380/#insecure".into()], ..valid() },
        "urls",
        "#insecure",
    );
    let mixed = vec!["rediss://127.0.0.1:7000".to_string(), "redis://127.0.0.1:7001".to_string()];
    refused(RedisConfig { mode: RedisMode::Cluster, urls: mixed.clone(), ..valid() }, "urls", "same scheme");
    refused(
        RedisConfig { mode: RedisMode::Sentinel, master_name: Some("m".into()), urls: mixed, ..valid() },
        "urls",
        "same scheme",
    );
    refused(
        RedisConfig {
            mode: RedisMode::Sentinel,
            master_name: Some("m".into()),
            urls: vec!["rediss://:a@127.0.0.1:26379".into(), "rediss://:b@127.0.0.1:26380".into()],
            ..valid()
        },
        "urls",
        "same user and password",
    );
}

#[test]
fn rediss_tls_keys_come_from_toml() {
    let tls = TlsFiles::generate();
    let text = format!(
        "urls = [\"rediss://127.0.0.1:6380\"]\nca_file = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
        tls.ca_cert, tls.cert, tls.key
    );
    let config: RedisConfig = toml::from_str(&text).unwrap();
    assert_eq!(config.ca_file.as_ref(), Some(&tls.ca_cert));
    assert_eq!(config.client_key.as_ref(), Some(&tls.key));
    config.validate().unwrap();
    let certs = config.tls_certificates().unwrap().expect("certificates");
    assert!(certs.root_cert.is_some() && certs.client_tls.is_some());
    let err = toml::from_str::<RedisConfig>("ca_cert = \"/x.pem\"\n").unwrap_err().to_string();
    assert!(err.contains("unknown field"), "{err}");
}
