//! The plugin runtime through its public API (`burrow_host::plugins::Plugins`), with real
//! compiled components: typed errors for every limit, quarantine, warm instances, the
//! key-value store, and outbound HTTP reaching only allow-listed hosts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use burrow_host::plugins::types::{Action, Credential, UserAuthOutcome, UserAuthRequest};
use burrow_host::plugins::{
    PluginError, PluginSlotConfig, PluginSource, Plugins, PluginsConfig, PluginsOptions,
};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn artifact(name: &str) -> PathBuf {
    let path = Path::new(burrow_host::plugins::ARTIFACTS_DIR).join(name);
    assert!(path.is_file(), "plugin not built: {}", path.display());
    path
}

fn table(text: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `[plugins]` with `wasm` as the authorizer, configured by `slot` (TOML keys of the slot)
/// and `runtime` (TOML keys of `[plugins.runtime]`).
fn authorizer_config(wasm: &Path, slot: &str, runtime: &str) -> PluginsConfig {
    let text =
        format!("[runtime]\n{runtime}\n[authorizer]\nsource = {:?}\n{slot}\n", wasm.display().to_string());
    let cfg: PluginsConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    cfg.validate().unwrap_or_else(|e| panic!("{e}\n{text}"));
    cfg
}

async fn load(cfg: &PluginsConfig) -> std::sync::Arc<Plugins> {
    Plugins::load(cfg, PluginsOptions::default()).await.unwrap_or_else(|e| panic!("load: {e}"))
}

fn user(credential: Credential) -> UserAuthRequest {
    UserAuthRequest {
        credential,
        client_addr: "127.0.0.1:1".into(),
        host: "web-a1.localhost".into(),
        action: Action::Http,
    }
}

/// test-misbehave in `mode`, loaded with the given limits. Its `init` passes (the mode
/// only acts in calls), so the canary succeeds and calls fail.
async fn misbehaving(mode: &str, slot: &str, runtime: &str) -> std::sync::Arc<Plugins> {
    let slot =
        format!("{slot}\nconfig = {{ mode = \"{mode}\", agent_id = \"a1\", agent_token_sha256 = \"00\" }}");
    load(&authorizer_config(&artifact("test_misbehave.wasm"), &slot, runtime)).await
}

async fn call_fails(plugins: &Plugins) -> PluginError {
    plugins.authenticate_user(&user(Credential::Bearer("x".into()))).await.expect_err("the call must fail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_is_a_typed_error_naming_plugin_and_version() {
    let plugins = misbehaving("memory", "max_memory_mb = 16", "").await;
    let sha = plugins.version_info("test_misbehave").unwrap().sha256;
    match call_fails(&plugins).await {
        PluginError::Memory { plugin, sha256, limit_bytes } => {
            assert!(plugin.contains("test_misbehave"), "{plugin}");
            assert!(sha.starts_with(&sha256), "{sha256} names the version");
            assert_eq!(limit_bytes, 16 * 1024 * 1024);
        }
        other => panic!("memory bomb: {other}"),
    }

    let plugins = misbehaving("loop", "call_timeout = \"50ms\"", "").await;
    match call_fails(&plugins).await {
        PluginError::Timeout { key, limit, .. } => {
            assert_eq!((key, limit), ("call_timeout", Duration::from_millis(50)))
        }
        other => panic!("infinite loop: {other}"),
    }

    let plugins = misbehaving("recursion", "", "max_wasm_stack_kb = 256").await;
    match call_fails(&plugins).await {
        PluginError::StackOverflow { limit_bytes, .. } => assert_eq!(limit_bytes, 256 * 1024),
        other => panic!("deep recursion: {other}"),
    }

    let plugins = misbehaving("loop", "call_timeout = \"5s\"\nfuel = 1000000", "fuel = true").await;
    match call_fails(&plugins).await {
        PluginError::Fuel { limit, .. } => assert_eq!(limit, 1_000_000),
        other => panic!("fuel: {other}"),
    }

    let plugins = misbehaving("trap", "", "").await;
    match call_fails(&plugins).await {
        PluginError::Trap { message, .. } => {
            assert!(message.contains("test-misbehave"), "the panic message: {message}")
        }
        other => panic!("trap: {other}"),
    }

    // Sleeping blocks in the host, out of the epoch's reach: the call deadline still ends it.
    let plugins = misbehaving("sleep", "call_timeout = \"100ms\"", "").await;
    assert!(matches!(call_fails(&plugins).await, PluginError::Timeout { .. }));
}

/// test-misbehave allowing everyone, whose `init` keeps a CPU busy for `init_ms`, with a
/// 50 ms `call_timeout` and the given `init_timeout`.
fn slow_init(init_ms: u64, init_timeout: &str) -> PluginsConfig {
    let slot = format!(
        "call_timeout = \"50ms\"\ninit_timeout = \"{init_timeout}\"\nconfig = {{ mode = \"ok\", agent_id = \"a1\", \
         agent_token_sha256 = \"00\", init_ms = {init_ms} }}"
    );
    authorizer_config(&artifact("test_misbehave.wasm"), &slot, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_longer_than_call_timeout_is_bounded_by_init_timeout_and_calls_still_get_their_own_time() {
    // The canary's init (300 ms, six call timeouts) passes under init_timeout.
    let plugins = load(&slow_init(300, "10s")).await;
    // Four users at once (per-user: none may take another's instance, nor the canary's):
    // each call waits for its own 300 ms init, then runs within its 50 ms.
    let requests: Vec<_> = (0..4).map(|i| user(Credential::Bearer(format!("user-{i}")))).collect();
    let calls = requests.iter().map(|request| plugins.authenticate_user(request));
    for (i, outcome) in futures_util::future::join_all(calls).await.into_iter().enumerate() {
        match outcome {
            Ok(UserAuthOutcome::Authenticated(_)) => {}
            other => panic!("user-{i}: {other:?}"),
        }
    }

    // An init that never ends is stopped at init_timeout: the canary fails, naming it.
    let Err(err) = Plugins::load(&slow_init(3_600_000, "200ms"), PluginsOptions::default()).await else {
        panic!("an endless init must refuse the plugin");
    };
    let PluginError::Canary { step: "init", error, .. } = &err else { panic!("{err}") };
    match &**error {
        PluginError::Timeout { key: "init_timeout", limit, .. } => {
            assert_eq!(*limit, Duration::from_millis(200))
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("exceeded its init_timeout of 200ms"), "{err}");
}

#[test]
fn call_and_init_timeouts_out_of_range_are_refused_naming_the_key() {
    for (key, value) in
        [("call_timeout", "0s"), ("call_timeout", "2m"), ("init_timeout", "0s"), ("init_timeout", "2m")]
    {
        let text = format!("[authorizer]\nsource = \"builtin:authorizer-static\"\n{key} = \"{value}\"\n");
        let cfg: PluginsConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let err = cfg.validate().expect_err(&text).to_string();
        assert!(err.contains(key) && err.contains("must be between 1ms and 1m"), "{key} = {value}: {err}");
    }
}

#[tokio::test]
async fn a_plugin_that_keeps_trapping_is_quarantined_then_tried_again() {
    let runtime =
        "[runtime.breaker]\nfailures = 3\nwindow = \"30s\"\ncooldown = \"300ms\"\nmax_cooldown = \"10s\"";
    let plugins = misbehaving("trap", "", runtime).await;
    for _ in 0..3 {
        assert!(matches!(call_fails(&plugins).await, PluginError::Trap { .. }));
    }
    // Now refused at once, without running the plugin.
    match call_fails(&plugins).await {
        PluginError::Quarantined { plugin, .. } => assert!(plugin.contains("test_misbehave")),
        other => panic!("expected quarantine, got {other}"),
    }
    let status = plugins.status();
    assert_eq!(status[0].state, "quarantined");
    assert!(status[0].quarantined_for_ms.is_some());
    // After the cooldown one trial call runs (and traps again, so quarantine resumes).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(call_fails(&plugins).await, PluginError::Trap { .. }));
    assert!(matches!(call_fails(&plugins).await, PluginError::Quarantined { .. }));
    // An authorizer fails closed throughout: no call ever succeeded.
}

#[tokio::test]
async fn warm_instances_are_reused_and_discarded_after_a_trap() {
    // test_http in `kv` mode counts calls in the kv store and in a per-instance counter;
    // the principal it returns is "calls=<kv count>;instance=<instance count>".
    let slot = "instances = \"warm\"\nwarm_pool = 1\nmax_concurrent = 1\nconfig = { mode = \"kv\" }";
    let plugins = load(&authorizer_config(&artifact("test_http.wasm"), slot, "")).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        match plugins.authenticate_user(&user(Credential::Bearer("t".into()))).await.unwrap() {
            UserAuthOutcome::Authenticated(p) => ids.push(p.id),
            other => panic!("{other:?}"),
        }
    }
    // The kv count grows across calls; one warm instance served them all.
    assert!(ids[0].starts_with("calls=1;"), "{ids:?}");
    assert!(ids[2].starts_with("calls=3;"), "{ids:?}");
    assert!(ids[2].ends_with("instance=3"), "the warm instance kept its state: {ids:?}");

    // Fresh instances share nothing but the kv store.
    let slot = "instances = \"fresh\"\nconfig = { mode = \"kv\" }";
    let fresh = load(&authorizer_config(&artifact("test_http.wasm"), slot, "")).await;
    for expected in ["calls=1;instance=1", "calls=2;instance=1"] {
        match fresh.authenticate_user(&user(Credential::Bearer("t".into()))).await.unwrap() {
            UserAuthOutcome::Authenticated(p) => assert_eq!(p.id, expected),
            other => panic!("{other:?}"),
        }
    }
}

/// `authenticate-user` of the leaky `remember` mode: the principal id it returns.
async fn remembered(plugins: &Plugins, token: &str) -> String {
    match plugins.authenticate_user(&user(Credential::Bearer(token.into()))).await.unwrap() {
        UserAuthOutcome::Authenticated(p) => p.id,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn by_default_an_instance_never_serves_a_second_users_credential() {
    // test_http in `remember` mode keeps every token it sees in its globals and reports
    // them: the worst a plugin can do with instance state. Default slot config.
    let config = authorizer_config(&artifact("test_http.wasm"), "config = { mode = \"remember\" }", "");
    let plugins = load(&config).await;
    assert_eq!(remembered(&plugins, "alice-token").await, "me=alice-token;seen=-");
    assert_eq!(
        remembered(&plugins, "bob-token").await,
        "me=bob-token;seen=-",
        "bob never sees alice's token"
    );
    // Instances are reused (that is what makes the default fast), but only for the same
    // credential.
    assert_eq!(remembered(&plugins, "alice-token").await, "me=alice-token;seen=alice-token");
    assert_eq!(remembered(&plugins, "bob-token").await, "me=bob-token;seen=bob-token");
    // Many users at once, more than the pool holds: still nobody sees anyone else.
    let calls = (0..64).map(|i| {
        let plugins = plugins.clone();
        tokio::spawn(async move { (i % 24, remembered(&plugins, &format!("user{}", i % 24)).await) })
    });
    for call in calls {
        let (user, id) = call.await.unwrap();
        let seen = id.split_once(";seen=").expect("the principal format").1;
        assert!(seen == "-" || seen.split(',').all(|t| t == format!("user{user}")), "user{user} saw: {id}");
    }

    // With `instances = "warm"` the same plugin does leak: the opt-in the docs warn about.
    let slot = "instances = \"warm\"\nwarm_pool = 1\nmax_concurrent = 1\nconfig = { mode = \"remember\" }";
    let warm = load(&authorizer_config(&artifact("test_http.wasm"), slot, "")).await;
    remembered(&warm, "alice-token").await;
    assert_eq!(remembered(&warm, "bob-token").await, "me=bob-token;seen=alice-token");
}

/// A plain HTTP server on 127.0.0.1:0 answering every request with "alice"; counts hits.
async fn identity_server() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let auth = req.headers().get("authorization").cloned();
                    async move {
                        let body = match auth {
                            Some(v) if v == "Bearer good" => "alice\n",
                            _ => "nobody\n",
                        };
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn outbound_http_reaches_only_allow_listed_hosts() {
    let (addr, hits) = identity_server().await;
    let slot = |url: String, allow: &str| {
        format!("call_timeout = \"2s\"\nconfig = {{ url = {url:?} }}\n[authorizer.http]\nallow = [{allow}]\ntimeout = \"1s\"")
    };

    // Allowed: the exact address is on the list.
    let ok = load(&authorizer_config(
        &artifact("test_http.wasm"),
        &slot(format!("http://{addr}/whoami"), &format!("\"{addr}\"")),
        "",
    ))
    .await;
    match ok.authenticate_user(&user(Credential::Bearer("good".into()))).await.unwrap() {
        UserAuthOutcome::Authenticated(p) => assert_eq!(p.id, "alice"),
        other => panic!("{other:?}"),
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Refused: another host is listed, not this one.
    let other = load(&authorizer_config(
        &artifact("test_http.wasm"),
        &slot(format!("http://{addr}/whoami"), "\"gitlab.example.com\""),
        "",
    ))
    .await;
    match other.authenticate_user(&user(Credential::Bearer("good".into()))).await.unwrap() {
        UserAuthOutcome::Rejected(reason) => assert!(reason.to_lowercase().contains("denied"), "{reason}"),
        other => panic!("{other:?}"),
    }

    // Refused: `localhost` is listed but resolves to a loopback address that is not.
    let port = addr.port();
    let loopback = load(&authorizer_config(
        &artifact("test_http.wasm"),
        &slot(format!("http://localhost:{port}/whoami"), &format!("\"localhost:{port}\"")),
        "",
    ))
    .await;
    match loopback.authenticate_user(&user(Credential::Bearer("good".into()))).await.unwrap() {
        UserAuthOutcome::Rejected(reason) => {
            assert!(
                reason.to_lowercase().contains("prohibited") || reason.to_lowercase().contains("denied"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Neither refused request reached the server.
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_core_module_or_garbage_is_refused_with_advice() {
    let dir = std::env::temp_dir().join(format!("burrow-core-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let err = Plugins::load(&authorizer_config(&core, "", ""), PluginsOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("core WebAssembly module"), "{err}");
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"hello").unwrap();
    let err = Plugins::load(&authorizer_config(&junk, "", ""), PluginsOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("not a WebAssembly binary"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn builtin_workload_kinds_resolve_requests() {
    let cfg = PluginsConfig {
        workload: vec![
            PluginSlotConfig::with_source(
                PluginSource::Builtin("workload-workspace".into()),
                table("root_domains = [\"localhost\"]"),
            ),
            PluginSlotConfig::with_source(
                PluginSource::Builtin("workload-ci-job".into()),
                table("root_domains = [\"ci.localhost\"]"),
            ),
        ],
        ..PluginsConfig::default()
    };
    let plugins = load(&cfg).await;
    assert_eq!(plugins.workload_kinds(), ["workspace", "ci-job"]);
    let resolve = |host: &str| burrow_host::plugins::types::ResolveRequest {
        action: Action::Http,
        host: host.into(),
        path: "/".into(),
        method: "GET".into(),
        ssh_user: String::new(),
        port: 0,
    };
    let t = plugins.resolve(&resolve("web-demo.localhost")).await.unwrap().unwrap();
    assert_eq!(
        (t.workload_kind.as_str(), t.agent_id.as_str(), t.service.as_str()),
        ("workspace", "demo", "web")
    );
    assert!(plugins.resolve(&resolve("nothing.example")).await.unwrap().is_none());
}
