//! Burrow's built-in `workspace` workload kind: one long-lived agent per workspace.
//!
//! - HTTP, WebSocket, other upgrades and web terminals by host name:
//!   `<service>-<agent>.<root-domain>` (`web-demo.localhost` is service `web` of agent
//!   `demo`).
//! - SSH sessions and port-forwards by SSH user name: `<agent>` reaches the agent's
//!   `ssh_service` (default `ssh`), `<service>+<agent>` any other service. Since `<agent>`
//!   matches nearly any user name, list workload kinds with their own SSH users (such as
//!   `terminal`'s `term-<id>`) before this one in `[[plugins.workload]]`, or set
//!   `ssh_users = false`.
//! - The workload id is the agent id.
//! - A workspace has ended once the agent label `expires-at` (unix ms) is in the past.
//!
//! ```toml
//! [[plugins.workload]]
//! source = "builtin:workload-workspace"
//! config = { root_domains = ["localhost"], ssh_users = true, ssh_service = "ssh" }
//! ```
//!
//! `root_domains` defaults to `["localhost"]`, so `*.localhost` works out of the box
//! (browsers resolve it to loopback).

mod scheme;

use burrow_plugin_sdk::{
    export_workload, label, Action, ExpiryRequest, Host, ResolveRequest, Resolved, Workload,
};
use scheme::{Route, Scheme};

/// The agent label holding the workspace's end (unix ms).
pub const EXPIRES_AT_LABEL: &str = "expires-at";

/// The plugin: the parsed config.
pub struct Workspace {
    scheme: Scheme,
}

impl Workload for Workspace {
    fn init(host: &impl Host) -> Result<Self, String> {
        let scheme =
            Scheme::from_json(&host.config_json()).map_err(|err| format!("invalid config: {err}"))?;
        Ok(Workspace { scheme })
    }

    fn kind(&self, _host: &impl Host) -> String {
        "workspace".to_string()
    }

    fn resolve(&self, _host: &impl Host, req: ResolveRequest) -> Option<Resolved> {
        let route = if req.ssh_user.is_empty() {
            self.scheme.route_host(&req.host)?
        } else {
            self.scheme.route_ssh_user(&req.ssh_user)?
        };
        let Route { service, agent } = route;
        // A web terminal on any of the agent's host names is a session, like SSH's.
        let service = if req.action == Action::Terminal {
            self.scheme.session_service()
        } else {
            req.forward_service().unwrap_or(service)
        };
        Some(Resolved {
            workload_id: agent.to_string(),
            agent_id: agent.to_string(),
            service: service.to_string(),
        })
    }

    fn expired(&self, host: &impl Host, req: ExpiryRequest) -> bool {
        let Some(text) = label(&req.agent_labels, EXPIRES_AT_LABEL) else { return false };
        match text.trim().parse::<u64>() {
            Ok(expires_at) => host.now() >= expires_at,
            Err(_) => {
                // A typo in a label must not end a workspace; say so instead.
                host.warn(&format!(
                    "agent {}: label {EXPIRES_AT_LABEL}={text:?} is not unix milliseconds; ignored",
                    req.agent_id
                ));
                false
            }
        }
    }
}

export_workload!(Workspace, without_lifecycle);
burrow_plugin_sdk::embed_manifest!("workload-workspace.toml");

#[cfg(test)]
mod tests {
    use burrow_plugin_sdk::manifest::Manifest;
    use burrow_plugin_sdk::{Action, MockHost};

    use super::*;

    fn resolve(host: &str, ssh_user: &str, action: Action) -> ResolveRequest {
        ResolveRequest {
            action,
            host: host.into(),
            path: "/".into(),
            method: String::new(),
            ssh_user: ssh_user.into(),
            port: 0,
        }
    }

    fn expiry(labels: &[(&str, &str)]) -> ExpiryRequest {
        ExpiryRequest {
            workload_id: "demo".into(),
            agent_id: "demo".into(),
            connected_at: 0,
            agent_labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn resolves_host_names_and_ssh_users() {
        let host = MockHost::new();
        let plugin = Workspace::init(&host).unwrap();
        assert_eq!(plugin.kind(&host), "workspace");
        let web = plugin.resolve(&host, resolve("web-demo.localhost", "", Action::Http)).unwrap();
        assert_eq!(
            web,
            Resolved { workload_id: "demo".into(), agent_id: "demo".into(), service: "web".into() }
        );
        let ssh = plugin.resolve(&host, resolve("", "demo", Action::SshSession)).unwrap();
        assert_eq!((ssh.agent_id.as_str(), ssh.service.as_str()), ("demo", "ssh"));
        let fwd = plugin.resolve(&host, resolve("", "db+demo", Action::PortForward)).unwrap();
        assert_eq!(fwd.service, "db");
        // `ssh -L 8080:web:80 demo@host`: the destination names the service.
        let named = plugin.resolve(&host, resolve("web", "demo", Action::PortForward)).unwrap();
        assert_eq!((named.agent_id.as_str(), named.service.as_str()), ("demo", "web"));
        // `ssh -L 8080:localhost:80 web+demo@host`: the SSH user names it.
        let local = plugin.resolve(&host, resolve("localhost", "web+demo", Action::PortForward)).unwrap();
        assert_eq!(local.service, "web");
        assert_eq!(plugin.resolve(&host, resolve("nothing.example", "", Action::Http)), None);
        // The web terminal on any of the agent's host names runs in the session service.
        let terminal = plugin.resolve(&host, resolve("web-demo.localhost", "", Action::Terminal)).unwrap();
        assert_eq!((terminal.agent_id.as_str(), terminal.service.as_str()), ("demo", "ssh"));
    }

    #[test]
    fn expires_at_label_ends_the_workspace() {
        let host = MockHost::new();
        let plugin = Workspace::init(&host).unwrap();
        assert!(!plugin.expired(&host, expiry(&[])));
        let at = (MockHost::DEFAULT_NOW + 1).to_string();
        assert!(!plugin.expired(&host, expiry(&[("expires-at", &at)])));
        host.advance(1);
        assert!(plugin.expired(&host, expiry(&[("expires-at", &at)])));
        assert!(!plugin.expired(&host, expiry(&[("expires-at", "tomorrow")])));
        assert!(host.logged("not unix milliseconds"));
    }

    #[test]
    fn invalid_config_fails_init() {
        let host = MockHost::new().with_config_json(r#"{"root_domains": [""]}"#);
        assert!(Workspace::init(&host).err().unwrap().contains("root_domains[0]"));
    }

    #[test]
    fn manifest_vectors_pass() {
        let manifest = Manifest::from_toml(crate::MANIFEST).unwrap();
        let ran = manifest.run_workload::<Workspace>(&serde_json::json!({})).unwrap();
        assert!(ran >= 3, "{ran}");
    }
}
