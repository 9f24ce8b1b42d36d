//! `[plugins.runtime]`: the engine's settings, shared by every plugin.

use serde::Deserialize;

use super::{PluginConfigError, MAX_MEMORY_MB};
use crate::breaker::BreakerConfig;

/// `[plugins.runtime]`: the engine, configured once at start (a reload does not change it).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Instances alive at once across every plugin (the pooling allocator's slots):
    /// calls in flight plus warm instances. Default 128.
    pub max_instances: u32,
    /// Largest `max_memory_mb` a slot may ask for (the pool reserves this per instance).
    /// Default 256.
    pub max_memory_mb: u32,
    /// Meter fuel, so slots may set `fuel`. Costs some speed on every call. Default false.
    pub fuel: bool,
    /// Wasm stack per call, in KiB; deeper recursion traps as a stack overflow. Default 512.
    pub max_wasm_stack_kb: u32,
    /// The crash-loop breaker applied to every plugin.
    pub breaker: BreakerConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: 128,
            max_memory_mb: 256,
            fuel: false,
            max_wasm_stack_kb: 512,
            breaker: BreakerConfig::default(),
        }
    }
}

impl RuntimeConfig {
    pub(super) fn validate(&self) -> Result<(), PluginConfigError> {
        let err = |key: &str, message: String| {
            Err(PluginConfigError::new(format!("plugins.runtime.{key}"), message))
        };
        if !(1..=10_000).contains(&self.max_instances) {
            return err("max_instances", format!("must be between 1 and 10000, got {}", self.max_instances));
        }
        if !(1..=MAX_MEMORY_MB).contains(&self.max_memory_mb) {
            return err(
                "max_memory_mb",
                format!("must be between 1 and {MAX_MEMORY_MB}, got {}", self.max_memory_mb),
            );
        }
        if !(64..=16 * 1024).contains(&self.max_wasm_stack_kb) {
            return err(
                "max_wasm_stack_kb",
                format!("must be between 64 and 16384, got {}", self.max_wasm_stack_kb),
            );
        }
        self.breaker
            .validate()
            .map_err(|e| PluginConfigError::new("plugins.runtime.breaker".into(), e.to_string()))
    }
}
