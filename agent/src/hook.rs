//! The work hook: the program that runs one work item (`--work-hook`).
//!
//! It runs without a shell, as the agent's own user, in its own process group (so a
//! timeout kills whatever it started too), with the item's payload on stdin and the
//! agent's environment minus every `BURROW_*` variable (the agent token must never reach
//! it), plus [`ITEM_ID_ENV`] and [`DELIVERY_ENV`]. Its stdout and stderr share one pipe
//! (as with `2>&1`), and only the last [`OUTPUT_TAIL`] bytes are kept: they become the
//! item's status detail, which the protocol caps at 4 KiB anyway.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{kill_process_group, Pid, Signal};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;

/// The item's id, for the hook.
pub const ITEM_ID_ENV: &str = "BURROW_WORK_ITEM_ID";
/// How many times the host has handed this item out (1 on first delivery), for the hook.
pub const DELIVERY_ENV: &str = "BURROW_WORK_DELIVERY";

/// Default `--work-hook-timeout`.
pub const DEFAULT_WORK_HOOK_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Bytes of the hook's output kept for the status detail.
pub(crate) const OUTPUT_TAIL: usize = 4 * 1024;
/// Longest status detail (the protocol's limit).
pub(crate) const MAX_DETAIL: usize = 4 * 1024;

/// After the hook exits, how long output still held open by something it left behind is
/// read before the item is reported anyway.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);
/// When the agent stops, how long a running hook has between SIGTERM and SIGKILL.
const KILL_AFTER_TERM: Duration = Duration::from_secs(2);

/// The program that runs work items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkHook {
    /// Run directly (no shell); a bare name is looked up in `PATH`.
    pub program: PathBuf,
    /// Its arguments (`--work-hook-arg`, repeatable).
    pub args: Vec<String>,
    /// After this long the hook's process group is killed and the item fails (default
    /// 10 min).
    pub timeout: Duration,
}

impl WorkHook {
    /// A hook running `program` with no arguments and the default timeout.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self { program: program.into(), args: Vec::new(), timeout: DEFAULT_WORK_HOOK_TIMEOUT }
    }

    /// Add an argument, builder style.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: &str| ConfigError::Invalid { field: "work-hook", reason: reason.to_owned() };
        if self.program.as_os_str().is_empty() {
            return Err(invalid("the program path is empty"));
        }
        // Command would refuse these only when the first item arrives.
        if self.program.to_string_lossy().contains('\0') || self.args.iter().any(|a| a.contains('\0')) {
            return Err(invalid("the program or an argument contains a NUL byte"));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::Invalid {
                field: "work-hook-timeout",
                reason: "must be greater than zero".to_owned(),
            });
        }
        Ok(())
    }
}

/// What the hook is given.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HookInput<'a> {
    pub item_id: &'a str,
    pub delivery: u32,
    pub payload: &'a [u8],
}

/// How a hook run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HookEnd {
    /// The hook exited (0 is success) or was killed by a signal.
    Exited(ExitStatus),
    /// It ran past the timeout and was killed.
    TimedOut(Duration),
    /// It could not be started.
    NotStarted(String),
    /// The agent is stopping; the hook was killed and the item is not reported (the
    /// host hands it out again).
    Cancelled,
}

/// A finished hook run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HookRun {
    pub end: HookEnd,
    /// The end of its output.
    pub output: Tail,
}

impl HookRun {
    /// Success: the hook exited 0.
    pub(crate) fn succeeded(&self) -> bool {
        matches!(&self.end, HookEnd::Exited(s) if s.success())
    }

    /// What went wrong, for the status detail and the log; `None` on success.
    pub(crate) fn failure(&self) -> Option<String> {
        match &self.end {
            HookEnd::Exited(status) => match (status.code(), status.signal()) {
                (Some(0), _) => None,
                (Some(code), _) => Some(format!("exit status {code}")),
                (None, Some(signal)) => {
                    let name = match crate::shell::signal_name(signal) {
                        "UNKNOWN" => String::new(),
                        name => format!(" (SIG{name})"),
                    };
                    let core = if status.core_dumped() { ", core dumped" } else { "" };
                    Some(format!("killed by signal {signal}{name}{core}"))
                }
                (None, None) => Some(format!("ended with {status}")),
            },
            HookEnd::TimedOut(after) => {
                Some(format!("timed out after {}", humantime::format_duration(*after)))
            }
            HookEnd::NotStarted(reason) => Some(reason.clone()),
            HookEnd::Cancelled => Some("cancelled: the agent is stopping".to_owned()),
        }
    }

    /// The status detail: the output's tail, then the failure, within [`MAX_DETAIL`].
    pub(crate) fn detail(&self) -> String {
        detail(&self.output, self.failure().as_deref())
    }
}

/// The last `cap` bytes of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tail {
    buf: VecDeque<u8>,
    cap: usize,
    /// Earlier bytes were dropped.
    truncated: bool,
}

impl Tail {
    pub(crate) fn new(cap: usize) -> Self {
        Self { buf: VecDeque::with_capacity(cap.min(OUTPUT_TAIL)), cap, truncated: false }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.cap {
            self.truncated = true;
            &data[data.len() - self.cap..]
        } else {
            data
        };
        let excess = (self.buf.len() + data.len()).saturating_sub(self.cap);
        if excess > 0 {
            self.truncated = true;
            self.buf.drain(..excess);
        }
        self.buf.extend(data);
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.buf.iter().copied().collect()
    }

    pub(crate) fn truncated(&self) -> bool {
        self.truncated
    }
}

/// The longest suffix of `s` of at most `max` bytes that starts on a char boundary.
fn tail_str(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Output tail (lossy UTF-8, trailing whitespace trimmed, `…` when cut) and the failure
/// line, within [`MAX_DETAIL`] bytes; the failure line is kept whole, the output gives way.
fn detail(output: &Tail, failure: Option<&str>) -> String {
    let text = String::from_utf8_lossy(&output.bytes()).into_owned();
    let text = text.trim_end();
    let failure = failure.map(|f| tail_str(f, MAX_DETAIL));
    let reserved = failure.map_or(0, |f| f.len() + 1);
    let budget = MAX_DETAIL.saturating_sub(reserved);
    let mut out = String::new();
    if !text.is_empty() && budget > 0 {
        let kept = tail_str(text, budget);
        if (output.truncated() || kept.len() < text.len()) && budget > "…".len() {
            out.push('…');
            out.push_str(tail_str(kept, budget - "…".len()));
        } else {
            out.push_str(kept);
        }
    }
    if let Some(f) = failure {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(f);
    }
    debug_assert!(out.len() <= MAX_DETAIL);
    out
}

/// Kills the hook's process group if the run is abandoned before the hook was reaped
/// (the agent aborted), since `kill_on_drop` reaches only the hook itself.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn signal(&self, signal: Signal) {
        if let Some(group) = self.0 {
            let _ = kill_process_group(group, signal);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::KILL);
    }
}

async fn read_some(r: &mut Option<impl AsyncRead + Unpin>, buf: &mut [u8]) -> std::io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

/// The hook's command line and environment; `inherited` names the agent's variables.
fn command(
    hook: &WorkHook,
    input: HookInput<'_>,
    inherited: impl Iterator<Item = std::ffi::OsString>,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(&hook.program);
    command.args(&hook.args).stdin(Stdio::piped()).process_group(0).kill_on_drop(true);
    for name in inherited {
        if name.to_string_lossy().starts_with("BURROW_") {
            command.env_remove(name);
        }
    }
    command.env(ITEM_ID_ENV, input.item_id).env(DELIVERY_ENV, input.delivery.to_string());
    command
}

/// Spawn with stdout and stderr on one pipe, like `2>&1`: the output tail then shows
/// both in the order the hook wrote them, which two pipes read side by side cannot.
fn spawn(mut command: tokio::process::Command) -> std::io::Result<(tokio::process::Child, pipe::Receiver)> {
    let (reader, writer) = std::io::pipe()?;
    command.stdout(writer.try_clone()?).stderr(writer);
    let child = command.spawn()?;
    // The command holds our copies of the write end: without dropping it, the output
    // would never reach end-of-file.
    drop(command);
    Ok((child, pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?))
}

/// Run the hook for one item until it exits, times out, or `cancel` fires.
pub(crate) async fn run(hook: &WorkHook, input: HookInput<'_>, cancel: &CancellationToken) -> HookRun {
    let mut output = Tail::new(OUTPUT_TAIL);
    let command = command(hook, input, std::env::vars_os().map(|(name, _)| name));
    let (mut child, reader) = match spawn(command) {
        Ok(spawned) => spawned,
        Err(e) => {
            let reason = format!("could not start {}: {e}", hook.program.display());
            return HookRun { end: HookEnd::NotStarted(reason), output };
        }
    };
    let mut guard = GroupGuard(child.id().and_then(|id| Pid::from_raw(i32::try_from(id).ok()?)));
    let mut reader = Some(reader);
    let stdin = child.stdin.take();
    // Written beside the reads: a hook that writes output before it reads all its input
    // must not deadlock with an agent blocked on a full stdin pipe. A hook that never
    // reads stdin makes the write fail or stall; either is fine.
    let feed = async move {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(input.payload).await;
            let _ = stdin.shutdown().await;
        }
    };
    tokio::pin!(feed);
    let mut fed = false;
    let deadline = sleep(hook.timeout);
    tokio::pin!(deadline);
    // Armed when the hook has exited (or was killed).
    let drain = sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(drain);
    let mut end: Option<HookEnd> = None;
    let mut buf = [0u8; 4096];
    loop {
        if end.is_some() && reader.is_none() {
            break;
        }
        tokio::select! {
            _ = &mut feed, if !fed => fed = true,
            r = read_some(&mut reader, &mut buf) => match r {
                Ok(n) if n > 0 => output.push(&buf[..n]),
                _ => reader = None,
            },
            status = child.wait(), if end.is_none() => {
                end = Some(match status {
                    Ok(status) => HookEnd::Exited(status),
                    Err(e) => HookEnd::NotStarted(format!("waiting for {}: {e}", hook.program.display())),
                });
                guard.0 = None;
                drain.as_mut().reset(Instant::now() + DRAIN_AFTER_EXIT);
            }
            _ = &mut deadline, if end.is_none() => {
                guard.signal(Signal::KILL);
                let _ = child.kill().await;
                guard.0 = None;
                end = Some(HookEnd::TimedOut(hook.timeout));
                drain.as_mut().reset(Instant::now() + DRAIN_AFTER_EXIT);
            }
            _ = cancel.cancelled(), if end.is_none() => {
                guard.signal(Signal::TERM);
                if timeout(KILL_AFTER_TERM, child.wait()).await.is_err() {
                    guard.signal(Signal::KILL);
                    let _ = child.kill().await;
                }
                guard.0 = None;
                return HookRun { end: HookEnd::Cancelled, output };
            }
            _ = &mut drain => break,
        }
    }
    // The loop leaves only after exit or timeout (and the drain that follows).
    let end = end.unwrap_or_else(|| HookEnd::NotStarted("the hook vanished".to_owned()));
    HookRun { end, output }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> WorkHook {
        WorkHook::new("/bin/sh").arg("-c").arg(script)
    }

    fn input(payload: &[u8]) -> HookInput<'_> {
        HookInput { item_id: "item-42", delivery: 2, payload }
    }

    async fn run_sh(script: &str, payload: &[u8]) -> HookRun {
        run(&sh(script), input(payload), &CancellationToken::new()).await
    }

    fn text(run: &HookRun) -> String {
        String::from_utf8(run.output.bytes()).unwrap()
    }

    #[tokio::test]
    async fn delivers_stdin_and_reports_the_exit_status() {
        let run = run_sh("cat; echo; echo oops >&2; exit 3", b"hello payload").await;
        assert!(!run.succeeded());
        assert_eq!(text(&run), "hello payload\noops\n");
        assert_eq!(run.failure().as_deref(), Some("exit status 3"));
        assert_eq!(run.detail(), "hello payload\noops\nexit status 3");

        let ok = run_sh("cat >/dev/null; echo done", b"x").await;
        assert!(ok.succeeded());
        assert_eq!((ok.failure(), ok.detail()), (None, "done".to_owned()));
    }

    #[tokio::test]
    async fn passes_the_item_in_the_environment() {
        let run = run_sh(r#"echo "$BURROW_WORK_ITEM_ID/$BURROW_WORK_DELIVERY""#, b"").await;
        assert_eq!(text(&run), "item-42/2\n");
    }

    #[test]
    fn burrow_variables_never_reach_the_hook() {
        let inherited = ["PATH", "BURROW_AGENT_TOKEN", "BURROW_OTHER", "HOME"].map(std::ffi::OsString::from);
        let cmd = command(&sh("true"), input(b""), inherited.into_iter());
        let envs: Vec<(String, Option<String>)> = cmd
            .as_std()
            .get_envs()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.map(|v| v.to_string_lossy().into_owned())))
            .collect();
        let removed: Vec<&str> = envs.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| k.as_str()).collect();
        assert_eq!(removed, ["BURROW_AGENT_TOKEN", "BURROW_OTHER"]);
        assert!(envs.contains(&(ITEM_ID_ENV.to_owned(), Some("item-42".to_owned()))));
        assert!(envs.contains(&(DELIVERY_ENV.to_owned(), Some("2".to_owned()))));
    }

    #[tokio::test]
    async fn large_payloads_and_output_do_not_deadlock_and_only_the_tail_is_kept() {
        // 1 MiB in, echoed out as it comes: both pipes fill many times over.
        let payload: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        let run = run_sh("cat; echo END", &payload).await;
        assert!(run.succeeded(), "{:?}", run.end);
        let kept = run.output.bytes();
        assert_eq!(kept.len(), OUTPUT_TAIL);
        assert!(run.output.truncated());
        assert!(kept.ends_with(b"END\n"));
        let mut want = payload[payload.len() - (OUTPUT_TAIL - 4)..].to_vec();
        want.extend_from_slice(b"END\n");
        assert_eq!(kept, want);
        let detail = run.detail();
        assert!(detail.len() <= MAX_DETAIL && detail.starts_with('…') && detail.ends_with("END"), "{detail}");
    }

    #[tokio::test]
    async fn a_hook_that_ignores_stdin_still_runs() {
        let payload = vec![b'x'; 512 * 1024];
        let run = run_sh("echo ignored; exit 0", &payload).await;
        assert!(run.succeeded());
        assert_eq!(text(&run), "ignored\n");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = std::env::temp_dir().join(format!("burrow-hook-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let marker = dir.join("survived");
        let mut hook = sh(&format!("echo started; (sleep 2; touch {}) & sleep 30", marker.display()));
        hook.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let timed_out = run(&hook, input(b""), &CancellationToken::new()).await;
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert_eq!(timed_out.end, HookEnd::TimedOut(Duration::from_millis(300)));
        assert_eq!(timed_out.failure().as_deref(), Some("timed out after 300ms"));
        assert_eq!(timed_out.detail(), "started\ntimed out after 300ms");
        sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "the background child was killed with the group");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn signals_and_missing_programs_are_failures() {
        let killed = run_sh("kill -9 $$", b"").await;
        assert_eq!(killed.failure().as_deref(), Some("killed by signal 9 (SIGKILL)"));
        let missing = run(&WorkHook::new("/nonexistent/hook"), input(b""), &CancellationToken::new()).await;
        assert!(matches!(missing.end, HookEnd::NotStarted(_)));
        assert!(missing.detail().starts_with("could not start /nonexistent/hook: "), "{}", missing.detail());
    }

    #[tokio::test]
    async fn output_left_open_by_a_background_child_does_not_hold_the_report() {
        let started = Instant::now();
        let run = run_sh("echo main; sleep 30 & exit 0", b"").await;
        assert!(run.succeeded());
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert_eq!(text(&run), "main\n");
    }

    #[tokio::test]
    async fn cancel_stops_the_hook_without_a_result() {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            sleep(Duration::from_millis(200)).await;
            trigger.cancel();
        });
        let started = Instant::now();
        let cancelled = run(&sh("sleep 30"), input(b""), &cancel).await;
        assert_eq!(cancelled.end, HookEnd::Cancelled);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::new(4);
        t.push(b"ab");
        assert_eq!((t.bytes(), t.truncated()), (b"ab".to_vec(), false));
        t.push(b"cd");
        assert_eq!((t.bytes(), t.truncated()), (b"abcd".to_vec(), false));
        t.push(b"e");
        assert_eq!((t.bytes(), t.truncated()), (b"bcde".to_vec(), true));
        t.push(b"0123456789");
        assert_eq!(t.bytes(), b"6789");
    }

    #[test]
    fn detail_fits_and_cuts_on_char_boundaries() {
        let mut t = Tail::new(OUTPUT_TAIL);
        // 3-byte characters: a cut in the middle of one must not split it.
        t.push("€".repeat(2000).as_bytes());
        let d = detail(&t, Some("exit status 1"));
        assert!(d.len() <= MAX_DETAIL, "{}", d.len());
        assert!(d.starts_with('…') && d.ends_with("€\nexit status 1"));
        assert!(d.trim_start_matches('…').trim_end_matches("\nexit status 1").chars().all(|c| c == '€'));
        // Invalid UTF-8 from the hook becomes replacement characters, still bounded.
        let mut t = Tail::new(OUTPUT_TAIL);
        t.push(&[0xff; OUTPUT_TAIL]);
        let d = detail(&t, Some("exit status 2"));
        assert!(d.len() <= MAX_DETAIL && d.ends_with("\nexit status 2"), "{}", d.len());
        // An overlong failure message alone is cut too.
        let d = detail(&Tail::new(OUTPUT_TAIL), Some(&"x".repeat(10_000)));
        assert_eq!(d.len(), MAX_DETAIL);
        assert_eq!(detail(&Tail::new(OUTPUT_TAIL), None), "");
    }

    #[test]
    fn validation() {
        assert!(WorkHook::new("/bin/true").validate().is_ok());
        assert!(WorkHook::new("").validate().is_err());
        assert!(WorkHook::new("/bin/true").arg("a\0b").validate().is_err());
        let mut h = WorkHook::new("/bin/true");
        h.timeout = Duration::ZERO;
        assert_eq!(
            h.validate().unwrap_err().to_string(),
            "invalid work-hook-timeout: must be greater than zero"
        );
    }
}
