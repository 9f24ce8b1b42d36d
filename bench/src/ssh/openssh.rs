//! The real OpenSSH client programs (`scp`, `ssh`) against either target: what a user
//! runs and sees.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::{Target, PATIENCE};

/// The longest one `scp` may take: 256 MiB at a few MiB/s on a loaded machine.
const SCP_LIMIT: Duration = Duration::from_secs(600);

/// Options both programs get: no config files, known hosts or agent, only the bench's key.
fn common_args(port_flag: &str, target: &Target, key: &Path) -> Vec<String> {
    let port = target.addr.port().to_string();
    let mut args: Vec<String> =
        ["-F", "/dev/null", port_flag, &port].iter().map(|s| (*s).to_owned()).collect();
    for option in [
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "IdentityAgent=none",
        "LogLevel=ERROR",
        "ConnectTimeout=20",
    ] {
        args.extend(["-o".to_owned(), option.to_owned()]);
    }
    args.extend(["-i".to_owned(), key.display().to_string()]);
    args
}

/// `scp -q from to` (one of them `user@127.0.0.1:path` on `target`); returns the wall
/// time of the whole process, which includes its connection and login.
pub(super) async fn scp(target: &Target, key: &Path, from: &str, to: &str) -> anyhow::Result<Duration> {
    let mut cmd = Command::new("scp");
    cmd.args(common_args("-P", target, key)).arg("-q").arg(from).arg(to);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    let start = Instant::now();
    let out = tokio::time::timeout(SCP_LIMIT, cmd.output())
        .await
        .with_context(|| format!("scp {from} {to}: still running after {SCP_LIMIT:?}"))?
        .context("running scp")?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!("scp {from} {to} ({}): {} {}", target.name, out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}

/// `user@127.0.0.1` for `target`.
pub(super) fn remote(target: &Target) -> String {
    format!("{}@127.0.0.1", target.user)
}

/// One `ssh user@127.0.0.1 echo ready`, timed from the spawn to the first `ready` on its
/// stdout; the process's exit is awaited (untimed) and must be a success.
pub(super) async fn ssh_setup(target: &Target, key: &Path) -> anyhow::Result<Duration> {
    let mut cmd = Command::new("ssh");
    cmd.args(common_args("-p", target, key)).arg(remote(target)).arg("echo ready");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting ssh")?;
    let mut stdout = child.stdout.take().context("ssh stdout")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !seen.windows(5).any(|w| w == b"ready") {
        let n = tokio::time::timeout_at(deadline, stdout.read(&mut buf))
            .await
            .with_context(|| format!("ssh to {}: no output after {PATIENCE:?}", target.name))??;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let took = start.elapsed();
    let out = tokio::time::timeout_at(deadline, child.wait_with_output())
        .await
        .with_context(|| format!("ssh to {}: still running after {PATIENCE:?}", target.name))??;
    if !out.status.success() || !seen.starts_with(b"ready") {
        bail!(
            "ssh to {}: {}, stdout {:?}, stderr {}",
            target.name,
            out.status,
            String::from_utf8_lossy(&seen),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

/// The cipher, MAC and key exchange `ssh` and the target agree on (from `ssh -v`), so
/// the table says what the transfers were encrypted with.
pub(super) async fn negotiated(target: &Target, key: &Path) -> anyhow::Result<String> {
    let mut cmd = Command::new("ssh");
    cmd.args(common_args("-p", target, key)).arg("-v").arg(remote(target)).arg("true");
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(PATIENCE, cmd.output()).await.context("ssh -v")??;
    let log = String::from_utf8_lossy(&out.stderr);
    let pick = |prefix: &str| {
        log.lines()
            .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest.trim().to_owned()))
            .unwrap_or_default()
    };
    Ok(format!("kex {}, {}", pick("debug1: kex: algorithm:"), pick("debug1: kex: server->client cipher:")))
}
