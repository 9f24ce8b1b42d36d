//! The connection types fed to the gRPC server, whatever transport they arrived on.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use std::future::Future;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

/// How an agent connection reached the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Cleartext HTTP/2.
    Grpc,
    /// HTTP/2 over TLS.
    Grpcs,
    /// HTTP/2 inside a cleartext WebSocket.
    Ws,
    /// HTTP/2 inside a WebSocket over TLS.
    Wss,
}

impl Transport {
    /// The agent URL scheme for this transport.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Grpcs => "grpcs",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }
}

/// Per-connection facts, available to RPC handlers as a request extension.
#[derive(Debug, Clone)]
pub struct AgentConnInfo {
    /// The agent's address as seen by this host.
    pub remote_addr: SocketAddr,
    /// The transport it used.
    pub transport: Transport,
    /// Cancelling it cuts the connection (and every tunnel on it) at once: the end of a
    /// maximum-age grace period.
    pub kill: CancellationToken,
    /// Set once an RPC on the connection authenticated (a `Control` welcomed, or a tunnel
    /// of a live session); a connection without one is cut at its deadline.
    pub authenticated: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl AgentConnInfo {
    /// Records that the connection carries an authenticated RPC.
    pub fn mark_authenticated(&self) {
        self.authenticated.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Any byte stream the gRPC server can run on.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

pub use burrow_host_core::limits::{ConnectionLimits, ConnectionRefused, ConnectionSlot};

/// One agent connection, transport-erased.
pub struct AgentConn {
    io: Box<dyn Io>,
    info: AgentConnInfo,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Its place in the per-address count, given back when the connection is dropped.
    _slot: ConnectionSlot,
}

impl AgentConn {
    /// A connection that must carry an authenticated RPC within `deadline` (from now,
    /// after its preface), or be cut: a peer that opens HTTP/2 and then idles or sends
    /// only unauthenticated calls holds nothing for long.
    pub(crate) fn new(
        io: Box<dyn Io>,
        remote_addr: SocketAddr,
        transport: Transport,
        deadline: std::time::Duration,
        slot: ConnectionSlot,
    ) -> Self {
        let kill = CancellationToken::new();
        let authenticated = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (kill, authenticated) = (kill.clone(), authenticated.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = kill.cancelled() => {}
                    _ = tokio::time::sleep(deadline) => {
                        if !authenticated.load(std::sync::atomic::Ordering::Acquire) {
                            tracing::info!(%remote_addr, ?deadline, "agent connection sent no authenticated call in time; closing it");
                            kill.cancel();
                        }
                    }
                }
            });
        }
        Self {
            killed: Box::pin(kill.clone().cancelled_owned()),
            io,
            info: AgentConnInfo { remote_addr, transport, kill, authenticated },
            _slot: slot,
        }
    }

    fn check_killed(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Err(io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed by the host"))
            }
            Poll::Pending => Ok(()),
        }
    }
}

impl Connected for AgentConn {
    type ConnectInfo = AgentConnInfo;
    fn connect_info(&self) -> AgentConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for AgentConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_killed(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for AgentConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check_killed(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_killed(cx)?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A stream whose first bytes were already read by the sniffer; they are replayed first.
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
