//! Headless Chromium driven over the DevTools protocol (CDP), for tests of pages the
//! host serves: navigate, set cookies, type, read the page's state, take screenshots.
//!
//! Only the handful of CDP commands the tests need, sent as JSON over the browser's
//! DevTools WebSocket (tokio-tungstenite, already a dependency). Chromium is found as
//! `$BURROW_TEST_CHROMIUM`, else `chromium`, `chromium-browser` or `google-chrome` on
//! `PATH`; `.ci/run` installs Debian's `chromium`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long any one wait in here may take before the test fails with what it saw.
const PATIENCE: Duration = Duration::from_secs(30);

/// A headless Chromium with one page.
pub struct Browser {
    child: Child,
    dir: PathBuf,
    ws: WebSocketStream<TcpStream>,
    session: String,
    next_id: u64,
}

fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("BURROW_TEST_CHROMIUM") {
        return path.into();
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(path) = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
        {
            return path;
        }
    }
    panic!("no Chromium found: install Debian's `chromium` (as .ci/run does) or set BURROW_TEST_CHROMIUM");
}

impl Browser {
    /// Starts Chromium with a fresh profile and attaches to a blank page of
    /// `width` x `height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> Browser {
        let dir = std::env::temp_dir().join(format!(
            "burrow-chromium-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("chromium.log")).unwrap();
        // Port 0: Chromium picks a free port and writes it to DevToolsActivePort.
        let child = Command::new(chromium())
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            .args(["--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", dir.display()))
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("Chromium starts");
        let port_file = dir.join("DevToolsActivePort");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break (port.to_owned(), path.to_owned());
                }
            }
            if tokio::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("chromium.log")).unwrap_or_default();
                panic!("Chromium wrote no DevToolsActivePort within {PATIENCE:?}; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let tcp = TcpStream::connect(format!("127.0.0.1:{port}")).await.expect("Chromium's DevTools port");
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}{path}"), tcp)
            .await
            .expect("Chromium's DevTools WebSocket");
        let mut browser = Browser { child, dir, ws, session: String::new(), next_id: 0 };
        let target = browser.call("Target.createTarget", json!({ "url": "about:blank" })).await;
        let target_id = target["targetId"].as_str().expect("a target id").to_owned();
        let attached =
            browser.call("Target.attachToTarget", json!({ "targetId": target_id, "flatten": true })).await;
        browser.session = attached["sessionId"].as_str().expect("a session id").to_owned();
        browser.call("Page.enable", json!({})).await;
        browser.call("Runtime.enable", json!({})).await;
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
            )
            .await;
        browser
    }

    /// Sends a CDP command (to the page once attached) and returns its result; events
    /// arriving meanwhile are skipped.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::Text(message.to_string().into())).await.expect("CDP send");
        let reply = tokio::time::timeout(PATIENCE, async {
            loop {
                let Some(Ok(Message::Text(text))) = self.ws.next().await else {
                    panic!("Chromium's DevTools connection closed during {method}");
                };
                let value: Value = serde_json::from_str(&text).expect("CDP sends JSON");
                if value["id"] == id {
                    return value;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("CDP {method} got no answer within {PATIENCE:?}"));
        if let Some(error) = reply.get("error") {
            panic!("CDP {method} failed: {error}");
        }
        reply["result"].clone()
    }

    /// Sets a cookie for `url`'s host.
    pub async fn set_cookie(&mut self, url: &str, name: &str, value: &str) {
        let result =
            self.call("Network.setCookie", json!({ "url": url, "name": name, "value": value })).await;
        assert_eq!(result["success"], json!(true), "cookie {name} set for {url}");
    }

    /// Opens `url` in the page.
    pub async fn navigate(&mut self, url: &str) {
        let result = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(result.get("errorText").is_none(), "navigation to {url} failed: {result}");
    }

    /// Reloads the page.
    pub async fn reload(&mut self) {
        self.call("Page.reload", json!({ "ignoreCache": true })).await;
    }

    /// Evaluates `expression` in the page and returns its value (promises awaited).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            return json!({ "exception": exception });
        }
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the page and returns its value; on timeout
    /// fails the test, showing `context` evaluated at that moment.
    pub async fn wait_for(&mut self, expression: &str, context: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let value = self.eval(expression).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Object(o) => !o.contains_key("exception"),
                _ => true,
            };
            if truthy {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                let seen = self.eval(context).await;
                panic!("waited {PATIENCE:?} for `{expression}`; the page shows: {seen}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `text` into the focused element, as an IME would.
    pub async fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// Presses Enter.
    pub async fn press_enter(&mut self) {
        for kind in ["keyDown", "keyUp"] {
            let mut event = json!({
                "type": kind, "key": "Enter", "code": "Enter",
                "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13,
            });
            if kind == "keyDown" {
                event["text"] = json!("\r");
            }
            self.call("Input.dispatchKeyEvent", event).await;
        }
    }

    /// Resizes the page's viewport, as a user resizing the window would.
    pub async fn resize(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
    }

    /// Saves a PNG screenshot of the page to `path` (directories created).
    pub async fn screenshot(&mut self, path: &Path) {
        let result = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let data = result["data"].as_str().expect("screenshot data");
        let png = base64::engine::general_purpose::STANDARD.decode(data).expect("base64 PNG");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        // Chromium may still be writing its profile as it dies; a leftover temp dir is harmless.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where tests put what a person should be able to look at afterwards (screenshots):
/// `target/test-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts")
}
