//! The plugin contract's round trip through a real component: every contract type means
//! the same to the host and to a guest built with the SDK.
//!
//! Both sides share the types (crate `burrow-plugin-contract`), but each converts them to
//! and from its own generated WIT bindings (`host/plugins/src/convert.rs`,
//! `plugins/sdk/src/convert.rs`). The test plugin `plugins/test-contract` logs the serde
//! JSON of every request it decoded and answers with values this test hands it in its
//! config; the test compares both with its own serde JSON. A field dropped, swapped or
//! renamed in a conversion, or a variant mapped to another, fails here. The `every_*`
//! helpers match exhaustively, so a new variant does not compile until it is covered.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use burrow_host::plugins::types::*;
use burrow_host::plugins::{Plugins, PluginsConfig, PluginsOptions};
use serde::Serialize;
use serde_json::{json, Value};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Must match `test_contract::ECHO`.
const ECHO: &str = "contract-echo";
/// Must match `test_contract::DEFAULT_KIND`.
const KIND: &str = "contract";

// ---- capturing the plugin's log --------------------------------------------------

/// Plugin log lines as `(plugin label, message)`; the host logs them through `tracing`.
type Lines = Arc<Mutex<Vec<(String, String)>>>;

struct Capture(Lines);

#[derive(Default)]
struct Fields {
    plugin: String,
    message: String,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "plugin" => self.plugin = value.to_string(),
            "message" => self.message = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "plugin" => self.plugin = format!("{value:?}"),
            "message" => self.message = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.message.starts_with(ECHO) {
            self.0.lock().unwrap().push((fields.plugin, fields.message));
        }
    }
}

fn lines() -> Lines {
    static LINES: OnceLock<Lines> = OnceLock::new();
    LINES
        .get_or_init(|| {
            let lines = Lines::default();
            let subscriber = tracing_subscriber::registry().with(Capture(lines.clone()));
            tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
            lines
        })
        .clone()
}

/// Removes and returns the echoes of slot `name`: `(call, what the guest decoded)`.
fn drain(name: &str) -> Vec<(String, Value)> {
    let lines = lines();
    let mut lines = lines.lock().unwrap();
    let mut taken = Vec::new();
    lines.retain(|(plugin, message)| {
        if !plugin.split(['@', ' ']).any(|part| part == name) {
            return true;
        }
        let rest = &message[ECHO.len()..].trim_start();
        let (call, json) = rest.split_once(' ').expect("echo: call and JSON");
        taken.push((call.to_string(), serde_json::from_str(json).expect("echo JSON")));
        false
    });
    taken
}

/// Asserts that the one echo slot `name` logged since the last drain is `call` with
/// exactly `sent`'s serde JSON.
fn assert_echo<T: Serialize + std::fmt::Debug>(name: &str, call: &str, sent: &T) {
    let echoes = drain(name);
    let want = serde_json::to_value(sent).unwrap();
    assert_eq!(echoes.len(), 1, "{call}: one echo expected, got {echoes:?}");
    assert_eq!(echoes[0].0, call);
    assert_eq!(echoes[0].1, want, "{call}: the guest decoded something else than the host sent ({sent:?})");
}

// ---- loading ----------------------------------------------------------------------

fn artifact() -> String {
    let path = std::path::Path::new(burrow_host::plugins::ARTIFACTS_DIR).join("test_contract.wasm");
    assert!(path.is_file(), "plugin not built: {}", path.display());
    path.display().to_string()
}

/// test_contract in all three slots, named `<prefix>-authorizer`, `-workload` and
/// `-router`, answering with `answers` (call → case → answer).
async fn load(prefix: &str, answers: &Value) -> Arc<Plugins> {
    let _ = lines(); // capture from the first canary call on
    let source = toml::Value::String(artifact());
    let config = format!("config = {{ answers = {} }}", toml::Value::String(answers.to_string()));
    let text = format!(
        "[authorizer]\nname = \"{prefix}-authorizer\"\nsource = {source}\n{config}\n\
         [[workload]]\nname = \"{prefix}-workload\"\nsource = {source}\n{config}\n\
         [router]\nname = \"{prefix}-router\"\nsource = {source}\n{config}\n"
    );
    let cfg: PluginsConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let plugins =
        Plugins::load(&cfg, PluginsOptions::default()).await.unwrap_or_else(|e| panic!("load: {e}"));
    for slot in ["authorizer", "workload", "router"] {
        drain(&format!("{prefix}-{slot}")); // the canary's probe
    }
    plugins
}

// ---- every variant ----------------------------------------------------------------

fn every_action() -> Vec<Action> {
    let all = vec![
        Action::Http,
        Action::Websocket,
        Action::Upgrade,
        Action::SshSession,
        Action::PortForward,
        Action::Terminal,
    ];
    for action in &all {
        // A new variant fails to compile here until it is listed above.
        match action {
            Action::Http
            | Action::Websocket
            | Action::Upgrade
            | Action::SshSession
            | Action::PortForward
            | Action::Terminal => {}
        }
    }
    all
}

fn every_credential() -> Vec<Credential> {
    let all = vec![
        Credential::None,
        Credential::Bearer("bearer-token".into()),
        Credential::Cookie { name: "session".into(), value: "cookie-value".into() },
        Credential::SshPublicKey {
            user: "ssh-user".into(),
            algorithm: "ssh-ed25519".into(),
            key: vec![0, 1, 2, 254, 255],
            fingerprint: "SHA256:abc".into(),
        },
        Credential::SshPassword { user: "pw-user".into(), password: "hunter2".into() },
    ];
    for credential in &all {
        match credential {
            Credential::None
            | Credential::Bearer(_)
            | Credential::Cookie { .. }
            | Credential::SshPublicKey { .. }
            | Credential::SshPassword { .. } => {}
        }
    }
    all
}

fn principal() -> Principal {
    Principal {
        id: "alice".into(),
        groups: vec!["staff".into(), "ops".into()],
        labels: vec![("team".into(), "infra".into()), ("tier".into(), "1".into())],
    }
}

fn every_agent_outcome() -> Vec<AgentAuthOutcome> {
    let identity = |expires_at| AgentIdentity {
        agent_id: "agent-1".into(),
        workload_kind: "ci-job".into(),
        workload_id: "job-7".into(),
        expires_at,
        labels: vec![("zone".into(), "a".into()), ("pool".into(), "gpu".into())],
    };
    let all = vec![
        AgentAuthOutcome::Accepted(identity(Some(1_764_059_400_123))),
        AgentAuthOutcome::Accepted(identity(None)),
        AgentAuthOutcome::Rejected("unknown agent".into()),
    ];
    for outcome in &all {
        match outcome {
            AgentAuthOutcome::Accepted(_) | AgentAuthOutcome::Rejected(_) => {}
        }
    }
    all
}

fn every_user_outcome() -> Vec<UserAuthOutcome> {
    let all = vec![
        UserAuthOutcome::Authenticated(principal()),
        UserAuthOutcome::Anonymous,
        UserAuthOutcome::Rejected("expired cookie".into()),
    ];
    for outcome in &all {
        match outcome {
            UserAuthOutcome::Authenticated(_) | UserAuthOutcome::Anonymous | UserAuthOutcome::Rejected(_) => {
            }
        }
    }
    all
}

fn every_decision() -> Vec<Decision> {
    let all = vec![
        Decision::Allow { strip_credentials: false },
        Decision::Allow { strip_credentials: true },
        Decision::Deny { status: 401, reason: "log in".into() },
        Decision::Deny { status: 403, reason: "not yours".into() },
    ];
    for decision in &all {
        match decision {
            Decision::Allow { .. } | Decision::Deny { .. } => {}
        }
    }
    all
}

fn target() -> Target {
    Target {
        workload_kind: "workspace".into(),
        workload_id: "ws-1".into(),
        agent_id: "agent-1".into(),
        service: "ide".into(),
    }
}

fn route_request(session_key: &str) -> RouteRequest {
    RouteRequest {
        target: target(),
        session_key: session_key.into(),
        candidates: vec![
            RouteCandidate { replica_id: "r1".into(), local: true, load: 0, age_ms: 12 },
            RouteCandidate { replica_id: "r2".into(), local: false, load: 7, age_ms: u64::MAX },
            RouteCandidate { replica_id: "r3".into(), local: false, load: u32::MAX, age_ms: 0 },
        ],
    }
}

// ---- requests: host → guest ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_requests_reach_the_guest_unchanged() {
    let plugins = load("in", &json!({})).await;
    let (authorizer, workload, router) = ("in-authorizer", "in-workload", "in-router");

    let hello = AgentHello {
        token: "agent-token".into(),
        agent_version: "1.2.3".into(),
        replica_id: "replica-9".into(),
        remote_addr: "192.0.2.7:4000".into(),
        services: vec!["ide".into(), "ssh".into()],
        metadata: vec![("x-zone".into(), "a".into()), ("x-rack".into(), "r1".into())],
    };
    plugins.authenticate_agent(&hello).await.unwrap();
    assert_echo(authorizer, "authenticate_agent", &hello);
    plugins.authenticate_agent(&AgentHello::default()).await.unwrap();
    assert_echo(authorizer, "authenticate_agent", &AgentHello::default());

    for credential in every_credential() {
        for action in every_action() {
            let req = UserAuthRequest {
                credential: credential.clone(),
                client_addr: "198.51.100.1:5000".into(),
                host: "web-ws1.example.com".into(),
                action,
            };
            plugins.authenticate_user(&req).await.unwrap();
            assert_echo(authorizer, "authenticate_user", &req);
        }
    }

    for principal in [None, Some(principal())] {
        for action in every_action() {
            let req = AuthorizeRequest {
                principal: principal.clone(),
                target: target(),
                action,
                client_addr: "198.51.100.1:5000".into(),
                host: "web-ws1.example.com".into(),
                method: "POST".into(),
                path: "/api?q=1".into(),
                agent_labels: vec![("zone".into(), "a".into()), ("pool".into(), "gpu".into())],
            };
            plugins.authorize(&req).await.unwrap();
            assert_echo(authorizer, "authorize", &req);
        }
    }

    for action in every_action() {
        let req = ResolveRequest {
            action,
            host: "web-ws1.example.com".into(),
            path: "/p".into(),
            method: "GET".into(),
            ssh_user: "workspace-42".into(),
            port: 8080,
        };
        plugins.resolve(&req).await.unwrap();
        assert_echo(workload, "resolve", &req);
    }

    let expiry = ExpiryRequest {
        workload_id: "ws-1".into(),
        agent_id: "agent-1".into(),
        connected_at: 1_764_059_400_456,
        agent_labels: vec![("zone".into(), "a".into())],
    };
    plugins.expired(KIND, &expiry).await.unwrap();
    assert_echo(workload, "expired", &expiry);

    let event = AgentEvent {
        agent_id: "agent-1".into(),
        workload_id: "ws-1".into(),
        replica_id: "replica-9".into(),
        host_replica: "host-2".into(),
        remote_addr: "192.0.2.7:4000".into(),
        at: 1_764_059_400_789,
        agent_labels: vec![("zone".into(), "a".into())],
    };
    for (connected, call) in [(true, "agent_connected"), (false, "agent_disconnected")] {
        // Fire and forget: the hook runs on its own task.
        plugins.agent_event(KIND, connected, event.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        while lines().lock().unwrap().iter().all(|(plugin, _)| !plugin.contains(workload)) {
            assert!(Instant::now() < deadline, "{call}: no echo");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_echo(workload, call, &event);
    }

    let req = route_request("session-1");
    plugins.try_route(&req).await.unwrap();
    assert_echo(router, "route", &req);
}

// ---- answers: guest → host ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_answers_reach_the_host_unchanged() {
    let agent_outcomes = every_agent_outcome();
    let user_outcomes = every_user_outcome();
    let decisions = every_decision();
    let resolutions = [
        Some(Resolved { workload_id: "ws-1".into(), agent_id: "agent-1".into(), service: "ide".into() }),
        None,
    ];
    let orders: [Vec<u32>; 3] = [vec![2, 0, 1], vec![1], vec![]];
    // Case `i` of every call answers with the i-th value.
    let cases = |values: Vec<Value>| -> Value {
        Value::Object(values.into_iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect())
    };
    let answers = json!({
        "authenticate_agent": cases(agent_outcomes.iter().map(js).collect()),
        "authenticate_user": cases(user_outcomes.iter().map(js).collect()),
        "authorize": cases(decisions.iter().map(js).collect()),
        "resolve": cases(resolutions.iter().map(js).collect()),
        "expired": cases(vec![json!(true), json!(false)]),
        "route": cases(orders.iter().map(js).collect()),
    });
    let plugins = load("out", &answers).await;

    for (i, want) in agent_outcomes.iter().enumerate() {
        let hello = AgentHello { token: "t".into(), agent_version: i.to_string(), ..AgentHello::default() };
        assert_eq!(&plugins.authenticate_agent(&hello).await.unwrap(), want);
    }
    let user = |case: usize| UserAuthRequest {
        credential: Credential::Bearer("t".into()),
        client_addr: "198.51.100.1:5000".into(),
        host: case.to_string(),
        action: Action::Http,
    };
    for (i, want) in user_outcomes.iter().enumerate() {
        assert_eq!(&plugins.authenticate_user(&user(i)).await.unwrap(), want);
    }
    let authorize = |case: usize, principal: Option<&Principal>| AuthorizeRequest {
        principal: principal.cloned(),
        target: target(),
        action: Action::Http,
        client_addr: String::new(),
        host: String::new(),
        method: case.to_string(),
        path: String::new(),
        agent_labels: Vec::new(),
    };
    for (i, want) in decisions.iter().enumerate() {
        assert_eq!(&plugins.authorize(&authorize(i, None)).await.unwrap(), want);
        // Both calls in one instance, as a user request makes them.
        let verdict = plugins.authorize_user(&user(0), move |p| authorize(i, p)).await.unwrap();
        assert_eq!(verdict.who, user_outcomes[0]);
        assert_eq!(verdict.decision.as_ref(), Some(want));
    }
    for (i, want) in resolutions.iter().enumerate() {
        let req = ResolveRequest {
            action: Action::Http,
            host: String::new(),
            path: String::new(),
            method: i.to_string(),
            ssh_user: String::new(),
            port: 0,
        };
        let got = plugins.resolve(&req).await.unwrap();
        // The host adds the kind of the workload plugin that resolved it.
        let want = want.clone().map(|r| Target {
            workload_kind: KIND.into(),
            workload_id: r.workload_id,
            agent_id: r.agent_id,
            service: r.service,
        });
        assert_eq!(got, want);
    }
    for (i, want) in [true, false].into_iter().enumerate() {
        let req = ExpiryRequest {
            workload_id: i.to_string(),
            agent_id: "a".into(),
            connected_at: 0,
            agent_labels: Vec::new(),
        };
        assert_eq!(plugins.expired(KIND, &req).await.unwrap(), want);
    }
    for (i, want) in orders.iter().enumerate() {
        let got = plugins.try_route(&route_request(&i.to_string())).await.unwrap();
        assert_eq!(got, want.iter().map(|&i| i as usize).collect::<Vec<_>>());
    }
    assert_eq!(plugins.workload_kinds(), [KIND]);
}

fn js<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("contract types serialize")
}
