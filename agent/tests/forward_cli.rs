//! The `burrow` binary's own behaviour: usage errors and an unreachable host give a
//! clear message and a failing exit code before anything listens. Forwarding through a
//! real host and agent is tested in tests/tests/forward.rs. `cargo test forward` runs both;
//! `cargo test cleartext` runs the cleartext (`http://`, `--insecure`) checks here and in the agent.

use std::process::{Command, Output};

fn burrow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(args)
        .env_remove("BURROW_TOKEN")
        .env("RUST_LOG", "warn")
        .output()
        .expect("the burrow binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn forward_cli_refuses_a_bad_url_with_a_clear_message() {
    let out = burrow(&["forward", "ftp://db-ws1.example.com"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("invalid workload URL \"ftp://db-ws1.example.com\": use http:// or https://"),
        "{}",
        stderr(&out)
    );
    let out = burrow(&["forward", "https://alice:secret@db-ws1.example.com"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("user info is not allowed"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("secret"), "the password is not echoed: {}", stderr(&out));
}

#[test]
fn forward_cli_reports_a_host_that_does_not_answer() {
    // A listener that never accepts: the TCP handshake completes, no HTTP answer comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let out = burrow(&["forward", "--connect-timeout", "500ms", &url]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.contains(&format!("cannot forward to {url}")) && text.contains("no answer within 500ms"),
        "{text}"
    );
    assert!(out.stdout.is_empty(), "nothing listened: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn forward_cli_refuses_an_empty_token_file() {
    let file = std::env::temp_dir().join(format!("burrow-empty-token-{}", std::process::id()));
    std::fs::write(&file, "\n").unwrap();
    let out = burrow(&["forward", "--token-file", file.to_str().unwrap(), "http://db-ws1.localhost"]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is empty"), "{}", stderr(&out));
}

#[test]
fn forward_cli_refuses_cleartext_to_a_remote_host_without_insecure() {
    let out = burrow(&["forward", "http://db-ws1.example.com"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.contains("refusing cleartext URL \"http://db-ws1.example.com\"") && text.contains("--insecure"),
        "{text}"
    );
    assert!(out.stdout.is_empty(), "nothing listened: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn forward_cli_allows_cleartext_to_loopback_with_a_warning() {
    // The URL names a remote host, but --connect-to sends the bytes to loopback: allowed,
    // so the forward gets as far as the (silent) host.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let to = silent.local_addr().unwrap().to_string();
    let out =
        burrow(&["forward", "--connect-timeout", "500ms", "--connect-to", &to, "http://db-ws1.example.com"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(text.contains("no answer within 500ms") && !text.contains("refusing"), "{text}");
    assert!(text.contains("WARN") && text.contains("unencrypted (loopback only)"), "{text}");
}
