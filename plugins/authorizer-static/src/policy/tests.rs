use super::*;

fn hex_sha256(secret: &str) -> String {
    hex::encode(sha256(secret))
}

fn policy() -> Policy {
    let json = serde_json::json!({
        "agents": [
            {"id": "demo", "token_sha256": hex_sha256("agent-secret")},
            {"id": "edge-eu-1", "token_sha256": hex_sha256("edge-secret"),
             "workload_kind": "ci-job", "workload_id": "job-9", "labels": {"zone": "eu", "arch": "arm"},
             "expires_at": 2_000},
        ],
        "users": [
            {"name": "bob", "token_sha256": hex_sha256("bob-secret"), "groups": ["ops"]},
            {"name": "carol", "groups": ["dev"]},
        ],
        "ssh_keys": [{"user": "carol", "fingerprint": "SHA256:carolkey"}],
        "session_cookie": "burrow_session",
        "workloads": [
            {"agent": "demo", "service": "*", "access": "open"},
            {"agent": "demo", "service": "admin", "access": "token",
             "users": [{"name": "alice", "token_sha256": hex_sha256("alice-secret")}, "bob"]},
            {"agent": "edge-eu-1", "service": "ssh", "access": "token", "groups": ["dev"]},
        ],
    });
    Policy::from_json(&json.to_string()).unwrap()
}

fn principal(p: &Policy, credential: Credential) -> Principal {
    match p.authenticate_user(&credential) {
        UserVerdict::Authenticated(principal) => principal,
        other => panic!("{credential:?}: {other:?}"),
    }
}

#[test]
fn authenticates_agents_by_token_hash() {
    let p = policy();
    match p.authenticate_agent("agent-secret", 0) {
        AgentVerdict::Accepted(id) => {
            assert_eq!((id.agent_id.as_str(), id.workload_kind.as_str()), ("demo", "workspace"));
            assert_eq!(id.workload_id, "demo", "workload id defaults to the agent id");
        }
        other => panic!("{other:?}"),
    }
    match p.authenticate_agent("edge-secret", 1_999) {
        AgentVerdict::Accepted(id) => {
            assert_eq!(id.workload_kind, "ci-job");
            assert_eq!(id.workload_id, "job-9");
            assert_eq!(id.expires_at, Some(2_000));
            assert_eq!(id.labels, vec![("arch".into(), "arm".into()), ("zone".into(), "eu".into())]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.authenticate_agent("edge-secret", 2_000), AgentVerdict::Rejected(EXPIRED_AGENT));
    assert_eq!(p.authenticate_agent("nope", 0), AgentVerdict::Rejected(UNKNOWN_AGENT));
    assert_eq!(p.authenticate_agent("", 0), AgentVerdict::Rejected(UNKNOWN_AGENT));
}

#[test]
fn empty_token_is_rejected_even_if_its_hash_is_configured() {
    let json = format!(r#"{{"agents": [{{"id": "x", "token_sha256": "{}"}}]}}"#, hex_sha256(""));
    let p = Policy::from_json(&json).unwrap();
    assert_eq!(p.authenticate_agent("", 0), AgentVerdict::Rejected(UNKNOWN_AGENT));
}

#[test]
fn authenticates_users_by_every_credential_kind() {
    let p = policy();
    assert_eq!(p.authenticate_user(&Credential::None), UserVerdict::Anonymous);
    assert_eq!(p.authenticate_user(&Credential::Bearer(String::new())), UserVerdict::Anonymous);
    let bob = principal(&p, Credential::Bearer("bob-secret".into()));
    assert_eq!((bob.id.as_str(), bob.groups.as_slice()), ("bob", &["ops".to_string()][..]));
    assert_eq!(principal(&p, Credential::Bearer("alice-secret".into())).id, "alice", "inline users count");
    let cookie = |name: &str, value: &str| Credential::Cookie { name: name.into(), value: value.into() };
    let by_cookie = principal(&p, cookie("burrow_session", "bob-secret"));
    assert_eq!(by_cookie.id, "bob");
    assert_eq!(by_cookie.labels, vec![("authenticated-by".into(), "cookie".into())]);
    assert_eq!(p.authenticate_user(&cookie("other", "bob-secret")), UserVerdict::Anonymous);
    assert_eq!(
        p.authenticate_user(&cookie("burrow_session", "nope")),
        UserVerdict::Rejected(UNKNOWN_SESSION)
    );
    let key = |fingerprint: &str| Credential::SshPublicKey {
        user: "workspace-1".into(),
        algorithm: "ssh-ed25519".into(),
        key: vec![1, 2, 3],
        fingerprint: fingerprint.into(),
    };
    assert_eq!(principal(&p, key("SHA256:carolkey")).id, "carol");
    assert_eq!(p.authenticate_user(&key("SHA256:other")), UserVerdict::Rejected(UNKNOWN_SSH_KEY));
    let password = Credential::SshPassword { user: "carol".into(), password: "pw".into() };
    assert_eq!(p.authenticate_user(&password), UserVerdict::Rejected(UNKNOWN_TOKEN));
    // A user's token is their SSH password too, unless switched off.
    let by_password =
        principal(&p, Credential::SshPassword { user: "x".into(), password: "bob-secret".into() });
    assert_eq!(by_password.id, "bob");
    assert_eq!(by_password.labels, vec![("authenticated-by".into(), "ssh-password".into())]);
    assert_eq!(
        p.authenticate_user(&Credential::Bearer("wrong".into())),
        UserVerdict::Rejected(UNKNOWN_TOKEN)
    );
}

#[test]
fn unknown_credentials_may_count_as_anonymous() {
    let p = Policy::from_json(r#"{"unknown_credentials": "anonymous", "default_access": "open"}"#).unwrap();
    assert_eq!(p.authenticate_user(&Credential::Bearer("workload-own-token".into())), UserVerdict::Anonymous);
}

#[test]
fn exact_service_beats_wildcard_and_rules_name_users_or_groups() {
    let p = policy();
    let bob = principal(&p, Credential::Bearer("bob-secret".into()));
    let alice = principal(&p, Credential::Bearer("alice-secret".into()));
    let carol = principal(
        &p,
        Credential::SshPublicKey {
            user: "x".into(),
            algorithm: "ssh-ed25519".into(),
            key: Vec::new(),
            fingerprint: "SHA256:carolkey".into(),
        },
    );
    assert_eq!(p.authorize("demo", &[], "web", None), Verdict::Allow { strip_credentials: false });
    assert_eq!(
        p.authorize("demo", &[], "admin", None),
        Verdict::Deny { status: 401, reason: NEEDS_CREDENTIALS }
    );
    assert_eq!(p.authorize("demo", &[], "admin", Some(&alice)), Verdict::Allow { strip_credentials: true });
    assert_eq!(p.authorize("demo", &[], "admin", Some(&bob)), Verdict::Allow { strip_credentials: true });
    assert_eq!(
        p.authorize("demo", &[], "admin", Some(&carol)),
        Verdict::Deny { status: 403, reason: NOT_ALLOWED }
    );
    assert_eq!(
        p.authorize("edge-eu-1", &[], "ssh", Some(&carol)),
        Verdict::Allow { strip_credentials: true }
    );
    assert_eq!(
        p.authorize("edge-eu-1", &[], "ssh", Some(&bob)),
        Verdict::Deny { status: 403, reason: NOT_ALLOWED }
    );
}

#[test]
fn default_access_applies_without_rule() {
    let p = policy();
    assert_eq!(
        p.authorize("edge-eu-1", &[], "web", None),
        Verdict::Deny { status: 403, reason: DENIED_BY_DEFAULT }
    );
    let open = Policy::from_json(r#"{"default_access": "open"}"#).unwrap();
    assert_eq!(open.authorize("x", &[], "y", None), Verdict::Allow { strip_credentials: false });
    let empty = Policy::from_json("{}").unwrap();
    assert!(matches!(empty.authorize("x", &[], "y", None), Verdict::Deny { status: 403, .. }));
}

/// The config the host's end-to-end tests have always used keeps working.
#[test]
fn original_config_form_is_accepted() {
    let json = serde_json::json!({
        "agents": [{"id": "a1", "token_sha256": hex_sha256("t")}],
        "default_access": "deny",
        "workloads": [{"agent": "a1", "service": "web", "access": "token",
                       "users": [{"name": "alice", "token_sha256": hex_sha256("alice-secret-token")}]}],
    });
    let p = Policy::from_json(&json.to_string()).unwrap();
    let alice = principal(&p, Credential::Bearer("alice-secret-token".into()));
    assert_eq!(p.authorize("a1", &[], "web", Some(&alice)), Verdict::Allow { strip_credentials: true });
    assert_eq!(p.authorize("a1", &[], "web", None), Verdict::Deny { status: 401, reason: NEEDS_CREDENTIALS });
    assert_eq!(
        p.authorize("a1", &[], "other", None),
        Verdict::Deny { status: 403, reason: DENIED_BY_DEFAULT }
    );
}

fn config_error(json: serde_json::Value) -> String {
    match Policy::from_json(&json.to_string()) {
        Ok(_) => panic!("config accepted: {json}"),
        Err(err) => err,
    }
}

#[test]
fn bad_config_names_the_field() {
    use serde_json::json;
    let h = hex_sha256("x");
    assert!(config_error(json!({"agents": [{"id": "a", "token_sha256": "xyz"}]}))
        .starts_with("agents[0].token_sha256"));
    assert!(config_error(json!({"agents": [], "extra": 1})).contains("unknown field"));
    let err = config_error(json!({"default_access": "maybe"}));
    assert!(err.starts_with("default_access: unknown variant `maybe`"), "{err}");
    let err = config_error(json!({"agents": [{"id": "a", "token_sha256": h}, {"id": 7}]}));
    assert!(err.starts_with("agents[1].id: invalid type"), "{err}");
    assert!(config_error(json!({"agents": [{"id": "a", "token_sha256": h, "workload_kind": "CI"}]}))
        .starts_with("agents[0].workload_kind"));
    assert!(config_error(
        json!({"agents": [{"id": "a", "token_sha256": h}, {"id": "b", "token_sha256": h}]})
    )
    .contains("two different identities"));
    assert!(config_error(json!({"users": [{"name": "u"}, {"name": "u"}]})).starts_with("users[1].name"));
    assert!(config_error(json!({"ssh_keys": [{"user": "ghost", "fingerprint": "SHA256:x"}]}))
        .starts_with("ssh_keys[0].user"));
    assert!(config_error(
        json!({"users": [{"name": "u"}], "ssh_keys": [{"user": "u", "fingerprint": "MD5:x"}]})
    )
    .starts_with("ssh_keys[0].fingerprint"));
    assert!(config_error(
        json!({"workloads": [{"agent": "a", "service": "*", "access": "token", "users": ["ghost"]}]})
    )
    .starts_with("workloads[0].users[0]"));
    assert!(config_error(
        json!({"workloads": [{"agent": "a", "service": "*", "access": "open", "groups": ["g"]}]})
    )
    .starts_with("workloads[0]"));
    let dup = json!({"workloads": [{"agent": "a", "service": "*", "access": "open"},
                                   {"agent": "a", "service": "*", "access": "open"}]});
    assert!(config_error(dup).starts_with("workloads[1]"));
    assert!(config_error(json!({"session_cookie": " "})).starts_with("session_cookie"));
}

#[test]
fn control_plane_workloads_admit_their_owner_users_and_groups_only() {
    let p = Policy::from_json(&serde_json::json!({}).to_string()).unwrap();
    let labels = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut l = vec![("burrow.managed".to_string(), "true".to_string())];
        l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        l
    };
    let who = |id: &str, groups: &[&str]| Principal {
        id: id.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        labels: Default::default(),
    };
    let l = labels(&[("burrow.owner", "alice"), ("burrow.users", "bob, carol"), ("burrow.groups", "ops")]);
    let allow = Some(Verdict::Allow { strip_credentials: true });
    assert_eq!(p.authorize_managed("ws-1", &l, Some(&who("alice", &[]))), allow);
    assert_eq!(p.authorize_managed("ws-1", &l, Some(&who("carol", &[]))), allow);
    assert_eq!(p.authorize_managed("ws-1", &l, Some(&who("dave", &["ops"]))), allow);
    assert_eq!(
        p.authorize_managed("ws-1", &l, Some(&who("mallory", &["dev"]))),
        Some(Verdict::Deny { status: 403, reason: NOT_ALLOWED })
    );
    assert_eq!(
        p.authorize_managed("ws-1", &l, None),
        Some(Verdict::Deny { status: 401, reason: NEEDS_CREDENTIALS })
    );
    // Not a control-plane workload: the ordinary rules decide.
    assert_eq!(
        p.authorize_managed("ws-1", &[("burrow.owner".into(), "alice".into())], Some(&who("alice", &[]))),
        None
    );
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn user(id: &str, groups: &[&str]) -> Principal {
    Principal {
        id: id.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        labels: Default::default(),
    }
}

const OPEN: Verdict = Verdict::Allow { strip_credentials: false };
const STRIPPED: Verdict = Verdict::Allow { strip_credentials: true };
const NOT_ALLOWED_403: Verdict = Verdict::Deny { status: 403, reason: NOT_ALLOWED };
const DEFAULT_403: Verdict = Verdict::Deny { status: 403, reason: DENIED_BY_DEFAULT };

fn label_policy() -> Policy {
    let json = serde_json::json!({
        "users": [{"name": "ivy", "groups": ["infra"]}, {"name": "pat", "groups": ["prod-ops"]}],
        "workloads": [
            // Label rules, in config order.
            {"agent": "*", "labels": {"team": "infra", "env": "prod"}, "service": "*",
             "access": "token", "groups": ["prod-ops"]},
            {"agent": "*", "labels": {"team": "infra"}, "service": "*", "access": "token", "groups": ["infra"]},
            {"agent": "*", "labels": {"team": "infra"}, "service": "status", "access": "open"},
            // A named rule, with a label condition.
            {"agent": "db-1", "labels": {"env": "prod"}, "service": "*", "access": "token", "users": ["ivy"]},
            // A named rule for one service only.
            {"agent": "web-1", "service": "admin", "access": "token", "users": ["pat"]},
        ],
    });
    Policy::from_json(&json.to_string()).unwrap()
}

#[test]
fn label_rules_select_agents_carrying_all_their_labels() {
    let p = label_policy();
    let (ivy, pat) = (user("ivy", &["infra"]), user("pat", &["prod-ops"]));
    let infra_dev = labels(&[("env", "dev"), ("team", "infra"), ("zone", "eu")]);
    assert_eq!(p.authorize("ci-7", &infra_dev, "web", Some(&ivy)), STRIPPED);
    assert_eq!(p.authorize("ci-7", &infra_dev, "web", Some(&pat)), NOT_ALLOWED_403);
    assert_eq!(
        p.authorize("ci-7", &infra_dev, "web", None),
        Verdict::Deny { status: 401, reason: NEEDS_CREDENTIALS }
    );
    // A value must match exactly, keys included.
    let other = labels(&[("team", "infra-2"), ("Team", "infra")]);
    assert_eq!(p.authorize("ci-7", &other, "web", Some(&ivy)), DEFAULT_403);
}

#[test]
fn agents_without_the_labels_fall_to_default_access() {
    let p = label_policy();
    let ivy = user("ivy", &["infra"]);
    assert_eq!(p.authorize("ci-7", &[], "web", Some(&ivy)), DEFAULT_403);
    assert_eq!(p.authorize("ci-7", &labels(&[("env", "prod")]), "web", Some(&ivy)), DEFAULT_403);
    let open = Policy::from_json(
        &serde_json::json!({
            "default_access": "open",
            "workloads": [{"agent": "*", "labels": {"team": "infra"}, "service": "*", "access": "token"}],
        })
        .to_string(),
    )
    .unwrap();
    assert_eq!(open.authorize("ci-7", &labels(&[("team", "web")]), "web", None), OPEN);
    assert!(matches!(
        open.authorize("ci-7", &labels(&[("team", "infra")]), "web", None),
        Verdict::Deny { .. }
    ));
}

#[test]
fn label_rule_precedence() {
    let p = label_policy();
    let (ivy, pat) = (user("ivy", &["infra"]), user("pat", &["prod-ops"]));
    // Several label rules with service "*" match: the first in config order decides.
    let infra_prod = labels(&[("env", "prod"), ("team", "infra")]);
    assert_eq!(p.authorize("ci-8", &infra_prod, "web", Some(&pat)), STRIPPED);
    assert_eq!(p.authorize("ci-8", &infra_prod, "web", Some(&ivy)), NOT_ALLOWED_403);
    // An exact service beats "*", even from a later label rule.
    assert_eq!(p.authorize("ci-8", &infra_prod, "status", None), OPEN);
    // A rule naming the agent beats every label rule, its "*" service an exact label one.
    assert_eq!(
        p.authorize("db-1", &infra_prod, "status", None),
        Verdict::Deny { status: 401, reason: NEEDS_CREDENTIALS }
    );
    assert_eq!(p.authorize("db-1", &infra_prod, "web", Some(&ivy)), STRIPPED);
    assert_eq!(p.authorize("db-1", &infra_prod, "web", Some(&pat)), NOT_ALLOWED_403);
    // A named rule's labels must hold too; if not, it does not apply and label rules decide.
    let infra_dev = labels(&[("env", "dev"), ("team", "infra")]);
    assert_eq!(p.authorize("db-1", &infra_dev, "status", None), OPEN);
    assert_eq!(p.authorize("db-1", &infra_dev, "web", Some(&ivy)), STRIPPED);
    assert_eq!(p.authorize("db-1", &[], "web", Some(&ivy)), DEFAULT_403);
    // A named rule decides only the services it covers; the others go to label rules.
    let team = labels(&[("team", "infra")]);
    assert_eq!(p.authorize("web-1", &team, "admin", Some(&ivy)), NOT_ALLOWED_403);
    assert_eq!(p.authorize("web-1", &team, "admin", Some(&pat)), STRIPPED);
    assert_eq!(p.authorize("web-1", &team, "web", Some(&ivy)), STRIPPED);
    assert_eq!(p.authorize("web-1", &[], "web", Some(&ivy)), DEFAULT_403);
}

#[test]
fn named_rules_with_different_labels_go_in_config_order() {
    let json = serde_json::json!({
        "workloads": [
            {"agent": "a", "labels": {"env": "prod"}, "service": "web", "access": "token"},
            {"agent": "a", "service": "web", "access": "open"},
        ],
    });
    let p = Policy::from_json(&json.to_string()).unwrap();
    assert!(matches!(
        p.authorize("a", &labels(&[("env", "prod")]), "web", None),
        Verdict::Deny { status: 401, .. }
    ));
    assert_eq!(p.authorize("a", &labels(&[("env", "dev")]), "web", None), OPEN);
}

#[test]
fn label_rule_config_errors_name_the_field() {
    use serde_json::json;
    let rule = |extra: serde_json::Value| {
        let mut r = json!({"agent": "*", "service": "*", "access": "open"});
        r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"workloads": [{"agent": "x", "service": "*", "access": "open"}, r]})
    };
    assert_eq!(config_error(rule(json!({}))), "workloads[1].labels: required when agent = \"*\"");
    assert_eq!(config_error(rule(json!({"labels": {}}))), "workloads[1].labels: required when agent = \"*\"");
    assert_eq!(
        config_error(rule(json!({"labels": {"": "x"}}))),
        "workloads[1].labels: keys must not be empty"
    );
    assert_eq!(
        config_error(rule(json!({"agent": "y", "labels": {"a": "1", " ": "x"}}))),
        "workloads[1].labels: keys must not be empty"
    );
    assert!(config_error(rule(json!({"agent": "y", "labels": {}})))
        .starts_with("workloads[1].labels: must not be empty"));
    assert!(config_error(rule(json!({"labels": {"a": 1}}))).contains("invalid type"));
    assert!(config_error(rule(json!({"agent": ""}))).starts_with("workloads[1].agent"));
    // The same agent, labels and service twice can never be reached.
    let dup = json!({"workloads": [
        {"agent": "*", "labels": {"a": "1", "b": "2"}, "service": "web", "access": "open"},
        {"agent": "*", "labels": {"b": "2", "a": "1"}, "service": "web", "access": "open"},
    ]});
    assert!(config_error(dup).starts_with("workloads[1]: a rule for agent \"*\" with these labels"));
    // Different labels, or the agent named, are different rules; an empty value is a value.
    let fine = json!({"workloads": [
        {"agent": "*", "labels": {"a": "1"}, "service": "web", "access": "open"},
        {"agent": "*", "labels": {"a": "1", "b": ""}, "service": "web", "access": "open"},
        {"agent": "x", "labels": {"a": "1"}, "service": "web", "access": "open"},
        {"agent": "x", "service": "web", "access": "open"},
    ]});
    Policy::from_json(&fine.to_string()).unwrap();
}

#[test]
fn admin_rules_matching_by_name_or_labels_override_managed_access() {
    let managed = labels(&[("burrow.managed", "true"), ("burrow.owner", "alice"), ("team", "infra")]);
    let alice = user("alice", &[]);
    let json = serde_json::json!({
        "workloads": [
            {"agent": "*", "labels": {"team": "infra"}, "service": "ssh", "access": "token", "groups": ["infra"]},
            {"agent": "ws-named", "service": "web", "access": "open"},
            {"agent": "ws-cond", "labels": {"env": "prod"}, "service": "web", "access": "open"},
        ],
    });
    let p = Policy::from_json(&json.to_string()).unwrap();
    // A label rule the agent matches: the admin's rules decide, for every service.
    assert_eq!(p.authorize_managed("ws-1", &managed, Some(&alice)), None);
    assert_eq!(p.authorize("ws-1", &managed, "ssh", Some(&alice)), NOT_ALLOWED_403);
    assert_eq!(p.authorize("ws-1", &managed, "web", Some(&alice)), DEFAULT_403);
    // A rule naming the agent (as before).
    let plain = labels(&[("burrow.managed", "true"), ("burrow.owner", "alice")]);
    assert_eq!(p.authorize_managed("ws-named", &plain, Some(&alice)), None);
    // Rules the agent does not match leave the managed access alone.
    assert_eq!(p.authorize_managed("ws-2", &plain, Some(&alice)), Some(STRIPPED));
    assert_eq!(p.authorize_managed("ws-cond", &plain, Some(&alice)), Some(STRIPPED));
}
