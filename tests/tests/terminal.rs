//! The web terminal: the host's page (xterm.js) in a real headless Chromium, its
//! WebSocket through admission (action `terminal`) to a PTY of the agent's shell.
//! `cargo test terminal` runs them; screenshots land in `target/test-artifacts/`.

use std::path::PathBuf;

use burrow_tests::browser::{artifacts_dir, Browser};
use burrow_tests::clients::{self, Mode};
use burrow_tests::*;
use http::header;
use http::StatusCode;

const COOKIE: &str = "burrow_session";
/// The `terminal` kind's agent, and its token.
const TERM_AGENT: &str = "term-t1";
const TERM_TOKEN: &str = "token-for-term-t1-0123456789";

/// A host whose users carry a session cookie, agent `a1` serving sessions (`ssh`, run
/// by `/bin/sh`), users alice (allowed on a1 and term-t1) and bob (known, not allowed),
/// and the `terminal` kind on `term.localhost`.
struct Fixture {
    host: TestHost,
    agent: Option<burrow_agent::AgentHandle>,
    _dir: Cleanup,
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Fixture {
    async fn start() -> Fixture {
        let authorizer = format!(
            "source = \"builtin:authorizer-static\"\nconfig = {{ agents = [{{ id = \"{AGENT}\", token_sha256 = \"{}\" }}, \
             {{ id = \"{TERM_AGENT}\", token_sha256 = \"{}\" }}], default_access = \"deny\", session_cookie = \"{COOKIE}\", {} }}",
            sha256_hex(TOKEN),
            sha256_hex(TERM_TOKEN),
            alice_and_bob(&[AGENT, TERM_AGENT]),
        );
        let parts = ConfigParts {
            authorizer,
            ingress: format!("stream_wait = \"3s\"\nsession_cookie = \"{COOKIE}\""),
            extra: "[[plugins.workload]]\nsource = \"builtin:workload-terminal\"\nconfig = { host_names = [\"term.localhost\"] }\n"
                .into(),
            ..Default::default()
        };
        let host = TestHost::start(parts.build()).await;
        let dir = std::env::temp_dir().join(format!(
            "burrow-terminal-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = agent_config(&host.agent_url("grpc"), TOKEN, &[]);
        config.sessions = Some(shell_sessions(Some(&dir)));
        let agent = burrow_agent::spawn(config);
        wait_connected(&agent).await;
        Fixture { host, agent: Some(agent), _dir: Cleanup(dir) }
    }

    fn origin(&self, host: &str) -> String {
        format!("http://{host}:{}", self.host.ingress_addr.port())
    }

    fn terminal_url(&self) -> String {
        format!("{}/_burrow/terminal", self.origin("web-a1.localhost"))
    }

    /// Chromium with alice's session cookie, showing a1's terminal once its shell runs.
    async fn browser(&self) -> Browser {
        let mut browser = Browser::start(900, 600).await;
        browser.set_cookie(&self.origin("web-a1.localhost"), COOKIE, ALICE_TOKEN).await;
        browser.navigate(&self.terminal_url()).await;
        wait_connected_page(&mut browser).await;
        browser
    }
}

async fn wait_connected_page(browser: &mut Browser) {
    browser
        .wait_for(
            "window.burrowTerminal && burrowTerminal.state() === 'connected'",
            "window.burrowTerminal ? burrowTerminal.status() : document.body.innerText",
        )
        .await;
}

/// Types a command line and waits until a screen line ends with `expect`. Ends with, not
/// equals: keys typed before the shell printed its prompt are echoed by the terminal
/// first, so the prompt can land in front of the output (`# burrow-42`).
async fn run_line(browser: &mut Browser, command: &str, expect: &str) {
    browser.type_text(command).await;
    browser.press_enter().await;
    let expect = serde_json::to_string(expect).unwrap();
    browser
        .wait_for(
            &format!("burrowTerminal.text().split('\\n').some(line => line.trimEnd().endsWith({expect}))"),
            "burrowTerminal.text()",
        )
        .await;
}

/// The last text on screen matching the JavaScript regex `pattern` at a line's end.
async fn last_match(browser: &mut Browser, pattern: &str) -> String {
    let value = browser
        .wait_for(
            &format!(
                "burrowTerminal.text().split('\\n').map(l => l.trimEnd().match(/{pattern}$/)).filter(m => m).map(m => m[0]).pop()"
            ),
            "burrowTerminal.text()",
        )
        .await;
    value.as_str().unwrap().to_owned()
}

#[tokio::test]
async fn terminal_runs_a_shell_in_the_browser() {
    let fixture = Fixture::start().await;
    let mut browser = fixture.browser().await;
    run_line(&mut browser, "echo burrow-$((6*7))", "burrow-42").await;
    let shot = artifacts_dir().join("terminal.png");
    browser.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000, "a real screenshot at {}", shot.display());
}

#[tokio::test]
async fn terminal_follows_window_resizes() {
    let fixture = Fixture::start().await;
    let mut browser = fixture.browser().await;
    let size = browser.eval("burrowTerminal.size()").await;
    let (cols, rows) = (size["cols"].as_u64().unwrap(), size["rows"].as_u64().unwrap());
    assert!(cols > 20 && rows > 5, "the page fitted the terminal to the window: {size}");
    run_line(&mut browser, "echo size-$(stty size | tr ' ' x)", &format!("size-{rows}x{cols}")).await;

    browser.resize(1300, 800).await;
    let grown = browser
        .wait_for(
            &format!("burrowTerminal.size().cols > {cols} && burrowTerminal.size()"),
            "burrowTerminal.size()",
        )
        .await;
    let (cols, rows) = (grown["cols"].as_u64().unwrap(), grown["rows"].as_u64().unwrap());
    run_line(&mut browser, "echo size-$(stty size | tr ' ' x)", &format!("size-{rows}x{cols}")).await;
}

#[tokio::test]
async fn terminal_shows_the_end_and_a_reload_starts_a_new_session() {
    let fixture = Fixture::start().await;
    let mut browser = fixture.browser().await;
    browser.type_text("echo pid-$$").await;
    browser.press_enter().await;
    let first = last_match(&mut browser, "pid-[0-9]+").await;

    browser.type_text("exit 7").await;
    browser.press_enter().await;
    let status = browser
        .wait_for("burrowTerminal.state() === 'ended' && burrowTerminal.status()", "burrowTerminal.status()")
        .await;
    assert_eq!(status, "session ended (exit status 7)");
    let screen = browser.eval("burrowTerminal.text()").await;
    assert!(screen.as_str().unwrap().contains("session ended (exit status 7)"), "{screen}");

    browser.reload().await;
    wait_connected_page(&mut browser).await;
    browser.type_text("echo pid-$$").await;
    browser.press_enter().await;
    let second = last_match(&mut browser, "pid-[0-9]+").await;
    assert_ne!(first, second, "a reload runs a new shell");
}

#[tokio::test]
async fn terminal_tells_the_user_when_its_workload_goes_away() {
    let mut fixture = Fixture::start().await;
    let mut browser = fixture.browser().await;
    run_line(&mut browser, "echo still-here", "still-here").await;
    fixture.agent.take().unwrap().abort();
    let state = browser
        .wait_for(
            // The news and the offer of a new session come together.
            "['closed', 'lost'].includes(burrowTerminal.state()) && !document.getElementById('reconnect').hidden && burrowTerminal.status()",
            "burrowTerminal.status()",
        )
        .await;
    let state = state.as_str().unwrap();
    assert!(state.starts_with("session closed: ") || state.starts_with("connection lost"), "{state}");
    assert_eq!(
        browser.eval("document.getElementById('reconnect').hidden").await,
        false,
        "offers a new session"
    );
}

#[tokio::test]
async fn terminal_page_and_socket_refuse_users_without_access() {
    let fixture = Fixture::start().await;
    let addr = fixture.host.ingress_addr;
    let host = "web-a1.localhost";
    let mut client = clients::connect(addr, &Mode::h1()).await;
    let page = |token: Option<&str>| {
        let cookie = token.map(|t| format!("{COOKIE}={t}"));
        (cookie, "/_burrow/terminal")
    };
    // Nobody: 401. Bob (known, not allowed): 403. Alice: the page.
    for (token, status) in [(None, StatusCode::UNAUTHORIZED), (Some(BOB_TOKEN), StatusCode::FORBIDDEN)] {
        let (cookie, path) = page(token);
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", c.as_str())).collect();
        let response =
            clients::collect(client.request("GET", host, path, &headers, clients::empty()).await).await;
        assert_eq!(response.0, status, "{token:?}");
    }
    let cookie = format!("{COOKIE}={ALICE_TOKEN}");
    let (status, headers, body) = clients::collect(
        client.request("GET", host, "/_burrow/terminal", &[("cookie", &cookie)], clients::empty()).await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert!(headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert!(std::str::from_utf8(&body).unwrap().contains("/_burrow/assets/xterm.js"));

    // A page of another origin (here a sibling workload) may not open alice's terminal.
    let ws = |origin: &'static str| {
        vec![
            ("cookie", cookie.clone()),
            ("connection", "Upgrade".to_owned()),
            ("upgrade", "websocket".to_owned()),
            ("sec-websocket-version", "13".to_owned()),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==".to_owned()),
            ("origin", origin.to_owned()),
        ]
    };
    let evil = ws("http://web-a2.localhost");
    let evil: Vec<(&str, &str)> = evil.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut client = clients::connect(addr, &Mode::h1()).await;
    let (status, _, body) =
        clients::collect(client.request("GET", host, "/_burrow/terminal", &evil, clients::empty()).await)
            .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("cross-origin"), "{}", String::from_utf8_lossy(&body));

    // The assets are public: the page needs them before anything else.
    let (status, headers, body) = clients::get(addr, "anything.localhost", "/_burrow/assets/xterm.js").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    assert!(body.len() > 100_000);
}

#[tokio::test]
async fn terminal_kind_serves_its_terminal_below_its_address() {
    let fixture = Fixture::start().await;
    let addr = fixture.host.ingress_addr;
    let cookie = format!("{COOKIE}={ALICE_TOKEN}");
    let mut client = clients::connect(addr, &Mode::h1()).await;
    let (status, headers, body) = clients::collect(
        client
            .request(
                "GET",
                "term.localhost",
                "/terminal/t1/_burrow/terminal",
                &[("cookie", &cookie)],
                clients::empty(),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert!(std::str::from_utf8(&body).unwrap().contains("xterm"));
    // Other paths of the address are the workload's own, not the host's.
    let (status, _, _) = clients::collect(
        client
            .request("GET", "term.localhost", "/terminal/t1/", &[("cookie", &cookie)], clients::empty())
            .await,
    )
    .await;
    assert_ne!(status, StatusCode::OK, "no page of the host's at the bare address");
}
