//! Builds the plugin components for `wasm32-wasip2` so the host can embed the built-ins
//! with `include_bytes!` and its tests can load every other one: the `plugins/` cargo
//! workspace (built-ins, the SDK, test-only plugins) and the example plugins under
//! `examples/plugins/` (standalone crates, each its own workspace). All of them land in
//! one target directory, `target/wasm-plugins`, whose `wasm32-wasip2/release` directory
//! becomes `BURROW_PLUGIN_ARTIFACTS`.
//!
//! Modelled on wasmtime's `crates/test-programs/artifacts/build.rs`: run the same cargo
//! that runs us, with the environment it leaks into build scripts removed.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const TARGET: &str = "wasm32-wasip2";
/// The components the builds must produce; the host embeds the built-ins and its tests
/// load every one of them.
const ARTIFACTS: &[&str] = &[
    "authorizer_static.wasm",
    "authorizer_callout.wasm",
    "workload_workspace.wasm",
    "workload_ci_job.wasm",
    "workload_terminal.wasm",
    "router_prefer_local.wasm",
    "test_misbehave.wasm",
    "test_http.wasm",
    "test_old_minor.wasm",
    "test_swap_v1.wasm",
    "test_swap_v2.wasm",
    "test_contract.wasm",
    "office_hours.wasm",
    "canary_router.wasm",
];
/// Example plugin crates under `examples/plugins/`, built alongside the workspace.
const EXAMPLES: &[&str] = &["office-hours", "canary-router"];
const MISSING_TARGET: &str = "burrow-host-plugins needs the wasm32-wasip2 Rust target to build its built-in \
                              plugins: run \"rustup target add wasm32-wasip2\" and build again.";

/// Variables cargo sets for build scripts (or that users set for the host build) that
/// would misconfigure a nested build for another target or fight over its locks.
const STRIPPED_ENV: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_MAKEFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS",
];

fn main() -> ExitCode {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .expect("host/plugins/ lives two levels below the workspace root")
        .to_path_buf();
    let plugins = root.join("plugins");
    let examples: Vec<PathBuf> =
        EXAMPLES.iter().map(|name| root.join("examples/plugins").join(name)).collect();
    rerun_if_changed(&root, &plugins, &examples);

    if !target_installed() {
        println!("cargo::error={MISSING_TARGET}");
        return ExitCode::SUCCESS;
    }

    let target_dir = root.join("target").join("wasm-plugins");
    // One directory after another: they share the target directory, and cargo would only
    // make parallel builds wait for its lock anyway.
    for dir in std::iter::once(&plugins).chain(&examples) {
        if let Err(code) = build(dir, &target_dir) {
            return code;
        }
    }

    let artifacts = target_dir.join(TARGET).join("release");
    for name in ARTIFACTS {
        if !artifacts.join(name).is_file() {
            println!("cargo::error=the plugin build did not produce {}", artifacts.join(name).display());
            return ExitCode::SUCCESS;
        }
    }
    println!("cargo::rustc-env=BURROW_PLUGIN_ARTIFACTS={}", artifacts.display());
    ExitCode::SUCCESS
}

/// `cargo build --release --target wasm32-wasip2` in `dir`, into `target_dir`.
fn build(dir: &Path, target_dir: &Path) -> Result<(), ExitCode> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir).args(["build", "--release", "--target", TARGET, "--target-dir"]).arg(target_dir);
    for var in STRIPPED_ENV {
        cmd.env_remove(var);
    }
    let output = match cmd.output() {
        Ok(output) => output,
        Err(err) => {
            println!("cargo::error=could not run cargo to build the plugins in {}: {err}", dir.display());
            return Err(ExitCode::SUCCESS);
        }
    };
    if !output.status.success() {
        // Exiting non-zero makes cargo print our stderr: the plugin compiler errors.
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        eprintln!("building the plugins in {} for {TARGET} failed (see above)", dir.display());
        return Err(ExitCode::FAILURE);
    }
    Ok(())
}

/// Watches sources only, never a `target/` or the artifacts, so building does not
/// retrigger itself.
fn rerun_if_changed(root: &Path, plugins: &Path, examples: &[PathBuf]) {
    let watch = |path: PathBuf| println!("cargo::rerun-if-changed={}", path.display());
    watch(root.join("wit"));
    watch(plugins.join("Cargo.toml"));
    watch(plugins.join("Cargo.lock"));
    let crates = std::fs::read_dir(plugins)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|dir| dir.join("Cargo.toml").is_file());
    for crate_dir in crates.chain(examples.iter().cloned()) {
        // Cargo.toml, and the plugin manifests `embed_manifest!` puts into the component.
        let tomls = std::fs::read_dir(&crate_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"));
        for toml in tomls {
            watch(toml);
        }
        watch(crate_dir.join("src"));
        // Standalone example workspaces pin their own dependencies...
        if crate_dir.join("Cargo.lock").is_file() {
            watch(crate_dir.join("Cargo.lock"));
        }
        // ...and a plugin may build against its own copy of the WIT (test-old-minor).
        if crate_dir.join("wit").is_dir() {
            watch(crate_dir.join("wit"));
        }
    }
}

/// rustup installs each target's standard library under the sysroot; without it the
/// nested build would fail with a wall of "can't find crate for `std`" errors.
fn target_installed() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(output) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&output.stdout);
    Path::new(sysroot.trim()).join("lib").join("rustlib").join(TARGET).is_dir()
}
