//! The plugin through its trait, against `MockHost`: what it sends, what it decides, what
//! it caches and how it fails.

use std::time::Duration;

use burrow_plugin_sdk::manifest::Manifest;
use burrow_plugin_sdk::{
    Action, AgentAuthOutcome, AgentHello, Credential, HttpError, HttpResponse, KvError, LogLevel, MockHost,
    Target, NO_AGENTS,
};
use serde_json::json;

use super::*;

const URL: &str = "https://cp.example.com/burrow/authorize";
const SECRET: &str = "shared-secret-0123456789";

fn host(extra: serde_json::Value) -> MockHost {
    let mut config =
        json!({ "url": URL, "secret": SECRET, "cache_allow_ttl": "30s", "cache_deny_ttl": "5s" });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    MockHost::new().with_config(config)
}

fn user(credential: Credential) -> UserAuthRequest {
    UserAuthRequest {
        credential,
        client_addr: "192.0.2.7:50000".into(),
        host: "web-a1.localhost".into(),
        action: Action::Http,
    }
}

fn authorize_request(principal: Option<Principal>, service: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        principal,
        target: Target {
            workload_kind: "workspace".into(),
            workload_id: "a1".into(),
            agent_id: "a1".into(),
            service: service.into(),
        },
        action: Action::Http,
        client_addr: "192.0.2.7:50000".into(),
        host: "web-a1.localhost".into(),
        method: "GET".into(),
        path: "/hello".into(),
        agent_labels: Vec::new(),
    }
}

/// Both calls as the host makes them: one instance, `authenticate_user` then `authorize`.
fn decide(plugin: &Callout, host: &MockHost, credential: Credential, service: &str) -> Decision {
    let principal = match plugin.authenticate_user(host, user(credential)) {
        UserAuthOutcome::Authenticated(p) => Some(p),
        UserAuthOutcome::Anonymous => None,
        UserAuthOutcome::Rejected(reason) => panic!("the plugin never rejects here: {reason}"),
    };
    plugin.authorize(host, authorize_request(principal, service))
}

fn bearer(token: &str) -> Credential {
    Credential::Bearer(token.into())
}

fn allow() -> HttpResponse {
    HttpResponse::new(200, r#"{"allow": true, "principal": {"id": "alice", "groups": ["dev"]}}"#)
}

fn deny_403() -> HttpResponse {
    HttpResponse::new(200, r#"{"allow": false, "status": 403, "reason": "not a member"}"#)
}

fn is_unavailable(decision: &Decision) -> bool {
    matches!(decision, Decision::Deny { status: UNAVAILABLE_STATUS, .. })
}

#[test]
fn the_post_carries_the_secret_the_hash_and_the_timeout() {
    let host = host(json!({"timeout": "250ms"}));
    host.respond(URL, allow());
    let plugin = Callout::init(&host).unwrap();
    assert_eq!(decide(&plugin, &host, bearer("alice-token"), "web"), Decision::allow_stripping_credentials());

    let sent = host.http_requests();
    assert_eq!(sent.len(), 1);
    let sent = &sent[0];
    assert_eq!((sent.method.as_str(), sent.url.as_str()), ("POST", URL));
    assert_eq!(sent.timeout, Some(Duration::from_millis(250)));
    let header =
        |name: &str| sent.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    assert_eq!(header("authorization"), Some(format!("Bearer {SECRET}").as_str()));
    assert_eq!(header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(body["credential"]["kind"], "bearer");
    assert_eq!(body["workload"]["service"], "web");
    assert_eq!(body["path"], "/hello");
    let text = String::from_utf8_lossy(&sent.body);
    assert!(!text.contains("alice-token"), "the raw token is not sent: {text}");
    assert!(!text.contains(SECRET), "the secret travels in the header only");
    // Nothing secret in the plugin's log lines either.
    for (_, line) in host.logs() {
        assert!(!line.contains(SECRET) && !line.contains("alice-token"), "{line}");
    }
}

#[test]
fn forward_credentials_sends_the_raw_value() {
    let host = host(json!({"forward_credentials": true}));
    host.respond(URL, allow());
    let plugin = Callout::init(&host).unwrap();
    decide(&plugin, &host, bearer("alice-token"), "web");
    let body: serde_json::Value = serde_json::from_slice(&host.http_requests()[0].body).unwrap();
    assert_eq!(body["credential"]["value"], "alice-token");
}

#[test]
fn users_get_a_pseudonym_and_anonymous_users_none() {
    let host = host(json!({}));
    let plugin = Callout::init(&host).unwrap();
    let UserAuthOutcome::Authenticated(p) = plugin.authenticate_user(&host, user(bearer("t"))) else {
        panic!("a credential is a (pseudonymous) principal")
    };
    assert!(p.id.starts_with("callout-"), "{}", p.id);
    assert_eq!(p.labels, vec![("credential".to_string(), "bearer".to_string())]);
    assert_eq!(plugin.authenticate_user(&host, user(Credential::None)), UserAuthOutcome::Anonymous);
    // Nothing went out: authenticate_user never calls the endpoint.
    assert!(host.http_requests().is_empty());
}

#[test]
fn anonymous_users_are_asked_about_with_a_null_credential() {
    let host = host(json!({}));
    host.respond(URL, HttpResponse::new(200, r#"{"allow": false, "status": 401, "reason": "log in"}"#));
    let plugin = Callout::init(&host).unwrap();
    assert_eq!(decide(&plugin, &host, Credential::None, "web"), Decision::unauthorized("log in"));
    let body: serde_json::Value = serde_json::from_slice(&host.http_requests()[0].body).unwrap();
    assert_eq!(body["credential"], serde_json::Value::Null);
}

#[test]
fn allows_and_denies_are_cached_with_their_own_ttls() {
    let host = host(json!({}));
    let plugin = Callout::init(&host).unwrap();
    let calls = || host.http_requests().len();

    host.respond(URL, allow());
    assert!(decide(&plugin, &host, bearer("alice"), "web").is_allow());
    host.respond(URL, deny_403());
    assert_eq!(decide(&plugin, &host, bearer("bob"), "web"), Decision::forbidden("not a member"));
    assert_eq!(calls(), 2);

    // Within both TTLs: the cache answers, whatever the endpoint would say now.
    host.respond_error(URL, HttpError::Timeout);
    assert!(decide(&plugin, &host, bearer("alice"), "web").is_allow());
    assert_eq!(decide(&plugin, &host, bearer("bob"), "web"), Decision::forbidden("not a member"));
    assert_eq!(calls(), 2);
    // A different service is a different decision.
    assert!(is_unavailable(&decide(&plugin, &host, bearer("alice"), "ssh")));
    assert_eq!(calls(), 3);

    // Past the deny TTL (5s) but not the allow TTL (30s).
    host.advance(5_000);
    host.respond(URL, allow());
    assert!(decide(&plugin, &host, bearer("bob"), "web").is_allow(), "the deny expired: asked again");
    assert_eq!(calls(), 4);
    host.respond(URL, deny_403());
    assert!(decide(&plugin, &host, bearer("alice"), "web").is_allow(), "alice's allow still holds");
    assert_eq!(calls(), 4);

    // Exactly at the allow TTL the entry is no longer used.
    host.advance(25_000);
    assert_eq!(decide(&plugin, &host, bearer("alice"), "web"), Decision::forbidden("not a member"));
    assert_eq!(calls(), 5);
}

#[test]
fn the_answer_can_shorten_the_ttl_but_not_lengthen_it() {
    let host = host(json!({"cache_allow_ttl": "10s"}));
    let plugin = Callout::init(&host).unwrap();
    host.respond(URL, HttpResponse::new(200, r#"{"allow": true, "cache_ttl_ms": 0}"#));
    decide(&plugin, &host, bearer("a"), "web");
    decide(&plugin, &host, bearer("a"), "web");
    assert_eq!(host.http_requests().len(), 2, "cache_ttl_ms 0: not cached");

    host.respond(URL, HttpResponse::new(200, r#"{"allow": true, "cache_ttl_ms": 3600000}"#));
    decide(&plugin, &host, bearer("b"), "web");
    host.advance(9_999);
    decide(&plugin, &host, bearer("b"), "web");
    assert_eq!(host.http_requests().len(), 3);
    host.advance(1);
    decide(&plugin, &host, bearer("b"), "web");
    assert_eq!(host.http_requests().len(), 4, "capped at the configured 10s");
}

#[test]
fn zero_ttls_turn_the_cache_off() {
    let host = host(json!({"cache_allow_ttl": "0", "cache_deny_ttl": "0"}));
    host.respond(URL, allow());
    let plugin = Callout::init(&host).unwrap();
    decide(&plugin, &host, bearer("a"), "web");
    decide(&plugin, &host, bearer("a"), "web");
    assert_eq!(host.http_requests().len(), 2);
    assert!(host.kv_entries().is_empty());
}

#[test]
fn every_failure_denies_with_503_and_is_not_cached() {
    let failures: Vec<(&str, Result<HttpResponse, HttpError>)> = vec![
        ("timed out", Err(HttpError::Timeout)),
        ("connection refused", Err(HttpError::Transport("connection refused".into()))),
        ("allowlist", Err(HttpError::Denied)),
        ("HTTP 500", Ok(HttpResponse::new(500, r#"{"allow": true}"#))),
        ("HTTP 401", Ok(HttpResponse::new(401, ""))),
        ("malformed", Ok(HttpResponse::new(200, "allow"))),
        ("missing field `allow`", Ok(HttpResponse::new(200, "{}"))),
        ("`status`", Ok(HttpResponse::new(200, r#"{"allow": false}"#))),
        ("401 or 403", Ok(HttpResponse::new(200, r#"{"allow": false, "status": 302}"#))),
    ];
    for (why, answer) in failures {
        let host = host(json!({}));
        match answer {
            Ok(response) => host.respond(URL, response),
            Err(error) => host.respond_error(URL, error),
        }
        let plugin = Callout::init(&host).unwrap();
        let decision = decide(&plugin, &host, bearer("alice"), "web");
        assert_eq!(decision, Decision::Deny { status: 503, reason: UNAVAILABLE_REASON.into() }, "{why}");
        assert!(
            host.logs().iter().any(|(level, line)| *level == LogLevel::Warn && line.contains(why)),
            "{why}: {:?}",
            host.logs()
        );
        assert!(host.kv_entries().is_empty(), "{why}: a failure is never cached");
    }
}

#[test]
fn a_broken_store_costs_a_call_not_a_decision() {
    let host = host(json!({}));
    host.respond(URL, allow());
    host.fail_kv(Some(KvError::Unavailable("redis down".into())));
    let plugin = Callout::init(&host).unwrap();
    assert!(decide(&plugin, &host, bearer("a"), "web").is_allow());
    assert!(decide(&plugin, &host, bearer("a"), "web").is_allow());
    assert_eq!(host.http_requests().len(), 2);
}

#[test]
fn a_garbage_cache_entry_is_ignored() {
    let host = host(json!({}));
    host.respond(URL, deny_403());
    let plugin = Callout::init(&host).unwrap();
    let key = cache_key(
        SECRET,
        URL,
        PresentedCredential::from_credential(&bearer("a"), false).as_ref(),
        &authorize_request(None, "web"),
    );
    host.kv_set(&key, b"{\"allow\": true}", None).unwrap();
    assert_eq!(decide(&plugin, &host, bearer("a"), "web"), Decision::forbidden("not a member"));
}

#[test]
fn authorize_without_its_authenticate_user_fails_closed() {
    let host = host(json!({}));
    host.respond(URL, allow());
    let plugin = Callout::init(&host).unwrap();
    // A principal this instance never authenticated: its credential is unknown.
    let stranger = Some(Principal::new("callout-0000000000000000"));
    assert!(is_unavailable(&plugin.authorize(&host, authorize_request(stranger.clone(), "web"))));
    // Nor may one request's credential serve another principal.
    plugin.authenticate_user(&host, user(bearer("a")));
    assert!(is_unavailable(&plugin.authorize(&host, authorize_request(stranger, "web"))));
    // Anonymous on its own is fine: there is no credential to know.
    assert!(plugin.authorize(&host, authorize_request(None, "web")).is_allow());
}

#[test]
fn the_stashed_credential_is_used_once() {
    let host = host(json!({"cache_allow_ttl": "0"}));
    host.respond(URL, allow());
    let plugin = Callout::init(&host).unwrap();
    let UserAuthOutcome::Authenticated(p) = plugin.authenticate_user(&host, user(bearer("a"))) else {
        panic!()
    };
    assert!(plugin.authorize(&host, authorize_request(Some(p.clone()), "web")).is_allow());
    assert!(is_unavailable(&plugin.authorize(&host, authorize_request(Some(p), "web"))));
}

#[test]
fn strip_credentials_follows_the_config() {
    let host = host(json!({"strip_credentials": false}));
    host.respond(URL, allow());
    let plugin = Callout::init(&host).unwrap();
    assert_eq!(decide(&plugin, &host, bearer("a"), "web"), Decision::allow());
}

#[test]
fn agents_are_left_to_the_agents_slot() {
    let host = host(json!({}));
    let plugin = Callout::init(&host).unwrap();
    let hello = AgentHello { token: "agent-token".into(), ..AgentHello::default() };
    assert_eq!(plugin.authenticate_agent(&host, hello), AgentAuthOutcome::Rejected(NO_AGENTS.into()));
}

#[test]
fn init_refuses_bad_config_with_the_field() {
    let err = Callout::init(&MockHost::new().with_config(json!({"url": URL, "secret": "short"})))
        .err()
        .expect("refused");
    assert!(err.contains("secret:"), "{err}");
    assert!(!err.contains("short"), "the secret is not quoted: {err}");
}

#[test]
fn manifest_vectors_pass() {
    let manifest = Manifest::from_toml(crate::MANIFEST).unwrap();
    manifest.run_authorizer::<Callout>(&json!({})).unwrap();
}
