//! Which agents are connected and which of their tunnels are parked, ready to claim.
//!
//! A parked tunnel is one `Tunnel` RPC the agent opened and the host has not used yet.
//! Claiming pops one in O(1). A claim that finds none leaves a waiter that the next
//! tunnel to register is handed to directly, so a request for an agent that is just
//! connecting is served the moment its first tunnel arrives: no polling. The registry
//! is striped by agent id so unrelated agents never contend on one lock.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_proto::pb;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::{Status, Streaming};

/// The sending half of a tunnel's response stream (host → agent frames).
pub type HostFrameSender = mpsc::Sender<Result<pb::HostFrame, Status>>;

/// What the host knows about one agent connection (one `Control` session).
#[derive(Debug)]
pub struct Session {
    /// Agent identity from the authorizer.
    pub agent_id: String,
    /// The agent process's replica id (several may share one identity).
    pub agent_replica_id: String,
    /// Opaque id presented on every tunnel of this session.
    pub session_id: String,
    /// Peer address of the agent connection.
    pub remote_addr: String,
    /// SHA-256 of the session's token: tunnels must present the same token.
    pub token_sha256: [u8; 32],
}

/// A parked tunnel RPC.
pub struct IdleTunnel {
    /// Frames from the agent.
    pub inbound: Streaming<pb::AgentFrame>,
    /// Frames to the agent.
    pub outbound: HostFrameSender,
    /// The session the tunnel belongs to.
    pub session: Arc<Session>,
}

impl IdleTunnel {
    /// The RPC has ended (agent cancelled it, or its connection went away).
    pub fn is_closed(&self) -> bool {
        self.outbound.is_closed()
    }
}

impl std::fmt::Debug for IdleTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleTunnel").field("agent_id", &self.session.agent_id).finish_non_exhaustive()
    }
}

/// Why a claim failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// No tunnel of the agent became available within the wait.
    #[error("no tunnel of agent {agent_id:?} became available within {waited:?}")]
    Timeout { agent_id: String, waited: Duration },
    /// The registry is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
}

/// Per-registry numbers for logs, health and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Agents with at least one parked tunnel.
    pub agents: usize,
    /// Parked tunnels over all agents (may include ones closed since the last sweep).
    pub idle_tunnels: usize,
    /// Claims waiting for a tunnel.
    pub waiters: usize,
}

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where tunnels are parked and claimed. The in-memory [`LocalRegistry`] is the
/// single-process default; a cluster registry wraps it and adds cross-replica lookup.
pub trait TunnelRegistry: Send + Sync + 'static {
    /// Parks a tunnel, or hands it straight to the oldest waiting claim.
    fn register(&self, tunnel: IdleTunnel);
    /// Takes a parked tunnel of `agent_id`, waiting up to `wait` for one to appear.
    fn claim<'a>(
        &'a self,
        agent_id: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, Result<IdleTunnel, ClaimError>>;
    /// Drops every parked tunnel and fails every waiter; later claims fail at once.
    fn close(&self);
    /// Drops parked tunnels whose RPC has ended.
    fn sweep(&self);
    /// Current numbers.
    fn stats(&self) -> RegistryStats;
}

#[derive(Default)]
struct AgentEntry {
    idle: VecDeque<IdleTunnel>,
    waiters: VecDeque<oneshot::Sender<IdleTunnel>>,
}

impl AgentEntry {
    fn is_empty(&self) -> bool {
        self.idle.is_empty() && self.waiters.is_empty()
    }
}

#[derive(Default)]
struct Stripe {
    agents: HashMap<String, AgentEntry>,
    closed: bool,
}

const STRIPES: usize = 64;

/// The in-memory registry.
pub struct LocalRegistry {
    stripes: Box<[Mutex<Stripe>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for LocalRegistry {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(Stripe::default())).collect(),
            hasher: Default::default(),
        }
    }
}

impl LocalRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn stripe(&self, agent_id: &str) -> std::sync::MutexGuard<'_, Stripe> {
        let i = (self.hasher.hash_one(agent_id) as usize) % self.stripes.len();
        // A panic while holding a stripe lock cannot leave an entry half-updated in a way
        // that matters (every mutation is a single push/pop), so poisoning is ignored.
        self.stripes[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pops a live parked tunnel, or parks a waiter and returns its receiver.
    fn take_or_wait(
        &self,
        agent_id: &str,
    ) -> Result<Result<IdleTunnel, oneshot::Receiver<IdleTunnel>>, ClaimError> {
        let mut stripe = self.stripe(agent_id);
        if stripe.closed {
            return Err(ClaimError::ShuttingDown);
        }
        let entry = stripe.agents.entry(agent_id.to_owned()).or_default();
        while let Some(tunnel) = entry.idle.pop_front() {
            if !tunnel.is_closed() {
                if entry.is_empty() {
                    stripe.agents.remove(agent_id);
                }
                return Ok(Ok(tunnel));
            }
        }
        let (tx, rx) = oneshot::channel();
        entry.waiters.push_back(tx);
        Ok(Err(rx))
    }

    fn forget_dead_waiters(&self, agent_id: &str) {
        let mut stripe = self.stripe(agent_id);
        if let Some(entry) = stripe.agents.get_mut(agent_id) {
            entry.waiters.retain(|w| !w.is_closed());
            if entry.is_empty() {
                stripe.agents.remove(agent_id);
            }
        }
    }
}

impl TunnelRegistry for LocalRegistry {
    fn register(&self, mut tunnel: IdleTunnel) {
        let agent_id = tunnel.session.agent_id.clone();
        let mut stripe = self.stripe(&agent_id);
        if stripe.closed {
            return; // dropping the tunnel ends its RPC; the agent reconnects elsewhere
        }
        let entry = stripe.agents.entry(agent_id).or_default();
        while let Some(waiter) = entry.waiters.pop_front() {
            match waiter.send(tunnel) {
                Ok(()) => return,
                Err(back) => tunnel = back, // that claim gave up; try the next
            }
        }
        entry.idle.push_back(tunnel);
    }

    fn claim<'a>(
        &'a self,
        agent_id: &'a str,
        wait: Duration,
    ) -> BoxFuture<'a, Result<IdleTunnel, ClaimError>> {
        Box::pin(async move {
            let deadline = Instant::now() + wait;
            loop {
                let mut rx = match self.take_or_wait(agent_id)? {
                    Ok(tunnel) => return Ok(tunnel),
                    Err(rx) => rx,
                };
                match tokio::time::timeout_at(deadline, &mut rx).await {
                    Ok(Ok(tunnel)) if !tunnel.is_closed() => return Ok(tunnel),
                    // Closed since it was parked: look again.
                    Ok(Ok(_dead)) => continue,
                    // Sender dropped: the registry closed.
                    Ok(Err(_)) => return Err(ClaimError::ShuttingDown),
                    Err(_elapsed) => {
                        // A tunnel may have been handed over just as the wait ran out: keep it
                        // rather than drop it.
                        rx.close();
                        if let Ok(tunnel) = rx.try_recv() {
                            if !tunnel.is_closed() {
                                return Ok(tunnel);
                            }
                        }
                        self.forget_dead_waiters(agent_id);
                        return Err(ClaimError::Timeout { agent_id: agent_id.to_owned(), waited: wait });
                    }
                }
            }
        })
    }

    fn close(&self) {
        for stripe in self.stripes.iter() {
            let mut stripe = stripe.lock().unwrap_or_else(|p| p.into_inner());
            stripe.closed = true;
            stripe.agents.clear();
        }
    }

    fn sweep(&self) {
        for stripe in self.stripes.iter() {
            let mut stripe = stripe.lock().unwrap_or_else(|p| p.into_inner());
            stripe.agents.retain(|_, entry| {
                entry.idle.retain(|t| !t.is_closed());
                entry.waiters.retain(|w| !w.is_closed());
                !entry.is_empty()
            });
        }
    }

    fn stats(&self) -> RegistryStats {
        let mut stats = RegistryStats::default();
        for stripe in self.stripes.iter() {
            let stripe = stripe.lock().unwrap_or_else(|p| p.into_inner());
            for entry in stripe.agents.values() {
                if !entry.idle.is_empty() {
                    stats.agents += 1;
                }
                stats.idle_tunnels += entry.idle.len();
                stats.waiters += entry.waiters.iter().filter(|w| !w.is_closed()).count();
            }
        }
        stats
    }
}
