//! wit-bindgen output for `../../wit` (package `burrow:plugin@1.1.0`).
//!
//! The three plugin worlds all export `plugin`, and wit-bindgen's cross-crate export
//! macros are `#[macro_export]`ed under names derived from the interface, so generating
//! the worlds as they are would define the `plugin` export macro three times in this
//! crate. Instead the worlds are cut into pieces that share no export: one world for the
//! imports and one per exported interface. The `export_*!` macros weave together the
//! pieces a kind needs; each piece embeds its own component-type section in the plugin,
//! and `wasm-component-ld` unions them back into the kind's world. No piece's section is
//! linked unless a plugin uses it, so a plugin never claims exports it lacks.

/// `burrow:plugin/imports`: the host imports, `types`, and `wasi:http` (generated here
/// with `generate_all`, so plugins need no other WASI bindings crate).
pub mod imports {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "burrow:plugin/imports@1.1.0",
        generate_all,
    });
}

/// Exports `plugin.init`, exported by every kind.
pub mod init {
    wit_bindgen::generate!({
        path: "../../wit",
        inline: "package burrow:sdk-init;\nworld init-piece { export burrow:plugin/plugin@1.1.0; }\n",
        world: "burrow:sdk-init/init-piece",
        pub_export_macro: true,
    });
}

/// Exports `authorizer` (world `authorizer-plugin`).
pub mod authorizer {
    wit_bindgen::generate!({
        path: "../../wit",
        inline: "package burrow:sdk-authorizer;\nworld authorizer-piece { export burrow:plugin/authorizer@1.1.0; }\n",
        world: "burrow:sdk-authorizer/authorizer-piece",
        pub_export_macro: true,
        with: {
            "burrow:plugin/types@1.1.0": crate::bindings::imports::burrow::plugin::types,
        },
    });
}

/// Exports `workload` (world `workload-plugin`).
pub mod workload {
    wit_bindgen::generate!({
        path: "../../wit",
        inline: "package burrow:sdk-workload;\nworld workload-piece { export burrow:plugin/workload@1.1.0; }\n",
        world: "burrow:sdk-workload/workload-piece",
        pub_export_macro: true,
        with: {
            "burrow:plugin/types@1.1.0": crate::bindings::imports::burrow::plugin::types,
        },
    });
}

/// Exports `workload-lifecycle` (1.1.0, world `workload-plugin-with-lifecycle`).
pub mod lifecycle {
    wit_bindgen::generate!({
        path: "../../wit",
        inline: "package burrow:sdk-lifecycle;\nworld lifecycle-piece { export burrow:plugin/workload-lifecycle@1.1.0; }\n",
        world: "burrow:sdk-lifecycle/lifecycle-piece",
        pub_export_macro: true,
        with: {
            "burrow:plugin/types@1.1.0": crate::bindings::imports::burrow::plugin::types,
        },
    });
}

/// Exports `router` (world `router-plugin`).
pub mod router {
    wit_bindgen::generate!({
        path: "../../wit",
        inline: "package burrow:sdk-router;\nworld router-piece { export burrow:plugin/router@1.1.0; }\n",
        world: "burrow:sdk-router/router-piece",
        pub_export_macro: true,
        with: {
            "burrow:plugin/types@1.1.0": crate::bindings::imports::burrow::plugin::types,
        },
    });
}
