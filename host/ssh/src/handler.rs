//! The russh handler of one connection. Callbacks run one at a time on the connection's
//! loop and a request's reply is tied to the moment it is answered, so every callback
//! answers at once from local state and never awaits the network: dialing, relaying and
//! admission of port-forwards run in per-channel tasks.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use burrow_host_core::admission::{AdmissionRequest, Admitted, Refusal};
use burrow_host_core::context::HostContext;
use burrow_host_plugins::types::{Action, Credential};
use burrow_proto::pb::{self, session_start::Command};
use russh::keys::HashAlg;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodSet, Pty, Sig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::SshConfig;

use burrow_proto::session::{valid_size, valid_term, MAX_COMMAND, MAX_ENV, MAX_ENV_VALUE};
/// Commands queued for a channel task; a full queue fails the request.
const COMMAND_QUEUE: usize = 16;

/// What a channel task is told by the handler.
#[derive(Debug)]
pub(crate) enum ChannelCommand {
    Start(pb::SessionStart),
    Resize(pb::WindowSize),
    Signal(String),
}

/// Everything a connection's handler starts from.
pub(crate) struct ConnParts {
    pub ctx: Arc<HostContext>,
    pub config: Arc<SshConfig>,
    pub peer: SocketAddr,
    pub conn_id: String,
    /// The login methods the server offers (from its russh config).
    pub methods: MethodSet,
    /// Cancelled at the first successful login (ends the handshake deadline).
    pub logged_in: CancellationToken,
    /// Cancelled by a channel whose workload ended: the connection closes.
    pub workload_ended: CancellationToken,
    /// The reason, once the connection is closing: sessions show it to their user.
    pub closing: watch::Receiver<Option<String>>,
}

/// A successful login.
#[derive(Clone)]
pub(crate) struct Login {
    pub user: String,
    pub credential: Credential,
    pub admitted: Admitted,
}

/// What the handler keeps about an open session channel.
struct SessionChannel {
    commands: mpsc::Sender<ChannelCommand>,
    pty: Option<pb::Pty>,
    env: Vec<pb::EnvVar>,
    started: bool,
}

/// One connection's handler.
pub(crate) struct ConnHandler {
    parts: Arc<ConnParts>,
    login: Option<Login>,
    sessions: HashMap<ChannelId, SessionChannel>,
    /// Channels open now (sessions and forwards); each task holds one count.
    open: Arc<std::sync::atomic::AtomicUsize>,
    next_channel: u64,
}

impl ConnHandler {
    pub(crate) fn new(parts: ConnParts) -> Self {
        Self {
            parts: Arc::new(parts),
            login: None,
            sessions: HashMap::new(),
            open: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            next_channel: 0,
        }
    }

    /// A refusal that keeps every method on offer, so a failed key does not hide the
    /// password method (and the client learns nothing about why).
    fn reject(&self) -> Auth {
        Auth::Reject { proceed_with_methods: Some(self.parts.methods.clone()), partial_success: false }
    }

    async fn admit_login(&mut self, user: &str, credential: Credential, method: &str, key_id: &str) -> Auth {
        let request = AdmissionRequest {
            action: Action::SshSession,
            host: String::new(),
            ssh_user: user.to_owned(),
            method: String::new(),
            path: String::new(),
            port: 0,
            credential: credential.clone(),
            signed_in: None,
            peer: self.parts.peer,
            request_id: self.parts.conn_id.clone(),
        };
        match self.parts.ctx.admission.admit(request).await {
            Ok(admitted) => {
                info!(
                    conn = %self.parts.conn_id, peer = %self.parts.peer, user, method, key = key_id,
                    principal = admitted.principal_id(), agent = %admitted.target.agent_id,
                    "SSH login"
                );
                self.login = Some(Login { user: user.to_owned(), credential, admitted });
                self.parts.ctx.metrics.ssh_login("accepted");
                Auth::Accept
            }
            Err(refusal) => {
                info!(
                    conn = %self.parts.conn_id, peer = %self.parts.peer, user, method, key = key_id,
                    refusal = %refusal, "SSH login refused"
                );
                self.parts.ctx.metrics.ssh_login("refused");
                self.reject()
            }
        }
    }

    /// Whether a new channel may open; the reason when not.
    fn may_open(&self) -> Result<(), String> {
        if self.login.is_none() {
            return Err("not logged in".into());
        }
        if self.parts.ctx.is_draining() {
            return Err("the host is shutting down".into());
        }
        if self.parts.closing.borrow().is_some() {
            return Err("the connection is closing".into());
        }
        let open = self.open.load(std::sync::atomic::Ordering::SeqCst);
        if open >= self.parts.config.max_channels {
            return Err(format!("too many channels on this connection ({open}; ssh.max_channels)"));
        }
        Ok(())
    }

    fn channel_id(&mut self) -> String {
        self.next_channel += 1;
        format!("{}-{}", self.parts.conn_id, self.next_channel)
    }

    fn reply(session: &mut Session, channel: ChannelId, ok: bool) -> Result<(), russh::Error> {
        if ok {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    /// Sends `start` to the channel task once; later starts fail.
    fn start(&mut self, channel: ChannelId, command: Command) -> bool {
        let Some(entry) = self.sessions.get_mut(&channel) else { return false };
        if entry.started {
            return false;
        }
        let pty = if matches!(command, Command::Subsystem(_)) { None } else { entry.pty.clone() };
        let start = pb::SessionStart { pty, env: std::mem::take(&mut entry.env), command: Some(command) };
        entry.started = entry.commands.try_send(ChannelCommand::Start(start)).is_ok();
        entry.started
    }
}

/// Checks an SSH user name before anything is asked of a plugin.
fn valid_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= 128 && user.chars().all(|c| c.is_ascii_graphic())
}

fn window(cols: u32, rows: u32, width_px: u32, height_px: u32) -> pb::WindowSize {
    pb::WindowSize { cols, rows, width_px, height_px }
}

/// An RFC 4254 signal name without `SIG`.
fn signal_name(signal: &Sig) -> String {
    match signal {
        Sig::ABRT => "ABRT".into(),
        Sig::ALRM => "ALRM".into(),
        Sig::FPE => "FPE".into(),
        Sig::HUP => "HUP".into(),
        Sig::ILL => "ILL".into(),
        Sig::INT => "INT".into(),
        Sig::KILL => "KILL".into(),
        Sig::PIPE => "PIPE".into(),
        Sig::QUIT => "QUIT".into(),
        Sig::SEGV => "SEGV".into(),
        Sig::TERM => "TERM".into(),
        Sig::USR1 => "USR1".into(),
        Sig::Custom(name) => name.chars().take(32).collect(),
    }
}

/// The russh signal for an RFC 4254 name.
pub(crate) fn sig(name: &str) -> Sig {
    match name {
        "ABRT" => Sig::ABRT,
        "ALRM" => Sig::ALRM,
        "FPE" => Sig::FPE,
        "HUP" => Sig::HUP,
        "ILL" => Sig::ILL,
        "INT" => Sig::INT,
        "KILL" => Sig::KILL,
        "PIPE" => Sig::PIPE,
        "QUIT" => Sig::QUIT,
        "SEGV" => Sig::SEGV,
        "TERM" => Sig::TERM,
        "USR1" => Sig::USR1,
        other => Sig::Custom(other.to_owned()),
    }
}

/// Why an admitted user still may not open a forward, in words for `ssh -v`.
pub(crate) fn refusal_text(refusal: &Refusal) -> String {
    match refusal {
        Refusal::NoRoute { .. } => "no such service on this workload".into(),
        Refusal::WorkloadEnded { .. } => "the workload has ended".into(),
        Refusal::Unauthenticated { .. } | Refusal::Forbidden { .. } => "port-forward not allowed".into(),
        Refusal::Plugin { .. } => "the host could not decide (try again later)".into(),
    }
}

impl russh::server::Handler for ConnHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        // Never anonymous, even on an open workload: SSH has no notion of a guest.
        Ok(self.reject())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Possession is proven before the authorizer is asked: answer the probe from
        // local checks only, so key offers cost no plugin call.
        // Certificates go through `auth_openssh_certificate`, which keeps russh's reject.
        let _ = offer;
        Ok(if valid_user(user) { Auth::Accept } else { self.reject() })
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        if !valid_user(user) {
            return Ok(self.reject());
        }
        let fingerprint = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        let Ok(blob) = key.public_key.to_bytes() else { return Ok(self.reject()) };
        let credential = Credential::SshPublicKey {
            user: user.to_owned(),
            algorithm: key.public_key.algorithm().as_str().to_owned(),
            key: blob,
            fingerprint: fingerprint.clone(),
        };
        Ok(self.admit_login(user, credential, "publickey", &fingerprint).await)
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        if !self.parts.config.password_auth
            || !valid_user(user)
            || password.is_empty()
            || password.len() > 4096
        {
            return Ok(self.reject());
        }
        let credential = Credential::SshPassword { user: user.to_owned(), password: password.to_owned() };
        Ok(self.admit_login(user, credential, "password", "").await)
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.parts.logged_in.cancel();
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Err(reason) = self.may_open() {
            debug!(conn = %self.parts.conn_id, %reason, "session channel refused");
            self.parts.ctx.metrics.ssh_channel("session", "refused");
            reply.reject(ChannelOpenFailure::Other { code: 1, reason }).await;
            return Ok(());
        }
        let login = self.login.clone().expect("may_open checked the login");
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        self.sessions.insert(
            channel.id(),
            SessionChannel { commands: tx, pty: None, env: Vec::new(), started: false },
        );
        let task = crate::channel::SessionTask {
            ctx: self.parts.ctx.clone(),
            config: self.parts.config.clone(),
            login,
            id: self.channel_id(),
            handle: session.handle(),
            commands: rx,
            closing: self.parts.closing.clone(),
            workload_ended: self.parts.workload_ended.clone(),
            open: crate::channel::OpenCount::new(self.open.clone()),
        };
        tokio::spawn(task.run(channel, reply));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let check = self.may_open().and_then(|()| match u16::try_from(port_to_connect) {
            Ok(_) if !host_to_connect.is_empty() && host_to_connect.len() <= 253 => Ok(()),
            _ => Err("invalid destination".to_owned()),
        });
        if let Err(reason) = check {
            debug!(conn = %self.parts.conn_id, %reason, "direct-tcpip refused");
            self.parts.ctx.metrics.ssh_channel("forward", "refused");
            reply.reject(ChannelOpenFailure::Other { code: 1, reason }).await;
            return Ok(());
        }
        let task = crate::forward::ForwardTask {
            ctx: self.parts.ctx.clone(),
            config: self.parts.config.clone(),
            login: self.login.clone().expect("may_open checked the login"),
            peer: self.parts.peer,
            id: self.channel_id(),
            host: host_to_connect.to_ascii_lowercase(),
            port: u16::try_from(port_to_connect).unwrap_or_default(),
            closing: self.parts.closing.clone(),
            open: crate::channel::OpenCount::new(self.open.clone()),
        };
        tokio::spawn(task.run(channel, reply));
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let reason = "unix socket forwarding is not supported".to_owned();
        reply.reject(ChannelOpenFailure::Other { code: 1, reason }).await;
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.sessions.remove(&channel);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let term_ok = valid_term(term);
        let size_ok = valid_size(col_width, row_height);
        let ok = match self.sessions.get_mut(&channel) {
            Some(entry) if !entry.started && entry.pty.is_none() && term_ok && size_ok => {
                entry.pty = Some(pb::Pty {
                    term: term.to_owned(),
                    size: Some(window(col_width, row_height, pix_width, pix_height)),
                    modes: modes
                        .iter()
                        .map(|(mode, value)| pb::TerminalMode {
                            opcode: u32::from(*mode as u8),
                            value: *value,
                        })
                        .collect(),
                });
                true
            }
            _ => false,
        };
        Self::reply(session, channel, ok)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let mut chars = name.chars();
        let name_ok = name.len() <= 64
            && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        let ok = match self.sessions.get_mut(&channel) {
            // The agent decides which variables pass; the host only bounds the request.
            Some(entry)
                if !entry.started && name_ok && value.len() <= MAX_ENV_VALUE && entry.env.len() < MAX_ENV =>
            {
                entry.env.push(pb::EnvVar { name: name.to_owned(), value: value.to_owned() });
                true
            }
            _ => false,
        };
        Self::reply(session, channel, ok)
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        let ok = self.start(channel, Command::Shell(pb::Shell {}));
        Self::reply(session, channel, ok)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = !data.is_empty()
            && data.len() <= MAX_COMMAND
            && !data.contains(&0)
            && self.start(channel, Command::Exec(bytes::Bytes::copy_from_slice(data)));
        Self::reply(session, channel, ok)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = name == "sftp" && self.start(channel, Command::Subsystem(name.to_owned()));
        Self::reply(session, channel, ok)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let size = window(col_width, row_height, pix_width, pix_height);
        let ok = valid_size(col_width, row_height)
            && match self.sessions.get_mut(&channel) {
                Some(entry) if entry.started => entry.commands.try_send(ChannelCommand::Resize(size)).is_ok(),
                Some(entry) => match entry.pty.as_mut() {
                    Some(pty) => {
                        pty.size = Some(size);
                        true
                    }
                    None => false,
                },
                None => false,
            };
        Self::reply(session, channel, ok)
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(entry) = self.sessions.get(&channel).filter(|e| e.started) {
            let _ = entry.commands.try_send(ChannelCommand::Signal(signal_name(&signal)));
        }
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        debug!(conn = %self.parts.conn_id, address, port = *port, "remote forwarding refused (not supported)");
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        _socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }
}

/// The client socket, cut at once when its token fires: frees a connection stuck
/// writing to a client that stopped reading.
pub(crate) struct Cancellable {
    inner: TcpStream,
    cut: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl Cancellable {
    pub(crate) fn new(inner: TcpStream, cut: CancellationToken) -> Self {
        Self { inner, cut: Box::pin(cut.cancelled_owned()) }
    }

    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.cut
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed by the host"))
    }
}

use std::future::Future as _;

impl AsyncRead for Cancellable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Cancellable {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(e) = self.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
