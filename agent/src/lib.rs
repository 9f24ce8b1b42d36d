//! The Burrow agent: runs beside a workload, dials OUT to a Burrow host, and serves the
//! reverse tunnels the host hands user connections to.
//!
//! # What it does
//!
//! 1. Connects to the host over `grpc://` (h2c), `grpcs://` (TLS, ALPN `h2`), `ws://`
//!    or `wss://` (the same HTTP/2 bytes inside one WebSocket, for proxies that only pass
//!    HTTP/1.1). The cleartext schemes send the token unencrypted: they are refused for a
//!    host that is not a literal loopback address or `localhost` name unless
//!    [`AgentConfig::insecure`] (`--insecure`) is set, and always logged as a warning.
//! 2. Opens the `Control` RPC with `authorization: Bearer <token>` and sends `Hello`
//!    (protocol version, agent version, replica id, service names); the host answers
//!    `Welcome`.
//! 3. Keeps a pool of parked `Tunnel` RPCs. When the host claims one with `Dial`, the
//!    agent checks the service against its allow-list (its `--service` flags and nothing
//!    else: no SSRF into the agent's network), connects, and pipes bytes both ways with
//!    half-close.
//! 4. Reconnects with exponential backoff and jitter; authentication and version
//!    rejections back off much harder, and a host that answers RESOURCE_EXHAUSTED (the
//!    per-token connection rate limit) is given the time it asks for
//!    (`burrow-retry-after-ms`, at most 5 min) before any connection of the agent dials
//!    again. `GoAway` from a draining host reconnects without penalty while tunnels on
//!    the old connection finish.
//!
//! # Several connections, on distinct host replicas
//!
//! The agent keeps `connections` (k, default 2) independent sessions, each with its own
//! `Control` RPC, its own pool of parked tunnels (the rules below apply per connection)
//! and its own backoff. The host list (`--host`, repeatable or comma-separated) may name
//! each replica, or one load-balanced address, or both; connection `i` dials
//! `hosts[i % hosts.len()]` first and moves to the next URL after each failure.
//!
//! GitLab KAS has one connection per agent, so losing the replica it is on makes the
//! agent unreachable until it reconnects, and requests in that window fail. With k = 2
//! on two replicas, the host cluster still holds idle tunnels on the surviving replica
//! when one dies or drains: new requests go there and see no error, while only the
//! connection that was on the lost replica reconnects; the other is never touched.
//!
//! That only helps if the connections are on different replicas. `Welcome` names the
//! replica (`host_replica_id`); a connection that lands on a replica another connection
//! of this agent holds is closed at once (it has no tunnels yet) and re-dialed on the
//! next URL after 100-500 ms (so a load balancer sees a new TCP connection to place).
//! The third duplicate in a row is kept: there may be fewer replicas than k, and serving
//! beats nothing. The agent remembers that finding: after a reconnect (a host restart
//! drops every connection at once), a duplicate is kept at once while it holds as many
//! distinct replicas as that search saw, instead of dialing twice more for replicas it
//! has just seen do not exist (with one replica and k = 2 that halves the handshakes a
//! restarted host must take); seeing more replicas forgets it. Every `diversify_interval` (60 s ±20%) such a connection dials up to
//! three times more; it moves only once a new connection has landed on a free replica,
//! and then drains like on `GoAway` (no new parked tunnels, active ones finish), so the
//! agent never gives up a live connection for nothing. With fewer replicas than k this
//! settles at a few dials per interval. A host that reports no replica id is never
//! treated as a duplicate.
//!
//! # Workload agents (protocol minor 2)
//!
//! An agent started for one workload gets a workload token (`bwt1.<key id>.<claims>.<sig>`)
//! from the control plane, and lives exactly as long as the workload:
//!
//! - **Final refusals.** A `GoAway` whose code is `WORKLOAD_TERMINATED`, `WORKLOAD_ENDED`
//!   or `TOKEN_EXPIRED`, or any refused RPC carrying `burrow-final` metadata, on any
//!   connection, stops the whole agent: no reconnect, tunnels get at most 2 s. [`run`]
//!   returns [`AgentError::Final`], [`AgentStatus::final_reason`] says why, and the
//!   `burrow-agent` binary exits with [`FinalReason::exit_code`]:
//!
//!   | exit code | meaning |
//!   |---|---|
//!   | 0 | stopped by a signal (normal shutdown) |
//!   | 1 | any other error (configuration, TLS setup, ...) |
//!   | 2 | command-line usage error |
//!   | 3 | the workload was terminated ([`FinalReason::WorkloadTerminated`]) |
//!   | 4 | the workload ended or expired ([`FinalReason::WorkloadEnded`]) |
//!   | 5 | the token expired ([`FinalReason::TokenExpired`]) |
//!   | 6 | the token was revoked or is not valid ([`FinalReason::TokenRevoked`]) |
//!
//!   A `burrow-final` value or `GoAway` code the agent does not know is not final (it is
//!   logged, and the agent retries as before).
//! - **Token renewal.** The agent reads `issued_at`/`expires_at` from the token's claims
//!   (it cannot check the signature, and need not). Each connection calls `RenewToken`
//!   on its own session once two thirds of its token's lifetime have passed (at the
//!   latest 1 s before expiry), since the host extends only the session named in the
//!   call. Every new RPC then presents the newest token. Failures retry from 1 s to 30 s
//!   until the host decides; a final refusal stops the agent. Any other token is static
//!   and never renewed.
//! - **Work queue.** With [`AgentConfig::work_hook`], one loop per agent long-polls
//!   `GetWork` (30 s) on any live connection and runs each item through the hook, one at
//!   a time and in order: `RUNNING`, then the hook with the payload on stdin (no shell;
//!   `BURROW_WORK_ITEM_ID`, `BURROW_WORK_DELIVERY` set; every other `BURROW_*` variable
//!   removed), then `SUCCEEDED` or `FAILED` with the last 4 KiB of its output. A report
//!   is retried until accepted, and only then is the next item asked for. A host without
//!   a queue for the agent (UNIMPLEMENTED, FAILED_PRECONDITION) is asked once.
//!
//! # Pool defaults, and why they differ from GitLab KAS
//!
//! | | Burrow | KAS |
//! |---|---|---|
//! | idle floor | 4 (`--min-idle`) | 2 |
//! | growth | each claim is replaced at once; a claim that empties the parked set doubles the idle target | +10 streams per step |
//! | ceiling | 1000 (`--max-streams`) | 500 |
//! | surplus idle | closes after 60 s (`--idle-timeout`) | |
//! | connections | 2 (`--connections`), each with the pool above | 1 |
//!
//! Idle floor and ceiling are per connection: with the defaults the host holds 2 × 4
//! parked tunnels for the agent. A larger idle floor absorbs the common small burst (a
//! page load fetching a few assets at once) with no round trip to open streams, and
//! geometric growth reaches a big burst in a few round trips instead of a 10-at-a-time
//! ramp. The ceiling is 1000 because
//! users running more than 500 parallel watches (e.g. many `kubectl ... -w`) hit KAS's
//! limit. Idle tunnels cost the host one HTTP/2 stream each and nothing while unused.
//! The host must allow at least `max_streams + 1` concurrent HTTP/2 streams per
//! connection (the `+ 1` is the control stream).
//!
//! # Layout
//!
//! - this file: [`run`], [`spawn`] and [`AgentHandle`]: start, drain, stop.
//! - `connection`: one slot's life (dial, keep on a distinct replica, reconnect).
//! - `session`: one connection's handshake and supervision (control stream, `GoAway`).
//! - `shared`: what slots and tunnels share (status, token in force, live sessions).
//! - `pool` ([`Pool`]): how many tunnels to keep parked; pure.
//! - `tunnel`, `forward`, `shell`: one tunnel; TCP dials; interactive sessions.
//! - `transport`: grpc/grpcs/ws/wss channels. `backoff` ([`Backoff`]): retry delays.
//! - `final_reason` ([`FinalReason`]): final refusals and their exit codes.
//! - `token`: reading a workload token's lifetime and when to renew it; pure.
//! - `renew`: each session's `RenewToken` loop.
//! - `work` and `hook` ([`WorkHook`]): the work queue loop and the hook runner.
//! - `config`, `status`: [`AgentConfig`] and [`AgentStatus`].
//!
//! # Library use
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = burrow_agent::AgentConfig::new("grpcs://burrow-0.example.com", "secret-token")?
//!     .with_host("grpcs://burrow-1.example.com")?
//!     .with_service("web=127.0.0.1:3000")?;
//! let agent = burrow_agent::spawn(config);
//! let mut status = agent.status();
//! status.wait_for(|s| s.connected_replicas().len() == 2).await?;
//! for c in &agent.status().borrow().connections {
//!     println!("connection {} to {}: {:?}", c.slot, c.host, c.state);
//! }
//! agent.shutdown().await;
//! # Ok(()) }
//! ```

mod backoff;
mod config;
mod connection;
mod final_reason;
pub mod forward;
mod hook;
mod pool;
mod renew;
mod session;
mod shared;
mod shell;
mod status;
mod token;
mod transport;
mod tunnel;
mod work;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

pub use backoff::{Backoff, BackoffState};
pub use config::{
    default_replica_id, is_loopback_host, is_loopback_ip, AgentConfig, ConfigError, HostUrl, Scheme, Secret,
    ServiceSpec, DEFAULT_CONNECTIONS, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DIAL_TIMEOUT,
    DEFAULT_DIVERSIFY_INTERVAL, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_STREAMS, DEFAULT_MIN_IDLE,
    DEFAULT_SHUTDOWN_GRACE, MAX_CONNECTIONS, MAX_HOSTS, MAX_SERVICE_NAME,
};
pub use final_reason::FinalReason;
pub use hook::{WorkHook, DEFAULT_WORK_HOOK_TIMEOUT, DELIVERY_ENV, ITEM_ID_ENV};
pub use pool::Pool;
pub use shell::config::{
    default_sftp_server, default_shell, DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_ENV, MAX_SESSIONS,
    SFTP_SERVER_PATHS,
};
pub use shell::SessionConfig;
pub use status::{AgentStatus, ConnState, ConnectionStatus};

use shared::{Shared, Slot};
use transport::Transport;

/// Why the agent could not run at all, or stopped by itself. Connection problems are
/// never returned: the agent retries them forever (see [`AgentStatus`]).
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
    /// The host refused the agent for good: the workload is over or the token is dead.
    /// The agent stopped without reconnecting.
    #[error("{reason}{}", host_said(.message))]
    Final {
        /// Why.
        reason: FinalReason,
        /// What the host said (its `GoAway` reason or status message); may be empty.
        message: String,
    },
}

fn host_said(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" (reason: {message})")
    }
}

impl AgentError {
    /// The final reason, if the host refused the agent for good.
    pub fn final_reason(&self) -> Option<FinalReason> {
        match self {
            AgentError::Final { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// The `burrow-agent` process exit code for this error: the final reason's, else 1.
    pub fn exit_code(&self) -> u8 {
        self.final_reason().map_or(1, FinalReason::exit_code)
    }
}

/// After the grace period, how long aborted tunnels get to send their `Reset`.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// The grace period after a final refusal (at most `shutdown_grace`): the host is closing
/// the workload's sessions itself, so there is little to wait for.
const FINAL_GRACE: Duration = Duration::from_secs(2);

/// Run the agent until `shutdown` completes, then stop gracefully: no new tunnels,
/// parked ones dropped, active ones given `shutdown_grace` to finish.
///
/// Returns an error for an unusable configuration, and [`AgentError::Final`] when the
/// agent stopped by itself because the host refused it for good.
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
/// [`AgentHandle::abort`] to stop it. It also stops by itself after a final refusal
/// ([`AgentHandle::wait`] returns [`AgentError::Final`]).
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
            Ok(Err(e @ AgentError::Final { .. })) => info!("the agent had already stopped: {e}"),
            Ok(Err(e)) => error!(error = %e, "agent failed"),
            Err(e) if e.is_cancelled() => {}
            Err(e) => error!(error = %e, "agent task panicked"),
        }
    }

    /// Why the host refused the agent for good, once it has (the agent then stops by
    /// itself). Wait for it with `status().wait_for(|s| s.final_reason.is_some())`.
    pub fn final_reason(&self) -> Option<FinalReason> {
        self.status.borrow().final_reason
    }

    /// Wait until the agent stops by itself, without asking it to: after a final
    /// refusal ([`AgentError::Final`]) or for an unusable configuration. `Ok` if it was
    /// stopped some other way (the task was aborted).
    pub async fn wait(self) -> Result<(), AgentError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Ok(()),
        }
    }

    /// Stop at once: every tunnel and connection is dropped without grace.
    pub fn abort(self) {
        self.kill.cancel();
        self.stop.cancel();
        self.task.abort();
    }
}

/// One warning at start when any host URL is cleartext (`grpc://`, `ws://`), loopback
/// included: the token goes out in the clear on every connection.
fn warn_cleartext(config: &AgentConfig) {
    let cleartext: Vec<String> =
        config.hosts.iter().filter(|h| h.is_cleartext()).map(ToString::to_string).collect();
    if cleartext.is_empty() {
        return;
    }
    let hosts = cleartext.join(",");
    if config.hosts.iter().any(|h| h.is_cleartext() && !h.is_loopback()) {
        warn!(
            %hosts,
            "cleartext host URL allowed by --insecure: the agent token and the tunnels cross the \
             network unencrypted; use grpcs:// or wss://"
        );
    } else {
        warn!(%hosts, "cleartext host URL: the agent token and the tunnels travel unencrypted (loopback only)");
    }
}

async fn run_inner(
    config: AgentConfig,
    stop: CancellationToken,
    kill: CancellationToken,
    status: watch::Sender<AgentStatus>,
) -> Result<(), AgentError> {
    // Its own token: a final refusal stops the agent as the caller's stop would.
    let stop = stop.child_token();
    let prepared = config.validate().map_err(AgentError::from).and_then(|()| {
        let transports = Transport::for_hosts(&config)?;
        let shared = Shared::new(&config, status.clone(), kill, stop.clone())?;
        Ok((transports, shared))
    });
    let (transports, shared) = match prepared {
        Ok(p) => p,
        Err(e) => {
            status.send_modify(|s| {
                s.state = ConnState::Stopped;
                s.last_error = Some(e.to_string());
            });
            return Err(e);
        }
    };
    warn_cleartext(&config);
    shared.set_status(|s| {
        s.connections = (0..config.connections)
            .map(|i| ConnectionStatus::new(i, config.hosts[i % config.hosts.len()].clone()))
            .collect();
    });
    info!(
        hosts = ?config.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
        connections = config.connections,
        replica_id = %config.replica_id,
        services = ?config.services.iter().map(|s| s.name()).collect::<Vec<_>>(),
        min_idle = config.min_idle,
        max_streams = config.max_streams,
        "burrow-agent {} starting",
        env!("CARGO_PKG_VERSION"),
    );
    log_token_kind(&config);

    let slots: Vec<Arc<Slot>> =
        (0..config.connections).map(|i| Slot::new(i, shared.clone(), &config)).collect();
    let connections = join_all(slots.iter().map(|slot| {
        connection::run(slot.clone(), &config, &transports, &stop).instrument(slot.span().clone())
    }));
    let work = async {
        if let Some(hook) = &config.work_hook {
            work::run(&shared, hook).instrument(tracing::info_span!("work")).await;
        }
    };
    tokio::join!(connections, work);

    // Graceful stop: nothing new, parked tunnels are already cancelled with their
    // sessions; active ones get the grace period.
    let refusal = shared.final_refusal();
    let grace =
        if refusal.is_some() { config.shutdown_grace.min(FINAL_GRACE) } else { config.shutdown_grace };
    shared.begin_stop();
    shared.tracker.close();
    let active = shared.tracker.len();
    if active > 0 {
        info!(tunnels = active, ?grace, "waiting for active tunnels to finish");
    }
    if timeout(grace, shared.tracker.wait()).await.is_err() {
        warn!(tunnels = shared.tracker.len(), "grace period over; resetting the remaining tunnels");
        shared.kill.cancel();
        let _ = timeout(KILL_WAIT, shared.tracker.wait()).await;
    }
    shared.set_status(|s| {
        for c in &mut s.connections {
            c.state = ConnState::Stopped;
        }
        s.state = ConnState::Stopped;
    });
    info!("burrow-agent stopped");
    match refusal {
        Some((reason, message)) => Err(AgentError::Final { reason, message }),
        None => Ok(()),
    }
}

/// Say whether the token will be renewed, and warn when a workload token cannot be read
/// (it then works until it expires, and the agent exits).
fn log_token_kind(config: &AgentConfig) {
    let token = config.token.expose();
    if !token::is_workload_token(token) {
        return;
    }
    match token::Lifetime::of(token) {
        Some(lifetime) => {
            let s = lifetime.schedule_at(token::unix_now_ms());
            info!(expires_in = ?s.expires_in, renew_in = ?s.renew_in, "workload token: each connection renews it before it expires");
        }
        None => warn!("the agent token looks like a workload token (bwt1.) but its claims cannot be read; it will not be renewed"),
    }
}
