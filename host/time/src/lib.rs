//! Wall-clock time as Unix milliseconds: the one clock behind Redis expiries, replica
//! tokens, rate windows, agent timestamps and the plugins' `clock.now`.
//!
//! # Layout
//!
//! One file: [`now_ms`] reads the clock, [`unix_ms`] converts a given time, and
//! [`Expiring`] remembers keys until their own expiry (single-use nonces, ended sessions).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;
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

/// Keys remembered until their own expiry (Unix ms), at most `capacity` at once. Full,
/// it refuses new keys rather than forgetting live ones early: what it guards (a nonce
/// used once, a session ended) must not come back while it could still be presented.
pub struct Expiring<K> {
    capacity: usize,
    inner: Mutex<Remembered<K>>,
}

struct Remembered<K> {
    keys: HashMap<K, u64>,
    /// The same keys by expiry, earliest first, to drop them once expired.
    by_expiry: BinaryHeap<Reverse<(u64, K)>>,
}

/// Why [`Expiring::insert`] did not take a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotInserted {
    /// It is remembered already.
    Known,
    /// `capacity` live keys are remembered.
    Full,
}

impl<K: Eq + Hash + Ord + Clone> Expiring<K> {
    /// Remembers at most `capacity` keys at once.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Remembered { keys: HashMap::new(), by_expiry: BinaryHeap::new() }),
        }
    }

    /// Remembers `key` until `exp` (Unix ms); a key whose `exp` has passed is forgotten.
    pub fn insert(&self, key: K, exp: u64) -> Result<(), NotInserted> {
        let now = now_ms();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Remembered { keys, by_expiry } = &mut *inner;
        while by_expiry.peek().is_some_and(|Reverse((at, _))| *at < now) {
            let Reverse((_, old)) = by_expiry.pop().expect("peeked");
            keys.remove(&old);
        }
        if keys.get(&key).is_some_and(|at| *at >= now) {
            return Err(NotInserted::Known);
        }
        if keys.len() >= self.capacity {
            return Err(NotInserted::Full);
        }
        keys.insert(key.clone(), exp);
        by_expiry.push(Reverse((exp, key)));
        Ok(())
    }

    /// Whether `key` is remembered and not expired.
    pub fn contains(&self, key: &K) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.keys.get(key).is_some_and(|exp| *exp >= now_ms())
    }

    /// How many keys are remembered (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).keys.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::{now_ms, Expiring, NotInserted};

    #[test]
    fn expiring_keys_are_known_once_bounded_and_forgotten_when_expired() {
        let seen = Expiring::new(2);
        let later = now_ms() + 60_000;
        seen.insert("n1", later).unwrap();
        assert_eq!(seen.insert("n1", later), Err(NotInserted::Known));
        assert!(seen.contains(&"n1"));
        seen.insert("n2", later).unwrap();
        assert_eq!(seen.insert("n3", later), Err(NotInserted::Full), "full: refused, not forgotten");
        let bounded = Expiring::new(1);
        bounded.insert("old", now_ms() - 1).unwrap();
        assert!(!bounded.contains(&"old"));
        bounded.insert("new", later).unwrap();
        assert_eq!(bounded.len(), 1, "an expired key made room");
    }

    #[test]
    fn unix_ms_counts_from_the_epoch() {
        assert_eq!(super::unix_ms(UNIX_EPOCH + Duration::from_millis(1234)), 1234);
        assert_eq!(super::unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert!(super::now_ms() > 1_700_000_000_000);
    }
}
