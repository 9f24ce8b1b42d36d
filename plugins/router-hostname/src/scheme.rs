//! The host-name scheme as plain functions, testable natively.

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_root_domains")]
    root_domains: Vec<String>,
}

fn default_root_domains() -> Vec<String> {
    vec!["localhost".to_string()]
}

/// Root domains, normalised and longest first so `a.example.com` wins over `example.com`.
pub struct RootDomains(Vec<String>);

#[derive(Debug, PartialEq, Eq)]
pub struct HostRoute<'a> {
    pub service: &'a str,
    pub agent: &'a str,
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
}

impl RootDomains {
    pub fn from_json(json: &str) -> Result<RootDomains, String> {
        let raw: RawConfig = serde_json::from_str(json).map_err(|err| err.to_string())?;
        let mut roots = Vec::with_capacity(raw.root_domains.len());
        for (i, root) in raw.root_domains.iter().enumerate() {
            let root = root.trim().trim_matches('.').to_ascii_lowercase();
            if root.is_empty() {
                return Err(format!("root_domains[{i}]: must not be empty"));
            }
            roots.push(root);
        }
        roots.sort_by_key(|root| std::cmp::Reverse(root.len()));
        Ok(RootDomains(roots))
    }

    /// `host` is lowercased and has no port (the host guarantees both).
    pub fn route<'h>(&self, host: &'h str) -> Option<HostRoute<'h>> {
        let host = host.strip_suffix('.').unwrap_or(host);
        self.0.iter().find_map(|root| {
            let label = host.strip_suffix(root.as_str())?.strip_suffix('.')?;
            if label.is_empty() || !label.chars().all(is_label_char) {
                return None;
            }
            // Service names contain no '-', agent ids may: split at the first one.
            let (service, agent) = label.split_once('-')?;
            (!service.is_empty() && !agent.is_empty()).then_some(HostRoute { service, agent })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route<'h>(roots: &RootDomains, host: &'h str) -> Option<(&'h str, &'h str)> {
        roots.route(host).map(|r| (r.service, r.agent))
    }

    #[test]
    fn default_is_localhost() {
        let roots = RootDomains::from_json("{}").unwrap();
        assert_eq!(route(&roots, "web-demo.localhost"), Some(("web", "demo")));
        assert_eq!(route(&roots, "web-demo.localhost."), Some(("web", "demo")));
        assert_eq!(route(&roots, "api-edge-eu-1.localhost"), Some(("api", "edge-eu-1")));
    }

    #[test]
    fn rejects_other_shapes() {
        let roots = RootDomains::from_json("{}").unwrap();
        for host in [
            "localhost",
            "web.localhost",
            "-demo.localhost",
            "web-.localhost",
            "a.web-demo.localhost",
            "web-demo.example.com",
            "web-demolocalhost",
            "web-de mo.localhost",
            "",
        ] {
            assert_eq!(route(&roots, host), None, "{host}");
        }
    }

    #[test]
    fn longest_root_wins() {
        let roots =
            RootDomains::from_json(r#"{"root_domains": ["Example.com", ".tunnels.example.com."]}"#).unwrap();
        assert_eq!(route(&roots, "web-demo.tunnels.example.com"), Some(("web", "demo")));
        assert_eq!(route(&roots, "web-demo.example.com"), Some(("web", "demo")));
    }

    #[test]
    fn bad_config() {
        let err = |json: &str| RootDomains::from_json(json).err().expect("config accepted");
        assert!(err(r#"{"root_domains": [""]}"#).starts_with("root_domains[0]"));
        assert!(err(r#"{"roots": []}"#).contains("unknown field"));
    }
}
