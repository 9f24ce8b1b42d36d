//! The cluster dialer: wraps the core's local dialer. A parked stream here is used at
//! once; otherwise the agent is looked up in Redis and the candidates (other replicas,
//! and this one when it holds the agent) are raced speculatively; an agent that is
//! nowhere yet is waited for through the agent-online announcements.
//!
//! The rest of the cluster (Redis lookups, the replica API, announcements) is reached
//! through [`Remotes`], which [`Cluster`] implements; the tests put a fake behind it and
//! check the local-then-forward decisions without Redis or sockets.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::forward::ForwardError;
use super::policy::Candidate;
use super::Cluster;
use burrow_host_core::context::HostCore;
use burrow_host_core::dial::{DialFuture, DialRequest, Dialer, LocalDialer, OpenError};
use burrow_host_core::lifecycle::Lifecycle;
use burrow_host_core::registry::ClaimError;
use burrow_host_core::sessions::AgentSessions;
use burrow_host_core::tunnel_io::TunnelStream;
use burrow_host_metrics::Metrics;
use burrow_host_plugins::types::{RouteCandidate, RouteRequest, Target};
use burrow_host_plugins::Plugins;
use burrow_proto::pb;

/// A boxed future borrowing its receiver, as the object-safe [`Remotes`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the cluster dialer needs of the other replicas. [`Cluster`] is the real one
/// (Redis and the replica API); it is a trait so the dialing decisions can be tested
/// against a fake cluster, deterministically.
pub trait Remotes: Send + Sync {
    /// The other replicas holding `agent_id` (a registry lookup). `Err`: the registry is
    /// unreachable, with the reason.
    fn candidates<'a>(&'a self, agent_id: &'a str) -> BoxFuture<'a, Result<Vec<Candidate>, String>>;

    /// Opens a stream to `service` through `candidate`, which claims one of its own
    /// tunnels of the agent (waiting up to `wait`) and relays it.
    fn forward<'a>(
        &'a self,
        candidate: &'a Candidate,
        dial: Forward<'a>,
    ) -> BoxFuture<'a, Result<TunnelStream, ForwardError>>;

    /// Resolves at the next announcement of `agent_id` anywhere. Registered when called,
    /// so an announcement between this call and the first poll is not missed.
    fn watch(&self, agent_id: &str) -> BoxFuture<'static, ()>;

    /// The built-in routing policy's order.
    fn order(&self, agent_id: &str, candidates: Vec<Candidate>) -> Vec<Candidate>;

    /// `replica` turned out not to hold `agent_id`: forget that registration.
    fn forget_later(&self, agent_id: &str, replica: &str);

    /// How long a candidate has before the next one is started alongside it.
    fn speculative_delay(&self) -> Duration;
}

/// One forwarded dial, as [`Remotes::forward`] gets it.
#[derive(Debug, Clone, Copy)]
pub struct Forward<'a> {
    /// The agent.
    pub agent_id: &'a str,
    /// The `Dial` the agent gets (service, request id, kind, principal).
    pub dial: &'a pb::Dial,
    /// How long the serving replica may wait for a free tunnel.
    pub wait: Duration,
    /// How long the agent may take to answer the dial.
    pub answer_timeout: Duration,
}

impl Remotes for Cluster {
    fn candidates<'a>(&'a self, agent_id: &'a str) -> BoxFuture<'a, Result<Vec<Candidate>, String>> {
        Box::pin(async move { self.remote_candidates(agent_id).await.map_err(|e| e.to_string()) })
    }

    fn forward<'a>(
        &'a self,
        candidate: &'a Candidate,
        d: Forward<'a>,
    ) -> BoxFuture<'a, Result<TunnelStream, ForwardError>> {
        Box::pin(super::forward::open(self, candidate, d.agent_id, d.dial, d.wait, d.answer_timeout))
    }

    fn watch(&self, agent_id: &str) -> BoxFuture<'static, ()> {
        let mut watch = Cluster::watch(self, agent_id);
        Box::pin(async move { watch.changed().await })
    }

    fn order(&self, agent_id: &str, candidates: Vec<Candidate>) -> Vec<Candidate> {
        Cluster::order(self, agent_id, candidates)
    }

    fn forget_later(&self, agent_id: &str, replica: &str) {
        Cluster::forget_later(self, agent_id, replica)
    }

    fn speculative_delay(&self) -> Duration {
        self.config().speculative_delay
    }
}

/// Dials local tunnels first, then other replicas' through the replica API.
pub struct ClusterDialer {
    cluster: Arc<dyn Remotes>,
    local: Arc<LocalDialer>,
    sessions: Arc<AgentSessions>,
    lifecycle: Arc<Lifecycle>,
    plugins: Arc<Plugins>,
    metrics: Arc<Metrics>,
    replica_id: String,
}

impl ClusterDialer {
    /// Wraps `core`'s local dialer; other replicas are reached through `cluster`.
    pub fn new(core: &HostCore, cluster: Arc<dyn Remotes>) -> Self {
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
        let DialRequest { target, wait, session_key, .. } = request;
        let dial = request.message();
        let agent_id = target.agent_id.as_str();
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
                match self.local.open(agent_id, &dial, Duration::ZERO).await {
                    Ok(s) => return Ok(s),
                    Err(e @ OpenError::Refused { .. }) => return Err(e),
                    Err(_) => {}
                }
            }
            let watch = cluster.watch(agent_id);
            let local = !draining && self.sessions.holds_agent(agent_id);
            let remote = match cluster.candidates(agent_id).await {
                Ok(c) => c,
                Err(reason) if !local => {
                    return Err(OpenError::ClusterUnavailable { agent_id: agent_id.to_owned(), reason })
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
                match self.race(ordered, agent_id, &dial, deadline).await {
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
                _ = watch => {}
                claimed = local_wait => match claimed {
                    // `None`: gone before answering; look again.
                    Ok(idle) => if let Some(stream) = self.local.dial_claimed(idle, &dial).await? {
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

    /// Tries `candidates` in order (see [`race`]): local ones over this replica's
    /// tunnels, others through the replica API.
    async fn race(
        &self,
        candidates: Vec<Candidate>,
        agent_id: &str,
        dial: &pb::Dial,
        deadline: Instant,
    ) -> Result<TunnelStream, Option<OpenError>> {
        let cluster = &self.cluster;
        let attempt = |c: Candidate| {
            let remaining = deadline.saturating_duration_since(Instant::now());
            async move {
                if c.local {
                    self.local.open(agent_id, dial, remaining).await.map_err(|e| match e {
                        OpenError::Refused { code, message } => ForwardError::Refused { code, message },
                        other => {
                            ForwardError::Failed { replica: c.replica_id.clone(), message: other.to_string() }
                        }
                    })
                } else {
                    // The serving replica may wait briefly for a free stream; the total
                    // stays within the request's own deadline.
                    let wait = remaining.min(Duration::from_secs(2));
                    let forward =
                        Forward { agent_id, dial, wait, answer_timeout: self.local.dial_answer_timeout() };
                    let result = cluster.forward(&c, forward).await;
                    self.metrics.forward_attempt(match &result {
                        Ok(_) => "ok",
                        Err(ForwardError::Refused { .. }) => "refused",
                        Err(ForwardError::NotThere(_)) => "not_there",
                        Err(ForwardError::Failed { .. }) => "failed",
                    });
                    result
                }
            }
        };
        let not_there = |replica: &str| cluster.forget_later(agent_id, replica);
        race(candidates, cluster.speculative_delay(), deadline, attempt, not_there).await
    }
}

/// Tries `candidates` in order, starting the next one after `delay` or as soon as one
/// fails. The first success wins and the attempts still running are dropped (cancelled).
/// `Err(Some)` is an answer that would be the same everywhere (the agent refused);
/// `Err(None)` means no candidate could serve before `deadline`. `not_there` hears of
/// each replica that turned out not to hold the agent, so its registration is forgotten.
///
/// Generic over what an attempt yields, so the racing is tested without tunnels.
pub async fn race<S, A, F>(
    candidates: Vec<Candidate>,
    delay: Duration,
    deadline: Instant,
    attempt: A,
    not_there: impl Fn(&str),
) -> Result<S, Option<OpenError>>
where
    A: Fn(Candidate) -> F,
    F: std::future::Future<Output = Result<S, ForwardError>>,
{
    let mut queue = candidates.into_iter();
    let mut attempts = FuturesUnordered::new();
    let start = |c: Candidate| {
        let replica = c.replica_id.clone();
        let attempt = attempt(c);
        async move { (replica, attempt.await) }
    };
    if let Some(first) = queue.next() {
        attempts.push(start(first));
    }
    loop {
        let more = queue.len() > 0;
        tokio::select! {
            Some((replica, result)) = attempts.next() => match result {
                Ok(stream) => return Ok(stream),
                Err(ForwardError::Refused { code, message }) => {
                    return Err(Some(OpenError::Refused { code, message }))
                }
                Err(e) => {
                    tracing::debug!(%replica, error = %e, "candidate could not serve");
                    if let ForwardError::NotThere(_) = e {
                        not_there(&replica);
                    }
                    match queue.next() {
                        Some(next) => attempts.push(start(next)),
                        None if attempts.is_empty() => return Err(None),
                        None => {}
                    }
                }
            },
            _ = tokio::time::sleep(delay), if more => {
                if let Some(next) = queue.next() {
                    attempts.push(start(next));
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Err(None),
        }
    }
}

impl Dialer for ClusterDialer {
    fn dial<'a>(&'a self, request: DialRequest<'a>) -> DialFuture<'a> {
        Box::pin(self.open(request))
    }
}

#[cfg(test)]
mod local_then_forward;

#[cfg(test)]
mod tests {
    //! The speculative race, deterministic: paused time, attempts that are plain futures.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use burrow_proto::pb::RefusalCode;

    use super::*;

    /// A remote replica's registration, as the registry would return it.
    pub(super) fn candidate(replica: &str) -> Candidate {
        Candidate {
            replica_id: replica.into(),
            address: format!("{replica}:1"),
            local: false,
            load: 0,
            age: None,
        }
    }

    const DELAY: Duration = Duration::from_millis(10);

    /// Counts attempts dropped before they finished: a cancelled loser.
    struct DropGuard<'a>(&'a AtomicUsize, bool);
    impl Drop for DropGuard<'_> {
        fn drop(&mut self) {
            if !self.1 {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_candidate_gets_a_rival_after_the_delay_and_the_loser_is_cancelled() {
        let started = Mutex::new(Vec::new());
        let cancelled = AtomicUsize::new(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let attempt = |c: Candidate| {
            started.lock().unwrap().push((c.replica_id.clone(), Instant::now()));
            let cancelled = &cancelled;
            async move {
                let mut guard = DropGuard(cancelled, false);
                // r1 hangs; r2 answers after 5 ms.
                let pause =
                    if c.replica_id == "r1" { Duration::from_secs(60) } else { Duration::from_millis(5) };
                tokio::time::sleep(pause).await;
                guard.1 = true;
                Ok::<_, ForwardError>(c.replica_id)
            }
        };
        let t0 = Instant::now();
        let winner =
            race(vec![candidate("r1"), candidate("r2"), candidate("r3")], DELAY, deadline, attempt, |_| {})
                .await
                .unwrap();
        assert_eq!(winner, "r2");
        let started = started.into_inner().unwrap();
        assert_eq!(
            started.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
            ["r1", "r2"],
            "r3 never needed"
        );
        assert_eq!(started[1].1 - t0, DELAY, "the rival starts exactly one speculative delay later");
        assert_eq!(cancelled.load(Ordering::SeqCst), 1, "the hanging r1 attempt was dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_candidate_starts_the_next_at_once_and_one_not_holding_the_agent_is_forgotten() {
        let forgotten = Mutex::new(Vec::new());
        let starts = Mutex::new(Vec::new());
        let deadline = Instant::now() + Duration::from_secs(5);
        let attempt = |c: Candidate| {
            starts.lock().unwrap().push(Instant::now());
            async move {
                match c.replica_id.as_str() {
                    "r1" => Err(ForwardError::NotThere(c.replica_id)),
                    "r2" => Err(ForwardError::Failed { replica: c.replica_id, message: "reset".into() }),
                    _ => Ok(c.replica_id),
                }
            }
        };
        let t0 = Instant::now();
        let winner =
            race(vec![candidate("r1"), candidate("r2"), candidate("r3")], DELAY, deadline, attempt, |r| {
                forgotten.lock().unwrap().push(r.to_owned())
            })
            .await
            .unwrap();
        assert_eq!(winner, "r3");
        assert!(starts.into_inner().unwrap().iter().all(|t| *t == t0), "failures do not wait for the delay");
        assert_eq!(
            forgotten.into_inner().unwrap(),
            ["r1"],
            "only the replica without the agent is forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_the_answer_everywhere_and_ends_the_race() {
        let cancelled = AtomicUsize::new(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let attempt = |c: Candidate| {
            let cancelled = &cancelled;
            async move {
                let mut guard = DropGuard(cancelled, false);
                let result = if c.replica_id == "r1" {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(())
                } else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    Err(ForwardError::Refused {
                        code: RefusalCode::UnknownService,
                        message: "no such service".into(),
                    })
                };
                guard.1 = true;
                result
            }
        };
        let refused =
            race(vec![candidate("r1"), candidate("r2"), candidate("r3")], DELAY, deadline, attempt, |_| {})
                .await;
        assert!(
            matches!(refused, Err(Some(OpenError::Refused { code: RefusalCode::UnknownService, .. }))),
            "{refused:?}"
        );
        assert_eq!(cancelled.load(Ordering::SeqCst), 1, "the still-running r1 was cancelled");
    }

    #[tokio::test(start_paused = true)]
    async fn nobody_answering_by_the_deadline_is_no_answer() {
        let deadline = Instant::now() + Duration::from_millis(500);
        let attempt = |_c: Candidate| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<(), ForwardError>(())
        };
        let t0 = Instant::now();
        let result = race(vec![candidate("r1"), candidate("r2")], DELAY, deadline, attempt, |_| {}).await;
        assert!(matches!(result, Err(None)));
        assert_eq!(Instant::now() - t0, Duration::from_millis(500));
        let empty = race(Vec::new(), DELAY, deadline, attempt, |_| {}).await;
        assert!(matches!(empty, Err(None)), "no candidate: no answer, at once");
    }
}
