//! State shared by the connection supervisors and every tunnel task: the status channel,
//! the task tracker, which replica each connection holds, the token in force, the final
//! refusal if one came, and per connection slot its pool and current session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use burrow_proto::pb::agent_tunnel_client::AgentTunnelClient;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tracing::{warn, Instrument};

use crate::config::{AgentConfig, ServiceSpec};
use crate::final_reason::FinalReason;
use crate::pool::Pool;
use crate::status::{AgentStatus, ConnectionStatus};
use crate::token::CurrentToken;

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

    /// A unary RPC on this session, carrying what every RPC carries: the token in force
    /// and this session's id.
    pub(crate) fn request<T>(&self, shared: &Shared, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", shared.auth_header());
        request.metadata_mut().insert(burrow_proto::SESSION_METADATA, self.session_header.clone());
        request
    }
}

/// Parked tunnels that die younger than this are replaced only after this pause, so a
/// host that keeps closing them cannot turn the agent into a busy loop.
pub(crate) const QUICK_CLOSE: Duration = Duration::from_secs(1);

/// How long a tunnel the host refused (a per-agent cap) waits before it is opened
/// again, when the host sent no retry-after.
const TUNNEL_REFUSED_RETRY: Duration = Duration::from_secs(5);

/// How a freshly welcomed connection relates to the replicas the other slots hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// No other slot is on this replica (or the host did not say which replica it is).
    Distinct,
    /// Slot `with` is on the same replica; the caller asked to keep it anyway.
    KeptDuplicate { with: usize },
    /// Slot `with` is on the same replica; not recorded, the caller closes it.
    Duplicate { with: usize },
}

#[derive(Debug, Clone)]
struct Held {
    replica: String,
    /// Kept although another slot held the same replica at the time.
    duplicate: bool,
}

/// Which host replica each slot's live session is on. Check and record happen under one
/// lock, so two slots welcomed by the same replica at once cannot both count as distinct.
#[derive(Debug)]
pub(crate) struct Replicas {
    held: Vec<Option<Held>>,
    /// The last search for a distinct replica ended in keeping a duplicate while this
    /// many distinct replicas were held: the host has no more, as far as the agent
    /// knows. A duplicate landing while at least as many are held again is kept at once
    /// (after a host restart every slot reconnects at the same time; re-dialing in search
    /// of replicas the agent has just seen do not exist only multiplies the handshakes a
    /// restarted host must take). Forgotten when more distinct replicas show up.
    known_replicas: Option<usize>,
}

impl Replicas {
    pub(crate) fn new(slots: usize) -> Self {
        Self { held: vec![None; slots], known_replicas: None }
    }

    /// Distinct replicas the slots hold (hosts that report no id not counted).
    fn distinct_held(&self) -> usize {
        let mut ids: Vec<&str> =
            self.held.iter().flatten().map(|h| h.replica.as_str()).filter(|r| !r.is_empty()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    /// Whether a duplicate now would be kept without searching: the last search found
    /// no more distinct replicas than are held right now.
    fn search_is_futile(&self) -> bool {
        self.known_replicas.is_some_and(|known| self.distinct_held() >= known)
    }

    /// Another slot on `replica`. An empty id (a host that does not report its replica)
    /// is never a duplicate: the agent cannot tell, and serving beats re-dialing.
    fn holder(&self, slot: usize, replica: &str) -> Option<usize> {
        if replica.is_empty() {
            return None;
        }
        self.held
            .iter()
            .enumerate()
            .find(|(i, h)| *i != slot && h.as_ref().is_some_and(|h| h.replica == replica))
            .map(|(i, _)| i)
    }

    /// Record `slot` on `replica` unless another slot holds it and neither
    /// `keep_duplicate` nor the last search's finding (see `known_replicas`) says to keep it.
    pub(crate) fn claim(&mut self, slot: usize, replica: &str, keep_duplicate: bool) -> Claim {
        let claim = match self.holder(slot, replica) {
            None => Claim::Distinct,
            Some(with) if keep_duplicate || self.search_is_futile() => Claim::KeptDuplicate { with },
            Some(with) => return Claim::Duplicate { with },
        };
        let duplicate = matches!(claim, Claim::KeptDuplicate { .. });
        self.held[slot] = Some(Held { replica: replica.to_owned(), duplicate });
        let held = self.distinct_held();
        if duplicate {
            self.known_replicas = Some(self.known_replicas.map_or(held, |known| known.max(held)));
        } else if self.known_replicas.is_some_and(|known| held > known) {
            self.known_replicas = None;
        }
        claim
    }

    /// Move `slot` to `replica` if no other slot holds it. Returns the slots whose
    /// duplicate flag this cleared.
    pub(crate) fn replace(&mut self, slot: usize, replica: &str) -> Option<Vec<usize>> {
        if self.holder(slot, replica).is_some() {
            return None;
        }
        self.held[slot] = Some(Held { replica: replica.to_owned(), duplicate: false });
        // A search found a replica the last one did not: the host has more than known.
        self.known_replicas = None;
        Some(self.unflag_unshared())
    }

    /// `slot` has no live session any more. Returns the slots whose duplicate flag this
    /// cleared (their replica is no longer shared).
    pub(crate) fn release(&mut self, slot: usize) -> Vec<usize> {
        self.held[slot] = None;
        self.unflag_unshared()
    }

    /// `slot` was kept as a duplicate and still shares its replica with another slot.
    pub(crate) fn is_duplicate(&self, slot: usize) -> bool {
        self.held[slot].as_ref().is_some_and(|h| h.duplicate && self.holder(slot, &h.replica).is_some())
    }

    fn unflag_unshared(&mut self) -> Vec<usize> {
        let stale: Vec<usize> = (0..self.held.len())
            .filter(|&i| self.held[i].as_ref().is_some_and(|h| h.duplicate) && !self.is_duplicate(i))
            .collect();
        for &i in &stale {
            if let Some(h) = &mut self.held[i] {
                h.duplicate = false;
            }
        }
        stale
    }
}

pub(crate) struct Shared {
    pub services: HashMap<String, ServiceSpec>,
    /// Sessions the agent serves itself, if any.
    pub sessions: Option<crate::SessionConfig>,
    /// One permit per session that may run at once (`--max-sessions`).
    pub session_slots: Arc<tokio::sync::Semaphore>,
    pub dial_timeout: Duration,
    pub idle_timeout: Duration,
    /// The token every new RPC presents; renewal replaces it.
    token: Mutex<Arc<CurrentToken>>,
    status: watch::Sender<AgentStatus>,
    pub tracker: TaskTracker,
    /// Ends everything at once: grace period over, or `abort`.
    pub kill: CancellationToken,
    /// Stops every slot and the work loop, gracefully: the caller's stop, or a final
    /// refusal ([`finish`](Self::finish)).
    pub stop: CancellationToken,
    /// The first final refusal, if one came.
    final_refusal: Mutex<Option<(FinalReason, String)>>,
    /// Each slot's current session, for the RPCs that belong to the agent rather than to
    /// one connection (`GetWork`, `UpdateStatus`).
    live: watch::Sender<Vec<Option<Arc<Session>>>>,
    stopping: AtomicBool,
    replicas: Mutex<Replicas>,
    /// The host's connection rate limit is per token: once one slot is told to wait, no
    /// slot dials before this instant.
    rate_gate: Mutex<Option<Instant>>,
    /// When a refused tunnel was last logged at WARN.
    tunnel_refusal_logged: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge the agent: the guarded data stays usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(
        config: &AgentConfig,
        status: watch::Sender<AgentStatus>,
        kill: CancellationToken,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, crate::AgentError> {
        let token = CurrentToken::new(config.token.expose(), None).ok_or_else(|| {
            crate::ConfigError::Invalid { field: "token", reason: "must be printable ASCII".to_owned() }
        })?;
        Ok(Arc::new(Self {
            services: config.services.iter().map(|s| (s.name().to_owned(), s.clone())).collect(),
            sessions: config.sessions.clone(),
            session_slots: Arc::new(tokio::sync::Semaphore::new(
                config.sessions.as_ref().map_or(0, |s| s.max_sessions),
            )),
            dial_timeout: config.dial_timeout,
            idle_timeout: config.idle_timeout,
            token: Mutex::new(Arc::new(token)),
            status,
            tracker: TaskTracker::new(),
            kill,
            stop,
            final_refusal: Mutex::new(None),
            live: watch::Sender::new(vec![None; config.connections]),
            stopping: AtomicBool::new(false),
            replicas: Mutex::new(Replicas::new(config.connections)),
            rate_gate: Mutex::new(None),
            tunnel_refusal_logged: Mutex::new(None),
        }))
    }

    /// Update the published status; the summary fields follow the slots.
    pub(crate) fn set_status(&self, f: impl FnOnce(&mut AgentStatus)) {
        self.status.send_modify(|s| {
            f(s);
            s.summarize();
        });
    }

    /// Update one slot's published status.
    pub(crate) fn set_slot_status(&self, slot: usize, f: impl FnOnce(&mut ConnectionStatus)) {
        self.set_status(|s| {
            if let Some(c) = s.connections.get_mut(slot) {
                f(c);
            }
        });
    }

    fn clear_duplicate_flags(&self, slots: &[usize]) {
        if !slots.is_empty() {
            self.set_status(|s| {
                for c in s.connections.iter_mut().filter(|c| slots.contains(&c.slot)) {
                    c.duplicate = false;
                }
            });
        }
    }

    /// See [`Replicas::claim`]; the slot's status shows a kept duplicate.
    pub(crate) fn claim_replica(&self, slot: usize, replica: &str, keep_duplicate: bool) -> Claim {
        let claim = lock(&self.replicas).claim(slot, replica, keep_duplicate);
        if !matches!(claim, Claim::Duplicate { .. }) {
            let duplicate = matches!(claim, Claim::KeptDuplicate { .. });
            self.set_slot_status(slot, |c| c.duplicate = duplicate);
        }
        claim
    }

    /// See [`Replicas::replace`].
    pub(crate) fn replace_replica(&self, slot: usize, replica: &str) -> bool {
        let cleared = lock(&self.replicas).replace(slot, replica);
        match cleared {
            Some(mut cleared) => {
                cleared.push(slot);
                self.clear_duplicate_flags(&cleared);
                true
            }
            None => false,
        }
    }

    /// See [`Replicas::release`].
    pub(crate) fn release_replica(&self, slot: usize) {
        let mut cleared = lock(&self.replicas).release(slot);
        cleared.push(slot);
        self.clear_duplicate_flags(&cleared);
    }

    /// See [`Replicas::is_duplicate`].
    pub(crate) fn is_duplicate(&self, slot: usize) -> bool {
        lock(&self.replicas).is_duplicate(slot)
    }

    /// No slot dials before `until`.
    pub(crate) fn rate_limit_until(&self, until: Instant) {
        let mut gate = lock(&self.rate_gate);
        if gate.is_none_or(|g| g < until) {
            *gate = Some(until);
        }
    }

    /// How long the rate limit still holds attempts back, if at all.
    pub(crate) fn rate_gate_remaining(&self) -> Option<Duration> {
        let until = (*lock(&self.rate_gate))?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Wait until the rate limit allows a connection attempt.
    pub(crate) async fn rate_gate(&self) {
        loop {
            let until = *lock(&self.rate_gate);
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }

    /// The token in force.
    pub(crate) fn token(&self) -> Arc<CurrentToken> {
        lock(&self.token).clone()
    }

    /// `authorization` metadata for a new RPC.
    pub(crate) fn auth_header(&self) -> MetadataValue<Ascii> {
        lock(&self.token).header.clone()
    }

    /// Make `token` the one new RPCs present, unless the one in force outlives it (two
    /// sessions renewing at once may get their answers in either order).
    pub(crate) fn renewed(&self, token: CurrentToken) {
        let mut current = lock(&self.token);
        let outlives = |a: &CurrentToken, b: &CurrentToken| match (a.lifetime, b.lifetime) {
            (Some(a), Some(b)) => a.expires_at_ms > b.expires_at_ms,
            _ => false,
        };
        if !outlives(&current, &token) {
            *current = Arc::new(token);
        }
    }

    /// The host refused this agent for good: record why (the first reason wins) and stop
    /// everything.
    pub(crate) fn finish(&self, reason: FinalReason, message: String) {
        {
            let mut refusal = lock(&self.final_refusal);
            if refusal.is_some() {
                return;
            }
            warn!(reason = reason.as_str(), %message, "{reason}; the agent stops and will not reconnect");
            *refusal = Some((reason, message.clone()));
        }
        self.set_status(|s| {
            s.final_reason = Some(reason);
            s.last_error = Some(format!("{reason}: {message}"));
        });
        self.stop.cancel();
    }

    /// The final refusal, if one came.
    pub(crate) fn final_refusal(&self) -> Option<(FinalReason, String)> {
        lock(&self.final_refusal).clone()
    }

    fn set_live(&self, slot: usize, session: Option<Arc<Session>>) {
        self.live.send_modify(|live| {
            if let Some(entry) = live.get_mut(slot) {
                *entry = session;
            }
        });
    }

    /// A slot's current session, waiting for one if there is none. Prefers a slot other
    /// than `avoid` (the one whose RPC just failed), but takes it if it is the only one.
    pub(crate) async fn live_session(&self, avoid: Option<usize>) -> (usize, Arc<Session>) {
        let mut live = self.live.subscribe();
        loop {
            let pick = {
                let sessions = live.borrow_and_update();
                let mut fallback = None;
                let mut pick = None;
                for (i, s) in sessions.iter().enumerate() {
                    let Some(s) = s else { continue };
                    if Some(i) == avoid {
                        fallback = Some((i, s.clone()));
                    } else {
                        pick = Some((i, s.clone()));
                        break;
                    }
                }
                pick.or(fallback)
            };
            if let Some(pick) = pick {
                return pick;
            }
            // The sender lives in `self`, so this only waits.
            let _ = live.changed().await;
        }
    }

    pub(crate) fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

struct PoolSlot {
    pool: Pool,
    /// Where new tunnels open; `None` between sessions.
    session: Option<Arc<Session>>,
}

/// One connection slot: its own tunnel pool and current session. Tunnels of an older,
/// draining session of the slot still count in its pool until they finish.
pub(crate) struct Slot {
    pub index: usize,
    pub shared: Arc<Shared>,
    pool: Mutex<PoolSlot>,
    span: tracing::Span,
}

impl Slot {
    pub(crate) fn new(index: usize, shared: Arc<Shared>, config: &AgentConfig) -> Arc<Self> {
        Arc::new(Self {
            index,
            shared,
            pool: Mutex::new(PoolSlot {
                pool: Pool::new(config.min_idle, config.max_streams),
                session: None,
            }),
            span: tracing::info_span!("connection", slot = index),
        })
    }

    /// Logs of this slot and its tunnels carry the slot index.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    fn pool(&self) -> MutexGuard<'_, PoolSlot> {
        lock(&self.pool)
    }

    fn publish_counts(&self, pool: &Pool) {
        let (idle, active) = (pool.parked(), pool.active());
        self.shared.status.send_if_modified(|s| {
            let Some(c) = s.connections.get_mut(self.index) else { return false };
            let changed = c.idle_streams != idle || c.active_streams != active;
            c.idle_streams = idle;
            c.active_streams = active;
            if changed {
                s.summarize();
            }
            changed
        });
    }

    fn open(self: &Arc<Self>, session: &Arc<Session>, n: usize, delay: Option<Duration>) {
        // A cancelled session (over, or the agent aborted) must not get replacements:
        // each would end at once and ask for another, spinning without a pause.
        if session.parked_cancel.is_cancelled() || self.shared.kill.is_cancelled() {
            return;
        }
        for _ in 0..n {
            let task = crate::tunnel::run(self.clone(), session.clone(), delay);
            self.shared.tracker.spawn(task.instrument(self.span.clone()));
        }
    }

    /// Apply a pool transition and open the tunnels it asks for on the current session.
    fn transition(self: &Arc<Self>, delay: Option<Duration>, f: impl FnOnce(&mut Pool) -> usize) {
        let (n, session) = {
            let mut slot = self.pool();
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
            let mut slot = self.pool();
            // Under one lock: no transition may see a connected pool without a session.
            slot.session = Some(session.clone());
            let n = slot.pool.connected();
            self.publish_counts(&slot.pool);
            n
        };
        self.shared.set_live(self.index, Some(session.clone()));
        self.open(session, n, None);
    }

    pub(crate) fn detach(&self) {
        self.shared.set_live(self.index, None);
        let mut slot = self.pool();
        slot.session = None;
        slot.pool.disconnected();
        self.publish_counts(&slot.pool);
    }

    pub(crate) fn parked_ok(&self) {
        let mut slot = self.pool();
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

    /// The host refused to open an idle tunnel because this agent is at one of its
    /// per-agent caps: open it again after the host's hint (±20%, so refused tunnels do
    /// not come back together), at least [`QUICK_CLOSE`] and at most
    /// [`MAX_RETRY_AFTER`](crate::session::MAX_RETRY_AFTER); never at once, which would
    /// spin against the cap.
    pub(crate) fn idle_refused(self: &Arc<Self>, retry_after: Option<Duration>, status: &tonic::Status) {
        let hint = retry_after.unwrap_or(TUNNEL_REFUSED_RETRY);
        let delay =
            hint.mul_f64(rand::random_range(0.8..1.2)).clamp(QUICK_CLOSE, crate::session::MAX_RETRY_AFTER);
        self.shared.set_status(|s| s.tunnels_refused += 1);
        // One line a minute at most: an agent at its cap has every missing tunnel refused
        // each retry, and the status counts them all.
        let now = Instant::now();
        let loud = {
            let mut last = lock(&self.shared.tunnel_refusal_logged);
            let loud = last.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60));
            if loud {
                *last = Some(now);
            }
            loud
        };
        let status = crate::session::describe_status(status);
        if loud {
            warn!(%status, retry_in = ?delay, "host refused a tunnel: this agent holds as many there as it allows; retrying later");
        } else {
            tracing::debug!(%status, retry_in = ?delay, "host refused a tunnel; retrying later");
        }
        self.transition(Some(delay), |pool| pool.idle_closed(false));
    }

    /// An idle tunnel ended because the session is failing: forget it, open nothing.
    pub(crate) fn idle_failed(&self, was_parked: bool) {
        let mut slot = self.pool();
        slot.pool.idle_failed(was_parked);
        self.publish_counts(&slot.pool);
    }

    pub(crate) fn active_closed(self: &Arc<Self>) {
        self.transition(None, |pool| pool.active_closed());
    }

    /// A parked tunnel's idle timer fired: true if it should close now.
    pub(crate) fn idle_expired(&self) -> bool {
        let mut slot = self.pool();
        let expired = slot.pool.idle_expired();
        self.publish_counts(&slot.pool);
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_unless_kept() {
        let mut r = Replicas::new(3);
        assert_eq!(r.claim(0, "a", false), Claim::Distinct);
        assert_eq!(r.claim(1, "a", false), Claim::Duplicate { with: 0 });
        assert!(!r.is_duplicate(1), "a refused duplicate is not recorded");
        assert_eq!(r.claim(1, "b", false), Claim::Distinct);
        assert_eq!(r.claim(2, "a", true), Claim::KeptDuplicate { with: 0 });
        assert!(r.is_duplicate(2) && !r.is_duplicate(0));
        // A slot re-claiming its own replica is not its own duplicate.
        assert_eq!(r.claim(1, "b", false), Claim::Distinct);
    }

    #[test]
    fn unknown_replica_ids_never_collide() {
        let mut r = Replicas::new(2);
        assert_eq!(r.claim(0, "", false), Claim::Distinct);
        assert_eq!(r.claim(1, "", false), Claim::Distinct);
    }

    #[test]
    fn replace_moves_only_to_a_free_replica() {
        let mut r = Replicas::new(3);
        r.claim(0, "a", false);
        r.claim(1, "b", false);
        r.claim(2, "a", true);
        assert_eq!(r.replace(2, "b"), None);
        assert_eq!(r.replace(2, "a"), None, "its own replica is still shared");
        assert_eq!(r.replace(2, "c"), Some(vec![]));
        assert!(!r.is_duplicate(2));
        assert_eq!(r.claim(1, "c", false), Claim::Duplicate { with: 2 });
    }

    #[test]
    fn releasing_the_other_holder_clears_the_duplicate_flag() {
        let mut r = Replicas::new(3);
        r.claim(0, "a", false);
        r.claim(1, "a", true);
        assert!(r.is_duplicate(1));
        assert_eq!(r.release(0), vec![1]);
        assert!(!r.is_duplicate(1));
        // Slot 0 comes back on the same replica, which slot 1 holds now: the search that
        // kept slot 1 found only "a", so slot 0 is kept at once instead of re-dialing.
        assert_eq!(r.claim(0, "a", false), Claim::KeptDuplicate { with: 1 });
        assert_eq!(r.release(2), Vec::<usize>::new());
    }

    #[test]
    fn after_a_search_found_one_replica_a_duplicate_on_it_is_kept_without_searching_again() {
        let mut r = Replicas::new(2);
        assert_eq!(r.claim(0, "a", false), Claim::Distinct);
        assert_eq!(r.claim(1, "a", false), Claim::Duplicate { with: 0 });
        assert_eq!(r.claim(1, "a", true), Claim::KeptDuplicate { with: 0 });
        // The host restarts under a new id: both slots lose their sessions and come back.
        r.release(0);
        r.release(1);
        assert_eq!(r.claim(1, "a2", false), Claim::Distinct);
        assert!(r.search_is_futile());
        assert_eq!(r.claim(0, "a2", false), Claim::KeptDuplicate { with: 1 });
        assert!(r.is_duplicate(0));
    }

    #[test]
    fn a_duplicate_is_still_refused_while_fewer_replicas_are_held_than_the_search_found() {
        // Three slots, two replicas: the search kept slot 2 on "a" with "a" and "b" held.
        let mut r = Replicas::new(3);
        r.claim(0, "a", false);
        r.claim(1, "b", false);
        assert_eq!(r.claim(2, "a", true), Claim::KeptDuplicate { with: 0 });
        r.release(0);
        r.release(1);
        r.release(2);
        assert_eq!(r.claim(0, "a", false), Claim::Distinct);
        // Only "a" is held: "b" may well be back, so a duplicate on "a" re-dials.
        assert_eq!(r.claim(1, "a", false), Claim::Duplicate { with: 0 });
        assert_eq!(r.claim(1, "b", false), Claim::Distinct);
        assert_eq!(r.claim(2, "b", false), Claim::KeptDuplicate { with: 1 });
    }

    #[test]
    fn more_replicas_than_the_search_found_make_the_agent_search_again() {
        let mut r = Replicas::new(3);
        r.claim(0, "a", false);
        assert_eq!(r.claim(1, "a", true), Claim::KeptDuplicate { with: 0 });
        assert!(r.search_is_futile());
        // Slot 2 lands on a second replica: the host has more than the search found.
        assert_eq!(r.claim(2, "b", false), Claim::Distinct);
        assert!(!r.search_is_futile());
        // And a diversify round that finds a new replica forgets the finding too.
        r.claim(2, "a", true);
        assert!(r.search_is_futile());
        assert_eq!(r.replace(1, "c"), Some(vec![]));
        assert!(!r.search_is_futile());
    }
}
