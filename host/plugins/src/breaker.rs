//! The crash-loop breaker: quarantines a plugin version that keeps failing, so a trapping
//! plugin costs one refusal per request instead of an instantiation, a trap and a log line.
//!
//! ```text
//!  Closed ──(≥ failures guest failures within window)──▶ Quarantined (until now + cooldown)
//!    ▲                                                        │ cooldown elapsed
//!    │ trial succeeds                                         ▼
//!    └─────────────────────────────────────────────────── HalfOpen: one trial call admitted
//!                                 trial fails: Quarantined again, cooldown doubled (capped)
//! ```
//!
//! [`Breaker`] is a pure state machine: the caller passes the time in, so every transition
//! is unit-tested without sleeping. [`SharedBreaker`] wraps it for the call path.
//!
//! Only guest failures count (trap, timeout, memory, stack, invalid result): the caller
//! decides which errors are the plugin's fault. Host-side failures (the pool is full, the
//! host is shutting down) must not quarantine a healthy plugin.
//!
//! Every admitted call carries an [`Admission`] token, and its outcome is reported with it.
//! Calls admitted in an earlier period (before a trip, or an expired trial) report into a
//! generation that no longer exists and are ignored: a slow call that started while the
//! breaker was closed cannot fail the half-open trial of a later period.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;

const DEFAULT_FAILURES: u32 = 5;
const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
const DEFAULT_MAX_COOLDOWN: Duration = Duration::from_secs(600);

/// Bounds of the config: the breaker keeps one timestamp per counted failure, and
/// quarantines longer than a day are better served by an admin unloading the plugin.
pub(crate) const MAX_FAILURES: u32 = 10_000;
pub(crate) const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);
pub(crate) const MAX_COOLDOWN: Duration = Duration::from_secs(24 * 3600);

/// Reasons are shown in the admin listing; a guest's trap message can be long.
const MAX_REASON_CHARS: usize = 256;

/// `breaker = { ... }` of a plugin slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Guest failures within `window` that quarantine the plugin. Default 5.
    pub failures: u32,
    /// How far back failures count. Default 30s.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// First quarantine length; doubled after each failed trial. Default 30s.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Cap of the doubled cooldown. Default 10m.
    #[serde(with = "humantime_serde")]
    pub max_cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: DEFAULT_FAILURES,
            window: DEFAULT_WINDOW,
            cooldown: DEFAULT_COOLDOWN,
            max_cooldown: DEFAULT_MAX_COOLDOWN,
        }
    }
}

impl BreakerConfig {
    /// Checks values serde cannot. Errors name the key relative to the table
    /// (`failures: ...`); the caller prefixes the table's path.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_FAILURES).contains(&self.failures) {
            return Err(format!("failures: must be between 1 and {MAX_FAILURES}, got {}", self.failures));
        }
        let check = |key: &str, value: Duration, max: Duration| {
            if value.is_zero() || value > max {
                Err(format!(
                    "{key}: must be between 1ms and {}, got {}",
                    humantime::format_duration(max),
                    humantime::format_duration(value)
                ))
            } else {
                Ok(())
            }
        };
        check("window", self.window, MAX_WINDOW)?;
        check("cooldown", self.cooldown, MAX_COOLDOWN)?;
        check("max_cooldown", self.max_cooldown, MAX_COOLDOWN)?;
        if self.max_cooldown < self.cooldown {
            return Err(format!(
                "max_cooldown: must be at least cooldown ({}), got {}",
                humantime::format_duration(self.cooldown),
                humantime::format_duration(self.max_cooldown)
            ));
        }
        Ok(())
    }
}

/// Permission to make one call. Report its outcome with [`Breaker::on_success`] or
/// [`Breaker::on_failure`]; dropping it silently is allowed (see [`Breaker::abandon`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "report the call's outcome with this admission"]
pub(crate) struct Admission {
    trial: bool,
    generation: u64,
}

impl Admission {
    /// Whether this call is the half-open trial that decides whether the plugin recovers.
    pub(crate) fn is_trial(&self) -> bool {
        self.trial
    }
}

/// A refused call: the plugin is quarantined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "quarantined by the crash-loop breaker after {failures} failure(s){}, retry in {}",
    reason.as_deref().map(|r| format!(" (last: {r})")).unwrap_or_default(),
    humantime::format_duration(round_up_to_ms(*retry_after))
)]
pub(crate) struct Quarantined {
    /// When a call may be admitted again (as the trial).
    pub until: Instant,
    /// `until - now` at refusal.
    pub retry_after: Duration,
    /// Guest failures counted since the breaker last closed.
    pub failures: u32,
    /// The failure that tripped the breaker.
    pub reason: Option<Arc<str>>,
}

impl Quarantined {
    /// How long until a call may be admitted again, as of `now`.
    pub(crate) fn remaining(&self, now: Instant) -> Duration {
        self.until.saturating_duration_since(now)
    }
}

/// A change of state the caller logs and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Closed → quarantined: `failures` guest failures within the window.
    Tripped { failures: u32, cooldown: Duration, until: Instant },
    /// Half-open → quarantined: the trial call failed; `cooldown` is the doubled one.
    TrialFailed { cooldown: Duration, until: Instant },
    /// Half-open → closed: the trial call succeeded.
    Recovered,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transition::Tripped { failures, cooldown, .. } => write!(
                f,
                "{failures} failures within the window, quarantined for {}",
                humantime::format_duration(*cooldown)
            ),
            Transition::TrialFailed { cooldown, .. } => {
                write!(f, "the trial call failed, quarantined for {}", humantime::format_duration(*cooldown))
            }
            Transition::Recovered => f.write_str("the trial call succeeded, closed"),
        }
    }
}

/// What the admin listing shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BreakerState {
    /// Calls are admitted. `recent_failures` are those still inside the window.
    Closed { recent_failures: u32 },
    /// Calls are refused until `until`.
    Quarantined {
        until: Instant,
        /// `until - now`.
        remaining: Duration,
        cooldown: Duration,
        /// Guest failures counted since the breaker last closed.
        failures: u32,
        /// Quarantines since the breaker last closed (1 + failed trials).
        trips: u32,
        reason: Option<Arc<str>>,
    },
    /// The cooldown has elapsed: the next call (or the one in flight) is the trial.
    HalfOpen { trial_in_flight: bool },
}

impl BreakerState {
    /// A short name for metrics labels and listings.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Quarantined { .. } => "quarantined",
            BreakerState::HalfOpen { .. } => "half-open",
        }
    }
}

#[derive(Debug)]
enum State {
    /// Times of the most recent failures still inside the window, oldest first; never
    /// more than `config.failures` of them (the breaker trips at that count).
    Closed {
        failures: VecDeque<Instant>,
    },
    Quarantined {
        until: Instant,
    },
    /// `trial`: when the trial in flight was admitted. It expires after the base
    /// cooldown so a trial whose outcome is never reported cannot wedge the breaker.
    HalfOpen {
        trial: Option<Instant>,
    },
}

/// The breaker of one plugin version. Pure: no clock, no I/O.
#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    state: State,
    /// Bumped on every change of period (trip, close, new trial, reset) so outcomes of
    /// calls admitted in an earlier period are recognised and ignored.
    generation: u64,
    /// The cooldown of the current (or next) quarantine.
    cooldown: Duration,
    /// Since the breaker last closed: counted failures and quarantines.
    failures_since_close: u32,
    trips: u32,
    reason: Option<Arc<str>>,
}

impl Breaker {
    /// A closed breaker. `config` should have passed [`BreakerConfig::validate`].
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: State::Closed { failures: VecDeque::new() },
            generation: 0,
            cooldown: config.cooldown,
            failures_since_close: 0,
            trips: 0,
            reason: None,
        }
    }

    /// Asks to make a call now. In half-open state exactly one call is admitted (the
    /// trial); the others are refused until its outcome is known or it expires.
    pub(crate) fn admit(&mut self, now: Instant) -> Result<Admission, Quarantined> {
        match self.state {
            State::Closed { .. } => Ok(Admission { trial: false, generation: self.generation }),
            State::Quarantined { until } if now < until => Err(self.refusal(until, now)),
            State::HalfOpen { trial: Some(started) } if now < started + self.config.cooldown => {
                Err(self.refusal(started + self.config.cooldown, now))
            }
            State::Quarantined { .. } | State::HalfOpen { .. } => {
                self.generation += 1;
                self.state = State::HalfOpen { trial: Some(now) };
                Ok(Admission { trial: true, generation: self.generation })
            }
        }
    }

    /// Reports a call that returned normally (a `Deny` decision is a success too).
    pub(crate) fn on_success(&mut self, admission: Admission) -> Option<Transition> {
        if admission.generation != self.generation {
            return None;
        }
        match self.state {
            State::HalfOpen { trial: Some(_) } if admission.trial => {
                self.close();
                Some(Transition::Recovered)
            }
            _ => None,
        }
    }

    /// Reports a guest failure. `reason` (the error's message) is kept for the listing
    /// only if this failure trips the breaker.
    pub(crate) fn on_failure(
        &mut self,
        admission: Admission,
        now: Instant,
        reason: &str,
    ) -> Option<Transition> {
        if admission.generation != self.generation {
            return None;
        }
        match &mut self.state {
            State::Closed { failures } => {
                while failures
                    .front()
                    .is_some_and(|&t| now.saturating_duration_since(t) >= self.config.window)
                {
                    failures.pop_front();
                }
                failures.push_back(now);
                self.failures_since_close = self.failures_since_close.saturating_add(1);
                let count = u32::try_from(failures.len()).unwrap_or(u32::MAX);
                if count < self.config.failures {
                    return None;
                }
                let until = self.quarantine(now, reason);
                Some(Transition::Tripped { failures: count, cooldown: self.cooldown, until })
            }
            State::HalfOpen { trial: Some(_) } if admission.trial => {
                self.failures_since_close = self.failures_since_close.saturating_add(1);
                self.cooldown = self.cooldown.saturating_mul(2).min(self.config.max_cooldown);
                let until = self.quarantine(now, reason);
                Some(Transition::TrialFailed { cooldown: self.cooldown, until })
            }
            _ => None,
        }
    }

    /// The call will not report an outcome (its future was dropped, the host refused it
    /// before reaching the guest). Frees the trial slot at once instead of waiting for
    /// the trial to expire; a no-op for ordinary calls.
    pub(crate) fn abandon(&mut self, admission: Admission) {
        if admission.trial && admission.generation == self.generation {
            if let State::HalfOpen { trial } = &mut self.state {
                *trial = None;
            }
        }
    }

    /// The state as of `now`, for the admin listing and metrics. A quarantine whose
    /// cooldown has elapsed reads as half-open even before the next call arrives.
    pub(crate) fn state(&self, now: Instant) -> BreakerState {
        match &self.state {
            State::Closed { failures } => BreakerState::Closed {
                recent_failures: failures
                    .iter()
                    .filter(|&&t| now.saturating_duration_since(t) < self.config.window)
                    .count()
                    .try_into()
                    .unwrap_or(u32::MAX),
            },
            State::Quarantined { until } if now < *until => BreakerState::Quarantined {
                until: *until,
                remaining: until.saturating_duration_since(now),
                cooldown: self.cooldown,
                failures: self.failures_since_close,
                trips: self.trips,
                reason: self.reason.clone(),
            },
            State::Quarantined { .. } => BreakerState::HalfOpen { trial_in_flight: false },
            State::HalfOpen { trial } => BreakerState::HalfOpen {
                trial_in_flight: trial.is_some_and(|started| now < started + self.config.cooldown),
            },
        }
    }

    /// Closes the breaker and forgets its history (an admin reload or explicit reset).
    pub(crate) fn reset(&mut self) {
        self.close();
    }

    fn close(&mut self) {
        self.generation += 1;
        self.state = State::Closed { failures: VecDeque::new() };
        self.cooldown = self.config.cooldown;
        self.failures_since_close = 0;
        self.trips = 0;
        self.reason = None;
    }

    fn quarantine(&mut self, now: Instant, reason: &str) -> Instant {
        self.generation += 1;
        let until = now + self.cooldown;
        self.state = State::Quarantined { until };
        self.trips = self.trips.saturating_add(1);
        self.reason = Some(truncate(reason, MAX_REASON_CHARS).into());
        until
    }

    fn refusal(&self, until: Instant, now: Instant) -> Quarantined {
        Quarantined {
            until,
            retry_after: until.saturating_duration_since(now),
            failures: self.failures_since_close,
            reason: self.reason.clone(),
        }
    }
}

/// A [`Breaker`] behind a mutex, cloned cheaply (one `Arc`) into every call. Critical
/// sections are a few comparisons; nothing blocks while holding the lock.
#[derive(Clone)]
pub(crate) struct SharedBreaker {
    inner: Arc<Mutex<Breaker>>,
}

impl fmt::Debug for SharedBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedBreaker").field(&*self.lock()).finish()
    }
}

impl SharedBreaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self { inner: Arc::new(Mutex::new(Breaker::new(config))) }
    }

    /// Asks to make a call. The permit reports the outcome; dropped without one (the
    /// call's future was cancelled) or [`Permit::abandon`]ed, it frees the half-open
    /// trial slot.
    pub(crate) fn admit(&self, now: Instant) -> Result<Permit, Quarantined> {
        let admission = self.lock().admit(now)?;
        Ok(Permit { breaker: self.clone(), admission: Some(admission) })
    }

    pub(crate) fn state(&self, now: Instant) -> BreakerState {
        self.lock().state(now)
    }

    pub(crate) fn reset(&self) {
        self.lock().reset();
    }

    /// Every update leaves the breaker consistent before anything can panic, so a
    /// poisoned lock holds a valid breaker.
    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An admitted call of a [`SharedBreaker`]. Owned (holds an `Arc`), so it can move into a
/// blocking task with the call.
#[derive(Debug)]
#[must_use = "report the call's outcome with succeeded() or failed()"]
pub(crate) struct Permit {
    breaker: SharedBreaker,
    admission: Option<Admission>,
}

impl Permit {
    /// Whether this call is the half-open trial.
    pub(crate) fn is_trial(&self) -> bool {
        self.admission.is_some_and(|a| a.is_trial())
    }

    /// The call returned normally.
    pub(crate) fn succeeded(mut self) -> Option<Transition> {
        let admission = self.admission.take()?;
        self.breaker.lock().on_success(admission)
    }

    /// The guest failed (trap, timeout, memory, stack, invalid result). `reason` (the
    /// error's message) shows in the listing if this failure trips the breaker.
    pub(crate) fn failed(mut self, now: Instant, reason: &str) -> Option<Transition> {
        let admission = self.admission.take()?;
        self.breaker.lock().on_failure(admission, now, reason)
    }

    /// The call ended without a verdict on the plugin (a host-side failure: no free
    /// instance slot, shutdown). Same as dropping the permit.
    pub(crate) fn abandon(self) {}
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            self.breaker.lock().abandon(admission);
        }
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// `retry in 0ns` reads like a bug when the quarantine ends within the millisecond.
fn round_up_to_ms(d: Duration) -> Duration {
    let ms = d.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
