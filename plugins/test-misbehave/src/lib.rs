//! Test-only authorizer (never embedded in the host). It admits one agent like
//! `authorizer-static`, then misbehaves in the user calls (`authenticate-user` and
//! `authorize`) as its config asks, so tests can check that the host contains traps,
//! runaway loops, memory bombs, stack overflows and sleeps, and keeps serving.
//!
//! ```toml
//! config = { mode = "trap", agent_id = "a1", agent_token_sha256 = "<hex>" }
//! ```
//!
//! - `mode` (required; without it `init` refuses the config):
//!   - `ok` (alias `allow`): every user is allowed (`misbehave` when they present any
//!     credential, else anonymous);
//!   - `trap-at-init`: `init` fails, so the canary refuses the plugin and every call on a
//!     fresh instance traps;
//!   - `trap`: panics;
//!   - `loop`: spins forever (the epoch deadline or fuel stops it);
//!   - `memory`: allocates until memory runs out;
//!   - `recursion`: recurses until the wasm stack overflows;
//!   - `sleep`: sleeps an hour in a host call (only the call deadline stops it);
//!   - `log-flood`: logs 256 lines of 4 KiB each, then allows;
//!   - `deny-all`: denies every request with 403 and `reason`.
//! - `agent_id`: the id given to the agent (default `misbehave`).
//! - `agent_token_sha256`: hex SHA-256 of the one accepted agent token; without it any
//!   non-empty token is accepted. Any hex is taken (a wrong length matches nothing), so
//!   tests that never connect an agent may write a dummy value.
//! - `reason`: the `deny-all` reason (default `denied by test-misbehave v2`).
//! - `init_ms`: `init` first keeps a CPU busy this long by the host's clock (a plugin
//!   parsing a large config; a huge value never finishes), for the host's `init_timeout`.

use std::hint::black_box;

use burrow_plugin_sdk::{
    export_authorizer, AgentAuthOutcome, AgentHello, AgentIdentity, AuthorizeRequest, Authorizer, Credential,
    Decision, Host, LogLevel, Principal, UserAuthOutcome, UserAuthRequest,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: Mode,
    #[serde(default = "default_agent_id")]
    agent_id: String,
    #[serde(default)]
    agent_token_sha256: Option<String>,
    #[serde(default = "default_reason")]
    reason: String,
    #[serde(default)]
    init_ms: u64,
}

fn default_agent_id() -> String {
    "misbehave".to_string()
}

fn default_reason() -> String {
    "denied by test-misbehave v2".to_string()
}

/// How the plugin misbehaves.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[serde(alias = "allow")]
    Ok,
    TrapAtInit,
    Trap,
    Loop,
    Memory,
    Recursion,
    Sleep,
    LogFlood,
    DenyAll,
}

/// The plugin: its parsed config.
pub struct Misbehave {
    mode: Mode,
    agent_id: String,
    agent_token_sha256: Option<Vec<u8>>,
    reason: String,
}

/// Recurses forever. Only scalars cross each call, so every level costs wasm stack (the
/// engine's limit) and none of the shadow stack in linear memory; the work after the call
/// keeps it from becoming a loop.
#[allow(unconditional_recursion, reason = "the point of this mode is a stack overflow")]
#[inline(never)]
fn recurse(a: u64, b: u64) -> u64 {
    // A rotate, unlike `+` or `^`, is no accumulator LLVM could turn into a loop.
    recurse(b.wrapping_mul(31), a ^ b).rotate_left((a & 63) as u32)
}

impl Misbehave {
    /// Acts out the mode; returns only for the modes that answer.
    fn misbehave(&self, host: &impl Host) {
        match self.mode {
            Mode::Ok | Mode::DenyAll => {}
            // `init` failed, so no instance of this value exists.
            Mode::TrapAtInit => unreachable!("test-misbehave: trap-at-init never initialises"),
            Mode::Trap => panic!("test-misbehave: deliberate trap"),
            Mode::Loop => loop {
                black_box(());
            },
            Mode::Memory => {
                host.info("test-misbehave: allocating until memory runs out");
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
            Mode::LogFlood => {
                let line = "x".repeat(4096);
                for i in 0..256 {
                    host.log(LogLevel::Info, &format!("test-misbehave: flood line {i}: {line}"));
                }
            }
        }
    }
}

impl Authorizer for Misbehave {
    fn init(host: &impl Host) -> Result<Self, String> {
        let config: Config = host.config().map_err(|err| format!("test-misbehave: {err}"))?;
        // Busy, not asleep: guest work the epoch deadline can interrupt.
        let until = host.now().saturating_add(config.init_ms);
        while config.init_ms > 0 && host.now() < until {
            black_box(());
        }
        if config.mode == Mode::TrapAtInit {
            return Err("test-misbehave: mode trap-at-init refuses to initialise".into());
        }
        if config.agent_id.is_empty() {
            return Err("test-misbehave: invalid config: agent_id must not be empty".into());
        }
        let agent_token_sha256 = match &config.agent_token_sha256 {
            Some(text) => Some(
                hex::decode(text.trim())
                    .map_err(|err| format!("test-misbehave: invalid config: agent_token_sha256: {err}"))?,
            ),
            None => None,
        };
        Ok(Misbehave {
            mode: config.mode,
            agent_id: config.agent_id,
            agent_token_sha256,
            reason: config.reason,
        })
    }

    fn authenticate_agent(&self, _host: &impl Host, req: AgentHello) -> AgentAuthOutcome {
        let accepted = !req.token.is_empty()
            && self.agent_token_sha256.as_deref().is_none_or(|expected| {
                let presented: [u8; 32] = Sha256::digest(req.token.as_bytes()).into();
                bool::from(presented[..].ct_eq(expected))
            });
        if accepted {
            AgentAuthOutcome::Accepted(AgentIdentity {
                agent_id: self.agent_id.clone(),
                workload_kind: "workspace".into(),
                workload_id: self.agent_id.clone(),
                expires_at: None,
                labels: Vec::new(),
            })
        } else {
            AgentAuthOutcome::Rejected("agent token not recognised".into())
        }
    }

    fn authenticate_user(&self, host: &impl Host, req: UserAuthRequest) -> UserAuthOutcome {
        self.misbehave(host);
        match req.credential {
            Credential::None => UserAuthOutcome::Anonymous,
            _ => UserAuthOutcome::Authenticated(Principal::new("misbehave")),
        }
    }

    fn authorize(&self, host: &impl Host, _req: AuthorizeRequest) -> Decision {
        self.misbehave(host);
        match self.mode {
            Mode::DenyAll => Decision::forbidden(self.reason.clone()),
            _ => Decision::allow(),
        }
    }
}

export_authorizer!(Misbehave);

#[cfg(test)]
mod tests {
    use burrow_plugin_sdk::{Action, MockHost, Target};

    use super::*;

    fn hex_sha256(secret: &str) -> String {
        hex::encode(Sha256::digest(secret.as_bytes()))
    }

    fn plugin(config: serde_json::Value) -> (MockHost, Result<Misbehave, String>) {
        let host = MockHost::new().with_config(config);
        let plugin = Misbehave::init(&host);
        (host, plugin)
    }

    fn authorize_request() -> AuthorizeRequest {
        AuthorizeRequest {
            principal: None,
            target: Target {
                workload_kind: "workspace".into(),
                workload_id: "a1".into(),
                agent_id: "a1".into(),
                service: "web".into(),
            },
            action: Action::Http,
            client_addr: String::new(),
            host: String::new(),
            method: String::new(),
            path: String::new(),
            agent_labels: Vec::new(),
        }
    }

    fn user() -> UserAuthRequest {
        UserAuthRequest {
            credential: Credential::Bearer("x".into()),
            client_addr: String::new(),
            host: String::new(),
            action: Action::Http,
        }
    }

    #[test]
    fn agent_is_admitted_by_token_hash_in_every_mode() {
        let (host, p) = plugin(
            serde_json::json!({"mode": "trap", "agent_id": "a1", "agent_token_sha256": hex_sha256("t")}),
        );
        let p = p.unwrap();
        let hello = |token: &str| AgentHello { token: token.into(), ..AgentHello::default() };
        match p.authenticate_agent(&host, hello("t")) {
            AgentAuthOutcome::Accepted(id) => {
                assert_eq!((id.agent_id.as_str(), id.workload_id.as_str()), ("a1", "a1"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(p.authenticate_agent(&host, hello("u")), AgentAuthOutcome::Rejected(_)));
        assert!(matches!(p.authenticate_agent(&host, hello("")), AgentAuthOutcome::Rejected(_)));
        // A dummy hash is accepted by init and matches nothing.
        let (host, p) = plugin(serde_json::json!({"mode": "ok", "agent_token_sha256": "00"}));
        assert!(matches!(p.unwrap().authenticate_agent(&host, hello("t")), AgentAuthOutcome::Rejected(_)));
        // Without a hash any non-empty token gets the default id.
        let (host, p) = plugin(serde_json::json!({"mode": "ok"}));
        match p.unwrap().authenticate_agent(&host, hello("anything")) {
            AgentAuthOutcome::Accepted(id) => assert_eq!(id.agent_id, "misbehave"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ok_allows_and_deny_all_denies() {
        let (host, p) = plugin(serde_json::json!({"mode": "allow"}));
        let p = p.unwrap();
        assert_eq!(
            p.authenticate_user(&host, user()),
            UserAuthOutcome::Authenticated(Principal::new("misbehave"))
        );
        assert_eq!(p.authorize(&host, authorize_request()), Decision::allow());
        let (host, p) = plugin(serde_json::json!({"mode": "deny-all"}));
        assert_eq!(
            p.unwrap().authorize(&host, authorize_request()),
            Decision::forbidden("denied by test-misbehave v2")
        );
    }

    #[test]
    fn init_refuses_missing_mode_and_trap_at_init() {
        let (_, p) = plugin(serde_json::json!({"agent_id": "a1"}));
        assert!(p.err().unwrap().contains("missing field `mode`"));
        let (_, p) = plugin(serde_json::json!({"mode": "trap-at-init"}));
        assert!(p.err().unwrap().contains("trap-at-init"));
        let (_, p) = plugin(serde_json::json!({"mode": "explode"}));
        assert!(p.err().unwrap().contains("unknown variant"));
    }

    #[test]
    #[should_panic(expected = "test-misbehave: deliberate trap")]
    fn trap_panics_in_user_calls() {
        let (host, p) = plugin(serde_json::json!({"mode": "trap"}));
        p.unwrap().authenticate_user(&host, user());
    }

    #[test]
    fn log_flood_logs_then_allows() {
        let (host, p) = plugin(serde_json::json!({"mode": "log-flood"}));
        assert_eq!(p.unwrap().authorize(&host, authorize_request()), Decision::allow());
        assert_eq!(host.logs().len(), 256);
    }
}
