//! Sessions the agent serves itself (`Dial.kind = SESSION`): a login shell, one
//! command, or the `sftp` subsystem, for an SSH session or a web terminal.
//!
//! Only the configured program runs (see [`plan`]): the login shell, the shell with
//! `-c COMMAND`, or the configured `sftp-server`, as the agent's own user, in a fresh
//! environment. With a terminal the program gets a PTY and is the leader of a new
//! session; without one it gets pipes (stderr separate) and its own process group, so a
//! signal or a hang-up reaches everything it started.
//!
//! Back-pressure holds end to end: output is read only as fast as frames leave (at most
//! `FRAME_QUEUE` queued), so a slow user fills the PTY and the program blocks; input is
//! written before the next frame is read, so HTTP/2 flow control holds the host back.
//!
//! # Layout
//! - this file: [`serve`] (answer the dial, wait for the start, spawn, bridge, report
//!   the exit) and the process handling.
//! - [`config`]: [`SessionConfig`], the `--session` flags.
//! - [`plan`]: what a start request may run; pure and unit-tested.
//! - `modes`: terminal modes from the client applied to the PTY.

pub mod config;
mod modes;
pub mod plan;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_proto::pb::{self, RefusalCode, ResetCode};
use burrow_proto::tunnel::{frames, Event, Tunnel};
use burrow_proto::MAX_DATA_FRAME;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Child;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::{timeout, Instant};
use tonic::Streaming;
use tracing::{debug, info, warn};

pub use config::SessionConfig;

use crate::shared::Shared;

/// How long the host has to send `SessionStart` after the dial.
const START_WAIT: Duration = Duration::from_secs(30);
/// After the program exits, how long output still held open (a background job keeping
/// the terminal) is relayed before the session ends anyway.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// After a hang-up, how long the program has before it is killed.
const KILL_AFTER_HANGUP: Duration = Duration::from_secs(5);
/// How long to wait for the host to end the RPC once the session is over.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

type Outbound = mpsc::Sender<pb::AgentFrame>;

/// Serves one session dial on `machine` (already in `Dialing`). `permit` is the
/// session's slot under `--max-sessions`, held until the program is reaped.
pub(crate) async fn serve(
    shared: &Shared,
    config: &SessionConfig,
    permit: OwnedSemaphorePermit,
    mut machine: Tunnel,
    dial: pb::Dial,
    mut inbound: Streaming<pb::HostFrame>,
    tx: Outbound,
) {
    if machine.send_dial_result(true).is_err() || tx.send(frames::dial_ok()).await.is_err() {
        return;
    }
    let start = match timeout(START_WAIT, inbound.message()).await {
        Ok(Ok(Some(frame))) => match machine.receive_host_frame(frame) {
            Ok(Event::Start(start)) => start,
            Ok(Event::Reset(_)) => return debug!("host reset the session before starting it"),
            Ok(other) => {
                return reset(&tx, ResetCode::ProtocolError, format!("expected SessionStart, got {other:?}"))
                    .await
            }
            Err(e) => return reset(&tx, ResetCode::ProtocolError, e.to_string()).await,
        },
        Ok(Ok(None)) | Ok(Err(_)) => return debug!("host ended the session before starting it"),
        Err(_) => return reset(&tx, ResetCode::Cancelled, "no SessionStart within 30 s".into()).await,
    };
    let plan = match plan::plan(config, &plan::AgentEnv::current(), &start, &dial.principal) {
        Ok(plan) => plan,
        Err(refused) => {
            info!(reason = %refused, "session refused");
            return end_early(shared, machine, inbound, tx, 255, refused.0).await;
        }
    };
    let what = match &start.command {
        Some(pb::session_start::Command::Exec(_)) => "exec",
        Some(pb::session_start::Command::Subsystem(_)) => "subsystem",
        _ => "shell",
    };
    let mut process = match spawn(&plan) {
        Ok(p) => p,
        Err(e) => {
            warn!(program = %plan.program.display(), error = %e, "could not start the session's program");
            let message = format!("could not start {}: {e}", plan.program.display());
            return end_early(shared, machine, inbound, tx, 127, message).await;
        }
    };
    info!(what, principal = %dial.principal, pty = plan.pty.is_some(), pid = process.pid, "session started");
    let machine = Mutex::new(machine);
    let outcome = bridge(shared, &machine, &mut process, &mut inbound, &tx).await;
    match outcome {
        Outcome::Finished => {
            debug!("session finished");
            drop(tx);
            finish(shared, inbound).await;
        }
        Outcome::Aborted(reason) => {
            debug!(%reason, "session aborted; hanging up the program");
            lock(&machine).send_reset();
            let _ =
                timeout(Duration::from_secs(1), tx.send(frames::agent_reset(ResetCode::Cancelled, reason)))
                    .await;
            hang_up(&mut process).await;
        }
        Outcome::HostGone(reason) => {
            debug!(%reason, "host side ended the session; hanging up the program");
            hang_up(&mut process).await;
        }
    }
    drop(permit);
}

/// A started program and its I/O.
struct Process {
    child: Child,
    pid: u32,
    /// Output: the terminal, or stdout.
    output: Box<dyn AsyncRead + Send + Unpin>,
    /// stderr when there is no terminal (and it is not the sftp server's log).
    errors: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Input: the terminal, or stdin.
    input: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// A handle on the terminal for resizes and the foreground process group.
    pty: Option<OwnedFd>,
}

fn spawn(plan: &plan::Plan) -> std::io::Result<Process> {
    match &plan.pty {
        Some(pty_request) => {
            let (pty, pts) = pty_process::open().map_err(std::io::Error::other)?;
            if let Some(size) = &pty_request.size {
                pty.resize(pty_size(size)).map_err(std::io::Error::other)?;
            }
            modes::apply(&pty, &pty_request.modes);
            let control = pty.as_fd().try_clone_to_owned()?;
            let mut command = pty_process::Command::new(&plan.program)
                .args(&plan.args)
                .env_clear()
                .envs(plan.env.iter().map(|(k, v)| (k, v)))
                .current_dir(&plan.dir)
                .kill_on_drop(true);
            if let Some(arg0) = &plan.arg0 {
                command = command.arg0(arg0);
            }
            let child = command.spawn(pts).map_err(std::io::Error::other)?;
            let pid = child.id().unwrap_or_default();
            let (read, write) = pty.into_split();
            Ok(Process {
                child,
                pid,
                output: Box::new(read),
                errors: None,
                input: Some(Box::new(write)),
                pty: Some(control),
            })
        }
        None => {
            let mut command = tokio::process::Command::new(&plan.program);
            command
                .args(&plan.args)
                .env_clear()
                .envs(plan.env.iter().map(|(k, v)| (k, v)))
                .current_dir(&plan.dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(if plan.stderr_to_log { Stdio::null() } else { Stdio::piped() })
                .process_group(0)
                .kill_on_drop(true);
            if let Some(arg0) = &plan.arg0 {
                command.arg0(arg0);
            }
            let mut child = command.spawn()?;
            let pid = child.id().unwrap_or_default();
            let output: Box<dyn AsyncRead + Send + Unpin> =
                Box::new(child.stdout.take().expect("stdout is piped"));
            let errors = child.stderr.take().map(|e| Box::new(e) as Box<dyn AsyncRead + Send + Unpin>);
            let input = child.stdin.take().map(|i| Box::new(i) as Box<dyn AsyncWrite + Send + Unpin>);
            Ok(Process { child, pid, output, errors, input, pty: None })
        }
    }
}

fn pty_size(size: &pb::WindowSize) -> pty_process::Size {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    pty_process::Size::new_with_pixel(
        clamp(size.rows),
        clamp(size.cols),
        clamp(size.width_px),
        clamp(size.height_px),
    )
}

enum Outcome {
    /// Exit and Eof sent.
    Finished,
    /// We end the session (protocol error, agent shutting down): reset the host.
    Aborted(String),
    /// The host reset or the RPC ended: nothing to tell it.
    HostGone(String),
}

fn lock(machine: &Mutex<Tunnel>) -> std::sync::MutexGuard<'_, Tunnel> {
    machine.lock().unwrap_or_else(|e| e.into_inner())
}

/// Relays until the program has exited and its output is drained, then reports the
/// exit. Input runs on its own future so a program that does not read its input can
/// still write output, and the other way round.
async fn bridge(
    shared: &Shared,
    machine: &Mutex<Tunnel>,
    process: &mut Process,
    inbound: &mut Streaming<pb::HostFrame>,
    tx: &Outbound,
) -> Outcome {
    let pid = process.pid;
    let pty = process.pty.as_ref().map(|fd| fd.try_clone()).transpose().ok().flatten();
    let mut input = process.input.take();
    let pty_session = process.pty.is_some();
    // Host -> program. Returns only when the host is gone or broke the protocol.
    let down = async {
        loop {
            let frame = match inbound.message().await {
                Ok(Some(frame)) => frame,
                Ok(None) => return Outcome::HostGone("host ended the tunnel".into()),
                Err(status) => return Outcome::HostGone(crate::session::describe_status(&status)),
            };
            let event = match lock(machine).receive_host_frame(frame) {
                Ok(event) => event,
                Err(e) => return Outcome::Aborted(e.to_string()),
            };
            match event {
                Event::Data(data) => {
                    if let Some(w) = input.as_mut() {
                        // A program that closed its input just loses what follows.
                        if w.write_all(&data).await.is_err() {
                            input = None;
                        }
                    }
                }
                // A terminal has no end of input (the user types ^D); pipes do.
                Event::Eof if !pty_session => {
                    if let Some(mut w) = input.take() {
                        let _ = w.shutdown().await;
                    }
                }
                Event::Eof => {}
                Event::Resize(size) => {
                    if let (Some(fd), Ok(())) = (&pty, plan::check_size(&size)) {
                        let _ = rustix::termios::tcsetwinsize(fd, pty_size(&size).into());
                    }
                }
                Event::Signal(signal) => deliver(&signal.name, pid, pty.as_ref()),
                Event::Reset(reset) => return Outcome::HostGone(format!("host reset: {}", reset.message)),
                Event::Ignored => {}
                other => return Outcome::Aborted(format!("unexpected {other:?} in a session")),
            }
        }
    };
    tokio::pin!(down);

    let up = relay_output(machine, process, tx);
    tokio::pin!(up);
    let status = tokio::select! {
        status = &mut up => status,
        outcome = &mut down => return outcome,
        _ = shared.kill.cancelled() => return Outcome::Aborted("the agent is shutting down".into()),
    };
    let status = match status {
        Ok(status) => status,
        Err(outcome) => return outcome,
    };
    let exit = exit_frame(status);
    let gone = || Outcome::HostGone("tunnel RPC closed".into());
    if lock(machine).send_exit().is_err() {
        return Outcome::Aborted("session already ended".into());
    }
    if tx.send(exit).await.is_err() {
        return gone();
    }
    if lock(machine).send_eof().is_err() {
        return Outcome::Aborted("session already closed".into());
    }
    if tx.send(frames::agent_eof()).await.is_err() {
        return gone();
    }
    Outcome::Finished
}

/// Relays the program's output until it has exited and its output ended (or
/// [`DRAIN_AFTER_EXIT`] passed since the exit), then returns how it exited.
async fn relay_output(
    machine: &Mutex<Tunnel>,
    process: &mut Process,
    tx: &Outbound,
) -> Result<ExitStatus, Outcome> {
    let Process { child, output, errors, .. } = process;
    let mut output_open = true;
    let mut errors_open = errors.is_some();
    let mut exited: Option<ExitStatus> = None;
    let mut drain_until = Instant::now();
    let gone = || Outcome::HostGone("tunnel RPC closed".into());
    // One copy per frame out of fixed buffers: simpler than sharing a growing buffer
    // between two reads in one select, and small next to the syscalls.
    let mut out_buf = vec![0u8; MAX_DATA_FRAME];
    let mut err_buf = vec![0u8; MAX_DATA_FRAME];
    loop {
        if let Some(status) = exited {
            if !output_open && !errors_open {
                return Ok(status);
            }
        }
        tokio::select! {
            r = output.read(&mut out_buf), if output_open => match r {
                // EIO is how a terminal reads once every holder of its other end is gone.
                Ok(0) | Err(_) => output_open = false,
                Ok(n) => {
                    lock(machine).send_data().map_err(|e| Outcome::Aborted(e.to_string()))?;
                    let data = Bytes::copy_from_slice(&out_buf[..n]);
                    tx.send(frames::agent_data(data)).await.map_err(|_| gone())?;
                }
            },
            r = read_opt(errors.as_mut(), &mut err_buf), if errors_open => match r {
                Ok(0) | Err(_) => errors_open = false,
                Ok(n) => {
                    lock(machine).send_stderr().map_err(|e| Outcome::Aborted(e.to_string()))?;
                    let data = Bytes::copy_from_slice(&err_buf[..n]);
                    tx.send(frames::stderr(data)).await.map_err(|_| gone())?;
                }
            },
            status = child.wait(), if exited.is_none() => {
                let status = status.map_err(|e| Outcome::Aborted(format!("waiting for the program: {e}")))?;
                exited = Some(status);
                drain_until = Instant::now() + DRAIN_AFTER_EXIT;
            }
            _ = tokio::time::sleep_until(drain_until), if exited.is_some() => {
                debug!("output still open after the program exited; ending the session");
                return Ok(exited.expect("guarded by the branch condition"));
            }
        }
    }
}

async fn read_opt(
    reader: Option<&mut Box<dyn AsyncRead + Send + Unpin>>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match reader {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

/// `SessionExit` for how the program ended.
fn exit_frame(status: ExitStatus) -> pb::AgentFrame {
    match (status.code(), status.signal()) {
        (Some(code), _) => frames::exit_status(u32::try_from(code).unwrap_or(255)),
        (None, Some(signal)) => frames::exit(pb::SessionExit {
            how: Some(pb::session_exit::How::Signal(signal_name(signal).to_owned())),
            core_dumped: status.core_dumped(),
            message: String::new(),
        }),
        (None, None) => frames::exit_status(255),
    }
}

/// The signals a session may deliver, by their RFC 4254 names.
fn signal_by_name(name: &str) -> Option<rustix::process::Signal> {
    use rustix::process::Signal;
    Some(match name {
        "HUP" => Signal::HUP,
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        "TERM" => Signal::TERM,
        "KILL" => Signal::KILL,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "ALRM" => Signal::ALARM,
        "ABRT" => Signal::ABORT,
        "PIPE" => Signal::PIPE,
        _ => return None,
    })
}

/// The RFC 4254 name of signal number `n`.
pub(crate) fn signal_name(n: i32) -> &'static str {
    use rustix::process::Signal;
    let names = [
        (Signal::HUP, "HUP"),
        (Signal::INT, "INT"),
        (Signal::QUIT, "QUIT"),
        (Signal::ILL, "ILL"),
        (Signal::ABORT, "ABRT"),
        (Signal::FPE, "FPE"),
        (Signal::KILL, "KILL"),
        (Signal::SEGV, "SEGV"),
        (Signal::PIPE, "PIPE"),
        (Signal::ALARM, "ALRM"),
        (Signal::TERM, "TERM"),
        (Signal::USR1, "USR1"),
        (Signal::USR2, "USR2"),
    ];
    names.iter().find(|(s, _)| s.as_raw() == n).map_or("UNKNOWN", |(_, name)| name)
}

/// Delivers `name` to the terminal's foreground job (what ^C would reach), else to the
/// program's process group. Unknown names are ignored, as RFC 4254 asks.
fn deliver(name: &str, pid: u32, pty: Option<&OwnedFd>) {
    let Some(signal) = signal_by_name(name) else {
        return debug!(name, "ignoring an unknown signal");
    };
    let group = pty
        .and_then(|fd| rustix::termios::tcgetpgrp(fd).ok())
        .or_else(|| rustix::process::Pid::from_raw(i32::try_from(pid).ok()?));
    if let Some(group) = group {
        if let Err(e) = rustix::process::kill_process_group(group, signal) {
            debug!(name, error = %e, "could not deliver a signal");
        }
    }
}

/// Hangs up the program's process group, kills it if it is still there after
/// [`KILL_AFTER_HANGUP`], and reaps it.
async fn hang_up(process: &mut Process) {
    process.input = None;
    if let Some(pid) = rustix::process::Pid::from_raw(i32::try_from(process.pid).unwrap_or(0)) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::HUP);
        if timeout(KILL_AFTER_HANGUP, process.child.wait()).await.is_ok() {
            return;
        }
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = process.child.kill().await;
}

/// Ends a session that never ran: the reason goes to the user, then a failed exit.
async fn end_early(
    shared: &Shared,
    machine: Tunnel,
    inbound: Streaming<pb::HostFrame>,
    tx: Outbound,
    status: u32,
    message: String,
) {
    let mut machine = machine;
    let exit = frames::exit(pb::SessionExit {
        how: Some(pb::session_exit::How::Status(status)),
        core_dumped: false,
        message,
    });
    if machine.send_exit().is_ok() && tx.send(exit).await.is_ok() && machine.send_eof().is_ok() {
        let _ = tx.send(frames::agent_eof()).await;
    }
    drop(tx);
    finish(shared, inbound).await;
}

async fn reset(tx: &Outbound, code: ResetCode, message: String) {
    debug!(%message, "resetting the session");
    let _ = timeout(Duration::from_secs(1), tx.send(frames::agent_reset(code, message))).await;
}

/// Waits briefly for the host to end the RPC, so it completes cleanly.
async fn finish(shared: &Shared, mut inbound: Streaming<pb::HostFrame>) {
    let drain = timeout(CLOSE_WAIT, async { while let Ok(Some(_)) = inbound.message().await {} });
    tokio::select! {
        _ = drain => {}
        _ = shared.kill.cancelled() => {}
    }
}

/// A slot for one more session, or the refusal when the agent serves no sessions or is
/// at `--max-sessions`.
pub(crate) fn admit(
    shared: &Shared,
    config: Option<&SessionConfig>,
) -> Result<OwnedSemaphorePermit, (RefusalCode, String)> {
    let Some(config) = config else {
        return Err((RefusalCode::Unsupported, "this agent serves no sessions".into()));
    };
    Arc::clone(&shared.session_slots).try_acquire_owned().map_err(|_| {
        (
            RefusalCode::Limit,
            format!("the agent already serves {} sessions (--max-sessions)", config.max_sessions),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_round_trip_for_what_sessions_deliver() {
        for name in ["HUP", "INT", "QUIT", "TERM", "KILL", "USR1", "USR2", "ALRM", "ABRT", "PIPE"] {
            let signal = signal_by_name(name).unwrap();
            assert_eq!(signal_name(signal.as_raw()), name);
        }
        assert!(signal_by_name("SIGTERM").is_none(), "RFC 4254 names carry no SIG prefix");
        assert!(signal_by_name("STOP").is_none(), "not deliverable through a session");
    }

    #[test]
    fn exit_frames_carry_status_or_signal() {
        let status = ExitStatus::from_raw(3 << 8);
        assert_eq!(exit_frame(status), frames::exit_status(3));
        let killed = ExitStatus::from_raw(rustix::process::Signal::TERM.as_raw());
        match exit_frame(killed).frame {
            Some(pb::agent_frame::Frame::Exit(e)) => {
                assert_eq!(e.how, Some(pb::session_exit::How::Signal("TERM".into())));
                assert!(!e.core_dumped);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
