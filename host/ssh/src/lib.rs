//! The SSH ingress: users' SSH clients (and the editors and tools built on them) reach
//! workloads through the same admission and dialer as HTTP.
//!
//! A login is one admission: the SSH user names the target (the workload plugins
//! resolve it, e.g. `<workspace>` or `job-<id>`), the public key (whose possession
//! russh has verified) or the password (a token) is the credential, and the authorizer
//! decides whether this user may open an `ssh-session` there. Every refusal looks the
//! same to the client ("Permission denied"); the log says which step refused.
//!
//! Each `session` channel becomes one session tunnel to the agent
//! (`DialKind::Session`): the agent runs the configured shell, command or sftp server;
//! each `direct-tcpip` channel (`ssh -L`, `ssh -W`) is admitted as a `port-forward` and
//! becomes an ordinary TCP tunnel to a service the agent allows. Agent, X11 and remote
//! forwarding are refused.
//!
//! # Layout
//! - this file: [`serve`], the accept loop, and a connection's life (handshake
//!   deadline, absolute limit, drain, workload end).
//! - [`config`]: the `[ssh]` table.
//! - [`host_key`]: load or create the host key; its fingerprint.
//! - `handler`: the russh handler: authentication through admission, channel opens and
//!   requests. Every callback answers at once from local state; I/O runs in tasks.
//! - `channel`: one session channel bridged to its session tunnel.
//! - `forward`: one `direct-tcpip` channel over a TCP tunnel.

pub mod config;
pub mod host_key;

mod channel;
mod forward;
mod handler;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::{MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use burrow_host_core::context::HostContext;
pub use config::SshConfig;

/// The SSH ingress could not start.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(transparent)]
    HostKey(#[from] host_key::HostKeyError),
    #[error("ssh: {0}")]
    Io(#[from] std::io::Error),
}

/// How long a connection gets to finish after a drain or an ended workload told it to,
/// before its socket is closed under it.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// The login methods offered: keys, and tokens as passwords if allowed.
fn auth_methods(config: &SshConfig) -> MethodSet {
    let mut methods = vec![MethodKind::PublicKey];
    if config.password_auth {
        methods.push(MethodKind::Password);
    }
    MethodSet::from(&methods[..])
}

/// The russh server configuration for `config` with `key`.
fn russh_config(config: &SshConfig, key: PrivateKey) -> russh::server::Config {
    let optional = |d: Duration| (!d.is_zero()).then_some(d);
    russh::server::Config {
        server_id: russh::SshId::Standard(format!("SSH-2.0-Burrow_{}", env!("CARGO_PKG_VERSION")).into()),
        methods: auth_methods(config),
        keys: vec![key],
        // The first "none" probe costs nothing; real failures are padded to one second
        // so their timing says nothing about which step refused.
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: config.max_auth_attempts,
        inactivity_timeout: optional(config.idle_timeout),
        keepalive_interval: optional(config.keepalive_interval),
        nodelay: true,
        ..Default::default()
    }
}

/// Serves SSH on `listener` until `shutdown`; open sessions then get `grace` to finish
/// before their connections are closed.
pub async fn serve(
    ctx: Arc<HostContext>,
    config: Arc<SshConfig>,
    listener: TcpListener,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), SshError> {
    let force_close = CancellationToken::new();
    {
        let (shutdown, force_close) = (shutdown.clone(), force_close.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
            force_close.cancel();
        });
    }
    let (key, created) = host_key::load_or_create(&config.host_key)?;
    let fingerprint = host_key::fingerprint(&key);
    if created {
        info!(path = %config.host_key.display(), %fingerprint, "created the SSH host key");
    }
    let local = listener.local_addr()?;
    info!(addr = %local, %fingerprint, "SSH ingress listening");
    let russh_config = Arc::new(russh_config(&config, key));
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let tracker = TaskTracker::new();
    let mut next_id: u64 = 0;
    loop {
        let (socket, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "SSH accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "SSH connection refused: at ssh.max_connections");
            drop(socket);
            continue;
        };
        next_id += 1;
        let conn_id = format!("ssh-{:x}-{next_id}", std::process::id());
        let _ = socket.set_nodelay(true);
        let conn = Connection {
            ctx: ctx.clone(),
            config: config.clone(),
            russh: russh_config.clone(),
            peer,
            conn_id,
            shutdown: shutdown.clone(),
            force_close: force_close.clone(),
        };
        tracker.spawn(async move {
            conn.run(socket).await;
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

struct Connection {
    ctx: Arc<HostContext>,
    config: Arc<SshConfig>,
    russh: Arc<russh::server::Config>,
    peer: SocketAddr,
    conn_id: String,
    shutdown: CancellationToken,
    force_close: CancellationToken,
}

impl Connection {
    async fn run(self, socket: tokio::net::TcpStream) {
        let logged_in = CancellationToken::new();
        let workload_ended = CancellationToken::new();
        let (closing_tx, closing) = tokio::sync::watch::channel(None::<String>);
        let handler = handler::ConnHandler::new(handler::ConnParts {
            ctx: self.ctx.clone(),
            config: self.config.clone(),
            peer: self.peer,
            conn_id: self.conn_id.clone(),
            methods: self.russh.methods.clone(),
            logged_in: logged_in.clone(),
            workload_ended: workload_ended.clone(),
            closing,
        });
        let cut = CancellationToken::new();
        let socket = handler::Cancellable::new(socket, cut.clone());
        let running = match russh::server::run_stream(self.russh.clone(), socket, handler).await {
            Ok(r) => r,
            Err(e) => return debug!(peer = %self.peer, error = %e, "SSH handshake failed"),
        };
        let handle = running.handle();
        tokio::pin!(running);
        let handshake = tokio::time::sleep(self.config.handshake_timeout);
        tokio::pin!(handshake);
        let lifetime = tokio::time::sleep(self.config.max_session);
        tokio::pin!(lifetime);
        let reason = tokio::select! {
            r = &mut running => {
                if let Err(e) = r {
                    debug!(conn = %self.conn_id, error = %e, "SSH connection ended with an error");
                }
                return;
            }
            _ = &mut handshake, if !logged_in.is_cancelled() => {
                debug!(conn = %self.conn_id, peer = %self.peer, "SSH login not completed in time");
                cut.cancel();
                let _ = running.await;
                return;
            }
            _ = &mut lifetime => "the connection reached its time limit (ssh.max_session)",
            _ = workload_ended.cancelled() => "the workload has ended",
            _ = self.shutdown.cancelled() => {
                // A drain: no new channels (the handler checks), and open sessions run
                // until the grace period ends.
                tokio::select! {
                    _ = &mut running => return,
                    _ = self.force_close.cancelled() => {}
                    _ = &mut lifetime => {}
                }
                "the host is shutting down"
            }
        };
        info!(conn = %self.conn_id, reason, "closing SSH connection");
        // Sessions tell their users why, then the client is told, then the socket closes.
        closing_tx.send_replace(Some(reason.to_owned()));
        tokio::select! {
            _ = &mut running => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let _ = handle.disconnect(russh::Disconnect::ByApplication, reason.to_owned(), String::new()).await;
        tokio::select! {
            _ = &mut running => {}
            _ = tokio::time::sleep(DISCONNECT_GRACE) => {
                cut.cancel();
                let _ = running.await;
            }
        }
    }
}
