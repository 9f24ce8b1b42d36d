//! Burrow's built-in `ci-job` workload kind: a short-lived agent beside one CI job.
//!
//! - Host names: `<service>-job-<id>.<root-domain>` reach service `<service>` of agent
//!   `job-<id>` (`web-job-1234.ci.localhost`: service `web` of agent `job-1234`).
//! - SSH user names: `job-<id>` reaches the agent's `ssh_service` (default `ssh`),
//!   `<service>+job-<id>` any other service.
//! - The web terminal, `<any host name of the job>/_burrow/terminal`, runs in
//!   `ssh_service` too: a shell in the job to debug it.
//! - The workload id is the agent id (`job-<id>`), as `authorizer-static` assigns by
//!   default.
//! - A job has ended once its agent carries the label `job-finished = "true"`, or once
//!   the label `deadline` (unix ms) has passed.
//! - Lifecycle hooks log each agent's arrival and departure and keep the number of
//!   connected job agents in the key-value store (key `connected`).
//!
//! ```toml
//! [[plugins.workload]]
//! source = "builtin:workload-ci-job"
//! config = { root_domains = ["ci.example.com"] }   # default ["localhost"]
//! ```
//!
//! With the same root domain as `workspace`, list this kind first: `workspace` would
//! otherwise read `web-job-7.localhost` as service `web` of an agent named `job-7`.

use burrow_plugin_sdk::{
    export_workload, label, Action, AgentEvent, ExpiryRequest, Host, ResolveRequest, Resolved, Workload,
};
use serde::Deserialize;

/// Every job agent's id starts with this.
pub const AGENT_PREFIX: &str = "job-";
/// Label marking a finished job.
pub const FINISHED_LABEL: &str = "job-finished";
/// Label holding the job's deadline (unix ms).
pub const DEADLINE_LABEL: &str = "deadline";
/// Key-value counter of connected job agents.
pub const CONNECTED_KEY: &str = "connected";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_root_domains")]
    root_domains: Vec<String>,
    #[serde(default = "default_true")]
    ssh_users: bool,
    #[serde(default = "default_ssh_service")]
    ssh_service: String,
}

fn default_root_domains() -> Vec<String> {
    vec!["localhost".to_string()]
}

fn default_true() -> bool {
    true
}

fn default_ssh_service() -> String {
    "ssh".to_string()
}

/// The plugin: the parsed config.
#[derive(Debug)]
pub struct CiJob {
    /// Normalised and longest first.
    roots: Vec<String>,
    ssh_users: bool,
    ssh_service: String,
}

fn valid_service(service: &str) -> bool {
    !service.is_empty() && service.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `job-<id>` with a non-empty id of lowercase letters, digits, `-` and `_`.
fn valid_job_agent(agent: &str) -> bool {
    agent.strip_prefix(AGENT_PREFIX).is_some_and(|id| {
        !id.is_empty()
            && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    })
}

impl CiJob {
    fn from_config(config: Config) -> Result<CiJob, String> {
        let mut roots = Vec::with_capacity(config.root_domains.len());
        for (i, root) in config.root_domains.iter().enumerate() {
            let root = root.trim().trim_matches('.').to_ascii_lowercase();
            if root.is_empty() {
                return Err(format!("root_domains[{i}]: must not be empty"));
            }
            roots.push(root);
        }
        roots.sort_by_key(|root| std::cmp::Reverse(root.len()));
        if !valid_service(&config.ssh_service) {
            return Err(format!("ssh_service: {:?} must be a service name", config.ssh_service));
        }
        Ok(CiJob { roots, ssh_users: config.ssh_users, ssh_service: config.ssh_service })
    }

    /// `(service, agent)` of `<service>-job-<id>.<root>`.
    fn route_host<'h>(&self, host: &'h str) -> Option<(&'h str, &'h str)> {
        let host = host.strip_suffix('.').unwrap_or(host);
        self.roots.iter().find_map(|root| {
            let label = host.strip_suffix(root.as_str())?.strip_suffix('.')?;
            let (service, agent) = label.split_once('-')?;
            (valid_service(service) && valid_job_agent(agent)).then_some((service, agent))
        })
    }

    /// `(service, agent)` of `job-<id>` or `<service>+job-<id>`.
    fn route_ssh_user<'u>(&'u self, user: &'u str) -> Option<(&'u str, &'u str)> {
        if !self.ssh_users {
            return None;
        }
        let (service, agent) = user.split_once('+').unwrap_or((self.ssh_service.as_str(), user));
        (valid_service(service) && valid_job_agent(agent)).then_some((service, agent))
    }

    /// Adds `delta` to the connected-agents counter, never below zero (a host restart in
    /// single-process mode forgets the counter while agents are still connected).
    fn count(&self, host: &impl Host, delta: i64) -> Option<i64> {
        match host.kv_increment(CONNECTED_KEY, delta, None) {
            Ok(n) if n < 0 => {
                let _ = host.kv_set(CONNECTED_KEY, b"0", None);
                Some(0)
            }
            Ok(n) => Some(n),
            Err(err) => {
                host.warn(&format!("cannot count connected job agents: {err}"));
                None
            }
        }
    }
}

impl Workload for CiJob {
    fn init(host: &impl Host) -> Result<Self, String> {
        let config: Config = host.config().map_err(|err| err.to_string())?;
        CiJob::from_config(config).map_err(|err| format!("invalid config: {err}"))
    }

    fn kind(&self, _host: &impl Host) -> String {
        "ci-job".to_string()
    }

    fn resolve(&self, _host: &impl Host, req: ResolveRequest) -> Option<Resolved> {
        let (service, agent) = if req.ssh_user.is_empty() {
            self.route_host(&req.host)?
        } else {
            self.route_ssh_user(&req.ssh_user)?
        };
        // A web terminal on any of the job's host names is a session, like SSH's.
        let service = if req.action == Action::Terminal {
            self.ssh_service.as_str()
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
        if label(&req.agent_labels, FINISHED_LABEL).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return true;
        }
        let Some(text) = label(&req.agent_labels, DEADLINE_LABEL) else { return false };
        match text.trim().parse::<u64>() {
            Ok(deadline) => host.now() >= deadline,
            Err(_) => {
                host.warn(&format!(
                    "agent {}: label {DEADLINE_LABEL}={text:?} is not unix milliseconds; ignored",
                    req.agent_id
                ));
                false
            }
        }
    }

    fn agent_connected(&self, host: &impl Host, event: AgentEvent) {
        let count = self.count(host, 1);
        host.info(&format!(
            "job agent {} connected to {} from {} ({} job agents connected)",
            event.agent_id,
            event.host_replica,
            event.remote_addr,
            count.map_or_else(|| "unknown number of".to_string(), |n| n.to_string())
        ));
    }

    fn agent_disconnected(&self, host: &impl Host, event: AgentEvent) {
        let count = self.count(host, -1);
        host.info(&format!(
            "job agent {} disconnected from {} ({} job agents connected)",
            event.agent_id,
            event.host_replica,
            count.map_or_else(|| "unknown number of".to_string(), |n| n.to_string())
        ));
    }
}

export_workload!(CiJob);
burrow_plugin_sdk::embed_manifest!("workload-ci-job.toml");

#[cfg(test)]
mod tests {
    use burrow_plugin_sdk::manifest::Manifest;
    use burrow_plugin_sdk::{Action, KvError, MockHost};

    use super::*;

    fn plugin(host: &MockHost) -> CiJob {
        CiJob::init(host).unwrap()
    }

    fn resolve(host: &str, ssh_user: &str) -> ResolveRequest {
        let action = if ssh_user.is_empty() { Action::Http } else { Action::SshSession };
        ResolveRequest {
            action,
            host: host.into(),
            path: "/".into(),
            method: String::new(),
            ssh_user: ssh_user.into(),
            port: 0,
        }
    }

    fn event(agent: &str) -> AgentEvent {
        AgentEvent {
            agent_id: agent.into(),
            workload_id: agent.into(),
            replica_id: "r".into(),
            host_replica: "host-1".into(),
            remote_addr: "10.0.0.9:5000".into(),
            at: 0,
            agent_labels: Vec::new(),
        }
    }

    fn expiry(labels: &[(&str, &str)]) -> ExpiryRequest {
        ExpiryRequest {
            workload_id: "job-1".into(),
            agent_id: "job-1".into(),
            connected_at: 0,
            agent_labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn resolves_job_host_names_and_ssh_users() {
        let host = MockHost::new().with_config_json(r#"{"root_domains": ["ci.localhost"]}"#);
        let p = plugin(&host);
        let r = p.resolve(&host, resolve("web-job-1234.ci.localhost", "")).unwrap();
        assert_eq!(
            r,
            Resolved { workload_id: "job-1234".into(), agent_id: "job-1234".into(), service: "web".into() }
        );
        assert_eq!(p.resolve(&host, resolve("", "job-7")).unwrap().service, "ssh");
        assert_eq!(p.resolve(&host, resolve("", "logs+job-7")).unwrap().service, "logs");
        // The web terminal on any of the job's host names runs in the session service.
        let mut terminal = resolve("web-job-1234.ci.localhost", "");
        terminal.action = Action::Terminal;
        assert_eq!(p.resolve(&host, terminal).unwrap().service, "ssh");
        for miss in
            ["web-demo.ci.localhost", "web-job-.ci.localhost", "web-job-7.localhost", "job-7.ci.localhost"]
        {
            assert_eq!(p.resolve(&host, resolve(miss, "")), None, "{miss}");
        }
        for miss in ["demo", "job-", "ssh+demo"] {
            assert_eq!(p.resolve(&host, resolve("", miss)), None, "{miss}");
        }
    }

    #[test]
    fn a_job_ends_when_finished_or_past_its_deadline() {
        let host = MockHost::new();
        let p = plugin(&host);
        assert!(!p.expired(&host, expiry(&[])));
        assert!(p.expired(&host, expiry(&[("job-finished", "true")])));
        assert!(!p.expired(&host, expiry(&[("job-finished", "false")])));
        let deadline = (MockHost::DEFAULT_NOW + 5).to_string();
        assert!(!p.expired(&host, expiry(&[("deadline", &deadline)])));
        host.advance(5);
        assert!(p.expired(&host, expiry(&[("deadline", &deadline)])));
        assert!(!p.expired(&host, expiry(&[("deadline", "soon")])));
        assert!(host.logged("not unix milliseconds"));
    }

    #[test]
    fn lifecycle_counts_connected_agents() {
        let host = MockHost::new();
        let p = plugin(&host);
        p.agent_connected(&host, event("job-1"));
        p.agent_connected(&host, event("job-2"));
        assert_eq!(host.kv_get(CONNECTED_KEY).unwrap(), Some(b"2".to_vec()));
        assert!(
            host.logged("job agent job-2 connected to host-1 from 10.0.0.9:5000 (2 job agents connected)")
        );
        p.agent_disconnected(&host, event("job-1"));
        p.agent_disconnected(&host, event("job-2"));
        p.agent_disconnected(&host, event("job-3"));
        assert_eq!(host.kv_get(CONNECTED_KEY).unwrap(), Some(b"0".to_vec()), "never below zero");
        host.fail_kv(Some(KvError::Unavailable("redis down".into())));
        p.agent_connected(&host, event("job-4"));
        assert!(host.logged("cannot count connected job agents"));
        assert!(host.logged("unknown number of job agents connected"));
    }

    #[test]
    fn invalid_config_fails_init() {
        let host = MockHost::new().with_config_json(r#"{"root_domain": ["x"]}"#);
        assert!(CiJob::init(&host).err().unwrap().contains("unknown field"));
    }

    #[test]
    fn manifest_vectors_pass() {
        let manifest = Manifest::from_toml(crate::MANIFEST).unwrap();
        manifest.run_workload::<CiJob>(&serde_json::json!({"root_domains": ["ci.localhost"]})).unwrap();
    }
}
