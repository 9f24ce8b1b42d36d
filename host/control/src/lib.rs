//! The control API: a control plane (GitLab's Rails in the seed design) creates
//! workloads, gets their agents' short-lived tokens, queues work for agents, watches it
//! and ends workloads. gRPC on its own listener (`[control]`), never on a port agents or
//! users reach; every call carries a control token (HMAC-SHA256 with the shared secret,
//! seconds long), as KAS's API port does.
//!
//! # Layout
//! - `config.rs`: the `[control]` table, the secret and the agent token keys.
//! - `service.rs`: the `WorkloadControl` service over [`Lifecycle`].
//! - `client.rs`: a client that mints its own control tokens (`burrow-host workload ...`).

pub mod client;
pub mod config;
mod service;

use std::sync::Arc;
use std::time::Duration;

use burrow_host_cluster::token::TokenKey;
use burrow_host_plugins::Plugins;
use burrow_host_workloads::Lifecycle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::ControlConfig;
pub use service::{workload_pb, AUDIENCE, DOMAIN};

/// Longest life of a control token: they are minted per call.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// Largest request the control API reads: a work item and its envelope.
const MAX_REQUEST: usize = burrow_proto::MAX_WORK_PAYLOAD + 64 * 1024;

/// The control API failed to serve.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid control config: {0}")]
    Config(String),
    #[error("control API server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The control token key for `config`'s secret.
pub fn token_key(config: &ControlConfig) -> Result<TokenKey, ControlError> {
    let secret = config.load_secret().map_err(ControlError::Config)?;
    Ok(TokenKey::with_domain(DOMAIN, &secret, TOKEN_LIFETIME))
}

/// Serves the control API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ControlConfig>,
    lifecycle: Arc<Lifecycle>,
    plugins: Arc<Plugins>,
    shutdown: CancellationToken,
) -> Result<(), ControlError> {
    let key = token_key(&config)?;
    let service = burrow_proto::control_pb::workload_control_server::WorkloadControlServer::new(
        service::ControlService { lifecycle, plugins, key },
    )
    .max_decoding_message_size(MAX_REQUEST);
    // Small answers must leave at once: without TCP_NODELAY a reply's trailers wait ~40 ms
    // for the client's delayed ACK (Nagle), which the lifecycle bench showed on ListWork.
    // Counted from accept and closed unless the HTTP/2 preface arrives in time: tonic alone
    // would hold a connection that never speaks for ever. The accept loop sets TCP_NODELAY.
    let limits = burrow_host_core::limits::ConnectionLimits::new(config.max_connections, 0);
    let incoming = burrow_host_core::limits::accept_h2(
        listener,
        limits,
        config.handshake_timeout,
        shutdown.clone(),
        "control API",
    );
    tracing::info!("control API listening");
    tonic::transport::Server::builder()
        // A control plane's call is short; a peer that sends nothing is cut.
        .timeout(Duration::from_secs(30))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .concurrency_limit_per_connection(64)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}
