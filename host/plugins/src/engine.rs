//! The wasmtime engine and linker, configured once per host from `[plugins.runtime]`.
//!
//! One `Engine` serves every plugin, as wasmtime recommends: compiled code, the pooling
//! allocator and the epoch ticker are shared. The pool is sized from the config
//! (`max_instances`, `max_memory_mb`) so an instance costs a slot, not an `mmap`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use super::bindings;
use super::breaker::BreakerConfig;
use super::cache::{ArtifactCache, CacheOutcome};
use super::config::RuntimeConfig;
use super::host_api::{CallState, HostCtx, TABLE_ELEMENTS};

/// How often the epoch advances: the granularity of call deadlines.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Compiled artifacts kept on disk.
const CACHE_ENTRIES: usize = 64;
/// Per-component pool limits. Rust components need a handful of each; the headroom is
/// for components from other toolchains.
const CORE_INSTANCES_PER_COMPONENT: u32 = 50;
const MEMORIES_PER_COMPONENT: u32 = 4;
const TABLES_PER_COMPONENT: u32 = 16;
/// Host stack for a call's fiber: the wasm stack limit plus room for host frames.
const FIBER_HOST_STACK: usize = 1024 * 1024;

/// The engine every plugin of one host runs on.
pub(crate) struct PluginEngine {
    pub engine: Engine,
    pub linker: Linker<CallState>,
    cache: Option<ArtifactCache>,
    /// Fuel metering is on: every call must be given fuel.
    pub fuel: bool,
    pub max_wasm_stack: usize,
    /// Every version gets a breaker with these settings.
    pub breaker: BreakerConfig,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl PluginEngine {
    pub(crate) fn new(
        runtime: &RuntimeConfig,
        cache_dir: Option<&Path>,
    ) -> Result<Arc<PluginEngine>, String> {
        let instances = runtime.max_instances;
        let max_wasm_stack = runtime.max_wasm_stack_kb as usize * 1024;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(10))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(8))
            .total_stacks(instances)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .max_tables_per_module(TABLES_PER_COMPONENT)
            .table_elements(TABLE_ELEMENTS)
            // Per-slot limits are enforced by the store's limiter; the pool only needs
            // room for the largest one a config may ask for.
            .max_memory_size(
                usize::try_from(u64::from(runtime.max_memory_mb) * 1024 * 1024).unwrap_or(usize::MAX),
            );

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            // Plugins use no component-model async; without it calls cost about half.
            .concurrency_support(false)
            .epoch_interruption(true)
            .consume_fuel(runtime.fuel)
            .max_wasm_stack(max_wasm_stack)
            .async_stack_size(max_wasm_stack + FIBER_HOST_STACK)
            .cranelift_opt_level(OptLevel::Speed)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| format!("cannot configure wasmtime: {e:#}"))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| format!("cannot link WASI: {e:#}"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| format!("cannot link wasi:http: {e:#}"))?;
        link_host_imports(&mut linker).map_err(|e| format!("cannot link the host imports: {e:#}"))?;

        let cache = match cache_dir {
            Some(dir) => match ArtifactCache::open(dir, CACHE_ENTRIES) {
                Ok(cache) => Some(cache),
                Err(err) => {
                    tracing::warn!(dir = %dir.display(), "plugin artifact cache disabled: {err}");
                    None
                }
            },
            None => None,
        };

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (ticker_engine, stop) = (engine.clone(), stop_ticker.clone());
        thread::Builder::new()
            .name("burrow-plugin-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|e| format!("cannot start the epoch thread: {e}"))?;

        Ok(Arc::new(PluginEngine {
            engine,
            linker,
            cache,
            fuel: runtime.fuel,
            max_wasm_stack,
            breaker: runtime.breaker,
            stop_ticker,
        }))
    }

    /// Compiles `bytes` (CPU-heavy: call it off the async workers), or loads the
    /// artifact compiled earlier for the same hash and engine settings.
    pub(crate) fn compile(
        &self,
        sha256: &[u8; 32],
        bytes: &[u8],
    ) -> Result<(Component, CacheOutcome), String> {
        match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, sha256, bytes).map_err(|e| e.to_string()),
            None => Component::new(&self.engine, bytes)
                .map(|c| (c, CacheOutcome::Disabled))
                .map_err(|e| format!("{e:#}")),
        }
    }

    /// Epoch ticks until `timeout`: one extra because the first tick may come at once.
    pub(crate) fn deadline_ticks(timeout: Duration) -> u64 {
        let ticks = timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos());
        u64::try_from(ticks).unwrap_or(u64::MAX - 1).max(1) + 1
    }
}

/// Links `log`, `config`, `clock` and `kv` (the `burrow:plugin` imports every world shares).
fn link_host_imports(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    fn host(state: &mut CallState) -> &mut HostCtx {
        &mut state.host
    }
    fn kv(state: &mut CallState) -> &mut super::host_api::kv::KvCtx {
        &mut state.kv
    }
    bindings::types::add_to_linker::<_, HasSelf<HostCtx>>(linker, host)?;
    bindings::log::add_to_linker::<_, HasSelf<HostCtx>>(linker, host)?;
    bindings::config::add_to_linker::<_, HasSelf<HostCtx>>(linker, host)?;
    bindings::clock::add_to_linker::<_, HasSelf<HostCtx>>(linker, host)?;
    bindings::kv::add_to_linker::<_, HasSelf<super::host_api::kv::KvCtx>>(linker, kv)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_covers_the_timeout() {
        assert_eq!(PluginEngine::deadline_ticks(Duration::from_millis(100)), 101);
        assert_eq!(PluginEngine::deadline_ticks(Duration::from_micros(1)), 2);
        assert_eq!(PluginEngine::deadline_ticks(Duration::from_micros(2001)), 4);
    }
}
