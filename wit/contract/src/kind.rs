//! The three kinds of plugin, one per WIT world. Config slots, manifests (`kind =
//! "router"`), `plugin check --kind` and the admin API all spell them the same way.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The kinds of plugin; each expects components of its own WIT world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// World `burrow:plugin/authorizer-plugin`.
    Authorizer,
    /// World `burrow:plugin/workload-plugin` (optionally with `workload-lifecycle`).
    Workload,
    /// World `burrow:plugin/router-plugin`.
    Router,
}

impl PluginKind {
    /// Every kind, in the order the host detects a component's world.
    pub const ALL: [PluginKind; 3] = [PluginKind::Authorizer, PluginKind::Workload, PluginKind::Router];

    /// `authorizer`, `workload` or `router`.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Authorizer => "authorizer",
            PluginKind::Workload => "workload",
            PluginKind::Router => "router",
        }
    }

    /// The WIT world a component of this kind must implement.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Authorizer => "burrow:plugin/authorizer-plugin@1.1.0",
            PluginKind::Workload => "burrow:plugin/workload-plugin@1.1.0",
            PluginKind::Router => "burrow:plugin/router-plugin@1.1.0",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PluginKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PluginKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| "expected authorizer, workload or router".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_agree() {
        for kind in PluginKind::ALL {
            assert_eq!(kind.to_string().parse::<PluginKind>(), Ok(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), serde_json::json!(kind.as_str()));
        }
        assert!("Router".parse::<PluginKind>().is_err());
    }
}
