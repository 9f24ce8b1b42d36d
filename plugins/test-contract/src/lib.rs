//! Test-only plugin behind `tests/tests/plugin_contract.rs`: the contract's round trip
//! through a real component.
//!
//! Every request it receives is decoded by the SDK (wit-bindgen's records, then the
//! SDK's conversions into the contract types) and logged as `contract-echo <call>
//! <serde JSON>`; the host test captures the line and compares it with its own serde
//! JSON of the request it sent. Every answer is a contract value the test hands over in
//! the config (`answers`, a JSON string: call → case → the answer's serde JSON), chosen
//! by a string field of the request; the host test compares what the host decoded with
//! what it handed over. A field lost or a variant mixed up in either side's conversions
//! fails one of the two comparisons.
//!
//! One component exports every interface (authorizer, workload with lifecycle, router),
//! so the same file loads into any slot.

use burrow_plugin_sdk::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

/// The prefix of the log lines the host test looks for.
pub const ECHO: &str = "contract-echo";

/// The kind the workload side serves unless `answers.kind` says otherwise.
pub const DEFAULT_KIND: &str = "contract";

/// Answers by call, then by case.
pub struct Echo {
    answers: Map<String, Value>,
}

impl Echo {
    fn from_config(host: &impl Host) -> Result<Self, String> {
        let answers = match host.config_get("answers") {
            None => Map::new(),
            Some(ConfigValue::Text(text)) => match serde_json::from_str(&text) {
                Ok(Value::Object(answers)) => answers,
                Ok(other) => return Err(format!("config: `answers` must be a JSON object, got {other}")),
                Err(err) => return Err(format!("config: `answers` is not JSON: {err}")),
            },
            Some(_) => return Err("config: `answers` must be a string holding JSON".into()),
        };
        Ok(Echo { answers })
    }

    /// Logs what the SDK decoded, in the contract's serde form.
    fn echo<T: Serialize>(host: &impl Host, call: &str, req: &T) {
        let json = serde_json::to_string(req).expect("contract types serialize");
        host.info(&format!("{ECHO} {call} {json}"));
    }

    /// The configured answer for `call` in `case`, if any. A malformed one panics: the
    /// test wrote it, and a trap shows it the serde error.
    fn answer<T: DeserializeOwned>(&self, call: &str, case: &str) -> Option<T> {
        let value = self.answers.get(call)?.get(case)?;
        Some(serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("answers.{call}.{case}: {e}")))
    }
}

impl Authorizer for Echo {
    fn init(host: &impl Host) -> Result<Self, String> {
        Echo::from_config(host)
    }

    /// Case: `agent_version`. Without an answer, rejected (the host's probe sends an
    /// empty token and must be refused).
    fn authenticate_agent(&self, host: &impl Host, req: AgentHello) -> AgentAuthOutcome {
        Echo::echo(host, "authenticate_agent", &req);
        self.answer("authenticate_agent", &req.agent_version)
            .unwrap_or_else(|| AgentAuthOutcome::Rejected("no answer configured".into()))
    }

    /// Case: `host`.
    fn authenticate_user(&self, host: &impl Host, req: UserAuthRequest) -> UserAuthOutcome {
        Echo::echo(host, "authenticate_user", &req);
        self.answer("authenticate_user", &req.host).unwrap_or(UserAuthOutcome::Anonymous)
    }

    /// Case: `method`.
    fn authorize(&self, host: &impl Host, req: AuthorizeRequest) -> Decision {
        Echo::echo(host, "authorize", &req);
        self.answer("authorize", &req.method).unwrap_or_else(|| Decision::forbidden("no answer configured"))
    }
}

impl Workload for Echo {
    fn init(host: &impl Host) -> Result<Self, String> {
        Echo::from_config(host)
    }

    fn kind(&self, _host: &impl Host) -> String {
        self.answers.get("kind").and_then(Value::as_str).unwrap_or(DEFAULT_KIND).to_string()
    }

    /// Case: `method`.
    fn resolve(&self, host: &impl Host, req: ResolveRequest) -> Option<Resolved> {
        Echo::echo(host, "resolve", &req);
        self.answer::<Option<Resolved>>("resolve", &req.method).flatten()
    }

    /// Case: `workload_id`.
    fn expired(&self, host: &impl Host, req: ExpiryRequest) -> bool {
        Echo::echo(host, "expired", &req);
        self.answer("expired", &req.workload_id).unwrap_or(false)
    }

    fn agent_connected(&self, host: &impl Host, event: AgentEvent) {
        Echo::echo(host, "agent_connected", &event);
    }

    fn agent_disconnected(&self, host: &impl Host, event: AgentEvent) {
        Echo::echo(host, "agent_disconnected", &event);
    }
}

impl Router for Echo {
    fn init(host: &impl Host) -> Result<Self, String> {
        Echo::from_config(host)
    }

    /// Case: `session_key`. Without an answer, the candidates as given.
    fn route(&self, host: &impl Host, req: RouteRequest) -> Vec<u32> {
        Echo::echo(host, "route", &req);
        self.answer("route", &req.session_key).unwrap_or_else(|| (0..req.candidates.len() as u32).collect())
    }
}

// Every interface from one component, woven by hand from the pieces the SDK's export
// macros use (`export_authorizer!` and friends export one kind each).
const _: () = {
    burrow_plugin_sdk::__burrow_slot!(Echo);
    type AsAuthorizer = burrow_plugin_sdk::__private::AuthorizerExport<__BurrowSlot>;
    type AsWorkload = burrow_plugin_sdk::__private::WorkloadExport<__BurrowSlot>;
    type AsRouter = burrow_plugin_sdk::__private::RouterExport<__BurrowSlot>;
    burrow_plugin_sdk::__private::bindings::init::export!(
        AsAuthorizer with_types_in burrow_plugin_sdk::__private::bindings::init
    );
    burrow_plugin_sdk::__private::bindings::authorizer::export!(
        AsAuthorizer with_types_in burrow_plugin_sdk::__private::bindings::authorizer
    );
    burrow_plugin_sdk::__private::bindings::workload::export!(
        AsWorkload with_types_in burrow_plugin_sdk::__private::bindings::workload
    );
    burrow_plugin_sdk::__private::bindings::lifecycle::export!(
        AsWorkload with_types_in burrow_plugin_sdk::__private::bindings::lifecycle
    );
    burrow_plugin_sdk::__private::bindings::router::export!(
        AsRouter with_types_in burrow_plugin_sdk::__private::bindings::router
    );
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_come_from_the_config_by_case() {
        let answers = r#"{"authenticate_user": {"a": "anonymous", "b": {"rejected": "no"}}, "kind": "k"}"#;
        let host = MockHost::new().with_config_json(&serde_json::json!({ "answers": answers }).to_string());
        let echo = <Echo as Authorizer>::init(&host).unwrap();
        let req = |case: &str| UserAuthRequest {
            credential: Credential::Bearer("t".into()),
            client_addr: "c".into(),
            host: case.into(),
            action: Action::Http,
        };
        assert_eq!(echo.authenticate_user(&host, req("b")), UserAuthOutcome::Rejected("no".into()));
        assert_eq!(echo.authenticate_user(&host, req("a")), UserAuthOutcome::Anonymous);
        assert!(host.logged(r#"contract-echo authenticate_user {"credential":{"bearer":"t"}"#));
        assert_eq!(Workload::kind(&echo, &host), "k");
        let probe = echo.authenticate_agent(&host, AgentHello::default());
        assert!(matches!(probe, AgentAuthOutcome::Rejected(_)), "the empty-token probe is refused");
    }
}
