//! Telling gRPC from WebSocket on one cleartext port by the first bytes a client sends.
//! Pure, so every boundary (split reads, near-misses, garbage) is tested without sockets.

use burrow_proto::H2_PREFACE;

/// What the first bytes of a connection say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// Not enough bytes to decide yet.
    NeedMore,
    /// The full HTTP/2 client preface: gRPC.
    Http2,
    /// An HTTP/1.x request line has started: must be a WebSocket upgrade.
    Http1,
    /// Neither; the reason goes into the log line.
    Garbage(&'static str),
}

/// Longest HTTP method token we wait for before calling the bytes garbage.
const MAX_METHOD_LEN: usize = 16;

/// Classifies the bytes received so far.
pub fn classify(prefix: &[u8]) -> Sniff {
    if prefix.is_empty() {
        return Sniff::NeedMore;
    }
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() { Sniff::Http2 } else { Sniff::NeedMore };
    }
    // "PRI * " followed by anything but the rest of the preface is a broken HTTP/2 client,
    // never a WebSocket upgrade: say so instead of letting the HTTP/1 parser guess.
    if prefix.starts_with(b"PRI * ") {
        return Sniff::Garbage("a malformed HTTP/2 client preface");
    }
    if prefix[0] == 0x16 {
        return Sniff::Garbage(
            "a TLS handshake on the cleartext agent port (configure [agents.tls] or use grpc:// / ws://)",
        );
    }
    for (i, &b) in prefix.iter().enumerate() {
        match b {
            b'A'..=b'Z' if i < MAX_METHOD_LEN => {}
            b' ' if i > 0 => return Sniff::Http1,
            _ => return Sniff::Garbage("neither an HTTP/2 preface nor an HTTP/1.1 request line"),
        }
    }
    // Only letters so far, at most MAX_METHOD_LEN of them (the loop refuses a longer run):
    // the space may still come. Deciding "garbage" at exactly MAX_METHOD_LEN letters made
    // the verdict depend on how the bytes were split into reads (fuzz target
    // `agent_port_sniff`).
    Sniff::NeedMore
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_preface_is_http2() {
        assert_eq!(classify(H2_PREFACE), Sniff::Http2);
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 18, 4, 0]); // a SETTINGS frame follows
        assert_eq!(classify(&more), Sniff::Http2);
    }

    #[test]
    fn every_split_of_the_preface_waits() {
        for i in 0..H2_PREFACE.len() {
            assert_eq!(classify(&H2_PREFACE[..i]), Sniff::NeedMore, "split at {i}");
        }
    }

    #[test]
    fn http1_request_lines() {
        assert_eq!(classify(b"GET /burrow/agent HTTP/1.1\r\n"), Sniff::Http1);
        assert_eq!(classify(b"GET "), Sniff::Http1);
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Sniff::Http1);
        assert_eq!(classify(b"GE"), Sniff::NeedMore);
        // "PRI" starts both; it stays undecided until the bytes diverge.
        assert_eq!(classify(b"PRI"), Sniff::NeedMore);
        assert_eq!(classify(b"PRI /x HTTP/1.1"), Sniff::Http1);
    }

    #[test]
    fn garbage_is_refused_early() {
        assert!(matches!(classify(&[0x16, 3, 1, 0, 0xa5]), Sniff::Garbage(r) if r.contains("TLS")));
        assert!(matches!(classify(b"\x00\x01\x02"), Sniff::Garbage(_)));
        assert!(matches!(classify(b"get / HTTP/1.1"), Sniff::Garbage(_)));
        assert!(matches!(classify(b" GET"), Sniff::Garbage(_)));
        assert!(matches!(classify(b"PRI * HTTP/2.0\r\n\r\nXX"), Sniff::Garbage(r) if r.contains("HTTP/2")));
        assert!(matches!(classify(b"PRI * HTTP/1.1\r\n"), Sniff::Garbage(r) if r.contains("HTTP/2")));
        assert!(matches!(classify(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"), Sniff::Garbage(_)));
        assert!(matches!(classify(b"ABCDEFGHIJKLMNOPQ"), Sniff::Garbage(_)));
    }

    #[test]
    fn the_longest_method_is_decided_the_same_however_it_is_split() {
        assert_eq!(classify(b"ABCDEFGHIJKLMNOP"), Sniff::NeedMore);
        assert_eq!(classify(b"ABCDEFGHIJKLMNOP "), Sniff::Http1);
    }
}
