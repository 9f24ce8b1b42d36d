//! Pure header handling: hop-by-hop stripping (RFC 9110 §7.6.1), host parsing, `X-Forwarded-*`,
//! request ids, bearer tokens and upgrade detection.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Request-Id`, sent to the workload and put on every response.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Forwarded-For`: the client address chain.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: `http` or `https` as the client spoke it.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the host the client asked for.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Longest incoming `X-Request-Id` reused when forwarded headers are trusted.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The lowercased tokens of every `Connection` header (`Connection: Upgrade, Foo` gives
/// `["upgrade", "foo"]`). Values that are not visible ASCII are ignored.
pub fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

/// The `Upgrade` header of an HTTP/1.1 upgrade request or 101 response: present only when
/// `Connection` also lists `upgrade`, as RFC 9110 §7.8 requires.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    connection_tokens(headers).iter().any(|token| token == "upgrade").then(|| upgrade.clone())
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1 and every header the `Connection` header
/// names. Callers that forward an upgrade put `Connection`/`Upgrade` back afterwards.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for token in connection_tokens(headers) {
        // A token that is not a valid header name cannot name a header present in the map.
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            headers.remove(name);
        }
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Why a request's host could not be used for routing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Neither a `Host` header nor a URI authority.
    #[error("the request names no host (no Host header or :authority)")]
    Missing,
    /// Present but not a valid `host[:port]`.
    #[error("invalid host {0:?}")]
    Invalid(String),
    /// Named in ways that disagree (two `Host` lines, `:authority` against `host`).
    #[error("ambiguous host: {0}")]
    Ambiguous(String),
}

/// Parses a `Host` header or URI authority into the routing key: lowercased, port stripped,
/// one trailing dot removed. IPv6 literals keep their brackets (`[::1]:8080` gives `[::1]`),
/// like [`http::uri::Authority::host`].
pub fn parse_host(raw: &str) -> Result<String, HostError> {
    let invalid = || HostError::Invalid(raw.to_owned());
    let raw_trimmed = raw.trim();
    if raw_trimmed.is_empty() {
        return Err(HostError::Missing);
    }
    let (host, port) = if let Some(rest) = raw_trimmed.strip_prefix('[') {
        let end = rest.find(']').ok_or_else(invalid)?;
        let literal = &rest[..end];
        if literal.is_empty() || !literal.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
            return Err(invalid());
        }
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(invalid)?),
        };
        (&raw_trimmed[..end + 2], port)
    } else {
        match raw_trimmed.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (raw_trimmed, None),
        }
    };
    if let Some(port) = port {
        // An empty port is allowed by RFC 3986 (`host:`); anything else must be a u16.
        if !port.is_empty() && port.parse::<u16>().is_err() {
            return Err(invalid());
        }
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    // Every label non-empty: `a..b`, `.a` or a second trailing dot name nothing, and a
    // plugin that trims them would route what a proxy in front took for another name.
    let empty_label = !host.starts_with('[') && host.split('.').any(str::is_empty);
    if host.is_empty() || empty_label || (!host.starts_with('[') && !host.bytes().all(is_reg_name_byte)) {
        return Err(invalid());
    }
    Ok(host.to_ascii_lowercase())
}

/// The characters of a DNS name (letters, digits, `-`, `.`, and `_` as some service names
/// use). RFC 3986's `reg-name` also allows sub-delims and `%`-encoding, but no routable name
/// holds them, and a name like `a.example,b.example` or `a%2eexample` would only invite
/// one component to read it differently from another.
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._".contains(&b)
}

/// Removes the `Set-Cookie` headers of a workload's response that could plant a session
/// where it does not belong: any naming one of the host's own cookies (`reserved`, e.g.
/// the session cookie), and any with a `Domain` attribute other than the workload's own
/// host name (`host`, lowercase, no port). Workloads are sibling names under one parent;
/// a cookie for the parent would reach every sibling, so one workload could fix a
/// user's session or other state on another. A value that is not text is removed too:
/// what cannot be read cannot be vetted. Returns how many were removed.
pub fn strip_planted_cookies(headers: &mut HeaderMap, host: &str, reserved: &[&str]) -> usize {
    let all: Vec<HeaderValue> = headers.get_all(header::SET_COOKIE).iter().cloned().collect();
    if all.is_empty() {
        return 0;
    }
    let planted = |value: &HeaderValue| {
        let Ok(text) = value.to_str() else { return true };
        let mut parts = text.split(';');
        let name = parts.next().and_then(|pair| pair.split_once('=')).map_or("", |(name, _)| name.trim());
        if reserved.contains(&name) {
            return true;
        }
        parts.filter_map(|attribute| attribute.split_once('=')).any(|(key, value)| {
            key.trim().eq_ignore_ascii_case("domain")
                && !value.trim().trim_start_matches('.').eq_ignore_ascii_case(host)
        })
    };
    let kept: Vec<HeaderValue> = all.iter().filter(|v| !planted(v)).cloned().collect();
    let removed = all.len() - kept.len();
    if removed > 0 {
        headers.remove(header::SET_COOKIE);
        for value in kept {
            headers.append(header::SET_COOKIE, value);
        }
    }
    removed
}

/// The token of an `Authorization: Bearer <token>` header, if any (scheme case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// The value of cookie `name` in the request's `Cookie` headers, if present.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
}

/// Removes cookie `name` from the `Cookie` headers (dropping a header left empty).
pub fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').is_none_or(|(k, _)| k != name))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, value);
        }
    }
}

/// Picks the request id: an incoming `X-Request-Id` when forwarded headers are trusted and it
/// is a short visible-ASCII token, else a fresh random 128-bit hex id.
pub fn request_id(headers: &HeaderMap, trust_forwarded: bool) -> String {
    if trust_forwarded {
        let incoming = headers.get(&X_REQUEST_ID).map(HeaderValue::as_bytes);
        if let Some(id) = incoming.filter(|id| is_acceptable_request_id(id)) {
            // Checked above: visible ASCII only.
            return String::from_utf8_lossy(id).into_owned();
        }
    }
    new_request_id()
}

/// A fresh random 128-bit request id in lowercase hex.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn is_acceptable_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.iter().all(|b| b.is_ascii_graphic())
}

/// What the proxy knows about the client for `X-Forwarded-*`.
#[derive(Debug, Clone, Copy)]
pub struct ForwardedInfo<'a> {
    /// The TCP peer of the user connection.
    pub client_ip: IpAddr,
    /// `https` when the ingress terminated TLS, else `http`.
    pub proto: &'static str,
    /// The host exactly as the client sent it (port included).
    pub host: &'a str,
}

/// Sets `X-Forwarded-For/-Proto/-Host`. Untrusted mode replaces whatever the client sent (and
/// drops `Forwarded`, which the client could equally forge); trusted mode appends the client
/// address to the incoming chain and keeps an upstream proxy's proto and host.
pub fn apply_forwarded(headers: &mut HeaderMap, info: ForwardedInfo<'_>, trust_forwarded: bool) {
    let client_ip = info.client_ip.to_canonical().to_string();
    let host = HeaderValue::from_str(info.host).ok();
    if trust_forwarded {
        let chain: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .collect();
        let xff = if chain.is_empty() { client_ip } else { format!("{}, {client_ip}", chain.join(", ")) };
        set(headers, &X_FORWARDED_FOR, HeaderValue::from_str(&xff).ok());
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(info.proto));
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            set(headers, &X_FORWARDED_HOST, host);
        }
    } else {
        headers.remove(header::FORWARDED);
        set(headers, &X_FORWARDED_FOR, HeaderValue::from_str(&client_ip).ok());
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(info.proto));
        set(headers, &X_FORWARDED_HOST, host);
    }
}

/// Replaces every value of `name` by `value`, or removes the header when there is none.
fn set(headers: &mut HeaderMap, name: &HeaderName, value: Option<HeaderValue>) {
    match value {
        Some(value) => {
            headers.insert(name, value);
        }
        None => {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn cookie_a_workload_cannot_plant_for_a_parent_domain_or_under_a_reserved_name() {
        let mut headers = HeaderMap::new();
        for value in [
            "theme=dark; Path=/",
            "own=1; Domain=web-a1.localhost; Path=/",
            "own2=1; domain=.WEB-A1.localhost",
            "burrow_session=forged; Path=/",
            "wide=1; Path=/; Domain=localhost",
            "wider=1; Domain=.localhost; HttpOnly",
            "other=1; Domain=web-b1.localhost",
        ] {
            headers.append(header::SET_COOKIE, HeaderValue::from_static(value));
        }
        headers.append(header::SET_COOKIE, HeaderValue::from_bytes(b"bin=\xff").unwrap());
        let removed = strip_planted_cookies(&mut headers, "web-a1.localhost", &["burrow_session"]);
        let kept: Vec<&str> =
            headers.get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(
            kept,
            [
                "theme=dark; Path=/",
                "own=1; Domain=web-a1.localhost; Path=/",
                "own2=1; domain=.WEB-A1.localhost"
            ]
        );
        assert_eq!(removed, 5);
    }

    #[test]
    fn strips_standard_hop_by_hop_headers() {
        let mut headers = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("content-type", "text/plain"),
            ("content-length", "3"),
            ("authorization", "Bearer t"),
        ]);
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-length", "content-type"]);
    }

    #[test]
    fn strips_headers_named_in_connection_across_values_and_case() {
        let mut headers = map(&[
            ("connection", "X-Secret, , Foo"),
            ("connection", "close"),
            ("x-secret", "1"),
            ("foo", "2"),
            ("foo", "3"),
            ("x-kept", "4"),
        ]);
        assert_eq!(connection_tokens(&headers), ["x-secret", "foo", "close"]);
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn invalid_connection_tokens_are_ignored() {
        let mut headers = map(&[("connection", "bad token, x-a"), ("x-a", "1"), ("x-b", "2")]);
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-b"]);
    }

    #[test]
    fn upgrade_needs_connection_upgrade_token() {
        let ws = map(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")]);
        assert_eq!(upgrade_protocol(&ws).unwrap(), "websocket");
        let spdy = map(&[("connection", "Upgrade"), ("upgrade", "SPDY/3.1")]);
        assert_eq!(upgrade_protocol(&spdy).unwrap(), "SPDY/3.1");
        assert!(upgrade_protocol(&map(&[("upgrade", "websocket")])).is_none());
        assert!(upgrade_protocol(&map(&[("connection", "upgrade")])).is_none());
    }

    #[test]
    fn host_is_lowercased_and_port_stripped() {
        assert_eq!(parse_host("Web-Demo.LOCALHOST:8080").unwrap(), "web-demo.localhost");
        assert_eq!(parse_host("example.com").unwrap(), "example.com");
        assert_eq!(parse_host("example.com.").unwrap(), "example.com");
        assert_eq!(parse_host("example.com:").unwrap(), "example.com");
        assert_eq!(parse_host("10.0.0.1:443").unwrap(), "10.0.0.1");
        assert_eq!(parse_host(" a.b ").unwrap(), "a.b");
    }

    #[test]
    fn host_ipv6_literals_keep_brackets() {
        assert_eq!(parse_host("[::1]:8080").unwrap(), "[::1]");
        assert_eq!(parse_host("[FE80::1]").unwrap(), "[fe80::1]");
        assert_eq!(parse_host("[::ffff:10.0.0.1]:1").unwrap(), "[::ffff:10.0.0.1]");
    }

    #[test]
    fn host_rejects_garbage() {
        assert_eq!(parse_host(""), Err(HostError::Missing));
        for bad in [
            "::1",
            "[::1",
            "[::1]x",
            "[]",
            "[zz::1]",
            "a.b:99999",
            "a.b:http",
            "user@a.b",
            "a b",
            "a/b",
            ":80",
            ".",
            "a.b,c.d",
            "a%2eb",
            "a;b",
            "a\0b",
            "a.b..",
            "a..b",
            ".a.b",
        ] {
            assert!(matches!(parse_host(bad), Err(HostError::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn cookies_are_found_and_removed() {
        let mut h = map(&[("cookie", "a=1; burrow_session=s3cret; b=2")]);
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        assert_eq!(cookie(&h, "burrow_session").as_deref(), Some("s3cret"));
        assert_eq!(cookie(&h, "c").as_deref(), Some("3"));
        assert!(cookie(&h, "missing").is_none());
        remove_cookie(&mut h, "burrow_session");
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b=2; c=3");
        let mut only = map(&[("cookie", "burrow_session=x")]);
        remove_cookie(&mut only, "burrow_session");
        assert!(only.get(header::COOKIE).is_none());
    }

    #[test]
    fn bearer_token_extraction() {
        assert_eq!(bearer_token(&map(&[("authorization", "Bearer abc.def")])).unwrap(), "abc.def");
        assert_eq!(bearer_token(&map(&[("authorization", "bearer   xyz ")])).unwrap(), "xyz");
        assert!(bearer_token(&map(&[("authorization", "Basic dTpw")])).is_none());
        assert!(bearer_token(&map(&[("authorization", "Bearer")])).is_none());
        assert!(bearer_token(&HeaderMap::new()).is_none());
    }

    #[test]
    fn request_id_honoured_only_when_trusted() {
        let headers = map(&[("x-request-id", "abc-123")]);
        assert_eq!(request_id(&headers, true), "abc-123");
        let fresh = request_id(&headers, false);
        assert_eq!(fresh.len(), 32);
        assert!(fresh.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(fresh, new_request_id());
        // Spaces or absurd lengths are never echoed back, even when trusted.
        assert_eq!(request_id(&map(&[("x-request-id", "a b")]), true).len(), 32);
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        assert_eq!(request_id(&map(&[("x-request-id", &long)]), true).len(), 32);
    }

    fn info(host: &str) -> ForwardedInfo<'_> {
        ForwardedInfo { client_ip: "203.0.113.7".parse().unwrap(), proto: "https", host }
    }

    #[test]
    fn forwarded_untrusted_replaces_everything() {
        let mut headers = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        apply_forwarded(&mut headers, info("web-demo.localhost:8443"), false);
        assert_eq!(headers.get_all(&X_FORWARDED_FOR).iter().collect::<Vec<_>>(), ["203.0.113.7"]);
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
        assert_eq!(headers[&X_FORWARDED_HOST], "web-demo.localhost:8443");
        assert!(!headers.contains_key(header::FORWARDED));
    }

    #[test]
    fn forwarded_trusted_appends_and_keeps_upstream_values() {
        let mut headers = map(&[
            ("x-forwarded-for", "1.2.3.4, 5.6.7.8"),
            ("x-forwarded-for", "9.9.9.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.example"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        let mut info = info("internal:8080");
        info.proto = "http";
        apply_forwarded(&mut headers, info, true);
        assert_eq!(
            headers.get_all(&X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
            ["1.2.3.4, 5.6.7.8, 9.9.9.9, 203.0.113.7"]
        );
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
        assert_eq!(headers[&X_FORWARDED_HOST], "public.example");
        assert!(headers.contains_key(header::FORWARDED));
    }

    #[test]
    fn forwarded_trusted_without_upstream_sets_fresh_values() {
        let mut headers = HeaderMap::new();
        apply_forwarded(&mut headers, info("a.b"), true);
        assert_eq!(headers[&X_FORWARDED_FOR], "203.0.113.7");
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
        assert_eq!(headers[&X_FORWARDED_HOST], "a.b");
    }

    #[test]
    fn forwarded_for_uses_plain_ipv4_for_mapped_v6_peers() {
        let mut headers = HeaderMap::new();
        let info = ForwardedInfo { client_ip: "::ffff:192.0.2.1".parse().unwrap(), proto: "http", host: "h" };
        apply_forwarded(&mut headers, info, false);
        assert_eq!(headers[&X_FORWARDED_FOR], "192.0.2.1");
        let info = ForwardedInfo { client_ip: "2001:db8::1".parse().unwrap(), proto: "http", host: "h" };
        apply_forwarded(&mut headers, info, false);
        assert_eq!(headers[&X_FORWARDED_FOR], "2001:db8::1");
    }
}
