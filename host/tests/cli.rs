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
        ("workload.toml", "[[plugins.workload]]\nsource = \"builtin:authorizer-static\"\n", "plugins.workload[0].source"),
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

fn artifact(name: &str) -> std::path::PathBuf {
    std::path::Path::new(burrow_host::plugins::ARTIFACTS_DIR).join(name)
}

#[test]
fn plugin_check_describes_a_component() {
    let out =
        burrow_host().args(["plugin", "check"]).arg(artifact("router_prefer_local.wasm")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{}", stdout, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("world:    burrow:plugin/router-plugin@1.1.0"), "{stdout}");
    assert!(stdout.contains("burrow:plugin/router@1.1.0{route}"), "{stdout}");

    // A workload plugin, with the config its manifest's defaults need, as JSON.
    let out = burrow_host()
        .args(["plugin", "check", "--json"])
        .arg(artifact("workload_ci_job.wasm"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["kind"], "workload");
    assert_eq!(report["workload_kind"], "ci-job");
    assert_eq!(report["lifecycle_hooks"], true);
}

#[test]
fn plugin_check_refuses_what_the_host_would_refuse() {
    let junk = write("junk.wasm", "not wasm");
    let out = burrow_host().args(["plugin", "check"]).arg(&junk).output().unwrap();
    let _ = std::fs::remove_file(&junk);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a WebAssembly binary"));

    // The right file checked as the wrong kind.
    let out = burrow_host()
        .args(["plugin", "check", "--kind", "authorizer"])
        .arg(artifact("router_prefer_local.wasm"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("implements none of the worlds"), "{stderr}");

    // A config the plugin refuses fails its init.
    let cfg = write("bad-plugin-config.toml", "unknown_key = 1\n");
    let out = burrow_host()
        .args(["plugin", "check", "--config"])
        .arg(&cfg)
        .arg(artifact("router_prefer_local.wasm"))
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&cfg);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("init"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
