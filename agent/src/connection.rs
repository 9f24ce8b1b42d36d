//! One connection slot's life: dial the host URLs in turn, keep the session on a host
//! replica no other slot holds, serve it, and reconnect with backoff when it ends.
//!
//! Slots are independent: each has its own session, tunnel pool and backoff, so a
//! replica going away only makes the slot that was on it reconnect. They share two
//! things: the table of which replica each slot holds (to keep them on distinct
//! replicas) and the rate-limit gate (the host limits connection attempts per token).

use std::future::pending;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::BackoffState;
use crate::config::{AgentConfig, HostUrl};
use crate::session::{self, AttemptError, Established, SessionEnd};
use crate::shared::{Claim, Slot};
use crate::status::ConnState;
use crate::transport::Transport;

/// A session shorter than this that ends in `GoAway` still waits a backoff delay.
const QUICK_SESSION: Duration = Duration::from_secs(1);

/// Consecutive dials that may land on a replica another slot holds; the last one is
/// kept, since there may be fewer replicas than connections and serving beats nothing.
pub(crate) const MAX_DUPLICATE_DIALS: u32 = 3;

/// Pause before re-dialing after a duplicate, so a load balancer gets a new TCP
/// connection to place (some pick the backend per connection, some hash on timing).
const REDIAL_MIN: Duration = Duration::from_millis(100);
const REDIAL_MAX: Duration = Duration::from_millis(500);

/// The longest wait between two diversify rounds that found no new replica.
const MAX_DIVERSIFY_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// Spread of `diversify_interval`, so slots (and agents) do not probe in step.
const DIVERSIFY_JITTER: f64 = 0.2;

fn redial_delay() -> Duration {
    REDIAL_MIN + (REDIAL_MAX - REDIAL_MIN).mul_f64(rand::random::<f64>())
}

fn jittered(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 + spread * (2.0 * rand::random::<f64>() - 1.0))
}

/// What a slot does between sessions.
struct Pause {
    delay: Duration,
    state: ConnState,
    /// Recorded as the last error (a failure, as opposed to a duplicate or GoAway).
    error: Option<String>,
    /// A routine re-dial (after a duplicate): logged at debug only.
    quiet: bool,
}

/// Run slot `slot` until `stop`.
pub(crate) async fn run(
    slot: Arc<Slot>,
    config: &AgentConfig,
    transports: &[Transport],
    stop: &CancellationToken,
) {
    let shared = &slot.shared;
    let index = slot.index;
    let hosts = transports.len();
    let mut host = index % hosts;
    let mut backoff = BackoffState::new(config.backoff);
    let mut auth_backoff = BackoffState::new(config.auth_backoff);
    let mut duplicates = 0u32;
    // A connection a diversify probe already established, and its URL index.
    let mut ready: Option<(Established, usize)> = None;

    while !stop.is_cancelled() {
        let (est, at, duplicate) = match ready.take() {
            Some((est, at)) => (est, at, false),
            None => {
                let transport = &transports[host];
                let Some(attempt) = dial(&slot, transport, config, stop, false).await else { return };
                let outcome = match attempt {
                    Err(AttemptError::Final { reason, message }) => {
                        shared.finish(reason, message);
                        return;
                    }
                    Err(e) => Err(failure(&slot, e, transport.url(), &mut backoff, &mut auth_backoff)),
                    Ok(est) => {
                        // Welcomed, even if closed as a duplicate: the token is good.
                        auth_backoff.reset();
                        settle(&slot, est, transport.url(), config, &mut duplicates)
                    }
                };
                match outcome {
                    Ok((est, duplicate)) => (est, host, duplicate),
                    Err(pause) => {
                        host = (host + 1) % hosts;
                        if !pause_slot(&slot, pause, stop).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let url = transports[at].url();
        let connected_at = Instant::now();
        info!(
            host = %url,
            agent_id = %est.welcome.agent_id,
            host_replica_id = %est.welcome.host_replica_id,
            duplicate,
            "connected to host",
        );
        let connected = ConnState::Connected {
            host_replica_id: est.welcome.host_replica_id.clone(),
            agent_id: est.welcome.agent_id.clone(),
        };
        shared.set_slot_status(index, |c| {
            c.state = connected;
            c.host = url.clone();
        });
        let mut probe_host = at;
        let end =
            session::supervise(&slot, est, stop, diversify(&slot, config, transports, stop, &mut probe_host))
                .await;
        let lasted = connected_at.elapsed();
        backoff.connection_ended_after(lasted);
        let pause = match end {
            SessionEnd::Shutdown => {
                shared.release_replica(index);
                return;
            }
            SessionEnd::Replaced(new) => {
                // The replica table already names the new replica.
                ready = Some((*new, probe_host));
                continue;
            }
            SessionEnd::Final { reason, message } => {
                shared.release_replica(index);
                shared.finish(reason, message);
                return;
            }
            SessionEnd::GoAway { reason, after } => {
                shared.release_replica(index);
                // Not a failure, so no backoff penalty; but a host that welcomes and
                // sends GoAway at once must not make the agent spin.
                let delay = if lasted < QUICK_SESSION { after.max(backoff.next_delay()) } else { after };
                Pause {
                    delay,
                    state: ConnState::BackingOff {
                        retry_in: delay,
                        reason: format!("host sent GoAway: {reason}"),
                        auth_failure: false,
                    },
                    error: None,
                    quiet: false,
                }
            }
            SessionEnd::Lost(reason) => {
                shared.release_replica(index);
                warn!(host = %url, %reason, "connection to host lost");
                let delay = backoff.next_delay();
                Pause {
                    delay,
                    state: ConnState::BackingOff {
                        retry_in: delay,
                        reason: reason.clone(),
                        auth_failure: false,
                    },
                    error: Some(reason),
                    quiet: false,
                }
            }
        };
        // A replica that went away is likely still away: try the next URL first.
        host = (at + 1) % hosts;
        if !pause_slot(&slot, pause, stop).await {
            return;
        }
    }
}

/// A connection was welcomed: keep it if its replica is distinct, or if this is the
/// last of [`MAX_DUPLICATE_DIALS`] consecutive duplicates, or if the last such search
/// found no more replicas than the agent holds now (then it is flagged and [`diversify`]
/// tries to move it later). Otherwise close it and pause briefly. The
/// `bool` says whether the kept connection is a duplicate.
fn settle(
    slot: &Slot,
    est: Established,
    url: &HostUrl,
    config: &AgentConfig,
    duplicates: &mut u32,
) -> Result<(Established, bool), Pause> {
    let keep = *duplicates + 1 >= MAX_DUPLICATE_DIALS;
    let replica = est.host_replica_id().to_owned();
    match slot.shared.claim_replica(slot.index, &replica, keep) {
        Claim::Distinct => {
            *duplicates = 0;
            Ok((est, false))
        }
        Claim::KeptDuplicate { with } if !keep => {
            // Said at info once, when the search found no other replica.
            debug!(
                host = %url,
                host_replica_id = %replica,
                other_slot = with,
                retry_in = ?config.diversify_interval,
                "the last search found no other host replica; keeping a second connection to this one at once"
            );
            *duplicates = 0;
            Ok((est, true))
        }
        Claim::KeptDuplicate { with } => {
            info!(
                host = %url,
                host_replica_id = %replica,
                other_slot = with,
                dials = *duplicates + 1,
                retry_in = ?config.diversify_interval,
                "found no other host replica; keeping a second connection to this one and trying again later"
            );
            *duplicates = 0;
            Ok((est, true))
        }
        Claim::Duplicate { with } => {
            *duplicates += 1;
            debug!(
                host = %url,
                host_replica_id = %replica,
                other_slot = with,
                "landed on a replica another connection holds; closing it and re-dialing"
            );
            // No tunnel has opened on it yet: closing costs nothing.
            drop(est);
            let delay = redial_delay();
            Err(Pause {
                delay,
                state: ConnState::BackingOff {
                    retry_in: delay,
                    reason: format!("host replica {replica:?} is already held by connection {with}"),
                    auth_failure: false,
                },
                error: None,
                quiet: true,
            })
        }
    }
}

/// One connection attempt: wait for the rate-limit gate, count it, dial. `None` when
/// the agent is stopping. A `probe` runs beside a live session and leaves the slot's
/// state alone.
async fn dial(
    slot: &Slot,
    transport: &Transport,
    config: &AgentConfig,
    stop: &CancellationToken,
    probe: bool,
) -> Option<Result<Established, AttemptError>> {
    if let Some(wait) = slot.shared.rate_gate_remaining().filter(|_| !probe) {
        slot.shared.set_slot_status(slot.index, |c| {
            c.state = ConnState::RateLimited {
                retry_in: wait,
                reason: "another connection was rate-limited by the host; waiting as it asked".to_owned(),
            }
        });
    }
    tokio::select! {
        _ = stop.cancelled() => return None,
        _ = slot.shared.rate_gate() => {}
    }
    slot.shared.set_slot_status(slot.index, |c| {
        c.connect_attempts += 1;
        if !probe {
            c.state = ConnState::Connecting;
            c.host = transport.url().clone();
        }
    });
    tokio::select! {
        _ = stop.cancelled() => None,
        r = session::establish(&slot.shared, transport, config) => Some(r),
    }
}

/// The host sent RESOURCE_EXHAUSTED: count it, and hold every slot back for the
/// host's hint (the limit is per token, so another slot would only be refused too).
fn note_rate_limit(slot: &Slot, retry_after: Option<Duration>) {
    if let Some(after) = retry_after {
        slot.shared.rate_limit_until(Instant::now() + after);
    }
    slot.shared.set_status(|s| s.rate_limited += 1);
}

/// Log a failed attempt and choose the pause before the next one.
fn failure(
    slot: &Slot,
    e: AttemptError,
    url: &HostUrl,
    backoff: &mut BackoffState,
    auth_backoff: &mut BackoffState,
) -> Pause {
    let backing_off = |delay: Duration, reason: String, auth_failure: bool, is_error: bool| Pause {
        delay,
        error: is_error.then(|| reason.clone()),
        state: ConnState::BackingOff { retry_in: delay, reason, auth_failure },
        quiet: false,
    };
    match e {
        AttemptError::Auth(msg) => {
            slot.shared.set_status(|s| s.auth_failures += 1);
            error!(host = %url, error = %msg, "host rejected the agent token; check BURROW_AGENT_TOKEN / --token-file");
            backing_off(
                auth_backoff.next_delay(),
                format!("host rejected the agent token: {msg}"),
                true,
                true,
            )
        }
        AttemptError::Version(msg) => {
            error!(
                host = %url,
                error = %msg,
                agent_protocol = burrow_proto::PROTOCOL_VERSION,
                "host refused this agent's protocol version; upgrade the agent or the host"
            );
            backing_off(auth_backoff.next_delay(), format!("protocol version rejected: {msg}"), false, true)
        }
        AttemptError::RateLimited { message, retry_after } => {
            note_rate_limit(slot, retry_after);
            let base = backoff.next_delay();
            let delay = retry_after.map_or(base, |after| after.max(base));
            warn!(
                host = %url,
                error = %message,
                ?retry_after,
                retry_in = ?delay,
                "host rate-limited connection attempts for this agent token; waiting before trying again"
            );
            let reason = format!("connection attempts rate-limited by the host: {message}");
            Pause {
                delay,
                error: Some(reason.clone()),
                state: ConnState::RateLimited { retry_in: delay, reason },
                quiet: false,
            }
        }
        AttemptError::Final { reason, message } => {
            // Callers handle this before; should one not, stopping is still right.
            slot.shared.finish(reason, message.clone());
            backing_off(Duration::ZERO, format!("{reason}: {message}"), false, true)
        }
        AttemptError::GoAway { reason, after } => {
            // GoAway instead of Welcome: this host is draining and may keep saying so;
            // back off as after a failure.
            info!(host = %url, %reason, "host is draining; retrying");
            backing_off(after.max(backoff.next_delay()), format!("host sent GoAway: {reason}"), false, false)
        }
        AttemptError::Other(msg) => {
            warn!(host = %url, error = %msg, "could not connect to host");
            backing_off(backoff.next_delay(), msg, false, true)
        }
    }
}

/// Publish the pause and sleep it. False when the agent is stopping.
async fn pause_slot(slot: &Slot, pause: Pause, stop: &CancellationToken) -> bool {
    let Pause { delay, state, error, quiet } = pause;
    if quiet {
        debug!(retry_in = ?delay, "re-dialing");
    } else {
        info!(retry_in = ?delay, "reconnecting");
    }
    slot.shared.set_status(|s| {
        if let Some(error) = &error {
            s.last_error = Some(error.clone());
        }
        if let Some(c) = s.connections.get_mut(slot.index) {
            if error.is_some() {
                c.last_error = error;
            }
            c.state = state;
        }
    });
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = sleep(delay) => true,
    }
}

/// While this slot holds a replica another slot also holds, look for a distinct one
/// every `diversify_interval` (±20%): up to [`MAX_DUPLICATE_DIALS`] dials, each closed
/// unless it lands on a replica no slot holds. Resolves with that connection, already
/// recorded as this slot's replica; the caller drains the duplicate only then, so the
/// slot never gives up a live connection for nothing.
async fn diversify(
    slot: &Slot,
    config: &AgentConfig,
    transports: &[Transport],
    stop: &CancellationToken,
    host: &mut usize,
) -> Established {
    // Each fruitless round doubles the wait (up to MAX_DIVERSIFY_INTERVAL), so an agent
    // on a deployment with fewer replicas than `connections` settles to a probe every
    // half hour instead of three handshakes a minute, forever.
    let mut interval = config.diversify_interval;
    // Only the first fruitless round is news; the rest would repeat it in every log.
    let mut fruitless = 0u32;
    loop {
        sleep(jittered(interval, DIVERSIFY_JITTER)).await;
        if !slot.shared.is_duplicate(slot.index) {
            interval = config.diversify_interval;
            fruitless = 0;
            continue;
        }
        let mut landed: Vec<String> = Vec::new();
        let mut last_error = None;
        for n in 0..MAX_DUPLICATE_DIALS {
            if n > 0 {
                sleep(redial_delay()).await;
            }
            *host = (*host + 1) % transports.len();
            let Some(attempt) = dial(slot, &transports[*host], config, stop, true).await else {
                // Stopping: the session's own stop branch ends it.
                return pending().await;
            };
            match attempt {
                Ok(est) => {
                    if slot.shared.replace_replica(slot.index, est.host_replica_id()) {
                        return est;
                    }
                    landed.push(est.host_replica_id().to_owned());
                }
                Err(AttemptError::RateLimited { message, retry_after }) => {
                    note_rate_limit(slot, retry_after);
                    last_error = Some(message);
                    break;
                }
                Err(AttemptError::Final { reason, message }) => {
                    // The same token as the live session's: it is refused for good too.
                    slot.shared.finish(reason, message);
                    return pending().await;
                }
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        interval = (interval * 2).min(MAX_DIVERSIFY_INTERVAL.max(config.diversify_interval));
        fruitless += 1;
        let last_error = last_error.as_deref().unwrap_or("");
        let message = "still no distinct host replica; keeping the duplicate connection";
        if fruitless == 1 {
            info!(replicas = ?landed, last_error, retry_in = ?interval, "{message}");
        } else {
            debug!(replicas = ?landed, last_error, retry_in = ?interval, rounds = fruitless, "{message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_delays_stay_in_range() {
        for _ in 0..1000 {
            let d = redial_delay();
            assert!((REDIAL_MIN..=REDIAL_MAX).contains(&d), "{d:?}");
            let j = jittered(Duration::from_secs(60), DIVERSIFY_JITTER);
            assert!((Duration::from_secs(48)..=Duration::from_secs(72)).contains(&j), "{j:?}");
        }
    }
}
