//! Builds the plugin components in `plugins/` (a separate cargo workspace) for
//! `wasm32-wasip2` so the host can embed the built-ins with `include_bytes!`.
//!
//! Modelled on wasmtime's `crates/test-programs/artifacts/build.rs`: run the same cargo
//! that runs us, with the environment it leaks into build scripts removed, into a
//! target directory of its own under the workspace's `target/`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const TARGET: &str = "wasm32-wasip2";
/// The components `plugins/` must produce; the host's tests load every one of them.
const ARTIFACTS: &[&str] = &["authorizer_static.wasm", "router_hostname.wasm", "test_misbehave.wasm"];
const MISSING_TARGET: &str = "burrow-host needs the wasm32-wasip2 Rust target to build its built-in \
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
    let root = manifest_dir.parent().expect("host/ lives inside the workspace root").to_path_buf();
    let plugins = root.join("plugins");
    rerun_if_changed(&root, &plugins);

    if !target_installed() {
        println!("cargo::error={MISSING_TARGET}");
        return ExitCode::SUCCESS;
    }

    let target_dir = root.join("target").join("wasm-plugins");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&plugins)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    for var in STRIPPED_ENV {
        cmd.env_remove(var);
    }
    let output = match cmd.output() {
        Ok(output) => output,
        Err(err) => {
            println!("cargo::error=could not run cargo to build the plugins in {}: {err}", plugins.display());
            return ExitCode::SUCCESS;
        }
    };
    if !output.status.success() {
        // Exiting non-zero makes cargo print our stderr: the plugin compiler errors.
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        eprintln!("building the plugins in {} for {TARGET} failed (see above)", plugins.display());
        return ExitCode::FAILURE;
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

/// Watches sources only, never `plugins/target` or the artifacts, so building does not
/// retrigger itself.
fn rerun_if_changed(root: &Path, plugins: &Path) {
    println!("cargo::rerun-if-changed={}", root.join("wit").display());
    println!("cargo::rerun-if-changed={}", plugins.join("Cargo.toml").display());
    println!("cargo::rerun-if-changed={}", plugins.join("Cargo.lock").display());
    let Ok(entries) = std::fs::read_dir(plugins) else { return };
    for entry in entries.flatten() {
        let crate_dir = entry.path();
        if crate_dir.join("Cargo.toml").is_file() {
            println!("cargo::rerun-if-changed={}", crate_dir.join("Cargo.toml").display());
            println!("cargo::rerun-if-changed={}", crate_dir.join("src").display());
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
