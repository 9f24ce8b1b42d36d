//! Enqueue-to-delivery: from `EnqueueWork` returning until the agent's hook starts (the
//! hook writes its own start time), and until `ListWork` shows the item SUCCEEDED.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use burrow_agent::{AgentHandle, WorkHook, ITEM_ID_ENV};
use tokio::io::AsyncWriteExt;

use super::{ms_between, rpc, spawn_agent, unix_ns, Setup, PATIENCE, POLL};

/// The hook's program; its `$EPOCHREALTIME` (bash 5) is a builtin, so taking the time
/// starts no further process.
pub(super) const BASH: &str = "/bin/bash";

/// The hook's arguments before the script: no startup files.
const BASH_ARGS: [&str; 3] = ["--norc", "--noprofile", "-c"];

/// The hook script: writes its start time (`$EPOCHREALTIME`, Unix seconds with 6
/// decimals) to `dir/$BURROW_WORK_ITEM_ID`. It does not read the payload (16 bytes, which
/// the agent's write leaves in the pipe).
pub(super) fn stamp_script(dir: &Path) -> String {
    format!("printf '%s' \"$EPOCHREALTIME\" > '{}'/\"${ITEM_ID_ENV}\"", dir.display())
}

pub(super) fn hook(dir: &Path) -> WorkHook {
    BASH_ARGS.iter().fold(WorkHook::new(BASH), |h, a| h.arg(*a)).arg(stamp_script(dir))
}

/// `$EPOCHREALTIME` as Unix ns.
fn parse_stamp(text: &str) -> anyhow::Result<i128> {
    let text = text.trim();
    let (secs, micros) = text.split_once(['.', ',']).with_context(|| format!("stamp {text:?}"))?;
    anyhow::ensure!(micros.len() == 6, "stamp {text:?}: expected 6 decimals");
    Ok(secs.parse::<i128>()? * 1_000_000_000 + micros.parse::<i128>()? * 1000)
}

fn read_stamp(path: &Path) -> anyhow::Result<i128> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the hook's stamp {}", path.display()))?;
    parse_stamp(&text)
}

/// Checks that bash gives `$EPOCHREALTIME` in the expected form.
pub(super) fn check_bash() -> anyhow::Result<String> {
    let out = std::process::Command::new(BASH)
        .args(BASH_ARGS)
        .arg("printf '%s %s' \"$EPOCHREALTIME\" \"$BASH_VERSION\"")
        .output()
        .with_context(|| format!("running {BASH}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (stamp, version) = text.split_once(' ').with_context(|| format!("{BASH}: {text:?}"))?;
    parse_stamp(stamp).with_context(|| format!("{BASH} {version} has no usable $EPOCHREALTIME"))?;
    Ok(version.to_owned())
}

/// A workload with an agent running the stamp hook.
pub(super) struct WorkAgent {
    pub(super) id: String,
    agent: AgentHandle,
    stamps: PathBuf,
}

impl WorkAgent {
    /// Creates workload `id` and connects its agent (not timed).
    pub(super) async fn start(
        setup: &mut Setup,
        web: &str,
        id: &str,
        stamps: &Path,
    ) -> anyhow::Result<WorkAgent> {
        let stamps = stamps.join(id);
        std::fs::create_dir_all(&stamps)?;
        let token = rpc::create(&mut setup.control, id).await?;
        let agent = spawn_agent(&setup.agent_url, &token, web, Some(hook(&stamps)));
        burrow_tests::wait_connected(&agent).await;
        Ok(WorkAgent { id: id.to_owned(), agent, stamps })
    }

    pub(super) async fn stop(self, setup: &mut Setup) -> anyhow::Result<()> {
        self.agent.shutdown().await;
        rpc::terminate(&mut setup.control, &self.id).await
    }
}

/// One item's timings, in ms.
pub(super) struct ItemSample {
    /// The `EnqueueWork` call.
    pub(super) enqueue_rpc: f64,
    /// From `EnqueueWork` returning (wall clock) to the hook's `$EPOCHREALTIME`.
    pub(super) to_hook: f64,
    /// From `EnqueueWork` returning to the first `ListWork` answer showing SUCCEEDED.
    pub(super) to_succeeded: f64,
    /// From `EnqueueWork` returning (wall clock) to the item's `updated_at_ms` when it
    /// showed SUCCEEDED (the host's clock, whole ms).
    pub(super) to_host_succeeded: f64,
    /// `ListWork` calls until it showed SUCCEEDED.
    pub(super) polls: u32,
    /// The last of those calls, sent → answered.
    pub(super) last_call: f64,
    /// Items that call listed.
    pub(super) listed: usize,
}

/// Ids the hook may use as a file name.
fn plain(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Enqueues one item through the setup's control replica and follows it to SUCCEEDED.
pub(super) async fn item_once(setup: &mut Setup, agent: &WorkAgent, n: usize) -> anyhow::Result<ItemSample> {
    let payload = format!("bench item {n:05}\n");
    let sent = Instant::now();
    let item = rpc::enqueue(&mut setup.control, &agent.id, payload.as_bytes()).await?;
    let returned = Instant::now();
    let returned_ns = unix_ns();
    anyhow::ensure!(plain(&item), "unexpected item id {item:?}");

    let mut polls = 0u32;
    let (seen, updated_at_ms, last_call, listed) = loop {
        let asked = Instant::now();
        let items = rpc::list_work(&mut setup.control, &agent.id).await?;
        polls += 1;
        if let Some(i) = items.iter().find(|i| i.item_id == item) {
            if i.state == rpc::WORK_STATE_SUCCEEDED {
                anyhow::ensure!(i.deliveries == 1, "item {item} delivered {} times", i.deliveries);
                let seen = Instant::now();
                break (seen, i.updated_at_ms, ms_between(asked, seen), items.len());
            }
            if i.state == rpc::WORK_STATE_FAILED {
                bail!("item {item} of {} failed: {}", agent.id, i.detail);
            }
        }
        if sent.elapsed() > PATIENCE {
            bail!("item {item} of {} on {}: not SUCCEEDED after {PATIENCE:?}", agent.id, setup.name);
        }
        tokio::time::sleep(POLL).await;
    };
    let stamp = read_stamp(&agent.stamps.join(&item))?;
    Ok(ItemSample {
        enqueue_rpc: ms_between(sent, returned),
        to_hook: (stamp - returned_ns) as f64 / 1e6,
        to_succeeded: ms_between(returned, seen),
        to_host_succeeded: (i128::from(updated_at_ms) * 1_000_000 - returned_ns) as f64 / 1e6,
        polls,
        last_call,
        listed,
    })
}

/// The same hook command started by the bench itself, as the agent starts it (tokio
/// process in its own process group, the payload on a stdin pipe, output on a pipe): ms
/// from before the spawn to its `$EPOCHREALTIME`. The hook's own start-up, which the
/// enqueue-to-hook figure includes.
pub(super) async fn hook_alone(stamps: &Path, n: usize) -> anyhow::Result<f64> {
    let id = format!("alone-{n}");
    let mut command = tokio::process::Command::new(BASH);
    command
        .args(BASH_ARGS)
        .arg(stamp_script(stamps))
        .env(ITEM_ID_ENV, &id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let before = unix_ns();
    let mut child = command.spawn().with_context(|| format!("spawning {BASH}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(format!("bench item {n:05}\n").as_bytes()).await;
        let _ = stdin.shutdown().await;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await??;
    anyhow::ensure!(out.status.success(), "the hook alone: {}", out.status);
    let stamp = read_stamp(&stamps.join(&id))?;
    std::fs::remove_file(stamps.join(&id))?;
    Ok((stamp - before) as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_parse_to_ns() {
        assert_eq!(parse_stamp("1733580000.123456\n").unwrap(), 1_733_580_000_123_456_000);
        assert_eq!(parse_stamp("1733580000,000001").unwrap(), 1_733_580_000_000_001_000);
        assert!(parse_stamp("1733580000").is_err());
        assert!(parse_stamp("1733580000.12").is_err());
    }
}
