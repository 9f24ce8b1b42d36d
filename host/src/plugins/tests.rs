//! Real wasmtime, real components from [`ARTIFACTS_DIR`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::*;

fn sha_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn artifact(name: &str) -> PathBuf {
    PathBuf::from(ARTIFACTS_DIR).join(name)
}

fn table(toml_text: &str) -> toml::Table {
    toml::from_str(toml_text).expect("test TOML parses")
}

fn static_config() -> PluginsConfig {
    let mut cfg = PluginsConfig::default();
    cfg.authorizer.config = table(&format!(
        r#"
        default_access = "deny"
        agents = [
            {{ id = "demo", token_sha256 = "{}" }},
            {{ id = "edge-eu-1", token_sha256 = "{}" }},
        ]
        workloads = [
            {{ agent = "demo", service = "*", access = "open" }},
            {{ agent = "demo", service = "admin", access = "token",
               users = [{{ name = "alice", token_sha256 = "{}" }}] }},
        ]
        "#,
        sha_hex("agent-secret"),
        sha_hex("edge-secret"),
        sha_hex("alice-secret"),
    ));
    cfg
}

fn misbehave_config(mode: &str) -> PluginsConfig {
    let mut cfg = PluginsConfig::default();
    cfg.authorizer.source = Some(PluginSource::File(artifact("test_misbehave.wasm")));
    cfg.authorizer.max_memory_mb = 16;
    cfg.authorizer.config = table(&format!(
        r#"
        agent_id = "demo"
        agent_token_sha256 = "{}"
        mode = "{mode}"
        "#,
        sha_hex("agent-secret")
    ));
    cfg
}

fn agent(token: &str) -> AgentAuthRequest {
    AgentAuthRequest {
        token: token.into(),
        agent_version: "0.1.0".into(),
        replica_id: "r1".into(),
        remote_addr: "127.0.0.1:5000".into(),
        services: vec!["web".into()],
    }
}

fn access(agent_id: &str, service: &str, bearer: Option<&str>) -> AccessRequest {
    AccessRequest {
        agent_id: agent_id.into(),
        service: service.into(),
        workload_id: format!("{agent_id}/{service}"),
        host: format!("{service}-{agent_id}.localhost"),
        method: "GET".into(),
        path: "/".into(),
        protocol: Protocol::Http,
        client_addr: "127.0.0.1:6000".into(),
        bearer_token: bearer.map(Into::into),
    }
}

fn route_req(host: &str) -> RouteRequest {
    RouteRequest { host: host.into(), path: "/".into(), method: "GET".into() }
}

fn accepted(agent_id: &str) -> AgentAuthOutcome {
    AgentAuthOutcome::Accepted(AgentIdentity { agent_id: agent_id.into(), labels: vec![] })
}

/// After a misbehaving call, the same `Plugins` must still answer normally.
fn assert_still_serving(plugins: &Plugins) {
    assert_eq!(plugins.authenticate_agent(&agent("agent-secret")).unwrap(), accepted("demo"));
    assert_eq!(
        plugins.route(&route_req("web-demo.localhost")).unwrap().map(|r| r.workload_id),
        Some("demo/web".to_string())
    );
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("burrow-plugin-test-{}-{n}-{name}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn plugins_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Plugins>();
}

#[test]
fn builtin_authorizer_authenticates_agents() {
    let plugins = Plugins::load(&static_config()).unwrap();
    assert_eq!(plugins.authenticate_agent(&agent("agent-secret")).unwrap(), accepted("demo"));
    assert_eq!(plugins.authenticate_agent(&agent("edge-secret")).unwrap(), accepted("edge-eu-1"));
    assert_eq!(
        plugins.authenticate_agent(&agent("wrong")).unwrap(),
        AgentAuthOutcome::Rejected { reason: "agent token not recognised".into() }
    );
}

#[test]
fn builtin_authorizer_applies_access_rules() {
    let plugins = Plugins::load(&static_config()).unwrap();
    let open = AccessDecision::Allow { principal: "anonymous".into(), strip_credentials: false };
    assert_eq!(plugins.authorize(&access("demo", "web", None)).unwrap(), open);
    assert_eq!(
        plugins.authorize(&access("demo", "admin", None)).unwrap(),
        AccessDecision::Deny { status: 401, reason: "this workload requires a bearer token".into() }
    );
    assert_eq!(
        plugins.authorize(&access("demo", "admin", Some("nope"))).unwrap(),
        AccessDecision::Deny { status: 403, reason: "token not allowed for this workload".into() }
    );
    assert_eq!(
        plugins.authorize(&access("demo", "admin", Some("alice-secret"))).unwrap(),
        AccessDecision::Allow { principal: "alice".into(), strip_credentials: true }
    );
    // No rule for this agent: default_access = "deny".
    assert!(matches!(
        plugins.authorize(&access("edge-eu-1", "web", None)).unwrap(),
        AccessDecision::Deny { status: 403, .. }
    ));
}

#[test]
fn builtin_router_routes_host_names() {
    let plugins = Plugins::load(&PluginsConfig::default()).unwrap();
    let route = plugins.route(&route_req("web-edge-eu-1.localhost")).unwrap().unwrap();
    assert_eq!(
        route,
        Route { agent_id: "edge-eu-1".into(), service: "web".into(), workload_id: "edge-eu-1/web".into() }
    );
    assert_eq!(plugins.route(&route_req("web.localhost")).unwrap(), None);
    assert_eq!(plugins.route(&route_req("web-demo.example.com")).unwrap(), None);

    let mut cfg = PluginsConfig::default();
    cfg.router.config = table(r#"root_domains = ["tunnels.example.com"]"#);
    let plugins = Plugins::load(&cfg).unwrap();
    assert_eq!(
        plugins.route(&route_req("api-demo.tunnels.example.com")).unwrap().map(|r| r.workload_id),
        Some("demo/api".into())
    );
    assert_eq!(plugins.route(&route_req("web-demo.localhost")).unwrap(), None);
}

#[test]
fn trap_is_reported_with_the_panic_message() {
    let plugins = Plugins::load(&misbehave_config("trap")).unwrap();
    let err = plugins.authorize(&access("demo", "web", None)).unwrap_err();
    let PluginError::Trap { plugin, sha256, message } = &err else { panic!("expected a trap, got {err}") };
    assert!(plugin.starts_with("authorizer ("), "{plugin}");
    assert!(plugin.contains("test_misbehave.wasm"), "{plugin}");
    assert_eq!(sha256.len(), 12);
    assert!(message.contains("deliberate trap"), "{message}");
    assert_still_serving(&plugins);
}

#[test]
fn endless_loop_times_out() {
    let mut cfg = misbehave_config("loop");
    cfg.authorizer.call_timeout = Duration::from_millis(50);
    let plugins = Plugins::load(&cfg).unwrap();
    let started = Instant::now();
    let err = plugins.authorize(&access("demo", "web", None)).unwrap_err();
    assert!(
        matches!(&err, PluginError::Timeout { limit, .. } if *limit == Duration::from_millis(50)),
        "expected a timeout, got {err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(err.to_string().contains("call timeout of 50ms"), "{err}");
    assert_still_serving(&plugins);
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    let plugins = Plugins::load(&misbehave_config("memory")).unwrap();
    let err = plugins.authorize(&access("demo", "web", None)).unwrap_err();
    assert!(
        matches!(&err, PluginError::Memory { limit_bytes, .. } if *limit_bytes == 16 * 1024 * 1024),
        "expected a memory error, got {err}"
    );
    assert!(err.to_string().contains("memory limit of 16 MiB"), "{err}");
    assert_still_serving(&plugins);
}

#[test]
fn unbounded_recursion_overflows_the_stack() {
    let plugins = Plugins::load(&misbehave_config("recursion")).unwrap();
    let err = plugins.authorize(&access("demo", "web", None)).unwrap_err();
    assert!(matches!(err, PluginError::StackOverflow { .. }), "expected a stack overflow, got {err}");
    assert_still_serving(&plugins);
}

#[test]
fn sleeping_plugin_traps() {
    let plugins = Plugins::load(&misbehave_config("sleep")).unwrap();
    let err = plugins.authorize(&access("demo", "web", None)).unwrap_err();
    let PluginError::Trap { message, .. } = &err else { panic!("expected a trap, got {err}") };
    assert!(message.contains("must not sleep"), "{message}");
    assert_still_serving(&plugins);
}

#[test]
fn well_behaved_external_plugin_allows() {
    let plugins = Plugins::load(&misbehave_config("allow")).unwrap();
    assert_eq!(
        plugins.authorize(&access("demo", "web", None)).unwrap(),
        AccessDecision::Allow { principal: "misbehave".into(), strip_credentials: false }
    );
}

/// wasmtime-wasi's sync bindings must never run on a tokio worker (they would panic
/// with "Cannot start a runtime from within a runtime" when a guest writes to stderr).
#[tokio::test]
async fn trapping_plugin_called_from_async_code() {
    let plugins =
        tokio::task::spawn_blocking(|| Plugins::load(&misbehave_config("trap"))).await.unwrap().unwrap();
    for _ in 0..3 {
        let err = plugins.authorize(&access("demo", "web", None)).unwrap_err();
        assert!(matches!(err, PluginError::Trap { .. }), "{err}");
    }
    assert_still_serving(&plugins);
}

#[test]
fn concurrent_calls_all_succeed() {
    let plugins = Plugins::load(&static_config()).unwrap();
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| {
                for _ in 0..20 {
                    assert_eq!(plugins.authenticate_agent(&agent("agent-secret")).unwrap(), accepted("demo"));
                    assert!(plugins.route(&route_req("web-demo.localhost")).unwrap().is_some());
                }
            });
        }
    });
}

#[test]
fn external_file_is_the_same_component_as_the_builtin() {
    let builtin = Plugins::load(&static_config()).unwrap();
    let mut cfg = static_config();
    cfg.authorizer.source = Some(PluginSource::File(artifact("authorizer_static.wasm")));
    let external = Plugins::load(&cfg).unwrap();
    assert_eq!(builtin.loaded()[0].sha256, external.loaded()[0].sha256);
    assert_eq!(external.loaded()[0].source, PluginSource::File(artifact("authorizer_static.wasm")));
    assert_eq!(external.authenticate_agent(&agent("agent-secret")).unwrap(), accepted("demo"));
    assert_eq!(
        external.authorize(&access("demo", "admin", Some("alice-secret"))).unwrap(),
        AccessDecision::Allow { principal: "alice".into(), strip_credentials: true }
    );
}

#[test]
fn component_of_the_wrong_world_is_refused() {
    let mut cfg = PluginsConfig::default();
    cfg.authorizer.source = Some(PluginSource::File(artifact("router_hostname.wasm")));
    let err = Plugins::load(&cfg).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PluginError::Load { .. }), "{text}");
    assert!(text.contains("does not implement the world burrow:plugin/authorizer-plugin@0.1.0"), "{text}");
    assert!(text.contains("router_hostname.wasm"), "{text}");
}

#[test]
fn non_components_are_refused() {
    let mut cfg = PluginsConfig::default();
    cfg.router.source = Some(PluginSource::File(temp_file("core.wasm", b"\0asm\x01\0\0\0")));
    let text = Plugins::load(&cfg).unwrap_err().to_string();
    assert!(text.contains("core WebAssembly module, not a component"), "{text}");

    cfg.router.source = Some(PluginSource::File(temp_file("junk.wasm", b"#!/bin/sh\necho hi\n")));
    let text = Plugins::load(&cfg).unwrap_err().to_string();
    assert!(text.starts_with("plugin router ("), "{text}");
    assert!(text.contains("not a WebAssembly binary"), "{text}");
}

#[test]
fn bad_plugin_config_fails_at_load() {
    let mut cfg = PluginsConfig::default();
    cfg.authorizer.config = table(r#"agents = [{ id = "demo", token_sha256 = "not-hex" }]"#);
    let text = Plugins::load(&cfg).unwrap_err().to_string();
    assert!(text.contains("load-time probe"), "{text}");
    assert!(text.contains("invalid config: agents[0].token_sha256"), "{text}");

    let mut cfg = PluginsConfig::default();
    cfg.router.config = table(r#"root_domain = "typo""#);
    let text = Plugins::load(&cfg).unwrap_err().to_string();
    assert!(text.contains("unknown field `root_domain`"), "{text}");
}

#[test]
fn config_defaults_and_parsing() {
    let cfg: PluginsConfig = toml::from_str("").unwrap();
    assert_eq!(
        cfg.authorizer.source_or_default(PluginKind::Authorizer).to_string(),
        "builtin:authorizer-static"
    );
    assert_eq!(cfg.router.source_or_default(PluginKind::Router).to_string(), "builtin:router-hostname");
    assert_eq!(cfg.authorizer.call_timeout, Duration::from_millis(100));
    assert_eq!(cfg.router.max_memory_mb, 64);
    cfg.validate().unwrap();

    let cfg: PluginsConfig = toml::from_str(
        r#"
        [authorizer]
        source = "builtin:authorizer-static"
        call_timeout = "250ms"
        max_memory_mb = 32
        config = { default_access = "open", when = 1979-05-27T07:32:00Z }
        [router]
        config = { root_domains = ["localhost"] }
        "#,
    )
    .unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.authorizer.call_timeout, Duration::from_millis(250));
    assert_eq!(cfg.authorizer.max_memory_bytes(), 32 * 1024 * 1024);
    let json: serde_json::Value = serde_json::from_str(&cfg.authorizer.config_json()).unwrap();
    assert_eq!(json["default_access"], "open");
    assert_eq!(json["when"], "1979-05-27T07:32:00Z");
    assert_eq!(PluginsConfig::default().router.config_json(), "{}");

    let err = toml::from_str::<PluginsConfig>("[authorizer]\nsorce = \"x\"").unwrap_err();
    assert!(err.to_string().contains("unknown field `sorce`"), "{err}");
    let err = toml::from_str::<PluginsConfig>("[authorizer]\nsource = \"\"").unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}

#[test]
fn config_validation_names_the_key() {
    let check = |edit: fn(&mut PluginsConfig)| {
        let mut cfg = PluginsConfig::default();
        edit(&mut cfg);
        cfg.validate().unwrap_err()
    };
    let err = check(|c| c.authorizer.source = Some(PluginSource::Builtin("nope".into())));
    assert_eq!(err.key, "plugins.authorizer.source");
    assert!(err.message.contains("builtin:authorizer-static, builtin:router-hostname"), "{err}");

    let err = check(|c| c.router.source = Some(PluginSource::Builtin("authorizer-static".into())));
    assert_eq!(err.key, "plugins.router.source");
    assert!(
        err.message.contains("is a authorizer plugin") || err.message.contains("authorizer plugin"),
        "{err}"
    );

    let err = check(|c| c.authorizer.source = Some(PluginSource::File("/nonexistent/plugin.wasm".into())));
    assert_eq!(err.to_string(), "plugins.authorizer.source: file not found: /nonexistent/plugin.wasm");

    let err = check(|c| c.router.call_timeout = Duration::ZERO);
    assert_eq!(err.key, "plugins.router.call_timeout");

    let err = check(|c| c.authorizer.max_memory_mb = 0);
    assert_eq!(err.key, "plugins.authorizer.max_memory_mb");

    // Load refuses what validate refuses, naming the key too.
    let mut cfg = PluginsConfig::default();
    cfg.router.max_memory_mb = MAX_MEMORY_MB + 1;
    let text = Plugins::load(&cfg).unwrap_err().to_string();
    assert!(text.contains("plugins.router.max_memory_mb"), "{text}");
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let req = AgentAuthRequest { token: "agent-secret".into(), ..agent("") };
    assert!(!format!("{req:?}").contains("agent-secret"));
    let req = access("demo", "web", Some("alice-secret"));
    assert!(!format!("{req:?}").contains("alice-secret"));
    let mut cfg = PluginsConfig::default();
    cfg.authorizer.config = table(r#"api_key = "very-secret""#);
    let debug = format!("{cfg:?}");
    assert!(!debug.contains("very-secret") && debug.contains("api_key"), "{debug}");
}
