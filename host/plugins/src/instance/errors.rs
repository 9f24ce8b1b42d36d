//! How a failed plugin call becomes a [`PluginError`] that names the plugin, its version
//! (sha256) and the limit it hit.

use wasmtime::{Store, Trap};

use super::{Budget, Version};
use crate::host_api::CallState;
use crate::PluginError;

impl Version {
    pub(super) fn unavailable(&self, reason: String) -> PluginError {
        PluginError::Unavailable {
            plugin: self.info.label.clone(),
            sha256: self.info.sha256_short().to_owned(),
            reason,
        }
    }

    pub(super) fn timeout(&self, budget: Budget) -> PluginError {
        let (key, limit) = self.limit(budget);
        PluginError::Timeout {
            plugin: self.info.label.clone(),
            sha256: self.info.sha256_short().to_owned(),
            key,
            limit,
        }
    }

    pub(super) fn init_failed(&self, reason: String) -> PluginError {
        PluginError::Init {
            plugin: self.info.label.clone(),
            sha256: self.info.sha256_short().to_owned(),
            reason,
        }
    }

    /// An answer the contract forbids.
    pub(crate) fn invalid(&self, reason: String) -> PluginError {
        PluginError::InvalidResult {
            plugin: self.info.label.clone(),
            sha256: self.info.sha256_short().to_owned(),
            reason,
        }
    }

    /// Turns a failed call into the error that names the limit the plugin hit.
    pub(super) fn classify(
        &self,
        store: &Store<CallState>,
        err: wasmtime::Error,
        budget: Budget,
    ) -> PluginError {
        let plugin = self.info.label.clone();
        let sha256 = self.info.sha256_short().to_owned();
        // The memory check comes first: a guest whose allocation failed may trap in many
        // ways (abort, unreachable, out of bounds) but the cause is the limit.
        if store.data().limiter.hit {
            return PluginError::Memory { plugin, sha256, limit_bytes: self.limits.max_memory_bytes };
        }
        let printed = store.data().stderr.summary();
        let with_stderr = |message: String| match &printed {
            Some(printed) => format!("{message}; plugin stderr: {printed}"),
            None => message,
        };
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                let (key, limit) = self.limit(budget);
                PluginError::Timeout { plugin, sha256, key, limit }
            }
            Some(Trap::StackOverflow) => {
                PluginError::StackOverflow { plugin, sha256, limit_bytes: self.engine.max_wasm_stack as u64 }
            }
            Some(Trap::OutOfFuel) => {
                PluginError::Fuel { plugin, sha256, limit: self.limits.fuel.unwrap_or(0) }
            }
            Some(trap) => PluginError::Trap { plugin, sha256, message: with_stderr(trap.to_string()) },
            None => PluginError::Trap { plugin, sha256, message: with_stderr(format!("{err:#}")) },
        }
    }
}

pub(super) fn is_guest_failure(store: &Store<CallState>, err: &wasmtime::Error) -> bool {
    store.data().limiter.hit || err.downcast_ref::<Trap>().is_some()
}
