//! Target `ws_unwrap`: the WebSocket unwrap of the agent transport
//! (`burrow_proto::ws::WsIo` over tungstenite), reading bytes a peer sent after the
//! upgrade. The host reads as the server with `ws_server_config()` (the agent port, where
//! nothing is authenticated yet); the agent reads as the client with `ws_config()`.
//!
//! The first byte sets the role and how the peer's bytes arrive (read sizes, reads that
//! would block); the rest is what the peer sent, fed through an in-memory transport and
//! polled to the end without a runtime.
//!
//! Asserted for every input:
//! - reading ends (EOF or an error) without hanging while the transport is ready;
//! - the bytes read are exactly the payloads of the first k complete binary messages,
//!   for some k, as an independent frame parser (below) reads them: nothing invented,
//!   reordered, or cut inside a message; EOF is sticky;
//! - everything written back is a well-formed control frame (pong or close) of the
//!   reader's role (masked only from the client), a pong echoing a ping received;
//! - a well-formed stream from a client (masked, binary messages, control frames by the
//!   rules, a clean close) reads as all of its messages followed by EOF, and the close is
//!   answered.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use burrow_proto::ws::{ws_config, ws_server_config, WsIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Runs one input; panics when an invariant breaks.
pub fn ws_unwrap(data: &[u8]) {
    let Some((&setup, wire)) = data.split_first() else { return };
    let role = if setup & 1 == 0 { Role::Server } else { Role::Client };
    let peer = Peer {
        wire,
        at: 0,
        read_size: if setup & 0x10 != 0 { usize::MAX } else { 1 + usize::from(setup >> 1 & 0x7) },
        stall: setup & 0x20 != 0,
        stalled: false,
        written: Vec::new(),
    };
    let user_read = 1 + usize::from(setup >> 6) * 20;
    let (read, outcome, written) = drive(peer, role, user_read);

    let (frames, _) = parse_frames(wire);
    let received_pings: Vec<&[u8]> =
        frames.iter().filter(|f| f.opcode == PING).map(|f| f.payload.as_slice()).collect();
    assert_read_is_message_prefix(&read, &frames);
    check_written(&written, role, &received_pings);

    if role == Role::Server {
        if let Some(expected) = well_formed_client_stream(wire) {
            assert_eq!(outcome, Ok(()), "a well-formed stream with a clean close failed");
            assert_eq!(read, expected, "a well-formed stream lost or changed bytes");
            let (replies, _) = parse_frames(&written);
            assert!(replies.iter().any(|f| f.opcode == CLOSE), "the peer's close was not answered");
        }
    }
}

/// The peer's side of the connection: hands out `wire` in reads of `read_size`, each
/// preceded by a would-block when `stall` is set, and keeps what is written to it.
struct Peer<'a> {
    wire: &'a [u8],
    at: usize,
    read_size: usize,
    stall: bool,
    stalled: bool,
    written: Vec<u8>,
}

impl AsyncRead for Peer<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stall && !this.stalled {
            this.stalled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.stalled = false;
        let n = this.read_size.min(this.wire.len() - this.at).min(buf.remaining());
        buf.put_slice(&this.wire[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Reads `WsIo` to its end: (bytes read, Ok at EOF or the error kind, bytes written).
fn drive(peer: Peer<'_>, role: Role, user_read: usize) -> (Vec<u8>, Result<(), io::ErrorKind>, Vec<u8>) {
    let config = match role {
        Role::Server => ws_server_config(),
        Role::Client => ws_config(),
    };
    let mut cx = Context::from_waker(Waker::noop());
    let mut wrap = std::pin::pin!(WebSocketStream::from_raw_socket(peer, role, Some(config)));
    let ws = loop {
        if let Poll::Ready(ws) = wrap.as_mut().poll(&mut cx) {
            break ws;
        }
    };
    let mut io = WsIo::new(ws);
    let wire_len = io.get_ref().wire.len();
    let mut read = Vec::new();
    let mut buf = vec![0u8; user_read];
    // Every poll either consumes a byte, returns one, ends, or answers one stall of the
    // transport: anything beyond that bound is a read that no longer makes progress.
    let mut budget = 4 * (wire_len + 16);
    let outcome = loop {
        budget = budget.checked_sub(1).expect("WsIo stopped making progress on a ready transport");
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut io).poll_read(&mut cx, &mut rb) {
            Poll::Pending => continue,
            Poll::Ready(Ok(())) if rb.filled().is_empty() => break Ok(()),
            Poll::Ready(Ok(())) => read.extend_from_slice(rb.filled()),
            Poll::Ready(Err(err)) => break Err(err.kind()),
        }
    };
    if outcome.is_ok() {
        let mut rb = ReadBuf::new(&mut buf);
        let again = Pin::new(&mut io).poll_read(&mut cx, &mut rb);
        assert!(matches!(again, Poll::Ready(Ok(()))) && rb.filled().is_empty(), "EOF is not sticky");
    }
    let written = io.get_ref().written.clone();
    (read, outcome, written)
}

/// One frame as RFC 6455 §5.2 lays it out, payload unmasked.
struct Frame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    /// The length used the shortest of the three encodings that fits it.
    minimal_length: bool,
    payload: Vec<u8>,
}

/// Splits `wire` into frames, as far as whole frames go; the flag says whether it ended
/// exactly at a frame boundary. Validity is the callers' business: this only reads the
/// layout, which every receiver must agree on.
fn parse_frames(wire: &[u8]) -> (Vec<Frame>, bool) {
    let mut frames = Vec::new();
    let mut rest = wire;
    loop {
        if rest.is_empty() {
            return (frames, true);
        }
        let Some(frame) = parse_frame(&mut rest) else { return (frames, false) };
        frames.push(frame);
    }
}

fn parse_frame(rest: &mut &[u8]) -> Option<Frame> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if rest.len() < n {
            return None;
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Some(head)
    }
    let head = take(rest, 2)?;
    let (fin, rsv, opcode) = (head[0] & 0x80 != 0, (head[0] >> 4) & 0x7, head[0] & 0x0F);
    let masked = head[1] & 0x80 != 0;
    let (len, minimal_length) = match head[1] & 0x7F {
        126 => {
            let len = u64::from(u16::from_be_bytes(take(rest, 2)?.try_into().ok()?));
            (len, len >= 126)
        }
        127 => {
            let len = u64::from_be_bytes(take(rest, 8)?.try_into().ok()?);
            (len, len > 0xFFFF)
        }
        short => (u64::from(short), true),
    };
    let key = if masked { Some(take(rest, 4)?.to_vec()) } else { None };
    let mut payload = take(rest, usize::try_from(len).ok()?)?.to_vec();
    if let Some(key) = key {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Some(Frame { fin, rsv, opcode, masked, minimal_length, payload })
}

/// What was read is the concatenation of the first k binary messages, for some k (reading
/// stops for good at a text message, a close, or an error).
fn assert_read_is_message_prefix(read: &[u8], frames: &[Frame]) {
    let mut offered = 0;
    let mut message: Option<(u8, Vec<u8>)> = None;
    for frame in frames {
        if offered == read.len() {
            return;
        }
        match frame.opcode {
            TEXT | BINARY => message = Some((frame.opcode, frame.payload.clone())),
            CONTINUATION => match &mut message {
                Some((_, payload)) => payload.extend_from_slice(&frame.payload),
                None => continue,
            },
            CLOSE => break,
            _ => continue,
        }
        if !frame.fin {
            continue;
        }
        let Some((opcode, payload)) = message.take() else { continue };
        if opcode == TEXT {
            break;
        }
        let end = offered + payload.len();
        assert!(
            end <= read.len() && read[offered..end] == payload[..],
            "bytes read past message {} do not match the message the peer sent",
            offered
        );
        offered = end;
    }
    assert_eq!(
        offered,
        read.len(),
        "read {} bytes, but only {offered} are whole binary messages",
        read.len()
    );
}

/// Everything the reader wrote is a control frame of its role: pongs echoing a ping it
/// received, or a close.
fn check_written(written: &[u8], role: Role, pings: &[&[u8]]) {
    let (frames, whole) = parse_frames(written);
    assert!(whole, "a frame was written half-way");
    for frame in frames {
        assert!(frame.fin && frame.rsv == 0, "written frame with FIN unset or RSV bits");
        assert_eq!(frame.masked, role == Role::Client, "masking must follow the role (RFC 6455 §5.1)");
        assert!(frame.payload.len() <= 125, "control frame above 125 bytes");
        match frame.opcode {
            PONG => assert!(pings.contains(&frame.payload.as_slice()), "a pong for no ping"),
            CLOSE => {}
            other => panic!("wrote opcode {other:#x} while only reading"),
        }
    }
}

/// The binary payloads of `wire` when it is a stream any client may send and any server
/// must read the same way (RFC 6455): masked frames, no RSV bits or text, control frames
/// whole and short, continuations only inside a message, minimal lengths, ending in a
/// close (empty or code 1000 with an ASCII reason) outside a message. `None` otherwise.
fn well_formed_client_stream(wire: &[u8]) -> Option<Vec<u8>> {
    let mut rest = wire;
    let mut data = Vec::new();
    let mut in_message = false;
    loop {
        let frame = parse_frame(&mut rest)?;
        if !frame.masked || frame.rsv != 0 || !frame.minimal_length {
            return None;
        }
        match frame.opcode {
            BINARY if !in_message => in_message = !frame.fin,
            CONTINUATION if in_message => in_message = !frame.fin,
            PING | PONG if frame.fin && frame.payload.len() <= 125 => continue,
            CLOSE if frame.fin && !in_message => {
                let clean = frame.payload.is_empty()
                    || (frame.payload.len() <= 125
                        && frame.payload.starts_with(&1000u16.to_be_bytes())
                        && frame.payload[2..].is_ascii());
                return clean.then_some(data);
            }
            _ => return None,
        }
        data.extend_from_slice(&frame.payload);
    }
}
