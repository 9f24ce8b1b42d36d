//! The manifest parser: every call, every refusal and where it points.

use serde_json::json;

use super::*;
use crate::types::{Action, Credential};

const ALL_CALLS: &str = r#"
    [plugin]
    name = "office-hours"
    description = "allows staff during office hours"
    version = "1.2.0"

    [[test]]
    name = "agent"
    call = "authenticate_agent"
    input = { token = "agent-token", services = ["http"], metadata = [["zone", "a"]] }
    expect = { accepted = { agent_id = "a1" } }

    [[test]]
    name = "alice on a Tuesday morning"
    now = 1763973000000
    config = { groups = ["staff"], open = "09:00" }
    call = "authenticate_user"
    input = { credential = { bearer = "alice-token" }, action = "http" }
    expect = { authenticated = { id = "alice" } }

    [[test]]
    name = "authorize"
    call = "authorize"
    input = { principal = { id = "alice", groups = ["staff"] }, action = "ssh-session", target = { workload_kind = "workspace", workload_id = "w1", agent_id = "a1", service = "ssh" } }
    expect = { deny = { status = 403 } }

    [[test]]
    name = "resolve"
    call = "resolve"
    input = { action = "http", host = "w1.example.com" }
    expect = { workload_id = "w1" }

    [[test]]
    name = "expired"
    call = "expired"
    input = { workload_id = "w1", agent_id = "a1", connected_at = 5 }
    expect = false

    [[test]]
    name = "route"
    call = "route"
    expect = [1, 0]
    [test.input]
    session_key = "s"
    target = { workload_kind = "workspace", workload_id = "w1", agent_id = "a1", service = "http" }
    candidates = [{ replica_id = "r1", local = true }, { replica_id = "r2", load = 3 }]

    [[test]]
    name = "kind"
    call = "kind"
    expect = "workspace"
"#;

fn parse_ok(text: &str) -> Manifest {
    parse(text, "plugins/office-hours.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(text: &str) -> String {
    parse(text, "plugins/x.toml").unwrap_err().to_string()
}

#[test]
fn every_call_kind_parses() {
    let m = parse_ok(ALL_CALLS);
    assert_eq!(m.origin, "plugins/office-hours.toml");
    assert_eq!(m.plugin.name.as_deref(), Some("office-hours"));
    assert_eq!(m.plugin.kind, None);
    assert_eq!(m.plugin.version.as_deref(), Some("1.2.0"));
    let calls: Vec<&str> = m.tests.iter().map(|t| t.call.name()).collect();
    assert_eq!(
        calls,
        ["authenticate_agent", "authenticate_user", "authorize", "resolve", "expired", "route", "kind"]
    );
    assert!(m.tests.iter().enumerate().all(|(i, t)| t.index == i));

    let TestCall::AuthenticateAgent(hello) = &m.tests[0].call else { panic!() };
    assert_eq!(hello.token, "agent-token");
    assert_eq!(hello.metadata, vec![("zone".to_string(), "a".to_string())]);
    assert!(!format!("{:?}", m.tests[0]).contains("agent-token"), "Debug masks the token");

    let t = &m.tests[1];
    assert_eq!(t.to_string(), "test[1] (\"alice on a Tuesday morning\")");
    assert_eq!(t.now, Some(1763973000000));
    assert_eq!(t.config.as_ref().unwrap()["open"].as_str(), Some("09:00"));
    let TestCall::AuthenticateUser(req) = &t.call else { panic!() };
    assert_eq!(req.credential, Credential::Bearer("alice-token".into()));
    assert_eq!(req.action, Action::Http);
    assert_eq!(t.expect, json!({ "authenticated": { "id": "alice" } }));

    let TestCall::Authorize(req) = &m.tests[2].call else { panic!() };
    assert_eq!(req.action, Action::SshSession);
    assert_eq!(req.principal.as_ref().unwrap().groups, ["staff"]);
    let TestCall::Resolve(req) = &m.tests[3].call else { panic!() };
    assert_eq!(req.host, "w1.example.com");
    let TestCall::Expired(req) = &m.tests[4].call else { panic!() };
    assert_eq!(req.connected_at, 5);
    assert_eq!(m.tests[4].expect, json!(false));
    let TestCall::Route(req) = &m.tests[5].call else { panic!() };
    assert_eq!(req.candidates.len(), 2);
    assert_eq!(req.candidates[1].load, 3);
    assert_eq!(m.tests[5].expect, json!([1, 0]));
    assert_eq!(m.tests[6].call, TestCall::Kind);
    assert_eq!(m.tests[6].call.kind(), PluginKind::Workload);

    // An empty manifest is valid; so is one with metadata only.
    assert_eq!(parse_ok("").tests, vec![]);
    assert_eq!(parse_ok("[plugin]\nkind = \"router\"").plugin.kind, Some(PluginKind::Router));
}

#[test]
fn bad_call_name() {
    let err = parse_err("[[test]]\nname = \"n\"\ncall = \"authorise\"\nexpect = true");
    assert!(err.starts_with("plugins/x.toml: test[0] (\"n\").call: unknown call \"authorise\""), "{err}");
    assert!(err.contains("authenticate_agent, authenticate_user, authorize"), "{err}");
}

#[test]
fn bad_input_shape() {
    let test = |input: &str| {
        parse_err(&format!(
            "[[test]]\nname = \"first\"\ncall = \"route\"\ninput = {{ target = {{ workload_kind = \"w\", workload_id = \"w\", agent_id = \"a\", service = \"s\" }}, candidates = [] }}\nexpect = []\n\
             [[test]]\nname = \"second\"\ncall = \"authenticate_user\"\ninput = {input}\nexpect = \"anonymous\""
        ))
    };
    let err = test("{ action = \"http\", credentials = {} }");
    assert!(
        err.starts_with("plugins/x.toml: test[1] (\"second\").input: unknown field `credentials`"),
        "{err}"
    );
    let err = test("{ credential = { bearer = \"t\" } }");
    assert_eq!(err, "plugins/x.toml: test[1] (\"second\").input: missing field `action`");
    let err = test("{ action = \"telnet\" }");
    assert!(err.starts_with("plugins/x.toml: test[1] (\"second\").input: unknown variant `telnet`"), "{err}");
    let err = test("\"alice\"");
    assert!(err.starts_with("plugins/x.toml: test[1] (\"second\").input: invalid type"), "{err}");

    // A request with required fields cannot leave `input` out.
    let err = parse_err("[[test]]\nname = \"e\"\ncall = \"expired\"\nexpect = true");
    assert_eq!(err, "plugins/x.toml: test[0] (\"e\").input: missing field `workload_id`");
    // One whose fields all default can.
    let m = parse_ok("[[test]]\nname = \"a\"\ncall = \"authenticate_agent\"\nexpect = \"rejected\"");
    assert_eq!(m.tests[0].call, TestCall::AuthenticateAgent(AgentHello::default()));
    // `kind` takes none.
    let err = parse_err("[[test]]\nname = \"k\"\ncall = \"kind\"\ninput = {}\nexpect = \"x\"");
    assert_eq!(err, "plugins/x.toml: test[0] (\"k\").input: the \"kind\" call takes no input");
}

#[test]
fn unknown_keys_and_syntax_name_the_place() {
    let err = parse_err("[plugin]\nname = \"a\"\nauthor = \"me\"");
    assert!(err.starts_with("plugins/x.toml: line 3, column 1: unknown field `author`"), "{err}");
    let err = parse_err("[[test]]\nname = \"n\"\ncall = \"kind\"\nexpect = 1\nexpected = 2");
    assert!(err.contains("unknown field `expected`"), "{err}");
    let err = parse_err("[plugins]\n");
    assert!(err.contains("unknown field `plugins`"), "{err}");
    let err = parse_err("[[test]]\nname = \"n\"\ncall = \"kind\"");
    assert!(err.contains("missing field `expect`"), "{err}");
    let err = parse_err("[plugin]\nkind = \"policy\"");
    assert!(err.contains("unknown variant `policy`"), "{err}");
    let err = parse_err("[[test]]\nname = \"n\"\ncall = \"kind\"\nexpect = 1\nnow = -5");
    assert!(err.starts_with("plugins/x.toml: line "), "{err}");
    // The offending line is not quoted (it may hold a test credential).
    let err = parse_err("[[test]]\nname = \"n\"\ncall = \"kind\"\nexpect = 1\ntoken = \"hunter2\"");
    assert!(!err.contains("hunter2"), "{err}");
    let err = parse_err("this is not toml");
    assert!(err.starts_with("plugins/x.toml: line 1, column "), "{err}");
}

#[test]
fn limits_and_names() {
    let big = format!("[plugin]\ndescription = \"{}\"", "x".repeat(MAX_MANIFEST_BYTES));
    assert!(matches!(parse(&big, "o"), Err(ManifestError::TooLarge { .. })));

    let vector = |i: usize| format!("[[test]]\nname = \"t{i}\"\ncall = \"kind\"\nexpect = \"k\"\n");
    let ok: String = (0..MAX_TESTS).map(vector).collect();
    assert_eq!(parse_ok(&ok).tests.len(), MAX_TESTS);
    let too_many: String = (0..=MAX_TESTS).map(vector).collect();
    assert_eq!(parse_err(&too_many), "plugins/x.toml: test: 257 tests, the limit is 256");

    let dup = format!("{}{}", vector(1), vector(1));
    assert_eq!(parse_err(&dup), "plugins/x.toml: test[1] (\"t1\").name: another test has the same name");
    let err = parse_err("[[test]]\nname = \" \"\ncall = \"kind\"\nexpect = 1");
    assert_eq!(err, "plugins/x.toml: test[0].name: must not be empty");
    let err = parse_err("[plugin]\nname = \"a b\"");
    assert!(err.starts_with("plugins/x.toml: plugin.name: "), "{err}");
}

#[test]
fn declared_kind_must_match_calls_and_slot() {
    let m = parse_ok("[plugin]\nkind = \"router\"\n[[test]]\nname = \"r\"\ncall = \"route\"\ninput = { target = { workload_kind = \"w\", workload_id = \"w\", agent_id = \"a\", service = \"s\" }, candidates = [] }\nexpect = []");
    m.check_kind(PluginKind::Router).unwrap();
    let err = m.check_kind(PluginKind::Authorizer).unwrap_err().to_string();
    assert_eq!(
        err,
        "plugins/office-hours.toml: plugin.kind: the manifest is for a router plugin, this slot takes authorizer plugins"
    );

    let err =
        parse_err("[plugin]\nkind = \"authorizer\"\n[[test]]\nname = \"k\"\ncall = \"kind\"\nexpect = \"x\"");
    assert_eq!(
        err,
        "plugins/x.toml: test[0] (\"k\").call: \"kind\" is a workload call, the manifest declares it is for authorizer plugins"
    );

    // Without a declared kind, the slot still refuses foreign calls.
    let m = parse_ok("[[test]]\nname = \"k\"\ncall = \"kind\"\nexpect = \"x\"");
    m.check_kind(PluginKind::Workload).unwrap();
    let err = m.check_kind(PluginKind::Router).unwrap_err().to_string();
    assert!(err.contains("test[0] (\"k\").call: \"kind\" is a workload call"), "{err}");
}

/// The SDK guide documents every call's vector with an example: each must be a vector the
/// host accepts, or the guide teaches something that fails.
#[test]
fn every_vector_the_sdk_guide_shows_parses() {
    let guide = include_str!("../../../../plugins/sdk/README.md");
    let mut blocks = Vec::new();
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with("```toml") {
            let body: Vec<&str> = lines.by_ref().take_while(|l| !l.trim_start().starts_with("```")).collect();
            blocks.push(body.join("\n"));
        }
    }
    let vectors: Vec<&String> = blocks.iter().filter(|b| b.contains("[[test]]")).collect();
    let mut calls = std::collections::HashSet::new();
    for block in &vectors {
        let manifest = parse(block, "plugins/sdk/README.md").unwrap_or_else(|e| panic!("{e}\n{block}"));
        calls.extend(manifest.tests.iter().map(|t| t.call.call()));
    }
    assert_eq!(calls.len(), Call::ALL.len(), "the guide shows a vector of every call: {calls:?}");
}
