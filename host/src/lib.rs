//! Burrow host: accepts agents on one port (gRPC or gRPC-in-WebSocket, cleartext or TLS),
//! parks their reverse tunnels, and routes users' HTTP(S) requests through them.
//!
//! The binary is a thin shell around [`run`]; tests drive [`run`] with listeners bound
//! to `127.0.0.1:0`.
//!
//! # Layout
//! This crate is the wiring; each concern is its own crate under `host/`, re-exported here
//! under the module name it had before the split, so `burrow_host::cluster::…` still works.
//! - this file: [`run`] assembles the core, the cluster, the plugins and the servers from a
//!   [`Config`] and [`Listeners`], and shuts them down in order; [`ControlRequest`] is what
//!   the binary (SIGHUP) may ask of a running host.
//! - [`config`]: `host.toml`, every table composed, with `validate()`; [`check`]: what
//!   `check-config` adds to it (every plugin loaded as `run` would, errors by line).
//! - `main.rs`: the CLI (`run`, `check-config`, `plugin check`, `demo`).
//! - [`core`] (`host/core`): what every ingress uses, protocol-neutral: admission (workload
//!   plugins, ended workloads, authorizer) and the one `Dialer` (local tunnels; the cluster
//!   wraps it), the tunnel registry and tunnel I/O, agent sessions, drain state.
//! - [`ingress`] (`host/ingress`): users' HTTP/1.1 and h2, WebSocket and other upgrades; a
//!   client of `core`.
//! - [`agent_server`] (`host/agent-port`): the agent port (sniffing, gRPC and WebSocket
//!   transports, [`ratelimit`], max connection age, workload expiry).
//! - [`cluster`] (`host/cluster`): membership, the cluster dialer, the replica API, routing
//!   policy; its `store` is the Redis crate (`host/redis`).
//! - [`plugins`] (`host/plugins`): the WebAssembly plugin platform.
//! - [`admin`] (`host/admin`): health, readiness, metrics and the plugin API.
//! - [`metrics`], [`tls`], [`time`] (`host/metrics`, `host/tls`, `host/time`): shared leaves.
//! - The quickstart is crate `burrow-demo` (`host/demo`); `main.rs` hands it [`run`].

pub use burrow_host_admin as admin;
pub use burrow_host_agent_port as agent_server;
pub use burrow_host_agent_port::ratelimit;
pub use burrow_host_cluster as cluster;
pub use burrow_host_control as control_api;
pub mod check;
pub mod config;
pub mod workload_cli;
pub use burrow_host_core as core;
pub use burrow_host_ingress as ingress;
pub use burrow_host_metrics as metrics;
pub use burrow_host_plugins as plugins;
pub use burrow_host_ssh as ssh;
pub use burrow_host_time as time;
pub use burrow_host_tls as tls;
pub use burrow_host_workloads as workloads;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::core::context::{HostContext, HostCore};
use crate::core::registry::LocalRegistry;
pub use config::Config;

/// The host's sockets, bound by the caller (so tests can bind port 0).
pub struct Listeners {
    /// Where agents connect.
    pub agents: TcpListener,
    /// Where users connect.
    pub ingress: TcpListener,
    /// Health, readiness and metrics; `None` serves no admin port.
    pub admin: Option<TcpListener>,
    /// The private replica-to-replica API; required in cluster mode.
    pub cluster: Option<TcpListener>,
    /// Users' SSH clients; required when the config has an `[ssh]` table.
    pub ssh: Option<TcpListener>,
    /// The control API; required when the config has a `[control]` table.
    pub control: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses named in the config.
    pub async fn bind(config: &Config) -> Result<Self, HostError> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            listen(addr).map_err(|source| HostError::Bind { what, addr, source })
        };
        Ok(Self {
            agents: bind(config.agents.listen, "agents.listen").await?,
            ingress: bind(config.ingress.listen, "ingress.listen").await?,
            admin: match config.admin.enabled {
                true => Some(bind(config.admin.listen, "admin.listen").await?),
                false => None,
            },
            cluster: match &config.cluster {
                Some(c) => Some(bind(c.listen, "cluster.listen").await?),
                None => None,
            },
            ssh: match &config.ssh {
                Some(s) => Some(bind(s.listen, "ssh.listen").await?),
                None => None,
            },
            control: match &config.control {
                Some(c) => Some(bind(c.listen, "control.listen").await?),
                None => None,
            },
        })
    }
}

/// The host could not start or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] plugins::PluginError),
    /// The agent port failed.
    #[error(transparent)]
    AgentServer(#[from] agent_server::AgentServerError),
    /// The ingress failed.
    #[error(transparent)]
    Ingress(#[from] ingress::IngressError),
    /// Cluster mode could not start or its private API failed.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// The SSH ingress could not start (host key) or failed.
    #[error(transparent)]
    Ssh(#[from] ssh::SshError),
    /// The control API failed.
    #[error(transparent)]
    Control(#[from] control_api::ControlError),
    /// A server task panicked.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Requests a running host accepts from its embedder (the binary sends them on SIGHUP).
#[derive(Debug)]
pub enum ControlRequest {
    /// Apply a new `[plugins]` table: changed slots are rebuilt, unchanged ones reloaded
    /// from their files. The answer says what happened.
    ReloadPlugins(
        Box<plugins::PluginsConfig>,
        Option<tokio::sync::oneshot::Sender<Result<Vec<plugins::ReloadOutcome>, plugins::PluginError>>>,
    ),
}

/// The sending side of a host's control channel.
pub type ControlSender = tokio::sync::mpsc::Sender<ControlRequest>;

/// A control channel for [`run_with_control`].
pub fn control_channel() -> (ControlSender, tokio::sync::mpsc::Receiver<ControlRequest>) {
    tokio::sync::mpsc::channel(8)
}

/// Runs a host until `shutdown` completes, then drains gracefully (`[shutdown] grace`).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), HostError> {
    let (_keep, control) = control_channel();
    run_with_control(config, listeners, shutdown, control).await
}

/// On SIGHUP, re-reads the config file and applies its `[plugins]` table (what
/// `burrow-host run` does; an invalid file is logged and changes nothing).
#[cfg(unix)]
pub fn reload_on_sighup(path: std::path::PathBuf, control: ControlSender) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; plugin reloads only through the admin API");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!(config = %path.display(), "SIGHUP: reloading the plugin configuration");
            match Config::from_file(&path) {
                Ok(config) => {
                    let _ = control.send(ControlRequest::ReloadPlugins(Box::new(config.plugins), None)).await;
                }
                Err(e) => tracing::error!("SIGHUP: the config file is invalid, nothing reloaded: {e}"),
            }
        }
    });
}

/// [`run`], taking [`ControlRequest`]s (plugin reloads) while it runs.
pub async fn run_with_control(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
    mut control: tokio::sync::mpsc::Receiver<ControlRequest>,
) -> Result<(), HostError> {
    config.validate()?;
    let replica_id = config.replica_id();
    let metrics = Arc::new(metrics::Metrics::new());
    let cluster = match (&config.cluster, &listeners.cluster) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(HostError::Task("cluster mode needs a listener for the replica API".into()))
        }
        (Some(cc), Some(listener)) => {
            let advertise = match &cc.advertise {
                Some(a) => a.clone(),
                None => {
                    let addr = listener.local_addr().map_err(|e| HostError::Task(e.to_string()))?;
                    if addr.ip().is_unspecified() {
                        return Err(config::ConfigError::Invalid(
                            "cluster.advertise: required when cluster.listen is a wildcard address".into(),
                        )
                        .into());
                    }
                    addr.to_string()
                }
            };
            Some(cluster::Cluster::new(cc.clone(), replica_id.clone(), advertise, metrics.clone())?)
        }
    };
    let mut plugin_options = plugins::PluginsOptions::default().with_metrics(metrics.plugins.clone());
    if let Some(c) = &cluster {
        plugin_options = plugin_options.with_redis_kv(c.store().clone());
    }
    let plugins = plugins::Plugins::load(&config.plugins, plugin_options).await?;
    let core = HostCore::new(
        plugins.clone(),
        Arc::new(LocalRegistry::new()),
        replica_id.clone(),
        config.agents.dial_answer_timeout,
        metrics,
    );
    // The workload lifecycle: records in Redis when clustered, else in the state file.
    let mut core = core;
    let lifecycle = match &config.control {
        None => None,
        Some(cc) => {
            let keys = control_api::config::load_keys(cc, cluster.is_none())
                .map_err(|e| HostError::Config(config::ConfigError::Invalid(e)))?;
            let store = match &cluster {
                Some(c) => workloads::Store::Redis(c.store().clone()),
                None => workloads::Store::File(Arc::new(
                    workloads::FileStore::open(cc.state_file.as_deref()).map_err(|e| {
                        HostError::Config(config::ConfigError::Invalid(format!("control.state_file: {e}")))
                    })?,
                )),
            };
            let settings = workloads::LifecycleSettings {
                token_ttl: cc.token_ttl,
                max_token_ttl: cc.max_token_ttl,
                ended_retention: cc.ended_retention,
                resync: cc.resync,
            };
            let lifecycle = workloads::Lifecycle::new(
                settings,
                keys,
                store,
                core.sessions.clone(),
                core.ended.clone(),
                replica_id.clone(),
                core.metrics.clone(),
            );
            core.sessions.observe(Arc::new(workloads::PresenceObserver(lifecycle.clone())));
            Some(lifecycle)
        }
    };
    core.directory = lifecycle.clone().map(|l| l as Arc<dyn core::admission::WorkloadDirectory>);
    let ctx = Arc::new(match &cluster {
        None => HostContext::local(core),
        // The cluster wraps the core rather than the core calling into it: it hears of
        // agents through the sessions' presence events, dials by wrapping the local
        // dialer, and makes the host unready while Redis is unreachable.
        Some(c) => {
            c.attach(&core.sessions);
            core.remote_labels = Some(c.clone());
            let dialer = Arc::new(cluster::dialer::ClusterDialer::new(&core, c.clone()));
            HostContext::new(core, dialer, vec![c.clone()])
        }
    });
    let token = ctx.shutdown.clone();
    let grace = config.shutdown.grace;
    tracing::info!(
        %replica_id,
        agents = %addr_of(Some(&listeners.agents)),
        ingress = %addr_of(Some(&listeners.ingress)),
        admin = %addr_of(listeners.admin.as_ref()),
        cluster = %cluster.as_ref().map(|c| c.advertise().to_owned()).unwrap_or_else(|| "off".into()),
        "burrow host running"
    );

    // Background work that must outlive the drain: cluster bookkeeping (until we leave)
    // and the admin port (readiness must read "draining" while we drain).
    let background = CancellationToken::new();
    let cluster_task = cluster.as_ref().map(|c| c.start(background.clone()));
    let admin_task = listeners.admin.map(|l| {
        tokio::spawn(admin::serve(l, ctx.clone(), Arc::new(config.admin.clone()), background.clone()))
    });
    let watcher_task = plugins.spawn_watcher(background.clone());
    let expiry_task =
        tokio::spawn(agent_server::expiry::run(ctx.clone(), config.plugins.expiry_check, background.clone()));
    let lifecycle_task = lifecycle.clone().map(|l| tokio::spawn(l.run(background.clone())));
    let control_plugins = plugins.clone();
    let control_ctx = ctx.clone();
    let control_task = tokio::spawn(async move {
        while let Some(request) = control.recv().await {
            match request {
                ControlRequest::ReloadPlugins(cfg, reply) => {
                    let result = control_plugins.apply_config(*cfg).await;
                    match &result {
                        Ok(outcomes) => {
                            tracing::info!(?outcomes, "plugin configuration reloaded");
                            // A swapped authorizer may no longer accept some agents: their
                            // traffic stops now, not at their next connect.
                            agent_server::expiry::recheck_agents(&control_ctx).await;
                        }
                        Err(err) => tracing::error!("plugin configuration reload refused: {err}"),
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
            }
        }
    });

    let mut agents = tokio::spawn(agent_server::serve(
        listeners.agents,
        Arc::new(config.agents.clone()),
        ctx.clone(),
        cluster.as_ref().map(|c| c.store().clone()),
        lifecycle.clone(),
        token.clone(),
        grace,
    ));
    let sign_in = match &config.sign_in {
        Some(c) => {
            // In a cluster, a logout (or a redeemed ticket) on one replica counts on all.
            let shared = cluster.as_ref().map(|c| {
                Arc::new(SharedSignInMarks(c.store().clone())) as Arc<dyn burrow_host_signin::SharedMarks>
            });
            let sign_in = burrow_host_signin::SignIn::new(c.clone())
                .map_err(|e| HostError::Task(format!("sign_in: {e}")))?
                .with_shared(shared);
            Some(Arc::new(sign_in))
        }
        None => None,
    };
    let mut ingress = tokio::spawn(ingress::serve(
        listeners.ingress,
        Arc::new(config.ingress.clone()),
        ctx.clone(),
        token.clone(),
        grace,
        sign_in,
    ));
    let mut ssh_server = match (&config.ssh, listeners.ssh) {
        (Some(c), Some(l)) => {
            tokio::spawn(ssh::serve(ctx.clone(), Arc::new(c.clone()), l, token.clone(), grace))
        }
        (Some(_), None) => {
            return Err(HostError::Task("an [ssh] table needs a listener for the SSH port".into()));
        }
        _ => tokio::spawn(async { std::future::pending::<Result<(), ssh::SshError>>().await }),
    };
    let mut control_api_task = match (&config.control, listeners.control, &lifecycle) {
        (Some(c), Some(l), Some(lifecycle)) => tokio::spawn(control_api::serve(
            l,
            Arc::new(c.clone()),
            lifecycle.clone(),
            plugins.clone(),
            token.clone(),
        )),
        (Some(_), None, _) => {
            return Err(HostError::Task("a [control] table needs a listener for the control API".into()));
        }
        _ => tokio::spawn(async { std::future::pending::<Result<(), control_api::ControlError>>().await }),
    };
    let mut replica_api = match (&cluster, listeners.cluster) {
        (Some(c), Some(l)) => {
            tokio::spawn(cluster::forward::serve(l, ctx.clone(), c.clone(), token.clone(), grace))
        }
        _ => tokio::spawn(async { std::future::pending::<Result<(), cluster::ClusterError>>().await }),
    };

    let stop_background = |cluster_task: Option<tokio::task::JoinHandle<()>>| {
        background.cancel();
        if let Some(t) = cluster_task {
            t.abort();
        }
        if let Some(t) = &admin_task {
            t.abort();
        }
        if let Some(t) = &watcher_task {
            t.abort();
        }
        expiry_task.abort();
        control_task.abort();
        if let Some(t) = &lifecycle_task {
            t.abort();
        }
    };

    let early = tokio::select! {
        _ = shutdown => None,
        r = &mut agents => Some(("agent port", r.map(|r| r.map_err(HostError::from)))),
        r = &mut ingress => Some(("ingress", r.map(|r| r.map_err(HostError::from)))),
        r = &mut replica_api => Some(("replica API", r.map(|r| r.map_err(HostError::from)))),
        r = &mut ssh_server => Some(("SSH ingress", r.map(|r| r.map_err(HostError::from)))),
        r = &mut control_api_task => Some(("control API", r.map(|r| r.map_err(HostError::from)))),
    };
    if let Some((what, result)) = early {
        token.cancel();
        tracing::error!(what, "a server stopped unexpectedly; shutting down");
        agents.abort();
        ingress.abort();
        replica_api.abort();
        ssh_server.abort();
        control_api_task.abort();
        stop_background(cluster_task);
        if let Some(c) = &cluster {
            c.leave().await;
        }
        return match result {
            Ok(Ok(())) => Err(HostError::Task(format!("{what} stopped unexpectedly"))),
            Ok(Err(e)) => Err(e),
            Err(join) => Err(HostError::Task(join.to_string())),
        };
    }

    // Drain: readiness turns false, other replicas stop choosing this one, agents are told
    // to go away (their other connections carry new work), and what is in flight gets
    // `grace` to finish.
    tracing::info!(?grace, "draining");
    ctx.begin_drain();
    if let Some(c) = &cluster {
        c.drain().await;
    }
    token.cancel();
    if config.ssh.is_none() {
        // The placeholder task never ends on its own.
        ssh_server.abort();
    }
    let (a, i, s) = tokio::join!(agents, ingress, ssh_server);
    replica_api.abort();
    let _ = (&mut replica_api).await;
    // Aborted, then awaited: the listener is closed when the task is dropped, so a host
    // started right after on the same port (a restart) can bind it.
    control_api_task.abort();
    let _ = (&mut control_api_task).await;
    // Background work first, then the records: a heartbeat or registration that ran after
    // `leave` would put this replica back in Redis as a phantom until its TTL (`leave`
    // also fences them out itself, for callers that keep the background running).
    stop_background(cluster_task);
    if let Some(c) = &cluster {
        c.leave().await;
    }
    a.map_err(|e| HostError::Task(e.to_string()))??;
    i.map_err(|e| HostError::Task(e.to_string()))??;
    if config.ssh.is_some() {
        s.map_err(|e| HostError::Task(e.to_string()))??;
    }
    tracing::info!("burrow host stopped");
    Ok(())
}

/// Backlog of every listening port. tokio's `TcpListener::bind` asks for 1024; when a
/// replica restarts, its agents (10,000 in the agents bench) redial at once, the queue
/// overflowed (tens of thousands of `ListenOverflows`, SYN cookies) and agents waited for
/// SYN retransmits (1 s, 3 s). The kernel caps it at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 65_535;

/// Binds `addr` with SO_REUSEADDR (as `TcpListener::bind` does, so a restarted host
/// rebinds at once) and listens with [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn addr_of(listener: Option<&TcpListener>) -> String {
    listener.and_then(|l| l.local_addr().ok()).map_or_else(|| "off".into(), |a| a.to_string())
}

/// The sign-in's shared marks in the cluster's Redis.
struct SharedSignInMarks(Arc<cluster::store::Store>);

impl burrow_host_signin::SharedMarks for SharedSignInMarks {
    fn mark_once<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        ttl: std::time::Duration,
    ) -> burrow_host_signin::MarkFuture<'a, bool> {
        Box::pin(async move { self.0.mark_once(namespace, key, ttl).await.map_err(|e| e.to_string()) })
    }

    fn marked<'a>(&'a self, namespace: &'a str, key: &'a str) -> burrow_host_signin::MarkFuture<'a, bool> {
        Box::pin(async move { self.0.marked(namespace, key).await.map_err(|e| e.to_string()) })
    }
}
