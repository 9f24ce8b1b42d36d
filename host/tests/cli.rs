//! The `burrow-host` binary's command line, run for real.

use std::process::Command;

fn burrow_host() -> Command {
    Command::new(env!("CARGO_BIN_EXE_burrow-host"))
}

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("burrow-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_accepts_the_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/host.toml");
    let out = burrow_host().args(["check-config", example]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn check_config_accepts_the_cluster_examples() {
    // Run from the repository root, as the README does: the secret path is relative to it.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for name in ["replica-a", "replica-b"] {
        let out = burrow_host()
            .current_dir(root)
            .args(["check-config", &format!("examples/cluster/{name}.toml")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn check_config_names_the_offending_key() {
    let cases = [
        ("typo.toml", "[ingress]\nstream_wiat = \"5s\"\n", "stream_wiat"),
        ("range.toml", "[agents]\nkeepalive_timeout = \"0s\"\n", "agents.keepalive_timeout"),
        ("plugin.toml", "[plugins.router]\nsource = \"builtin:nope\"\n", "plugins.router.source"),
        ("syntax.toml", "[agents\n", "config file"),
        ("cluster.toml", "[cluster]\nlisten = \"127.0.0.1:0\"\n", "cluster.secret_file"),
        (
            "redis.toml",
            "[cluster]\nsecret = \"0123456789abcdef0123456789abcdef\"\nlisten = \"127.0.0.1:0\"\n[cluster.redis]\nurls = [\"http://x\"]\n",
            "cluster.redis.urls",
        ),
        ("admin.toml", "[admin]\nlisten = \"127.0.0.1:9\"\n[ingress]\nlisten = \"127.0.0.1:9\"\n", "must differ"),
    ];
    for (name, text, expected) in cases {
        let path = write(name, text);
        let out = burrow_host().arg("check-config").arg(&path).output().unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
}

#[test]
fn help_documents_commands_and_defaults() {
    let out = burrow_host().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "check-config", "demo"] {
        assert!(help.contains(word), "{help}");
    }
    let out = burrow_host().args(["demo", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("[default: 8080]"), "{help}");
}
