//! `burrow-host workload ...` run for real against a host serving the control API:
//! create, read, list, token, enqueue, work and terminate, and a clear error for an
//! unknown workload. `cargo test workload` runs it with the other lifecycle tests.

use std::path::Path;
use std::process::Output;

use tokio::net::TcpListener;

async fn cli(config: &Path, args: &[&str], stdin: Option<&'static [u8]>) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_burrow-host"));
    cmd.arg("workload").arg("--config").arg(config).args(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("burrow-host runs");
    {
        use tokio::io::AsyncWriteExt;
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).await.unwrap();
        }
    }
    child.wait_with_output().await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_cli_creates_reads_lists_queues_and_terminates() {
    let dir = std::env::temp_dir().join(format!("burrow-workload-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("control.secret"), "cli-test-secret-0123456789abcdef0123").unwrap();
    let control = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config_path = dir.join("host.toml");
    let text_config = format!(
        r#"
[agents]
listen = "127.0.0.1:0"
[ingress]
listen = "127.0.0.1:0"
[admin]
enabled = false
[plugins.authorizer]
source = "builtin:authorizer-static"
config = {{ default_access = "deny" }}
[[plugins.workload]]
source = "builtin:workload-workspace"
[control]
listen = "{}"
secret_file = "{}"
signing_keys = ["{}"]
state_file = "{}"
"#,
        control.local_addr().unwrap(),
        dir.join("control.secret").display(),
        dir.join("agent-token.key").display(),
        dir.join("workloads.json").display(),
    );
    std::fs::write(&config_path, &text_config).unwrap();
    let config = burrow_host::Config::from_file(&config_path).unwrap();
    let listeners = burrow_host::Listeners {
        agents: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ingress: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: None,
        cluster: None,
        ssh: None,
        control: Some(control),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let host = tokio::spawn(burrow_host::run(config, listeners, async move {
        let _ = stopped.await;
    }));

    let out = cli(
        &config_path,
        &[
            "create",
            "--kind",
            "workspace",
            "--id",
            "cli-1",
            "--owner",
            "alice",
            "--service",
            "web",
            "--label",
            "team=infra",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("bwt1."), "the token alone on stdout: {}", text(&out.stdout));

    let out = cli(&config_path, &["--json", "get", "cli-1"], None).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["state"], "waiting");
    assert_eq!(json["labels"]["team"], "infra");

    let out = cli(&config_path, &["list"], None).await;
    assert_eq!(text(&out.stdout), "workspace cli-1 waiting owner=alice");

    let out = cli(&config_path, &["token", "cli-1", "--ttl", "5m"], None).await;
    assert!(text(&out.stdout).starts_with("bwt1."), "{}", text(&out.stderr));

    let out = cli(&config_path, &["enqueue", "cli-1"], Some(b"payload from stdin")).await;
    let item = text(&out.stdout);
    assert_eq!(item.len(), 20, "an item id: {item} {}", text(&out.stderr));
    let out = cli(&config_path, &["work", "cli-1"], None).await;
    assert!(text(&out.stdout).starts_with(&format!("{item} queued deliveries=0")), "{}", text(&out.stdout));

    let out = cli(&config_path, &["terminate", "cli-1", "--reason", "done"], None).await;
    assert!(text(&out.stdout).contains("terminated"), "{}", text(&out.stdout));
    let out = cli(&config_path, &["list"], None).await;
    assert_eq!(text(&out.stdout), "", "ended workloads are listed only with --all");
    let out = cli(&config_path, &["list", "--all"], None).await;
    assert!(text(&out.stdout).contains("reason=\"done\""), "{}", text(&out.stdout));

    let out = cli(&config_path, &["get", "nope"], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no workload \"nope\""), "{}", text(&out.stderr));

    let _ = stop.send(());
    host.await.unwrap().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
