//! The workspace naming scheme as plain functions, testable natively.
//!
//! - Host names: `<service>-<agent>.<root-domain>`. Service names contain no `-`, agent
//!   ids may, so the label splits at its first `-`: `api-edge-eu-1.localhost` is service
//!   `api` of agent `edge-eu-1`.
//! - SSH user names: `<agent>` (service `ssh_service`, default `ssh`) or
//!   `<service>+<agent>`.
//! - The web terminal (`<any host name of the agent>/_burrow/terminal`) runs in
//!   `ssh_service` too.

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
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

/// The parsed config.
#[derive(Debug)]
pub struct Scheme {
    /// Normalised and longest first, so `a.example.com` wins over `example.com`.
    roots: Vec<String>,
    ssh_users: bool,
    ssh_service: String,
}

/// Where a request goes: a service of an agent.
#[derive(Debug, PartialEq, Eq)]
pub struct Route<'a> {
    pub service: &'a str,
    pub agent: &'a str,
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
}

fn is_service_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

fn valid_agent(agent: &str) -> bool {
    !agent.is_empty() && agent.chars().all(is_id_char)
}

fn valid_service(service: &str) -> bool {
    !service.is_empty() && service.chars().all(is_service_char)
}

impl Scheme {
    pub fn from_json(json: &str) -> Result<Scheme, String> {
        // Through a JSON value, so errors name the field without the position in the
        // JSON the host made of the config (admins wrote TOML: that position is noise).
        let raw: RawConfig = serde_json::from_str::<serde_json::Value>(json)
            .and_then(serde_json::from_value)
            .map_err(|err| err.to_string())?;
        let mut roots = Vec::with_capacity(raw.root_domains.len());
        for (i, root) in raw.root_domains.iter().enumerate() {
            let root = root.trim().trim_matches('.').to_ascii_lowercase();
            if root.is_empty() {
                return Err(format!("root_domains[{i}]: must not be empty"));
            }
            roots.push(root);
        }
        roots.sort_by_key(|root| std::cmp::Reverse(root.len()));
        if !valid_service(&raw.ssh_service) {
            return Err(format!(
                "ssh_service: {:?} must be a service name (lowercase letters, digits, '_')",
                raw.ssh_service
            ));
        }
        Ok(Scheme { roots, ssh_users: raw.ssh_users, ssh_service: raw.ssh_service })
    }

    /// `host` is lowercased and has no port (the host guarantees both).
    pub fn route_host<'h>(&self, host: &'h str) -> Option<Route<'h>> {
        let host = host.strip_suffix('.').unwrap_or(host);
        self.roots.iter().find_map(|root| {
            let label = host.strip_suffix(root.as_str())?.strip_suffix('.')?;
            let (service, agent) = label.split_once('-')?;
            (valid_service(service) && valid_agent(agent)).then_some(Route { service, agent })
        })
    }

    /// The service that runs sessions: SSH users' default and every web terminal's.
    pub fn session_service(&self) -> &str {
        &self.ssh_service
    }

    /// `<agent>` or `<service>+<agent>`; `None` when SSH users are off or the name has
    /// another shape.
    pub fn route_ssh_user<'u>(&'u self, user: &'u str) -> Option<Route<'u>> {
        if !self.ssh_users {
            return None;
        }
        let (service, agent) = match user.split_once('+') {
            Some((service, agent)) => (service, agent),
            None => (self.ssh_service.as_str(), user),
        };
        (valid_service(service) && valid_agent(agent)).then_some(Route { service, agent })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route<'h>(scheme: &Scheme, host: &'h str) -> Option<(&'h str, &'h str)> {
        scheme.route_host(host).map(|r| (r.service, r.agent))
    }

    #[test]
    fn default_is_localhost() {
        let scheme = Scheme::from_json("{}").unwrap();
        assert_eq!(route(&scheme, "web-demo.localhost"), Some(("web", "demo")));
        assert_eq!(route(&scheme, "web-demo.localhost."), Some(("web", "demo")));
        assert_eq!(route(&scheme, "api-edge-eu-1.localhost"), Some(("api", "edge-eu-1")));
    }

    #[test]
    fn rejects_other_shapes() {
        let scheme = Scheme::from_json("{}").unwrap();
        for host in [
            "localhost",
            "web.localhost",
            "-demo.localhost",
            "web-.localhost",
            "a.web-demo.localhost",
            "web-demo.example.com",
            "web-demolocalhost",
            "web-de mo.localhost",
            "legacy.localhost",
            "",
        ] {
            assert_eq!(route(&scheme, host), None, "{host}");
        }
    }

    #[test]
    fn longest_root_wins() {
        let scheme =
            Scheme::from_json(r#"{"root_domains": ["Example.com", ".tunnels.example.com."]}"#).unwrap();
        assert_eq!(route(&scheme, "web-demo.tunnels.example.com"), Some(("web", "demo")));
        assert_eq!(route(&scheme, "web-demo.example.com"), Some(("web", "demo")));
    }

    #[test]
    fn ssh_users() {
        let scheme = Scheme::from_json("{}").unwrap();
        let ssh = |user: &'static str| scheme.route_ssh_user(user).map(|r| (r.service, r.agent));
        assert_eq!(ssh("demo"), Some(("ssh", "demo")));
        assert_eq!(ssh("workspace-42"), Some(("ssh", "workspace-42")));
        assert_eq!(ssh("sftp+demo"), Some(("sftp", "demo")));
        for bad in ["", "+demo", "sftp+", "Demo", "a+b+c", "we-b+demo"] {
            assert_eq!(ssh(bad), None, "{bad}");
        }
        let off = Scheme::from_json(r#"{"ssh_users": false}"#).unwrap();
        assert_eq!(off.route_ssh_user("demo"), None);
        let custom = Scheme::from_json(r#"{"ssh_service": "shell"}"#).unwrap();
        assert_eq!(custom.route_ssh_user("demo").map(|r| r.service), Some("shell"));
    }

    #[test]
    fn bad_config() {
        let err = |json: &str| Scheme::from_json(json).expect_err("config accepted");
        assert!(err(r#"{"root_domains": [""]}"#).starts_with("root_domains[0]"));
        assert!(err(r#"{"roots": []}"#).contains("unknown field"));
        assert!(err(r#"{"ssh_service": "my-ssh"}"#).starts_with("ssh_service"));
    }
}
