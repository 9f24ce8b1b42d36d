//! The three plugin kinds as traits. Implement one, then export it with the matching
//! macro: [`crate::export_authorizer!`], [`crate::export_workload!`] or
//! [`crate::export_router!`].
//!
//! `init` builds the plugin's state from its config. The host calls it once per
//! instance before the first call where it can (at load, as the canary whose error
//! refuses the plugin, and for every warm instance); instances made fresh for a single
//! call are not initialised by the host, so the macros call `init` themselves before
//! the first method and trap with its error if it fails. Keep `init` cheap unless the
//! slot runs warm instances.

use crate::host::Host;
use crate::types::*;

/// Why [`Authorizer::authenticate_agent`]'s default rejects an agent: the agent logs it,
/// and it tells the host's admin what to configure.
pub const NO_AGENTS: &str =
    "this authorizer does not authenticate agents: list them in the host's [plugins.agents] slot";

/// Decides which agents may connect and which users may reach which workloads
/// (world `authorizer-plugin`).
pub trait Authorizer: Sized + 'static {
    /// Checks the config and builds the plugin's state. An `Err` refuses the plugin at
    /// load (the message is reported to the admin) and fails calls on fresh instances.
    fn init(host: &impl Host) -> Result<Self, String>;

    /// An agent connects with a token: who is it? Compare tokens in constant time (or
    /// compare hashes) and never log them. Reject the empty token.
    ///
    /// The host asks this plugin only when its config has no `[plugins.agents]` slot;
    /// with one (for instance the built-in static agent list), this plugin decides about
    /// users alone. The default rejects every agent and says so, so a user-policy plugin
    /// need not implement it.
    fn authenticate_agent(&self, host: &impl Host, req: AgentHello) -> AgentAuthOutcome {
        let _ = (host, req);
        AgentAuthOutcome::Rejected(NO_AGENTS.into())
    }

    /// A user request or session starts: who is this?
    fn authenticate_user(&self, host: &impl Host, req: UserAuthRequest) -> UserAuthOutcome;

    /// May the (possibly anonymous) principal do this? Called after
    /// `authenticate_user`, in the same instance.
    fn authorize(&self, host: &impl Host, req: AuthorizeRequest) -> Decision;
}

/// A kind of workload: how users' requests find its agents, and when it ends (world
/// `workload-plugin`, plus the optional lifecycle hooks of contract 1.1).
pub trait Workload: Sized + 'static {
    /// Checks the config and builds the plugin's state; see [`Authorizer::init`].
    fn init(host: &impl Host) -> Result<Self, String>;

    /// The kind this plugin serves (`workspace`, `ci-job`, `terminal` or your own):
    /// lowercase letters, digits and `-`. Agent identities name it.
    fn kind(&self, host: &impl Host) -> String;

    /// Maps a request to a workload of this kind, or `None` when it is not one (the host
    /// asks the next workload plugin, and answers 404 when none claims it).
    fn resolve(&self, host: &impl Host, req: ResolveRequest) -> Option<Resolved>;

    /// Whether the workload has ended: its agents are disconnected and its requests
    /// refused (410).
    fn expired(&self, host: &impl Host, req: ExpiryRequest) -> bool;

    /// An agent of this kind connected. Default: nothing.
    fn agent_connected(&self, host: &impl Host, event: AgentEvent) {
        let _ = (host, event);
    }

    /// An agent of this kind went away. Default: nothing.
    fn agent_disconnected(&self, host: &impl Host, event: AgentEvent) {
        let _ = (host, event);
    }
}

/// Chooses among the places a workload's request could go (world `router-plugin`).
pub trait Router: Sized + 'static {
    /// Checks the config and builds the plugin's state; see [`Authorizer::init`].
    fn init(host: &impl Host) -> Result<Self, String>;

    /// The candidates to try, best first, as indices into `req.candidates`. Indices out
    /// of range or repeated are a plugin failure; candidates left out are not tried.
    fn route(&self, host: &impl Host, req: RouteRequest) -> Vec<u32>;
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::MockHost;

    /// An authorizer about users only, as the guide writes one.
    struct Users;

    impl Authorizer for Users {
        fn init(host: &impl Host) -> Result<Self, String> {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            #[allow(dead_code, reason = "read only to check the config's shape")]
            struct Config {
                teams: Vec<String>,
            }
            let _: Config = host.config().map_err(|e| e.to_string())?;
            Ok(Users)
        }

        fn authenticate_user(&self, _host: &impl Host, _req: UserAuthRequest) -> UserAuthOutcome {
            UserAuthOutcome::Anonymous
        }

        fn authorize(&self, _host: &impl Host, _req: AuthorizeRequest) -> Decision {
            Decision::allow()
        }
    }

    #[test]
    fn an_authorizer_about_users_only_rejects_every_agent_saying_where_agents_go() {
        let host = MockHost::new().with_config_toml("teams = []");
        let plugin = Users::init(&host).unwrap();
        let hello = AgentHello { token: "any".into(), ..AgentHello::default() };
        assert_eq!(plugin.authenticate_agent(&host, hello), AgentAuthOutcome::Rejected(NO_AGENTS.into()));
        assert!(NO_AGENTS.contains("[plugins.agents]"));
    }

    #[test]
    fn config_errors_name_the_field_without_a_json_position() {
        let host = MockHost::new().with_config_toml("teams = []\ntemas = 1");
        let err = Users::init(&host).err().expect("a typo is refused");
        assert!(err.contains("unknown field `temas`"), "{err}");
        assert!(!err.contains("line") && !err.contains("column"), "{err}");
        let err = Users::init(&MockHost::new()).err().expect("a missing key is refused");
        assert!(err.contains("missing field `teams`") && !err.contains("column"), "{err}");
    }
}
