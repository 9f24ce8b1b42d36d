//! The agent token in force, and when a workload token (`bwt1.`) must be renewed.
//!
//! A workload token reads `bwt1.<key id>.<base64url(JSON claims)>.<base64url(signature)>`.
//! The agent cannot verify the signature (only the host holds the key) and does not need
//! to: it reads `issued_at` and `expires_at` (Unix ms) only to schedule the renewal, and
//! anything it cannot read means "do not renew", never a panic or a refusal to start.
//! Any other token is a permanent static token and is never renewed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};

/// Every workload token starts with this (the host's `TOKEN_PREFIX`).
pub(crate) const WORKLOAD_TOKEN_PREFIX: &str = "bwt1.";

/// Longest token whose claims are read; the host refuses longer ones anyway.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Renew once this fraction of the lifetime has passed: late enough not to load the
/// host, early enough that a host outage of a third of the lifetime is survived.
const RENEW_NUMERATOR: u64 = 2;
const RENEW_DENOMINATOR: u64 = 3;

/// Renew at the latest this long before expiry.
const RENEW_MARGIN_MS: u64 = 1_000;

/// A freshly received token is renewed no sooner than this, so a host issuing tokens
/// that are (by the agent's reckoning) born old cannot make the agent renew in a loop.
pub(crate) const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(1);

/// The validity window of a workload token, in the host's Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetime {
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
}

/// When to act, counted from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// Until the renewal is due (zero: now).
    pub renew_in: Duration,
    /// Until the token expires (zero: it has).
    pub expires_in: Duration,
}

/// True for a workload token, the only kind that is ever renewed.
pub(crate) fn is_workload_token(token: &str) -> bool {
    token.starts_with(WORKLOAD_TOKEN_PREFIX)
}

impl Lifetime {
    /// The lifetime a workload token claims; `None` for a static token and for a
    /// workload token whose claims cannot be read or make no sense (expiry not after
    /// issue).
    pub(crate) fn of(token: &str) -> Option<Lifetime> {
        if token.len() > MAX_TOKEN_LEN || !is_workload_token(token) {
            return None;
        }
        let mut parts = token.split('.');
        let (_prefix, _kid, claims, _sig) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        // Read as a map, not a struct: serde would take `[1, 2]` for a struct too.
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&base64url_decode(claims)?).ok()?;
        let issued_at_ms = claims.get("issued_at")?.as_u64()?;
        let expires_at_ms = claims.get("expires_at")?.as_u64()?;
        (expires_at_ms > issued_at_ms).then_some(Lifetime { issued_at_ms, expires_at_ms })
    }

    fn length_ms(self) -> u64 {
        self.expires_at_ms - self.issued_at_ms
    }

    /// How long after issue the renewal is due: two thirds of the lifetime, but at least
    /// [`RENEW_MARGIN_MS`] before expiry.
    pub(crate) fn renew_after_ms(self) -> u64 {
        let length = self.length_ms();
        (length / RENEW_DENOMINATOR * RENEW_NUMERATOR
            + length % RENEW_DENOMINATOR * RENEW_NUMERATOR / RENEW_DENOMINATOR)
            .min(length.saturating_sub(RENEW_MARGIN_MS))
    }

    /// The schedule for a token that has lived `age_ms` (which may exceed its lifetime).
    pub(crate) fn schedule(self, age_ms: u64) -> Schedule {
        Schedule {
            renew_in: Duration::from_millis(self.renew_after_ms().saturating_sub(age_ms)),
            expires_in: Duration::from_millis(self.length_ms().saturating_sub(age_ms)),
        }
    }

    /// The schedule by the wall clock (`now_ms`, Unix ms): for a token of unknown age,
    /// such as the configured one. A clock behind the host's counts as a fresh token.
    pub(crate) fn schedule_at(self, now_ms: u64) -> Schedule {
        self.schedule(now_ms.saturating_sub(self.issued_at_ms))
    }

    /// The schedule for a token received `elapsed` ago from the host: timed by the
    /// monotonic clock, so clock skew between agent and host does not matter.
    pub(crate) fn schedule_fresh(self, elapsed: Duration) -> Schedule {
        let age_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let mut schedule = self.schedule(age_ms);
        schedule.renew_in = schedule.renew_in.max(MIN_RENEW_INTERVAL.saturating_sub(elapsed));
        schedule
    }
}

/// Base64url without padding (what the host writes); padding is tolerated.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub(crate) fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The token every new RPC presents. Replaced as a whole on renewal, so a reader never
/// sees the header of one token with the lifetime of another.
#[derive(Clone)]
pub(crate) struct CurrentToken {
    /// `Bearer <token>`, marked sensitive so it is never logged or indexed.
    pub header: MetadataValue<Ascii>,
    /// A workload token's validity window; `None`: never renewed.
    pub lifetime: Option<Lifetime>,
    /// When the host handed this token out (`None`: configured), for skew-proof timing.
    pub received: Option<Instant>,
}

impl std::fmt::Debug for CurrentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentToken")
            .field("lifetime", &self.lifetime)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl CurrentToken {
    /// `None` if the token cannot be sent as metadata.
    pub(crate) fn new(token: &str, received: Option<Instant>) -> Option<Self> {
        let mut header: MetadataValue<Ascii> = format!("Bearer {token}").parse().ok()?;
        header.set_sensitive(true);
        Some(Self { header, lifetime: Lifetime::of(token), received })
    }

    /// When this token must be renewed; `None` for a token that is never renewed.
    pub(crate) fn schedule(&self) -> Option<Schedule> {
        let lifetime = self.lifetime?;
        Some(match self.received {
            Some(at) => lifetime.schedule_fresh(at.elapsed()),
            None => lifetime.schedule_at(unix_now_ms()),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn encode(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token shaped like the host's, with a made-up signature.
    pub(crate) fn workload_token(issued_at: u64, expires_at: u64) -> String {
        let claims = format!(
            r#"{{"kind":"ci-job","workload_id":"w1","agent_id":"w1","services":["web"],"issued_at":{issued_at},"expires_at":{expires_at},"token_id":"t-1"}}"#
        );
        format!("bwt1.0123456789abcdef.{}.{}", encode(claims.as_bytes()), encode(&[7; 64]))
    }

    #[test]
    fn reads_the_lifetime_of_a_workload_token() {
        let token = workload_token(1_700_000_000_000, 1_700_003_600_000);
        assert_eq!(
            Lifetime::of(&token),
            Some(Lifetime { issued_at_ms: 1_700_000_000_000, expires_at_ms: 1_700_003_600_000 })
        );
        assert!(is_workload_token(&token));
    }

    #[test]
    fn malformed_and_static_tokens_are_never_renewed() {
        let good = workload_token(1000, 61_000);
        let parts: Vec<&str> = good.split('.').collect();
        let bad_claims = |json: &str| format!("bwt1.k.{}.{}", encode(json.as_bytes()), parts[3]);
        let cases = [
            "static-token-123".to_owned(),
            "".to_owned(),
            "bwt1.".to_owned(),
            "bwt1.a.b".to_owned(),
            format!("{good}.extra"),
            format!("bwt2.{}", &good[5..]),
            format!("bwt1.k.{}!.sig", parts[2]),
            bad_claims("not json"),
            bad_claims(r#"{"issued_at":5}"#),
            bad_claims(r#"{"issued_at":5,"expires_at":5}"#),
            bad_claims(r#"{"issued_at":9,"expires_at":5}"#),
            bad_claims(r#"{"issued_at":-1,"expires_at":5}"#),
            bad_claims(r#"{"issued_at":"1","expires_at":"5"}"#),
            bad_claims(r#"[1,2]"#),
            format!("bwt1.k.{}.s", "A".repeat(MAX_TOKEN_LEN)),
            "bwt1.\u{e9}.\u{e9}.\u{e9}".to_owned(),
        ];
        for token in &cases {
            assert_eq!(Lifetime::of(token), None, "{token:?}");
        }
        // Extra claims are fine.
        assert!(Lifetime::of(&bad_claims(r#"{"issued_at":1,"expires_at":5,"new":true}"#)).is_some());
    }

    #[test]
    fn renews_at_two_thirds_and_at_least_a_second_before_expiry() {
        let l = |length: u64| Lifetime { issued_at_ms: 10_000, expires_at_ms: 10_000 + length };
        assert_eq!(l(3_600_000).renew_after_ms(), 2_400_000);
        assert_eq!(l(90_000).renew_after_ms(), 60_000);
        assert_eq!(l(10).renew_after_ms(), 0, "shorter than the margin: at once");
        assert_eq!(l(1_000).renew_after_ms(), 0);
        assert_eq!(l(2_000).renew_after_ms(), 1_000, "two thirds would be 1.33 s; the margin wins");
        assert_eq!(l(3_001).renew_after_ms(), 2_000);
        assert_eq!(l(3_000_000_000_000_000_000).renew_after_ms(), 2_000_000_000_000_000_000, "no overflow");
    }

    #[test]
    fn schedules_by_wall_clock_for_configured_tokens() {
        let l = Lifetime { issued_at_ms: 1_000_000, expires_at_ms: 1_000_000 + 3_600_000 };
        let s = |now: u64| l.schedule_at(now);
        assert_eq!(
            s(1_000_000),
            Schedule { renew_in: Duration::from_secs(2400), expires_in: Duration::from_secs(3600) }
        );
        assert_eq!(
            s(1_000_000 + 600_000),
            Schedule { renew_in: Duration::from_secs(1800), expires_in: Duration::from_secs(3000) }
        );
        // Past the renewal point: at once.
        assert_eq!(s(1_000_000 + 3_000_000).renew_in, Duration::ZERO);
        assert_eq!(s(1_000_000 + 3_000_000).expires_in, Duration::from_secs(600));
        // Expired by the agent's clock: still at once; the host has the last word.
        assert_eq!(s(u64::MAX), Schedule { renew_in: Duration::ZERO, expires_in: Duration::ZERO });
        // A clock behind the host's: as if just issued.
        assert_eq!(s(0), s(1_000_000));
    }

    #[test]
    fn schedules_fresh_tokens_by_their_age_and_never_in_a_loop() {
        let l = Lifetime { issued_at_ms: 50, expires_at_ms: 50 + 90_000 };
        assert_eq!(
            l.schedule_fresh(Duration::ZERO),
            Schedule { renew_in: Duration::from_secs(60), expires_in: Duration::from_secs(90) }
        );
        assert_eq!(l.schedule_fresh(Duration::from_secs(59)).renew_in, Duration::from_secs(1));
        assert_eq!(l.schedule_fresh(Duration::from_secs(100)).renew_in, Duration::ZERO);
        // A token too short to renew sensibly is still not renewed in a busy loop.
        let tiny = Lifetime { issued_at_ms: 0, expires_at_ms: 500 };
        assert_eq!(tiny.schedule_fresh(Duration::ZERO).renew_in, MIN_RENEW_INTERVAL);
        assert_eq!(tiny.schedule_fresh(Duration::from_millis(400)).renew_in, Duration::from_millis(600));
    }

    #[test]
    fn current_token_is_sensitive_and_knows_its_kind() {
        let t = CurrentToken::new("static", None).unwrap();
        assert!(t.header.is_sensitive());
        assert_eq!(t.header.to_str().unwrap(), "Bearer static");
        assert!(t.schedule().is_none(), "static tokens are never renewed");
        assert!(!format!("{t:?}").contains("static"), "Debug never shows the token");
        let now = unix_now_ms();
        let w = CurrentToken::new(&workload_token(now, now + 3_600_000), None).unwrap();
        let s = w.schedule().unwrap();
        assert!(s.renew_in > Duration::from_secs(2390) && s.renew_in <= Duration::from_secs(2400), "{s:?}");
        assert!(CurrentToken::new("bad\ntoken", None).is_none());
    }
}
