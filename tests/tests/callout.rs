//! The built-in callout authorizer (`builtin:authorizer-callout`) in a real host, against a
//! real decision endpoint (hyper on 127.0.0.1:0) that records every request: allows reach
//! the workload through a real agent, denials are 403 pages, decisions are cached with
//! separate allow and deny TTLs, and an endpoint that is down, slow or talks nonsense
//! fails closed with a prompt 503.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burrow_tests::clients;
use burrow_tests::workload::Workload;
use burrow_tests::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const HOST: &str = "web-a1.localhost";
const SECRET: &str = "callout-shared-secret-0123456789";
/// The plugin's timeout for the POST: short, so the slow-endpoint test is quick, and well
/// below the slot's `call_timeout` (3s), so a slow endpoint is the plugin's timeout
/// firing, not the host killing the call.
const PLUGIN_TIMEOUT: Duration = Duration::from_millis(300);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// How the endpoint answers.
#[derive(Clone)]
enum Behaviour {
    /// Alice (by her token's hash) is allowed, Bob is denied with 403, anyone else 401.
    Decide,
    /// This status and body, whatever was asked.
    Fixed(u16, &'static str),
    /// Waits this long before deciding (longer than the plugin's timeout).
    Slow(Duration),
}

/// One decision request as the endpoint received it.
#[derive(Clone, Debug)]
struct Recorded {
    authorization: Option<String>,
    body: serde_json::Value,
}

/// The control plane's decision endpoint.
struct Endpoint {
    addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Endpoint {
    async fn start(behaviour: Behaviour) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let (b, r) = (behaviour.clone(), recorded.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (b, r) = (b.clone(), r.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(req, b.clone(), r.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Endpoint { addr, behaviour, recorded, task }
    }

    fn url(&self) -> String {
        format!("http://{}/internal/burrow/authorize", self.addr)
    }

    fn hits(&self) -> usize {
        self.recorded.lock().unwrap().len()
    }

    fn last(&self) -> Recorded {
        self.recorded.lock().unwrap().last().cloned().expect("the endpoint was asked")
    }

    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    behaviour: Arc<Mutex<Behaviour>>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let authorization = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    recorded.lock().unwrap().push(Recorded { authorization, body: body.clone() });
    let behaviour = behaviour.lock().unwrap().clone();
    let (status, text) = match behaviour {
        Behaviour::Fixed(status, text) => (status, text.to_owned()),
        Behaviour::Slow(delay) => {
            tokio::time::sleep(delay).await;
            (200, decide(&body))
        }
        Behaviour::Decide => (200, decide(&body)),
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    Ok(response)
}

/// The endpoint's policy: it knows its users by their tokens' SHA-256, as a control
/// plane storing token digests does.
fn decide(body: &serde_json::Value) -> String {
    let hash = body["credential"]["sha256"].as_str().unwrap_or_default();
    if hash == sha256_hex(ALICE_TOKEN) {
        r#"{"allow": true, "principal": {"id": "alice", "groups": ["dev"]}}"#.into()
    } else if hash == sha256_hex(BOB_TOKEN) {
        r#"{"allow": false, "status": 403, "reason": "bob is not a member of this project"}"#.into()
    } else {
        r#"{"allow": false, "status": 401, "reason": "log in to the control plane"}"#.into()
    }
}

/// A host whose authorizer is the built-in callout plugin aimed at `url` (whose address
/// `allow` is on the slot's HTTP allowlist), agent a1 from the static agent list.
fn callout_host(url: &str, allow: SocketAddr, allow_ttl: &str, deny_ttl: &str) -> burrow_host::Config {
    let authorizer = format!(
        r#"source = "builtin:authorizer-callout"
call_timeout = "{call_timeout}ms"
config = {{ url = "{url}", secret = "{SECRET}", timeout = "{timeout}ms", cache_allow_ttl = "{allow_ttl}", cache_deny_ttl = "{deny_ttl}" }}
[plugins.authorizer.http]
allow = ["{allow}"]
timeout = "2s""#,
        call_timeout = CALL_TIMEOUT.as_millis(),
        timeout = PLUGIN_TIMEOUT.as_millis(),
    );
    let agents = format!(
        "[plugins.agents]\nconfig = {{ agents = [{{ id = \"{AGENT}\", token_sha256 = \"{}\" }}] }}",
        sha256_hex(TOKEN)
    );
    ConfigParts { authorizer, extra: agents, ..Default::default() }.build()
}

/// A host, its agent a1 and the agent's workload (service `web`).
struct Setup {
    host: TestHost,
    workload: Workload,
    _agent: burrow_agent::AgentHandle,
}

async fn setup(config: burrow_host::Config) -> Setup {
    let host = TestHost::start(config).await;
    let workload = Workload::start("callout").await;
    let agent = burrow_agent::spawn(agent_config(&host.agent_url("grpc"), TOKEN, &[workload.service("web")]));
    wait_connected(&agent).await;
    Setup { host, workload, _agent: agent }
}

/// `GET path` on the workspace with `token` as bearer (none: anonymous). Every answer
/// must come well within the time a user would wait.
async fn get(s: &Setup, path: &str, token: Option<&str>) -> (StatusCode, String, Duration) {
    let started = Instant::now();
    let mut client = clients::connect(s.host.ingress_addr, &clients::Mode::h1()).await;
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        client.request("GET", HOST, path, &headers, clients::empty()),
    )
    .await
    .expect("the ingress answers");
    let (status, _, body) = clients::collect(response).await;
    (status, String::from_utf8_lossy(&body).into_owned(), started.elapsed())
}

/// Sends requests until the endpoint has been asked more than `hits` times (the cached
/// decision expired), failing after `limit`.
async fn until_asked_again(s: &Setup, endpoint: &Endpoint, token: &str, hits: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while endpoint.hits() == hits {
        assert!(Instant::now() < deadline, "the cached decision was still used after {limit:?}");
        let (status, body, _) = get(s, "/hello", Some(token)).await;
        assert!(status == StatusCode::OK || status == StatusCode::FORBIDDEN, "{status}: {body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn callout_allows_through_to_the_workload_and_sends_only_hashes() {
    let endpoint = Endpoint::start(Behaviour::Decide).await;
    let s = setup(callout_host(&endpoint.url(), endpoint.addr, "30s", "5s")).await;

    let (status, body, _) = get(&s, "/hello", Some(ALICE_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "hello from callout");

    assert_eq!(endpoint.hits(), 1);
    let asked = endpoint.last();
    assert_eq!(
        asked.authorization.as_deref(),
        Some(format!("Bearer {SECRET}").as_str()),
        "the endpoint can trust the caller"
    );
    let b = &asked.body;
    assert_eq!(b["version"], 1);
    assert_eq!(b["action"], "http");
    assert_eq!(
        b["workload"],
        serde_json::json!({"kind": "workspace", "id": AGENT, "agent_id": AGENT, "service": "web"})
    );
    assert_eq!(b["credential"], serde_json::json!({"kind": "bearer", "sha256": sha256_hex(ALICE_TOKEN)}));
    assert_eq!(
        (b["host"].as_str(), b["method"].as_str(), b["path"].as_str()),
        (Some(HOST), Some("GET"), Some("/hello"))
    );
    assert!(b["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{b}");
    assert!(b["agent_labels"].is_object(), "{b}");
    assert!(!b.to_string().contains(ALICE_TOKEN), "never the raw token: {b}");

    // The control plane's credential does not reach the workload.
    let (status, headers, _) = get(&s, "/headers", Some(ALICE_TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let headers: serde_json::Value = serde_json::from_str(&headers).unwrap();
    assert!(headers.get("authorization").is_none(), "{headers}");
}

#[tokio::test]
async fn callout_denials_are_403_and_401_pages() {
    let endpoint = Endpoint::start(Behaviour::Decide).await;
    let s = setup(callout_host(&endpoint.url(), endpoint.addr, "30s", "5s")).await;

    let (status, body, _) = get(&s, "/hello", Some(BOB_TOKEN)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("bob is not a member of this project"), "the endpoint's reason is shown: {body}");

    // Anonymous: asked with a null credential, denied 401.
    let (status, body, _) = get(&s, "/hello", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(endpoint.last().body["credential"], serde_json::Value::Null);
    assert_eq!(endpoint.hits(), 2);
    assert_eq!(s.workload.connections(), 0, "nothing denied reached the workload");
}

#[tokio::test]
async fn callout_caches_allows_and_denies_with_their_own_ttls() {
    const ALLOW_TTL: Duration = Duration::from_secs(4);
    const DENY_TTL: Duration = Duration::from_secs(1);
    let endpoint = Endpoint::start(Behaviour::Decide).await;
    let s = setup(callout_host(&endpoint.url(), endpoint.addr, "4s", "1s")).await;

    let started = Instant::now();
    assert_eq!(get(&s, "/hello", Some(ALICE_TOKEN)).await.0, StatusCode::OK);
    assert_eq!(get(&s, "/hello", Some(BOB_TOKEN)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(endpoint.hits(), 2);

    // Within both TTLs: the cache answers; the endpoint is not asked.
    assert_eq!(get(&s, "/hello", Some(ALICE_TOKEN)).await.0, StatusCode::OK);
    assert_eq!(get(&s, "/headers", Some(ALICE_TOKEN)).await.0, StatusCode::OK, "another path, same decision");
    assert_eq!(get(&s, "/hello", Some(BOB_TOKEN)).await.0, StatusCode::FORBIDDEN);
    assert!(
        started.elapsed() < DENY_TTL,
        "the checks above ran within the deny TTL ({:?})",
        started.elapsed()
    );
    assert_eq!(endpoint.hits(), 2, "cached decisions do not reach the endpoint");

    // Bob's deny expires first: polling him reaches the endpoint again...
    until_asked_again(&s, &endpoint, BOB_TOKEN, 2, Duration::from_secs(10)).await;
    assert!(started.elapsed() >= DENY_TTL, "the deny was not reused for its whole TTL");
    assert_eq!(endpoint.last().body["credential"]["sha256"], sha256_hex(BOB_TOKEN));
    // ...while Alice's allow still holds.
    let hits = endpoint.hits();
    assert_eq!(get(&s, "/hello", Some(ALICE_TOKEN)).await.0, StatusCode::OK);
    if started.elapsed() < ALLOW_TTL {
        assert_eq!(endpoint.hits(), hits, "the allow is cached longer than the deny");
    }

    // And then hers expires too: no stale serving.
    until_asked_again(&s, &endpoint, ALICE_TOKEN, endpoint.hits(), Duration::from_secs(15)).await;
    assert!(started.elapsed() >= ALLOW_TTL);
    assert_eq!(endpoint.last().body["credential"]["sha256"], sha256_hex(ALICE_TOKEN));

    // A revocation shows once the allow expires: the endpoint now denies Alice.
    endpoint.set(Behaviour::Fixed(200, r#"{"allow": false, "status": 403, "reason": "revoked"}"#));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body, _) = get(&s, "/hello", Some(ALICE_TOKEN)).await;
        if status == StatusCode::FORBIDDEN {
            assert!(body.contains("revoked"), "{body}");
            break;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(Instant::now() < deadline, "the revoked allow was still served");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// 503 for the request, promptly, with nothing reaching the workload.
async fn fails_closed(s: &Setup, what: &str) {
    let (status, body, took) = get(s, "/hello", Some(ALICE_TOKEN)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
    assert!(body.contains("authorizer"), "{what}: the page names the failed step: {body}");
    assert!(took < CALL_TIMEOUT, "{what}: answered in {took:?}, not after the call timeout");
    assert_eq!(s.workload.connections(), 0, "{what}: nothing reached the workload");
}

#[tokio::test]
async fn callout_fails_closed_when_the_endpoint_is_down() {
    // A port that was just free: nothing listens there, so connecting is refused.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let s = setup(callout_host(&format!("http://{addr}/authorize"), addr, "30s", "5s")).await;
    for _ in 0..3 {
        fails_closed(&s, "connection refused").await;
    }
}

#[tokio::test]
async fn callout_fails_closed_when_the_endpoint_is_slow() {
    let endpoint = Endpoint::start(Behaviour::Slow(Duration::from_secs(5))).await;
    let s = setup(callout_host(&endpoint.url(), endpoint.addr, "30s", "5s")).await;
    fails_closed(&s, "slow endpoint").await;
    assert_eq!(endpoint.hits(), 1, "the endpoint was asked, and did not answer in time");
    // The failure is not cached: the next request asks again, and fails closed again.
    fails_closed(&s, "slow endpoint, again").await;
    assert_eq!(endpoint.hits(), 2);
    // Once the endpoint is back, the same user gets in.
    endpoint.set(Behaviour::Decide);
    let (status, body, _) = get(&s, "/hello", Some(ALICE_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn callout_malformed_answers_deny() {
    let endpoint = Endpoint::start(Behaviour::Decide).await;
    let s = setup(callout_host(&endpoint.url(), endpoint.addr, "30s", "5s")).await;
    let answers: [(u16, &'static str); 6] = [
        (200, "allow"),
        (200, r#"{"allowed": true}"#),
        (200, r#"{"allow": "true"}"#),
        (200, r#"{"allow": false}"#),
        (200, r#"{"allow": false, "status": 200}"#),
        (500, r#"{"allow": true}"#),
    ];
    for (i, (status, text)) in answers.into_iter().enumerate() {
        endpoint.set(Behaviour::Fixed(status, text));
        fails_closed(&s, &format!("HTTP {status} {text}")).await;
        assert_eq!(endpoint.hits(), i + 1, "nothing was cached: each request asked");
    }
}
