//! What an admin sees of plugin versions, and how long a rollback lasts: decisions by
//! outcome, the manifest's version and config changes in `GET /plugins` and the metrics;
//! a rollback held across reloads and SIGHUP until the file changes, and not across a
//! restart; the agents slot beside a user-policy plugin, and agents it cannot know
//! answered 404 at once. Real host, real agents, real HTTP.

use std::time::Duration;

use burrow_host::plugins::ReloadOutcome;
use burrow_tests::clients;
use burrow_tests::plugin_host::*;
use burrow_tests::workload::Workload;
use burrow_tests::*;
use http::StatusCode;

/// Applies `plugins` as SIGHUP would; the outcomes.
async fn sighup(host: &TestHost, plugins: burrow_host::plugins::PluginsConfig) -> Vec<ReloadOutcome> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    host.control
        .send(burrow_host::ControlRequest::ReloadPlugins(Box::new(plugins), Some(reply)))
        .await
        .unwrap();
    answer.await.unwrap().expect("the config reloads")
}

async fn metrics(host: &TestHost) -> String {
    let (_, _, body) = clients::get(host.admin_addr, "admin", "/metrics").await;
    String::from_utf8_lossy(&body).into_owned()
}

fn has(text: &str, needle: &str) {
    assert!(text.contains(needle), "missing {needle:?} in\n{text}");
}

/// A host serving `authz.wasm` = test-swap v1 (no file watcher), with agent a1 connected.
struct SwapHost {
    scratch: Scratch,
    config: burrow_host::Config,
    host: TestHost,
    workload: Workload,
    _agent: burrow_agent::AgentHandle,
}

async fn swap_host(tag: &str) -> SwapHost {
    let scratch = Scratch::new(tag);
    scratch.install("authz.wasm", &artifact("test_swap_v1.wasm"));
    let config = swap_host_config(&scratch, "watch = false", "");
    let host = TestHost::start(config.clone()).await;
    let workload = Workload::start("swap").await;
    let _agent = connected_agent(&host, &workload).await;
    SwapHost { scratch, config, host, workload, _agent }
}

#[tokio::test]
async fn metrics_and_the_plugin_api_show_decisions_versions_and_config_changes() {
    // Bound, not `..`: the workload and the agent must live as long as the test.
    let SwapHost { scratch, config, host, workload: _workload, _agent } = swap_host("versions").await;
    for _ in 0..2 {
        expect_version(&host, 1).await;
    }
    let v1 = plugin_status(&host, "authz").await;
    assert_eq!(v1["version"], "1.0.0", "the embedded manifest's version: {v1}");
    let v1_config = v1["config_sha256"].as_str().unwrap().to_owned();
    assert_eq!(v1_config.len(), 64);

    // SIGHUP with a changed `config` (a key test-swap ignores): the same component, a new
    // version all the same, and the counts go on.
    let mut next = config.plugins.clone();
    next.authorizer.config.insert("mode".into(), toml::Value::String("ignored".into()));
    let outcomes = sighup(&host, next).await;
    let swapped = outcomes
        .iter()
        .find_map(|o| match o {
            ReloadOutcome::Swapped { plugin, from, to, from_config, to_config } if plugin == "authz" => {
                Some((from.clone(), to.clone(), from_config.clone(), to_config.clone()))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("a config change swaps: {outcomes:?}"));
    assert_eq!(swapped.0, swapped.1, "the same component");
    assert_ne!(swapped.2, swapped.3, "a different config");
    let after = plugin_status(&host, "authz").await;
    assert_eq!(after["swaps"], 1, "a config swap counts, and the count is not reset: {after}");
    assert_eq!(after["sha256"], v1["sha256"]);
    assert_ne!(after["config_sha256"], v1["config_sha256"]);
    assert_eq!(after["previous_config_sha256"], v1_config.as_str());
    expect_version(&host, 1).await;

    // A new component: version 2 of the manifest, and the swap count goes on.
    scratch.install("authz.wasm", &artifact("test_swap_v2.wasm"));
    assert_eq!(reload(&host, "authz").await.0, StatusCode::OK);
    for _ in 0..4 {
        expect_version(&host, 2).await;
    }
    let v2 = plugin_status(&host, "authz").await;
    assert_eq!((v2["version"].as_str(), v2["swaps"].as_u64()), (Some("2.0.0"), Some(2)), "{v2}");

    let text = metrics(&host).await;
    for needle in [
        "burrow_plugin_decisions_total{plugin=\"authz\",op=\"authorize\",outcome=\"allow\"} 3\n".to_owned(),
        "burrow_plugin_decisions_total{plugin=\"authz\",op=\"authorize\",outcome=\"forbidden\"} 4\n".into(),
        "burrow_plugin_decisions_total{plugin=\"authz\",op=\"authenticate-user\",outcome=\"anonymous\"} 7\n".into(),
        "burrow_plugin_decisions_total{plugin=\"authz\",op=\"authenticate-agent\",outcome=\"accepted\"}".into(),
        "burrow_plugin_call_duration_seconds_count{plugin=\"authz\",kind=\"authorizer\",op=\"authenticate-user+authorize\"} 7\n".into(),
        "burrow_plugin_swaps_total{plugin=\"authz\",result=\"config\"} 1\n".into(),
        "burrow_plugin_swaps_total{plugin=\"authz\",result=\"reload\"} 1\n".into(),
        format!(
            "burrow_plugin_info{{plugin=\"authz\",kind=\"authorizer\",sha256=\"{}\",version=\"2.0.0\",config_sha256=\"{}\"}} 1\n",
            v2["sha256"].as_str().unwrap(),
            v2["config_sha256"].as_str().unwrap()
        ),
    ] {
        has(&text, &needle);
    }
    assert!(!text.contains("version=\"1.0.0\""), "the old version's info series is gone:\n{text}");
}

#[tokio::test]
async fn a_rollback_holds_until_the_plugin_file_changes_and_a_restart_loads_the_file() {
    let SwapHost { scratch, config, host, workload, _agent } = swap_host("hold").await;
    scratch.install("authz.wasm", &artifact("test_swap_v2.wasm"));
    assert_eq!(reload(&host, "authz").await.0, StatusCode::OK);
    let v2 = plugin_status(&host, "authz").await["sha256"].clone();

    let (status, json) = admin(&host, "POST", "/plugins/authz/rollback", Some(ADMIN_TOKEN)).await;
    assert_eq!((status, json["result"].as_str()), (StatusCode::OK, Some("swapped")), "{json}");
    expect_version(&host, 1).await;
    assert_eq!(plugin_status(&host, "authz").await["rolled_back_from"], v2);

    // The file still holds v2: an admin reload and a SIGHUP leave v1 serving.
    let (status, json) = reload(&host, "authz").await;
    assert_eq!((status, json["result"].as_str()), (StatusCode::OK, Some("held")), "{json}");
    assert_eq!(json["source_sha256"], v2);
    expect_version(&host, 1).await;
    let outcomes = sighup(&host, config.plugins.clone()).await;
    assert!(
        outcomes.iter().any(|o| matches!(o, ReloadOutcome::Held { plugin, .. } if plugin == "authz")),
        "{outcomes:?}"
    );
    expect_version(&host, 1).await;

    // The file changes (the admin puts v1 back): the hold is over, and v1 is what the
    // file holds. A later deploy of v2 is a plain reload again.
    scratch.install("authz.wasm", &artifact("test_swap_v1.wasm"));
    let (_, json) = reload(&host, "authz").await;
    assert_eq!(json["result"], "unchanged", "{json}");
    assert!(plugin_status(&host, "authz").await["rolled_back_from"].is_null());
    scratch.install("authz.wasm", &artifact("test_swap_v2.wasm"));
    let (_, json) = reload(&host, "authz").await;
    assert_eq!(json["result"], "swapped", "{json}");
    expect_version(&host, 2).await;

    // Rolled back once more, then restarted: the host loads what the file holds.
    assert_eq!(admin(&host, "POST", "/plugins/authz/rollback", Some(ADMIN_TOKEN)).await.0, StatusCode::OK);
    expect_version(&host, 1).await;
    host.stop().await.expect("the host stops cleanly");
    let restarted = TestHost::start(config).await;
    let _agent = connected_agent(&restarted, &workload).await;
    expect_version(&restarted, 2).await;
    assert!(plugin_status(&restarted, "authz").await["rolled_back_from"].is_null());
}

#[tokio::test]
async fn the_agents_slot_admits_agents_for_a_user_policy_plugin_and_unlisted_agents_get_404_at_once() {
    // The user authorizer (test-swap v1, which would admit a1 with TOKEN) is never asked
    // about agents: the agent below has another token, on the static list only.
    let agent_token = "token-on-the-static-list-0123456789";
    let scratch = Scratch::new("agents");
    scratch.install("authz.wasm", &artifact("test_swap_v1.wasm"));
    let mut config = swap_host_config(&scratch, "watch = false", "");
    let agents: burrow_host::plugins::PluginSlotConfig = toml::from_str(&format!(
        "config = {{ agents = [{{ id = \"{AGENT}\", token_sha256 = \"{}\" }}] }}",
        sha256_hex(agent_token)
    ))
    .unwrap();
    config.plugins.agents = Some(agents);
    config.ingress.stream_wait = Duration::from_secs(20);
    let host = TestHost::start(config).await;
    let workload = Workload::start("swap").await;
    let agent =
        burrow_agent::spawn(agent_config(&host.agent_url("grpc"), agent_token, &[workload.service("web")]));
    wait_connected(&agent).await;
    expect_version(&host, 1).await;

    // An agent the static list does not name can never connect: 404 now, not 504 in 20 s.
    let (status, _, body) =
        clients::get_within(Duration::from_secs(10), host.ingress_addr, "web-nope.localhost", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&body));

    let (_, json) = admin(&host, "GET", "/plugins", Some(ADMIN_TOKEN)).await;
    let roles: Vec<(&str, &str)> = json["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["role"].as_str().unwrap()))
        .collect();
    assert_eq!(
        roles,
        [("authz", "authorizer"), ("authorizer-static", "agents"), ("workload-workspace", "workload")]
    );
    let text = metrics(&host).await;
    has(&text, "burrow_plugin_decisions_total{plugin=\"authorizer-static\",op=\"authenticate-agent\",outcome=\"accepted\"}");
    assert!(
        !text.contains("plugin=\"authz\",op=\"authenticate-agent\""),
        "the user authorizer was not asked:\n{text}"
    );
}
