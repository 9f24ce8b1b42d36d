//! SSH into workloads with the real OpenSSH client (`ssh`, `scp`, `sftp`) against a real
//! host and agent: logins through the authorizer, sessions in the agent's shell (with
//! and without a terminal), sftp and scp through the workload's `sftp-server`, and
//! `direct-tcpip` forwards. `cargo test ssh` runs them.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use burrow_tests::workload::Workload;
use burrow_tests::*;
use sha2::{Digest, Sha256};

/// A host with `[ssh]`, agent `a1` serving sessions (`ssh`) and a web service (`web`),
/// and users alice (allowed on a1, by key or token) and bob (known, not allowed).
struct Fixture {
    host: TestHost,
    _workload: Workload,
    _agent: burrow_agent::AgentHandle,
    dir: PathBuf,
    alice_key: PathBuf,
    bob_key: PathBuf,
    stranger_key: PathBuf,
    _cleanup: Cleanup,
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "burrow-ssh-{what}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An Ed25519 key made by `ssh-keygen`; returns its path and fingerprint.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("ssh-keygen").arg("-lf").arg(path.with_extension("pub")).output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let fingerprint = line.split_whitespace().nth(1).expect("ssh-keygen -l prints a fingerprint").to_owned();
    (path, fingerprint)
}

impl Fixture {
    async fn start() -> Fixture {
        Self::start_with(Options::default()).await
    }

    async fn start_with(options: Options) -> Fixture {
        let Options { ssh_loop, expires_at } = options;
        let dir = temp_dir("fixture");
        let (alice_key, alice_fp) = keygen(&dir, "alice");
        let (bob_key, bob_fp) = keygen(&dir, "bob");
        let (stranger_key, _) = keygen(&dir, "stranger");
        let users = format!(
            "users = [{{ name = \"alice\", token_sha256 = \"{}\" }}, {{ name = \"bob\", token_sha256 = \"{}\" }}], \
             ssh_keys = [{{ user = \"alice\", fingerprint = \"{alice_fp}\" }}, {{ user = \"bob\", fingerprint = \"{bob_fp}\" }}], \
             workloads = [{{ agent = \"{AGENT}\", service = \"*\", access = \"token\", users = [\"alice\"] }}]",
            sha256_hex(ALICE_TOKEN),
            sha256_hex(BOB_TOKEN),
        );
        // Agent a1, with an end (the workspace plugin's `expires-at` label) if asked.
        let labels =
            expires_at.map_or(String::new(), |at| format!(", labels = {{ \"expires-at\" = \"{at}\" }}"));
        let authorizer = format!(
            "source = \"builtin:authorizer-static\"\nconfig = {{ agents = [{{ id = \"{AGENT}\", token_sha256 = \"{}\"{labels} }}], default_access = \"deny\", {users} }}",
            sha256_hex(TOKEN)
        );
        let mut extra =
            format!("[ssh]\nlisten = \"127.0.0.1:0\"\nhost_key = \"{}\"\n", dir.join("host_key").display());
        if expires_at.is_some() {
            extra.push_str("[plugins]\nexpiry_check = \"1s\"\n");
        }
        let parts = ConfigParts { authorizer, extra, ..Default::default() };
        let host = TestHost::start(parts.build()).await;
        let workload = Workload::start("w1").await;
        let mut services = vec![workload.service("web")];
        if ssh_loop {
            services.push(format!("loop={}", host.ssh_addr.expect("an SSH port")));
        }
        let mut config = agent_config(&host.agent_url("grpc"), TOKEN, &services);
        config.sessions = Some(shell_sessions(Some(&dir)));
        let agent = burrow_agent::spawn(config);
        wait_connected(&agent).await;
        let _cleanup = Cleanup(dir.clone());
        Fixture { host, _workload: workload, _agent: agent, dir, alice_key, bob_key, stranger_key, _cleanup }
    }

    fn port(&self) -> u16 {
        self.host.ssh_addr.expect("the fixture has an SSH port").port()
    }

    fn base_args(&self, port_flag: &str) -> Vec<String> {
        base_args(port_flag, self.port())
    }

    fn key_args(&self, key: &Path) -> Vec<String> {
        key_args(key)
    }

    /// `ssh` with `key` as `user`, running `command`.
    fn ssh(&self, key: &Path, user: &str, extra: &[&str], command: &str) -> Output {
        let mut cmd = Command::new("ssh");
        cmd.args(self.base_args("-p")).args(self.key_args(key)).args(extra);
        cmd.arg(format!("{user}@127.0.0.1")).arg(command);
        run(cmd)
    }
}

/// What a fixture differs in.
#[derive(Default)]
struct Options {
    /// The agent also offers Burrow's own SSH port as TCP service `loop`, an SSH server
    /// to jump to.
    ssh_loop: bool,
    /// The workspace ends at this Unix time in ms.
    expires_at: Option<u64>,
}

/// Removes the fixture's directory (keys, files) when the test ends.
/// Options every client here uses: no config files, no known_hosts, no agent.
fn base_args(port_flag: &str, port: u16) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        port_flag,
        &port.to_string(),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=20",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Log in with `key` alone, never asking anything.
fn key_args(key: &Path) -> Vec<String> {
    let mut args = vec!["-o".into(), "BatchMode=yes".into(), "-o".into(), "IdentitiesOnly=yes".into()];
    args.extend(["-o".into(), "IdentityAgent=none".into(), "-i".into(), key.display().to_string()]);
    args
}

/// Spawns `cmd` (whose remote command prints `started` first) and returns it once the
/// session is running.
async fn spawn_started(mut cmd: Command) -> std::process::Child {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let started = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 8];
        let n = stdout.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(started.starts_with("started"), "the session runs: {started:?}");
    child
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a client with no terminal and a deadline, so a hang fails the test with output.
fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("the OpenSSH client runs");
    wait_with_deadline(child, Duration::from_secs(60))
}

fn wait_with_deadline(child: std::process::Child, limit: Duration) -> Output {
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(id.to_string()).status();
            panic!("client still running after {limit:?}");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_key_login_runs_a_command_and_returns_its_exit_status() {
    let f = Fixture::start().await;
    let admin = f.host.admin_addr;
    let out = tokio::task::spawn_blocking(move || {
        f.ssh(&f.alice_key, AGENT, &[], "echo hi; echo oops >&2; exit 3")
    })
    .await
    .unwrap();
    let (_, _, metrics) = burrow_tests::clients::get(admin, "localhost", "/metrics").await;
    let metrics = text(&metrics);
    assert_eq!(metric(&metrics, "burrow_ssh_logins_total{result=\"accepted\"}"), 1.0, "{metrics}");
    let opened = "burrow_ssh_channels_total{kind=\"session\",result=\"opened\"}";
    assert_eq!(metric(&metrics, opened), 1.0, "{metrics}");
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    assert_eq!(text(&out.stderr), "oops\n", "stderr arrives separately without a terminal");
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_session_environment_is_the_agents_not_the_clients() {
    let f = Fixture::start().await;
    let key = f.alice_key.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("ssh");
        cmd.env("LC_BURROW_TEST", "kept").env("EVIL", "dropped");
        cmd.args(f.base_args("-p")).args(f.key_args(&key));
        cmd.args(["-o", "SendEnv=LC_BURROW_TEST EVIL"]);
        cmd.arg(format!("{AGENT}@127.0.0.1"))
            .arg("echo \"$LC_BURROW_TEST|${EVIL:-unset}|$BURROW_USER|$(pwd)\"");
        (run(cmd), std::fs::canonicalize(&f.dir).unwrap())
    })
    .await
    .unwrap();
    let (out, dir) = out;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("kept|unset|alice|{}\n", dir.display()));
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_token_login_with_the_token_as_password() {
    let f = Fixture::start().await;
    let out = tokio::task::spawn_blocking(move || {
        let askpass = f.dir.join("askpass.sh");
        std::fs::write(&askpass, format!("#!/bin/sh\necho {ALICE_TOKEN}\n")).unwrap();
        std::fs::set_permissions(&askpass, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let mut cmd = Command::new("ssh");
        cmd.args(f.base_args("-p"));
        cmd.args(["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password"]);
        cmd.args(["-o", "NumberOfPasswordPrompts=1", "-o", "IdentityAgent=none"]);
        cmd.env("SSH_ASKPASS", &askpass).env("SSH_ASKPASS_REQUIRE", "force").env_remove("DISPLAY");
        cmd.arg(format!("{AGENT}@127.0.0.1")).arg("echo token-ok");
        run(cmd)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "token-ok\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_refusals_look_alike_for_a_wrong_key_an_unknown_user_and_a_denied_user() {
    let f = Fixture::start().await;
    let admin = f.host.admin_addr;
    let outs = tokio::task::spawn_blocking(move || {
        [
            f.ssh(&f.stranger_key, AGENT, &[], "true"),           // nobody's key
            f.ssh(&f.alice_key, "no!such!workload", &[], "true"), // no workload
            f.ssh(&f.bob_key, AGENT, &[], "true"),                // known, not allowed
        ]
    })
    .await
    .unwrap();
    let mut lines = Vec::new();
    for out in &outs {
        assert_eq!(out.status.code(), Some(255), "stderr: {}", text(&out.stderr));
        let stderr = text(&out.stderr);
        let denied =
            stderr.lines().find(|l| l.contains("Permission denied")).unwrap_or_else(|| panic!("{stderr}"));
        // The user name leads the line; what follows must not say which step refused.
        lines.push(denied.split_once("Permission denied").unwrap().1.to_owned());
        assert!(out.stdout.is_empty());
    }
    assert!(lines.windows(2).all(|w| w[0] == w[1]), "refusals differ: {lines:?}");
    // Each refusal is counted (OpenSSH may try a key more than once; at least once each).
    let (_, _, metrics) = burrow_tests::clients::get(admin, "localhost", "/metrics").await;
    let metrics = text(&metrics);
    let refused = metric(&metrics, "burrow_ssh_logins_total{result=\"refused\"}");
    assert!(refused >= 3.0, "{metrics}");
    assert_eq!(metric(&metrics, "burrow_ssh_logins_total{result=\"accepted\"}"), 0.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_interactive_terminal_follows_a_resize() {
    let f = Fixture::start().await;
    let args: Vec<String> = f.base_args("-p").into_iter().chain(f.key_args(&f.alice_key)).collect();
    let (pty, pts) = pty_process::blocking::open().unwrap();
    pty.resize(pty_process::Size::new(24, 80)).unwrap();
    let mut child = pty_process::blocking::Command::new("ssh")
        .args(&args)
        .arg("-tt")
        .arg(format!("{AGENT}@127.0.0.1"))
        .spawn(pts)
        .expect("ssh starts on a terminal");
    let mut pty = pty;
    let result = tokio::task::spawn_blocking(move || {
        let mut seen = String::new();
        let read_until = |pty: &mut pty_process::blocking::Pty, needle: &str, seen: &mut String| {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut buf = [0u8; 4096];
            while !seen.contains(needle) {
                assert!(std::time::Instant::now() < deadline, "no {needle:?} in {seen:?}");
                match pty.read(&mut buf) {
                    Ok(0) | Err(_) => panic!("terminal closed before {needle:?}; saw {seen:?}"),
                    Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        };
        pty.write_all(b"stty size; echo size-one-done\n").unwrap();
        read_until(&mut pty, "24 80", &mut seen);
        read_until(&mut pty, "size-one-done\r\n", &mut seen);
        seen.clear();
        pty.resize(pty_process::Size::new(40, 120)).unwrap();
        // SIGWINCH reaches ssh, which sends window-change; ask until the shell sees it.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            pty.write_all(b"stty size\n").unwrap();
            let mut buf = [0u8; 4096];
            let n = pty.read(&mut buf).unwrap_or(0);
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains("40 120") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "resize never arrived: {seen:?}");
        }
        pty.write_all(b"exit 7\n").unwrap();
        let mut rest = Vec::new();
        let _ = pty.read_to_end(&mut rest);
        child.wait().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(result.code(), Some(7));
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_scp_of_50_mb_both_ways_keeps_every_byte() {
    let f = Fixture::start().await;
    let out = tokio::task::spawn_blocking(move || {
        let local = f.dir.join("local.bin");
        let mut data = vec![0u8; 50 * 1024 * 1024];
        for (i, chunk) in data.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(
                &((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes()[..chunk.len()],
            );
        }
        std::fs::write(&local, &data).unwrap();
        let remote = f.dir.join("remote.bin");
        let back = f.dir.join("back.bin");
        let scp = |from: String, to: String| {
            let mut cmd = Command::new("scp");
            cmd.args(f.base_args("-P")).args(f.key_args(&f.alice_key)).arg("-q").arg(from).arg(to);
            run(cmd)
        };
        let up = scp(local.display().to_string(), format!("{AGENT}@127.0.0.1:{}", remote.display()));
        assert!(up.status.success(), "scp up: {}", text(&up.stderr));
        let down = scp(format!("{AGENT}@127.0.0.1:{}", remote.display()), back.display().to_string());
        assert!(down.status.success(), "scp down: {}", text(&down.stderr));
        (sha256_file(&local), sha256_file(&remote), sha256_file(&back))
    })
    .await
    .unwrap();
    assert_eq!(out.0, out.1, "upload");
    assert_eq!(out.0, out.2, "download");
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_sftp_put_get_and_ls() {
    let f = Fixture::start().await;
    let out = tokio::task::spawn_blocking(move || {
        std::fs::write(f.dir.join("hello.txt"), "hello over sftp\n").unwrap();
        let batch = f.dir.join("batch");
        std::fs::write(
            &batch,
            format!(
                "cd {dir}\nput {dir}/hello.txt uploaded.txt\nls -1\nget uploaded.txt {dir}/fetched.txt\n",
                dir = f.dir.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("sftp");
        cmd.args(f.base_args("-P")).args(f.key_args(&f.alice_key)).arg("-b").arg(&batch);
        cmd.arg(format!("{AGENT}@127.0.0.1"));
        (run(cmd), std::fs::read_to_string(f.dir.join("fetched.txt")).ok())
    })
    .await
    .unwrap();
    let (out, fetched) = out;
    assert!(out.status.success(), "sftp: {}", text(&out.stderr));
    assert!(text(&out.stdout).lines().any(|l| l.trim() == "uploaded.txt"), "{}", text(&out.stdout));
    assert_eq!(fetched.as_deref(), Some("hello over sftp\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_local_forward_reaches_the_workloads_http_service() {
    let f = Fixture::start().await;
    let local_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cmd = Command::new("ssh");
    cmd.args(f.base_args("-p")).args(f.key_args(&f.alice_key));
    cmd.args(["-N", "-o", "ExitOnForwardFailure=yes", "-L", &format!("127.0.0.1:{local_port}:web:80")]);
    cmd.arg(format!("{AGENT}@127.0.0.1")).stdin(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // The forward is up once its local port accepts.
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], local_port).into();
    eventually(Duration::from_secs(20), "ssh -L listening", || std::net::TcpStream::connect(addr).is_ok())
        .await;
    let mut client = burrow_tests::clients::connect(addr, &burrow_tests::clients::Mode::h1()).await;
    let (status, _, body) = client.get("anything", "/hello").await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(&body[..], b"hello from w1");
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_w_carries_raw_bytes_to_a_service() {
    let f = Fixture::start().await;
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("ssh");
        cmd.args(f.base_args("-p")).args(f.key_args(&f.alice_key));
        cmd.args(["-W", "web:80"]).arg(format!("{AGENT}@127.0.0.1"));
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        // `-W` is a byte pipe to the service: speak HTTP over it. Input stays open (the
        // test workload ends a connection whose input ends); the workload's close after
        // the answer ends the forward, and with it ssh.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let out = wait_with_deadline(child, Duration::from_secs(60));
        drop(stdin);
        out
    })
    .await
    .unwrap();
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("HTTP/1.1 200"), "stdout: {stdout}\nstderr: {}", text(&out.stderr));
    assert!(stdout.ends_with("hello from w1"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_proxy_command_with_w_jumps_through_burrow() {
    // The agent offers Burrow's own SSH port as service `loop`: `ssh -W loop:22` through
    // Burrow reaches an SSH server (Burrow again), which the outer ssh logs into.
    let f = Fixture::start_with(Options { ssh_loop: true, ..Default::default() }).await;
    let out = tokio::task::spawn_blocking(move || {
        let key = f.alice_key.display().to_string();
        let proxy = format!(
            "ssh -F /dev/null -p {port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o LogLevel=ERROR -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none -i {key} \
             -W loop:22 {AGENT}@127.0.0.1",
            port = f.port()
        );
        let mut cmd = Command::new("ssh");
        cmd.args(f.base_args("-p")).args(f.key_args(&f.alice_key));
        cmd.arg("-o").arg(format!("ProxyCommand={proxy}"));
        cmd.arg(format!("{AGENT}@inner")).arg("echo inner");
        run(cmd)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "inner\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_remote_forwarding_and_unknown_destinations_are_refused() {
    let f = Fixture::start().await;
    let outs = tokio::task::spawn_blocking(move || {
        let remote =
            f.ssh(&f.alice_key, AGENT, &["-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9"], "true");
        let mut cmd = Command::new("ssh");
        cmd.args(f.base_args("-p")).args(f.key_args(&f.alice_key));
        cmd.args(["-W", "nosuch:1"]).arg(format!("{AGENT}@127.0.0.1"));
        (remote, run(cmd))
    })
    .await
    .unwrap();
    let (remote, unknown) = outs;
    assert_eq!(remote.status.code(), Some(255), "-R must fail: {}", text(&remote.stderr));
    assert!(text(&remote.stderr).contains("forwarding failed"), "{}", text(&remote.stderr));
    assert_eq!(unknown.status.code(), Some(255));
    assert!(text(&unknown.stderr).contains("stdio forwarding failed"), "{}", text(&unknown.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_host_shutdown_ends_a_live_session_with_a_reason() {
    let f = Fixture::start().await;
    let mut cmd = Command::new("ssh");
    cmd.args(f.base_args("-p")).args(f.key_args(&f.alice_key));
    cmd.arg(format!("{AGENT}@127.0.0.1")).arg("echo started; sleep 600");
    let child = spawn_started(cmd).await;
    let Fixture { host, .. } = f;
    host.stop().await.expect("the host stops cleanly with a session open");
    let out = tokio::task::spawn_blocking(move || wait_with_deadline(child, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the host is shutting down"), "{}", text(&out.stderr));
}

/// `ssh` checking the host key against `known` under one alias (ports differ across
/// runs), `accept_new` to record it on first use; running `command`.
fn ssh_known(f: &Fixture, known: &Path, accept_new: bool, command: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args([
        "-F",
        "/dev/null",
        "-p",
        &f.port().to_string(),
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=20",
    ]);
    cmd.args(["-o", &format!("UserKnownHostsFile={}", known.display()), "-o", "HostKeyAlias=burrow-test"]);
    cmd.args([
        "-o",
        if accept_new { "StrictHostKeyChecking=accept-new" } else { "StrictHostKeyChecking=yes" },
    ]);
    cmd.args(f.key_args(&f.alice_key)).arg(format!("{AGENT}@127.0.0.1")).arg(command);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_host_restart_ends_a_session_cleanly_and_serves_again() {
    let mut f = Fixture::start().await;
    let known = f.dir.join("known_hosts");
    let cmd = ssh_known(&f, &known, true, "echo started; sleep 600");
    let child = spawn_started(cmd).await;

    f.host.restart().await;
    let out = tokio::task::spawn_blocking(move || wait_with_deadline(child, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the host is shutting down"), "{}", text(&out.stderr));

    // The agent reconnects by itself; the same host key (kept in its file) is accepted
    // by a client that now insists on it, and a new session runs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let f = std::sync::Arc::new(f);
    loop {
        let (g, k) = (f.clone(), known.clone());
        let out =
            tokio::task::spawn_blocking(move || run(ssh_known(&g, &k, false, "echo again"))).await.unwrap();
        if out.status.success() {
            assert_eq!(text(&out.stdout), "again\n");
            break;
        }
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("HOST IDENTIFICATION HAS CHANGED"), "the host key changed: {stderr}");
        assert!(tokio::time::Instant::now() < deadline, "no session after the restart: {stderr}");
        // Waiting for the agent's reconnect (its backoff), observed through ssh itself.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Trusts the test host's key (it is made by the fixture on loopback).
struct TrustAll;

impl russh::client::Handler for TrustAll {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Reads a russh channel until its output contains `needle`, or it reports the exit.
async fn russh_until(
    channel: &mut russh::Channel<russh::client::Msg>,
    needle: &str,
) -> Result<String, russh::ChannelMsg> {
    let mut seen = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), channel.wait())
            .await
            .unwrap_or_else(|_| panic!("nothing for 30 s; saw {:?}", String::from_utf8_lossy(&seen)));
        match message {
            Some(russh::ChannelMsg::Data { data }) => {
                seen.extend_from_slice(&data);
                if String::from_utf8_lossy(&seen).contains(needle) {
                    return Ok(String::from_utf8_lossy(&seen).into_owned());
                }
            }
            Some(end @ (russh::ChannelMsg::ExitStatus { .. } | russh::ChannelMsg::ExitSignal { .. })) => {
                return Err(end)
            }
            Some(_) => {}
            None => panic!("the channel closed; saw {:?}", String::from_utf8_lossy(&seen)),
        }
    }
}

// OpenSSH's client has no way to send a signal; russh's has.
#[tokio::test(flavor = "multi_thread")]
async fn ssh_signals_reach_the_program_and_exit_signals_come_back() {
    use russh::keys::{load_secret_key, PrivateKeyWithHashAlg};
    use russh::{ChannelMsg, Sig};

    let f = Fixture::start().await;
    let key = std::sync::Arc::new(load_secret_key(&f.alice_key, None).unwrap());
    let config = std::sync::Arc::new(russh::client::Config { nodelay: true, ..Default::default() });
    let session = russh::client::connect(config, ("127.0.0.1", f.port()), TrustAll).await.unwrap();
    let mut session = session;
    let auth = session.authenticate_publickey(AGENT, PrivateKeyWithHashAlg::new(key, None)).await.unwrap();
    assert!(auth.success(), "{auth:?}");

    // TERM reaches the program, whose trap answers and sets the exit status.
    let mut channel = session.channel_open_session().await.unwrap();
    channel
        .exec(true, "trap 'echo got-term; exit 5' TERM; echo ready; while :; do sleep 0.05; done")
        .await
        .unwrap();
    russh_until(&mut channel, "ready").await.expect("the program started");
    channel.signal(Sig::TERM).await.unwrap();
    russh_until(&mut channel, "got-term").await.expect("the trap ran");
    match russh_until(&mut channel, "never printed").await {
        Err(ChannelMsg::ExitStatus { exit_status }) => assert_eq!(exit_status, 5),
        other => panic!("expected exit status 5, got {other:?}"),
    }

    // A program killed by a signal is reported as such, not as a status.
    let mut channel = session.channel_open_session().await.unwrap();
    channel.exec(true, "kill -KILL $$").await.unwrap();
    match russh_until(&mut channel, "never printed").await {
        Err(ChannelMsg::ExitSignal { signal_name, core_dumped, .. }) => {
            assert!(matches!(signal_name, Sig::KILL), "{signal_name:?}");
            assert!(!core_dumped);
        }
        other => panic!("expected exit signal KILL, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_an_expired_workload_ends_a_live_session_with_a_reason() {
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    // Long enough to start, log in and run under a loaded CI machine; the host checks
    // every second, and the test waits for the end it observes.
    let f = Fixture::start_with(Options { expires_at: Some(now_ms + 12_000), ..Default::default() }).await;
    let mut cmd = Command::new("ssh");
    cmd.args(f.base_args("-p")).args(f.key_args(&f.alice_key));
    cmd.arg(format!("{AGENT}@127.0.0.1")).arg("echo started; sleep 600");
    let child = spawn_started(cmd).await;
    let out = tokio::task::spawn_blocking(move || wait_with_deadline(child, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the workload has ended"), "{}", text(&out.stderr));
    // And a new login is refused: the workload is over.
    let again = tokio::task::spawn_blocking(move || f.ssh(&f.alice_key, AGENT, &[], "true")).await.unwrap();
    assert_eq!(again.status.code(), Some(255));
    assert!(text(&again.stderr).contains("Permission denied"), "{}", text(&again.stderr));
}

/// Two replicas (r0, r1) on one Redis with `[ssh]` and one shared host key; agent a1 holds
/// streams on r0 only. `expires_at`: the workspace ends then (checked every second).
struct TwoReplicas {
    _redis: burrow_tests::redis::RedisServer,
    hosts: Vec<TestHost>,
    _agent: burrow_agent::AgentHandle,
    key: PathBuf,
    _cleanup: Cleanup,
}

impl TwoReplicas {
    async fn start(expires_at: Option<u64>) -> TwoReplicas {
        let redis = burrow_tests::redis::RedisServer::start();
        let dir = temp_dir("cluster");
        let cleanup = Cleanup(dir.clone());
        let (key, fingerprint) = keygen(&dir, "alice");
        let labels =
            expires_at.map_or(String::new(), |at| format!(", labels = {{ \"expires-at\" = \"{at}\" }}"));
        let authorizer = format!(
            "source = \"builtin:authorizer-static\"\nconfig = {{ agents = [{{ id = \"{AGENT}\", token_sha256 = \"{}\"{labels} }}], \
             default_access = \"deny\", users = [{{ name = \"alice\", token_sha256 = \"{}\" }}], \
             ssh_keys = [{{ user = \"alice\", fingerprint = \"{fingerprint}\" }}], \
             workloads = [{{ agent = \"{AGENT}\", service = \"*\", access = \"token\", users = [\"alice\"] }}] }}",
            sha256_hex(TOKEN),
            sha256_hex(ALICE_TOKEN),
        );
        let mut hosts = Vec::new();
        for replica in ["r0", "r1"] {
            let mut parts = cluster_parts(replica, &redis.url(), "");
            parts.authorizer = authorizer.clone();
            // One host key for the cluster, as the docs ask: the first replica creates it.
            parts.extra.push_str(&format!(
                "[ssh]\nlisten = \"127.0.0.1:0\"\nhost_key = \"{}\"\n",
                dir.join("host_key").display()
            ));
            if expires_at.is_some() {
                parts.extra.push_str("[plugins]\nexpiry_check = \"1s\"\n");
            }
            let host = TestHost::start(parts.build()).await;
            host.wait_ready().await;
            hosts.push(host);
        }
        let mut config = agent_config(&hosts[0].agent_url("grpc"), TOKEN, &[]);
        config.connections = 1;
        config.sessions = Some(shell_sessions(None));
        let agent = burrow_agent::spawn(config);
        wait_connected(&agent).await;
        TwoReplicas { _redis: redis, hosts, _agent: agent, key, _cleanup: cleanup }
    }

    /// `ssh` into replica r1 running `command`.
    fn ssh_r1(&self, command: &str) -> Command {
        let port = self.hosts[1].ssh_addr.unwrap().port();
        let mut cmd = Command::new("ssh");
        cmd.args(base_args("-p", port)).args(key_args(&self.key));
        cmd.arg(format!("{AGENT}@127.0.0.1")).arg(command);
        cmd
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_a_session_on_another_replica_reaches_the_agent_through_the_cluster() {
    let cluster = TwoReplicas::start(None).await;
    let cmd = cluster.ssh_r1("echo across; exit 4");
    let out = tokio::task::spawn_blocking(move || run(cmd)).await.unwrap();
    assert_eq!(out.status.code(), Some(4), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "across\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_a_forwarded_session_ends_when_the_workload_ends() {
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    // Room for two replicas, Redis and a login under a loaded CI machine; the wait below
    // is for the end, observed, not for a fixed time.
    let cluster = TwoReplicas::start(Some(now_ms + 20_000)).await;
    let cmd = cluster.ssh_r1("echo started; sleep 600");
    let child = spawn_started(cmd).await;
    let out = tokio::task::spawn_blocking(move || wait_with_deadline(child, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the workload has ended"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_a_terminated_workload_ends_a_live_session_with_the_control_planes_reason() {
    use burrow_tests::lifecycle;
    let dir = temp_dir("lifecycle");
    let _cleanup = Cleanup(dir.clone());
    let files = lifecycle::Dir::new("ssh-lifecycle");
    let (key, fingerprint) = keygen(&dir, "alice");
    // No rule names the workload: its owner, alice, is admitted by its labels.
    let authorizer = format!(
        "source = \"builtin:authorizer-static\"\nconfig = {{ default_access = \"deny\", \
         users = [{{ name = \"alice\", token_sha256 = \"{}\" }}], \
         ssh_keys = [{{ user = \"alice\", fingerprint = \"{fingerprint}\" }}] }}",
        sha256_hex(ALICE_TOKEN)
    );
    let extra = format!(
        "[ssh]\nlisten = \"127.0.0.1:0\"\nhost_key = \"{}\"\n{}",
        dir.join("host_key").display(),
        lifecycle::control_table(files.path(), "")
    );
    let host = TestHost::start(ConfigParts { authorizer, extra, ..Default::default() }.build()).await;
    let mut control = lifecycle::client(&host).await;
    let request = burrow_proto::control_pb::CreateWorkloadRequest {
        services: vec!["ssh".into()],
        ..lifecycle::workspace("ws-ssh")
    };
    let token = lifecycle::create(&mut control, request).await;
    let mut config = agent_config(&host.agent_url("grpc"), &token.token, &[]);
    config.sessions = Some(shell_sessions(Some(&dir)));
    let agent = burrow_agent::spawn(config);
    wait_connected(&agent).await;

    let mut cmd = Command::new("ssh");
    cmd.args(base_args("-p", host.ssh_addr.unwrap().port())).args(key_args(&key));
    cmd.arg("ws-ssh@127.0.0.1").arg("echo started; sleep 600");
    let child = spawn_started(cmd).await;
    lifecycle::terminate(&mut control, "ws-ssh", "the workspace was deleted").await;
    let out = tokio::task::spawn_blocking(move || wait_with_deadline(child, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("the workload has ended: the workspace was deleted"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(lifecycle::final_reason(&agent).await, burrow_agent::FinalReason::WorkloadTerminated);
}
