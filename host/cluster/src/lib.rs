//! Cluster mode: many host replicas sharing one registry in Redis.
//!
//! - Each replica announces the agents it holds streams for ([`Cluster::agent_up`]) and
//!   keeps a liveness record with its load ([`store::ReplicaRecord`]).
//! - A request for an agent with no stream here looks the agent up in Redis and forwards
//!   over the private `ReplicaTunnel` API ([`forward`]) to candidates ordered by the
//!   [`policy`], speculatively: a new candidate every `speculative_delay` until one answers.
//! - A request for an agent with no stream anywhere waits for the agent-online pub/sub
//!   message and is woken the moment any replica announces it: no polling.
//! - When Redis is unreachable, local streams keep working, other requests fail at once
//!   with 503, and the heartbeat re-registers every local agent as soon as Redis answers.
//!
//! # Layout
//! - this file: [`Cluster`], this replica's membership (heartbeat, drain, leave under one
//!   phase lock), agent announcements, the agent-online wake-ups and the sweeper.
//! - [`config`]: the `[cluster]` table (the Redis part lives with the store).
//! - [`store`]: the Redis store, crate `burrow-host-redis`, re-exported under its old name.
//! - [`dialer`]: [`dialer::ClusterDialer`], the core's local dialer wrapped: try local, then
//!   look the agent up and race the candidates.
//! - [`forward`]: the private `ReplicaTunnel` API, both the server and the client side.
//! - [`policy`]: the order candidates are tried in.
//! - [`token`]: the short-lived, request-bound tokens replicas present to each other,
//!   and the [`token::ReplayGuard`] that lets each open one request.
//! - `labels`: agents' labels carried in the registry ([`Cluster::attach`] registers them;
//!   the cluster answers admission's `AgentLabelSource` for agents held elsewhere).
//! - [`mtls`]: mutual TLS between replicas (certificates from the cluster CA).
//! - [`pki`]: the quick-start CA and replica certificates (`burrow-host cluster-certs`).

pub mod config;
pub mod dialer;
pub mod forward;
mod labels;
pub mod mtls;
pub mod pki;
pub mod policy;
pub use burrow_host_redis as store;
pub mod token;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::{ClusterConfig, ClusterTlsConfig, RedisConfig, RedisMode};
use policy::{Candidate, PreferLocalLeastLoaded, RoutingPolicy};
use store::{now_ms, Online, ReplicaRecord, Store, StoreError};
use token::{ReplayGuard, TokenKey};

use burrow_host_core::context::ReadinessCheck;
use burrow_host_core::sessions::{AgentPresence, AgentSessions};
use burrow_host_metrics::Metrics;

/// The cluster could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The `[cluster]` table is invalid.
    #[error("invalid config: {0}")]
    Config(String),
    /// TLS material for the private API could not be loaded.
    #[error("cluster TLS: {0}")]
    Tls(String),
    /// The private API server failed.
    #[error("replica API server: {0}")]
    Server(#[from] tonic::transport::Error),
}

/// Where this replica stands in the cluster. Every write of its own membership (its
/// liveness record, its agent registrations) holds the [`Cluster`]'s `membership` lock
/// and checks the phase first, so a heartbeat or a registration already under way when
/// the replica drains or leaves cannot land after it and resurrect what was withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Serving: heartbeats and registrations are written.
    Active,
    /// Draining: the liveness record (marked draining) is kept fresh, no agent is
    /// registered.
    Draining,
    /// Left: nothing of this replica is written to Redis again.
    Left,
}

/// Live state of the cluster membership of this replica.
pub struct Cluster {
    config: ClusterConfig,
    replica_id: String,
    advertise: String,
    store: Arc<Store>,
    key: TokenKey,
    /// Nonces of the bound tokens this replica's API admitted, until they expire.
    replay: ReplayGuard,
    /// This replica's agent sessions (set by [`Cluster::attach`]): the labels registered
    /// with each agent come from them.
    sessions: std::sync::OnceLock<Arc<AgentSessions>>,
    /// Labels of agents held elsewhere, fetched from Redis, for one heartbeat.
    remote_labels: Mutex<HashMap<String, (tokio::time::Instant, store::AgentLabels)>>,
    policy: RwLock<Arc<dyn RoutingPolicy>>,
    metrics: Arc<Metrics>,
    /// Agents with at least one session here. The core's `AgentSessions` counts the
    /// sessions and reports only an agent's first and last, so a set is enough.
    held: Mutex<HashSet<String>>,
    /// Agents whose registration must be brought in line with `held`. A set, not a
    /// queue: an agent connecting and leaving over and over while Redis is slow is one
    /// entry (the announcer reads the current state from `held`), so it is bounded by
    /// the agents there are.
    dirty: Mutex<HashSet<String>>,
    /// Wakes the announcer when `dirty` gains an entry.
    dirty_added: Notify,
    /// Set by the first [`Cluster::start`]: the background work runs once.
    started: AtomicBool,
    waiters: Waiters,
    replicas: RwLock<HashMap<String, ReplicaRecord>>,
    peers: forward::Peers,
    redis_up: AtomicBool,
    /// Mirrors `membership != Active` for lock-free reads on the request path.
    draining: AtomicBool,
    membership: tokio::sync::Mutex<Phase>,
    resubscribe: Notify,
    resync: Notify,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("replica_id", &self.replica_id)
            .field("advertise", &self.advertise)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

type Waiters = Arc<Mutex<HashMap<String, (Arc<Notify>, usize)>>>;

/// A request's interest in an agent appearing anywhere in the cluster. Create it BEFORE
/// looking the agent up, so an announcement between the lookup and the wait is not missed.
pub struct AgentWatch {
    notified: std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>,
    agent_id: String,
    waiters: Waiters,
}

impl AgentWatch {
    /// Resolves at the next announcement of the agent, or at a resubscription after
    /// which the caller must look again because messages may have been missed.
    pub async fn changed(&mut self) {
        self.notified.as_mut().await
    }
}

impl Drop for AgentWatch {
    fn drop(&mut self) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, count)) = waiters.get_mut(&self.agent_id) {
            *count -= 1;
            if *count == 0 {
                waiters.remove(&self.agent_id);
            }
        }
    }
}

/// How long a replica that saw no heartbeat still counts as alive: the record's own
/// expiry already includes `replica_ttl`.
fn is_live(record: &ReplicaRecord, now: u64) -> bool {
    record.exp >= now
}

/// Bound tokens a replica remembers at once (each until it expires, `token_lifetime` plus
/// the skew allowed): about 16 MiB at most, and far above the forwards a replica serves
/// in a token's lifetime.
const MAX_LIVE_TOKENS: usize = 262_144;

impl Cluster {
    /// Sets up cluster membership; nothing touches Redis until [`Cluster::start`].
    pub fn new(
        config: ClusterConfig,
        replica_id: String,
        advertise: String,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, ClusterError> {
        let secret = config.load_secret().map_err(ClusterError::Config)?;
        let key = TokenKey::new(&secret, config.token_lifetime);
        let peers = forward::Peers::new(config.tls.as_ref())?;
        if config.insecure_cleartext {
            tracing::warn!(
                listen = %config.listen,
                "cluster.insecure_cleartext = true: the replica API runs WITHOUT mutual TLS; replica \
                 traffic (users' bytes included) is readable and forgeable by anyone on the network \
                 between replicas. Use cluster.tls (see `burrow-host cluster-certs`) outside a closed network"
            );
        }
        Ok(Arc::new(Self {
            store: Arc::new(Store::new(config.redis.clone())),
            config,
            replica_id,
            advertise,
            key,
            replay: ReplayGuard::new(MAX_LIVE_TOKENS),
            sessions: std::sync::OnceLock::new(),
            remote_labels: Mutex::new(HashMap::new()),
            policy: RwLock::new(Arc::new(PreferLocalLeastLoaded)),
            metrics,
            held: Mutex::new(HashSet::new()),
            dirty: Mutex::new(HashSet::new()),
            dirty_added: Notify::new(),
            started: AtomicBool::new(false),
            waiters: Arc::new(Mutex::new(HashMap::new())),
            replicas: RwLock::new(HashMap::new()),
            peers,
            redis_up: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            membership: tokio::sync::Mutex::new(Phase::Active),
            resubscribe: Notify::new(),
            resync: Notify::new(),
        }))
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// The address other replicas dial.
    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    /// The cluster's config.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The Redis store (for the connection rate limit).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(crate) fn replay_guard(&self) -> &ReplayGuard {
        &self.replay
    }

    pub(crate) fn token_key(&self) -> &TokenKey {
        &self.key
    }

    /// True while the last Redis operation succeeded.
    pub fn redis_up(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed)
    }

    /// True once [`Cluster::drain`] ran.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Replaces the routing policy (the router plugin's hook).
    pub fn set_policy(&self, policy: Arc<dyn RoutingPolicy>) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    /// Orders candidates with the current policy.
    pub fn order(&self, agent_id: &str, candidates: Vec<Candidate>) -> Vec<Candidate> {
        let policy = self.policy.read().unwrap_or_else(|p| p.into_inner()).clone();
        policy.order(agent_id, candidates)
    }

    fn set_redis_up(&self, up: bool) {
        let was = self.redis_up.swap(up, Ordering::Relaxed);
        self.metrics.redis_up.set(i64::from(up));
        if up && !was {
            tracing::info!(redis = %self.store.describe(), "Redis reachable");
            self.resubscribe.notify_one();
        } else if !up && was {
            tracing::warn!(redis = %self.store.describe(), "Redis unreachable: only agents with streams on this replica can be reached");
        }
    }

    fn redis_failed(&self, op: &'static str, error: &StoreError) {
        self.metrics.redis_error(op);
        tracing::debug!(op, %error, "Redis operation failed");
        self.set_redis_up(false);
    }

    /// The agent's first session on this replica began: register it. Repeats are no-ops.
    pub fn agent_up(&self, agent_id: &str) {
        if self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(agent_id.to_owned()) {
            self.mark_dirty(agent_id);
        }
    }

    /// The agent's last session on this replica ended: unregister it.
    pub fn agent_down(&self, agent_id: &str) {
        if self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(agent_id) {
            self.mark_dirty(agent_id);
        }
    }

    fn mark_dirty(&self, agent_id: &str) {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).insert(agent_id.to_owned());
        self.dirty_added.notify_one();
    }

    fn holds(&self, agent_id: &str) -> bool {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).contains(agent_id)
    }

    fn held_agents(&self) -> Vec<String> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Registers interest in `agent_id` appearing (see [`AgentWatch`]).
    pub fn watch(&self, agent_id: &str) -> AgentWatch {
        let notify = {
            let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            let (notify, count) =
                waiters.entry(agent_id.to_owned()).or_insert_with(|| (Arc::new(Notify::new()), 0));
            *count += 1;
            notify.clone()
        };
        let mut notified = Box::pin(notify.notified_owned());
        // Registered now, not at the first poll, so a wake-up before the wait counts.
        notified.as_mut().enable();
        AgentWatch { notified, agent_id: agent_id.to_owned(), waiters: self.waiters.clone() }
    }

    /// Requests currently waiting for an agent to appear.
    pub fn waiting(&self) -> usize {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).values().map(|(_, n)| n).sum()
    }

    fn wake(&self, agent_id: &str) {
        if let Some((n, _)) = self.waiters.lock().unwrap_or_else(|p| p.into_inner()).get(agent_id) {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for (n, _) in self.waiters.lock().unwrap_or_else(|p| p.into_inner()).values() {
            n.notify_waiters();
        }
    }

    async fn replica_record(&self, replica: &str) -> Option<ReplicaRecord> {
        if let Some(r) = self.replicas.read().unwrap_or_else(|p| p.into_inner()).get(replica) {
            return Some(r.clone());
        }
        match self.store.replica(replica).await {
            Ok(Some(r)) => {
                self.replicas
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(replica.to_owned(), r.clone());
                Some(r)
            }
            Ok(None) => None,
            Err(e) => {
                self.redis_failed("lookup", &e);
                None
            }
        }
    }

    /// Other replicas holding streams of `agent_id`, unordered. Stale entries (expired,
    /// or of a replica whose liveness record is gone) are skipped and deleted.
    pub async fn remote_candidates(&self, agent_id: &str) -> Result<Vec<Candidate>, StoreError> {
        let fields = match self.store.lookup(agent_id).await {
            Ok(f) => {
                self.set_redis_up(true);
                f
            }
            Err(e) => {
                self.redis_failed("lookup", &e);
                return Err(e);
            }
        };
        let now = now_ms();
        let ttl = self.config.agent_ttl.as_millis() as u64;
        let mut stale = Vec::new();
        let mut out = Vec::new();
        for (replica, exp) in fields {
            if replica == self.replica_id {
                continue;
            }
            if exp < now {
                stale.push(replica);
                continue;
            }
            match self.replica_record(&replica).await {
                Some(r) if is_live(&r, now) => {
                    if !r.draining {
                        out.push(Candidate {
                            replica_id: replica,
                            address: r.addr,
                            local: false,
                            load: r.load,
                            age: Some(Duration::from_millis((now + ttl).saturating_sub(exp))),
                        });
                    }
                }
                _ => stale.push(replica),
            }
        }
        if !stale.is_empty() {
            tracing::debug!(agent_id, ?stale, "ignoring registrations of dead replicas");
            let store = self.store.clone();
            let agent = agent_id.to_owned();
            tokio::spawn(async move {
                let _ = store.forget(&agent, &stale).await;
            });
        }
        Ok(out)
    }

    /// A forwarded attempt found no stream on `replica`: forget that registration.
    pub fn forget_later(&self, agent_id: &str, replica: &str) {
        let store = self.store.clone();
        let agent = agent_id.to_owned();
        let replicas = vec![replica.to_owned()];
        tokio::spawn(async move {
            let _ = store.forget(&agent, &replicas).await;
        });
    }

    /// Starts the background work: registrations, heartbeat, sweeping and the pub/sub
    /// listener. `load` reports this replica's agent streams in use.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            if me.started.swap(true, Ordering::SeqCst) {
                return;
            }
            tokio::join!(
                me.announcer(shutdown.clone()),
                me.heartbeat_loop(shutdown.clone()),
                me.refresh_loop(shutdown.clone()),
                me.sweep_loop(shutdown.clone()),
                me.pubsub_loop(shutdown.clone()),
            );
        })
    }

    async fn announcer(&self, shutdown: CancellationToken) {
        let mut announced: HashSet<String> = HashSet::new();
        loop {
            let batch: HashSet<String> = {
                let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
                let take: Vec<String> = dirty.iter().take(1000).cloned().collect();
                for agent in &take {
                    dirty.remove(agent);
                }
                take.into_iter().collect()
            };
            if batch.is_empty() {
                // `notify_one` keeps a permit when nobody waits, so an agent marked
                // between the check above and this wait is not missed.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.dirty_added.notified() => continue,
                }
            }
            let (up, down): (Vec<String>, Vec<String>) = batch.into_iter().partition(|a| self.holds(a));
            let registered = match up.is_empty() {
                true => None,
                false => {
                    let membership = self.membership.lock().await;
                    match *membership {
                        Phase::Active => Some(
                            self.store
                                .register(&self.replica_id, &self.labelled(&up), self.config.agent_ttl)
                                .await,
                        ),
                        // Draining or gone: other replicas must not be sent here.
                        Phase::Draining | Phase::Left => None,
                    }
                }
            };
            if let Some(registered) = registered {
                match registered {
                    Ok(_) => {
                        self.set_redis_up(true);
                        let announcements: Vec<Online> = up
                            .iter()
                            .map(|agent| Online {
                                agent: agent.clone(),
                                replica: self.replica_id.clone(),
                                addr: self.advertise.clone(),
                            })
                            .collect();
                        let publishes = futures_util::stream::iter(announcements)
                            .map(|online| {
                                let store = self.store.clone();
                                async move { store.publish_online(&online).await }
                            })
                            .buffer_unordered(64)
                            .collect::<Vec<_>>()
                            .await;
                        if let Some(Err(e)) = publishes.into_iter().find(Result::is_err) {
                            self.redis_failed("publish", &e);
                        }
                        announced.extend(up);
                    }
                    // The heartbeat re-registers everything once Redis answers again.
                    Err(e) => self.redis_failed("register", &e),
                }
            }
            for agent in down {
                if announced.remove(&agent) || !self.redis_up() {
                    if let Err(e) = self.store.unregister(&self.replica_id, &agent).await {
                        // The entry expires with agent_ttl and is ignored once stale;
                        // a forward to us meanwhile gets NOT_FOUND and tries elsewhere.
                        self.redis_failed("unregister", &e);
                    }
                }
            }
        }
    }

    /// Registers every agent held here. The caller holds the membership lock and has
    /// checked that this replica is active.
    async fn register_all(&self) -> Result<usize, StoreError> {
        let agents = self.held_agents();
        self.store.register(&self.replica_id, &self.labelled(&agents), self.config.agent_ttl).await?;
        Ok(agents.len())
    }

    fn record(&self) -> ReplicaRecord {
        ReplicaRecord {
            addr: self.advertise.clone(),
            exp: now_ms() + self.config.replica_ttl.as_millis() as u64,
            load: self.metrics.tunnels_active.get().max(0) as u64,
            draining: self.draining(),
        }
    }

    /// One heartbeat (the background loop runs one every `heartbeat`): write our record,
    /// re-register everything when Redis lost it or was unreachable, and refresh the
    /// cached view of the other replicas. After [`Cluster::leave`] it writes nothing.
    pub async fn heartbeat(&self) {
        {
            let membership = self.membership.lock().await;
            if *membership == Phase::Left {
                return;
            }
            let was_up = self.redis_up();
            match self.store.heartbeat(&self.replica_id, &self.record()).await {
                Ok(created) => {
                    self.set_redis_up(true);
                    if (created || !was_up) && *membership == Phase::Active {
                        match self.register_all().await {
                            Ok(n) => {
                                if n > 0 {
                                    tracing::info!(
                                        agents = n,
                                        "re-registered this replica's agents in Redis"
                                    );
                                }
                            }
                            Err(e) => self.redis_failed("register", &e),
                        }
                    }
                }
                Err(e) => {
                    self.redis_failed("heartbeat", &e);
                    return;
                }
            }
        }
        match self.store.replicas().await {
            Ok(all) => {
                let now = now_ms();
                let live: HashMap<_, _> = all.into_iter().filter(|(_, r)| is_live(r, now)).collect();
                self.peers.retain(&live.values().map(|r| r.addr.as_str()).collect());
                *self.replicas.write().unwrap_or_else(|p| p.into_inner()) = live;
            }
            Err(e) => self.redis_failed("replicas", &e),
        }
    }

    async fn heartbeat_loop(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.heartbeat().await,
                _ = self.resync.notified() => self.heartbeat().await,
            }
        }
    }

    async fn refresh_loop(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.agent_refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let membership = self.membership.lock().await;
            if *membership != Phase::Active {
                continue;
            }
            if let Err(e) = self.register_all().await {
                self.redis_failed("refresh", &e);
            }
        }
    }

    /// Deletes what dead replicas left behind: their liveness record and their field in
    /// every agent hash they registered. Any replica may do it; it is idempotent.
    pub async fn sweep(&self) -> usize {
        let all = match self.store.replicas().await {
            Ok(all) => all,
            Err(e) => {
                self.redis_failed("sweep", &e);
                return 0;
            }
        };
        let now = now_ms();
        let mut removed = 0;
        for (replica, record) in all {
            if replica == self.replica_id || is_live(&record, now) {
                continue;
            }
            match self.store.remove_replica(&replica).await {
                Ok(n) => {
                    tracing::info!(replica = %replica, entries = n, "removed a dead replica's registrations");
                    removed += n;
                }
                Err(e) => self.redis_failed("sweep", &e),
            }
        }
        removed
    }

    async fn sweep_loop(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => { self.sweep().await; }
            }
        }
    }

    async fn pubsub_loop(&self, shutdown: CancellationToken) {
        let channel = self.store.online_channel();
        let mut delay = Duration::from_millis(100);
        loop {
            let session = async {
                let client = self.store.pubsub_client().await?;
                let mut pubsub = tokio::time::timeout(self.config.redis.timeout, client.get_async_pubsub())
                    .await
                    .map_err(|_| StoreError::Timeout(self.config.redis.timeout))??;
                tokio::time::timeout(self.config.redis.timeout, pubsub.subscribe(&channel))
                    .await
                    .map_err(|_| StoreError::Timeout(self.config.redis.timeout))??;
                Ok::<_, StoreError>(pubsub)
            };
            let pubsub = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = session => p,
            };
            match pubsub {
                Ok(mut pubsub) => {
                    delay = Duration::from_millis(100);
                    tracing::debug!(%channel, "subscribed to agent announcements");
                    // Announcements may have been missed while unsubscribed.
                    self.wake_all();
                    let mut messages = pubsub.on_message();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            // The heartbeat saw Redis come back: this connection may be a
                            // half-open leftover, so subscribe afresh.
                            _ = self.resubscribe.notified() => break,
                            m = messages.next() => match m {
                                Some(msg) => self.on_online(msg.get_payload_bytes()),
                                None => break,
                            },
                        }
                    }
                    tracing::debug!("agent announcement subscription ended; resubscribing");
                }
                Err(e) => {
                    self.redis_failed("subscribe", &e);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.resubscribe.notified() => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn on_online(&self, payload: &[u8]) {
        let Ok(online) = serde_json::from_slice::<Online>(payload) else {
            tracing::debug!("ignoring a malformed agent announcement");
            return;
        };
        if online.replica != self.replica_id {
            let mut replicas = self.replicas.write().unwrap_or_else(|p| p.into_inner());
            let record = replicas.entry(online.replica.clone()).or_insert_with(|| ReplicaRecord {
                addr: online.addr.clone(),
                exp: 0,
                load: 0,
                draining: false,
            });
            // The announcement proves the replica is alive now.
            record.addr = online.addr.clone();
            record.exp = record.exp.max(now_ms() + self.config.replica_ttl.as_millis() as u64);
        }
        self.wake(&online.agent);
    }

    /// Begins draining: this replica stops taking forwarded work and withdraws its agent
    /// registrations so other replicas stop choosing it.
    pub async fn drain(&self) {
        let mut membership = self.membership.lock().await;
        if *membership != Phase::Active {
            return;
        }
        *membership = Phase::Draining;
        self.draining.store(true, Ordering::Relaxed);
        if let Err(e) = self.store.heartbeat(&self.replica_id, &self.record()).await {
            self.redis_failed("heartbeat", &e);
        }
        for agent in self.held_agents() {
            if let Err(e) = self.store.unregister(&self.replica_id, &agent).await {
                self.redis_failed("unregister", &e);
                break;
            }
        }
    }

    /// Removes every trace of this replica from Redis (after the drain finished). Once it
    /// returns, nothing of this replica is written again, even by background work that is
    /// still running: a heartbeat or registration in flight finishes before the records
    /// are removed, and those that come later see the replica has left.
    pub async fn leave(&self) {
        let mut membership = self.membership.lock().await;
        if *membership == Phase::Left {
            return;
        }
        *membership = Phase::Left;
        self.draining.store(true, Ordering::Relaxed);
        match self.store.remove_replica(&self.replica_id).await {
            Ok(n) => tracing::info!(entries = n, "left the cluster"),
            Err(e) => {
                tracing::warn!(error = %e, "could not remove this replica from Redis; its entries expire on their own")
            }
        }
    }

    /// Forces an immediate heartbeat (tests and the admin API use it).
    pub fn heartbeat_now(&self) {
        self.resync.notify_one();
    }
}

impl AgentPresence for Cluster {
    fn agent_up(&self, agent_id: &str) {
        Cluster::agent_up(self, agent_id);
    }

    fn agent_down(&self, agent_id: &str) {
        Cluster::agent_down(self, agent_id);
    }
}

impl ReadinessCheck for Cluster {
    fn not_ready(&self) -> Option<String> {
        (!self.redis_up()).then(|| "Redis is unreachable".to_owned())
    }
}
