//! Target `agent_port_sniff`: the agent port's preface sniffer
//! (`host/agent-port/src/sniff.rs`), which classifies the first bytes any client sends
//! to the cleartext agent port, before anything is authenticated.
//!
//! Asserted for every input, over each of its prefixes as they could arrive in reads:
//! - once decided, the decision (and its reason) never changes as more bytes arrive, so
//!   how the bytes are split into reads does not matter;
//! - "need more" only below 24 bytes (the HTTP/2 preface): a client cannot make the
//!   host buffer without bound before it decides;
//! - HTTP/2 exactly when the bytes start with the full preface; HTTP/1 only after an
//!   uppercase method of 1 to 16 letters and a space.

// The sniffer is pure and has no crate-local imports, so it is compiled here from its own
// source file: the agent port's crate depends on the plugin runtime, whose build needs
// the wasm32-wasip2 target that the fuzzing toolchain may lack.
#[path = "../../../host/agent-port/src/sniff.rs"]
mod imp;

use burrow_proto::H2_PREFACE;
use imp::{classify, Sniff};

/// Longest method the sniffer waits for (`MAX_METHOD_LEN` in the sniffer).
const MAX_METHOD_LEN: usize = 16;

/// Runs one input; panics when an invariant breaks.
pub fn agent_port_sniff(data: &[u8]) {
    let mut decided: Option<(usize, Sniff)> = None;
    for end in 0..=data.len() {
        let prefix = &data[..end];
        let sniff = classify(prefix);
        match (decided, sniff) {
            (None, Sniff::NeedMore) => {
                assert!(end < H2_PREFACE.len().max(MAX_METHOD_LEN), "still undecided after {end} bytes");
            }
            (None, decision) => {
                check_decision(prefix, decision);
                decided = Some((end, decision));
            }
            (Some((at, first)), later) => {
                assert_eq!(later, first, "{first:?} at {at} bytes became {later:?} at {end}");
            }
        }
    }
}

fn check_decision(prefix: &[u8], decision: Sniff) {
    assert_eq!(
        decision == Sniff::Http2,
        prefix.starts_with(H2_PREFACE),
        "HTTP/2 exactly for the full preface: {prefix:?}"
    );
    if decision == Sniff::Http1 {
        let space = prefix.iter().position(|&b| b == b' ').expect("an HTTP/1 request line has a space");
        assert!((1..=MAX_METHOD_LEN).contains(&space), "method of {space} bytes");
        assert!(prefix[..space].iter().all(u8::is_ascii_uppercase), "method {:?}", &prefix[..space]);
    }
    if let Sniff::Garbage(reason) = decision {
        assert!(!reason.is_empty());
    }
}
