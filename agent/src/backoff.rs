//! Reconnect delays: exponential growth with jitter, reset after a healthy period.

use std::time::Duration;

use crate::config::ConfigError;

/// Reconnect delay policy.
///
/// The n-th consecutive failure waits `min(initial * multiplier^(n-1), max)`, spread by
/// ±`jitter` (a fraction) so that many agents cut off at once do not return in step.
/// A connection that stayed up for `reset_after` starts the sequence over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Ceiling before jitter.
    pub max: Duration,
    /// Growth per consecutive failure (≥ 1).
    pub multiplier: f64,
    /// Spread as a fraction of the delay, in `[0, 1)`: 0.2 means ±20%.
    pub jitter: f64,
    /// A connection healthy this long resets the delay to `initial`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    /// Connection failures: 1 s growing ×1.6 to 20 s, ±20% jitter, reset after 25 s up.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(20),
            multiplier: 1.6,
            jitter: 0.2,
            reset_after: Duration::from_secs(25),
        }
    }
}

impl Backoff {
    /// Authentication or version rejections: 30 s doubling to 5 min, ±20% jitter. A
    /// wrong token does not fix itself; hammering the host would only load its
    /// authorizer.
    pub fn auth_default() -> Self {
        Self {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.2,
            reset_after: Duration::from_secs(25),
        }
    }

    pub(crate) fn validate(&self, field: &'static str) -> Result<(), ConfigError> {
        let bad = |reason: String| Err(ConfigError::Invalid { field, reason });
        if self.initial.is_zero() {
            return bad("initial delay must be greater than zero".into());
        }
        if self.max < self.initial {
            return bad(format!("max {:?} is below initial {:?}", self.max, self.initial));
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return bad(format!("multiplier {} must be a finite number ≥ 1", self.multiplier));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return bad(format!("jitter {} must be in [0, 1)", self.jitter));
        }
        Ok(())
    }
}

/// Where a [`Backoff`] sequence stands. Sans-IO: the caller supplies randomness.
#[derive(Debug, Clone)]
pub struct BackoffState {
    policy: Backoff,
    /// Consecutive failures so far.
    failures: u32,
}

impl BackoffState {
    /// A fresh sequence.
    pub fn new(policy: Backoff) -> Self {
        Self { policy, failures: 0 }
    }

    /// Forget past failures: the next delay is `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures recorded.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Record a failure and return the delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random::<f64>())
    }

    /// As [`next_delay`](Self::next_delay) with `unit` in `[0, 1)` as the random draw.
    pub fn next_delay_with(&mut self, unit: f64) -> Duration {
        let p = &self.policy;
        let growth = p.multiplier.powi(self.failures.min(64) as i32);
        let base = (p.initial.as_secs_f64() * growth).min(p.max.as_secs_f64());
        self.failures = self.failures.saturating_add(1);
        let spread = 1.0 + p.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64(base * spread)
    }

    /// A connection stayed up for `healthy`: reset if that is long enough.
    pub fn connection_ended_after(&mut self, healthy: Duration) {
        if healthy >= self.policy.reset_after {
            self.reset();
        }
    }
}

/// Retries of one failed call to the host (a token renewal, a work poll or report): from
/// 1 s, doubling to 30 s, so a short host hiccup costs little and a struggling host is
/// not hammered.
pub(crate) const CALL_RETRY: Backoff = Backoff {
    initial: std::time::Duration::from_secs(1),
    max: std::time::Duration::from_secs(30),
    multiplier: 2.0,
    jitter: 0.2,
    reset_after: std::time::Duration::ZERO,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_geometrically_to_the_cap_without_jitter() {
        let mut b = BackoffState::new(Backoff { jitter: 0.0, ..Backoff::default() });
        let secs: Vec<f64> = (0..10).map(|_| b.next_delay_with(0.5).as_secs_f64()).collect();
        let expected = [1.0, 1.6, 2.56, 4.096, 6.5536, 10.48576, 16.777216, 20.0, 20.0, 20.0];
        for (got, want) in secs.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{secs:?}");
        }
        assert_eq!(b.failures(), 10);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let policy = Backoff::default();
        for failures in 0..12 {
            for unit in [0.0, 0.25, 0.5, 0.999_999] {
                let mut b = BackoffState::new(policy);
                for _ in 0..failures {
                    b.next_delay_with(0.5);
                }
                let base = (1.6f64.powi(failures)).min(20.0);
                let got = b.next_delay_with(unit).as_secs_f64();
                assert!(got >= base * 0.8 - 1e-9 && got <= base * 1.2 + 1e-9, "{failures} {unit} {got}");
            }
        }
        // Real randomness too.
        let mut b = BackoffState::new(policy);
        for _ in 0..100 {
            let d = b.next_delay().as_secs_f64();
            assert!((0.8..=24.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn resets_only_after_a_healthy_period() {
        let mut b = BackoffState::new(Backoff { jitter: 0.0, ..Backoff::default() });
        b.next_delay_with(0.5);
        b.next_delay_with(0.5);
        b.connection_ended_after(Duration::from_secs(3));
        assert_eq!(
            b.next_delay_with(0.5),
            Duration::from_secs_f64(2.56),
            "short-lived connection keeps growing"
        );
        b.connection_ended_after(Duration::from_secs(25));
        assert_eq!(b.next_delay_with(0.5), Duration::from_secs(1));
    }

    #[test]
    fn auth_backoff_is_harder() {
        let mut auth = BackoffState::new(Backoff { jitter: 0.0, ..Backoff::auth_default() });
        let mut normal = BackoffState::new(Backoff { jitter: 0.0, ..Backoff::default() });
        for _ in 0..10 {
            assert!(auth.next_delay_with(0.5) > normal.next_delay_with(0.5));
        }
        assert_eq!(auth.next_delay_with(0.5), Duration::from_secs(300));
    }

    #[test]
    fn validation() {
        assert!(Backoff::default().validate("backoff").is_ok());
        let bad = [
            Backoff { initial: Duration::ZERO, ..Backoff::default() },
            Backoff { max: Duration::from_millis(10), ..Backoff::default() },
            Backoff { multiplier: 0.9, ..Backoff::default() },
            Backoff { multiplier: f64::NAN, ..Backoff::default() },
            Backoff { jitter: 1.0, ..Backoff::default() },
        ];
        for b in bad {
            assert!(b.validate("backoff").is_err(), "{b:?}");
        }
    }
}
