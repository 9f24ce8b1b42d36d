//! Burrow's built-in `terminal` workload kind: short interactive sessions.
//!
//! - SSH user `term-<id>` reaches agent `term-<id>`.
//! - On the configured `host_names`, the path `/terminal/<id>` (and everything below it)
//!   reaches agent `term-<id>`; its web terminal is `/terminal/<id>/_burrow/terminal`
//!   (the host's page and its WebSocket).
//! - Both go to the agent's `service` (default `shell`); the workload id is the agent id.
//! - A session ends `max_session` milliseconds after its agent connected (default 12 h).
//!
//! ```toml
//! [[plugins.workload]]
//! source = "builtin:workload-terminal"
//! config = { host_names = ["term.example.com"], max_session = 3600000, service = "shell" }
//! ```

use burrow_plugin_sdk::{export_workload, ExpiryRequest, Host, ResolveRequest, Resolved, Workload};
use serde::Deserialize;

/// Every terminal agent's id starts with this.
pub const AGENT_PREFIX: &str = "term-";
/// Web terminals live below this path.
pub const PATH_PREFIX: &str = "/terminal/";
/// Default `max_session`: 12 hours.
pub const DEFAULT_MAX_SESSION_MS: u64 = 12 * 60 * 60 * 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    host_names: Vec<String>,
    #[serde(default = "default_max_session")]
    max_session: u64,
    #[serde(default = "default_service")]
    service: String,
}

fn default_max_session() -> u64 {
    DEFAULT_MAX_SESSION_MS
}

fn default_service() -> String {
    "shell".to_string()
}

/// The plugin: the parsed config.
#[derive(Debug)]
pub struct Terminal {
    host_names: Vec<String>,
    max_session: u64,
    service: String,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl Terminal {
    fn from_config(config: Config) -> Result<Terminal, String> {
        let mut host_names = Vec::with_capacity(config.host_names.len());
        for (i, name) in config.host_names.iter().enumerate() {
            let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
            if name.is_empty() || name.contains(['/', ':', ' ']) {
                return Err(format!("host_names[{i}]: {:?} is not a host name", config.host_names[i]));
            }
            host_names.push(name);
        }
        if config.max_session == 0 {
            return Err("max_session: must be at least 1 (milliseconds)".into());
        }
        if config.service.is_empty()
            || !config.service.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!("service: {:?} must be a service name", config.service));
        }
        Ok(Terminal { host_names, max_session: config.max_session, service: config.service })
    }

    /// The terminal id of `/terminal/<id>[/...][?...]` on one of our host names.
    fn web_id<'r>(&self, host: &str, path: &'r str) -> Option<&'r str> {
        let host = host.strip_suffix('.').unwrap_or(host);
        if !self.host_names.iter().any(|name| name == host) {
            return None;
        }
        let rest = path.strip_prefix(PATH_PREFIX)?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let id = &rest[..end];
        valid_id(id).then_some(id)
    }

    /// The terminal id of SSH user `term-<id>`.
    fn ssh_id<'u>(&self, user: &'u str) -> Option<&'u str> {
        user.strip_prefix(AGENT_PREFIX).filter(|id| valid_id(id))
    }
}

impl Workload for Terminal {
    fn init(host: &impl Host) -> Result<Self, String> {
        let config: Config = host.config().map_err(|err| err.to_string())?;
        Terminal::from_config(config).map_err(|err| format!("invalid config: {err}"))
    }

    fn kind(&self, _host: &impl Host) -> String {
        "terminal".to_string()
    }

    fn resolve(&self, _host: &impl Host, req: ResolveRequest) -> Option<Resolved> {
        let id = if req.ssh_user.is_empty() {
            self.web_id(&req.host, &req.path)?
        } else {
            self.ssh_id(&req.ssh_user)?
        };
        let agent = format!("{AGENT_PREFIX}{id}");
        Some(Resolved { workload_id: agent.clone(), agent_id: agent, service: self.service.clone() })
    }

    /// A session's clock starts when its workload was first seen, not at each reconnect,
    /// so an agent cannot extend its session by reconnecting. The start is kept in the kv
    /// store (shared by replicas in cluster mode) for a day past the session's end, so a
    /// late reconnect is still refused.
    fn expired(&self, host: &impl Host, req: ExpiryRequest) -> bool {
        let key = format!("started:{}", req.workload_id);
        let started = match host.kv_get(&key) {
            Ok(Some(bytes)) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .map_or(req.connected_at, |s| s.min(req.connected_at)),
            Ok(None) => {
                let ttl = self.max_session.saturating_add(24 * 60 * 60 * 1000);
                if let Err(err) = host.kv_set(&key, req.connected_at.to_string().as_bytes(), Some(ttl)) {
                    host.warn(&format!("cannot record the start of {}: {err}", req.workload_id));
                }
                req.connected_at
            }
            // The store is down: judge by this connection alone rather than lock users out.
            Err(_) => req.connected_at,
        };
        host.now() >= started.saturating_add(self.max_session)
    }
}

export_workload!(Terminal, without_lifecycle);
burrow_plugin_sdk::embed_manifest!("workload-terminal.toml");

#[cfg(test)]
mod tests {
    use burrow_plugin_sdk::manifest::Manifest;
    use burrow_plugin_sdk::{Action, MockHost};

    use super::*;

    fn host() -> MockHost {
        MockHost::new().with_config_json(r#"{"host_names": ["Term.Localhost."], "max_session": 1500}"#)
    }

    fn web(host: &str, path: &str) -> ResolveRequest {
        ResolveRequest {
            action: Action::Websocket,
            host: host.into(),
            path: path.into(),
            method: "GET".into(),
            ssh_user: String::new(),
            port: 0,
        }
    }

    fn ssh(user: &str) -> ResolveRequest {
        ResolveRequest {
            action: Action::SshSession,
            host: String::new(),
            ssh_user: user.into(),
            ..web("", "")
        }
    }

    #[test]
    fn resolves_web_paths_and_ssh_users() {
        let host = host();
        let p = Terminal::init(&host).unwrap();
        let expected = Some(Resolved {
            workload_id: "term-7".into(),
            agent_id: "term-7".into(),
            service: "shell".into(),
        });
        for path in ["/terminal/7", "/terminal/7/", "/terminal/7/hello", "/terminal/7?cols=80"] {
            assert_eq!(p.resolve(&host, web("term.localhost", path)), expected, "{path}");
        }
        assert_eq!(p.resolve(&host, ssh("term-7")), expected);
        for (h, path) in
            [("term.localhost", "/terminal/"), ("term.localhost", "/other/7"), ("x.localhost", "/terminal/7")]
        {
            assert_eq!(p.resolve(&host, web(h, path)), None, "{h}{path}");
        }
        for user in ["term-", "demo", "term-A"] {
            assert_eq!(p.resolve(&host, ssh(user)), None, "{user}");
        }
    }

    #[test]
    fn a_session_ends_after_max_session() {
        let host = host();
        let p = Terminal::init(&host).unwrap();
        let req = ExpiryRequest {
            workload_id: "term-7".into(),
            agent_id: "term-7".into(),
            connected_at: MockHost::DEFAULT_NOW,
            agent_labels: Vec::new(),
        };
        host.advance(1499);
        assert!(!p.expired(&host, req.clone()));
        host.advance(1);
        assert!(p.expired(&host, req.clone()));
    }

    #[test]
    fn reconnecting_does_not_restart_the_session() {
        let host = host();
        let p = Terminal::init(&host).unwrap();
        let first = ExpiryRequest {
            workload_id: "term-7".into(),
            agent_id: "term-7".into(),
            connected_at: MockHost::DEFAULT_NOW,
            agent_labels: Vec::new(),
        };
        assert!(!p.expired(&host, first.clone()));
        host.advance(1000);
        // The agent reconnected a second later: its session still ends 1.5 s after the first.
        let again = ExpiryRequest { connected_at: MockHost::DEFAULT_NOW + 1000, ..first };
        assert!(!p.expired(&host, again.clone()));
        host.advance(500);
        assert!(p.expired(&host, again));
    }

    #[test]
    fn invalid_config_fails_init() {
        for (json, field) in [
            (r#"{"max_session": 0}"#, "max_session"),
            (r#"{"host_names": ["a/b"]}"#, "host_names[0]"),
            (r#"{"service": "Shell"}"#, "service"),
            (r#"{"max_sessions": 1}"#, "unknown field"),
        ] {
            let err = Terminal::init(&MockHost::new().with_config_json(json)).expect_err(json);
            assert!(err.contains(field), "{json}: {err}");
        }
    }

    #[test]
    fn manifest_vectors_pass() {
        let manifest = Manifest::from_toml(crate::MANIFEST).unwrap();
        manifest
            .run_workload::<Terminal>(
                &serde_json::json!({"host_names": ["term.localhost"], "max_session": 1500}),
            )
            .unwrap();
    }
}
