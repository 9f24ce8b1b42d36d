//! Test-only authorizer (never embedded in the host): authenticates one agent like
//! `authorizer-static`, then misbehaves in `authorize` as its config asks, so tests
//! can check that the host contains traps, runaway loops, memory bombs, stack
//! overflows and sleeps, and keeps serving.
//!
//! Config: `{ "agent_id": "...", "agent_token_sha256": "<hex>",
//!            "mode": "trap" | "loop" | "memory" | "recursion" | "sleep" | "allow" }`

wit_bindgen::generate!({
    path: "../../wit",
    world: "authorizer-plugin",
});

use std::hint::black_box;

use burrow::plugin::host;
use burrow::plugin::types::{
    AccessAllowed, AccessDecision, AccessRequest, AgentAuthOutcome, AgentAuthRequest, AgentIdentity, LogLevel,
};
use exports::burrow::plugin::authorizer::Guest;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    agent_id: String,
    agent_token_sha256: String,
    mode: Mode,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Trap,
    Loop,
    Memory,
    Recursion,
    Sleep,
    Allow,
}

fn config() -> Config {
    serde_json::from_str(&host::config())
        .unwrap_or_else(|err| panic!("test-misbehave: invalid config: {err}"))
}

/// Recurses forever. Only scalars cross each call, so every level costs wasm stack
/// (the engine's limit) and none of the shadow stack in linear memory; the work after
/// the call keeps it from becoming a loop.
#[allow(unconditional_recursion, reason = "the point of this mode is a stack overflow")]
#[inline(never)]
fn recurse(a: u64, b: u64) -> u64 {
    // A rotate, unlike `+` or `^`, is no accumulator LLVM could turn into a loop.
    recurse(b.wrapping_mul(31), a ^ b).rotate_left((a & 63) as u32)
}

struct Misbehave;

impl Guest for Misbehave {
    fn authenticate_agent(req: AgentAuthRequest) -> AgentAuthOutcome {
        let config = config();
        let mut expected = [0u8; 32];
        hex::decode_to_slice(config.agent_token_sha256.trim(), &mut expected)
            .unwrap_or_else(|err| panic!("test-misbehave: agent_token_sha256: {err}"));
        let presented: [u8; 32] = Sha256::digest(req.token.as_bytes()).into();
        if !req.token.is_empty() && bool::from(presented.ct_eq(&expected)) {
            AgentAuthOutcome::Accepted(AgentIdentity { agent_id: config.agent_id, labels: Vec::new() })
        } else {
            AgentAuthOutcome::Rejected("agent token not recognised".to_string())
        }
    }

    fn authorize(_req: AccessRequest) -> AccessDecision {
        match config().mode {
            Mode::Trap => panic!("test-misbehave: deliberate trap"),
            Mode::Loop => loop {
                black_box(());
            },
            Mode::Memory => {
                host::log(LogLevel::Info, "allocating until memory runs out");
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Touch every page so the memory is really used, not just reserved.
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            Mode::Recursion => {
                let result = recurse(black_box(1), black_box(2));
                panic!("test-misbehave: recursion returned {result}")
            }
            Mode::Sleep => {
                // Blocks in a host call, where the epoch deadline cannot reach.
                std::thread::sleep(std::time::Duration::from_secs(3600));
                panic!("test-misbehave: woke up")
            }
            Mode::Allow => AccessDecision::Allow(AccessAllowed {
                principal: "misbehave".to_string(),
                strip_credentials: false,
            }),
        }
    }
}

export!(Misbehave);
