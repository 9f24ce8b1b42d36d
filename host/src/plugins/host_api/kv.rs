//! The `burrow:plugin/kv` host import: a key-value store with TTL, namespaced by plugin.
//!
//! Two backends behind one [`KvStore`]:
//!
//! - **memory** (single-process mode): a map per namespace. Expired entries are purged
//!   lazily when touched, all of a namespace's expired entries when it hits its quota,
//!   and by a bounded sweep (at most [`SWEEP_BATCH`] per namespace every
//!   [`SWEEP_EVERY`], piggy-backed on store operations, so no task has to be spawned).
//!   Each namespace holds at most [`KvLimits::max_keys`] live keys.
//! - **Redis** (cluster mode): every replica sees the same entries, stored by
//!   [`Store::kv_get`] and friends under `P:plugin-kv:{<plugin>}:<key>`; Redis expires
//!   them itself. Key and value sizes are checked, but the key-count quota is NOT
//!   enforced there: counting a namespace's keys would cost a round trip (or a `SCAN`)
//!   per write; Redis's own `maxmemory` bounds what plugins can store.
//!
//! Counters are stored as decimal text (as Redis stores them), so both backends agree on
//! what `get` returns after `increment`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::store::{Store, StoreError};
use crate::plugins::bindings::kv;

/// Longest key, in bytes (the WIT contract's limit).
pub(crate) const MAX_KEY_BYTES: usize = 512;
/// Largest value, in bytes (the WIT contract's limit).
pub(crate) const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Default quota of live keys per plugin (memory backend).
pub(crate) const DEFAULT_MAX_KEYS: usize = 10_000;
/// Longer TTLs are cut to this: far beyond any host's uptime, and well inside what both
/// `Instant` arithmetic and Redis's `PX` accept.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// How often the memory backend sweeps every namespace for expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// At most this many expired entries are dropped per namespace per sweep, so a sweep
/// never stalls the call that triggers it.
const SWEEP_BATCH: usize = 256;

/// Per-namespace limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KvLimits {
    /// Live keys per namespace (memory backend only).
    pub max_keys: usize,
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        Self { max_keys: DEFAULT_MAX_KEYS, max_key_bytes: MAX_KEY_BYTES, max_value_bytes: MAX_VALUE_BYTES }
    }
}

/// Why a key-value operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KvError {
    /// The backend cannot be reached or answered with an error.
    #[error("key-value store unavailable: {0}")]
    Unavailable(String),
    #[error("key of {len} bytes is over the {max}-byte limit")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value of {len} bytes is over the {max}-byte limit")]
    ValueTooLarge { len: usize, max: usize },
    #[error("namespace is full ({max} keys)")]
    QuotaExceeded { max: usize },
    /// `increment` on a value that is not a decimal `s64`.
    #[error("value is not an integer counter")]
    NotACounter,
    /// `increment` would leave the `s64` range.
    #[error("counter would overflow")]
    Overflow,
}

impl From<StoreError> for KvError {
    fn from(e: StoreError) -> Self {
        KvError::Unavailable(e.to_string())
    }
}

impl From<KvError> for kv::KvError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::KeyTooLarge { .. } | KvError::ValueTooLarge { .. } => kv::KvError::TooLarge,
            KvError::QuotaExceeded { .. } => kv::KvError::QuotaExceeded,
            // The contract has no case for misuse of a counter; `unavailable` carries the
            // reason, which is what Redis's own error for it becomes too.
            e @ (KvError::Unavailable(_) | KvError::NotACounter | KvError::Overflow) => {
                kv::KvError::Unavailable(match e {
                    KvError::Unavailable(reason) => reason,
                    other => other.to_string(),
                })
            }
        }
    }
}

/// The store every plugin's `kv` import uses; cheap to clone.
#[derive(Clone)]
pub(crate) struct KvStore {
    backend: Backend,
    limits: KvLimits,
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<Memory>),
    Redis(Arc<Store>),
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.backend {
            Backend::Memory(_) => "memory".to_owned(),
            Backend::Redis(store) => format!("redis {}", store.describe()),
        };
        f.debug_struct("KvStore").field("backend", &backend).field("limits", &self.limits).finish()
    }
}

impl KvStore {
    /// An in-process store (single-process mode).
    pub(crate) fn memory(limits: KvLimits) -> KvStore {
        KvStore { backend: Backend::Memory(Arc::new(Memory::new())), limits }
    }

    /// A store in the cluster's Redis, shared by every replica.
    pub(crate) fn redis(store: Arc<Store>, limits: KvLimits) -> KvStore {
        KvStore { backend: Backend::Redis(store), limits }
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        match key.len() > self.limits.max_key_bytes {
            true => Err(KvError::KeyTooLarge { len: key.len(), max: self.limits.max_key_bytes }),
            false => Ok(()),
        }
    }

    /// The value of `key`, or `None` when it is missing or expired.
    pub(crate) async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.check_key(key)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.get(namespace, key, Instant::now())),
            Backend::Redis(store) => Ok(store.kv_get(namespace, key).await?),
        }
    }

    /// Stores `value` under `key`, replacing any value and TTL it had. With a `ttl`
    /// the entry disappears after it (zero: at once, so nothing is stored).
    pub(crate) async fn set(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        self.check_key(key)?;
        if value.len() > self.limits.max_value_bytes {
            return Err(KvError::ValueTooLarge { len: value.len(), max: self.limits.max_value_bytes });
        }
        let ttl = ttl.map(|t| t.min(MAX_TTL));
        match &self.backend {
            Backend::Memory(m) => m.set(namespace, key, value, ttl, self.limits.max_keys, Instant::now()),
            Backend::Redis(store) => Ok(store.kv_set(namespace, key, &value, ttl).await?),
        }
    }

    /// Deletes `key`; true when it existed (and had not expired).
    pub(crate) async fn delete(&self, namespace: &str, key: &str) -> Result<bool, KvError> {
        self.check_key(key)?;
        match &self.backend {
            Backend::Memory(m) => Ok(m.delete(namespace, key, Instant::now())),
            Backend::Redis(store) => Ok(store.kv_delete(namespace, key).await?),
        }
    }

    /// Adds `delta` to the counter at `key` (missing counts as 0) and returns the new
    /// value. `ttl` applies only when this call creates the counter, so a fixed window
    /// starts with its first hit and is not extended by later ones.
    pub(crate) async fn increment(
        &self,
        namespace: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, KvError> {
        self.check_key(key)?;
        let ttl = ttl.map(|t| t.min(MAX_TTL));
        match &self.backend {
            Backend::Memory(m) => {
                m.increment(namespace, key, delta, ttl, self.limits.max_keys, Instant::now())
            }
            Backend::Redis(store) => Ok(store.kv_increment(namespace, key, delta, ttl).await?),
        }
    }
}

/// One plugin's view of the store: what the generated `kv::Host` is implemented on. The
/// runtime keeps one in each call's store data, with the plugin's name as namespace.
pub(crate) struct KvCtx {
    pub store: KvStore,
    pub namespace: Arc<str>,
}

impl KvCtx {
    fn failed(&self, op: &str, e: KvError) -> kv::KvError {
        // Debug: a plugin that ignores errors could otherwise flood the log while Redis is
        // away; the guest gets the reason and can log it itself.
        tracing::debug!(plugin = %self.namespace, op, error = %e, "plugin kv operation failed");
        e.into()
    }
}

impl kv::Host for KvCtx {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        self.store.get(&self.namespace, &key).await.map_err(|e| self.failed("get", e))
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), kv::KvError> {
        let ttl = ttl_ms.map(Duration::from_millis);
        self.store.set(&self.namespace, &key, value, ttl).await.map_err(|e| self.failed("set", e))
    }

    async fn delete(&mut self, key: String) -> Result<bool, kv::KvError> {
        self.store.delete(&self.namespace, &key).await.map_err(|e| self.failed("delete", e))
    }

    async fn increment(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> Result<i64, kv::KvError> {
        let ttl = ttl_ms.map(Duration::from_millis);
        self.store.increment(&self.namespace, &key, delta, ttl).await.map_err(|e| self.failed("increment", e))
    }
}

/// The memory backend.
struct Memory {
    namespaces: RwLock<HashMap<Box<str>, Arc<Mutex<Namespace>>>>,
    next_sweep: Mutex<Instant>,
}

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

/// One plugin's entries, with an index of expiry times so expired entries can be found
/// without scanning the map.
#[derive(Default)]
struct Namespace {
    entries: HashMap<Box<str>, Entry>,
    expiries: BTreeSet<(Instant, Box<str>)>,
}

impl Namespace {
    /// The entry, unless it is missing or expired (an expired one is dropped).
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.entries.get(key).is_some_and(|e| e.expired(now)) {
            self.remove(key);
        }
        self.entries.get_mut(key)
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        if let Some(at) = entry.expires {
            self.expiries.remove(&(at, Box::from(key)));
        }
        Some(entry)
    }

    fn insert(&mut self, key: &str, entry: Entry) {
        self.remove(key);
        if let Some(at) = entry.expires {
            self.expiries.insert((at, Box::from(key)));
        }
        self.entries.insert(Box::from(key), entry);
    }

    /// Drops up to `limit` expired entries, oldest expiry first.
    fn purge_expired(&mut self, now: Instant, limit: usize) -> usize {
        let mut purged = 0;
        while purged < limit {
            match self.expiries.first() {
                Some((at, _)) if *at <= now => {
                    let (_, key) = self.expiries.pop_first().expect("first() was Some");
                    self.entries.remove(&key);
                    purged += 1;
                }
                _ => break,
            }
        }
        purged
    }

    /// Whether `key` may be created: always when it exists; otherwise only under the
    /// quota, counting live entries (expired ones are purged first, all of them, since
    /// a full namespace is exactly when they must not count).
    fn make_room(&mut self, key: &str, max_keys: usize, now: Instant) -> Result<(), KvError> {
        if self.entries.contains_key(key) || self.entries.len() < max_keys {
            return Ok(());
        }
        self.purge_expired(now, usize::MAX);
        match self.entries.len() < max_keys {
            true => Ok(()),
            false => Err(KvError::QuotaExceeded { max: max_keys }),
        }
    }
}

fn expiry(ttl: Option<Duration>, now: Instant) -> Option<Instant> {
    // `MAX_TTL` keeps the sum representable; should it not be, never expiring is the
    // closest behaviour.
    ttl.and_then(|t| now.checked_add(t))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing here panics while holding a lock, and every update leaves the maps
    // consistent, so a poisoned lock's data is still sound.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Memory {
    fn new() -> Self {
        Self { namespaces: RwLock::new(HashMap::new()), next_sweep: Mutex::new(Instant::now() + SWEEP_EVERY) }
    }

    fn namespace(&self, name: &str) -> Arc<Mutex<Namespace>> {
        if let Some(ns) = self.namespaces.read().unwrap_or_else(PoisonError::into_inner).get(name) {
            return ns.clone();
        }
        let mut all = self.namespaces.write().unwrap_or_else(PoisonError::into_inner);
        all.entry(Box::from(name)).or_default().clone()
    }

    /// Runs `op` on the namespace, then sweeps if one is due.
    fn with<R>(&self, name: &str, now: Instant, op: impl FnOnce(&mut Namespace) -> R) -> R {
        let result = op(&mut lock(&self.namespace(name)));
        self.maybe_sweep(now);
        result
    }

    fn maybe_sweep(&self, now: Instant) {
        // try_lock: when another call is sweeping, this one need not wait for it.
        let Ok(mut next) = self.next_sweep.try_lock() else { return };
        if now < *next {
            return;
        }
        *next = now + SWEEP_EVERY;
        let namespaces: Vec<_> =
            self.namespaces.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        for ns in &namespaces {
            lock(ns).purge_expired(now, SWEEP_BATCH);
        }
        drop(namespaces);
        // A namespace left empty is dropped, unless a call holds it right now (it may be
        // about to insert; it got its handle under the lock held here, so the count is
        // exact).
        let mut all = self.namespaces.write().unwrap_or_else(PoisonError::into_inner);
        all.retain(|_, ns| Arc::strong_count(ns) > 1 || !lock(ns).entries.is_empty());
    }

    fn get(&self, name: &str, key: &str, now: Instant) -> Option<Vec<u8>> {
        self.with(name, now, |ns| ns.live(key, now).map(|e| e.value.clone()))
    }

    fn set(
        &self,
        name: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        max_keys: usize,
        now: Instant,
    ) -> Result<(), KvError> {
        self.with(name, now, |ns| {
            if ttl == Some(Duration::ZERO) {
                ns.remove(key);
                return Ok(());
            }
            ns.live(key, now);
            ns.make_room(key, max_keys, now)?;
            ns.insert(key, Entry { value, expires: expiry(ttl, now) });
            Ok(())
        })
    }

    fn delete(&self, name: &str, key: &str, now: Instant) -> bool {
        self.with(name, now, |ns| ns.live(key, now).is_some() && ns.remove(key).is_some())
    }

    fn increment(
        &self,
        name: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
        max_keys: usize,
        now: Instant,
    ) -> Result<i64, KvError> {
        self.with(name, now, |ns| {
            if let Some(entry) = ns.live(key, now) {
                let current = parse_counter(&entry.value).ok_or(KvError::NotACounter)?;
                let next = current.checked_add(delta).ok_or(KvError::Overflow)?;
                entry.value = next.to_string().into_bytes();
                return Ok(next);
            }
            // Created now: the counter starts at 0 and the TTL applies. A zero TTL
            // expires it at once, leaving nothing behind.
            if ttl != Some(Duration::ZERO) {
                ns.make_room(key, max_keys, now)?;
                ns.insert(key, Entry { value: delta.to_string().into_bytes(), expires: expiry(ttl, now) });
            }
            Ok(delta)
        })
    }
}

/// A counter's value: decimal, optional `-`, nothing else (what Redis accepts).
fn parse_counter(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    if text.starts_with('+') {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_keys: usize) -> KvLimits {
        KvLimits { max_keys, ..KvLimits::default() }
    }

    fn entries(store: &KvStore, namespace: &str) -> usize {
        let Backend::Memory(m) = &store.backend else { panic!("memory backend") };
        let all = m.namespaces.read().unwrap();
        all.get(namespace).map_or(0, |ns| ns.lock().unwrap().entries.len())
    }

    fn has_namespace(store: &KvStore, namespace: &str) -> bool {
        let Backend::Memory(m) = &store.backend else { panic!("memory backend") };
        let all = m.namespaces.read().unwrap();
        all.contains_key(namespace)
    }

    #[tokio::test(start_paused = true)]
    async fn set_get_delete() {
        let kv = KvStore::memory(KvLimits::default());
        assert_eq!(kv.get("p", "a").await, Ok(None));
        kv.set("p", "a", b"one".to_vec(), None).await.unwrap();
        assert_eq!(kv.get("p", "a").await, Ok(Some(b"one".to_vec())));
        kv.set("p", "a", b"two".to_vec(), None).await.unwrap();
        assert_eq!(kv.get("p", "a").await, Ok(Some(b"two".to_vec())));
        // Namespaces are separate.
        assert_eq!(kv.get("q", "a").await, Ok(None));
        assert_eq!(kv.delete("q", "a").await, Ok(false));
        assert_eq!(kv.delete("p", "a").await, Ok(true));
        assert_eq!(kv.delete("p", "a").await, Ok(false));
        assert_eq!(kv.get("p", "a").await, Ok(None));
        // Empty keys and values are ordinary.
        kv.set("p", "", Vec::new(), None).await.unwrap();
        assert_eq!(kv.get("p", "").await, Ok(Some(Vec::new())));
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let kv = KvStore::memory(KvLimits::default());
        kv.set("p", "a", b"v".to_vec(), Some(Duration::from_millis(100))).await.unwrap();
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_eq!(kv.get("p", "a").await, Ok(Some(b"v".to_vec())));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(kv.get("p", "a").await, Ok(None));
        assert_eq!(entries(&kv, "p"), 0, "an expired entry is dropped when read");

        // Expired entries do not count as existing for delete.
        kv.set("p", "b", b"v".to_vec(), Some(Duration::from_millis(10))).await.unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(kv.delete("p", "b").await, Ok(false));

        // Overwriting without a TTL makes the entry permanent; with one, restarts it.
        kv.set("p", "c", b"v".to_vec(), Some(Duration::from_millis(10))).await.unwrap();
        kv.set("p", "c", b"w".to_vec(), None).await.unwrap();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(kv.get("p", "c").await, Ok(Some(b"w".to_vec())));
        kv.set("p", "c", b"x".to_vec(), Some(Duration::from_millis(10))).await.unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(kv.get("p", "c").await, Ok(None));

        // A zero TTL stores nothing and removes what was there.
        kv.set("p", "d", b"v".to_vec(), None).await.unwrap();
        kv.set("p", "d", b"w".to_vec(), Some(Duration::ZERO)).await.unwrap();
        assert_eq!(kv.get("p", "d").await, Ok(None));

        // A huge TTL is capped, not an overflow.
        kv.set("p", "e", b"v".to_vec(), Some(Duration::from_millis(u64::MAX))).await.unwrap();
        tokio::time::advance(Duration::from_secs(10 * 365 * 24 * 3600)).await;
        assert_eq!(kv.get("p", "e").await, Ok(Some(b"v".to_vec())));
    }

    #[tokio::test(start_paused = true)]
    async fn quota_counts_live_keys_per_namespace() {
        let kv = KvStore::memory(limits(3));
        for key in ["a", "b", "c"] {
            kv.set("p", key, b"v".to_vec(), None).await.unwrap();
        }
        assert_eq!(kv.set("p", "d", b"v".to_vec(), None).await, Err(KvError::QuotaExceeded { max: 3 }));
        assert_eq!(kv.increment("p", "d", 1, None).await, Err(KvError::QuotaExceeded { max: 3 }));
        // Existing keys can still be written, and other plugins are not affected.
        kv.set("p", "a", b"w".to_vec(), None).await.unwrap();
        kv.set("q", "d", b"v".to_vec(), None).await.unwrap();
        // Deleting frees a slot.
        assert_eq!(kv.delete("p", "b").await, Ok(true));
        kv.set("p", "d", b"v".to_vec(), None).await.unwrap();
        assert_eq!(kv.set("p", "e", b"v".to_vec(), None).await, Err(KvError::QuotaExceeded { max: 3 }));
        // Expired keys do not count, even before anything read them.
        kv.set("p", "a", b"v".to_vec(), Some(Duration::from_millis(5))).await.unwrap();
        tokio::time::advance(Duration::from_millis(5)).await;
        kv.set("p", "e", b"v".to_vec(), None).await.unwrap();
        assert_eq!(kv.get("p", "a").await, Ok(None));
        assert_eq!(entries(&kv, "p"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn sizes_are_limited() {
        let kv = KvStore::memory(KvLimits::default());
        let key = "k".repeat(MAX_KEY_BYTES);
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        kv.set("p", &key, vec![7; MAX_VALUE_BYTES], None).await.unwrap();
        assert_eq!(kv.get("p", &key).await.unwrap().map(|v| v.len()), Some(MAX_VALUE_BYTES));
        assert_eq!(
            kv.set("p", "v", vec![7; MAX_VALUE_BYTES + 1], None).await,
            Err(KvError::ValueTooLarge { len: MAX_VALUE_BYTES + 1, max: MAX_VALUE_BYTES })
        );
        let too_long = Err(KvError::KeyTooLarge { len: MAX_KEY_BYTES + 1, max: MAX_KEY_BYTES });
        assert_eq!(kv.set("p", &long, b"v".to_vec(), None).await, too_long.clone());
        assert_eq!(kv.get("p", &long).await, too_long.clone().map(|()| None));
        assert_eq!(kv.delete("p", &long).await, too_long.clone().map(|()| false));
        assert_eq!(kv.increment("p", &long, 1, None).await, too_long.map(|()| 0));
        // Bytes, not characters.
        let multibyte = "é".repeat(MAX_KEY_BYTES / 2 + 1);
        assert!(matches!(kv.get("p", &multibyte).await, Err(KvError::KeyTooLarge { .. })));
        assert_eq!(entries(&kv, "p"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn increment_counts_and_keeps_the_first_ttl() {
        let kv = KvStore::memory(KvLimits::default());
        let minute = Some(Duration::from_secs(60));
        assert_eq!(kv.increment("p", "hits", 1, minute).await, Ok(1));
        tokio::time::advance(Duration::from_secs(30)).await;
        // A later TTL does not extend the window.
        assert_eq!(kv.increment("p", "hits", 2, Some(Duration::from_secs(600))).await, Ok(3));
        assert_eq!(kv.increment("p", "hits", -5, None).await, Ok(-2));
        assert_eq!(kv.get("p", "hits").await, Ok(Some(b"-2".to_vec())));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(kv.get("p", "hits").await, Ok(None));
        // The next window starts afresh.
        assert_eq!(kv.increment("p", "hits", 1, minute).await, Ok(1));

        // Without a TTL the counter stays; a zero TTL counts once and keeps nothing.
        assert_eq!(kv.increment("p", "total", 0, None).await, Ok(0));
        assert_eq!(kv.get("p", "total").await, Ok(Some(b"0".to_vec())));
        assert_eq!(kv.increment("p", "gone", 4, Some(Duration::ZERO)).await, Ok(4));
        assert_eq!(kv.get("p", "gone").await, Ok(None));

        // A value written by `set` counts when it is a decimal integer.
        kv.set("p", "n", b"41".to_vec(), None).await.unwrap();
        assert_eq!(kv.increment("p", "n", 1, None).await, Ok(42));
        for bad in [&b"abc"[..], b"+1", b" 1", b"1.5", b"", b"\xff"] {
            kv.set("p", "bad", bad.to_vec(), None).await.unwrap();
            assert_eq!(kv.increment("p", "bad", 1, None).await, Err(KvError::NotACounter), "{bad:?}");
        }
        kv.set("p", "max", i64::MAX.to_string().into_bytes(), None).await.unwrap();
        assert_eq!(kv.increment("p", "max", 1, None).await, Err(KvError::Overflow));
        assert_eq!(kv.increment("p", "max", -1, None).await, Ok(i64::MAX - 1));
        assert_eq!(kv.increment("p", "min", i64::MIN, None).await, Ok(i64::MIN));
        assert_eq!(kv.increment("p", "min", -1, None).await, Err(KvError::Overflow));
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_drops_expired_entries_nobody_reads() {
        let kv = KvStore::memory(KvLimits::default());
        let n = SWEEP_BATCH + 10;
        for i in 0..n {
            kv.set("idle", &format!("k{i}"), b"v".to_vec(), Some(Duration::from_secs(1))).await.unwrap();
        }
        kv.set("idle", "keep", b"v".to_vec(), None).await.unwrap();
        kv.set("gone", "k", b"v".to_vec(), Some(Duration::from_secs(1))).await.unwrap();
        assert_eq!(entries(&kv, "idle"), n + 1);

        // Not due yet: an operation elsewhere leaves the idle namespace alone.
        tokio::time::advance(Duration::from_secs(2)).await;
        kv.get("busy", "x").await.unwrap();
        assert_eq!(entries(&kv, "idle"), n + 1);

        // Due: one sweep drops a bounded batch per namespace, the next one the rest.
        tokio::time::advance(SWEEP_EVERY).await;
        kv.get("busy", "x").await.unwrap();
        assert_eq!(entries(&kv, "idle"), n + 1 - SWEEP_BATCH);
        assert!(!has_namespace(&kv, "gone"), "an emptied namespace is dropped");
        tokio::time::advance(SWEEP_EVERY).await;
        kv.get("busy", "x").await.unwrap();
        assert_eq!(entries(&kv, "idle"), 1);
        assert_eq!(kv.get("idle", "keep").await, Ok(Some(b"v".to_vec())));
    }

    #[tokio::test(start_paused = true)]
    async fn host_import_maps_errors_to_the_contract() {
        use kv::Host as _;
        let mut ctx = KvCtx { store: KvStore::memory(limits(1)), namespace: Arc::from("plugin-a") };
        assert!(matches!(ctx.set("k".into(), b"1".to_vec(), Some(1000)).await, Ok(())));
        assert!(matches!(ctx.get("k".into()).await, Ok(Some(v)) if v == b"1"));
        assert!(matches!(ctx.increment("k".into(), 2, None).await, Ok(3)));
        assert!(matches!(ctx.set("other".into(), Vec::new(), None).await, Err(kv::KvError::QuotaExceeded)));
        assert!(matches!(
            ctx.set("k".into(), vec![0; MAX_VALUE_BYTES + 1], None).await,
            Err(kv::KvError::TooLarge)
        ));
        assert!(matches!(ctx.get("k".repeat(MAX_KEY_BYTES + 1)).await, Err(kv::KvError::TooLarge)));
        ctx.set("k".into(), b"x".to_vec(), None).await.unwrap();
        assert!(matches!(
            ctx.increment("k".into(), 1, None).await,
            Err(kv::KvError::Unavailable(reason)) if reason.contains("not an integer")
        ));
        // The namespace is the plugin's: another plugin's context does not see the key.
        let mut other = KvCtx { store: ctx.store.clone(), namespace: Arc::from("plugin-b") };
        assert!(matches!(other.get("k".into()).await, Ok(None)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(ctx.delete("k".into()).await, Ok(true)), "set without TTL replaced the TTL");
    }

    /// A `redis-server` on a free loopback port, killed on drop.
    struct RedisServer {
        child: std::process::Child,
        port: u16,
        dir: std::path::PathBuf,
    }

    impl RedisServer {
        /// `None` (after saying so) when `redis-server` is not installed, except in CI,
        /// which installs it: there a missing server fails the test.
        fn start() -> Option<RedisServer> {
            let binary = std::env::var("BURROW_TEST_REDIS").unwrap_or_else(|_| "redis-server".into());
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let dir = std::env::temp_dir().join(format!("burrow-kv-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let spawned = std::process::Command::new(&binary)
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--dir", dir.to_str().unwrap(), "--protected-mode", "no"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            let child = match spawned {
                Ok(child) => child,
                Err(e) if std::env::var_os("CI").is_none() => {
                    eprintln!("SKIPPED: cannot start {binary} ({e}); install redis-server to run this test");
                    return None;
                }
                Err(e) => panic!("cannot start {binary} ({e}); CI must install redis-server"),
            };
            let server = RedisServer { child, port, dir };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !server.answers_ping() {
                assert!(std::time::Instant::now() < deadline, "redis-server did not start within 10 s");
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(server)
        }

        fn answers_ping(&self) -> bool {
            use std::io::{Read, Write};
            let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut reply = [0u8; 7];
            s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
        }

        fn store(&self) -> Arc<Store> {
            Arc::new(Store::new(crate::cluster::config::RedisConfig {
                urls: vec![format!("redis://127.0.0.1:{}", self.port)],
                timeout: Duration::from_secs(5),
                ..Default::default()
            }))
        }

        async fn raw(&self) -> redis::aio::MultiplexedConnection {
            let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).unwrap();
            client.get_multiplexed_async_connection().await.unwrap()
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
        redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
    }

    #[tokio::test]
    async fn redis_backend_semantics() {
        let Some(server) = RedisServer::start() else { return };
        let kv = KvStore::redis(server.store(), limits(2));
        let mut raw = server.raw().await;

        assert_eq!(kv.get("p", "a").await, Ok(None));
        kv.set("p", "a", b"one\0\xff".to_vec(), None).await.unwrap();
        assert_eq!(kv.get("p", "a").await, Ok(Some(b"one\0\xff".to_vec())));
        assert_eq!(kv.get("q", "a").await, Ok(None), "namespaces are separate");
        // The documented layout: the plugin's name is the hash tag.
        let stored: Option<Vec<u8>> =
            redis::cmd("GET").arg("burrow:plugin-kv:{p}:a").query_async(&mut raw).await.unwrap();
        assert_eq!(stored, Some(b"one\0\xff".to_vec()));
        // A name with braces cannot pick another plugin's slot or keys.
        kv.set("p}x{", "a", b"v".to_vec(), None).await.unwrap();
        assert_eq!(kv.get("p", "a").await, Ok(Some(b"one\0\xff".to_vec())));
        assert_eq!(pttl(&mut raw, "burrow:plugin-kv:{p}:a").await, -1, "no TTL without one");

        kv.set("p", "a", b"two".to_vec(), Some(Duration::from_secs(60))).await.unwrap();
        let ttl = pttl(&mut raw, "burrow:plugin-kv:{p}:a").await;
        assert!(ttl > 0 && ttl <= 60_000, "PTTL {ttl}");
        kv.set("p", "a", b"three".to_vec(), None).await.unwrap();
        assert_eq!(pttl(&mut raw, "burrow:plugin-kv:{p}:a").await, -1, "set replaces the TTL");
        kv.set("p", "a", b"four".to_vec(), Some(Duration::ZERO)).await.unwrap();
        assert_eq!(kv.get("p", "a").await, Ok(None), "a zero TTL deletes");

        // Entries expire (Redis's clock; poll rather than guess how long it takes).
        kv.set("p", "short", b"v".to_vec(), Some(Duration::from_millis(20))).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while kv.get("p", "short").await.unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "entry with a 20 ms TTL still there after 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        kv.set("p", "d", b"v".to_vec(), None).await.unwrap();
        assert_eq!(kv.delete("p", "d").await, Ok(true));
        assert_eq!(kv.delete("p", "d").await, Ok(false));

        // Sizes are checked before Redis is asked; the key-count quota is not enforced.
        assert!(matches!(
            kv.set("p", "big", vec![0; MAX_VALUE_BYTES + 1], None).await,
            Err(KvError::ValueTooLarge { .. })
        ));
        assert!(matches!(
            kv.get("p", &"k".repeat(MAX_KEY_BYTES + 1)).await,
            Err(KvError::KeyTooLarge { .. })
        ));
        for key in ["x", "y", "z"] {
            kv.set("p", key, b"v".to_vec(), None).await.unwrap();
        }
    }

    #[tokio::test]
    async fn redis_increment_sets_ttl_only_on_creation() {
        let Some(server) = RedisServer::start() else { return };
        let kv = KvStore::redis(server.store(), KvLimits::default());
        let mut raw = server.raw().await;
        let key = "burrow:plugin-kv:{p}:hits";

        assert_eq!(kv.increment("p", "hits", 1, Some(Duration::from_secs(60))).await, Ok(1));
        let first = pttl(&mut raw, key).await;
        assert!(first > 0 && first <= 60_000, "PTTL {first}");
        assert_eq!(kv.increment("p", "hits", 2, Some(Duration::from_secs(600))).await, Ok(3));
        let second = pttl(&mut raw, key).await;
        assert!(second > 0 && second <= first, "the window was extended: {first} -> {second}");
        assert_eq!(kv.increment("p", "hits", -10, None).await, Ok(-7));
        assert_eq!(kv.get("p", "hits").await, Ok(Some(b"-7".to_vec())));

        assert_eq!(kv.increment("p", "total", 5, None).await, Ok(5));
        assert_eq!(pttl(&mut raw, "burrow:plugin-kv:{p}:total").await, -1);
        assert_eq!(kv.increment("p", "gone", 4, Some(Duration::ZERO)).await, Ok(4));
        assert_eq!(kv.get("p", "gone").await, Ok(None));

        // Exact past 2^53, where a Lua number would round.
        let big = (1i64 << 53) + 1;
        kv.set("p", "big", big.to_string().into_bytes(), None).await.unwrap();
        assert_eq!(kv.increment("p", "big", 2, None).await, Ok(big + 2));
        kv.set("p", "max", i64::MAX.to_string().into_bytes(), None).await.unwrap();
        assert!(matches!(kv.increment("p", "max", 1, None).await, Err(KvError::Unavailable(_))));

        kv.set("p", "text", b"abc".to_vec(), None).await.unwrap();
        match kv.increment("p", "text", 1, None).await {
            Err(KvError::Unavailable(reason)) => assert!(reason.contains("not an integer"), "{reason}"),
            other => panic!("increment of text: {other:?}"),
        }
        assert_eq!(
            kv.get("p", "text").await,
            Ok(Some(b"abc".to_vec())),
            "a failed increment changes nothing"
        );
    }

    #[tokio::test]
    async fn redis_down_is_unavailable() {
        // A port nobody listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let store = Arc::new(Store::new(crate::cluster::config::RedisConfig {
            urls: vec![format!("redis://127.0.0.1:{port}")],
            timeout: Duration::from_millis(500),
            ..Default::default()
        }));
        let mut ctx = KvCtx { store: KvStore::redis(store, KvLimits::default()), namespace: Arc::from("p") };
        use kv::Host as _;
        assert!(matches!(ctx.get("k".into()).await, Err(kv::KvError::Unavailable(_))));
        assert!(matches!(ctx.increment("k".into(), 1, Some(10)).await, Err(kv::KvError::Unavailable(_))));
        // Limits are still checked first, without Redis.
        assert!(matches!(
            ctx.set("k".into(), vec![0; MAX_VALUE_BYTES + 1], None).await,
            Err(kv::KvError::TooLarge)
        ));
    }
}
