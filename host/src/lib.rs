//! Burrow host: accepts agents on one port (gRPC or gRPC-in-WebSocket, cleartext or TLS),
//! parks their reverse tunnels, and routes users' HTTP(S) requests through them.
//!
//! The binary is a thin shell around [`run`]; tests drive [`run`] with listeners bound
//! to `127.0.0.1:0`.

pub mod agent_server;
pub mod config;
pub mod context;
pub mod demo;
pub mod ingress;
pub mod plugins;
pub mod registry;
pub mod tls;
pub mod tunnel_io;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use context::HostContext;
use registry::LocalRegistry;

/// The host's sockets, bound by the caller (so tests can bind port 0).
pub struct Listeners {
    /// Where agents connect.
    pub agents: TcpListener,
    /// Where users connect.
    pub ingress: TcpListener,
}

impl Listeners {
    /// Binds the addresses named in the config.
    pub async fn bind(config: &Config) -> Result<Self, HostError> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr).await.map_err(|source| HostError::Bind { what, addr, source })
        };
        Ok(Self {
            agents: bind(config.agents.listen, "agents.listen").await?,
            ingress: bind(config.ingress.listen, "ingress.listen").await?,
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
    /// A server task panicked.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Runs a host until `shutdown` completes, then drains gracefully (`[shutdown] grace`).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), HostError> {
    config.validate()?;
    // Compiling components is CPU-heavy; keep it off the async workers.
    let plugin_config = config.plugins.clone();
    let plugins = tokio::task::spawn_blocking(move || plugins::Plugins::load(&plugin_config))
        .await
        .map_err(|e| HostError::Task(e.to_string()))??;

    let token = CancellationToken::new();
    let replica_id = config.replica_id();
    let ctx = Arc::new(HostContext {
        plugins: Arc::new(plugins),
        registry: Arc::new(LocalRegistry::new()),
        replica_id: replica_id.clone(),
        sessions: RwLock::new(HashMap::new()),
        dial_answer_timeout: config.agents.dial_answer_timeout,
        shutdown: token.clone(),
    });
    let grace = config.shutdown.grace;
    tracing::info!(
        %replica_id,
        agents = %listeners.agents.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        ingress = %listeners.ingress.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "burrow host running"
    );

    let mut agents = tokio::spawn(agent_server::serve(
        listeners.agents,
        Arc::new(config.agents.clone()),
        ctx.clone(),
        token.clone(),
        grace,
    ));
    let mut ingress = tokio::spawn(ingress::serve(
        listeners.ingress,
        Arc::new(config.ingress.clone()),
        ctx.clone(),
        token.clone(),
        grace,
    ));

    let early = tokio::select! {
        _ = shutdown => None,
        r = &mut agents => Some(("agent port", r.map(|r| r.map_err(HostError::from)))),
        r = &mut ingress => Some(("ingress", r.map(|r| r.map_err(HostError::from)))),
    };
    token.cancel();
    if let Some((what, result)) = early {
        tracing::error!(what, "a server stopped unexpectedly; shutting down");
        agents.abort();
        ingress.abort();
        return match result {
            Ok(Ok(())) => Err(HostError::Task(format!("{what} stopped unexpectedly"))),
            Ok(Err(e)) => Err(e),
            Err(join) => Err(HostError::Task(join.to_string())),
        };
    }
    tracing::info!(?grace, "shutting down");
    let (a, i) = tokio::join!(agents, ingress);
    a.map_err(|e| HostError::Task(e.to_string()))??;
    i.map_err(|e| HostError::Task(e.to_string()))??;
    tracing::info!("burrow host stopped");
    Ok(())
}
