//! Test-only workload plugin (never embedded in the host) built the way a plugin written
//! for contract 1.0.0 was: wit-bindgen directly, against a frozen copy of that contract in
//! `wit/` (no `agent-event`, no `workload-lifecycle`). A 1.1 host must keep loading it.
//!
//! Kind `legacy`: host `legacy.localhost` (or config `host_name`) is service `web` of agent
//! `legacy`, workload `legacy`. Workloads never end.

wit_bindgen::generate!({
    path: "wit",
    world: "burrow:plugin/workload-plugin@1.0.0",
    // The world imports wasi:http, which this plugin never calls; the bindings are
    // generated only so the world is complete.
    generate_all,
});

use burrow::plugin::types::{ExpiryRequest, LogLevel, ResolveRequest, Resolved};
use burrow::plugin::{config, log};

const DEFAULT_HOST_NAME: &str = "legacy.localhost";

/// The host name this plugin claims; reading it exercises the 1.0.0 `config` import.
fn host_name() -> Result<String, String> {
    match config::get("host_name") {
        None => Ok(DEFAULT_HOST_NAME.to_string()),
        Some(config::ConfigValue::Text(name)) if !name.is_empty() => Ok(name.to_ascii_lowercase()),
        Some(_) => Err("test-old-minor: invalid config: host_name must be a non-empty string".to_string()),
    }
}

struct Legacy;

impl exports::burrow::plugin::plugin::Guest for Legacy {
    fn init() -> Result<(), String> {
        let name = host_name()?;
        log::log(LogLevel::Info, &format!("test-old-minor (contract 1.0.0) serving {name}"));
        Ok(())
    }
}

impl exports::burrow::plugin::workload::Guest for Legacy {
    fn kind() -> String {
        "legacy".to_string()
    }

    fn resolve(req: ResolveRequest) -> Option<Resolved> {
        let name = host_name().unwrap_or_else(|err| panic!("{err}"));
        (req.ssh_user.is_empty() && req.host == name).then(|| Resolved {
            workload_id: "legacy".to_string(),
            agent_id: "legacy".to_string(),
            service: "web".to_string(),
        })
    }

    fn expired(_req: ExpiryRequest) -> bool {
        false
    }
}

export!(Legacy);
