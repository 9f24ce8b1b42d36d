//! Misbehaving plugins fail closed (503) and the host keeps serving.

use burrow_tests::clients;
use burrow_tests::workload::Workload;
use burrow_tests::*;
use http::StatusCode;

const HOST: &str = "web-a1.localhost";

fn misbehaving(mode: &str) -> burrow_host::Config {
    let wasm = std::path::Path::new(burrow_host::plugins::ARTIFACTS_DIR).join("test_misbehave.wasm");
    assert!(wasm.is_file(), "test plugin not built: {}", wasm.display());
    let authorizer = format!(
        "source = {:?}\ncall_timeout = \"100ms\"\nmax_memory_mb = 16\nconfig = {{ agent_id = \"{AGENT}\", agent_token_sha256 = \"{}\", mode = \"{mode}\" }}",
        wasm.display().to_string(),
        sha256_hex(TOKEN)
    );
    ConfigParts { authorizer, ..Default::default() }.build()
}

async fn fails_closed(mode: &str) {
    let host = TestHost::start(misbehaving(mode)).await;
    let workload = Workload::start(mode).await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;
    for _ in 0..3 {
        let (status, headers, body) = clients::get(host.ingress_addr, HOST, "/hello").await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{mode}: {body}");
        assert!(headers.contains_key("x-request-id"));
        assert!(body.contains("plugin"), "{mode}: the error names the plugin failure: {body}");
        assert!(!body.contains("hello from"), "{mode}: nothing reached the workload");
    }
    assert!(!host.is_finished(), "{mode}: host keeps running");
    // Routing (a different plugin) still answers.
    let (status, _, _) = clients::get(host.ingress_addr, "unknown.example", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(workload.connections(), 0);
}

#[tokio::test]
async fn trapping_authorizer_fails_closed() {
    fails_closed("trap").await;
}

#[tokio::test]
async fn looping_authorizer_is_stopped_and_fails_closed() {
    fails_closed("loop").await;
}

#[tokio::test]
async fn memory_bomb_authorizer_fails_closed() {
    fails_closed("memory").await;
}

// The binary runs on a multi-threaded runtime, where plugin calls run inline on the
// request's worker thread (inside block_in_place): the same failures must be contained
// there too, including a recursion bomb on a tokio worker's stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_plugins_fail_closed_on_worker_threads() {
    for mode in ["trap", "loop", "memory", "recursion"] {
        fails_closed(mode).await;
    }
}

#[tokio::test]
async fn recursion_bomb_fails_closed() {
    fails_closed("recursion").await;
}

#[tokio::test]
async fn well_behaved_external_plugin_allows() {
    let host = TestHost::start(misbehaving("allow")).await;
    let workload = Workload::start("ok").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;
    let (status, _, body) = clients::get(host.ingress_addr, HOST, "/hello").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"hello from ok");
}

/// The harness's promise: a host that cannot start (here the built-in authorizer refuses
/// its config at load) fails `TestHost::start` at once with the host's own error, not a
/// test later with a timeout or a refused connection.
#[tokio::test]
async fn a_test_host_that_cannot_load_its_authorizer_fails_at_start_with_the_load_error() {
    let parts = ConfigParts {
        authorizer: "source = \"builtin:authorizer-static\"\nconfig = { default_access = \"sometimes\" }"
            .into(),
        ..Default::default()
    };
    let config = parts.build();
    let started = tokio::spawn(async move { TestHost::start(config).await });
    let panic = started.await.err().expect("the start must fail").into_panic();
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(message.contains("the host failed to start"), "{message}");
    assert!(message.contains("default_access"), "the host's error names the key: {message}");
}
