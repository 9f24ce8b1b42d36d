//! Browser sign-in with OpenID Connect, end to end: a real provider (`oidc-provider` under
//! node), a real host and agent, and a real headless Chromium. `cargo test sign_in` runs
//! the flow; `cargo test cookie` the session-cookie cases.

use burrow_host::time::now_ms;
use burrow_host_signin::{Purpose, Sealer, WorkloadSession};
use burrow_tests::browser::Browser;
use burrow_tests::clients::{self, Mode};
use burrow_tests::oidc::{provider_for_host, sign_in_table, Account, OidcProvider};
use burrow_tests::workload::Workload;
use burrow_tests::*;
use http::StatusCode;
use tokio::net::TcpListener;

const COOKIE_SECRET: &[u8] = b"sign-in-cookie-secret-0123456789abcdef";
const PAGE: &str = "waiting for the page";

/// A provider, a host whose sign-in points at it, workloads a1 (alice only) and a2
/// (alice and bob), and their agents.
struct Setup {
    provider: OidcProvider,
    host: TestHost,
    /// Other replicas of a cluster (with `start_cluster`), agents on none of them.
    others: Vec<TestHost>,
    port: u16,
    _workload: Workload,
    _agents: Vec<burrow_agent::AgentHandle>,
    _dir: burrow_tests::lifecycle::Dir,
}

impl Setup {
    async fn start() -> Setup {
        Self::start_with(None).await
    }

    /// `replicas` sharing `redis`, agents on the first only.
    async fn start_cluster(redis: &burrow_tests::redis::RedisServer, replicas: usize) -> Setup {
        Self::start_with(Some((redis, replicas))).await
    }

    async fn start_with(cluster: Option<(&burrow_tests::redis::RedisServer, usize)>) -> Setup {
        let agents_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ingress = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = ingress.local_addr().unwrap().port();
        let sign_in_url = format!("http://burrow.localhost:{port}");
        let provider = provider_for_host(
            &sign_in_url,
            vec![
                Account::new("u-alice", "alice").name("Alice").groups(["dev"]),
                Account::new("u-bob", "bob").groups(["ops"]),
            ],
        );
        let dir = burrow_tests::lifecycle::Dir::new("sign-in");
        let secret = dir.path().join("cookie.key");
        std::fs::write(&secret, COOKIE_SECRET).unwrap();
        let authorizer = format!(
            "source = \"builtin:authorizer-static\"\nconfig = {{ default_access = \"deny\", agents = [\
             {{ id = \"a1\", token_sha256 = \"{}\" }}, {{ id = \"a2\", token_sha256 = \"{}\" }}], \
             users = [{{ name = \"alice\" }}, {{ name = \"bob\" }}], \
             workloads = [{{ agent = \"a1\", service = \"*\", access = \"token\", users = [\"alice\"] }}, \
             {{ agent = \"a2\", service = \"*\", access = \"token\", groups = [\"dev\", \"ops\"] }}] }}",
            sha256_hex(&agent_token_of("a1")),
            sha256_hex(&agent_token_of("a2")),
        );
        let sign_in = sign_in_table(&provider, &sign_in_url, &secret, &["openid", "profile", "groups"]);
        let parts = |replica: usize| {
            let mut parts = match cluster {
                Some((redis, _)) => cluster_parts(&format!("r{replica}"), &redis.url(), ""),
                None => ConfigParts::default(),
            };
            parts.authorizer = authorizer.clone();
            parts.extra.push_str(&sign_in);
            parts
        };
        let host = TestHost::start_on(parts(0).build(), agents_listener, ingress).await;
        let mut others = Vec::new();
        for replica in 1..cluster.map_or(1, |(_, n)| n) {
            let other = TestHost::start(parts(replica).build()).await;
            other.wait_ready().await;
            others.push(other);
        }
        let workload = Workload::start("w1").await;
        let mut agents = Vec::new();
        for agent in ["a1", "a2"] {
            agents.push(agent_serving(&host, &agent_token_of(agent), &workload, 1).await);
        }
        Setup { provider, host, others, port, _workload: workload, _agents: agents, _dir: dir }
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    /// Signs `login` in at the provider's page the browser is on.
    async fn sign_in_as(&self, browser: &mut Browser, login: &str) {
        browser
            .wait_for(
                "document.readyState === 'complete' && !!document.querySelector('input[name=login]')",
                &format!("the provider's login page\n{}", self.provider.log()),
            )
            .await;
        browser
            .eval("const f = document.querySelector('input[name=login]'); f.focus(); f.select(); true")
            .await;
        browser.type_text(login).await;
        browser.eval("document.getElementById('submit').click(); true").await;
    }

    /// The browser's sign-in cookie for `host`.
    async fn cookie(&self, browser: &mut Browser, host: &str) -> String {
        let cookies = browser.call("Network.getAllCookies", serde_json::json!({})).await;
        cookies["cookies"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "burrow_sign_in" && c["domain"] == host)
            .and_then(|c| c["value"].as_str())
            .unwrap_or_else(|| panic!("no sign-in cookie for {host}: {cookies}"))
            .to_owned()
    }

    /// A request for `path` on `host` with cookie `burrow_sign_in=<cookie>`, as a browser
    /// loading a page sends it.
    async fn get_with(&self, host: &str, path: &str, cookie: &str) -> (StatusCode, http::HeaderMap, String) {
        self.get_via(&self.host, host, path, cookie).await
    }

    /// [`Setup::get_with`] through replica `via`'s ingress.
    async fn get_via(
        &self,
        via: &TestHost,
        host: &str,
        path: &str,
        cookie: &str,
    ) -> (StatusCode, http::HeaderMap, String) {
        let mut client = clients::connect(via.ingress_addr, &Mode::h1()).await;
        let cookie = format!("burrow_sign_in={cookie}");
        let response = client
            .request(
                "GET",
                &format!("{host}:{}", self.port),
                path,
                &[("cookie", &cookie), ("accept", "text/html")],
                clients::empty(),
            )
            .await;
        let (status, headers, body) = clients::collect(response).await;
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Where a response sends the browser.
fn location(headers: &http::HeaderMap) -> String {
    headers.get(http::header::LOCATION).map(|l| l.to_str().unwrap().to_owned()).unwrap_or_default()
}

async fn body_text(browser: &mut Browser) -> String {
    let text = browser
        .wait_for("document.readyState === 'complete' && document.body && document.body.innerText", PAGE)
        .await;
    text.as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_sends_a_browser_to_the_provider_and_back_to_the_page_it_asked_for() {
    let s = Setup::start().await;
    let mut browser = Browser::start(900, 700).await;
    let page = s.url("web-a1.localhost", "/hello?from=test");
    browser.navigate(&page).await;
    s.sign_in_as(&mut browser, "alice").await;
    browser
        .wait_for(
            &format!("location.href === {page:?} && document.body.innerText.includes('hello from w1')"),
            PAGE,
        )
        .await;
    // A second workload needs no second login: the sign-in host remembers alice.
    let other = s.url("web-a2.localhost", "/hello");
    browser.navigate(&other).await;
    browser
        .wait_for(&format!("location.href === {other:?} && document.body.innerText.includes('hello')"), PAGE)
        .await;
    browser.screenshot(&burrow_tests::browser::artifacts_dir().join("sign-in.png")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_a_user_who_may_not_use_the_workload_gets_a_403_page_not_a_loop() {
    let s = Setup::start().await;
    let mut browser = Browser::start(900, 700).await;
    let page = s.url("web-a1.localhost", "/hello");
    browser.navigate(&page).await;
    s.sign_in_as(&mut browser, "bob").await;
    browser
        .wait_for(&format!("location.href === {page:?} && document.body.innerText.includes('403')"), PAGE)
        .await;
    let text = body_text(&mut browser).await;
    assert!(text.contains("request id"), "{text}");
    // Bob is signed in: the same page again is the same 403, with no new trip to the provider.
    let cookie = s.cookie(&mut browser, "web-a1.localhost").await;
    let (status, _, _) = s.get_with("web-a1.localhost", "/hello", &cookie).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // And where his group may go, he gets in.
    let other = s.url("web-a2.localhost", "/hello");
    browser.navigate(&other).await;
    browser.wait_for("document.body && document.body.innerText.includes('hello from w1')", PAGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_logout_ends_the_session_even_for_a_kept_cookie() {
    let s = Setup::start().await;
    let mut browser = Browser::start(900, 700).await;
    browser.navigate(&s.url("web-a1.localhost", "/hello")).await;
    s.sign_in_as(&mut browser, "alice").await;
    browser.wait_for("document.body && document.body.innerText.includes('hello from w1')", PAGE).await;
    let kept = s.cookie(&mut browser, "web-a1.localhost").await;
    assert_eq!(s.get_with("web-a1.localhost", "/hello", &kept).await.0, StatusCode::OK);
    browser.navigate(&s.url("web-a1.localhost", "/_burrow/sign-in/logout")).await;
    browser.wait_for("document.body && document.body.innerText.includes('signed out')", PAGE).await;
    // The cookie someone kept no longer works: the browser is sent to sign in again.
    let (status, headers, _) = s.get_with("web-a1.localhost", "/hello", &kept).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(location(&headers).contains("/_burrow/sign-in/start"), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_tampered_expired_forged_or_foreign_sign_ins_are_refused() {
    let s = Setup::start().await;
    let mut browser = Browser::start(900, 700).await;
    browser.navigate(&s.url("web-a1.localhost", "/hello")).await;
    s.sign_in_as(&mut browser, "alice").await;
    browser.wait_for("document.body && document.body.innerText.includes('hello from w1')", PAGE).await;
    let good = s.cookie(&mut browser, "web-a1.localhost").await;
    assert_eq!(s.get_with("web-a1.localhost", "/hello", &good).await.0, StatusCode::OK);

    let mut tampered = good.clone().into_bytes();
    let at = tampered.len() / 2;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    // Sealed with the host's own secret, so only the expiry or the host differs.
    let sealer = Sealer::new(&[COOKIE_SECRET.to_vec()]).unwrap();
    let opened: WorkloadSession = sealer.open(Purpose::WorkloadSession, &good).unwrap();
    let expired = sealer.seal(Purpose::WorkloadSession, &opened, now_ms() - 1000).unwrap();
    let forged = Sealer::new(&[b"not-the-host-secret-0123456789abcdef".to_vec()])
        .unwrap()
        .seal(Purpose::WorkloadSession, &opened, now_ms() + 60_000)
        .unwrap();
    for (what, cookie, host) in [
        ("tampered", tampered.as_str(), "web-a1.localhost"),
        ("expired", expired.as_str(), "web-a1.localhost"),
        ("forged", forged.as_str(), "web-a1.localhost"),
        // web-a1's cookie planted for web-a2 (say through a parent-domain cookie).
        ("another workload's", good.as_str(), "web-a2.localhost"),
    ] {
        let (status, headers, _) = s.get_with(host, "/hello", cookie).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{what}: {headers:?}");
        assert!(location(&headers).contains("/_burrow/sign-in/start"), "{what}: {headers:?}");
    }
    // The sign-in cookie never reaches the workload, and it cannot set one.
    let (_, _, seen) = s.get_with("web-a1.localhost", "/headers", &good).await;
    assert!(!seen.contains("burrow_sign_in"), "{seen}");
    let (_, headers, _) = s.get_with("web-a1.localhost", "/set-cookie", &good).await;
    let set: Vec<&str> =
        headers.get_all(http::header::SET_COOKIE).iter().map(|v| v.to_str().unwrap()).collect();
    assert!(
        set.iter().all(|c| !c.starts_with("burrow_sign_in") && !c.contains("Domain=localhost")),
        "{set:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_leaves_non_browser_clients_to_bearer_tokens() {
    let s = Setup::start().await;
    // No HTML in Accept: the plain 401 a script or CLI can act on, not a redirect.
    let mut client = clients::connect(s.host.ingress_addr, &Mode::h1()).await;
    let host = format!("web-a1.localhost:{}", s.port);
    let (status, headers, _) = client.get(&host, "/hello").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}");
    // A made-up ticket is refused with a page, not a session.
    let (status, headers, body) =
        s.get_with("web-a1.localhost", "/_burrow/sign-in/session?t=v1.bogus", "x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(headers.get(http::header::SET_COOKIE).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_logout_on_one_replica_ends_the_session_on_every_replica() {
    let redis = burrow_tests::redis::RedisServer::start();
    let s = Setup::start_cluster(&redis, 2).await;
    let mut browser = Browser::start(900, 700).await;
    browser.navigate(&s.url("web-a1.localhost", "/hello")).await;
    s.sign_in_as(&mut browser, "alice").await;
    browser.wait_for("document.body && document.body.innerText.includes('hello from w1')", PAGE).await;
    let kept = s.cookie(&mut browser, "web-a1.localhost").await;
    // The sign-in holds on the other replica too (the request is forwarded to the agent).
    let r1 = &s.others[0];
    assert_eq!(s.get_via(r1, "web-a1.localhost", "/hello", &kept).await.0, StatusCode::OK);
    // Logout through r0 (the browser's replica).
    browser.navigate(&s.url("web-a1.localhost", "/_burrow/sign-in/logout")).await;
    browser.wait_for("document.body && document.body.innerText.includes('signed out')", PAGE).await;
    // r1 learns of it through Redis within its recheck interval (2 s): wait for it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, headers, _) = s.get_via(r1, "web-a1.localhost", "/hello", &kept).await;
        if status == StatusCode::SEE_OTHER {
            assert!(location(&headers).contains("/_burrow/sign-in/start"), "{headers:?}");
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(tokio::time::Instant::now() < deadline, "r1 still accepts the ended sign-in");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
