//! The plugin platform end to end: hot swap under load, refused candidates, rollback,
//! reload by file change and SIGHUP (the control channel), the admin API, expiry, an
//! older-minor plugin, and per-plugin metrics. Real host, real agents, real HTTP.

use std::sync::Arc;
use std::time::Duration;

use burrow_tests::clients;
use burrow_tests::plugin_host::*;
use burrow_tests::workload::Workload;
use burrow_tests::*;
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_fails_nothing_and_decides_anew() {
    let scratch = Scratch::new("swap");
    scratch.install("authz.wasm", &artifact("test_swap_v1.wasm"));
    let host = TestHost::start(swap_host_config(&scratch, "watch = false", "")).await;
    let workload = Workload::start("swap").await;
    let _agent = connected_agent(&host, &workload).await;
    expect_version(&host, 1).await;

    // 200 requests admitted by v1 and held inside the workload while v2 is swapped in.
    let addr = host.ingress_addr;
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(tokio::spawn(async move { clients::get(addr, HOST, "/hold").await }));
    }
    eventually(Duration::from_secs(20), "200 requests in flight", || workload.held() == 200).await;

    // New requests keep arriving while the swap happens: each gets v1's or v2's decision.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let during = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (status, _, _) = clients::get(addr, HOST, "/hello").await;
                seen.push(status);
            }
            seen
        })
    };
    scratch.install("authz.wasm", &artifact("test_swap_v2.wasm"));
    let (status, outcome) = reload(&host, "authz").await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    assert_eq!(outcome["result"], "swapped", "{outcome}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = during.await.unwrap();
    assert!(!seen.is_empty());
    for status in &seen {
        assert!(
            *status == StatusCode::OK || *status == StatusCode::FORBIDDEN,
            "a request during the swap got {status} (neither version's decision)"
        );
    }

    workload.release_holds();
    for request in held {
        let (status, _, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK, "an in-flight request failed: {}", String::from_utf8_lossy(&body));
        assert_eq!(&body[..], b"released by swap");
    }
    // After the swap every decision is v2's.
    for _ in 0..5 {
        expect_version(&host, 2).await;
    }
    let status = plugin_status(&host, "authz").await;
    assert_eq!(status["swaps"], 1);
    assert!(status["previous_sha256"].is_string());
}

#[tokio::test]
async fn broken_candidates_are_refused_and_the_old_version_keeps_serving() {
    let scratch = Scratch::new("broken");
    scratch.install("authz.wasm", &artifact("test_swap_v1.wasm"));
    // `mode` is ignored by the swap plugins and makes test-misbehave trap in `init`.
    let host = TestHost::start(swap_host_config(&scratch, "watch = false", "")).await;
    let workload = Workload::start("swap").await;
    let _agent = connected_agent(&host, &workload).await;
    let before = plugin_status(&host, "authz").await;

    let candidates = [
        // Its embedded manifest says it is a router before the world check would.
        ("router_prefer_local.wasm", "this slot takes authorizer plugins"),
        ("test_old_minor.wasm", "does not implement the world"),
    ];
    for (file, expected) in candidates {
        scratch.install("authz.wasm", &artifact(file));
        let (status, json) = reload(&host, "authz").await;
        assert_eq!(status, StatusCode::CONFLICT, "{file}: {json}");
        let error = json["error"].as_str().unwrap();
        assert!(error.contains(expected), "{file}: {error}");
        expect_version(&host, 1).await;
        let now = plugin_status(&host, "authz").await;
        assert_eq!(now["sha256"], before["sha256"], "{file}: the old version still serves");
        assert!(now["last_error"].as_str().unwrap().contains(expected), "{now}");
    }

    // Not a component at all.
    std::fs::write(scratch.path("authz.wasm"), b"definitely not wasm").unwrap();
    let (status, json) = reload(&host, "authz").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(json["error"].as_str().unwrap().contains("not a WebAssembly binary"), "{json}");
    expect_version(&host, 1).await;
    assert!(!host.is_finished());
}

#[tokio::test]
async fn a_candidate_that_traps_at_init_is_refused() {
    let scratch = Scratch::new("init");
    scratch.install("authz.wasm", &artifact("test_swap_v1.wasm"));
    let host = TestHost::start(swap_host_config(&scratch, "watch = false", "")).await;
    let workload = Workload::start("swap").await;
    let _agent = connected_agent(&host, &workload).await;
    // test-misbehave without a `mode` refuses its config in `init`.
    scratch.install("authz.wasm", &artifact("test_misbehave.wasm"));
    let (status, json) = reload(&host, "authz").await;
    assert_eq!(status, StatusCode::CONFLICT, "{json}");
    let error = json["error"].as_str().unwrap();
    assert!(error.contains("canary") && error.contains("init"), "{error}");
    expect_version(&host, 1).await;
}

#[tokio::test]
async fn rollback_restores_the_previous_version_and_back() {
    let scratch = Scratch::new("rollback");
    scratch.install("authz.wasm", &artifact("test_swap_v1.wasm"));
    let host = TestHost::start(swap_host_config(&scratch, "watch = false", "")).await;
    let workload = Workload::start("swap").await;
    let _agent = connected_agent(&host, &workload).await;

    let (status, json) = admin(&host, "POST", "/plugins/authz/rollback", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing to roll back to yet: {json}");

    scratch.install("authz.wasm", &artifact("test_swap_v2.wasm"));
    assert_eq!(reload(&host, "authz").await.0, StatusCode::OK);
    expect_version(&host, 2).await;
    let (status, json) = admin(&host, "POST", "/plugins/authz/rollback", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["result"], "swapped");
    expect_version(&host, 1).await;
    // A second rollback rolls forward again.
    assert_eq!(admin(&host, "POST", "/plugins/authz/rollback", Some(ADMIN_TOKEN)).await.0, StatusCode::OK);
    expect_version(&host, 2).await;
    // Reloading the same bytes changes nothing.
    let (status, json) = reload(&host, "authz").await;
    assert_eq!((status, json["result"].as_str()), (StatusCode::OK, Some("unchanged")), "{json}");
}

#[tokio::test]
async fn a_changed_file_is_reloaded_by_the_watcher() {
    let scratch = Scratch::new("watch");
    scratch.install("authz.wasm", &artifact("test_swap_v1.wasm"));
    let host =
        TestHost::start(swap_host_config(&scratch, "watch = true\nwatch_interval = \"100ms\"", "")).await;
    let workload = Workload::start("swap").await;
    let _agent = connected_agent(&host, &workload).await;
    expect_version(&host, 1).await;
    scratch.install("authz.wasm", &artifact("test_swap_v2.wasm"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, _) = clients::get(host.ingress_addr, HOST, "/hello").await;
        if status == StatusCode::FORBIDDEN {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(tokio::time::Instant::now() < deadline, "the watcher never swapped v2 in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    expect_version(&host, 2).await;
}

#[tokio::test]
async fn a_config_reload_swaps_the_authorizer_atomically() {
    let scratch = Scratch::new("sighup");
    scratch.install("authz.wasm", &artifact("test_swap_v1.wasm"));
    scratch.install("other.wasm", &artifact("test_swap_v2.wasm"));
    let config = swap_host_config(&scratch, "watch = false", "");
    let host = TestHost::start(config.clone()).await;
    let workload = Workload::start("swap").await;
    let _agent = connected_agent(&host, &workload).await;
    expect_version(&host, 1).await;

    // A config whose authorizer is a broken file is refused as a whole.
    let mut broken = config.plugins.clone();
    broken.authorizer.source =
        Some(burrow_host::plugins::PluginSource::File(artifact("router_prefer_local.wasm")));
    broken.authorizer.name = Some("authz".into());
    let (reply, answer) = tokio::sync::oneshot::channel();
    host.control
        .send(burrow_host::ControlRequest::ReloadPlugins(Box::new(broken), Some(reply)))
        .await
        .unwrap();
    let error = answer.await.unwrap().expect_err("a broken config is refused");
    assert!(error.to_string().contains("this slot takes authorizer plugins"), "{error}");
    expect_version(&host, 1).await;

    let mut next = config.plugins.clone();
    next.authorizer.source = Some(burrow_host::plugins::PluginSource::File(scratch.path("other.wasm")));
    next.authorizer.name = Some("authz".into());
    let (reply, answer) = tokio::sync::oneshot::channel();
    host.control.send(burrow_host::ControlRequest::ReloadPlugins(Box::new(next), Some(reply))).await.unwrap();
    let outcomes = answer.await.unwrap().expect("the new config loads");
    assert!(
        outcomes.iter().any(
            |o| matches!(o, burrow_host::plugins::ReloadOutcome::Swapped { plugin, .. } if plugin == "authz")
        ),
        "{outcomes:?}"
    );
    expect_version(&host, 2).await;
    // The previous version stays available for rollback.
    assert_eq!(admin(&host, "POST", "/plugins/authz/rollback", Some(ADMIN_TOKEN)).await.0, StatusCode::OK);
    expect_version(&host, 1).await;
}

#[tokio::test]
async fn a_sighup_rereads_the_config_file_and_swaps_the_authorizer() {
    let scratch = Scratch::new("sighup");
    scratch.install("v1.wasm", &artifact("test_swap_v1.wasm"));
    scratch.install("v2.wasm", &artifact("test_swap_v2.wasm"));
    let parts = swap_host_parts_with(&scratch, "v1.wasm", "watch = false", "name = \"authz\"");
    let host = burrow_tests::process::ReplicaProcess::start(env!("CARGO_BIN_EXE_burrow-replica"), &parts);
    let workload = Workload::start("swap").await;
    let mut config = agent_config(&host.agent_url(), TOKEN, &[workload.service("web")]);
    config.connections = 1;
    let agent = burrow_agent::spawn(config);
    wait_connected(&agent).await;
    expect_version_at(host.ingress_addr, 1).await;

    // An operator edits the file and sends SIGHUP to the process.
    host.rewrite_config(&swap_host_parts_with(&scratch, "v2.wasm", "watch = false", "name = \"authz\""));
    host.hangup();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, _) = clients::get(host.ingress_addr, HOST, "/hello").await;
        if status == StatusCode::FORBIDDEN {
            break;
        }
        assert_eq!(status, StatusCode::OK, "only v1's or v2's answers, never an error in between");
        assert!(tokio::time::Instant::now() < deadline, "SIGHUP never swapped the authorizer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    expect_version_at(host.ingress_addr, 2).await;
}

#[tokio::test]
async fn the_plugin_api_wants_the_admin_token() {
    let scratch = Scratch::new("auth");
    scratch.install("authz.wasm", &artifact("test_swap_v1.wasm"));
    let host = TestHost::start(swap_host_config(&scratch, "watch = false", "")).await;
    assert_eq!(admin(&host, "GET", "/plugins", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        admin(&host, "GET", "/plugins", Some("wrong-token-0123456789")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(admin(&host, "POST", "/plugins/authz/reload", None).await.0, StatusCode::UNAUTHORIZED);
    let (status, json) = admin(&host, "GET", "/plugins", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> =
        json["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["authz", "workload-workspace"]);
    let authz = &json["plugins"][0];
    assert_eq!(authz["kind"], "authorizer");
    assert_eq!(authz["state"], "active");
    assert_eq!(authz["sha256"].as_str().unwrap().len(), 64);
    assert!(authz["loaded_at"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(
        admin(&host, "POST", "/plugins/nope/reload", Some(ADMIN_TOKEN)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        admin(&host, "GET", "/plugins/authz/reload", Some(ADMIN_TOKEN)).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );

    // Without a token file the plugin API is off.
    let plain = TestHost::start(default_config()).await;
    assert_eq!(admin(&plain, "GET", "/plugins", Some(ADMIN_TOKEN)).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn per_plugin_metrics_are_exported() {
    let host = TestHost::start(default_config()).await;
    let workload = Workload::start("m").await;
    let _agent = connected_agent(&host, &workload).await;
    for _ in 0..3 {
        assert_eq!(clients::get(host.ingress_addr, HOST, "/hello").await.0, StatusCode::OK);
    }
    let (_, _, body) = clients::get(host.admin_addr, "admin", "/metrics").await;
    let text = String::from_utf8_lossy(&body);
    for needle in [
        "burrow_plugin_calls_total{plugin=\"authorizer-static\",kind=\"authorizer\",op=\"authenticate-user+authorize\",result=\"ok\"} 3\n",
        "burrow_plugin_calls_total{plugin=\"workload-workspace\",kind=\"workload\",op=\"resolve\",result=\"ok\"} 3\n",
        "burrow_plugin_call_duration_seconds_count{plugin=\"authorizer-static\",kind=\"authorizer\",op=\"authenticate-user+authorize\"} 3\n",
        "burrow_plugin_decisions_total{plugin=\"authorizer-static\",op=\"authorize\",outcome=\"allow\"} 3\n",
        "burrow_plugin_decisions_total{plugin=\"workload-workspace\",op=\"resolve\",outcome=\"resolved\"} 3\n",
        "burrow_plugin_info{plugin=\"authorizer-static\",kind=\"authorizer\",sha256=\"",
        "burrow_plugin_quarantined{plugin=\"authorizer-static\"} 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[tokio::test]
async fn an_ended_workload_is_disconnected_and_answers_410() {
    // The terminal workload kind ends sessions `max_session` after the agent connected.
    let authorizer = format!(
        "source = \"builtin:authorizer-static\"\nconfig = {{ default_access = \"open\", agents = [{{ id = \"term-7\", token_sha256 = \"{}\", workload_kind = \"terminal\", workload_id = \"term-7\" }}] }}",
        sha256_hex(TOKEN)
    );
    let extra = "[plugins]\nexpiry_check = \"1s\"\n[[plugins.workload]]\nsource = \"builtin:workload-terminal\"\nconfig = { host_names = [\"term.localhost\"], max_session = 1500 }\n";
    let host =
        TestHost::start(ConfigParts { authorizer, extra: extra.into(), ..Default::default() }.build()).await;
    let workload = Workload::start("term").await;
    let agent =
        burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("shell")]));
    wait_connected(&agent).await;
    // The workload itself answers (it has no such path): the request got through.
    let (status, _, body) = clients::get(host.ingress_addr, "term.localhost", "/terminal/7/hello").await;
    assert_eq!((status, &body[..]), (StatusCode::NOT_FOUND, &b"no such path"[..]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, body) = clients::get(host.ingress_addr, "term.localhost", "/terminal/7/hello").await;
        if status == StatusCode::GONE {
            assert!(String::from_utf8_lossy(&body).contains("has ended"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the workload never ended (last {status})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And its agent was disconnected for good: told the workload ended, it stopped, and
    // the host holds no session of it.
    assert_eq!(burrow_tests::lifecycle::final_reason(&agent).await, burrow_agent::FinalReason::WorkloadEnded);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = clients::get(host.admin_addr, "localhost", "/metrics").await;
        if metric(&String::from_utf8_lossy(&body), "burrow_agent_sessions") == 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the host still holds the agent's session");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_plugin_built_against_an_older_minor_still_loads_and_serves() {
    let authorizer = format!(
        "source = \"builtin:authorizer-static\"\nconfig = {{ default_access = \"open\", agents = [{{ id = \"legacy\", token_sha256 = \"{}\", workload_kind = \"legacy\" }}] }}",
        sha256_hex(TOKEN)
    );
    let extra = format!(
        "[[plugins.workload]]\nsource = {:?}\n",
        artifact("test_old_minor.wasm").display().to_string()
    );
    let host = TestHost::start(ConfigParts { authorizer, extra, ..Default::default() }.build()).await;
    let workload = Workload::start("legacy").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;
    let (status, _, body) = clients::get(host.ingress_addr, "legacy.localhost", "/hello").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello from legacy"[..]));
}

#[tokio::test]
async fn an_admin_plugin_in_dir_replaces_the_builtin_of_the_same_name() {
    let scratch = Scratch::new("override");
    // `dir` holds authorizer-static.wasm: wherever builtin:authorizer-static is named, it loads.
    scratch.install("authorizer-static.wasm", &artifact("test_swap_v2.wasm"));
    let authorizer = format!(
        "source = \"builtin:authorizer-static\"\nconfig = {{ agent_id = \"{AGENT}\", agent_token_sha256 = \"{}\" }}",
        sha256_hex(TOKEN)
    );
    let extra = format!(
        "[plugins]\ndir = {:?}\nwatch = false\n[admin]\ntoken_file = {:?}\n",
        scratch.0.display().to_string(),
        scratch.path("admin-token").display().to_string()
    );
    let host = TestHost::start(ConfigParts { authorizer, extra, ..Default::default() }.build()).await;
    let workload = Workload::start("swap").await;
    let _agent = connected_agent(&host, &workload).await;
    expect_version(&host, 2).await;
    let status = plugin_status(&host, "authorizer-static").await;
    assert_eq!(status["source"], "builtin:authorizer-static");
    assert!(status["file"].as_str().unwrap().ends_with("authorizer-static.wasm"), "{status}");

    // Replace the override and reload by name: the override's new version serves.
    scratch.install("authorizer-static.wasm", &artifact("test_swap_v1.wasm"));
    assert_eq!(reload(&host, "authorizer-static").await.0, StatusCode::OK);
    expect_version(&host, 1).await;
}
