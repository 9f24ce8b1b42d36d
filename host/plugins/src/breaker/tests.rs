//! Tests of the crash-loop breaker; time is passed in, so no test sleeps.

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
    assert_eq!(fail(b, at), Some(Transition::Tripped { failures: 3, cooldown: 30 * S, until: at + 30 * S }));
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
        toml::from_str("failures = 2\nwindow = \"1m\"\ncooldown = \"5s\"\nmax_cooldown = \"1h\"").unwrap();
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
    bad(BreakerConfig { cooldown: MAX_COOLDOWN + S, max_cooldown: MAX_COOLDOWN + S, ..config() }, "cooldown");
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
        assert_eq!(t, Some(Transition::TrialFailed { cooldown: expected * S, until: now + expected * S }));
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
