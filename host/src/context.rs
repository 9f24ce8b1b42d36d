//! State shared by the agent port, the ingress, the replica API and the admin port, and
//! the one function every user connection goes through: [`HostContext::open_tunnel`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use burrow_proto::pb::RefusalCode;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::forward::ForwardError;
use crate::cluster::policy::Candidate;
use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::plugins::types::{RouteCandidate, RouteRequest, Target};
use crate::plugins::Plugins;
use crate::registry::{ClaimError, Session, TunnelRegistry};
use crate::tunnel_io::{self, DialError, Dialed, TunnelStream};

/// Why a tunnel to a workload could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No tunnel of the agent became available in time (504).
    #[error("agent {agent_id:?} has no tunnel available after waiting {waited:?}: is the agent running and connected?")]
    NoTunnel { agent_id: String, waited: Duration },
    /// The agent refused to dial the service (502).
    #[error("agent refused to connect to the service: {message}")]
    Refused { code: RefusalCode, message: String },
    /// The tunnel failed while dialing (502).
    #[error("tunnel to the agent failed: {0}")]
    Broken(String),
    /// The host is shutting down (503).
    #[error("the host is shutting down")]
    ShuttingDown,
    /// Cluster mode, the agent has no stream on this replica and the registry (Redis)
    /// cannot be reached to find another (503).
    #[error("agent {agent_id:?} is not connected to this replica and the cluster registry is unreachable: {reason}")]
    ClusterUnavailable { agent_id: String, reason: String },
}

/// An agent's labels, shared by its sessions.
type AgentLabels = Arc<[(String, String)]>;

/// What the router plugin is told about a tunnel being opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteHint {
    pub target: Target,
    /// Stable per user session (principal id, else client address).
    pub session_key: String,
}

/// Whether the host can take traffic, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// True when the host should receive new work.
    pub ready: bool,
    /// Why not (empty when ready).
    pub reasons: Vec<String>,
}

/// Everything a request handler needs.
pub struct HostContext {
    /// Authorizer and router plugins.
    pub plugins: Arc<Plugins>,
    /// Parked tunnels.
    pub registry: Arc<dyn TunnelRegistry>,
    /// This host replica's id.
    pub replica_id: String,
    /// Live agent sessions by session id.
    pub sessions: RwLock<HashMap<String, Arc<Session>>>,
    /// Agent ids with at least one session here, with the session count.
    agents: Mutex<HashMap<String, usize>>,
    /// How long the host waits for an agent's DialResult.
    pub dial_answer_timeout: Duration,
    /// Cancelled when the host begins to shut down (drain).
    pub shutdown: CancellationToken,
    /// Cluster membership; `None` in single-process mode.
    pub cluster: Option<Arc<Cluster>>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    draining: AtomicBool,
    /// Labels of each agent held here (from its latest session's identity).
    labels: Mutex<HashMap<String, AgentLabels>>,
    /// Workloads (kind, id) found ended, with when: their requests get 410.
    ended_workloads: Mutex<HashMap<(String, String), Instant>>,
}

/// How long an ended workload is remembered (its agents are refused at connect anyway).
const ENDED_WORKLOAD_MEMORY: Duration = Duration::from_secs(3600);
/// Ended workloads remembered at most; the oldest are forgotten first.
const ENDED_WORKLOADS_MAX: usize = 100_000;

impl HostContext {
    /// A context for a host with these parts.
    pub fn new(
        plugins: Arc<Plugins>,
        registry: Arc<dyn TunnelRegistry>,
        replica_id: String,
        dial_answer_timeout: Duration,
        cluster: Option<Arc<Cluster>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            plugins,
            registry,
            replica_id,
            sessions: RwLock::new(HashMap::new()),
            agents: Mutex::new(HashMap::new()),
            dial_answer_timeout,
            shutdown: CancellationToken::new(),
            cluster,
            metrics,
            draining: AtomicBool::new(false),
            ended_workloads: Mutex::new(HashMap::new()),
            labels: Mutex::new(HashMap::new()),
        }
    }

    /// Records that a workload has ended: its requests are refused (410) from now on.
    pub fn mark_workload_ended(&self, kind: &str, workload_id: &str) {
        let mut ended = self.ended_workloads.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if ended.len() >= ENDED_WORKLOADS_MAX {
            ended.retain(|_, at| now.duration_since(*at) < ENDED_WORKLOAD_MEMORY);
            if ended.len() >= ENDED_WORKLOADS_MAX {
                if let Some(oldest) = ended.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone()) {
                    ended.remove(&oldest);
                }
            }
        }
        ended.insert((kind.to_owned(), workload_id.to_owned()), now);
    }

    /// Forgets that a workload ended (its plugin says it is live again).
    pub fn clear_workload_ended(&self, kind: &str, workload_id: &str) {
        let mut ended = self.ended_workloads.lock().unwrap_or_else(|p| p.into_inner());
        if !ended.is_empty() {
            ended.remove(&(kind.to_owned(), workload_id.to_owned()));
        }
    }

    /// Whether the workload was found ended (within the last hour).
    pub fn workload_ended(&self, kind: &str, workload_id: &str) -> bool {
        let ended = self.ended_workloads.lock().unwrap_or_else(|p| p.into_inner());
        if ended.is_empty() {
            return false;
        }
        ended
            .get(&(kind.to_owned(), workload_id.to_owned()))
            .is_some_and(|at| at.elapsed() < ENDED_WORKLOAD_MEMORY)
    }

    /// The labels of one of `agent_id`'s sessions here (empty when it has none here).
    pub fn agent_labels(&self, agent_id: &str) -> Vec<(String, String)> {
        self.labels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent_id)
            .map(|l| l.to_vec())
            .unwrap_or_default()
    }

    /// The open agent sessions.
    pub fn sessions_snapshot(&self) -> Vec<Arc<Session>> {
        self.sessions.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Records a new agent session (and announces the agent to the cluster if it is the
    /// first session of that agent here).
    pub fn session_opened(&self, session: &Arc<Session>) {
        self.sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.session_id.clone(), session.clone());
        *self
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(session.agent_id.clone())
            .or_insert(0) += 1;
        if let Some(identity) = &session.identity {
            self.labels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(session.agent_id.clone(), identity.identity.labels.clone().into());
        }
        if let Some(cluster) = &self.cluster {
            cluster.agent_up(&session.agent_id);
        }
    }

    /// Forgets an agent session.
    pub fn session_closed(&self, session: &Session) {
        let removed = self.sessions.write().unwrap_or_else(|p| p.into_inner()).remove(&session.session_id);
        if removed.is_none() {
            return;
        }
        {
            let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = agents.get_mut(&session.agent_id) {
                *n -= 1;
                if *n == 0 {
                    agents.remove(&session.agent_id);
                    self.labels.lock().unwrap_or_else(|p| p.into_inner()).remove(&session.agent_id);
                }
            }
        }
        if let Some(cluster) = &self.cluster {
            cluster.agent_down(&session.agent_id);
        }
    }

    /// True while at least one session of `agent_id` is open on this replica.
    pub fn holds_agent(&self, agent_id: &str) -> bool {
        self.agents.lock().unwrap_or_else(|p| p.into_inner()).contains_key(agent_id)
    }

    /// Agent identities with a session here, and the number of sessions.
    pub fn agent_counts(&self) -> (usize, usize) {
        let agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        (agents.len(), agents.values().sum())
    }

    /// Marks the host as draining: readiness turns false at once.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.metrics.draining.set(1);
    }

    /// True once the drain began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether a load balancer should send this replica new work.
    pub fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if self.is_draining() {
            reasons.push("draining".to_owned());
        }
        if let Some(cluster) = &self.cluster {
            if !cluster.redis_up() {
                reasons.push("Redis is unreachable".to_owned());
            }
        }
        Readiness { ready: reasons.is_empty(), reasons }
    }

    /// Brings the state gauges up to date (called before each metrics scrape).
    pub fn update_gauges(&self) {
        let (agents, sessions) = self.agent_counts();
        self.metrics.agents_connected.set(agents as i64);
        self.metrics.agent_sessions.set(sessions as i64);
        self.metrics.tunnels_idle.set(self.registry.stats().idle_tunnels as i64);
    }

    /// Claims one of this replica's tunnels of `agent_id` (waiting up to `wait`) and dials
    /// `service` over it. A tunnel that dies before the agent answers is replaced by
    /// another within the same deadline, so a racing idle-timeout on the agent never fails
    /// a request.
    pub async fn open_local_raw(
        &self,
        agent_id: &str,
        service: &str,
        request_id: &str,
        wait: Duration,
    ) -> Result<Dialed, OpenError> {
        let deadline = Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let idle = self.registry.claim(agent_id, remaining).await.map_err(|e| match e {
                ClaimError::Timeout { agent_id, .. } => OpenError::NoTunnel { agent_id, waited: wait },
                ClaimError::ShuttingDown => OpenError::ShuttingDown,
            })?;
            match tunnel_io::dial_raw(idle, service, request_id, self.dial_answer_timeout).await {
                Ok(dialed) => return Ok(dialed),
                Err(DialError::Refused { code, message }) => {
                    return Err(OpenError::Refused { code, message })
                }
                Err(DialError::Gone(why)) => {
                    tracing::debug!(agent_id, request_id, %why, "claimed tunnel was gone; claiming another");
                    if Instant::now() >= deadline {
                        return Err(OpenError::NoTunnel { agent_id: agent_id.to_owned(), waited: wait });
                    }
                }
                Err(e @ (DialError::Timeout(_) | DialError::Protocol(_))) => {
                    return Err(OpenError::Broken(e.to_string()))
                }
            }
        }
    }

    async fn open_local(
        &self,
        agent_id: &str,
        service: &str,
        request_id: &str,
        wait: Duration,
    ) -> Result<TunnelStream, OpenError> {
        self.open_local_raw(agent_id, service, request_id, wait)
            .await
            .map(|d| TunnelStream::local(d, Some(self.metrics.clone())))
    }

    /// Opens a tunnel to `service` of `agent_id`, from wherever the agent's streams are:
    /// this replica's first, then (cluster mode) other replicas', and if the agent has no
    /// stream anywhere, waits up to `wait` for it to connect to any replica.
    pub async fn open_tunnel(
        &self,
        agent_id: &str,
        service: &str,
        request_id: &str,
        wait: Duration,
    ) -> Result<TunnelStream, OpenError> {
        self.open_tunnel_routed(agent_id, service, request_id, wait, None).await
    }

    /// [`Self::open_tunnel`], telling the router plugin (cluster mode) which workload and
    /// user session the tunnel is for.
    pub async fn open_tunnel_routed(
        &self,
        agent_id: &str,
        service: &str,
        request_id: &str,
        wait: Duration,
        hint: Option<&RouteHint>,
    ) -> Result<TunnelStream, OpenError> {
        let started = Instant::now();
        let result = match &self.cluster {
            None => {
                if self.shutdown.is_cancelled() {
                    return Err(OpenError::ShuttingDown);
                }
                if self.registry.idle_count(agent_id) == 0 {
                    self.metrics.waits.inc();
                }
                self.open_local(agent_id, service, request_id, wait).await
            }
            Some(cluster) => self.open_clustered(cluster, agent_id, service, request_id, wait, hint).await,
        };
        match &result {
            Ok(stream) => self.metrics.routed(stream.path(), started.elapsed().as_secs_f64()),
            Err(OpenError::NoTunnel { .. }) => {
                self.metrics.wait_timeouts.inc();
            }
            Err(_) => {}
        }
        result
    }

    async fn open_clustered(
        &self,
        cluster: &Arc<Cluster>,
        agent_id: &str,
        service: &str,
        request_id: &str,
        wait: Duration,
        hint: Option<&RouteHint>,
    ) -> Result<TunnelStream, OpenError> {
        let deadline = Instant::now() + wait;
        let no_tunnel = || OpenError::NoTunnel { agent_id: agent_id.to_owned(), waited: wait };
        let mut counted_wait = false;
        // A router plugin may prefer another replica to this one (a canary), so it sees
        // every candidate; the built-in policy always prefers local, so it skips Redis.
        let routed = self.plugins.has_router();
        loop {
            // Fast path: a parked stream here needs neither Redis nor a hop.
            let draining = self.is_draining();
            if !routed && !draining && self.holds_agent(agent_id) && self.registry.idle_count(agent_id) > 0 {
                match self.open_local(agent_id, service, request_id, Duration::ZERO).await {
                    Ok(s) => return Ok(s),
                    Err(e @ OpenError::Refused { .. }) => return Err(e),
                    Err(_) => {}
                }
            }
            let mut watch = cluster.watch(agent_id);
            let local = !draining && self.holds_agent(agent_id);
            let remote = match cluster.remote_candidates(agent_id).await {
                Ok(c) => c,
                Err(e) if !local => {
                    return Err(OpenError::ClusterUnavailable {
                        agent_id: agent_id.to_owned(),
                        reason: e.to_string(),
                    })
                }
                Err(_) => Vec::new(),
            };
            let mut candidates = remote;
            if local {
                candidates.push(Candidate {
                    replica_id: self.replica_id.clone(),
                    address: String::new(),
                    local: true,
                    load: self.metrics.tunnels_active.get().max(0) as u64,
                    age: None,
                });
            }
            if !candidates.is_empty() {
                let ordered = self.order_candidates(cluster, agent_id, service, hint, candidates).await;
                match self.race(cluster, ordered, agent_id, service, request_id, deadline).await {
                    Ok(s) => return Ok(s),
                    Err(Some(e)) => return Err(e),
                    // Every candidate failed without a definitive answer: wait for news.
                    Err(None) => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(no_tunnel());
            }
            if !counted_wait {
                self.metrics.waits.inc();
                counted_wait = true;
            }
            // Wait for the agent to show up here (a parked stream is handed straight to
            // us) or anywhere else (pub/sub announcement), whichever is first.
            let local_wait = async {
                if draining {
                    std::future::pending::<()>().await;
                }
                let remaining = deadline.saturating_duration_since(Instant::now());
                self.registry.claim(agent_id, remaining).await
            };
            tokio::select! {
                _ = watch.changed() => {}
                claimed = local_wait => match claimed {
                    Ok(idle) => match tunnel_io::dial_raw(idle, service, request_id, self.dial_answer_timeout).await {
                        Ok(d) => return Ok(TunnelStream::local(d, Some(self.metrics.clone()))),
                        Err(DialError::Refused { code, message }) => return Err(OpenError::Refused { code, message }),
                        // Gone before answering: look again.
                        Err(DialError::Gone(_)) => {}
                        Err(e) => return Err(OpenError::Broken(e.to_string())),
                    },
                    Err(ClaimError::Timeout { .. }) => return Err(no_tunnel()),
                    // The drain closed the registry: only other replicas can serve now.
                    Err(ClaimError::ShuttingDown) => {}
                },
                _ = tokio::time::sleep_until(deadline) => return Err(no_tunnel()),
            }
        }
    }

    /// The router plugin's order when one is configured and there is a choice, else the
    /// cluster's built-in policy (also the fallback when the plugin fails).
    async fn order_candidates(
        &self,
        cluster: &Cluster,
        agent_id: &str,
        service: &str,
        hint: Option<&RouteHint>,
        candidates: Vec<Candidate>,
    ) -> Vec<Candidate> {
        if candidates.len() < 2 || !self.plugins.has_router() {
            return cluster.order(agent_id, candidates);
        }
        let target = hint.map(|h| h.target.clone()).unwrap_or_else(|| Target {
            workload_kind: String::new(),
            workload_id: String::new(),
            agent_id: agent_id.to_owned(),
            service: service.to_owned(),
        });
        let request = RouteRequest {
            target,
            session_key: hint.map(|h| h.session_key.clone()).unwrap_or_default(),
            candidates: candidates
                .iter()
                .map(|c| RouteCandidate {
                    replica_id: c.replica_id.clone(),
                    local: c.local,
                    load: u32::try_from(c.load).unwrap_or(u32::MAX),
                    age_ms: c.age.map_or(0, |a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
                })
                .collect(),
        };
        match self.plugins.route(&request).await {
            Some(order) => {
                let mut slots: Vec<Option<Candidate>> = candidates.into_iter().map(Some).collect();
                order.into_iter().filter_map(|i| slots.get_mut(i).and_then(Option::take)).collect()
            }
            None => cluster.order(agent_id, candidates),
        }
    }

    /// Tries `candidates` in order, starting the next one after the speculative delay or
    /// as soon as one fails. The first open tunnel wins and the others are cancelled.
    /// `Err(Some)` is an answer that would be the same everywhere (the agent refused);
    /// `Err(None)` means no candidate could serve.
    async fn race(
        &self,
        cluster: &Arc<Cluster>,
        candidates: Vec<Candidate>,
        agent_id: &str,
        service: &str,
        request_id: &str,
        deadline: Instant,
    ) -> Result<TunnelStream, Option<OpenError>> {
        let delay = cluster.config().speculative_delay;
        let mut queue = candidates.into_iter();
        let mut attempts = FuturesUnordered::new();
        let attempt = |c: Candidate| {
            let remaining = deadline.saturating_duration_since(Instant::now());
            async move {
                let result = if c.local {
                    self.open_local(agent_id, service, request_id, remaining).await.map_err(|e| match e {
                        OpenError::Refused { code, message } => ForwardError::Refused { code, message },
                        other => {
                            ForwardError::Failed { replica: c.replica_id.clone(), message: other.to_string() }
                        }
                    })
                } else {
                    // The serving replica may wait briefly for a free stream; the total
                    // stays within the request's own deadline.
                    let wait = remaining.min(Duration::from_secs(2));
                    crate::cluster::forward::open(
                        cluster,
                        &c,
                        agent_id,
                        service,
                        request_id,
                        wait,
                        self.dial_answer_timeout,
                    )
                    .await
                };
                (c, result)
            }
        };
        if let Some(first) = queue.next() {
            attempts.push(attempt(first));
        }
        loop {
            let more = queue.len() > 0;
            tokio::select! {
                Some((candidate, result)) = attempts.next() => match result {
                    Ok(stream) => return Ok(stream),
                    Err(ForwardError::Refused { code, message }) => {
                        return Err(Some(OpenError::Refused { code, message }))
                    }
                    Err(e) => {
                        tracing::debug!(agent_id, replica = %candidate.replica_id, error = %e, "candidate could not serve");
                        if let ForwardError::NotThere(_) = e {
                            cluster.forget_later(agent_id, &candidate.replica_id);
                        }
                        match queue.next() {
                            Some(next) => attempts.push(attempt(next)),
                            None if attempts.is_empty() => return Err(None),
                            None => {}
                        }
                    }
                },
                _ = tokio::time::sleep(delay), if more => {
                    if let Some(next) = queue.next() {
                        attempts.push(attempt(next));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Err(None),
            }
        }
    }
}
