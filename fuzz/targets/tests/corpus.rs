//! Replays the fuzz corpus on stable Rust: every file of `fuzz/corpus/<target>/` (seeds,
//! inputs the fuzzer kept, and crash inputs kept as regression seeds), plus any local
//! `fuzz/artifacts/<target>/` crash files, through the same function libFuzzer runs.
//! `cargo test fuzz_corpus` runs them all.
//!
//! The seeds that are built rather than copied (protobuf frames, WebSocket frames) come
//! from `write_seeds` below: `cargo test -p burrow-fuzz-targets --test corpus -- --ignored`
//! writes them again.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use burrow_fuzz_targets::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("fuzz/targets has a parent").to_path_buf()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

fn replay(name: &str) {
    let (_, run) = TARGETS.iter().find(|(n, _)| *n == name).expect("a known target");
    let corpus = files(&fuzz_dir().join("corpus").join(name));
    assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no seeds");
    let artifacts = files(&fuzz_dir().join("artifacts").join(name));
    for path in corpus.iter().chain(&artifacts) {
        let data = std::fs::read(path).expect("a readable corpus file");
        // The target's own panic message is printed above this one; this names the file.
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            panic!("{name}: {} fails (reproduce: cargo fuzz run {name} {})", path.display(), path.display());
        }
    }
}

#[test]
fn fuzz_corpus_tunnel_frames() {
    replay("tunnel_frames");
}

#[test]
fn fuzz_corpus_agent_port_sniff() {
    replay("agent_port_sniff");
}

#[test]
fn fuzz_corpus_ws_unwrap() {
    replay("ws_unwrap");
}

#[test]
fn fuzz_corpus_host_name() {
    replay("host_name");
}

#[test]
fn fuzz_corpus_agent_config() {
    replay("agent_config");
}

#[test]
#[cfg(feature = "host-config")]
fn fuzz_corpus_host_config() {
    replay("host_config");
}

/// Every corpus directory belongs to a target, and every target has fuzz binary.
#[test]
fn fuzz_corpus_names_match_the_targets() {
    let fuzz = fuzz_dir();
    for dir in std::fs::read_dir(fuzz.join("corpus")).expect("fuzz/corpus").flatten() {
        let name = dir.file_name().into_string().expect("a UTF-8 name");
        let known = TARGETS.iter().any(|(n, _)| *n == name)
            || (name == "host_config" && !cfg!(feature = "host-config"));
        assert!(known, "fuzz/corpus/{name} belongs to no target");
    }
    for (name, _) in TARGETS {
        assert!(fuzz.join("fuzz_targets").join(format!("{name}.rs")).is_file(), "no fuzz binary for {name}");
    }
}

/// Writes the built seeds into `fuzz/corpus/` (the copied ones are plain files there).
#[test]
#[ignore = "writes fuzz/corpus; run by hand when the seed formats change"]
fn write_seeds() {
    let corpus = fuzz_dir().join("corpus");
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    for (name, data) in seeds::tunnel() {
        write("tunnel_frames", name, &data);
    }
    for (name, data) in seeds::ws() {
        write("ws_unwrap", name, &data);
    }
}

mod seeds {
    use burrow_proto::pb;
    use burrow_proto::tunnel::frames;
    use bytes::Bytes;
    use prost::Message;

    /// Modes and ops of the `tunnel_frames` input (see fuzz/targets/src/tunnel.rs).
    const HOST_ALONE: u8 = 0;
    const AGENT_ALONE: u8 = 1;
    const LOCKSTEP: u8 = 2;
    const RECEIVE: u8 = 0;
    const SEND: u8 = 1;
    const STREAM_END: u8 = 2;
    const HOST_SENDS: u8 = 0;
    const AGENT_SENDS: u8 = 1;

    fn script(mode: u8, steps: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![mode];
        for (op, payload) in steps {
            out.push(*op);
            out.push(u8::try_from(payload.len()).expect("a seed frame fits a one-byte length"));
            out.extend_from_slice(payload);
        }
        out
    }

    fn host(frame: pb::HostFrame) -> Vec<u8> {
        frame.encode_to_vec()
    }

    fn agent(frame: pb::AgentFrame) -> Vec<u8> {
        frame.encode_to_vec()
    }

    fn data(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    pub fn tunnel() -> Vec<(&'static str, Vec<u8>)> {
        let session_start = pb::SessionStart::default();
        vec![
            (
                "lockstep-tcp",
                script(
                    LOCKSTEP,
                    &[
                        (HOST_SENDS, host(frames::dial("web", "req-1"))),
                        (AGENT_SENDS, agent(frames::dial_ok())),
                        (HOST_SENDS, host(frames::host_data(data("GET / HTTP/1.1\r\nHost: web\r\n\r\n")))),
                        (
                            AGENT_SENDS,
                            agent(frames::agent_data(data("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"))),
                        ),
                        (HOST_SENDS, host(frames::host_eof())),
                        (AGENT_SENDS, agent(frames::agent_eof())),
                    ],
                ),
            ),
            (
                "lockstep-session",
                script(
                    LOCKSTEP,
                    &[
                        (HOST_SENDS, host(frames::dial_session("shell", "req-2", "alice"))),
                        (AGENT_SENDS, agent(frames::dial_ok())),
                        (HOST_SENDS, host(frames::start(session_start))),
                        (
                            HOST_SENDS,
                            host(frames::resize(pb::WindowSize { cols: 80, rows: 24, ..Default::default() })),
                        ),
                        (HOST_SENDS, host(frames::host_data(data("ls\n")))),
                        (AGENT_SENDS, agent(frames::stderr(data("ls: cannot open\n")))),
                        (HOST_SENDS, host(frames::signal("INT"))),
                        (AGENT_SENDS, agent(frames::exit_status(2))),
                        (AGENT_SENDS, agent(frames::agent_eof())),
                        (HOST_SENDS, host(frames::host_eof())),
                    ],
                ),
            ),
            (
                "lockstep-refused",
                script(
                    LOCKSTEP,
                    &[
                        (HOST_SENDS, host(frames::dial("db", "req-3"))),
                        (
                            AGENT_SENDS,
                            agent(frames::dial_refused(pb::RefusalCode::UnknownService, "no service db")),
                        ),
                    ],
                ),
            ),
            (
                "host-reset-midway",
                script(
                    HOST_ALONE,
                    &[
                        (SEND, host(frames::dial("web", "req-4"))),
                        (RECEIVE, agent(frames::dial_ok())),
                        (RECEIVE, agent(frames::agent_data(data("partial")))),
                        (RECEIVE, agent(frames::agent_reset(pb::ResetCode::ProtocolError, "bad"))),
                        (RECEIVE, agent(frames::agent_data(data("after the end")))),
                        (STREAM_END, Vec::new()),
                    ],
                ),
            ),
            (
                "agent-unknown-kind",
                script(
                    AGENT_ALONE,
                    &[
                        (
                            RECEIVE,
                            host(pb::HostFrame {
                                frame: Some(pb::host_frame::Frame::Dial(pb::Dial {
                                    service: "web".into(),
                                    kind: 7,
                                    ..Default::default()
                                })),
                            }),
                        ),
                        (SEND, agent(frames::dial_refused(pb::RefusalCode::Unspecified, "unsupported"))),
                        (RECEIVE, host(frames::host_data(data("too late")))),
                    ],
                ),
            ),
        ]
    }

    /// One frame as a client sends it: masked (with a fixed key; any key is as good).
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        push_len(&mut out, 0x80, payload.len());
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    /// One frame as a server sends it: unmasked.
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        push_len(&mut out, 0, payload.len());
        out.extend_from_slice(payload);
        out
    }

    fn push_len(out: &mut Vec<u8>, mask_bit: u8, len: usize) {
        match len {
            0..=125 => out.push(mask_bit | len as u8),
            126..=0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
    }

    pub fn ws() -> Vec<(&'static str, Vec<u8>)> {
        const BINARY: u8 = 2;
        const TEXT: u8 = 1;
        const CONTINUATION: u8 = 0;
        const CLOSE: u8 = 8;
        const PING: u8 = 9;
        let preface = burrow_proto::H2_PREFACE.as_slice();
        let settings = [0u8, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let big = vec![0x5au8; 300];
        let close_normal = [&1000u16.to_be_bytes()[..], b"bye"].concat();
        let mut seeds = Vec::new();
        // Server role (the agent port), whole reads: preface, settings, ping, close.
        let mut s = vec![0x10];
        s.extend(client_frame(true, BINARY, preface));
        s.extend(client_frame(true, BINARY, &settings));
        s.extend(client_frame(true, PING, b"keepalive"));
        s.extend(client_frame(true, CLOSE, &close_normal));
        seeds.push(("server-preface-ping-close", s));
        // Server role, one-byte reads that would block first: fragments and a 16-bit length.
        let mut s = vec![0x20];
        s.extend(client_frame(false, BINARY, &preface[..10]));
        s.extend(client_frame(true, CONTINUATION, &preface[10..]));
        s.extend(client_frame(true, BINARY, &big));
        s.extend(client_frame(true, CLOSE, &[]));
        seeds.push(("server-fragments-stalls", s));
        // Server role: a text message is refused.
        let mut s = vec![0x12];
        s.extend(client_frame(true, BINARY, b"ok"));
        s.extend(client_frame(true, TEXT, b"not bytes"));
        seeds.push(("server-text", s));
        // Server role: an unmasked frame from a client is refused.
        let mut s = vec![0x10];
        s.extend(server_frame(true, BINARY, b"unmasked"));
        seeds.push(("server-unmasked", s));
        // Client role (the agent reading the host): unmasked frames, then the stream ends.
        let mut s = vec![0x11];
        s.extend(server_frame(true, BINARY, &settings));
        s.extend(server_frame(true, PING, b"p"));
        s.extend(server_frame(true, BINARY, b"data"));
        seeds.push(("client-no-close", s));
        seeds
    }
}
