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
    /// The minor protocol version the agent announced (`Hello.protocol_minor`); 0 for a
    /// forwarded tunnel's stand-in (the replica holding the agent checks it).
    pub protocol_minor: u32,
    /// The authorizer's identity of the agent; `None` for a forwarded tunnel's stand-in.
    pub identity: Option<Arc<SessionIdentity>>,
    /// Set once the agent was told to leave this connection (GoAway: age, expiry, drain)
    /// or left: tunnels in flight may finish, but nothing new should start on it, such
    /// as another request on a kept-alive workload connection (the connection may be cut
    /// under it).
    pub retired: std::sync::atomic::AtomicBool,
    /// Cancelled when every tunnel of the session must stop, wherever it runs: parked
    /// ones end, and active ones (local byte streams, session streams, forwarded relays)
    /// are reset. Set a grace after the session's end, so an agent that ignores GoAway,
    /// or opened its tunnels on another TCP connection, serves nothing past it.
    pub cut: tokio_util::sync::CancellationToken,
}

impl Session {
    /// Marks the connection as leaving; see [`Session::retired`].
    pub fn retire(&self) {
        self.retired.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether nothing new may start on the session: the connection is leaving, or its
    /// identity is over (its workload ended, or its credential expired and was not
    /// renewed) even if the control loop has not acted on it yet. Every claim asks.
    pub fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Acquire)
            || self.identity.as_ref().is_some_and(|i| {
                i.ended.is_cancelled() || i.valid_until().is_some_and(|until| until <= now_ms())
            })
    }
}

/// Who an agent session serves, and the switch that ends it when its workload ends.
#[derive(Debug)]
pub struct SessionIdentity {
    pub identity: burrow_host_plugins::types::AgentIdentity,
    /// Unix milliseconds.
    pub connected_at: u64,
    /// Cancelled when the workload has ended (the control loop then sends GoAway).
    pub ended: tokio_util::sync::CancellationToken,
    /// Why it ended, set before `ended` is cancelled: the GoAway code and a message for
    /// the agent and the workload's users.
    pub end_reason: std::sync::OnceLock<(pb::GoAwayCode, String)>,
    /// When the session's credential stops being valid (Unix ms, 0: never). Starts as the
    /// identity's `expires_at`; a renewed workload token moves it on.
    pub valid_until: std::sync::atomic::AtomicU64,
    /// When the workload itself ends (Unix ms, 0: not known to the host): past it the
    /// session ends as the workload's, not as an expired token.
    pub workload_ends_at: u64,
    /// SHA-256 of the token a renewal handed out, accepted on this session's tunnels
    /// besides the token it connected with.
    pub renewed_token_sha256: std::sync::Mutex<Option<[u8; 32]>>,
    /// For identities the authorizer gave: what the agent presented and which version of
    /// the agent authenticator accepted it, so a swapped authorizer is asked again.
    pub recheck: std::sync::Mutex<Option<Recheck>>,
}

/// An agent's handshake kept for asking a new authorizer about it. Holds the token:
/// never printed.
pub struct Recheck {
    pub hello: burrow_host_plugins::types::AgentHello,
    /// `sha256/config_sha256` of the authenticator version that accepted it.
    pub accepted_by: String,
}

impl std::fmt::Debug for Recheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recheck").field("accepted_by", &self.accepted_by).finish_non_exhaustive()
    }
}

impl SessionIdentity {
    /// An identity that connected at `connected_at`.
    pub fn new(
        identity: burrow_host_plugins::types::AgentIdentity,
        connected_at: u64,
        workload_ends_at: u64,
    ) -> Self {
        let valid_until = identity.expires_at.unwrap_or(0);
        Self {
            identity,
            connected_at,
            ended: Default::default(),
            end_reason: Default::default(),
            valid_until: valid_until.into(),
            workload_ends_at,
            renewed_token_sha256: Default::default(),
            recheck: Default::default(),
        }
    }

    /// Ends the session because its workload ended: the first reason given is kept.
    pub fn end(&self, code: pb::GoAwayCode, message: impl Into<String>) {
        let _ = self.end_reason.set((code, message.into()));
        self.ended.cancel();
    }

    /// The reason the session ended, or the default one for a workload that ended.
    pub fn reason(&self) -> (pb::GoAwayCode, String) {
        self.end_reason
            .get()
            .cloned()
            .unwrap_or((pb::GoAwayCode::WorkloadEnded, "the workload has ended".into()))
    }

    /// What to tell the workload's users when it ends: "the workload has ended", with the
    /// control plane's reason when it gave one.
    pub fn notice(&self) -> String {
        ended_notice(&self.reason().1)
    }

    /// When the credential stops being valid (Unix ms), if ever.
    pub fn valid_until(&self) -> Option<u64> {
        match self.valid_until.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            at => Some(at),
        }
    }
}

/// "the workload has ended", with `reason` after it unless it says no more than that.
pub fn ended_notice(reason: &str) -> String {
    const PLAIN: &str = "the workload has ended";
    let reason = reason.trim();
    if reason.is_empty() || reason == PLAIN || reason.starts_with(PLAIN) {
        if reason.is_empty() {
            PLAIN.to_owned()
        } else {
            reason.to_owned()
        }
    } else {
        format!("{PLAIN}: {reason}")
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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
    /// Not to be claimed: the RPC has ended (agent cancelled it, or its connection went
    /// away), or its agent connection is retired (told to go; the agent is withdrawing
    /// its parked tunnels and the connection may be cut).
    pub fn is_closed(&self) -> bool {
        self.outbound.is_closed() || self.session.is_retired()
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
    /// [`register`](Self::register), unless the tunnel would be parked while its agent
    /// already has `max_idle` live tunnels parked (0: no cap): then it is handed back. A
    /// tunnel a waiting claim takes at once is never refused. (Boxed: refusals are rare and
    /// the tunnel is large.)
    fn register_capped(&self, tunnel: IdleTunnel, max_idle: usize) -> Result<(), Box<IdleTunnel>> {
        if max_idle > 0 && self.idle_count(&tunnel.session.agent_id) >= max_idle {
            return Err(Box::new(tunnel));
        }
        self.register(tunnel);
        Ok(())
    }
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
    /// Parked tunnels of one agent (may include ones closed since the last sweep).
    fn idle_count(&self, agent_id: &str) -> usize;
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
    fn register(&self, tunnel: IdleTunnel) {
        // Cannot be refused without a cap.
        let _ = self.register_capped(tunnel, 0);
    }

    fn register_capped(&self, mut tunnel: IdleTunnel, max_idle: usize) -> Result<(), Box<IdleTunnel>> {
        let agent_id = tunnel.session.agent_id.clone();
        let mut stripe = self.stripe(&agent_id);
        if stripe.closed {
            return Ok(()); // dropping the tunnel ends its RPC; the agent reconnects elsewhere
        }
        let entry = stripe.agents.entry(agent_id.clone()).or_default();
        while let Some(waiter) = entry.waiters.pop_front() {
            match waiter.send(tunnel) {
                Ok(()) => return Ok(()),
                Err(back) => tunnel = back, // that claim gave up; try the next
            }
        }
        // Counted under the stripe lock, so tunnels registering at once cannot all slip
        // in under the cap. Ended ones do not count: they are dropped first.
        if max_idle > 0 && entry.idle.len() >= max_idle {
            entry.idle.retain(|t| !t.is_closed());
            if entry.idle.len() >= max_idle {
                if entry.is_empty() {
                    stripe.agents.remove(&agent_id);
                }
                return Err(Box::new(tunnel));
            }
        }
        entry.idle.push_back(tunnel);
        Ok(())
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

    fn idle_count(&self, agent_id: &str) -> usize {
        self.stripe(agent_id).agents.get(agent_id).map_or(0, |e| e.idle.len())
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

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codec::Codec;

    /// A parked tunnel whose RPC is represented by a live channel; the returned receiver
    /// plays the agent's side (dropping it "ends the RPC").
    fn tunnel(agent: &str, tag: &str) -> (IdleTunnel, mpsc::Receiver<Result<pb::HostFrame, Status>>) {
        let mut codec = tonic_prost::ProstCodec::<pb::HostFrame, pb::AgentFrame>::default();
        let inbound =
            Streaming::new_request(codec.decoder(), http_body_util::Empty::<bytes::Bytes>::new(), None, None);
        let (tx, rx) = mpsc::channel(1);
        let session = Arc::new(Session {
            agent_id: agent.into(),
            agent_replica_id: tag.into(),
            session_id: tag.into(),
            remote_addr: String::new(),
            token_sha256: [0; 32],
            protocol_minor: burrow_proto::PROTOCOL_MINOR,
            identity: None,
            retired: Default::default(),
            cut: Default::default(),
        });
        (IdleTunnel { inbound, outbound: tx, session }, rx)
    }

    fn tag(t: &IdleTunnel) -> &str {
        &t.session.agent_replica_id
    }

    /// [`tunnel`] of a session with an identity valid until `valid_until` (Unix ms, 0: ever).
    fn tunnel_of_identity(
        agent: &str,
        tag: &str,
        valid_until: Option<u64>,
    ) -> (IdleTunnel, mpsc::Receiver<Result<pb::HostFrame, Status>>) {
        let (idle, rx) = tunnel(agent, tag);
        let identity = burrow_host_plugins::types::AgentIdentity {
            agent_id: agent.into(),
            workload_kind: "workspace".into(),
            workload_id: agent.into(),
            expires_at: valid_until,
            labels: vec![],
        };
        let session = Session {
            agent_id: idle.session.agent_id.clone(),
            agent_replica_id: idle.session.agent_replica_id.clone(),
            session_id: idle.session.session_id.clone(),
            remote_addr: String::new(),
            token_sha256: [0; 32],
            protocol_minor: burrow_proto::PROTOCOL_MINOR,
            identity: Some(Arc::new(SessionIdentity::new(identity, 0, 0))),
            retired: Default::default(),
            cut: Default::default(),
        };
        (IdleTunnel { inbound: idle.inbound, outbound: idle.outbound, session: Arc::new(session) }, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn revoked_or_expired_identities_tunnels_are_never_claimed() {
        let reg = LocalRegistry::new();
        let (expired, _r1) = tunnel_of_identity("a", "expired", Some(1));
        let (ended, _r2) = tunnel_of_identity("a", "ended", None);
        ended.session.identity.as_ref().unwrap().end(pb::GoAwayCode::WorkloadTerminated, "gone");
        let (live, _r3) = tunnel_of_identity("a", "live", Some(u64::MAX));
        reg.register(expired);
        reg.register(ended);
        reg.register(live);
        assert_eq!(tag(&reg.claim("a", Duration::ZERO).await.unwrap()), "live");
        assert!(reg.claim("a", Duration::ZERO).await.is_err(), "nothing else is claimable");
    }

    #[tokio::test(start_paused = true)]
    async fn parked_tunnels_are_claimed_in_order() {
        let reg = LocalRegistry::new();
        let (t1, _r1) = tunnel("a", "1");
        let (t2, _r2) = tunnel("a", "2");
        let (other, _r3) = tunnel("b", "3");
        reg.register(t1);
        reg.register(t2);
        reg.register(other);
        assert_eq!(reg.stats(), RegistryStats { agents: 2, idle_tunnels: 3, waiters: 0 });
        assert_eq!(tag(&reg.claim("a", Duration::ZERO).await.unwrap()), "1");
        assert_eq!(tag(&reg.claim("a", Duration::ZERO).await.unwrap()), "2");
        assert_eq!(tag(&reg.claim("b", Duration::ZERO).await.unwrap()), "3");
        assert_eq!(reg.stats(), RegistryStats::default(), "empty entries are removed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_claim_is_handed_the_next_tunnel_without_polling() {
        let reg = Arc::new(LocalRegistry::new());
        let r = reg.clone();
        let claim = tokio::spawn(async move { r.claim("a", Duration::from_secs(20)).await });
        tokio::task::yield_now().await;
        assert_eq!(reg.stats().waiters, 1);
        let (t, _rx) = tunnel("a", "late");
        let before = Instant::now();
        reg.register(t);
        let got = claim.await.unwrap().unwrap();
        assert_eq!(tag(&got), "late");
        assert_eq!(Instant::now(), before, "handed over at once: paused time did not move");
        assert_eq!(reg.stats().idle_tunnels, 0, "went straight to the waiter");
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_first_come_first_served() {
        let reg = Arc::new(LocalRegistry::new());
        let mut claims = Vec::new();
        for _ in 0..3 {
            let r = reg.clone();
            claims.push(tokio::spawn(async move { r.claim("a", Duration::from_secs(5)).await }));
            tokio::task::yield_now().await;
        }
        let mut keep = Vec::new();
        for i in 0..3 {
            let (t, rx) = tunnel("a", &i.to_string());
            keep.push(rx);
            reg.register(t);
        }
        for (i, c) in claims.into_iter().enumerate() {
            assert_eq!(tag(&c.await.unwrap().unwrap()), i.to_string());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn claim_times_out_and_leaves_no_waiter_behind() {
        let reg = LocalRegistry::new();
        let err = reg.claim("a", Duration::from_millis(300)).await.unwrap_err();
        assert_eq!(err, ClaimError::Timeout { agent_id: "a".into(), waited: Duration::from_millis(300) });
        assert_eq!(reg.stats(), RegistryStats::default());
        // A tunnel registered later is parked, not handed to the expired claim.
        let (t, _rx) = tunnel("a", "x");
        reg.register(t);
        assert_eq!(reg.stats().idle_tunnels, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ended_tunnels_are_skipped_and_swept() {
        let reg = LocalRegistry::new();
        let (dead, dead_rx) = tunnel("a", "dead");
        let (live, _live_rx) = tunnel("a", "live");
        reg.register(dead);
        reg.register(live);
        drop(dead_rx);
        assert_eq!(tag(&reg.claim("a", Duration::ZERO).await.unwrap()), "live");
        let (dead2, dead2_rx) = tunnel("b", "dead2");
        reg.register(dead2);
        drop(dead2_rx);
        reg.sweep();
        assert_eq!(reg.stats(), RegistryStats::default());
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_parked_tunnels_per_agent_refuse_the_excess_but_never_a_waiting_claim() {
        let reg = Arc::new(LocalRegistry::new());
        let (t1, _r1) = tunnel("a", "1");
        let (t2, _r2) = tunnel("a", "2");
        let (t3, _r3) = tunnel("a", "3");
        assert!(reg.register_capped(t1, 2).is_ok());
        assert!(reg.register_capped(t2, 2).is_ok());
        let refused = reg.register_capped(t3, 2).expect_err("a third parked tunnel is over the cap");
        assert_eq!(tag(&refused), "3");
        // Another agent has its own count.
        let (other, _r4) = tunnel("b", "4");
        assert!(reg.register_capped(other, 2).is_ok());
        // An ended tunnel frees its place.
        let (dead, dead_rx) = tunnel("c", "dead");
        let (live, _r5) = tunnel("c", "live");
        reg.register(dead);
        drop(dead_rx);
        assert!(reg.register_capped(live, 1).is_ok(), "the ended tunnel does not count");
        // A claim waiting for a tunnel takes it whatever the count.
        reg.claim("a", Duration::ZERO).await.unwrap();
        reg.claim("a", Duration::ZERO).await.unwrap();
        let r = reg.clone();
        let waiting = tokio::spawn(async move { r.claim("a", Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        let (t6, _r6) = tunnel("a", "6");
        assert!(reg.register_capped(t6, 1).is_ok());
        assert_eq!(tag(&waiting.await.unwrap().unwrap()), "6");
    }

    #[tokio::test(start_paused = true)]
    async fn close_fails_waiters_and_later_claims() {
        let reg = Arc::new(LocalRegistry::new());
        let r = reg.clone();
        let waiting = tokio::spawn(async move { r.claim("a", Duration::from_secs(20)).await });
        tokio::task::yield_now().await;
        reg.close();
        assert_eq!(waiting.await.unwrap().unwrap_err(), ClaimError::ShuttingDown);
        assert_eq!(reg.claim("a", Duration::from_secs(1)).await.unwrap_err(), ClaimError::ShuttingDown);
        let (t, mut rx) = tunnel("a", "after");
        reg.register(t);
        assert!(rx.recv().await.is_none(), "a tunnel registered after close is dropped, ending its RPC");
    }
}
