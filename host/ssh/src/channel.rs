//! One `session` channel: dial the agent's session service, then relay until the
//! program has exited.
//!
//! The channel opens only once the agent accepted the dial, so a refusal reaches the
//! client as the channel-open failure's text (`ssh -v` shows it). Input and output run
//! concurrently; output is written through russh's window-aware writers, so a client
//! that stops reading stops the agent, which stops reading the program.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use burrow_host_core::context::HostContext;
use burrow_host_core::session_io::{SessionEvent, SessionReceiver, SessionSender};
use burrow_proto::pb::{self, DialKind, ResetCode};
use bytes::Bytes;
use russh::server::{ChannelOpenHandle, Handle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::SshConfig;
use crate::handler::{sig, ChannelCommand, Login};

/// Client input accepted before the session has started (a pasted command racing the
/// shell request); more closes the channel.
const MAX_EARLY_INPUT: usize = 64 * 1024;
/// How long the client has, after the channel opened, to say what to run.
const START_WAIT: Duration = Duration::from_secs(30);

/// Counts a channel as open until dropped.
pub(crate) struct OpenCount(Arc<AtomicUsize>);

impl OpenCount {
    pub(crate) fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A session channel's task.
pub(crate) struct SessionTask {
    pub ctx: Arc<HostContext>,
    pub config: Arc<SshConfig>,
    pub login: Login,
    pub id: String,
    pub handle: Handle,
    pub commands: mpsc::Receiver<ChannelCommand>,
    pub closing: watch::Receiver<Option<String>>,
    pub workload_ended: CancellationToken,
    pub open: OpenCount,
}

impl SessionTask {
    pub(crate) async fn run(mut self, channel: Channel<Msg>, reply: ChannelOpenHandle) {
        let admitted = &self.login.admitted;
        let request = admitted.dial(&self.id, self.config.stream_wait, DialKind::Session);
        let stream = match self.ctx.dial(request).await {
            Ok(stream) => stream,
            Err(e) => {
                info!(channel = %self.id, agent = %admitted.target.agent_id, error = %e, "SSH session could not reach the workload");
                reply.reject(ChannelOpenFailure::Other { code: 2, reason: e.to_string() }).await;
                self.ctx.metrics.ssh_channel("session", "refused");
                return;
            }
        };
        self.ctx.metrics.ssh_channel("session", "opened");
        // The agent session's "workload ended" switch (local tunnels carry it).
        let identity = stream.session().identity.clone();
        let (sender, receiver) = stream.into_session();
        reply.accept().await;
        let id = channel.id();
        let (mut read, write) = channel.split();
        let mut stdout = write.make_writer();
        let mut stderr = write.make_writer_ext(Some(1));

        // Until the start: buffer early input, follow resizes into the start.
        let mut early = Vec::new();
        let start = tokio::time::timeout(START_WAIT, async {
            loop {
                tokio::select! {
                    command = self.commands.recv() => match command {
                        Some(ChannelCommand::Start(start)) => return Some(start),
                        Some(_) => {}
                        None => return None,
                    },
                    message = read.wait() => match message {
                        Some(ChannelMsg::Data { data }) => {
                            if early.len() + data.len() > MAX_EARLY_INPUT {
                                return None;
                            }
                            early.extend_from_slice(&data);
                        }
                        Some(ChannelMsg::Close) | None => return None,
                        Some(_) => {}
                    },
                }
            }
        })
        .await;
        let Ok(Some(start)) = start else {
            debug!(channel = %self.id, "session channel closed or idle before starting");
            sender.reset(ResetCode::Cancelled, "the client did not start the session");
            let _ = write.close().await;
            return;
        };
        let pty = start.pty.is_some();
        if sender.start(start).await.is_err()
            || (!early.is_empty() && sender.data(early.into()).await.is_err())
        {
            let _ = stderr.write_all(b"burrow: the session ended before it started\r\n").await;
            let _ = write.exit_status(255).await;
            let _ = write.close().await;
            return;
        }
        debug!(channel = %self.id, pty, "session started");

        let exit = {
            let input = relay_input(&mut read, &mut self.commands, &sender);
            let output = relay_output(receiver, &mut stdout, &mut stderr, &self.workload_ended);
            let ended_signal = async {
                match &identity {
                    Some(identity) => identity.ended.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            let mut closing = self.closing.clone();
            tokio::select! {
                exit = output => exit,
                // The client closed the channel: the agent hangs up the program.
                _ = input => {
                    sender.reset(ResetCode::Cancelled, "the client closed the session");
                    return;
                }
                _ = ended_signal => {
                    self.workload_ended.cancel();
                    Exit::Notice(identity.as_ref().map(|i| i.notice()).unwrap_or_default())
                }
                reason = wait_closing(&mut closing) => Exit::Notice(reason),
            }
        };
        match exit {
            Exit::Status(status) => {
                let _ = stdout.shutdown().await;
                let _ = write.exit_status(status).await;
            }
            Exit::Signal { name, core_dumped, message } => {
                let _ = stdout.shutdown().await;
                let _ = self
                    .handle
                    .exit_signal_request(id, sig(&name), core_dumped, message, String::new())
                    .await;
            }
            Exit::Message(status, message) => {
                let _ = stderr.write_all(format!("burrow: {message}\r\n").as_bytes()).await;
                let _ = stdout.shutdown().await;
                let _ = write.exit_status(status).await;
            }
            Exit::Notice(reason) => {
                sender.reset(ResetCode::Shutdown, reason.clone());
                let _ = stderr.write_all(format!("\r\nburrow: {reason}\r\n").as_bytes()).await;
                let _ = stdout.shutdown().await;
                let _ = write.exit_status(255).await;
            }
            Exit::Broken(reason) => {
                let _ = stderr
                    .write_all(format!("\r\nburrow: the session was lost: {reason}\r\n").as_bytes())
                    .await;
                let _ = write.exit_status(255).await;
            }
        }
        let _ = write.close().await;
        drop(self.open);
    }
}

async fn wait_closing(closing: &mut watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(reason) = closing.borrow_and_update().clone() {
            return reason;
        }
        if closing.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Client input and the handler's resizes and signals, to the agent. Returns when the
/// client closed the channel.
async fn relay_input(
    read: &mut russh::ChannelReadHalf,
    commands: &mut mpsc::Receiver<ChannelCommand>,
    sender: &SessionSender,
) {
    let mut commands_open = true;
    loop {
        tokio::select! {
            message = read.wait() => match message {
                Some(ChannelMsg::Data { data }) => {
                    if sender.data(Bytes::copy_from_slice(&data)).await.is_err() {
                        // The session is over; keep draining until the client closes.
                    }
                }
                Some(ChannelMsg::Eof) => {
                    let _ = sender.eof().await;
                }
                Some(ChannelMsg::Close) | None => return,
                // The handler already answered the requests; these are copies.
                Some(_) => {}
            },
            command = commands.recv(), if commands_open => match command {
                Some(ChannelCommand::Resize(size)) => { let _ = sender.resize(size).await; }
                Some(ChannelCommand::Signal(name)) => { let _ = sender.signal(&name).await; }
                Some(ChannelCommand::Start(_)) => {}
                None => commands_open = false,
            },
        }
    }
}

/// How a session ended, as the client is told.
enum Exit {
    Status(u32),
    Signal {
        name: String,
        core_dumped: bool,
        message: String,
    },
    /// The agent ended it itself, with a reason for the user.
    Message(u32, String),
    /// The host ends it (drain, time limit, workload ended).
    Notice(String),
    /// The tunnel broke.
    Broken(String),
}

async fn relay_output(
    mut receiver: SessionReceiver,
    stdout: &mut (impl tokio::io::AsyncWrite + Unpin),
    stderr: &mut (impl tokio::io::AsyncWrite + Unpin),
    workload_ended: &CancellationToken,
) -> Exit {
    let mut exit = None;
    while let Some(event) = receiver.next().await {
        match event {
            SessionEvent::Data(data) => {
                if stdout.write_all(&data).await.is_err() {
                    return Exit::Broken("the client stopped reading".into());
                }
            }
            SessionEvent::Stderr(data) => {
                let _ = stderr.write_all(&data).await;
            }
            SessionEvent::Exit(e) => exit = Some(e),
            SessionEvent::Eof => break,
            // The replica holding the agent says the workload ended (forwarded
            // sessions): the whole connection was for it, so it closes too.
            SessionEvent::Reset(ResetCode::WorkloadEnded, reason) => {
                workload_ended.cancel();
                return Exit::Notice(burrow_host_core::registry::ended_notice(&reason));
            }
            SessionEvent::Reset(_, reason) => return Exit::Broken(reason),
        }
    }
    match exit {
        Some(pb::SessionExit { how, message, core_dumped }) => match how {
            Some(pb::session_exit::How::Signal(name)) => Exit::Signal { name, core_dumped, message },
            Some(pb::session_exit::How::Status(status)) if !message.is_empty() => {
                Exit::Message(status, message)
            }
            Some(pb::session_exit::How::Status(status)) => Exit::Status(status),
            None => Exit::Status(255),
        },
        None => Exit::Broken("the agent ended the session without an exit status".into()),
    }
}
