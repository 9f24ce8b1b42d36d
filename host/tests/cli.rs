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
    // Every plugin was loaded as `run` loads it, manifest vectors included.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OK") && stdout.contains("plugins.authorizer: authorizer-static"), "{stdout}");
    assert!(
        stdout.contains("plugins.workload[0]: workload-workspace")
            && stdout.contains("test vector(s) passed"),
        "{stdout}"
    );
}

#[test]
fn check_config_accepts_the_cluster_examples() {
    // Run from the repository root, as the README does: the secret path is relative to it.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    // The README's first step: the CA and the replicas' certificates (mutual TLS).
    let out = burrow_host()
        .current_dir(root)
        .args([
            "cluster-certs",
            "--dir",
            "examples/cluster/certs",
            "replica-a=127.0.0.1",
            "replica-b=127.0.0.1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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
fn cluster_certs_makes_the_ca_once_and_prints_each_replicas_tls_line() {
    let dir = std::env::temp_dir().join(format!("burrow-cli-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |args: &[&str]| {
        burrow_host().arg("cluster-certs").arg("--dir").arg(&dir).args(args).output().unwrap()
    };
    let out = run(&["r1=10.0.0.1,r1.internal", "r2=10.0.0.2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("created the CA"), "{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("r1: tls = { cert = ") && l.contains("r1-key.pem")),
        "{stdout}"
    );
    assert!(stdout.lines().any(|l| l.starts_with("r2: tls = ")), "{stdout}");
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    // A later run adds a replica under the same CA, so running replicas still trust it.
    let out = run(&["r3=10.0.0.3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("created the CA"));
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca);
    assert!(dir.join("r3.pem").is_file() && dir.join("r3-key.pem").is_file());
    // Bad input is named.
    let out = run(&["no-equals-sign"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=HOST"));
    let out = run(&["ca=10.0.0.9"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("replica name"));
    std::fs::remove_dir_all(dir).unwrap();
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
        (
            "cleartext.toml",
            "[cluster]\nsecret = \"0123456789abcdef0123456789abcdef\"\nlisten = \"127.0.0.1:0\"\n",
            "cluster.tls: required",
        ),
        ("admin.toml", "[admin]\nlisten = \"127.0.0.1:9\"\n[ingress]\nlisten = \"127.0.0.1:9\"\n", "must differ"),
        ("control.toml", "[control]\n", "control.secret_file"),
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
    assert!(
        stderr.contains("does not implement the world burrow:plugin/authorizer-plugin")
            && stderr.contains("it is a router plugin (world burrow:plugin/router-plugin"),
        "names the kind it is: {stderr}"
    );

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
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("init failed") && !stderr.contains("refused its config"), "{stderr}");
}

/// Runs `burrow-host` with `args`: exit success, stdout, stderr.
fn run(args: &[&str]) -> (bool, String, String) {
    let output = burrow_host().args(args).env_remove("RUST_LOG").output().expect("burrow-host runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_config_refuses_a_typo_in_a_plugin_config_naming_its_line() {
    // `run` would refuse it: the built-in static authorizer's init rejects unknown keys.
    let text =
        "[agents]\nlisten = \"127.0.0.1:0\"\n[plugins.authorizer]\nsource = \"builtin:authorizer-static\"\n\
                [plugins.authorizer.config]\ndefault_access = \"open\"\ndefault_acess = \"deny\"\n";
    let file = write("plugin-typo.toml", text);
    let (ok, _, stderr) = run(&["check-config", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(!ok);
    let expected = format!("{}:7: plugins.authorizer.config.default_acess: ", file.display());
    assert!(stderr.starts_with(&expected), "names the typo's line: {stderr}");
    assert!(stderr.contains("unknown field `default_acess`") && stderr.contains("init failed"), "{stderr}");
    assert!(!stderr.contains("column"), "no position in the JSON the host made of the config: {stderr}");
}

#[test]
fn check_config_blames_the_config_table_for_a_missing_plugin_key() {
    let text = format!(
        "[plugins.authorizer]\nsource = {:?}\nconfig = {{ timezone_offset_minutes = 60 }}\n",
        artifact("office_hours.wasm").display().to_string()
    );
    let file = write("plugin-missing.toml", &text);
    let (ok, _, stderr) = run(&["check-config", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(!ok);
    assert!(stderr.starts_with(&format!("{}:3: plugins.authorizer.config: ", file.display())), "{stderr}");
    assert!(stderr.contains("groups"), "{stderr}");
}

#[test]
fn check_config_refuses_a_truncated_wasm_naming_the_source_line() {
    let bytes = std::fs::read(artifact("test_swap_v1.wasm")).unwrap();
    let wasm = std::env::temp_dir().join(format!("burrow-cli-{}-truncated.wasm", std::process::id()));
    std::fs::write(&wasm, &bytes[..bytes.len() / 2]).unwrap();
    let text = format!(
        "[ingress]\nlisten = \"127.0.0.1:0\"\n\n[plugins.authorizer]\nsource = {:?}\n",
        wasm.display().to_string()
    );
    let file = write("plugin-truncated.toml", &text);
    let (ok, _, stderr) = run(&["check-config", file.to_str().unwrap()]);
    let _ = (std::fs::remove_file(&file), std::fs::remove_file(&wasm));
    assert!(!ok);
    assert!(stderr.starts_with(&format!("{}:5: plugins.authorizer.source: ", file.display())), "{stderr}");
    assert!(stderr.contains("cannot compile"), "{stderr}");
}

#[test]
fn check_config_gives_lines_for_bad_values_and_never_quotes_the_file() {
    let file = write("value-line.toml", "[agents]\nlisten = \"127.0.0.1:0\"\nkeepalive_interval = \"0s\"\n");
    let (ok, _, stderr) = run(&["check-config", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(!ok);
    assert!(stderr.starts_with(&format!("{}:3: agents.keepalive_interval: ", file.display())), "{stderr}");
    let file =
        write("syntax-line.toml", "[plugins.authorizer.config]\ntoken = \"s3cret\"\n[agents]\nlissten = 1\n");
    let (ok, _, stderr) = run(&["check-config", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(!ok);
    assert!(
        stderr.contains("line 4") && stderr.contains("lissten") && !stderr.contains("s3cret"),
        "{stderr}"
    );
}

#[test]
fn plugin_check_takes_the_config_as_top_level_keys_or_from_a_host_config_slot() {
    let wasm = artifact("office_hours.wasm");
    let wasm = wasm.to_str().unwrap();
    // Without a config the plugin's init refuses, and the hint says how to give one.
    let (ok, _, stderr) = run(&["plugin", "check", wasm]);
    assert!(!ok);
    assert!(
        stderr.contains("init failed")
            && stderr.contains("--config FILE")
            && stderr.contains("--host-config"),
        "{stderr}"
    );

    let config = write("office-config.toml", "groups = [\"staff\"]\n");
    let (ok, stdout, stderr) = run(&["plugin", "check", wasm, "--config", config.to_str().unwrap()]);
    let _ = std::fs::remove_file(&config);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("name:     office-hours") && stdout.contains("version:  0.1.0"), "{stdout}");
    assert!(stdout.contains("manifest test vector(s) passed") && !stdout.contains(" 0 manifest"), "{stdout}");

    let host = write(
        "office-host.toml",
        &format!("[plugins.authorizer]\nsource = {wasm:?}\nconfig = {{ groups = [\"staff\"] }}\n"),
    );
    let host_path = host.to_str().unwrap();
    // The slot's own file; another file in the slot's place (the slot defaults to the
    // authorizer); a slot the config does not have.
    let (ok, stdout, stderr) = run(&["plugin", "check", "--host-config", host_path, "--slot", "authorizer"]);
    assert!(ok && stdout.contains("office_hours.wasm: OK"), "{stdout}{stderr}");
    let (ok, stdout, stderr) = run(&["plugin", "check", wasm, "--host-config", host_path]);
    assert!(ok && stdout.contains("authorizer-plugin"), "{stdout}{stderr}");
    let (ok, _, stderr) = run(&["plugin", "check", wasm, "--host-config", host_path, "--slot", "router"]);
    let _ = std::fs::remove_file(&host);
    assert!(!ok && stderr.contains("no slot \"router\""), "{stderr}");
}
