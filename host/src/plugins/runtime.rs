//! The process-wide WebAssembly runtime shared by every [`super::Plugins`].
//!
//! One `Engine` per process, as wasmtime recommends: compiled components, the pooling
//! allocator and the epoch ticker are shared. Every call gets a fresh `Store` and
//! instance, so nothing leaks from one user's request into the next.
//!
//! Calls run on a small pool of dedicated threads rather than on the caller's thread:
//! wasmtime-wasi's synchronous bindings drive async WASI operations (for example a
//! guest writing its panic message to stderr) with `Handle::block_on`, which panics on
//! a thread that is already running a tokio runtime, and the host calls plugins from
//! tokio tasks.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, ResourceLimiter, Store,
    Trap,
};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{host, types, AuthorizerPlugin};
use super::PluginError;

/// How often the background thread advances the engine's epoch: the granularity of
/// call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(2);
/// Wasm stack per call; a deeper recursion is reported as a stack overflow.
pub(crate) const WASM_STACK_BYTES: usize = 512 * 1024;
/// Native stack of the call threads: the wasm stack plus ample room for host frames.
const WORKER_STACK_BYTES: usize = 8 * 1024 * 1024;
/// How much of a guest's stderr (its panic message) is kept for error reports.
const STDERR_CAPTURE_BYTES: usize = 2048;
/// `host.log` lines accepted per call, and their length, so a plugin cannot flood the log.
const LOG_LINES_PER_CALL: u32 = 32;
const LOG_LINE_BYTES: usize = 2048;
/// Compiled components kept for reuse (keyed by SHA-256), e.g. across config reloads.
const COMPONENT_CACHE_ENTRIES: usize = 16;
/// Per-component pool limits. Rust components need a handful of each; the headroom is
/// for components from other toolchains.
const CORE_INSTANCES_PER_COMPONENT: u32 = 50;
const MEMORIES_PER_COMPONENT: u32 = 4;
const TABLES_PER_COMPONENT: u32 = 16;
const TABLE_ELEMENTS: usize = 100_000;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

thread_local! {
    /// Set on the runtime's own threads: a call made there runs inline, so a batch of
    /// calls submitted with [`Runtime::submit`] costs one hand-off, not one per call.
    static ON_PLUGIN_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The shared runtime, created on first use.
pub(crate) fn shared() -> Result<&'static Runtime, String> {
    RUNTIME.get_or_init(Runtime::new).as_ref().map_err(Clone::clone)
}

/// What every call into one loaded plugin needs to know. (No `Debug`: the config
/// JSON may hold a third-party plugin's credentials.)
pub(crate) struct SlotInfo {
    /// `authorizer (builtin:authorizer-static)`: names the plugin in logs and errors.
    pub label: String,
    /// First 12 hex digits of the component's SHA-256.
    pub sha256_short: String,
    pub config_json: Arc<str>,
    pub call_timeout: Duration,
    pub max_memory_bytes: u64,
}

pub(crate) struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    jobs: mpsc::Sender<Job>,
    components: Mutex<HashMap<[u8; 32], Component>>,
}

type Job = Box<dyn FnOnce() + Send>;

impl Runtime {
    fn new() -> Result<Runtime, String> {
        let workers = thread::available_parallelism().map_or(2, |n| n.get()).saturating_mul(2).clamp(4, 32);
        // Every instance lives on a worker for the duration of one call, so the pool
        // never needs more slots than there are workers.
        let instances = u32::try_from(workers).unwrap_or(32);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_core_instances(instances * CORE_INSTANCES_PER_COMPONENT)
            .total_memories(instances * MEMORIES_PER_COMPONENT)
            .total_tables(instances * TABLES_PER_COMPONENT)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .max_tables_per_module(TABLES_PER_COMPONENT)
            .table_elements(TABLE_ELEMENTS)
            // Per-call limits are enforced by `CallLimiter`; the pool only needs room
            // for the largest one a config may ask for.
            .max_memory_size(
                usize::try_from(super::config::MAX_MEMORY_MB as u64 * 1024 * 1024).unwrap_or(usize::MAX),
            );

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .concurrency_support(false)
            .epoch_interruption(true)
            .max_wasm_stack(WASM_STACK_BYTES)
            .cranelift_opt_level(OptLevel::Speed)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| format!("cannot configure wasmtime: {e:#}"))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| format!("cannot link WASI: {e:#}"))?;
        forbid_clock_waits(&mut linker).map_err(|e| format!("cannot restrict WASI clocks: {e:#}"))?;
        // Both worlds import the same `types` and `host` interfaces (see bindings.rs).
        AuthorizerPlugin::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |state| state)
            .map_err(|e| format!("cannot link the host interface: {e:#}"))?;

        let ticker_engine = engine.clone();
        thread::Builder::new()
            .name("burrow-plugin-epoch".into())
            .spawn(move || loop {
                thread::sleep(EPOCH_TICK);
                ticker_engine.increment_epoch();
            })
            .map_err(|e| format!("cannot start the epoch thread: {e}"))?;

        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..workers {
            let queue = queue.clone();
            thread::Builder::new()
                .name(format!("burrow-plugin-{i}"))
                .stack_size(WORKER_STACK_BYTES)
                .spawn(move || loop {
                    ON_PLUGIN_THREAD.set(true);
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    let Ok(job) = job else { return };
                    // A panic inside wasmtime must not shrink the pool; the caller
                    // sees its reply channel close and reports the failure.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                })
                .map_err(|e| format!("cannot start plugin threads: {e}"))?;
        }

        Ok(Runtime { engine, linker, jobs, components: Mutex::new(HashMap::new()) })
    }

    pub(crate) fn linker(&self) -> &Linker<CallState> {
        &self.linker
    }

    /// Compiles `bytes`, or returns the component compiled earlier for the same hash.
    pub(crate) fn compile(&self, sha256: [u8; 32], bytes: &[u8]) -> Result<Component, String> {
        if let Some(component) = self.lock_components().get(&sha256) {
            return Ok(component.clone());
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| format!("{e:#}"))?;
        let mut cache = self.lock_components();
        if cache.len() >= COMPONENT_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(sha256, component.clone());
        Ok(component)
    }

    fn lock_components(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Component>> {
        self.components.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one call on a worker thread in a fresh store: `instantiate` builds the
    /// instance, `invoke` calls the export. Blocks until the call ends, which the
    /// epoch deadline bounds.
    pub(crate) fn call<I, R>(
        &'static self,
        slot: &Arc<SlotInfo>,
        instantiate: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<I> + Send + 'static,
        invoke: impl FnOnce(I, &mut Store<CallState>) -> wasmtime::Result<R> + Send + 'static,
    ) -> Result<R, PluginError>
    where
        R: Send + 'static,
    {
        if ON_PLUGIN_THREAD.get() {
            return self.run(slot, instantiate, invoke);
        }
        let (reply, answer) = mpsc::sync_channel(1);
        let job_slot = slot.clone();
        let job: Job = Box::new(move || {
            let _ = reply.send(self.run(&job_slot, instantiate, invoke));
        });
        if self.jobs.send(job).is_err() {
            return Err(unavailable(slot, "the plugin threads have stopped".into()));
        }
        answer
            .recv()
            .unwrap_or_else(|_| Err(unavailable(slot, "the call panicked inside the runtime".into())))
    }

    /// Queues `job` for a plugin thread. Fails only when the threads are gone.
    pub(crate) fn submit(&self, job: Box<dyn FnOnce() + Send>) -> Result<(), ()> {
        self.jobs.send(job).map_err(|_| ())
    }

    /// Runs `work` on the current thread with calls inline. Only for a thread where
    /// wasmtime-wasi may `block_on`: a plugin thread, or a tokio worker inside
    /// `block_in_place`.
    pub(crate) fn inline<R>(work: impl FnOnce() -> R) -> R {
        let was = ON_PLUGIN_THREAD.replace(true);
        let result = work();
        ON_PLUGIN_THREAD.set(was);
        result
    }

    fn run<I, R>(
        &self,
        slot: &Arc<SlotInfo>,
        instantiate: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<I>,
        invoke: impl FnOnce(I, &mut Store<CallState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let stderr = StderrCapture::default();
        let wasi = WasiCtxBuilder::new().stderr(stderr.clone()).allow_tcp(false).allow_udp(false).build();
        let state = CallState {
            wasi,
            table: ResourceTable::new(),
            limiter: CallLimiter { limit: slot.max_memory_bytes, used: 0, hit: false },
            slot: slot.clone(),
            log_lines: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(deadline_ticks(slot.call_timeout));
        store.epoch_deadline_trap();

        let instance = match instantiate(&mut store) {
            Ok(instance) => instance,
            Err(err) if is_guest_failure(&store, &err) => return Err(classify(slot, &store, &stderr, err)),
            Err(err) => return Err(unavailable(slot, format!("cannot instantiate: {err:#}"))),
        };
        invoke(instance, &mut store).map_err(|err| classify(slot, &store, &stderr, err))
    }
}

/// The WASI monotonic clock interface as wasmtime-wasi defines it; the
/// `sleeping_plugin_traps` test fails if an upgrade changes it.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Replaces the clock subscriptions (how a guest sleeps or waits) with a trap: a guest
/// blocked inside a host call is out of reach of the epoch deadline and would hold a
/// worker thread for as long as it asked.
fn forbid_clock_waits(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    for name in ["subscribe-instant", "subscribe-duration"] {
        clock.func_wrap(name, move |_, (_,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
            wasmtime::bail!(
                "{MONOTONIC_CLOCK}.{name} is not available to plugins: a plugin call must not sleep or wait"
            )
        })?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

/// Ticks until the deadline: one extra because the first tick may come at once.
fn deadline_ticks(timeout: Duration) -> u64 {
    let ticks = timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos());
    u64::try_from(ticks).unwrap_or(u64::MAX - 1).max(1) + 1
}

fn is_guest_failure(store: &Store<CallState>, err: &wasmtime::Error) -> bool {
    store.data().limiter.hit || err.downcast_ref::<Trap>().is_some()
}

pub(crate) fn unavailable(slot: &SlotInfo, reason: String) -> PluginError {
    PluginError::Unavailable { plugin: slot.label.clone(), sha256: slot.sha256_short.clone(), reason }
}

/// Turns a failed call into the error that names the limit the plugin hit.
fn classify(
    slot: &SlotInfo,
    store: &Store<CallState>,
    stderr: &StderrCapture,
    err: wasmtime::Error,
) -> PluginError {
    let plugin = slot.label.clone();
    let sha256 = slot.sha256_short.clone();
    // The memory check comes first: a guest whose allocation failed may trap in many
    // ways (abort, unreachable, out of bounds) but the cause is the limit.
    if store.data().limiter.hit {
        return PluginError::Memory { plugin, sha256, limit_bytes: slot.max_memory_bytes };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::Timeout { plugin, sha256, limit: slot.call_timeout },
        Some(Trap::StackOverflow) => {
            PluginError::StackOverflow { plugin, sha256, limit_bytes: WASM_STACK_BYTES as u64 }
        }
        Some(trap) => PluginError::Trap { plugin, sha256, message: with_stderr(trap.to_string(), stderr) },
        None => PluginError::Trap { plugin, sha256, message: with_stderr(format!("{err:#}"), stderr) },
    }
}

/// Appends what the guest printed (a Rust panic message, typically) to a trap message.
fn with_stderr(message: String, stderr: &StderrCapture) -> String {
    let printed = stderr.text();
    let lines: Vec<&str> = printed
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("note: run with `RUST_BACKTRACE=1`"))
        .collect();
    if lines.is_empty() {
        message
    } else {
        format!("{message}; plugin stderr: {}", lines.join(" / "))
    }
}

/// The data of one call's `Store`.
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: CallLimiter,
    slot: Arc<SlotInfo>,
    /// `host.log` calls so far in this call.
    log_lines: u32,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl types::Host for CallState {}

impl host::Host for CallState {
    fn log(&mut self, level: types::LogLevel, message: String) {
        let plugin = self.slot.label.as_str();
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
        match level {
            types::LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            types::LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            types::LogLevel::Info => tracing::info!(plugin, "{message}"),
            types::LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            types::LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn config(&mut self) -> String {
        self.slot.config_json.to_string()
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

/// Caps the total linear memory of one call's instance (all its memories together)
/// and remembers that the cap was hit, so the failure is reported as a memory limit
/// whatever trap the guest ends in.
struct CallLimiter {
    limit: u64,
    used: u64,
    hit: bool,
}

impl ResourceLimiter for CallLimiter {
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

/// Guest stderr for one call: keeps the first bytes, silently drops the rest (a full
/// buffer must not turn into a guest-visible error).
#[derive(Clone, Default)]
struct StderrCapture(Arc<Mutex<Vec<u8>>>);

impl StderrCapture {
    fn push(&self, bytes: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let room = STDERR_CAPTURE_BYTES.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())).into_owned()
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
    fn deadline_covers_the_timeout() {
        assert_eq!(deadline_ticks(Duration::from_millis(100)), 51);
        assert_eq!(deadline_ticks(Duration::from_millis(1)), 2);
        assert_eq!(deadline_ticks(Duration::from_micros(2001)), 3);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("hello", 10), "hello");
    }

    #[test]
    fn stderr_capture_is_bounded() {
        let capture = StderrCapture::default();
        capture.push(&vec![b'x'; STDERR_CAPTURE_BYTES + 10]);
        capture.push(b"more");
        assert_eq!(capture.text().len(), STDERR_CAPTURE_BYTES);
    }
}
