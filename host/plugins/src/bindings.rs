//! Host-side bindings generated from `wit/` (package `burrow:plugin@1.1.0`).
//!
//! One `bindgen!` per world, because a world fixes the exports a component must have.
//! The first (`authorizer-plugin`) generates the shared `types` and the host's own
//! imports (`log`, `config`, `clock`, `kv`); the others reuse them through `with`, so one
//! implementation of each import serves every kind and one `Linker` links them all.
//! `wasi:*` interfaces map to wasmtime-wasi / wasmtime-wasi-http, which implement them.
//!
//! Everything is async: `kv` talks to Redis and `wasi:http` to the network, and calls
//! run on the host's tokio runtime instead of parking a thread.

/// World `authorizer-plugin`; also owns `types` and the host imports.
pub(crate) mod authorizer {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "authorizer-plugin",
        imports: { "burrow:plugin/kv": async, default: tracing },
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

/// World `workload-plugin-with-lifecycle`. A plain `workload-plugin` lacks the
/// `workload-lifecycle` export; the host detects that at load time and loads the
/// component through [`workload_plain`] instead.
pub(crate) mod workload {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "workload-plugin-with-lifecycle",
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "burrow:plugin/types": super::authorizer::burrow::plugin::types,
            "burrow:plugin/log": super::authorizer::burrow::plugin::log,
            "burrow:plugin/config": super::authorizer::burrow::plugin::config,
            "burrow:plugin/clock": super::authorizer::burrow::plugin::clock,
            "burrow:plugin/kv": super::authorizer::burrow::plugin::kv,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

/// World `workload-plugin` (no lifecycle hooks).
pub(crate) mod workload_plain {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "workload-plugin",
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "burrow:plugin/types": super::authorizer::burrow::plugin::types,
            "burrow:plugin/log": super::authorizer::burrow::plugin::log,
            "burrow:plugin/config": super::authorizer::burrow::plugin::config,
            "burrow:plugin/clock": super::authorizer::burrow::plugin::clock,
            "burrow:plugin/kv": super::authorizer::burrow::plugin::kv,
            "burrow:plugin/plugin": super::workload::exports::burrow::plugin::plugin,
            "burrow:plugin/workload": super::workload::exports::burrow::plugin::workload,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

/// World `router-plugin`.
pub(crate) mod router {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "router-plugin",
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "burrow:plugin/types": super::authorizer::burrow::plugin::types,
            "burrow:plugin/log": super::authorizer::burrow::plugin::log,
            "burrow:plugin/config": super::authorizer::burrow::plugin::config,
            "burrow:plugin/clock": super::authorizer::burrow::plugin::clock,
            "burrow:plugin/kv": super::authorizer::burrow::plugin::kv,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

pub(crate) use authorizer::burrow::plugin::{clock, config, kv, log, types};
