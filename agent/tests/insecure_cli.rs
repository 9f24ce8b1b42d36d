//! The `burrow-agent` binary and cleartext host URLs: `grpc://`/`ws://` to a host that is
//! not loopback is refused before anything is dialed unless `--insecure` is given, and any
//! cleartext URL is warned about at start. `cargo test insecure` or `cargo test cleartext`
//! runs these with the unit tests of the rule.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_burrow-agent");

fn agent(log: &str) -> Command {
    let mut command = Command::new(BIN);
    command.env("BURROW_AGENT_TOKEN", "test-token").env("RUST_LOG", log);
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn cleartext_to_a_remote_host_is_refused_without_insecure() {
    for url in ["grpc://example.com:8081", "ws://10.0.0.1:8081"] {
        let started = Instant::now();
        let out = agent("debug").args(["--host", url, "--service", "web=127.0.0.1:1"]).output().unwrap();
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{url}: {text}");
        assert!(
            text.contains(&format!("refusing cleartext host URL {url}")) && text.contains("--insecure"),
            "{url}: {text}"
        );
        // Refused by the configuration check: the error is all there is, not one log line
        // (at debug, a started agent logs its every connection attempt).
        assert!(text.lines().all(|l| l.starts_with("error: ")), "{url}: {text}");
        assert!(started.elapsed() < Duration::from_secs(20), "{url}: took {:?}", started.elapsed());
    }
}

/// Kills the agent when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the agent and returns the first stderr line containing `wanted` (the agent
/// keeps running and is killed afterwards); panics after 30 s.
fn first_line_with(args: &[&str], wanted: &str) -> String {
    let mut child =
        Running(agent("warn").args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap());
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(wanted) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no line with {wanted:?} from burrow-agent {args:?}; stderr:\n{}", seen.join("\n"));
}

#[test]
fn cleartext_to_loopback_starts_with_a_warning() {
    // Port 1 refuses: the agent keeps retrying until it is killed.
    let line = first_line_with(
        &["--host", "grpc://127.0.0.1:1", "--host", "ws://localhost:1", "--service", "web=127.0.0.1:1"],
        "cleartext host URL",
    );
    assert!(line.contains("WARN") && line.contains("unencrypted"), "{line}");
    assert!(line.contains("grpc://127.0.0.1:1,ws://localhost:1"), "both URLs in one warning: {line}");
    assert!(line.contains("loopback only"), "{line}");
}

#[test]
fn insecure_allows_cleartext_to_a_remote_host_with_a_warning() {
    // 192.0.2.1 (TEST-NET-1, documentation only) never answers; nothing resolves a name.
    let line = first_line_with(
        &[
            "--insecure",
            "--connect-timeout",
            "1s",
            "--host",
            "grpc://192.0.2.1:8081",
            "--service",
            "web=127.0.0.1:1",
        ],
        "cleartext host URL",
    );
    assert!(
        line.contains("WARN") && line.contains("--insecure") && line.contains("cross the network"),
        "{line}"
    );
    assert!(line.contains("grpc://192.0.2.1:8081"), "{line}");
}
