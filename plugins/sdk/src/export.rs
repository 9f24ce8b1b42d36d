//! The `export_*!` macros and the glue they expand to: adapters implementing
//! wit-bindgen's `Guest` traits on top of the SDK's kind traits, and the per-instance
//! cell holding the plugin's state.

use std::cell::RefCell;
use std::marker::PhantomData;

use crate::bindings::imports::burrow::plugin::types as wit;
use crate::bindings::{authorizer, init, lifecycle, router, workload};
use crate::plugin::{Authorizer, Router, Workload};
use crate::WasmHost;

/// Holds the plugin value of one instance. A component instance never runs two calls at
/// once (and has no threads), so a thread-local `RefCell` is the whole story.
pub struct InstanceCell<T>(RefCell<Option<T>>);

impl<T> InstanceCell<T> {
    /// An empty cell.
    #[allow(clippy::new_without_default, reason = "used in a const thread_local initialiser")]
    pub const fn new() -> Self {
        Self(RefCell::new(None))
    }

    /// The `plugin.init` export: (re)builds the value. A failure empties the cell, so the
    /// next call initialises again rather than serving state from an older config.
    fn init(&self, init: impl FnOnce() -> Result<T, String>) -> Result<(), String> {
        let value = init();
        let mut slot = self.0.borrow_mut();
        match value {
            Ok(value) => {
                *slot = Some(value);
                Ok(())
            }
            Err(err) => {
                *slot = None;
                Err(err)
            }
        }
    }

    /// Runs `f` on the value, initialising it first if `init` was never called (fresh
    /// instances). An init error traps with its message, which the host reports.
    fn with<R>(&self, init: impl FnOnce() -> Result<T, String>, f: impl FnOnce(&T) -> R) -> R {
        if self.0.borrow().is_none() {
            match init() {
                Ok(value) => *self.0.borrow_mut() = Some(value),
                Err(err) => panic!("{}: init failed: {err}", std::any::type_name::<T>()),
            }
        }
        let slot = self.0.borrow();
        f(slot.as_ref().expect("initialised above"))
    }
}

/// Implemented by a type the export macros define next to each plugin: the way to its
/// instance cell, which must live in the plugin crate because statics cannot be generic.
pub trait Slot: 'static {
    /// The plugin type.
    type Plugin: 'static;
    /// Runs `f` on the instance cell.
    fn with_cell<R>(f: impl FnOnce(&InstanceCell<Self::Plugin>) -> R) -> R;
}

/// wit-bindgen `Guest` implementations for an [`Authorizer`] behind slot `S`.
pub struct AuthorizerExport<S>(PhantomData<S>);
/// wit-bindgen `Guest` implementations for a [`Workload`] behind slot `S`.
pub struct WorkloadExport<S>(PhantomData<S>);
/// wit-bindgen `Guest` implementations for a [`Router`] behind slot `S`.
pub struct RouterExport<S>(PhantomData<S>);

fn with_authorizer<S: Slot, R>(f: impl FnOnce(&S::Plugin) -> R) -> R
where
    S::Plugin: Authorizer,
{
    S::with_cell(|cell| cell.with(|| S::Plugin::init(&WasmHost), f))
}

fn with_workload<S: Slot, R>(f: impl FnOnce(&S::Plugin) -> R) -> R
where
    S::Plugin: Workload,
{
    S::with_cell(|cell| cell.with(|| S::Plugin::init(&WasmHost), f))
}

fn with_router<S: Slot, R>(f: impl FnOnce(&S::Plugin) -> R) -> R
where
    S::Plugin: Router,
{
    S::with_cell(|cell| cell.with(|| S::Plugin::init(&WasmHost), f))
}

impl<S: Slot> init::exports::burrow::plugin::plugin::Guest for AuthorizerExport<S>
where
    S::Plugin: Authorizer,
{
    fn init() -> Result<(), String> {
        S::with_cell(|cell| cell.init(|| S::Plugin::init(&WasmHost)))
    }
}

impl<S: Slot> authorizer::exports::burrow::plugin::authorizer::Guest for AuthorizerExport<S>
where
    S::Plugin: Authorizer,
{
    fn authenticate_agent(req: wit::AgentHello) -> wit::AgentAuthOutcome {
        with_authorizer::<S, _>(|p| p.authenticate_agent(&WasmHost, req.into())).into()
    }

    fn authenticate_user(req: wit::UserAuthRequest) -> wit::UserAuthOutcome {
        with_authorizer::<S, _>(|p| p.authenticate_user(&WasmHost, req.into())).into()
    }

    fn authorize(req: wit::AuthorizeRequest) -> wit::Decision {
        with_authorizer::<S, _>(|p| p.authorize(&WasmHost, req.into())).into()
    }
}

impl<S: Slot> init::exports::burrow::plugin::plugin::Guest for WorkloadExport<S>
where
    S::Plugin: Workload,
{
    fn init() -> Result<(), String> {
        S::with_cell(|cell| cell.init(|| S::Plugin::init(&WasmHost)))
    }
}

impl<S: Slot> workload::exports::burrow::plugin::workload::Guest for WorkloadExport<S>
where
    S::Plugin: Workload,
{
    fn kind() -> String {
        with_workload::<S, _>(|p| p.kind(&WasmHost))
    }

    fn resolve(req: wit::ResolveRequest) -> Option<wit::Resolved> {
        with_workload::<S, _>(|p| p.resolve(&WasmHost, req.into())).map(Into::into)
    }

    fn expired(req: wit::ExpiryRequest) -> bool {
        with_workload::<S, _>(|p| p.expired(&WasmHost, req.into()))
    }
}

impl<S: Slot> lifecycle::exports::burrow::plugin::workload_lifecycle::Guest for WorkloadExport<S>
where
    S::Plugin: Workload,
{
    fn agent_connected(event: wit::AgentEvent) {
        with_workload::<S, _>(|p| p.agent_connected(&WasmHost, event.into()))
    }

    fn agent_disconnected(event: wit::AgentEvent) {
        with_workload::<S, _>(|p| p.agent_disconnected(&WasmHost, event.into()))
    }
}

impl<S: Slot> init::exports::burrow::plugin::plugin::Guest for RouterExport<S>
where
    S::Plugin: Router,
{
    fn init() -> Result<(), String> {
        S::with_cell(|cell| cell.init(|| S::Plugin::init(&WasmHost)))
    }
}

impl<S: Slot> router::exports::burrow::plugin::router::Guest for RouterExport<S>
where
    S::Plugin: Router,
{
    fn route(req: wit::RouteRequest) -> Vec<u32> {
        with_router::<S, _>(|p| p.route(&WasmHost, req.into()))
    }
}

/// Defines `__BurrowSlot`, the [`Slot`] of plugin type `$ty`.
#[doc(hidden)]
#[macro_export]
macro_rules! __burrow_slot {
    ($ty:ty) => {
        struct __BurrowSlot;
        ::std::thread_local! {
            static __BURROW_INSTANCE: $crate::__private::InstanceCell<$ty> =
                const { $crate::__private::InstanceCell::new() };
        }
        impl $crate::__private::Slot for __BurrowSlot {
            type Plugin = $ty;
            fn with_cell<R>(f: impl FnOnce(&$crate::__private::InstanceCell<$ty>) -> R) -> R {
                __BURROW_INSTANCE.with(f)
            }
        }
    };
}

/// Exports an [`Authorizer`](crate::Authorizer) as the component's implementation of
/// world `burrow:plugin/authorizer-plugin@1.1.0`.
///
/// Use it once, in the crate root of a `cdylib` built for `wasm32-wasip2`.
///
/// ```
/// use burrow_plugin_sdk::*;
///
/// struct OpenDoor;
///
/// impl Authorizer for OpenDoor {
///     fn init(_host: &impl Host) -> Result<Self, String> {
///         Ok(OpenDoor)
///     }
///     fn authenticate_agent(&self, _host: &impl Host, _req: AgentHello) -> AgentAuthOutcome {
///         AgentAuthOutcome::Rejected("no agents here".into())
///     }
///     fn authenticate_user(&self, _host: &impl Host, _req: UserAuthRequest) -> UserAuthOutcome {
///         UserAuthOutcome::Anonymous
///     }
///     fn authorize(&self, _host: &impl Host, _req: AuthorizeRequest) -> Decision {
///         Decision::allow()
///     }
/// }
///
/// export_authorizer!(OpenDoor);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_authorizer {
    ($ty:ty) => {
        const _: () = {
            $crate::__burrow_slot!($ty);
            type __BurrowExport = $crate::__private::AuthorizerExport<__BurrowSlot>;
            $crate::__private::bindings::init::export!(
                __BurrowExport with_types_in $crate::__private::bindings::init
            );
            $crate::__private::bindings::authorizer::export!(
                __BurrowExport with_types_in $crate::__private::bindings::authorizer
            );
        };
    };
}

/// Exports a [`Workload`](crate::Workload) as the component's implementation of world
/// `burrow:plugin/workload-plugin-with-lifecycle@1.1.0`: the host then calls its
/// `agent_connected` / `agent_disconnected` hooks.
///
/// `export_workload!(T, without_lifecycle)` exports plain `workload-plugin` instead, for
/// a kind that does not need the hooks (the host then skips those calls entirely).
///
/// ```
/// use burrow_plugin_sdk::*;
///
/// struct Fixed;
///
/// impl Workload for Fixed {
///     fn init(_host: &impl Host) -> Result<Self, String> {
///         Ok(Fixed)
///     }
///     fn kind(&self, _host: &impl Host) -> String {
///         "fixed".into()
///     }
///     fn resolve(&self, _host: &impl Host, req: ResolveRequest) -> Option<Resolved> {
///         (req.host == "app.localhost").then(|| Resolved {
///             workload_id: "app".into(),
///             agent_id: "app".into(),
///             service: "web".into(),
///         })
///     }
///     fn expired(&self, _host: &impl Host, _req: ExpiryRequest) -> bool {
///         false
///     }
/// }
///
/// export_workload!(Fixed);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_workload {
    ($ty:ty) => {
        const _: () = {
            $crate::__burrow_slot!($ty);
            type __BurrowExport = $crate::__private::WorkloadExport<__BurrowSlot>;
            $crate::__private::bindings::init::export!(
                __BurrowExport with_types_in $crate::__private::bindings::init
            );
            $crate::__private::bindings::workload::export!(
                __BurrowExport with_types_in $crate::__private::bindings::workload
            );
            $crate::__private::bindings::lifecycle::export!(
                __BurrowExport with_types_in $crate::__private::bindings::lifecycle
            );
        };
    };
    ($ty:ty, without_lifecycle) => {
        const _: () = {
            $crate::__burrow_slot!($ty);
            type __BurrowExport = $crate::__private::WorkloadExport<__BurrowSlot>;
            $crate::__private::bindings::init::export!(
                __BurrowExport with_types_in $crate::__private::bindings::init
            );
            $crate::__private::bindings::workload::export!(
                __BurrowExport with_types_in $crate::__private::bindings::workload
            );
        };
    };
}

/// Exports a [`Router`](crate::Router) as the component's implementation of world
/// `burrow:plugin/router-plugin@1.1.0`.
///
/// ```
/// use burrow_plugin_sdk::*;
///
/// struct AsGiven;
///
/// impl Router for AsGiven {
///     fn init(_host: &impl Host) -> Result<Self, String> {
///         Ok(AsGiven)
///     }
///     fn route(&self, _host: &impl Host, req: RouteRequest) -> Vec<u32> {
///         (0..req.candidates.len() as u32).collect()
///     }
/// }
///
/// export_router!(AsGiven);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_router {
    ($ty:ty) => {
        const _: () = {
            $crate::__burrow_slot!($ty);
            type __BurrowExport = $crate::__private::RouterExport<__BurrowSlot>;
            $crate::__private::bindings::init::export!(
                __BurrowExport with_types_in $crate::__private::bindings::init
            );
            $crate::__private::bindings::router::export!(
                __BurrowExport with_types_in $crate::__private::bindings::router
            );
        };
    };
}

/// Embeds the plugin's manifest into the component and defines `pub const MANIFEST:
/// &str` holding its text, for `cargo test`.
///
/// `$file` is a path relative to the crate root (`"team-token.toml"`). The text lands
/// in the component's custom section `burrow-plugin-manifest`, where the host, `burrow-host
/// plugin check` and the test harness read it: the manifest travels with every copy of
/// the `.wasm`, whatever its file is called. Natively nothing is embedded; run the same
/// vectors with [`manifest::Manifest::from_toml`](crate::manifest::Manifest::from_toml)`(MANIFEST)`.
///
/// ```
/// burrow_plugin_sdk::embed_manifest!("README.md"); // any file of the crate; a manifest in practice
/// # fn main() { assert!(MANIFEST.contains("burrow-plugin-sdk")); }
/// ```
#[macro_export]
macro_rules! embed_manifest {
    ($file:literal) => {
        /// The plugin's manifest, as embedded in the component.
        pub const MANIFEST: &str =
            ::core::include_str!(::core::concat!(::core::env!("CARGO_MANIFEST_DIR"), "/", $file));
        #[cfg(target_family = "wasm")]
        const _: () = {
            // `used` keeps the section through LTO; the component linker copies the
            // core module's custom sections into the component as they are.
            #[unsafe(link_section = "burrow-plugin-manifest")]
            #[used]
            static __BURROW_MANIFEST: [u8; MANIFEST.len()] =
                *::core::include_bytes!(::core::concat!(::core::env!("CARGO_MANIFEST_DIR"), "/", $file));
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_initialises_lazily_once() {
        let cell = InstanceCell::<u32>::new();
        let mut inits = 0;
        assert_eq!(
            cell.with(
                || {
                    inits += 1;
                    Ok(7)
                },
                |v| *v
            ),
            7
        );
        assert_eq!(cell.with(|| panic!("initialised already"), |v| *v + 1), 8);
        assert_eq!(inits, 1);
    }

    #[test]
    fn init_replaces_and_failure_clears() {
        let cell = InstanceCell::<u32>::new();
        cell.init(|| Ok(1)).unwrap();
        cell.init(|| Ok(2)).unwrap();
        assert_eq!(cell.with(|| panic!("initialised already"), |v| *v), 2);
        assert_eq!(cell.init(|| Err("bad config".into())), Err("bad config".to_string()));
        assert_eq!(cell.with(|| Ok(3), |v| *v), 3, "a failed init does not leave the old state behind");
    }

    #[test]
    #[should_panic(expected = "init failed: bad config")]
    fn lazy_init_failure_traps_with_the_message() {
        let cell = InstanceCell::<u32>::new();
        cell.with(|| Err("bad config".into()), |v| *v);
    }
}
