//! The host's configuration file: one TOML document, strictly checked.
//!
//! Every table and key is optional; what is left out takes the documented default.
//! Unknown keys are errors (a typo never silently falls back to a default).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::admin::AdminConfig;
use crate::agent_server::AgentListenerConfig;
use crate::cluster::ClusterConfig;
use crate::ingress::IngressConfig;
use crate::plugins::PluginsConfig;

/// The whole host configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This replica's id, shown to agents and in logs. Default: `host-` plus 8 random hex digits.
    pub replica_id: Option<String>,
    /// `[agents]`: the port agents dial.
    pub agents: AgentListenerConfig,
    /// `[ingress]`: the port users' HTTP(S) requests arrive on.
    pub ingress: IngressConfig,
    /// `[plugins]`: authorizer and router components.
    pub plugins: PluginsConfig,
    /// `[cluster]`: many replicas sharing a registry in Redis. Absent: one process, no Redis.
    pub cluster: Option<ClusterConfig>,
    /// `[ssh]`: users' SSH clients (sessions, scp/sftp, `ssh -L`/`-W`). Absent: no SSH port.
    pub ssh: Option<crate::ssh::SshConfig>,
    /// `[control]`: the workload lifecycle and its control API. Absent: agents are only
    /// those the authorizer knows.
    pub control: Option<burrow_host_control::ControlConfig>,
    /// `[sign_in]`: browser sign-in with OpenID Connect. Absent: users bring tokens.
    pub sign_in: Option<burrow_host_signin::SignInConfig>,
    /// `[admin]`: health, readiness and metrics.
    pub admin: AdminConfig,
    /// `[shutdown]`: how the host stops.
    pub shutdown: ShutdownConfig,
    /// `[log]`: log output.
    pub log: LogConfig,
}

/// The `[shutdown]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After SIGTERM/ctrl-c, how long requests and tunnels in flight may take to finish
    /// before they are cut. Default 30s.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace: Duration::from_secs(30) }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The `[log]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `burrow_host=debug,info`; `RUST_LOG` overrides it.
    /// Default `info`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, filter: "info".into() }
    }
}

/// The configuration is unreadable or invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type (the message names the key and line).
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    /// A value is out of range or inconsistent; the message starts with the key.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = Self::read(path)?;
        let config = Self::parse(path, &text)?;
        config.validate()?;
        Ok(config)
    }

    /// The file's text.
    pub fn read(path: &Path) -> Result<String, ConfigError> {
        std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })
    }

    /// Parses `text`, read from `path`, without validating. Errors give the line and
    /// column but never quote the line (a plugin's `config` may hold a credential).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::from_toml(text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: crate::plugins::config::toml_message(text, &e),
        })
    }

    /// Parses TOML text without validating.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks every value serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.replica_id {
            if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_graphic()) {
                return Err(ConfigError::Invalid(
                    "replica_id: must be 1-128 printable ASCII characters without spaces".into(),
                ));
            }
        }
        self.agents.validate().map_err(ConfigError::Invalid)?;
        self.ingress.validate().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.plugins.validate().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.admin.validate().map_err(ConfigError::Invalid)?;
        if let Some(cluster) = &self.cluster {
            cluster.validate().map_err(ConfigError::Invalid)?;
        }
        if let Some(ssh) = &self.ssh {
            ssh.validate().map_err(ConfigError::Invalid)?;
        }
        if let Some(sign_in) = &self.sign_in {
            sign_in.validate().map_err(ConfigError::Invalid)?;
        }
        if let Some(control) = &self.control {
            control.validate().map_err(ConfigError::Invalid)?;
        }
        let mut ports = vec![("agents.listen", self.agents.listen), ("ingress.listen", self.ingress.listen)];
        if self.admin.enabled {
            ports.push(("admin.listen", self.admin.listen));
        }
        if let Some(cluster) = &self.cluster {
            ports.push(("cluster.listen", cluster.listen));
        }
        if let Some(ssh) = &self.ssh {
            ports.push(("ssh.listen", ssh.listen));
        }
        if let Some(control) = &self.control {
            ports.push(("control.listen", control.listen));
        }
        for (i, (a, addr_a)) in ports.iter().enumerate() {
            for (b, addr_b) in &ports[i + 1..] {
                if addr_a.port() != 0 && addr_a == addr_b {
                    return Err(ConfigError::Invalid(format!("{b}: must differ from {a} ({addr_a})")));
                }
            }
        }
        if self.shutdown.grace > Duration::from_secs(3600) {
            return Err(ConfigError::Invalid("shutdown.grace: at most 1h".into()));
        }
        Ok(())
    }

    /// The effective replica id.
    pub fn replica_id(&self) -> String {
        self.replica_id.clone().unwrap_or_else(|| format!("host-{}", hex::encode(rand::random::<[u8; 4]>())))
    }
}

/// The line (from 1) where `key` (`plugins.workload[1].config.teams`) is written in
/// the TOML `text`, or where its deepest written parent is; `full` says whether the
/// whole key was found. `None` when not even its first part is in the file (a default).
pub fn key_line(text: &str, key: &str) -> Option<KeyLine> {
    use toml::de::DeValue;
    let doc = toml::de::DeTable::parse(text).ok()?;
    let line_at = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let mut table = doc.get_ref();
    let mut found: Option<KeyLine> = None;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*part, None),
        };
        let Some((written, value)) = table.iter().find(|(k, _)| k.get_ref() == name) else { break };
        let mut value = value;
        let mut line = line_at(written.span().start);
        if let (Some(index), DeValue::Array(items)) = (index, value.get_ref()) {
            // The array is written even if the item is not: point at the array.
            found = Some(KeyLine { line, full: false });
            let Some(item) = items.get(index) else { break };
            line = line_at(item.span().start);
            value = item;
        }
        found = Some(KeyLine { line, full: i + 1 == parts.len() });
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    found
}

/// Where [`key_line`] found a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLine {
    pub line: usize,
    /// The whole key is written (not just a parent of it).
    pub full: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.agents, AgentListenerConfig::default());
        assert_eq!(config.shutdown.grace, Duration::from_secs(30));
        config.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[agents]\nlissten = \"127.0.0.1:1\"\n").unwrap_err().to_string();
        assert!(err.contains("lissten"), "{err}");
        let err = Config::from_toml("bogus = 1\n").unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn durations_are_human() {
        let config =
            Config::from_toml("[agents]\npreface_timeout = \"250ms\"\n[shutdown]\ngrace = \"2m\"\n").unwrap();
        assert_eq!(config.agents.preface_timeout, Duration::from_millis(250));
        assert_eq!(config.shutdown.grace, Duration::from_secs(120));
    }

    #[test]
    fn key_lines_point_at_where_a_key_or_its_parent_is_written() {
        let text = "[agents]\nlisten = \"x\"\n\n[plugins.authorizer]\nsource = \"a\"\nconfig = { teams = { x = \"1\" } }\n\
                    [[plugins.workload]]\nsource = \"w0\"\n[[plugins.workload]]\nsource = \"w1\"\n[plugins.workload.config]\nroot = 1\n";
        let at = |key: &str| key_line(text, key);
        assert_eq!(at("agents.listen"), Some(KeyLine { line: 2, full: true }));
        assert_eq!(at("plugins.authorizer.source"), Some(KeyLine { line: 5, full: true }));
        assert_eq!(at("plugins.authorizer.config.teams"), Some(KeyLine { line: 6, full: true }));
        assert_eq!(at("plugins.authorizer.config.temas"), Some(KeyLine { line: 6, full: false }));
        assert_eq!(at("plugins.workload[1].source"), Some(KeyLine { line: 10, full: true }));
        assert_eq!(at("plugins.workload[1].config.root"), Some(KeyLine { line: 12, full: true }));
        assert_eq!(at("plugins.workload[2].source"), Some(KeyLine { line: 7, full: false }));
        assert_eq!(at("cluster.listen"), None);
    }

    #[test]
    fn parse_errors_give_the_line_without_quoting_it() {
        let text = "[plugins.authorizer]\nconfig = { token = \"s3cret\" }\nbogus = 1\n";
        let err = Config::parse(Path::new("host.toml"), text).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("bogus"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let config = Config::from_toml("[agents]\nkeepalive_interval = \"0s\"\n").unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("agents.keepalive_interval"), "{err}");
        let config = Config::from_toml(
            "[agents]\ntls = { cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }\n",
        )
        .unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("agents.tls.cert"), "{err}");
        let config = Config::from_toml("replica_id = \"has space\"\n").unwrap();
        assert!(config.validate().unwrap_err().to_string().contains("replica_id"));
    }
}
