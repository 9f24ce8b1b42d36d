//! Host-side bindings generated from `wit/` (package `burrow:plugin@0.1.0`).

/// World `authorizer-plugin`; also owns the shared `types` and `host` interfaces.
pub(crate) mod authorizer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "authorizer-plugin",
    });
}

/// World `router-plugin`, reusing the authorizer world's `types` and `host` so one
/// `Host` implementation and one linker serve both.
pub(crate) mod router {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "router-plugin",
        with: {
            "burrow:plugin/types": super::authorizer::burrow::plugin::types,
            "burrow:plugin/host": super::authorizer::burrow::plugin::host,
        },
    });
}

pub(crate) use authorizer::burrow::plugin::{host, types};
pub(crate) use authorizer::{AuthorizerPlugin, AuthorizerPluginPre};
pub(crate) use router::RouterPluginPre;
