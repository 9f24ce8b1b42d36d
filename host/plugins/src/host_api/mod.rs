//! What a plugin's `Store` holds, and the host imports every plugin may use: one
//! module per capability (`kv`, `http`), the small ones (`log`, `config`, `clock`) here.
//!
//! WASI Preview 2 is linked in full so components built by ordinary toolchains load,
//! but with nothing behind it: no arguments, environment, preopened files or sockets;
//! stdout is discarded and the start of stderr is kept to explain a trap.

pub(crate) mod http;
pub(crate) mod kv;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::{clock, config, log, types};

/// `log` lines accepted per call, and their length, so a plugin cannot flood the log.
pub(crate) const LOG_LINES_PER_CALL: u32 = 32;
const LOG_LINE_BYTES: usize = 2048;
/// How much of a guest's stderr (its panic message) is kept for error reports.
const STDERR_CAPTURE_BYTES: usize = 2048;
/// Table elements an instance may grow to.
pub(crate) const TABLE_ELEMENTS: usize = 100_000;

/// Where `clock.now` reads the time: the system, or a fixed instant (test vectors and
/// the test harness).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockSource {
    #[default]
    System,
    /// Unix milliseconds.
    Fixed(u64),
}

impl ClockSource {
    pub(crate) fn now_ms(self) -> u64 {
        match self {
            ClockSource::System => burrow_host_time::now_ms(),
            ClockSource::Fixed(ms) => ms,
        }
    }
}

/// What the imports know about the plugin they serve. (No `Debug`: the config may hold
/// a third-party service's credentials.)
pub(crate) struct PluginEnv {
    /// `authorizer office-hours@3f2a9c1b0d4e`: names the plugin in logs.
    pub label: Arc<str>,
    /// The kv namespace: the plugin's name.
    pub name: Arc<str>,
    /// Set while the loader checks a candidate (`canary`, `test vector "..."`): its log
    /// lines carry it, so they do not read like live events.
    pub stage: Option<Arc<str>>,
    pub config_json: Arc<str>,
    pub config_toml: Arc<str>,
    pub config: toml::Table,
}

/// The host-side state of one instance (`log`, `config`, `clock`).
pub(crate) struct HostCtx {
    pub env: Arc<PluginEnv>,
    pub clock: ClockSource,
    /// `log` lines in the current call.
    pub log_lines: u32,
}

/// The data of one instance's `Store`.
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    http_ctx: WasiHttpCtx,
    http_hooks: http::OutboundHooks,
    pub(crate) host: HostCtx,
    pub(crate) kv: kv::KvCtx,
    pub(crate) limiter: InstanceLimiter,
    pub(crate) stderr: StderrCapture,
}

impl CallState {
    pub(crate) fn new(
        env: Arc<PluginEnv>,
        clock: ClockSource,
        kv: kv::KvCtx,
        http_hooks: http::OutboundHooks,
        max_memory_bytes: u64,
    ) -> CallState {
        let stderr = StderrCapture::default();
        let wasi = WasiCtxBuilder::new().stderr(stderr.clone()).allow_tcp(false).allow_udp(false).build();
        CallState {
            wasi,
            table: ResourceTable::new(),
            http_ctx: WasiHttpCtx::new(),
            http_hooks,
            host: HostCtx { env, clock, log_lines: 0 },
            kv,
            limiter: InstanceLimiter { limit: max_memory_bytes, used: 0, hit: false },
            stderr,
        }
    }

    /// Readies a (warm) instance for its next call.
    pub(crate) fn begin_call(&mut self, clock: ClockSource) {
        self.host.log_lines = 0;
        self.host.clock = clock;
        self.stderr.clear();
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http_ctx, table: &mut self.table, hooks: &mut self.http_hooks }
    }
}

impl types::Host for HostCtx {}

impl log::Host for HostCtx {
    fn log(&mut self, level: types::LogLevel, message: String) {
        let plugin = &*self.env.label;
        self.log_lines = self.log_lines.saturating_add(1);
        if self.log_lines > LOG_LINES_PER_CALL {
            if self.log_lines == LOG_LINES_PER_CALL + 1 {
                tracing::warn!(
                    plugin,
                    "plugin logged more than {LOG_LINES_PER_CALL} lines in one call; dropping the rest"
                );
            }
            return;
        }
        let message = truncate(&message, LOG_LINE_BYTES);
        match self.env.stage.as_deref() {
            Some(check) => match level {
                types::LogLevel::Trace => tracing::trace!(plugin, check, "{message}"),
                types::LogLevel::Debug => tracing::debug!(plugin, check, "{message}"),
                types::LogLevel::Info => tracing::info!(plugin, check, "{message}"),
                types::LogLevel::Warn => tracing::warn!(plugin, check, "{message}"),
                types::LogLevel::Error => tracing::error!(plugin, check, "{message}"),
            },
            None => match level {
                types::LogLevel::Trace => tracing::trace!(plugin, "{message}"),
                types::LogLevel::Debug => tracing::debug!(plugin, "{message}"),
                types::LogLevel::Info => tracing::info!(plugin, "{message}"),
                types::LogLevel::Warn => tracing::warn!(plugin, "{message}"),
                types::LogLevel::Error => tracing::error!(plugin, "{message}"),
            },
        }
    }
}

impl config::Host for HostCtx {
    fn json(&mut self) -> String {
        self.env.config_json.to_string()
    }

    fn toml(&mut self) -> String {
        self.env.config_toml.to_string()
    }

    fn get(&mut self, key: String) -> Option<config::ConfigValue> {
        Some(match self.env.config.get(&key)? {
            toml::Value::String(s) => config::ConfigValue::Text(s.clone()),
            toml::Value::Integer(i) => config::ConfigValue::Integer(*i),
            toml::Value::Float(f) => config::ConfigValue::Float(*f),
            toml::Value::Boolean(b) => config::ConfigValue::Boolean(*b),
            toml::Value::Datetime(d) => config::ConfigValue::Text(d.to_string()),
            other => config::ConfigValue::Json(super::config::toml_to_json(other).to_string()),
        })
    }
}

impl clock::Host for HostCtx {
    fn now(&mut self) -> u64 {
        self.clock.now_ms()
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Caps the linear memory of one instance (all its memories together) and remembers
/// that the cap was hit, so the failure is reported as the memory limit whatever trap
/// the guest ends in.
pub(crate) struct InstanceLimiter {
    pub limit: u64,
    used: u64,
    pub hit: bool,
}

impl ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let used = self.used.saturating_add(desired.saturating_sub(current) as u64);
        if used > self.limit {
            self.hit = true;
            // An error (rather than `Ok(false)`) traps at once instead of letting the
            // guest carry on with a failed allocation.
            wasmtime::bail!("memory limit of {} bytes reached", self.limit);
        }
        self.used = used;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS && maximum.is_none_or(|max| desired <= max))
    }
}

/// Guest stderr: keeps the first bytes, silently drops the rest (a full buffer must not
/// turn into a guest-visible error).
#[derive(Clone, Default)]
pub(crate) struct StderrCapture(Arc<Mutex<Vec<u8>>>);

impl StderrCapture {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self.lock();
        let room = STDERR_CAPTURE_BYTES.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn clear(&self) {
        self.lock().clear();
    }

    /// What the guest printed, minus Rust's backtrace hint, on one line.
    pub(crate) fn summary(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.lock()).into_owned();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with("note: run with `RUST_BACKTRACE=1`"))
            .collect();
        (!lines.is_empty()).then(|| lines.join(" / "))
    }
}

impl IsTerminal for StderrCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrCapture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrCapture {
    async fn ready(&mut self) {}
}

impl OutputStream for StderrCapture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for StderrCapture {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("hello", 10), "hello");
    }

    #[test]
    fn stderr_capture_is_bounded_and_summarised() {
        let capture = StderrCapture::default();
        capture.push(&vec![b'x'; STDERR_CAPTURE_BYTES + 10]);
        capture.push(b"more");
        assert_eq!(capture.lock().len(), STDERR_CAPTURE_BYTES);
        capture.clear();
        capture.push(b"thread panicked at x\nnote: run with `RUST_BACKTRACE=1` for more\n\nboom\n");
        assert_eq!(capture.summary().as_deref(), Some("thread panicked at x / boom"));
    }

    #[test]
    fn fixed_clock() {
        assert_eq!(ClockSource::Fixed(42).now_ms(), 42);
        assert!(ClockSource::System.now_ms() > 1_700_000_000_000);
    }
}
