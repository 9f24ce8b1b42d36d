//! Target `host_name`: the ingress's host parsing (`parse_host` in
//! `host/ingress/src/headers.rs`), which turns a user's `Host` header or `:authority`
//! into the routing key the workload plugins match (`web-demo.localhost`).
//!
//! The input, as text (invalid UTF-8 replaced), is the raw header value.
//!
//! Asserted for every input:
//! - a key is non-empty lowercase ASCII without whitespace, port or final dot, and is
//!   either a name (no character that delimits an authority) or a bracketed literal;
//! - the key is a fixed point: parsing it again, or with a port, surrounding spaces,
//!   other letter case or (for a name) one final dot, gives the same key;
//! - whatever `http` reads as the authority's host names the same key;
//! - only blank input is "missing".

// Compiled here from its own source file, like the sniffer (see sniff.rs): the ingress
// crate depends on the plugin runtime, whose build the fuzzing toolchain may not manage.
#[allow(dead_code)]
#[path = "../../../host/ingress/src/headers.rs"]
mod headers;

use headers::{parse_host, HostError};

/// Runs one input; panics when an invariant breaks.
pub fn host_name(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let key = match parse_host(&raw) {
        Ok(key) => key,
        Err(HostError::Missing) => {
            assert!(raw.trim().is_empty(), "{raw:?} is not blank but was called missing");
            return;
        }
        Err(HostError::Invalid(echo)) => {
            assert_eq!(echo, raw, "the error quotes the input as given");
            assert!(!raw.trim().is_empty(), "blank input must be missing, not invalid");
            return;
        }
        // Only the proxy, comparing several names for one request, says this.
        Err(other) => panic!("parse_host({raw:?}) gave {other:?}"),
    };
    check_shape(&raw, &key);

    let same = |variant: &str| {
        assert_eq!(parse_host(variant).as_ref(), Ok(&key), "{variant:?} (from {raw:?}) names another host");
    };
    same(&key);
    same(&key.to_ascii_uppercase());
    same(&format!("  {key}\t"));
    for port in [0u16, 1, 80, 443, 65535] {
        same(&format!("{key}:{port}"));
    }
    same(&format!("{key}:"));
    if !key.starts_with('[') {
        same(&format!("{key}."));
    }

    // The proxy hands us `Authority::as_str()` for h2 and absolute-form requests: where
    // `http` reads a host, it must be the one we route on.
    if let Ok(authority) = raw.trim().parse::<http::uri::Authority>() {
        let theirs = authority.host().to_ascii_lowercase();
        let theirs = theirs.strip_suffix('.').unwrap_or(&theirs);
        assert_eq!(theirs, key, "http reads host {theirs:?} from {raw:?}, we route on {key:?}");
    }
}

fn check_shape(raw: &str, key: &str) {
    assert!(!key.is_empty(), "empty key from {raw:?}");
    assert!(key.is_ascii() && !key.bytes().any(|b| b.is_ascii_uppercase() || b.is_ascii_whitespace()));
    assert!(!key.ends_with('.'), "key {key:?} (from {raw:?}) keeps a final dot: a second name for the host");
    match key.strip_prefix('[') {
        Some(literal) => {
            let literal = literal.strip_suffix(']').expect("a bracketed key closes its bracket");
            assert!(
                !literal.is_empty()
                    && literal.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            );
        }
        // Whatever exact set of name characters the parser allows (at most RFC 3986's
        // reg-name), none that ends or splits an authority or a path may pass.
        None => assert!(
            key.bytes().all(|b| b.is_ascii_graphic() && !b":/?#@[]\\\"<>`{}|^".contains(&b)),
            "key {key:?} is not a name"
        ),
    }
}
