//! The bodies of Burrow's fuzz targets, one public function per target.
//!
//! Each function takes the raw bytes libFuzzer (or a corpus file) gives it, drives one
//! piece of code that reads peer or operator input, and asserts what must hold for
//! every input: not only "no panic", but that whatever the code accepted is consistent
//! (a frame accepted in a state is legal in it, a parsed host name re-parses to itself,
//! a config that parsed still parses after a TOML round trip, ...). A failed assertion
//! panics, which libFuzzer reports as a crash.
//!
//! The fuzz binaries in `fuzz/fuzz_targets/` call these functions and nothing else, and
//! `tests/corpus.rs` replays every file of `fuzz/corpus/<target>/` through them on
//! stable Rust, so a crash found once stays fixed (`cargo test fuzz_corpus`).

mod agent_config;
#[cfg(feature = "host-config")]
mod host_config;
mod host_name;
mod input;
mod sniff;
mod tunnel;
mod ws;

pub use agent_config::agent_config;
#[cfg(feature = "host-config")]
pub use host_config::host_config;
pub use host_name::host_name;
pub use sniff::agent_port_sniff;
pub use tunnel::tunnel_frames;
pub use ws::ws_unwrap;

/// A target's body: panics when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by name, as its corpus directory is called, for the corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("tunnel_frames", tunnel_frames),
    ("agent_port_sniff", agent_port_sniff),
    ("ws_unwrap", ws_unwrap),
    ("host_name", host_name),
    ("agent_config", agent_config),
    #[cfg(feature = "host-config")]
    ("host_config", host_config),
];
