//! State shared by the supervisor and every tunnel task: the pool, the current session,
//! the status channel and the task tracker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use burrow_proto::pb::agent_tunnel_client::AgentTunnelClient;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::config::{AgentConfig, ServiceSpec};
use crate::pool::Pool;
use crate::status::AgentStatus;

/// One established connection to the host.
pub(crate) struct Session {
    pub client: AgentTunnelClient<Channel>,
    /// `burrow-session` metadata for `Tunnel` RPCs.
    pub session_header: MetadataValue<Ascii>,
    /// Cancels this session's idle tunnels (session over, or agent stopping).
    pub parked_cancel: CancellationToken,
    /// A tunnel task found the session unusable (the host rejected a `Tunnel` RPC).
    fatal: mpsc::Sender<String>,
}

impl Session {
    pub(crate) fn new(
        client: AgentTunnelClient<Channel>,
        session_header: MetadataValue<Ascii>,
        parked_cancel: CancellationToken,
    ) -> (Arc<Self>, mpsc::Receiver<String>) {
        let (fatal, fatal_rx) = mpsc::channel(1);
        (Arc::new(Self { client, session_header, parked_cancel, fatal }), fatal_rx)
    }

    /// Report that this session cannot serve tunnels; the first report wins.
    pub(crate) fn fail(&self, reason: String) {
        let _ = self.fatal.try_send(reason);
    }
}

struct PoolSlot {
    pool: Pool,
    /// Where new tunnels open; `None` between sessions.
    session: Option<Arc<Session>>,
}

/// Parked tunnels that die younger than this are replaced only after this pause, so a
/// host that keeps closing them cannot turn the agent into a busy loop.
pub(crate) const QUICK_CLOSE: Duration = Duration::from_secs(1);

pub(crate) struct Shared {
    pub services: HashMap<String, ServiceSpec>,
    pub dial_timeout: Duration,
    pub idle_timeout: Duration,
    /// `authorization: Bearer <token>`, marked sensitive so it is never logged or indexed.
    pub auth_header: MetadataValue<Ascii>,
    slot: Mutex<PoolSlot>,
    status: watch::Sender<AgentStatus>,
    pub tracker: TaskTracker,
    /// Ends everything at once: grace period over, or `abort`.
    pub kill: CancellationToken,
    stopping: AtomicBool,
}

impl Shared {
    pub(crate) fn new(
        config: &AgentConfig,
        status: watch::Sender<AgentStatus>,
        kill: CancellationToken,
    ) -> Result<Arc<Self>, crate::AgentError> {
        let mut auth_header: MetadataValue<Ascii> =
            format!("Bearer {}", config.token.expose()).parse().map_err(|_| crate::ConfigError::Invalid {
                field: "token",
                reason: "must be printable ASCII".to_owned(),
            })?;
        auth_header.set_sensitive(true);
        Ok(Arc::new(Self {
            services: config.services.iter().map(|s| (s.name().to_owned(), s.clone())).collect(),
            dial_timeout: config.dial_timeout,
            idle_timeout: config.idle_timeout,
            auth_header,
            slot: Mutex::new(PoolSlot {
                pool: Pool::new(config.min_idle, config.max_streams),
                session: None,
            }),
            status,
            tracker: TaskTracker::new(),
            kill,
            stopping: AtomicBool::new(false),
        }))
    }

    fn slot(&self) -> MutexGuard<'_, PoolSlot> {
        // A panic elsewhere must not wedge the pool: the counts stay usable.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Update the published status.
    pub(crate) fn set_status(&self, f: impl FnOnce(&mut AgentStatus)) {
        self.status.send_modify(f);
    }

    fn publish_counts(&self, pool: &Pool) {
        let (idle, active) = (pool.parked(), pool.active());
        self.status.send_if_modified(|s| {
            let changed = s.idle_streams != idle || s.active_streams != active;
            s.idle_streams = idle;
            s.active_streams = active;
            changed
        });
    }

    fn open(self: &Arc<Self>, session: &Arc<Session>, n: usize, delay: Option<Duration>) {
        for _ in 0..n {
            self.tracker.spawn(crate::tunnel::run(self.clone(), session.clone(), delay));
        }
    }

    /// Apply a pool transition and open the tunnels it asks for on the current session.
    fn transition(self: &Arc<Self>, delay: Option<Duration>, f: impl FnOnce(&mut Pool) -> usize) {
        let (n, session) = {
            let mut slot = self.slot();
            let n = f(&mut slot.pool);
            self.publish_counts(&slot.pool);
            (n, slot.session.clone())
        };
        if let Some(session) = session {
            self.open(&session, n, delay);
        }
    }

    /// Make `session` current and open its initial tunnels.
    pub(crate) fn attach(self: &Arc<Self>, session: &Arc<Session>) {
        let n = {
            let mut slot = self.slot();
            // Under one lock: no transition may see a connected pool without a session.
            slot.session = Some(session.clone());
            let n = slot.pool.connected();
            self.publish_counts(&slot.pool);
            n
        };
        self.open(session, n, None);
    }

    pub(crate) fn detach(&self) {
        let mut slot = self.slot();
        slot.session = None;
        slot.pool.disconnected();
        self.publish_counts(&slot.pool);
    }

    pub(crate) fn parked_ok(&self) {
        let mut slot = self.slot();
        slot.pool.parked_ok();
        self.publish_counts(&slot.pool);
    }

    pub(crate) fn claimed(self: &Arc<Self>) {
        self.transition(None, |pool| pool.claimed(true));
    }

    /// An idle tunnel ended unclaimed; replace it (after a pause if it died young).
    pub(crate) fn idle_closed(self: &Arc<Self>, was_parked: bool, lived: Duration) {
        let delay = (lived < QUICK_CLOSE).then_some(QUICK_CLOSE);
        self.transition(delay, |pool| pool.idle_closed(was_parked));
    }

    /// An idle tunnel ended because the session is failing: forget it, open nothing.
    pub(crate) fn idle_failed(&self, was_parked: bool) {
        let mut slot = self.slot();
        slot.pool.idle_failed(was_parked);
        self.publish_counts(&slot.pool);
    }

    pub(crate) fn active_closed(self: &Arc<Self>) {
        self.transition(None, |pool| pool.active_closed());
    }

    /// A parked tunnel's idle timer fired: true if it should close now.
    pub(crate) fn idle_expired(&self) -> bool {
        let mut slot = self.slot();
        let expired = slot.pool.idle_expired();
        self.publish_counts(&slot.pool);
        expired
    }

    pub(crate) fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}
