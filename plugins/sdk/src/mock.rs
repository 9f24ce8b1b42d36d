//! [`MockHost`]: an in-memory [`Host`] for native unit tests.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};

use crate::host::{ConfigValue, Host, KvError, LogLevel, KV_MAX_KEY_BYTES, KV_MAX_VALUE_BYTES};
use crate::http::{HttpError, HttpRequest, HttpResponse};

/// A [`Host`] for `cargo test`: settable config and clock, an in-memory key-value store
/// whose TTLs follow that clock, captured log lines, and canned HTTP responses.
///
/// ```
/// use burrow_plugin_sdk::{Host, HttpRequest, HttpResponse, MockHost};
///
/// let host = MockHost::new().with_config_json(r#"{"url": "https://auth.example/me"}"#);
/// host.respond("https://auth.example/me", HttpResponse::new(200, "alice"));
/// let resp = host.http(&HttpRequest::get("https://auth.example/me")).unwrap();
/// assert_eq!(resp.text(), "alice");
/// assert_eq!(host.http_requests().len(), 1);
///
/// host.kv_set("k", b"v", Some(1_000)).unwrap();
/// host.advance(1_000);
/// assert_eq!(host.kv_get("k").unwrap(), None);
/// ```
#[derive(Debug)]
pub struct MockHost {
    config: RefCell<serde_json::Map<String, serde_json::Value>>,
    now: Cell<u64>,
    logs: RefCell<Vec<(LogLevel, String)>>,
    kv: RefCell<BTreeMap<String, Entry>>,
    kv_failure: RefCell<Option<KvError>>,
    kv_quota: Cell<Option<usize>>,
    responses: RefCell<HashMap<String, Result<HttpResponse, HttpError>>>,
    requests: RefCell<Vec<HttpRequest>>,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    /// Unix ms after which the entry is gone.
    expires_at: Option<u64>,
}

impl Default for MockHost {
    fn default() -> Self {
        Self::new()
    }
}

impl MockHost {
    /// The clock's starting point: 2023-11-14T22:13:20Z, a Tuesday.
    pub const DEFAULT_NOW: u64 = 1_700_000_000_000;

    /// Empty config (`{}`), the clock at [`MockHost::DEFAULT_NOW`], an empty store, no
    /// canned responses.
    pub fn new() -> Self {
        Self {
            config: RefCell::new(serde_json::Map::new()),
            now: Cell::new(Self::DEFAULT_NOW),
            logs: RefCell::new(Vec::new()),
            kv: RefCell::new(BTreeMap::new()),
            kv_failure: RefCell::new(None),
            kv_quota: Cell::new(None),
            responses: RefCell::new(HashMap::new()),
            requests: RefCell::new(Vec::new()),
        }
    }

    /// Sets the config table from JSON text.
    ///
    /// # Panics
    /// If `json` is not a JSON object: a bug in the test itself.
    pub fn with_config_json(self, json: &str) -> Self {
        self.set_config_json(json);
        self
    }

    /// Sets the config table from a JSON value (e.g. `serde_json::json!({..})`).
    ///
    /// # Panics
    /// If `value` is not an object.
    pub fn with_config(self, value: serde_json::Value) -> Self {
        self.set_config(value);
        self
    }

    /// Sets the config table from TOML text, as it would appear under
    /// `[plugins.<slot>.config]`.
    ///
    /// # Panics
    /// If `text` is not valid TOML.
    pub fn with_config_toml(self, text: &str) -> Self {
        let table: toml::Table =
            toml::from_str(text).unwrap_or_else(|e| panic!("MockHost: invalid TOML config: {e}"));
        let value = serde_json::to_value(table).unwrap_or_else(|e| panic!("MockHost: TOML config: {e}"));
        self.set_config(value);
        self
    }

    /// Sets the clock (unix ms).
    pub fn with_now(self, now_ms: u64) -> Self {
        self.set_now(now_ms);
        self
    }

    /// Replaces the config table from JSON text.
    ///
    /// # Panics
    /// If `json` is not a JSON object.
    pub fn set_config_json(&self, json: &str) {
        let value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("MockHost: invalid JSON config: {e}"));
        self.set_config(value);
    }

    /// Replaces the config table.
    ///
    /// # Panics
    /// If `value` is not an object.
    pub fn set_config(&self, value: serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => *self.config.borrow_mut() = map,
            other => panic!("MockHost: the config must be a table (JSON object), got {other}"),
        }
    }

    /// Sets the clock (unix ms).
    pub fn set_now(&self, now_ms: u64) {
        self.now.set(now_ms);
    }

    /// Moves the clock forward.
    pub fn advance(&self, ms: u64) {
        self.now.set(self.now.get().saturating_add(ms));
    }

    /// Every line logged so far, in order.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.logs.borrow().clone()
    }

    /// Whether any logged line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.borrow().iter().any(|(_, line)| line.contains(needle))
    }

    /// Forgets the captured log lines.
    pub fn clear_logs(&self) {
        self.logs.borrow_mut().clear();
    }

    /// Makes every key-value operation fail with `error` (e.g. Redis down), or work again
    /// with `None`.
    pub fn fail_kv(&self, error: Option<KvError>) {
        *self.kv_failure.borrow_mut() = error;
    }

    /// Limits the number of live keys; creating one more fails with
    /// [`KvError::QuotaExceeded`].
    pub fn set_kv_quota(&self, max_keys: Option<usize>) {
        self.kv_quota.set(max_keys);
    }

    /// The live (unexpired) keys and values, sorted by key.
    pub fn kv_entries(&self) -> Vec<(String, Vec<u8>)> {
        let now = self.now.get();
        self.kv
            .borrow()
            .iter()
            .filter(|(_, e)| e.live(now))
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect()
    }

    /// Answers requests to exactly `url` with `response`.
    pub fn respond(&self, url: &str, response: HttpResponse) {
        self.responses.borrow_mut().insert(url.to_string(), Ok(response));
    }

    /// Fails requests to exactly `url` with `error`.
    pub fn respond_error(&self, url: &str, error: HttpError) {
        self.responses.borrow_mut().insert(url.to_string(), Err(error));
    }

    /// Every HTTP request made so far, in order.
    pub fn http_requests(&self) -> Vec<HttpRequest> {
        self.requests.borrow().clone()
    }

    fn kv_check(&self, key: &str, value_len: usize) -> Result<(), KvError> {
        if let Some(err) = self.kv_failure.borrow().clone() {
            return Err(err);
        }
        if key.len() > KV_MAX_KEY_BYTES || value_len > KV_MAX_VALUE_BYTES {
            return Err(KvError::TooLarge);
        }
        Ok(())
    }

    /// Drops expired entries, then checks the quota for a key about to be created.
    fn kv_make_room(&self, kv: &mut BTreeMap<String, Entry>, key: &str) -> Result<(), KvError> {
        let now = self.now.get();
        kv.retain(|_, e| e.live(now));
        match self.kv_quota.get() {
            Some(max) if !kv.contains_key(key) && kv.len() >= max => Err(KvError::QuotaExceeded),
            _ => Ok(()),
        }
    }

    fn expiry(&self, ttl_ms: Option<u64>) -> Option<u64> {
        ttl_ms.map(|ttl| self.now.get().saturating_add(ttl))
    }
}

impl Entry {
    fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

impl Host for MockHost {
    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }

    fn config_json(&self) -> String {
        serde_json::Value::Object(self.config.borrow().clone()).to_string()
    }

    fn config_toml(&self) -> String {
        let config = self.config.borrow();
        if config.is_empty() {
            return String::new();
        }
        // JSON null has no TOML form; such a config could not have come from the host.
        toml::to_string(&*config).unwrap_or_default()
    }

    fn config_get(&self, key: &str) -> Option<ConfigValue> {
        let config = self.config.borrow();
        Some(match config.get(key)? {
            serde_json::Value::String(s) => ConfigValue::Text(s.clone()),
            serde_json::Value::Bool(b) => ConfigValue::Boolean(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => ConfigValue::Integer(i),
                None => ConfigValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::Null => return None,
            other => ConfigValue::Json(other.to_string()),
        })
    }

    fn now(&self) -> u64 {
        self.now.get()
    }

    fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.kv_check(key, 0)?;
        let now = self.now.get();
        Ok(self.kv.borrow().get(key).filter(|e| e.live(now)).map(|e| e.value.clone()))
    }

    fn kv_set(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), KvError> {
        self.kv_check(key, value.len())?;
        let mut kv = self.kv.borrow_mut();
        self.kv_make_room(&mut kv, key)?;
        kv.insert(key.to_string(), Entry { value: value.to_vec(), expires_at: self.expiry(ttl_ms) });
        Ok(())
    }

    fn kv_delete(&self, key: &str) -> Result<bool, KvError> {
        self.kv_check(key, 0)?;
        let now = self.now.get();
        Ok(self.kv.borrow_mut().remove(key).is_some_and(|e| e.live(now)))
    }

    /// Counters are stored as decimal text, as in Redis: `kv_get` of a counter returns
    /// e.g. `b"3"`, and incrementing a non-numeric value fails.
    fn kv_increment(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        self.kv_check(key, 0)?;
        let mut kv = self.kv.borrow_mut();
        self.kv_make_room(&mut kv, key)?;
        let (current, expires_at) = match kv.get(key) {
            Some(entry) => {
                let text = std::str::from_utf8(&entry.value).ok();
                let current = text
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or_else(|| KvError::Unavailable(format!("value of {key:?} is not an integer")))?;
                (current, entry.expires_at)
            }
            None => (0, self.expiry(ttl_ms)),
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| KvError::Unavailable(format!("counter {key:?} would overflow")))?;
        kv.insert(key.to_string(), Entry { value: next.to_string().into_bytes(), expires_at });
        Ok(next)
    }

    fn http(&self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        self.requests.borrow_mut().push(request.clone());
        crate::http::split_url(&request.url)?;
        // An unknown URL behaves like a host that is not on the allowlist.
        let response =
            self.responses.borrow().get(&request.url).cloned().unwrap_or(Err(HttpError::Denied))?;
        if response.body.len() > request.max_response_bytes {
            return Err(HttpError::TooLarge { limit: request.max_response_bytes });
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_ttl_follows_the_clock() {
        let host = MockHost::new();
        host.kv_set("a", b"1", Some(100)).unwrap();
        host.kv_set("b", b"2", None).unwrap();
        host.advance(99);
        assert_eq!(host.kv_get("a").unwrap(), Some(b"1".to_vec()));
        host.advance(1);
        assert_eq!(host.kv_get("a").unwrap(), None);
        assert!(!host.kv_delete("a").unwrap());
        assert!(host.kv_delete("b").unwrap());
        assert!(host.kv_entries().is_empty());
    }

    #[test]
    fn increment_keeps_the_first_ttl() {
        let host = MockHost::new();
        assert_eq!(host.kv_increment("c", 2, Some(1000)).unwrap(), 2);
        host.advance(600);
        assert_eq!(host.kv_increment("c", 3, Some(1000)).unwrap(), 5);
        assert_eq!(host.kv_get("c").unwrap(), Some(b"5".to_vec()));
        host.advance(400);
        assert_eq!(host.kv_increment("c", 1, None).unwrap(), 1, "window expired, counter restarts");
        host.kv_set("text", b"x", None).unwrap();
        assert!(matches!(host.kv_increment("text", 1, None), Err(KvError::Unavailable(_))));
    }

    #[test]
    fn kv_limits_and_failures() {
        let host = MockHost::new();
        assert_eq!(host.kv_set(&"k".repeat(KV_MAX_KEY_BYTES + 1), b"", None), Err(KvError::TooLarge));
        assert_eq!(host.kv_set("k", &vec![0; KV_MAX_VALUE_BYTES + 1], None), Err(KvError::TooLarge));
        host.set_kv_quota(Some(1));
        host.kv_set("one", b"", None).unwrap();
        host.kv_set("one", b"again", None).unwrap();
        assert_eq!(host.kv_set("two", b"", None), Err(KvError::QuotaExceeded));
        host.fail_kv(Some(KvError::Unavailable("redis down".into())));
        assert!(matches!(host.kv_get("one"), Err(KvError::Unavailable(_))));
        host.fail_kv(None);
        assert_eq!(host.kv_get("one").unwrap(), Some(b"again".to_vec()));
    }

    #[test]
    fn config_views() {
        let host =
            MockHost::new().with_config_toml("name = \"x\"\nn = 3\nf = 1.5\nb = true\nlist = [1, 2]\n");
        assert_eq!(host.config_get("name"), Some(ConfigValue::Text("x".into())));
        assert_eq!(host.config_get("n"), Some(ConfigValue::Integer(3)));
        assert_eq!(host.config_get("f"), Some(ConfigValue::Float(1.5)));
        assert_eq!(host.config_get("b"), Some(ConfigValue::Boolean(true)));
        assert_eq!(host.config_get("list"), Some(ConfigValue::Json("[1,2]".into())));
        assert_eq!(host.config_get("missing"), None);
        assert!(host.config_toml().contains("name = \"x\""));
        #[derive(serde::Deserialize)]
        struct Config {
            n: u32,
        }
        assert_eq!(host.config::<Config>().unwrap().n, 3);
        assert_eq!(MockHost::new().config_json(), "{}");
        assert_eq!(MockHost::new().config_toml(), "");
    }

    #[test]
    fn http_is_canned_and_recorded() {
        let host = MockHost::new();
        host.respond("http://a/", HttpResponse::new(204, ""));
        host.respond_error("http://b/", HttpError::Timeout);
        assert_eq!(host.http(&HttpRequest::get("http://a/")).unwrap().status, 204);
        assert_eq!(host.http(&HttpRequest::get("http://b/")), Err(HttpError::Timeout));
        assert_eq!(host.http(&HttpRequest::get("http://c/")), Err(HttpError::Denied));
        host.respond("http://big/", HttpResponse::new(200, vec![0; 10]));
        let small = HttpRequest::get("http://big/").max_response_bytes(9);
        assert_eq!(host.http(&small), Err(HttpError::TooLarge { limit: 9 }));
        let urls: Vec<String> = host.http_requests().into_iter().map(|r| r.url).collect();
        assert_eq!(urls, ["http://a/", "http://b/", "http://c/", "http://big/"]);
    }

    #[test]
    fn logs_are_captured() {
        let host = MockHost::new();
        host.info("hello");
        host.log(LogLevel::Error, "bad");
        assert_eq!(host.logs(), vec![(LogLevel::Info, "hello".into()), (LogLevel::Error, "bad".into())]);
        assert!(host.logged("bad"));
        host.clear_logs();
        assert!(host.logs().is_empty());
    }
}
