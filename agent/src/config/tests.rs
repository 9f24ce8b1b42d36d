use super::*;

#[test]
fn parses_all_four_schemes_with_default_ports() {
    let cases = [
        ("grpc://127.0.0.1:8443", Scheme::Grpc, "127.0.0.1", 8443),
        ("grpcs://burrow.example.com", Scheme::Grpcs, "burrow.example.com", 443),
        ("ws://localhost", Scheme::Ws, "localhost", 80),
        ("WSS://[::1]:9000/", Scheme::Wss, "::1", 9000),
        ("grpc://host", Scheme::Grpc, "host", 80),
    ];
    for (url, scheme, host, port) in cases {
        let parsed = HostUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!((parsed.scheme(), parsed.host(), parsed.port()), (scheme, host, port), "{url}");
    }
    assert_eq!(HostUrl::parse("wss://[::1]:9000").unwrap().to_string(), "wss://[::1]:9000");
    assert!(Scheme::Wss.is_tls() && Scheme::Wss.is_websocket());
    assert!(!Scheme::Grpc.is_tls() && !Scheme::Grpc.is_websocket());
}

#[test]
fn rejects_bad_urls_with_reasons() {
    let reason = |url: &str| match HostUrl::parse(url).unwrap_err() {
        ConfigError::HostUrl { reason, .. } => reason,
        other => panic!("{other:?}"),
    };
    assert!(reason("ftp://x").contains("unsupported scheme"));
    assert!(reason("https://x").contains("use grpc://"));
    assert!(reason("127.0.0.1:8443").contains("SCHEME://"));
    assert!(reason("grpc://x/path").contains("paths"));
    assert!(reason("grpc://user:pw@x").contains("credentials"));
    assert!(reason("grpc://x:0").contains("port"));
    assert!(reason("grpc://x:99999").contains("port"));
    assert!(reason("grpc://:80").contains("missing host"));
    assert!(reason("grpc://::1").contains("brackets"));
    assert!(reason("grpc://[::1").contains("unclosed"));
    assert!(reason("grpc://a b").contains("host name"));
}

#[test]
fn parses_service_specs() {
    let s: ServiceSpec = "web=127.0.0.1:3000".parse().unwrap();
    assert_eq!((s.name(), s.host(), s.port()), ("web", "127.0.0.1", 3000));
    let s: ServiceSpec = "db_1=[::1]:5432".parse().unwrap();
    assert_eq!((s.host(), s.addr().as_str()), ("::1", "[::1]:5432"));
    let s: ServiceSpec = "0api=backend.svc.cluster.local:80".parse().unwrap();
    assert_eq!(s.to_string(), "0api=backend.svc.cluster.local:80");
}

#[test]
fn rejects_bad_service_specs() {
    let reason = |spec: &str| match spec.parse::<ServiceSpec>().unwrap_err() {
        ConfigError::Service { reason, .. } => reason,
        other => panic!("{other:?}"),
    };
    assert!(reason("web").contains("NAME=HOST:PORT"));
    assert!(reason("my-web=127.0.0.1:1").contains("'_'"));
    assert!(reason("Web=127.0.0.1:1").contains("lowercase"));
    assert!(reason("_web=127.0.0.1:1").contains("start with"));
    assert!(reason("=127.0.0.1:1").contains("empty"));
    assert!(reason(&format!("{}=h:1", "a".repeat(64))).contains("63"));
    assert!(reason("web=127.0.0.1").contains("needs a port"));
    assert!(reason("web=127.0.0.1:http").contains("port"));
    assert!(ServiceSpec::new(&"a".repeat(63), "h:1").is_ok());
}

fn valid() -> AgentConfig {
    AgentConfig::new("grpc://127.0.0.1:1", "tok").unwrap().with_service("web=127.0.0.1:3000").unwrap()
}

#[test]
fn defaults_are_valid_and_documented_values() {
    let c = valid();
    c.validate().unwrap();
    assert_eq!((c.min_idle, c.max_streams), (4, 1000));
    assert_eq!(c.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.backoff.initial, Duration::from_secs(1));
    assert_eq!(c.backoff.max, Duration::from_secs(20));
    assert!(!c.replica_id.is_empty());
    assert_eq!(c.hosts, vec![HostUrl::parse("grpc://127.0.0.1:1").unwrap()]);
    assert_eq!((c.connections, c.diversify_interval), (2, Duration::from_secs(60)));
}

#[test]
fn several_hosts_with_mixed_schemes() {
    let c = valid().with_host("wss://b.example.com").unwrap().with_host("ws://[::1]:81").unwrap();
    c.validate().unwrap();
    let schemes: Vec<_> = c.hosts.iter().map(|h| h.scheme()).collect();
    assert_eq!(schemes, [Scheme::Grpc, Scheme::Wss, Scheme::Ws]);
    assert!(matches!(valid().with_host("http://x"), Err(ConfigError::HostUrl { .. })));
}

#[test]
fn host_and_connection_limits() {
    let msg = |f: &dyn Fn(&mut AgentConfig)| {
        let mut c = valid();
        f(&mut c);
        c.validate().err().map(|e| e.to_string())
    };
    assert_eq!(msg(&|c| c.hosts.clear()).unwrap(), "invalid host: at least one host URL is required");
    let many = |n: usize| (0..n).map(|i| HostUrl::parse(&format!("grpcs://h{i}")).unwrap()).collect();
    assert_eq!(msg(&|c| c.hosts = many(16)), None);
    assert_eq!(msg(&|c| c.hosts = many(17)).unwrap(), "invalid host: 17 URLs given; at most 16");
    assert_eq!(
        msg(&|c| c.hosts.push(HostUrl::parse("GRPC://127.0.0.1:1/").unwrap())).unwrap(),
        "invalid host: grpc://127.0.0.1:1 is listed twice"
    );
    assert_eq!(msg(&|c| c.connections = 0).unwrap(), "invalid connections: 0 is not in 1..=16");
    assert_eq!(msg(&|c| c.connections = 17).unwrap(), "invalid connections: 17 is not in 1..=16");
    assert_eq!(msg(&|c| c.connections = 16), None);
    assert_eq!(
        msg(&|c| c.diversify_interval = Duration::ZERO).unwrap(),
        "invalid diversify-interval: must be greater than zero"
    );
}

#[test]
fn validation_messages_name_the_field() {
    let msg = |f: &dyn Fn(&mut AgentConfig)| {
        let mut c = valid();
        f(&mut c);
        c.validate().unwrap_err().to_string()
    };
    assert_eq!(
        msg(&|c| c.services.clear()),
        "no services configured: pass at least one --service NAME=HOST:PORT or --session NAME"
    );
    assert_eq!(
        msg(&|c| c.services.push("web=10.0.0.1:80".parse().unwrap())),
        "service \"web\" is listed twice; service names must be unique"
    );
    assert_eq!(
        msg(&|c| c.min_idle = 0),
        "invalid min-idle: must be at least 1, or the host could never reach this agent"
    );
    assert_eq!(msg(&|c| c.min_idle = 2000), "invalid min-idle: 2000 is above --max-streams 1000");
    assert_eq!(msg(&|c| c.max_streams = 0), "invalid max-streams: must be at least 1");
    assert_eq!(msg(&|c| c.idle_timeout = Duration::ZERO), "invalid idle-timeout: must be greater than zero");
    assert_eq!(
        msg(&|c| c.replica_id = "a b".into()),
        "invalid replica-id: may only contain printable ASCII without spaces"
    );
    assert_eq!(msg(&|c| c.token = Secret::new(" ")), "the agent token is empty");
    assert!(msg(&|c| c.backoff.multiplier = 0.5).starts_with("invalid backoff"));
    assert_eq!(AgentConfig::new("grpc://h", "").unwrap_err(), ConfigError::EmptyToken);
}

#[test]
fn cleartext_loopback_rule_takes_only_literal_loopback_and_localhost_names() {
    for host in [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "[::1]",
        "0:0:0:0:0:0:0:1",
        "::ffff:127.0.0.1",
        "localhost",
        "LocalHost",
        "localhost.",
        "web-demo.localhost",
        "a.b.localhost",
        "WEB.LOCALHOST.",
    ] {
        assert!(is_loopback_host(host), "{host} is loopback");
    }
    for host in [
        "10.0.0.1",
        "0.0.0.0",
        "::",
        "::ffff:10.0.0.1",
        "192.168.1.1",
        "128.0.0.1",
        "example.com",
        "burrow.internal",
        // What a name resolves to is not known at configuration time.
        "localhost.example.com",
        "mylocalhost",
        "localhost-1",
        ".localhost",
        "a..localhost",
        "127.0.0.1.nip.io",
        // Shorthand IPv4 some resolvers accept: not parsed as an address, so refused.
        "127.1",
        "",
    ] {
        assert!(!is_loopback_host(host), "{host} is not loopback");
    }
    let url = |u: &str| HostUrl::parse(u).unwrap();
    assert!(url("grpc://127.0.0.1:1").is_cleartext() && url("ws://[::1]:9").is_cleartext());
    assert!(!url("grpcs://127.0.0.1").is_cleartext() && !url("wss://x").is_cleartext());
    assert!(url("ws://[::1]:9").is_loopback() && !url("grpc://[::2]:9").is_loopback());
}

#[test]
fn cleartext_to_a_non_loopback_host_is_refused_unless_insecure() {
    let with_host = |u: &str, insecure: bool| {
        let mut c = valid();
        c.hosts = vec![HostUrl::parse(u).unwrap()];
        c.insecure = insecure;
        c.validate()
    };
    // Loopback cleartext, and TLS to anything, never needs --insecure.
    for u in [
        "grpc://127.0.0.1:8081",
        "ws://127.0.0.1:8081",
        "grpc://[::1]:8081",
        "ws://localhost",
        "grpc://web-demo.localhost:8080",
        "grpcs://example.com",
        "wss://example.com:8443",
        "grpcs://10.0.0.1",
        "wss://[2001:db8::1]",
    ] {
        assert_eq!(with_host(u, false), Ok(()), "{u}");
        assert_eq!(with_host(u, true), Ok(()), "{u} with insecure");
    }
    for u in ["grpc://example.com:8081", "ws://example.com", "grpc://10.0.0.1:80", "ws://[2001:db8::1]:81"] {
        let error = with_host(u, false).unwrap_err();
        let canonical = HostUrl::parse(u).unwrap().to_string();
        assert_eq!(error, ConfigError::Cleartext { url: canonical.clone() }, "{u}");
        let text = error.to_string();
        assert!(text.contains(&canonical) && text.contains("--insecure"), "{text}");
        assert_eq!(with_host(u, true), Ok(()), "{u} with insecure");
    }
    // One remote cleartext URL among several is enough to refuse.
    let mut c = valid().with_host("wss://b.example.com").unwrap().with_host("ws://c.example.com").unwrap();
    assert_eq!(c.validate(), Err(ConfigError::Cleartext { url: "ws://c.example.com:80".into() }));
    c.insecure = true;
    c.validate().unwrap();
    assert!(!valid().insecure, "off by default");
}

#[test]
fn work_hook_is_optional_and_checked() {
    let mut c = valid();
    assert_eq!(c.work_hook, None);
    c.work_hook = Some(crate::WorkHook::new("/bin/sh").arg("-c").arg("cat"));
    c.validate().unwrap();
    assert_eq!(c.work_hook.as_ref().unwrap().timeout, Duration::from_secs(600));
    c.work_hook = Some(crate::WorkHook::new(""));
    assert_eq!(c.validate().unwrap_err().to_string(), "invalid work-hook: the program path is empty");
}

#[test]
fn secret_never_prints() {
    let c = valid();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("tok\""), "{dbg}");
    assert!(dbg.contains("Secret(***)"));
}
