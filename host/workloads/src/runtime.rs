//! The workload lifecycle at run time: what the control API and the agent port call.
//!
//! - Creating a workload stores its record and signs its agent's first token.
//! - An agent presenting a workload token is verified here, locally (signature, expiry),
//!   then against the record (unknown, terminated or expired workloads are refused with
//!   a final reason the agent acts on).
//! - Terminating a workload marks the record ended, then ends it on every replica: each
//!   marks it ended for admission (users get 410), retires its agent sessions (no tunnel
//!   of theirs is claimed again) and ends them (the agent port sends GoAway and cuts the
//!   connection after a short grace, which breaks every stream through it; SSH sessions
//!   and web terminals say why first). In a cluster the news travels on Redis pub/sub;
//!   a replica that missed it catches up on its next resync of the workloads it holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_host_core::admission::DirectoryAnswer;
use burrow_host_core::registry::Session;
use burrow_host_core::sessions::AgentSessions;
use burrow_host_core::workloads::EndedWorkloads;
use burrow_host_plugins::types::AgentIdentity;
use burrow_host_time::now_ms;
use burrow_proto::pb::GoAwayCode;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::queue::{Delivery, Updated, WorkState, WorkStatus};
use crate::record::{EndState, Ended, WorkloadRecord};
use crate::store::{Store, StoreError};
use crate::token::{AgentClaims, KeyRing, TokenError};

mod directory;
mod presence;

pub use presence::PresenceObserver;

/// Tuning of the lifecycle.
#[derive(Debug, Clone)]
pub struct LifecycleSettings {
    /// Default agent token lifetime.
    pub token_ttl: Duration,
    /// Longest lifetime a caller may ask for.
    pub max_token_ttl: Duration,
    /// How long an ended workload's record is kept (and its id stays taken).
    pub ended_retention: Duration,
    /// How often the workloads held here are checked against the store (catches a
    /// missed pub/sub message; expiry itself is timed locally).
    pub resync: Duration,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(15 * 60),
            max_token_ttl: Duration::from_secs(24 * 3600),
            ended_retention: Duration::from_secs(24 * 3600),
            resync: Duration::from_secs(10),
        }
    }
}

/// A token handed out.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: u64,
    pub token_id: String,
}

/// Why a control-plane call was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LifecycleError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("no workload {0:?}")]
    NotFound(String),
    #[error("workload {0:?} already exists")]
    Exists(String),
    #[error("workload {id:?} has ended ({reason})")]
    Ended { id: String, reason: String },
    #[error("no workload plugin on this host serves kind {0:?}")]
    UnknownKind(String),
    #[error("{0}")]
    QueueFull(String),
    #[error("no work item {0:?}")]
    UnknownItem(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for LifecycleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists(id) => LifecycleError::Exists(id),
            StoreError::NotFound(id) => LifecycleError::NotFound(id),
            StoreError::Queue(crate::queue::QueueError::Full) => LifecycleError::QueueFull(e.to_string()),
            StoreError::Queue(crate::queue::QueueError::UnknownItem(i)) => LifecycleError::UnknownItem(i),
            other => LifecycleError::Unavailable(other.to_string()),
        }
    }
}

/// Why an agent's workload token was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentRefusal {
    /// Reconnecting cannot help; `final_code` is one of `burrow_proto::FINAL_*`.
    #[error("{message}")]
    Final { final_code: &'static str, message: String },
    /// The store could not be asked; the agent should retry.
    #[error("{0}")]
    Unavailable(String),
}

fn final_refusal(final_code: &'static str, message: impl Into<String>) -> AgentRefusal {
    AgentRefusal::Final { final_code, message: message.into() }
}

fn final_code_of(end: &Ended) -> (&'static str, GoAwayCode) {
    match end.state {
        EndState::Terminated => (burrow_proto::FINAL_WORKLOAD_TERMINATED, GoAwayCode::WorkloadTerminated),
        EndState::Expired => (burrow_proto::FINAL_WORKLOAD_ENDED, GoAwayCode::WorkloadEnded),
    }
}

/// An agent accepted with a workload token.
#[derive(Debug, Clone)]
pub struct AcceptedAgent {
    pub identity: AgentIdentity,
    pub claims: AgentClaims,
    /// When the workload ends by itself (Unix ms, 0: never).
    pub workload_ends_at: u64,
}

/// A lifecycle event on the cluster channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Event {
    Ended { kind: String, id: String, state: EndState, reason: String },
    Work { id: String },
}

/// When a directory answer was looked up, and the answer.
/// The workload's own expiry (Unix ms, 0: none) is kept so a cached live answer turns
/// into an ended one the moment it passes.
type DirectoryEntry = (tokio::time::Instant, DirectoryAnswer, u64);

/// Where each workload's agent is held on this replica, and since when.
type Presence = Mutex<HashMap<String, u64>>;

/// The lifecycle.
pub struct Lifecycle {
    settings: LifecycleSettings,
    keys: KeyRing,
    store: Store,
    sessions: Arc<AgentSessions>,
    ended: Arc<EndedWorkloads>,
    replica_id: String,
    metrics: Arc<burrow_host_metrics::Metrics>,
    /// Agent ids (= workload ids) of managed agents held here → since.
    presence: Presence,
    /// Wakes long polls when work is queued (here, or on another replica via pub/sub).
    work: broadcast::Sender<String>,
    /// Admission's view: workload id → (when looked up, labels if live and managed).
    directory: Mutex<HashMap<String, DirectoryEntry>>,
}

/// How long admission trusts a directory answer (an end reaches it at once anyway:
/// ended workloads are refused before the directory is asked).
const DIRECTORY_TTL: Duration = Duration::from_secs(5);
/// Directory entries kept at most; past it the cache starts over.
const DIRECTORY_MAX: usize = 100_000;

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("store", &self.store)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    pub fn new(
        settings: LifecycleSettings,
        keys: KeyRing,
        store: Store,
        sessions: Arc<AgentSessions>,
        ended: Arc<EndedWorkloads>,
        replica_id: String,
        metrics: Arc<burrow_host_metrics::Metrics>,
    ) -> Arc<Self> {
        let (work, _) = broadcast::channel(1024);
        Arc::new(Self {
            settings,
            keys,
            store,
            sessions,
            ended,
            replica_id,
            metrics,
            presence: Default::default(),
            work,
            directory: Default::default(),
        })
    }

    /// The store (for tools and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn ttl(&self, asked_s: u32) -> Duration {
        match asked_s {
            0 => self.settings.token_ttl,
            s => Duration::from_secs(s.into()).min(self.settings.max_token_ttl),
        }
    }

    fn issue(&self, record: &WorkloadRecord, ttl: Duration) -> IssuedToken {
        let now = now_ms();
        let mut expires_at = now + ttl.as_millis() as u64;
        if record.expires_at != 0 {
            expires_at = expires_at.min(record.expires_at);
        }
        let claims = AgentClaims {
            kind: record.kind.clone(),
            workload_id: record.id.clone(),
            agent_id: record.id.clone(),
            services: record.services.clone(),
            issued_at: now,
            expires_at,
            token_id: hex::encode(rand::random::<[u8; 12]>()),
        };
        self.metrics.workload_event("token_issued");
        IssuedToken { token: self.keys.sign(&claims), expires_at, token_id: claims.token_id }
    }

    /// Creates a workload and signs its agent's first token.
    pub async fn create(
        &self,
        mut record: WorkloadRecord,
        token_ttl_s: u32,
    ) -> Result<(WorkloadRecord, IssuedToken), LifecycleError> {
        let now = now_ms();
        record.created_at = now;
        record.ended = None;
        record.validate(now).map_err(|e| LifecycleError::Invalid(e.to_string()))?;
        self.store.create(&record).await?;
        let token = self.issue(&record, self.ttl(token_ttl_s));
        self.metrics.workload_event("created");
        tracing::info!(kind = %record.kind, id = %record.id, owner = %record.owner, token_id = %token.token_id, "workload created");
        Ok((record, token))
    }

    async fn live_record(&self, id: &str) -> Result<WorkloadRecord, LifecycleError> {
        let record = self.store.get(id).await?.ok_or_else(|| LifecycleError::NotFound(id.to_owned()))?;
        if let Some(end) = record.end(now_ms()) {
            return Err(LifecycleError::Ended { id: id.to_owned(), reason: end.reason });
        }
        Ok(record)
    }

    /// A fresh token for a live workload (the control plane's renewal).
    pub async fn renew(&self, id: &str, token_ttl_s: u32) -> Result<IssuedToken, LifecycleError> {
        let record = self.live_record(id).await?;
        Ok(self.issue(&record, self.ttl(token_ttl_s)))
    }

    /// Ends a workload everywhere. Terminating an ended workload again changes nothing.
    pub async fn terminate(&self, id: &str, reason: &str) -> Result<WorkloadRecord, LifecycleError> {
        let reason = if reason.trim().is_empty() { "terminated by the control plane" } else { reason.trim() };
        let reason: String = reason.chars().take(256).collect();
        let ended = Ended { state: EndState::Terminated, at: now_ms(), reason: reason.clone() };
        let record = self.store.end(id, ended.clone()).await?;
        let end = record.end(now_ms()).expect("just ended");
        if record.ended.as_ref() == Some(&ended) {
            self.metrics.workload_event("terminated");
        }
        // Here at once (again, if it had ended before: harmless); elsewhere through the channel.
        let closed = self.end_locally(&record.kind, &record.id, &end);
        if let Store::Redis(redis) = &self.store {
            let event = Event::Ended {
                kind: record.kind.clone(),
                id: record.id.clone(),
                state: end.state,
                reason: end.reason.clone(),
            };
            if let Err(e) = redis.workload_publish(&serde_json::to_string(&event).expect("serialises")).await
            {
                // The record is ended; other replicas find out on their next resync.
                tracing::warn!(id, error = %e, "could not announce the end of a workload; other replicas catch up on resync");
            }
        }
        tracing::info!(kind = %record.kind, id, reason = %end.reason, sessions_closed = closed, "workload terminated");
        Ok(record)
    }

    /// Marks the workload ended here and ends its agent sessions; returns how many.
    fn end_locally(&self, kind: &str, id: &str, end: &Ended) -> usize {
        self.ended.mark(kind, id);
        self.directory.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        let (_, code) = final_code_of(end);
        let mut closed = 0;
        for session in self.sessions.snapshot() {
            let Some(identity) = &session.identity else { continue };
            if identity.identity.workload_kind == kind
                && identity.identity.workload_id == id
                && !identity.ended.is_cancelled()
            {
                session.retire();
                identity.end(code, end.reason.clone());
                self.metrics.workload_event("sessions_ended");
                closed += 1;
            }
        }
        closed
    }

    /// A record with where its agent is held now.
    pub async fn get(&self, id: &str) -> Result<(WorkloadRecord, Vec<(String, u64)>), LifecycleError> {
        let record = self.store.get(id).await?.ok_or_else(|| LifecycleError::NotFound(id.to_owned()))?;
        let connections = self.connections(id).await?;
        Ok((record, connections))
    }

    async fn connections(&self, id: &str) -> Result<Vec<(String, u64)>, LifecycleError> {
        Ok(match &self.store {
            Store::Redis(r) => {
                // A replica that died without leaving keeps its entry: show only replicas
                // whose liveness record is current.
                let held = r.workload_connections(id).await.map_err(StoreError::from)?;
                if held.is_empty() {
                    return Ok(held);
                }
                let live = r.replicas().await.map_err(StoreError::from)?;
                let now = now_ms();
                held.into_iter()
                    .filter(|(replica, _)| live.get(replica).is_some_and(|rec| rec.exp > now))
                    .collect()
            }
            Store::File(_) => self
                .presence
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .map(|since| vec![(self.replica_id.clone(), *since)])
                .unwrap_or_default(),
        })
    }

    /// Records, optionally of one kind, optionally with ended ones.
    pub async fn list(
        &self,
        kind: &str,
        include_ended: bool,
    ) -> Result<Vec<(WorkloadRecord, Vec<(String, u64)>)>, LifecycleError> {
        let now = now_ms();
        let mut out = Vec::new();
        for record in self.store.list().await? {
            if (!kind.is_empty() && record.kind != kind) || (!include_ended && record.is_over(now)) {
                continue;
            }
            let connections = self.connections(&record.id).await?;
            out.push((record, connections));
        }
        Ok(out)
    }

    /// Queues a work item for a live workload's agent.
    pub async fn enqueue(&self, id: &str, payload: &[u8]) -> Result<String, LifecycleError> {
        if payload.len() > burrow_proto::MAX_WORK_PAYLOAD {
            return Err(LifecycleError::Invalid(format!(
                "payload: {} bytes, at most {}",
                payload.len(),
                burrow_proto::MAX_WORK_PAYLOAD
            )));
        }
        self.live_record(id).await?;
        let item = self.store.enqueue(id, payload, now_ms()).await?;
        self.metrics.workload_event("work_enqueued");
        let _ = self.work.send(id.to_owned());
        if let Store::Redis(redis) = &self.store {
            let event = Event::Work { id: id.to_owned() };
            if let Err(e) = redis.workload_publish(&serde_json::to_string(&event).expect("serialises")).await
            {
                tracing::debug!(id, error = %e, "could not announce queued work; the agent's poll finds it");
            }
        }
        Ok(item)
    }

    /// Every kept work item of a workload.
    pub async fn list_work(&self, id: &str) -> Result<Vec<WorkStatus>, LifecycleError> {
        self.store.get(id).await?.ok_or_else(|| LifecycleError::NotFound(id.to_owned()))?;
        Ok(self.store.list_work(id).await?)
    }

    /// Verifies an agent's workload token and the workload's state.
    pub async fn authenticate(&self, token: &str) -> Result<AcceptedAgent, AgentRefusal> {
        let now = now_ms();
        let claims = self.keys.verify(token, now).map_err(|e| match e {
            TokenError::Expired { .. } => final_refusal(burrow_proto::FINAL_TOKEN_EXPIRED, e.to_string()),
            other => final_refusal(burrow_proto::FINAL_TOKEN_REVOKED, other.to_string()),
        })?;
        if self.ended.contains(&claims.kind, &claims.workload_id) {
            // Known ended here: no store round trip (a terminated workload's agent that
            // keeps reconnecting costs nothing).
            return Err(final_refusal(
                burrow_proto::FINAL_WORKLOAD_TERMINATED,
                format!("workload {:?} has ended", claims.workload_id),
            ));
        }
        let record = match self.store.get(&claims.workload_id).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(final_refusal(
                    burrow_proto::FINAL_TOKEN_REVOKED,
                    format!(
                        "workload {:?} does not exist (deleted, or a token from another host)",
                        claims.workload_id
                    ),
                ))
            }
            Err(e) => return Err(AgentRefusal::Unavailable(format!("cannot check the workload: {e}"))),
        };
        if record.kind != claims.kind {
            return Err(final_refusal(
                burrow_proto::FINAL_TOKEN_REVOKED,
                "the token names another kind of workload",
            ));
        }
        if let Some(end) = record.end(now) {
            self.ended.mark(&record.kind, &record.id);
            let (code, _) = final_code_of(&end);
            return Err(final_refusal(code, format!("workload {:?} has ended: {}", record.id, end.reason)));
        }
        let identity = AgentIdentity {
            agent_id: claims.agent_id.clone(),
            workload_kind: claims.kind.clone(),
            workload_id: claims.workload_id.clone(),
            expires_at: Some(claims.expires_at),
            labels: record.agent_labels(),
        };
        Ok(AcceptedAgent { identity, claims, workload_ends_at: record.expires_at })
    }

    /// Verifies a token for an RPC on an existing session (no store round trip: the
    /// session is ended the moment its workload is).
    pub fn verify(&self, token: &str) -> Result<AgentClaims, TokenError> {
        self.keys.verify(token, now_ms())
    }

    /// A fresh token for the agent presenting `token`.
    pub async fn renew_agent(&self, token: &str) -> Result<(AcceptedAgent, IssuedToken), AgentRefusal> {
        let accepted = self.authenticate(token).await?;
        let record = match self.store.get(&accepted.claims.workload_id).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(final_refusal(burrow_proto::FINAL_TOKEN_REVOKED, "the workload is gone")),
            Err(e) => return Err(AgentRefusal::Unavailable(e.to_string())),
        };
        let token = self.issue(&record, self.settings.token_ttl);
        self.metrics.workload_event("token_renewed");
        tracing::info!(id = %record.id, token_id = %token.token_id, "agent token renewed");
        Ok((accepted, token))
    }

    /// The next work item for the workload, waiting up to `wait` for one.
    pub async fn next_work(
        &self,
        workload_id: &str,
        wait: Duration,
    ) -> Result<Option<Delivery>, LifecycleError> {
        let mut woken = self.work.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(delivery) = self.store.next(workload_id, now_ms()).await? {
                self.metrics.workload_event("work_delivered");
                return Ok(Some(delivery));
            }
            // Wait for news of this workload's queue; a periodic look covers a missed
            // message (Redis pub/sub is at most once).
            let poll = tokio::time::sleep(Duration::from_secs(5));
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return Ok(None),
                    _ = &mut poll => break,
                    news = woken.recv() => match news {
                        Ok(id) if id == workload_id => break,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return Ok(None),
                    },
                }
            }
        }
    }

    /// Records a work item's progress from the agent.
    pub async fn update_work(
        &self,
        workload_id: &str,
        item: &str,
        state: WorkState,
        detail: &str,
    ) -> Result<Updated, LifecycleError> {
        let updated = self.store.update(workload_id, item, state, detail, now_ms()).await?;
        if state.is_final() && updated == Updated::Yes {
            self.metrics.workload_event("work_acknowledged");
        }
        Ok(updated)
    }

    /// Background work until `shutdown`: the cluster channel, resyncs and retention.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let listen = {
            let me = self.clone();
            let shutdown = shutdown.clone();
            async move {
                if let Store::Redis(redis) = &me.store {
                    me.listen(redis.clone(), shutdown).await;
                }
            }
        };
        let resync = {
            let me = self.clone();
            let shutdown = shutdown.clone();
            async move {
                let mut tick = tokio::time::interval(me.settings.resync);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut purge_every = 0u32;
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    me.resync_once().await;
                    purge_every += 1;
                    if purge_every % 60 == 1 {
                        me.purge_once().await;
                    }
                }
            }
        };
        tokio::join!(listen, resync);
    }

    /// Checks the managed workloads held here against the store.
    pub async fn resync_once(&self) {
        let mut held: HashMap<(String, String), ()> = HashMap::new();
        for session in self.sessions.snapshot() {
            if let Some(identity) = &session.identity {
                if is_managed(&session) && !identity.ended.is_cancelled() {
                    held.insert(
                        (identity.identity.workload_kind.clone(), identity.identity.workload_id.clone()),
                        (),
                    );
                }
            }
        }
        for (kind, id) in held.into_keys() {
            match self.store.get(&id).await {
                Ok(Some(record)) => {
                    if let Some(end) = record.end(now_ms()) {
                        self.end_locally(&kind, &id, &end);
                    }
                }
                Ok(None) => {
                    let end = Ended {
                        state: EndState::Terminated,
                        at: now_ms(),
                        reason: "the workload was deleted".into(),
                    };
                    self.end_locally(&kind, &id, &end);
                }
                Err(e) => {
                    tracing::debug!(id, error = %e, "workload resync failed; trying again later");
                    return;
                }
            }
        }
    }

    /// Deletes records that ended more than `ended_retention` ago.
    pub async fn purge_once(&self) {
        let cutoff = now_ms().saturating_sub(self.settings.ended_retention.as_millis() as u64);
        let Ok(records) = self.store.list().await else { return };
        for record in records {
            if record.end(now_ms()).is_some_and(|e| e.at < cutoff) {
                if let Err(e) = self.store.delete(&record.id).await {
                    tracing::debug!(id = %record.id, error = %e, "could not purge an ended workload");
                }
            }
        }
    }

    async fn listen(&self, redis: Arc<burrow_host_redis::Store>, shutdown: CancellationToken) {
        let channel = redis.workload_channel();
        let mut delay = Duration::from_millis(100);
        loop {
            let subscribe = async {
                let client = redis.pubsub_client().await?;
                let mut pubsub =
                    client.get_async_pubsub().await.map_err(burrow_host_redis::StoreError::from)?;
                pubsub.subscribe(&channel).await.map_err(burrow_host_redis::StoreError::from)?;
                Ok::<_, burrow_host_redis::StoreError>(pubsub)
            };
            let subscribed = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(Duration::from_secs(5), subscribe) => r,
            };
            match subscribed {
                Ok(Ok(mut pubsub)) => {
                    delay = Duration::from_millis(100);
                    // Events may have been missed while unsubscribed.
                    self.resync_once().await;
                    let mut messages = pubsub.on_message();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            m = messages.next() => match m {
                                Some(msg) => self.on_event(msg.get_payload_bytes()),
                                None => break,
                            },
                        }
                    }
                    tracing::debug!("workload event subscription ended; resubscribing");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot subscribe to workload events; retrying"),
                Err(_) => tracing::debug!("subscribing to workload events timed out; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    fn on_event(&self, payload: &[u8]) {
        match serde_json::from_slice::<Event>(payload) {
            Ok(Event::Ended { kind, id, state, reason }) => {
                let closed = self.end_locally(&kind, &id, &Ended { state, at: now_ms(), reason });
                if closed > 0 {
                    tracing::info!(
                        kind,
                        id,
                        sessions_closed = closed,
                        "workload ended elsewhere; its sessions here are closed"
                    );
                }
            }
            Ok(Event::Work { id }) => {
                let _ = self.work.send(id);
            }
            Err(e) => tracing::debug!(error = %e, "ignoring a malformed workload event"),
        }
    }
}

/// Whether the session's identity came from a workload token.
fn is_managed(session: &Session) -> bool {
    session.identity.as_ref().is_some_and(|i| {
        i.identity.labels.iter().any(|(k, v)| k == crate::record::MANAGED_LABEL && v == "true")
    })
}
