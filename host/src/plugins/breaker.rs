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
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn config() -> BreakerConfig {
        BreakerConfig { failures: 3, window: 10 * S, cooldown: 30 * S, max_cooldown: 100 * S }
    }

    /// Admits a call at `now` and fails it.
    fn fail(b: &mut Breaker, now: Instant) -> Option<Transition> {
        let a = b.admit(now).expect("admitted");
        b.on_failure(a, now, "trap: unreachable")
    }

    /// Trips a fresh breaker at `t0` (3 failures at t0, t0+1s, t0+2s); returns when.
    fn trip(b: &mut Breaker, t0: Instant) -> Instant {
        assert_eq!(fail(b, t0), None);
        assert_eq!(fail(b, t0 + S), None);
        let at = t0 + 2 * S;
        assert_eq!(
            fail(b, at),
            Some(Transition::Tripped { failures: 3, cooldown: 30 * S, until: at + 30 * S })
        );
        at
    }

    #[test]
    fn config_defaults_and_toml() {
        let c: BreakerConfig = toml::from_str("").unwrap();
        assert_eq!(c, BreakerConfig::default());
        assert_eq!(c.failures, 5);
        assert_eq!(c.window, 30 * S);
        assert_eq!(c.cooldown, 30 * S);
        assert_eq!(c.max_cooldown, 600 * S);
        c.validate().unwrap();

        let c: BreakerConfig =
            toml::from_str("failures = 2\nwindow = \"1m\"\ncooldown = \"5s\"\nmax_cooldown = \"1h\"")
                .unwrap();
        assert_eq!(c, BreakerConfig { failures: 2, window: 60 * S, cooldown: 5 * S, max_cooldown: 3600 * S });
        c.validate().unwrap();

        let err = toml::from_str::<BreakerConfig>("failure = 2").unwrap_err().to_string();
        assert!(err.contains("unknown field `failure`"), "{err}");
    }

    #[test]
    fn config_validate_names_the_key() {
        let bad = |c: BreakerConfig, key: &str| {
            let err = c.validate().unwrap_err();
            assert!(err.starts_with(&format!("{key}: ")), "{err}");
        };
        bad(BreakerConfig { failures: 0, ..config() }, "failures");
        bad(BreakerConfig { failures: MAX_FAILURES + 1, ..config() }, "failures");
        bad(BreakerConfig { window: Duration::ZERO, ..config() }, "window");
        bad(BreakerConfig { window: MAX_WINDOW + S, ..config() }, "window");
        bad(BreakerConfig { cooldown: Duration::ZERO, ..config() }, "cooldown");
        bad(BreakerConfig { max_cooldown: 10 * S, ..config() }, "max_cooldown");
        bad(
            BreakerConfig { cooldown: MAX_COOLDOWN + S, max_cooldown: MAX_COOLDOWN + S, ..config() },
            "cooldown",
        );
        config().validate().unwrap();
    }

    #[test]
    fn closed_admits_and_successes_do_not_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        for i in 0..100 {
            let a = b.admit(t0 + i * S).unwrap();
            assert!(!a.is_trial());
            assert_eq!(b.on_success(a), None);
        }
        assert_eq!(b.state(t0 + 100 * S), BreakerState::Closed { recent_failures: 0 });
    }

    #[test]
    fn trips_after_failures_within_window_and_refuses() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        assert_eq!(fail(&mut b, t0), None);
        assert_eq!(b.state(t0), BreakerState::Closed { recent_failures: 1 });
        // The first failure leaves the window (10s) as the next three come in.
        let at = trip(&mut b, t0 + 10 * S);
        let until = at + 30 * S;

        let refused = b.admit(at + 10 * S).unwrap_err();
        assert_eq!(refused.until, until);
        assert_eq!(refused.retry_after, 20 * S);
        assert_eq!(refused.failures, 4);
        assert_eq!(refused.reason.as_deref(), Some("trap: unreachable"));
        assert_eq!(refused.remaining(at + 25 * S), 5 * S);
        assert_eq!(refused.remaining(until + S), Duration::ZERO);
        let msg = refused.to_string();
        assert!(msg.contains("after 4 failure(s) (last: trap: unreachable), retry in 20s"), "{msg}");

        assert_eq!(
            b.state(at),
            BreakerState::Quarantined {
                until,
                remaining: 30 * S,
                cooldown: 30 * S,
                failures: 4,
                trips: 1,
                reason: Some("trap: unreachable".into())
            }
        );
        // Refused right up to the end of the cooldown.
        assert!(b.admit(until - Duration::from_nanos(1)).is_err());
    }

    #[test]
    fn window_slides() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        // Two failures, then the window (10s) passes the first one exactly at t0+10s.
        assert_eq!(fail(&mut b, t0), None);
        assert_eq!(fail(&mut b, t0 + 5 * S), None);
        assert_eq!(b.state(t0 + 10 * S), BreakerState::Closed { recent_failures: 1 });
        assert_eq!(fail(&mut b, t0 + 10 * S), None, "the failure at t0 left the window");
        assert_eq!(b.state(t0 + 10 * S), BreakerState::Closed { recent_failures: 2 });
        // t0+5 and t0+10 are still inside at t0+14.9s: the third trips.
        let at = t0 + 14 * S + Duration::from_millis(900);
        assert!(matches!(fail(&mut b, at), Some(Transition::Tripped { failures: 3, .. })));
        // Failures spread wider than the window never trip.
        let mut b = Breaker::new(config());
        for i in 0..50 {
            assert_eq!(fail(&mut b, t0 + i * 5 * S), None);
        }
        assert_eq!(b.state(t0 + 245 * S), BreakerState::Closed { recent_failures: 2 });
    }

    #[test]
    fn half_open_admits_exactly_one_trial_and_success_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        let until = trip(&mut b, t0) + 30 * S;
        assert_eq!(b.state(until), BreakerState::HalfOpen { trial_in_flight: false });

        let trial = b.admit(until).unwrap();
        assert!(trial.is_trial());
        assert_eq!(b.state(until), BreakerState::HalfOpen { trial_in_flight: true });
        for i in 0..5 {
            let refused = b.admit(until + i * S).unwrap_err();
            assert_eq!(refused.until, until + 30 * S, "the trial expires after the base cooldown");
        }
        assert_eq!(b.on_success(trial), Some(Transition::Recovered));
        assert_eq!(b.state(until + S), BreakerState::Closed { recent_failures: 0 });
        let a = b.admit(until + S).unwrap();
        assert!(!a.is_trial());
        // History is forgotten: it takes the full count to trip again.
        assert_eq!(b.on_failure(a, until + S, "x"), None);
        assert_eq!(fail(&mut b, until + 2 * S), None);
        assert!(
            matches!(fail(&mut b, until + 3 * S), Some(Transition::Tripped { cooldown, .. }) if cooldown == 30 * S)
        );
    }

    #[test]
    fn failed_trials_double_the_cooldown_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        let mut now = trip(&mut b, t0) + 30 * S;
        // 30s → 60s → 100s (cap) → 100s.
        for (expected, trips) in [(60, 2), (100, 3), (100, 4)] {
            assert!(b.admit(now - Duration::from_millis(1)).is_err());
            let trial = b.admit(now).unwrap();
            assert!(trial.is_trial());
            let t = b.on_failure(trial, now, "timeout after 100ms");
            assert_eq!(
                t,
                Some(Transition::TrialFailed { cooldown: expected * S, until: now + expected * S })
            );
            match b.state(now) {
                BreakerState::Quarantined { cooldown, trips: n, reason, .. } => {
                    assert_eq!(cooldown, expected * S);
                    assert_eq!(n, trips);
                    assert_eq!(reason.as_deref(), Some("timeout after 100ms"));
                }
                other => panic!("{other:?}"),
            }
            now += expected * S;
        }
        // A successful trial resets the cooldown to the base for the next trip.
        let trial = b.admit(now).unwrap();
        assert_eq!(b.on_success(trial), Some(Transition::Recovered));
        assert_eq!(trip(&mut b, now), now + 2 * S);
    }

    #[test]
    fn abandoned_trial_expires_after_the_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        let until = trip(&mut b, t0) + 30 * S;
        let lost = b.admit(until).unwrap();
        assert!(lost.is_trial());
        // Its outcome never comes. Until the base cooldown passes, others are refused...
        assert!(b.admit(until + 29 * S).is_err());
        // ...then the next caller becomes the trial.
        let trial = b.admit(until + 30 * S).unwrap();
        assert!(trial.is_trial());
        // The lost trial reporting late is ignored: only the current trial decides.
        assert_eq!(b.on_success(lost), None);
        assert_eq!(b.on_failure(lost, until + 31 * S, "late"), None);
        assert_eq!(b.state(until + 31 * S), BreakerState::HalfOpen { trial_in_flight: true });
        assert_eq!(b.on_success(trial), Some(Transition::Recovered));
    }

    #[test]
    fn abandon_frees_the_trial_slot_at_once() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        let until = trip(&mut b, t0) + 30 * S;
        let trial = b.admit(until).unwrap();
        b.abandon(trial);
        assert_eq!(b.state(until), BreakerState::HalfOpen { trial_in_flight: false });
        let next = b.admit(until + S).unwrap();
        assert!(next.is_trial());
        // Abandoning a stale admission or an ordinary call changes nothing.
        b.abandon(trial);
        assert_eq!(b.state(until + S), BreakerState::HalfOpen { trial_in_flight: true });
    }

    #[test]
    fn stale_outcomes_are_ignored() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        // A slow call admitted while closed...
        let slow = b.admit(t0).unwrap();
        let until = trip(&mut b, t0) + 30 * S;
        // ...fails while quarantined: not counted, nothing extended.
        assert_eq!(b.on_failure(slow, t0 + 5 * S, "late"), None);
        assert!(matches!(b.state(t0 + 5 * S), BreakerState::Quarantined { failures: 3, trips: 1, .. }));
        // ...or fails during the trial: does not decide it.
        let trial = b.admit(until).unwrap();
        assert_eq!(b.on_failure(slow, until, "late"), None);
        assert_eq!(b.on_success(slow), None);
        assert_eq!(b.state(until), BreakerState::HalfOpen { trial_in_flight: true });
        assert_eq!(b.on_success(trial), Some(Transition::Recovered));
        // ...or fails after recovery: it belongs to the period before, not counted.
        assert_eq!(b.on_failure(slow, until + S, "late"), None);
        assert_eq!(b.state(until + S), BreakerState::Closed { recent_failures: 0 });
    }

    #[test]
    fn reset_closes_from_any_state() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        let at = trip(&mut b, t0);
        b.reset();
        assert_eq!(b.state(at), BreakerState::Closed { recent_failures: 0 });
        assert!(!b.admit(at).unwrap().is_trial());

        let until = trip(&mut b, at) + 30 * S;
        let trial = b.admit(until).unwrap();
        b.reset();
        assert_eq!(b.on_failure(trial, until, "x"), None, "the reset ended the trial's period");
        assert_eq!(b.state(until), BreakerState::Closed { recent_failures: 0 });
        assert_eq!(b.state(until).name(), "closed");
    }

    #[test]
    fn transitions_display() {
        let until = Instant::now();
        let tripped = Transition::Tripped { failures: 5, cooldown: 30 * S, until };
        assert_eq!(tripped.to_string(), "5 failures within the window, quarantined for 30s");
        let failed = Transition::TrialFailed { cooldown: 60 * S, until };
        assert_eq!(failed.to_string(), "the trial call failed, quarantined for 1m");
        assert_eq!(Transition::Recovered.to_string(), "the trial call succeeded, closed");
    }

    #[test]
    fn long_reasons_are_truncated() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig { failures: 1, ..config() });
        let a = b.admit(t0).unwrap();
        b.on_failure(a, t0, &"é".repeat(1000));
        match b.state(t0) {
            BreakerState::Quarantined { reason: Some(r), .. } => {
                assert_eq!(r.chars().count(), MAX_REASON_CHARS + 1);
                assert!(r.ends_with('…'));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shared_breaker_permits() {
        let t0 = Instant::now();
        let shared = SharedBreaker::new(config());
        for i in 0..2 {
            assert_eq!(shared.admit(t0 + i * S).unwrap().failed(t0 + i * S, "trap"), None);
        }
        let p = shared.admit(t0 + 2 * S).unwrap();
        assert!(!p.is_trial());
        assert!(matches!(p.failed(t0 + 2 * S, "trap"), Some(Transition::Tripped { .. })));
        assert_eq!(shared.state(t0 + 2 * S).name(), "quarantined");
        assert!(shared.admit(t0 + 3 * S).is_err());

        let until = t0 + 32 * S;
        // A trial permit dropped without an outcome (cancelled call) frees the slot.
        let trial = shared.admit(until).unwrap();
        assert!(trial.is_trial());
        assert!(shared.admit(until).is_err());
        drop(trial);
        assert_eq!(shared.state(until), BreakerState::HalfOpen { trial_in_flight: false });
        // So does abandoning it explicitly.
        shared.admit(until).unwrap().abandon();
        assert_eq!(shared.state(until), BreakerState::HalfOpen { trial_in_flight: false });
        let trial = shared.admit(until).unwrap();
        assert!(trial.is_trial());
        assert_eq!(trial.succeeded(), Some(Transition::Recovered));
        assert_eq!(shared.state(until).name(), "closed");

        // Permits move across threads with their call.
        let p = shared.admit(until).unwrap();
        let handle = std::thread::spawn(move || p.failed(until, "trap"));
        assert_eq!(handle.join().unwrap(), None);
        assert_eq!(shared.state(until), BreakerState::Closed { recent_failures: 1 });
        shared.reset();
        assert_eq!(shared.state(until), BreakerState::Closed { recent_failures: 0 });
    }
}
