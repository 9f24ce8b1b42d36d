//! The cluster dialer: wraps the core's local dialer. A parked stream here is used at
//! once; otherwise the agent is looked up in Redis and the candidates (other replicas,
//! and this one when it holds the agent) are raced speculatively; an agent that is
//! nowhere yet is waited for through the agent-online announcements.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::forward::ForwardError;
use super::policy::Candidate;
use super::Cluster;
use crate::core::context::HostCore;
use crate::core::dial::{DialFuture, DialRequest, Dialer, LocalDialer, OpenError};
use crate::core::lifecycle::Lifecycle;
use crate::core::registry::ClaimError;
use crate::core::sessions::AgentSessions;
use crate::core::tunnel_io::TunnelStream;
use crate::metrics::Metrics;
use crate::plugins::types::{RouteCandidate, RouteRequest, Target};
use crate::plugins::Plugins;

/// Dials local tunnels first, then other replicas' through the replica API.
pub struct ClusterDialer {
    cluster: Arc<Cluster>,
    local: Arc<LocalDialer>,
    sessions: Arc<AgentSessions>,
    lifecycle: Arc<Lifecycle>,
    plugins: Arc<Plugins>,
    metrics: Arc<Metrics>,
    replica_id: String,
}

impl ClusterDialer {
    /// Wraps `core`'s local dialer.
    pub fn new(core: &HostCore, cluster: Arc<Cluster>) -> Self {
        Self {
            cluster,
            local: core.local.clone(),
            sessions: core.sessions.clone(),
            lifecycle: core.lifecycle.clone(),
            plugins: core.plugins.clone(),
            metrics: core.metrics.clone(),
            replica_id: core.replica_id.clone(),
        }
    }

    async fn open(&self, request: DialRequest<'_>) -> Result<TunnelStream, OpenError> {
        let DialRequest { target, request_id, wait, session_key } = request;
        let (agent_id, service) = (target.agent_id.as_str(), target.service.as_str());
        let cluster = &self.cluster;
        let deadline = Instant::now() + wait;
        let no_tunnel = || OpenError::NoTunnel { agent_id: agent_id.to_owned(), waited: wait };
        let mut counted_wait = false;
        // A router plugin may prefer another replica to this one (a canary), so it sees
        // every candidate; the built-in policy always prefers local, so it skips Redis.
        let routed = self.plugins.has_router();
        loop {
            // Fast path: a parked stream here needs neither Redis nor a hop.
            let draining = self.lifecycle.is_draining();
            if !routed
                && !draining
                && self.sessions.holds_agent(agent_id)
                && self.local.registry().idle_count(agent_id) > 0
            {
                match self.local.open(agent_id, service, request_id, Duration::ZERO).await {
                    Ok(s) => return Ok(s),
                    Err(e @ OpenError::Refused { .. }) => return Err(e),
                    Err(_) => {}
                }
            }
            let mut watch = cluster.watch(agent_id);
            let local = !draining && self.sessions.holds_agent(agent_id);
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
                let ordered = self.order_candidates(target, session_key, candidates).await;
                match self.race(ordered, agent_id, service, request_id, deadline).await {
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
                self.local.registry().claim(agent_id, remaining).await
            };
            tokio::select! {
                _ = watch.changed() => {}
                claimed = local_wait => match claimed {
                    // `None`: gone before answering; look again.
                    Ok(idle) => if let Some(stream) = self.local.dial_claimed(idle, service, request_id).await? {
                        return Ok(stream);
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
        target: &Target,
        session_key: &str,
        candidates: Vec<Candidate>,
    ) -> Vec<Candidate> {
        if candidates.len() < 2 || !self.plugins.has_router() {
            return self.cluster.order(&target.agent_id, candidates);
        }
        let request = RouteRequest {
            target: target.clone(),
            session_key: session_key.to_owned(),
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
            None => self.cluster.order(&target.agent_id, candidates),
        }
    }

    /// Tries `candidates` in order, starting the next one after the speculative delay or
    /// as soon as one fails. The first open tunnel wins and the others are cancelled.
    /// `Err(Some)` is an answer that would be the same everywhere (the agent refused);
    /// `Err(None)` means no candidate could serve.
    async fn race(
        &self,
        candidates: Vec<Candidate>,
        agent_id: &str,
        service: &str,
        request_id: &str,
        deadline: Instant,
    ) -> Result<TunnelStream, Option<OpenError>> {
        let cluster = &self.cluster;
        let delay = cluster.config().speculative_delay;
        let mut queue = candidates.into_iter();
        let mut attempts = FuturesUnordered::new();
        let attempt = |c: Candidate| {
            let remaining = deadline.saturating_duration_since(Instant::now());
            async move {
                let result = if c.local {
                    self.local.open(agent_id, service, request_id, remaining).await.map_err(|e| match e {
                        OpenError::Refused { code, message } => ForwardError::Refused { code, message },
                        other => {
                            ForwardError::Failed { replica: c.replica_id.clone(), message: other.to_string() }
                        }
                    })
                } else {
                    // The serving replica may wait briefly for a free stream; the total
                    // stays within the request's own deadline.
                    let wait = remaining.min(Duration::from_secs(2));
                    super::forward::open(
                        cluster,
                        &c,
                        agent_id,
                        service,
                        request_id,
                        wait,
                        self.local.dial_answer_timeout(),
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

impl Dialer for ClusterDialer {
    fn dial<'a>(&'a self, request: DialRequest<'a>) -> DialFuture<'a> {
        Box::pin(self.open(request))
    }
}
