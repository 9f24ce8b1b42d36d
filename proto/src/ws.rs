//! A WebSocket seen as a plain byte stream, so HTTP/2 (and with it gRPC) can ride inside
//! one WebSocket connection through proxies that only pass HTTP/1.1.
//!
//! Both ends use it: the agent wraps its client-side socket after the upgrade, the host
//! wraps the server side after accepting it. Each `write` becomes one binary message;
//! reads concatenate binary messages back into a stream. Message boundaries carry no
//! meaning, exactly like TCP segments.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Largest WebSocket message (and frame) either side accepts. HTTP/2 writes are far
/// smaller (hyper coalesces into buffers of a few hundred KiB at most), so this only
/// stops a hostile peer from making us buffer without limit.
pub const WS_MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Largest payload [`WsIo`] puts in one outgoing message. A longer `write` is accepted
/// partially, as `AsyncWrite` allows, so no message we send can trip the peer's limit.
pub const WS_MAX_WRITE: usize = 1024 * 1024;

/// The WebSocket settings both sides use.
///
/// - No compression: tungstenite has none enabled here, and the payload is HTTP/2 whose
///   bodies are usually compressed already.
/// - Message and frame caps of [`WS_MAX_MESSAGE`].
/// - No write coalescing (`write_buffer_size = 0`): hyper already hands over whole
///   buffers and flushes when it wants bytes on the wire, so every message goes to the
///   socket at once. When the socket pushes back, at most one message waits in
///   tungstenite's buffer and further writes wait, which keeps memory bounded.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(64 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * WS_MAX_MESSAGE)
        .max_message_size(Some(WS_MAX_MESSAGE))
        .max_frame_size(Some(WS_MAX_MESSAGE))
}

/// The agent port's reader: a Burrow peer never writes a message above [`WS_MAX_WRITE`],
/// so the host accepts no more than that from anyone, authenticated or not (a peer that
/// has not authenticated yet gets no 16 MiB buffers).
pub fn ws_server_config() -> WebSocketConfig {
    ws_config().max_message_size(Some(WS_MAX_WRITE)).max_frame_size(Some(WS_MAX_WRITE))
}

/// A WebSocket connection as an `AsyncRead + AsyncWrite` byte stream.
///
/// - A binary message's payload is returned by reads, in order.
/// - A Close frame (or the peer closing after one) reads as EOF.
/// - A text message is a protocol violation: reads fail with `InvalidData`.
/// - Pings are answered by tungstenite; the pong is flushed right away.
/// - `poll_shutdown` sends a Close frame. WebSocket has no half-close, so this ends
///   both directions; HTTP/2 only shuts its transport down when it is finished with it.
#[derive(Debug)]
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// Unread rest of the last binary message.
    pending: Bytes,
    /// A Close arrived or the stream ended: every further read is EOF.
    read_closed: bool,
    /// A pong (or a close reply) may sit in tungstenite's buffer.
    flush_control: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    /// Wrap an established WebSocket (after the HTTP upgrade, on either side).
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self { ws, pending: Bytes::new(), read_closed: false, flush_control: false }
    }

    /// The underlying transport, e.g. to read the peer address.
    pub fn get_ref(&self) -> &S {
        self.ws.get_ref()
    }

    /// Try to push queued control frames (pongs, close replies) to the socket without
    /// blocking the read path on it.
    fn poll_flush_control(&mut self, cx: &mut Context<'_>) {
        if !self.flush_control {
            return;
        }
        match Pin::new(&mut self.ws).poll_flush(cx) {
            // Done, or failed: a failure will surface on the next write anyway.
            Poll::Ready(_) => self.flush_control = false,
            // Still blocked; the next read or write retries.
            Poll::Pending => {}
        }
    }
}

fn ws_to_io(err: WsError) -> io::Error {
    match err {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket connection is closed")
        }
        WsError::Capacity(e) => io::Error::new(io::ErrorKind::InvalidData, e),
        WsError::Protocol(e) => io::Error::new(io::ErrorKind::InvalidData, e),
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            this.poll_flush_control(cx);
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Ping(_))) => {
                    // tungstenite queued the pong; make sure it leaves now rather than
                    // whenever we next write, or a quiet tunnel fails the peer's keepalive.
                    this.flush_control = true;
                    this.poll_flush_control(cx);
                }
                Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) => {
                    // tungstenite queued the close reply; flush it on a best-effort basis.
                    this.read_closed = true;
                    this.flush_control = true;
                    this.poll_flush_control(cx);
                }
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected text message on a binary WebSocket tunnel",
                    )));
                }
                Some(Err(err)) => return Poll::Ready(Err(ws_to_io(err))),
                None => this.read_closed = true,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(ws_to_io)?;
        let n = buf.len().min(WS_MAX_WRITE);
        Pin::new(&mut this.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(ws_to_io)?;
        // Any queued pong went out together with this message.
        this.flush_control = false;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.ws).poll_flush(cx)).map_err(ws_to_io)?;
        this.flush_control = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.ws).poll_close(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            // The peer closed first and our reply already went out: shut down is done.
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(err) => Poll::Ready(Err(ws_to_io(err))),
        }
    }
}

/// Lets a tonic server built with `serve_with_incoming` accept `WsIo` connections and
/// still see the transport's connection info (e.g. the peer address).
impl<S> tonic::transport::server::Connected for WsIo<S>
where
    S: tonic::transport::server::Connected + AsyncRead + AsyncWrite + Unpin,
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.ws.get_ref().connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// A connected pair over real loopback TCP: (client, server).
    async fn ws_pair() -> (WebSocketStream<TcpStream>, WebSocketStream<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio_tungstenite::accept_async_with_config(tcp, Some(ws_config())).await.unwrap()
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, _resp) =
            tokio_tungstenite::client_async_with_config(format!("ws://{addr}/t"), tcp, Some(ws_config()))
                .await
                .unwrap();
        (client, server.await.unwrap())
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_shutdown_reads_as_eof() {
        let (client, server) = ws_pair().await;
        let mut client = WsIo::new(client);
        let mut server = WsIo::new(server);

        client.write_all(b"hello ").await.unwrap();
        client.write_all(b"host").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 10];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello host");

        server.write_all(b"hi agent").await.unwrap();
        server.flush().await.unwrap();
        let mut got = [0u8; 8];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi agent");

        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0, "Close reads as EOF");
        assert_eq!(server.read(&mut [0u8; 4]).await.unwrap(), 0, "EOF is sticky");
    }

    #[tokio::test]
    async fn large_transfer_in_both_directions_at_once() {
        const LEN: usize = 8 * 1024 * 1024 + 17;
        let (client, server) = ws_pair().await;
        let (mut client_rd, mut client_wr) = tokio::io::split(WsIo::new(client));
        let (mut server_rd, mut server_wr) = tokio::io::split(WsIo::new(server));
        let pattern = |i: usize| (i % 251) as u8;

        let up = tokio::spawn(async move {
            let data: Vec<u8> = (0..LEN).map(pattern).collect();
            // Writes larger than one message are split by WsIo.
            client_wr.write_all(&data).await.unwrap();
            client_wr.flush().await.unwrap();
            client_wr
        });
        let down = tokio::spawn(async move {
            let data: Vec<u8> = (0..LEN).map(|i| pattern(i + 1)).collect();
            for chunk in data.chunks(100_000) {
                server_wr.write_all(chunk).await.unwrap();
            }
            server_wr.flush().await.unwrap();
        });
        let mut at_server = vec![0u8; LEN];
        server_rd.read_exact(&mut at_server).await.unwrap();
        let mut at_client = vec![0u8; LEN];
        client_rd.read_exact(&mut at_client).await.unwrap();
        let mut client_wr = up.await.unwrap();
        down.await.unwrap();
        assert!(at_server.iter().enumerate().all(|(i, b)| *b == pattern(i)));
        assert!(at_client.iter().enumerate().all(|(i, b)| *b == pattern(i + 1)));

        // WebSocket has no half-close: shutting down closes the connection, and the
        // other side reads EOF after everything sent before it.
        client_wr.shutdown().await.unwrap();
        assert_eq!(server_rd.read(&mut [0u8; 1]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn bounded_host_reader_refuses_messages_above_what_burrow_writes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio_tungstenite::accept_async_with_config(tcp, Some(ws_server_config())).await.unwrap()
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut client, _) =
            tokio_tungstenite::client_async_with_config(format!("ws://{addr}/t"), tcp, Some(ws_config()))
                .await
                .unwrap();
        let mut server = WsIo::new(server.await.unwrap());
        // Exactly the largest message a Burrow writer sends is fine...
        client.send(Message::Binary(Bytes::from(vec![7u8; WS_MAX_WRITE]))).await.unwrap();
        let mut got = vec![0u8; WS_MAX_WRITE];
        server.read_exact(&mut got).await.unwrap();
        // ...one byte more is refused without buffering it.
        let _ = client.send(Message::Binary(Bytes::from(vec![7u8; WS_MAX_WRITE + 1]))).await;
        assert!(server.read(&mut [0u8; 16]).await.is_err(), "an oversized message is an error");
    }

    #[tokio::test]
    async fn text_message_is_invalid_data() {
        let (client, mut server) = ws_pair().await;
        let mut client = WsIo::new(client);
        server.send(Message::text("not bytes")).await.unwrap();
        let err = client.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn ping_is_answered_and_skipped() {
        use futures_util::StreamExt;
        let (client, mut server) = ws_pair().await;
        let mut client = WsIo::new(client);
        server.send(Message::Ping(Bytes::from_static(b"p1"))).await.unwrap();
        server.send(Message::Binary(Bytes::from_static(b"data"))).await.unwrap();
        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"data");
        // The pong reached the server although the client never wrote anything.
        match server.next().await.unwrap().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"p1"),
            other => panic!("expected a pong, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn raw_socket_roles_work_for_prewrapped_streams() {
        // The host may unwrap an upgrade itself and build the stream from the raw socket.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move { listener.accept().await.unwrap().0 });
        let a = TcpStream::connect(addr).await.unwrap();
        let b = accept.await.unwrap();
        let mut client =
            WsIo::new(WebSocketStream::from_raw_socket(a, Role::Client, Some(ws_config())).await);
        let mut server =
            WsIo::new(WebSocketStream::from_raw_socket(b, Role::Server, Some(ws_config())).await);
        client.write_all(b"x").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 1];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"x");
        server.shutdown().await.unwrap();
        assert_eq!(client.read(&mut [0u8; 1]).await.unwrap(), 0);
    }
}
