//! `--suite ssh`: Burrow's SSH path (OpenSSH or russh client → the host's SSH ingress →
//! gRPC tunnel → the agent's shell in a PTY) against a direct local OpenSSH `sshd`, side
//! by side in one run:
//!
//! 1. **scp**: the real `scp` uploads and downloads a `--bytes` file (MiB/s of the whole
//!    process); every copy is checked by SHA-256 before its figure counts.
//! 2. **Keystroke echo**: the bench's russh client opens a session with a terminal
//!    running `cat` on a non-canonical tty without echo and sends `--keystrokes` single
//!    bytes, each after the previous echo arrived; p50 and p99 per run.
//! 3. **Session setup**: from before the TCP connect to the first output of
//!    `exec "echo ready"`, with the russh client (the protocol's cost) and with an `ssh`
//!    process (from its spawn: what a user waits for); p50 of `--sessions` per run.
//!
//! Every figure is the median of `--runs` per-run figures; each ratio is Burrow / direct
//! within one run, and the table shows the median of those ratios. The two paths take
//! turns within each measurement, the first path alternating from run to run. Per-run
//! figures, with the machine's load and CPU use during each run, go to
//! `bench/results/<date>-ssh/`.

mod client;
mod openssh;
mod sshd;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use burrow_tests::{agent_config, sha256_hex, wait_connected, ConfigParts, TestHost, AGENT, TOKEN};
use sha2::{Digest, Sha256};

use crate::procfs::{idle_check, loadavg, CpuMeter};
use crate::{median, percentile, Args};
use client::SshClient;
use sshd::{Sshd, SSHD};

/// How long any single wait (a server's greeting, a session's output, an echo) may take
/// before the run is abandoned as broken.
const PATIENCE: Duration = Duration::from_secs(20);

/// Where an SSH client connects, and as whom.
pub(crate) struct Target {
    name: &'static str,
    addr: SocketAddr,
    user: String,
}

/// One reported figure: its key in the results file, its label and how it is printed.
struct Figure {
    key: &'static str,
    label: String,
    decimals: usize,
}

/// Per-run values of one figure, for direct (`[0]`) and Burrow (`[1]`).
type Values = [Vec<f64>; 2];

/// Makes an Ed25519 key pair without a passphrase at `path` (and `path.pub`).
fn keygen(path: &Path) -> anyhow::Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "burrow-bench", "-f"])
        .arg(path)
        .output()
        .context("running ssh-keygen")?;
    anyhow::ensure!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

fn command_output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    anyhow::ensure!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The login shell sshd gives this user, so the agent runs commands with the same one.
fn login_shell() -> anyhow::Result<(String, PathBuf)> {
    let user = command_output("id", &["-un"])?;
    let entry = command_output("getent", &["passwd", &user])?;
    let shell = entry.rsplit(':').next().filter(|s| !s.is_empty()).context("no login shell in passwd")?;
    Ok((user, PathBuf::from(shell)))
}

/// Removes the bench's temp dir (keys, configs, copies) however the suite ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Burrow's side: a host with `[ssh]`, an agent `a1` serving sessions named `ssh` in
/// `dir` with `shell`, and one user `bench` allowed on it by the bench's key.
struct Burrow {
    host: TestHost,
    agent: burrow_agent::AgentHandle,
    sftp_server: PathBuf,
}

impl Burrow {
    async fn start(dir: &Path, client_pub: &Path, shell: PathBuf) -> anyhow::Result<Burrow> {
        let fingerprint = command_output("ssh-keygen", &["-lf", &client_pub.display().to_string()])?;
        let fingerprint = fingerprint.split_whitespace().nth(1).context("ssh-keygen -l: no fingerprint")?;
        let users = format!(
            "users = [{{ name = \"bench\", token_sha256 = \"{}\" }}], \
             ssh_keys = [{{ user = \"bench\", fingerprint = \"{fingerprint}\" }}], \
             workloads = [{{ agent = \"{AGENT}\", service = \"*\", access = \"token\", users = [\"bench\"] }}]",
            sha256_hex("bench-user-token-0123456789"),
        );
        let authorizer = format!(
            "source = \"builtin:authorizer-static\"\nconfig = {{ agents = [{{ id = \"{AGENT}\", token_sha256 = \"{}\" }}], default_access = \"deny\", {users} }}",
            sha256_hex(TOKEN)
        );
        let extra = format!(
            "[ssh]\nlisten = \"127.0.0.1:0\"\nhost_key = \"{}\"\n",
            dir.join("burrow_host_key").display()
        );
        let host = TestHost::start(ConfigParts { authorizer, extra, ..Default::default() }.build()).await;
        let mut config = agent_config(&host.agent_url("grpc"), TOKEN, &[]);
        // A graceful stop that does not wait for idle tunnels (as in the cluster suite).
        config.shutdown_grace = Duration::from_millis(100);
        let mut sessions = burrow_agent::SessionConfig::new(vec!["ssh".into()]);
        sessions.shell = shell;
        sessions.dir = Some(dir.to_owned());
        let sftp_server = sessions.sftp_server.clone().context("no sftp-server found for the agent")?;
        config.sessions = Some(sessions);
        let agent = burrow_agent::spawn(config);
        wait_connected(&agent).await;
        Ok(Burrow { host, agent, sftp_server })
    }

    fn target(&self) -> anyhow::Result<Target> {
        let addr = self.host.ssh_addr.context("the host has no SSH port")?;
        Ok(Target { name: "burrow", addr, user: AGENT.to_owned() })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.agent.shutdown().await;
        self.host.stop().await?;
        Ok(())
    }
}

/// Writes `bytes` of a fixed pseudo-random pattern (incompressible, so no layer gains by
/// compressing) to `path`; returns its SHA-256.
fn write_source(path: &Path, bytes: u64) -> anyhow::Result<String> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hash = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut word = 0u64;
    let mut left = bytes;
    while left > 0 {
        for eight in chunk.chunks_mut(8) {
            word += 1;
            eight.copy_from_slice(&word.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        hash.update(&chunk[..n]);
        left -= n as u64;
    }
    file.flush()?;
    Ok(hex::encode(hash.finalize()))
}

async fn sha256_file(path: PathBuf) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(hex::encode(hash.finalize()));
            }
            hash.update(&buf[..n]);
        }
    })
    .await?
}

/// Checks a copy against the source before its time may count as a figure.
async fn verify(copy: &Path, expected: &str, what: &str) -> anyhow::Result<()> {
    let got = sha256_file(copy.to_owned()).await?;
    if got != expected {
        bail!("{what}: {} has SHA-256 {got}, the source {expected}", copy.display());
    }
    Ok(())
}

/// One upload and one download of `source` with `scp` on `target`, each verified; MiB/s.
async fn scp_run(
    target: &Target,
    key: &Path,
    dir: &Path,
    source: &Path,
    sha: &str,
    bytes: u64,
) -> anyhow::Result<(f64, f64)> {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    let up = dir.join(format!("up-{}.bin", target.name));
    let down = dir.join(format!("down-{}.bin", target.name));
    let remote = format!("{}:{}", openssh::remote(target), up.display());
    let t = openssh::scp(target, key, &source.display().to_string(), &remote).await?;
    verify(&up, sha, &format!("scp upload via {}", target.name)).await?;
    let up_rate = mib / t.as_secs_f64();
    let t = openssh::scp(target, key, &remote, &down.display().to_string()).await?;
    verify(&down, sha, &format!("scp download via {}", target.name)).await?;
    let down_rate = mib / t.as_secs_f64();
    std::fs::remove_file(&up)?;
    std::fs::remove_file(&down)?;
    Ok((up_rate, down_rate))
}

/// The figures in the order they are printed.
fn figures(args: &Args) -> Vec<Figure> {
    let f = |key, label: String, decimals| Figure { key, label, decimals };
    let mib = args.bytes >> 20;
    let (k, n) = (args.sessions, args.keystrokes);
    vec![
        f("scp_upload_mib_s", format!("`scp` upload, {mib} MiB (MiB/s, whole process)"), 1),
        f("scp_download_mib_s", format!("`scp` download, {mib} MiB (MiB/s, whole process)"), 1),
        f("keystroke_p50_us", format!("keystroke echo p50 (µs, russh, {n} per run)"), 0),
        f("keystroke_p99_us", "keystroke echo p99 (µs)".into(), 0),
        f(
            "setup_russh_p50_ms",
            format!("new session → first output, russh client, p50 (ms, {k} per run)"),
            2,
        ),
        f("setup_ssh_p50_ms", format!("new session → first output, `ssh` process, p50 (ms, {k} per run)"), 2),
    ]
}

/// What every measurement needs.
struct Bench<'a> {
    args: &'a Args,
    russh: SshClient,
    key: PathBuf,
    dir: PathBuf,
    source: PathBuf,
    sha: String,
}

/// The measurements, each taken for both paths before the next; each yields its
/// figures in [`figures`] order.
#[derive(Clone, Copy)]
enum Step {
    Scp,
    Keystrokes,
    SetupRussh,
    SetupSsh,
}

const STEPS: [Step; 4] = [Step::Scp, Step::Keystrokes, Step::SetupRussh, Step::SetupSsh];

impl Bench<'_> {
    async fn step(&self, step: Step, target: &Target) -> anyhow::Result<Vec<f64>> {
        let p50_ms = |mut samples: Vec<Duration>| {
            samples.sort();
            percentile(&samples, 0.5) / 1e3
        };
        Ok(match step {
            Step::Scp => {
                let (up, down) =
                    scp_run(target, &self.key, &self.dir, &self.source, &self.sha, self.args.bytes).await?;
                vec![up, down]
            }
            Step::Keystrokes => {
                let samples = self.russh.keystrokes(target, self.args.keystrokes).await?;
                vec![percentile(&samples, 0.5), percentile(&samples, 0.99)]
            }
            Step::SetupRussh => {
                let mut samples = Vec::with_capacity(self.args.sessions);
                for _ in 0..self.args.sessions {
                    samples.push(self.russh.setup(target).await?);
                }
                vec![p50_ms(samples)]
            }
            Step::SetupSsh => {
                let mut samples = Vec::with_capacity(self.args.sessions);
                for _ in 0..self.args.sessions {
                    samples.push(openssh::ssh_setup(target, &self.key).await?);
                }
                vec![p50_ms(samples)]
            }
        })
    }

    /// Untimed: one of each session kind per path, so first-use costs (the agent's
    /// first shell, sshd's first re-exec, page cache for the programs) stay out of run 1.
    async fn warm_up(&self, targets: &[Target; 2]) -> anyhow::Result<()> {
        for target in targets {
            self.russh.keystrokes(target, 50).await?;
            self.russh.setup(target).await?;
            openssh::ssh_setup(target, &self.key).await?;
        }
        Ok(())
    }
}

/// A line of the results file: run, path, figure key, value.
fn row(out: &mut String, run: usize, path: &str, key: &str, value: impl std::fmt::Display) {
    out.push_str(&format!("{run}\t{path}\t{key}\t{value}\n"));
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.bytes > 0 && args.keystrokes > 0 && args.sessions > 0,
        "--bytes, --keystrokes and --sessions must be positive"
    );
    let dir = std::env::temp_dir().join(format!("burrow-bench-ssh-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = TempDir(dir.clone());
    // sftp-server and sshd resolve paths as given; a canonical dir keeps both the same.
    let dir = std::fs::canonicalize(&dir)?;
    let key = dir.join("client_key");
    keygen(&key)?;
    let client_pub = key.with_extension("pub");
    let (user, shell) = login_shell()?;

    let burrow = Burrow::start(&dir, &client_pub, shell.clone()).await?;
    let sshd = Sshd::start(&dir, &client_pub, &burrow.sftp_server).await?;
    let targets = [Target { name: "direct", addr: sshd.addr, user }, burrow.target()?];

    let source = dir.join("source.bin");
    let bytes = args.bytes;
    let source_path = source.clone();
    let sha = tokio::task::spawn_blocking(move || write_source(&source_path, bytes)).await??;
    let bench = Bench { args, russh: SshClient::new(&key)?, key, dir: dir.clone(), source, sha };

    let stamp = command_output("date", &["-u", "+%F %H%M%S"])?;
    let (date, time) = stamp.split_once(' ').context("date output")?;
    let results_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("results").join(format!("{date}-ssh"));
    std::fs::create_dir_all(&results_dir)?;
    let results = results_dir.join(format!("runs-{time}.tsv"));

    println!("burrow-bench --suite ssh: {} runs, medians of per-run figures", args.runs);
    let version = Command::new("ssh").arg("-V").output().context("ssh -V")?;
    let version = String::from_utf8_lossy(&version.stderr).trim().to_owned();
    println!("  OpenSSH: {version} (client programs, and the direct sshd)");
    println!(
        "  direct: {SSHD} on {}; Burrow: host SSH ingress on {} → grpc tunnel → agent",
        targets[0].addr, targets[1].addr
    );
    println!(
        "  shell on both: {} (sshd: the login shell; agent: `--shell`), sftp-server: {}",
        shell.display(),
        burrow.sftp_server.display()
    );
    for target in &targets {
        println!("  `ssh` ↔ {}: {}", target.name, openssh::negotiated(target, &bench.key).await?);
    }
    bench.warm_up(&targets).await?;

    let figures = figures(args);
    let mut values: Vec<Values> = figures.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    let mut tsv = String::from("run\tpath\tfigure\tvalue\n");
    for run in 0..args.runs {
        idle_check(&format!("run {}", run + 1)).await?;
        let load_before = loadavg();
        let meter = CpuMeter::start(&[sshd.pid])?;
        let mut index = 0;
        for step in STEPS {
            // The first path alternates from run to run, within every measurement.
            let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut got: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
            for t in order {
                got[t] = bench
                    .step(step, &targets[t])
                    .await
                    .with_context(|| format!("run {}, {}", run + 1, targets[t].name))?;
            }
            for i in 0..got[0].len() {
                for t in 0..2 {
                    row(&mut tsv, run + 1, targets[t].name, figures[index + i].key, got[t][i]);
                    values[index + i][t].push(got[t][i]);
                }
                row(&mut tsv, run + 1, "ratio", figures[index + i].key, got[1][i] / got[0][i]);
            }
            index += got[0].len();
        }
        let (busy, others) = meter.read()?;
        let load_after = loadavg();
        row(&mut tsv, run + 1, "machine", "loadavg_before_run", &load_before);
        row(&mut tsv, run + 1, "machine", "loadavg_after_run", &load_after);
        row(&mut tsv, run + 1, "machine", "cpu_busy_pct_during_run", format!("{busy:.1}"));
        row(&mut tsv, run + 1, "machine", "cpu_others_pct_during_run", format!("{others:.1}"));
        println!(
            "  run {}: CPU busy {busy:.1}% of both cores, {others:.1}% by processes other than the bench and sshd; \
             load average {load_before} before, {load_after} after",
            run + 1
        );
        // After every run, so a later failure keeps what was measured.
        std::fs::write(&results, &tsv).with_context(|| format!("writing {}", results.display()))?;
    }

    println!();
    println!("| measurement | direct sshd | through Burrow | Burrow / direct (median of per-run ratios) |");
    println!("|---|---|---|---|");
    for (figure, [direct, burrow]) in figures.iter().zip(values) {
        let ratios = direct.iter().zip(&burrow).map(|(d, b)| b / d).collect();
        let d = figure.decimals;
        println!(
            "| {} | {:.d$} | {:.d$} | {:.2}× |",
            figure.label,
            median(direct),
            median(burrow),
            median(ratios)
        );
    }
    println!();
    println!("per-run figures: {}", results.display());

    sshd.stop().await?;
    burrow.stop().await?;
    Ok(())
}
