//! The Burrow agent: runs beside a workload, dials OUT to a Burrow host, and serves the
//! reverse tunnels the host hands user connections to.
//!
//! # What it does
//!
//! 1. Connects to the host over `grpc://` (h2c), `grpcs://` (TLS, ALPN `h2`), `ws://`
//!    or `wss://` (the same HTTP/2 bytes inside one WebSocket, for proxies that only pass
//!    HTTP/1.1).
//! 2. Opens the `Control` RPC with `authorization: Bearer <token>` and sends `Hello`
//!    (protocol version, agent version, replica id, service names); the host answers
//!    `Welcome`.
//! 3. Keeps a pool of parked `Tunnel` RPCs. When the host claims one with `Dial`, the
//!    agent checks the service against its allow-list (its `--service` flags and nothing
//!    else: no SSRF into the agent's network), connects, and pipes bytes both ways with
//!    half-close.
//! 4. Reconnects with exponential backoff and jitter; authentication and version
//!    rejections back off much harder. `GoAway` from a draining host reconnects without
//!    penalty while tunnels on the old connection finish.
//!
//! # Pool defaults, and why they differ from GitLab KAS
//!
//! | | Burrow | KAS |
//! |---|---|---|
//! | idle floor | 4 (`--min-idle`) | 2 |
//! | growth | each claim is replaced at once; a claim that empties the parked set doubles the idle target | +10 streams per step |
//! | ceiling | 1000 (`--max-streams`) | 500 |
//! | surplus idle | closes after 60 s (`--idle-timeout`) | |
//!
//! A larger idle floor absorbs the common small burst (a page load fetching a few assets
//! at once) with no round trip to open streams, and geometric growth reaches a big burst
//! in a few round trips instead of a 10-at-a-time ramp. The ceiling is 1000 because
//! users running more than 500 parallel watches (e.g. many `kubectl ... -w`) hit KAS's
//! limit. Idle tunnels cost the host one HTTP/2 stream each and nothing while unused.
//! The host must allow at least `max_streams + 1` concurrent HTTP/2 streams per
//! connection (the `+ 1` is the control stream).
//!
//! # Library use
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = burrow_agent::AgentConfig::new("grpc://127.0.0.1:7000", "secret-token")?
//!     .with_service("web=127.0.0.1:3000")?;
//! let agent = burrow_agent::spawn(config);
//! let mut status = agent.status();
//! status.wait_for(|s| s.is_connected()).await?;
//! agent.shutdown().await;
//! # Ok(()) }
//! ```

mod backoff;
mod config;
mod pool;
mod session;
mod shared;
mod status;
mod transport;
mod tunnel;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use backoff::{Backoff, BackoffState};
pub use config::{
    default_replica_id, AgentConfig, ConfigError, HostUrl, Scheme, Secret, ServiceSpec,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_DIAL_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_STREAMS,
    DEFAULT_MIN_IDLE, DEFAULT_SHUTDOWN_GRACE, MAX_SERVICE_NAME,
};
pub use pool::Pool;
pub use status::{AgentStatus, ConnState};

use session::{AttemptError, SessionEnd};
use shared::Shared;
use transport::Transport;

/// Why the agent could not run at all. Connection problems are never returned: the
/// agent retries them forever (see [`AgentStatus`]).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration broke a rule.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The `--ca-file` could not be used.
    #[error("cannot use CA file {}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The TLS client could not be set up.
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// A session shorter than this that ends in `GoAway` still waits a backoff delay.
const QUICK_SESSION: Duration = Duration::from_secs(1);

/// After the grace period, how long aborted tunnels get to send their `Reset`.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Run the agent until `shutdown` completes, then stop gracefully: no new tunnels,
/// parked ones dropped, active ones given `shutdown_grace` to finish.
///
/// Returns an error only for an unusable configuration.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    let watcher = tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    let (status, _) = watch::channel(AgentStatus::default());
    let result = run_inner(config, stop, CancellationToken::new(), status).await;
    watcher.abort();
    result
}

/// Start the agent on the current tokio runtime.
///
/// Dropping the handle leaves the agent running; use [`AgentHandle::shutdown`] or
/// [`AgentHandle::abort`] to stop it.
pub fn spawn(config: AgentConfig) -> AgentHandle {
    let (status_tx, status) = watch::channel(AgentStatus::default());
    let stop = CancellationToken::new();
    let kill = CancellationToken::new();
    let task = tokio::spawn(run_inner(config, stop.clone(), kill.clone(), status_tx));
    AgentHandle { status, stop, kill, task }
}

/// Controls an agent started with [`spawn`].
#[derive(Debug)]
pub struct AgentHandle {
    status: watch::Receiver<AgentStatus>,
    stop: CancellationToken,
    kill: CancellationToken,
    task: JoinHandle<Result<(), AgentError>>,
}

impl AgentHandle {
    /// Live status; `wait_for` on it to await a state.
    pub fn status(&self) -> watch::Receiver<AgentStatus> {
        self.status.clone()
    }

    /// Stop gracefully (as on SIGTERM) and wait until the agent has stopped.
    pub async fn shutdown(self) {
        self.stop.cancel();
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "agent failed"),
            Err(e) if e.is_cancelled() => {}
            Err(e) => error!(error = %e, "agent task panicked"),
        }
    }

    /// Stop at once: every tunnel and the connection are dropped without grace.
    pub fn abort(self) {
        self.kill.cancel();
        self.stop.cancel();
        self.task.abort();
    }
}

async fn run_inner(
    config: AgentConfig,
    stop: CancellationToken,
    kill: CancellationToken,
    status: watch::Sender<AgentStatus>,
) -> Result<(), AgentError> {
    let prepared = config.validate().map_err(AgentError::from).and_then(|()| {
        let transport = Transport::new(&config)?;
        let shared = Shared::new(&config, status.clone(), kill)?;
        Ok((transport, shared))
    });
    let (transport, shared) = match prepared {
        Ok(p) => p,
        Err(e) => {
            status.send_modify(|s| {
                s.state = ConnState::Stopped;
                s.last_error = Some(e.to_string());
            });
            return Err(e);
        }
    };
    info!(
        host = %config.host,
        replica_id = %config.replica_id,
        services = ?config.services.iter().map(|s| s.name()).collect::<Vec<_>>(),
        min_idle = config.min_idle,
        max_streams = config.max_streams,
        "burrow-agent {} starting",
        env!("CARGO_PKG_VERSION"),
    );

    supervise(&config, &transport, &shared, &stop).await;

    // Graceful stop: nothing new, parked tunnels are already cancelled with their
    // session; active ones get the grace period.
    shared.begin_stop();
    shared.tracker.close();
    let active = shared.tracker.len();
    if active > 0 {
        info!(tunnels = active, grace = ?config.shutdown_grace, "waiting for active tunnels to finish");
    }
    if timeout(config.shutdown_grace, shared.tracker.wait()).await.is_err() {
        warn!(tunnels = shared.tracker.len(), "grace period over; resetting the remaining tunnels");
        shared.kill.cancel();
        let _ = timeout(KILL_WAIT, shared.tracker.wait()).await;
    }
    shared.set_status(|s| s.state = ConnState::Stopped);
    info!("burrow-agent stopped");
    Ok(())
}

/// Connect, serve, and reconnect until `stop`.
async fn supervise(
    config: &AgentConfig,
    transport: &Transport,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
) {
    let mut backoff = BackoffState::new(config.backoff);
    let mut auth_backoff = BackoffState::new(config.auth_backoff);
    while !stop.is_cancelled() {
        shared.set_status(|s| {
            s.state = ConnState::Connecting;
            s.connect_attempts += 1;
        });
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            r = session::establish(shared, transport, config) => r,
        };
        // (delay, reason, auth failure, counts as an error)
        let (delay, reason, auth_failure, is_error) = match attempt {
            Ok(est) => {
                auth_backoff.reset();
                let connected_at = Instant::now();
                info!(
                    host = %config.host,
                    agent_id = %est.welcome.agent_id,
                    host_replica_id = %est.welcome.host_replica_id,
                    "connected to host",
                );
                shared.set_status(|s| {
                    s.state = ConnState::Connected {
                        host_replica_id: est.welcome.host_replica_id.clone(),
                        agent_id: est.welcome.agent_id.clone(),
                    }
                });
                let end = session::supervise(shared, est, stop).await;
                let lasted = connected_at.elapsed();
                backoff.connection_ended_after(lasted);
                match end {
                    SessionEnd::Shutdown => return,
                    SessionEnd::GoAway { reason, after } => {
                        // Not a failure, so no backoff penalty; but a host that welcomes and
                        // sends GoAway at once must not make the agent spin.
                        let after =
                            if lasted < QUICK_SESSION { after.max(backoff.next_delay()) } else { after };
                        (after, format!("host sent GoAway: {reason}"), false, false)
                    }
                    SessionEnd::Lost(reason) => {
                        warn!(%reason, "connection to host lost");
                        (backoff.next_delay(), reason, false, true)
                    }
                }
            }
            Err(AttemptError::Auth(msg)) => {
                shared.set_status(|s| s.auth_failures += 1);
                error!(error = %msg, "host rejected the agent token; check BURROW_AGENT_TOKEN / --token-file");
                (auth_backoff.next_delay(), format!("host rejected the agent token: {msg}"), true, true)
            }
            Err(AttemptError::Version(msg)) => {
                error!(
                    error = %msg,
                    agent_protocol = burrow_proto::PROTOCOL_VERSION,
                    "host refused this agent's protocol version; upgrade the agent or the host"
                );
                (auth_backoff.next_delay(), format!("protocol version rejected: {msg}"), false, true)
            }
            Err(AttemptError::GoAway { reason, after }) => {
                // GoAway instead of Welcome: this host is draining and may keep saying so;
                // back off as after a failure.
                info!(%reason, "host is draining; retrying");
                (after.max(backoff.next_delay()), format!("host sent GoAway: {reason}"), false, false)
            }
            Err(AttemptError::Other(msg)) => {
                warn!(error = %msg, "could not connect to host");
                (backoff.next_delay(), msg, false, true)
            }
        };
        info!(retry_in = ?delay, "reconnecting");
        shared.set_status(|s| {
            if is_error {
                s.last_error = Some(reason.clone());
            }
            s.state = ConnState::BackingOff { retry_in: delay, reason, auth_failure };
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sleep(delay) => {}
        }
    }
}
