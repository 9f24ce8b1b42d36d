//! Wall-clock time as Unix milliseconds: the one clock behind Redis expiries, replica
//! tokens, rate windows, agent timestamps and the plugins' `clock.now`.
//!
//! # Layout
//!
//! One file: [`now_ms`] reads the clock, [`unix_ms`] converts a given time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// `t` as Unix milliseconds. A time before 1970 reads 0 rather than failing: callers
/// compare it with expiries, and "long expired" is the safe reading.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn unix_ms_counts_from_the_epoch() {
        assert_eq!(super::unix_ms(UNIX_EPOCH + Duration::from_millis(1234)), 1234);
        assert_eq!(super::unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert!(super::now_ms() > 1_700_000_000_000);
    }
}
