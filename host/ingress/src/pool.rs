//! Keep-alive HTTP/1.1 connections to workloads, pooled by (agent, service).
//!
//! A connection runs over one agent tunnel, so keeping it saves the tunnel claim, the
//! `Dial` round trip and the workload's TCP connect on the next request to the same
//! service. The pool is keyed directly by the route the admission returned; the tunnel
//! is opened through the host's one [`burrow_host_core::dial::Dialer`] with the request's id
//! and session key in hand, so nothing has to be smuggled through a URI or a task-local.
//!
//! A connection goes back to the pool once its response has been read to the end
//! (hyper's `SendRequest::ready`), and leaves it after `idle_connection_timeout` unused,
//! which closes it and frees its tunnel on the agent, or as soon as the agent connection
//! its tunnel rides is retired (the host sent GoAway: the connection may be cut before
//! the next request would finish).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use burrow_host_core::context::HostContext;
use burrow_host_core::dial::{DialRequest, OpenError};
use burrow_host_core::registry::Session;
use burrow_host_core::tunnel_io::TunnelStream;
use burrow_host_plugins::types::Target;
use burrow_proto::pb::DialKind;

/// Why a request could not be carried to the workload.
#[derive(Debug)]
pub enum SendError {
    /// No tunnel could be opened (504/502/503 by the [`OpenError`]).
    Open(OpenError),
    /// The tunnel opened, but the HTTP exchange with the workload failed (502).
    Workload(hyper::Error),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    agent_id: String,
    service: String,
}

impl PoolKey {
    fn of(target: &Target) -> Self {
        Self { agent_id: target.agent_id.clone(), service: target.service.clone() }
    }
}

struct Idle {
    sender: SendRequest<Incoming>,
    since: Instant,
    /// The agent connection the tunnel rides: once it is retired (GoAway) the connection
    /// takes no new request, since the agent connection may be cut under it.
    session: Arc<Session>,
}

/// A workload connection and the agent connection its tunnel rides.
struct Pooled {
    sender: SendRequest<Incoming>,
    session: Arc<Session>,
}

/// Idle keep-alive connections per (agent, service).
pub struct WorkloadPool {
    ctx: Arc<HostContext>,
    stream_wait: Duration,
    max_idle: usize,
    idle_timeout: Duration,
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
}

impl WorkloadPool {
    /// A pool keeping at most `max_idle` idle connections per (agent, service) for at most
    /// `idle_timeout` each; new tunnels are waited for up to `stream_wait`.
    pub fn new(
        ctx: Arc<HostContext>,
        stream_wait: Duration,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Arc<Self> {
        let pool =
            Arc::new(Self { ctx, stream_wait, max_idle, idle_timeout, idle: Mutex::new(HashMap::new()) });
        if max_idle > 0 {
            tokio::spawn(sweep_loop(Arc::downgrade(&pool), idle_timeout));
        }
        pool
    }

    /// Sends `request` (origin-form URI, headers ready) to `target` on a pooled connection
    /// or a new one.
    pub async fn send(
        self: &Arc<Self>,
        target: &Target,
        session_key: &str,
        request_id: &str,
        mut request: Request<Incoming>,
    ) -> Result<Response<Incoming>, SendError> {
        let key = PoolKey::of(target);
        if let Some(mut pooled) = self.checkout(&key) {
            match pooled.sender.try_send_request(request).await {
                Ok(response) => {
                    self.recycle(key, pooled);
                    return Ok(response);
                }
                // The workload closed the kept-alive connection just as it was picked:
                // hyper hands the unsent request back and it goes on a fresh connection.
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Workload(error.into_error())),
                },
            }
        }
        let mut pooled = self.connect(target, session_key, request_id).await?;
        let response = pooled.sender.send_request(request).await.map_err(SendError::Workload)?;
        self.recycle(key, pooled);
        Ok(response)
    }

    /// Opens a tunnel and runs an HTTP/1.1 client connection over it.
    async fn connect(
        &self,
        target: &Target,
        session_key: &str,
        request_id: &str,
    ) -> Result<Pooled, SendError> {
        let stream = self
            .ctx
            // A pooled connection serves whoever comes next, so its Dial names nobody.
            .dial(DialRequest {
                target,
                request_id,
                wait: self.stream_wait,
                session_key,
                kind: DialKind::Tcp,
                principal: "",
            })
            .await
            .map_err(SendError::Open)?;
        let session = stream.session().clone();
        let (sender, connection) = handshake(stream).await.map_err(SendError::Workload)?;
        let id = request_id.to_owned();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(request_id = %id, %error, "workload connection ended with an error");
            }
        });
        Ok(Pooled { sender, session })
    }

    /// The most recently used idle connection of `key` that can take a request now;
    /// closed and expired ones met on the way are dropped.
    fn checkout(&self, key: &PoolKey) -> Option<Pooled> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        let mut found = None;
        while let Some(entry) = list.pop() {
            if entry.sender.is_ready()
                && entry.since.elapsed() < self.idle_timeout
                && !entry.session.is_retired()
            {
                found = Some(Pooled { sender: entry.sender, session: entry.session });
                break;
            }
        }
        if list.is_empty() {
            idle.remove(key);
        }
        found
    }

    /// Returns `sender` to the pool once its response has been read to the end.
    fn recycle(self: &Arc<Self>, key: PoolKey, pooled: Pooled) {
        let Pooled { mut sender, session } = pooled;
        if self.max_idle == 0 || session.is_retired() {
            // Dropped: the connection closes once its response is done.
            return;
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            // An error means the connection closed (the body was abandoned, or the
            // workload said `Connection: close`): nothing to keep.
            if sender.ready().await.is_err() {
                return;
            }
            if let Some(pool) = pool.upgrade() {
                pool.put(key, Pooled { sender, session });
            }
        });
    }

    fn put(&self, key: PoolKey, pooled: Pooled) {
        if pooled.session.is_retired() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(key).or_default();
        // Beyond the limit the connection is dropped, which closes it and its tunnel.
        if list.len() < self.max_idle {
            list.push(Idle { sender: pooled.sender, since: Instant::now(), session: pooled.session });
        }
    }

    /// Drops connections idle for `idle_timeout` or closed by the workload.
    fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain(|entry| {
                !entry.sender.is_closed()
                    && entry.since.elapsed() < self.idle_timeout
                    && !entry.session.is_retired()
            });
            !list.is_empty()
        });
    }
}

/// An HTTP/1.1 client handshake over a tunnel (no bytes are exchanged yet).
pub async fn handshake(
    stream: TunnelStream,
) -> Result<(SendRequest<Incoming>, http1::Connection<TokioIo<TunnelStream>, Incoming>), hyper::Error> {
    http1::Builder::new().handshake::<_, Incoming>(TokioIo::new(stream)).await
}

/// Sweeps often enough that no connection outlives its idle timeout by more than a
/// quarter of it; ends with the pool.
async fn sweep_loop(pool: Weak<WorkloadPool>, idle_timeout: Duration) {
    let period = (idle_timeout / 4).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep(),
            None => return,
        }
    }
}
