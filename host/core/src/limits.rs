//! Counting what one source address holds open, with a cap: the agent port counts
//! connections with it, the ingress connections and requests in progress; and
//! [`ConnectionLimits`], a port's connection cap with a per-address share.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Things open per source address, shared by the counter and its slots.
type OpenCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Things open per source address, capped.
pub struct PerAddress {
    cap: usize,
    open: OpenCounts,
}

/// One counted thing of one address; dropping it gives the place back.
#[derive(Default)]
pub struct AddressSlot(Option<(IpAddr, OpenCounts)>);

impl PerAddress {
    /// At most `cap` per address (0: no cap, nothing counted).
    pub fn new(cap: usize) -> Self {
        Self { cap, open: Default::default() }
    }

    /// A place for one more from `ip`, or `None` when it holds `cap` already. IPv4-mapped
    /// IPv6 addresses count as their IPv4 address.
    pub fn acquire(&self, ip: IpAddr) -> Option<AddressSlot> {
        if self.cap == 0 {
            return Some(AddressSlot::default());
        }
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(AddressSlot(Some((ip, self.open.clone()))))
    }

    /// The cap (0: none).
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Addresses holding something now.
    pub fn addresses(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((ip, open)) = self.0.take() {
            let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    // Only addresses holding something are kept: bounded by what is open.
                    open.remove(&ip);
                }
            }
        }
    }
}

/// A port's caps on open connections: in all, and per source address. Counted from
/// accept, before anything is read, so silent connections cannot pile up.
pub struct ConnectionLimits {
    port: Option<Arc<tokio::sync::Semaphore>>,
    per_address: PerAddress,
}

/// Which connection cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefused {
    /// The port holds its `max` connections.
    Port,
    /// The source address holds its share.
    Address,
}

/// One open connection's places in the counts, given back on drop (the default counts
/// nothing).
#[derive(Default)]
pub struct ConnectionSlot {
    _port: Option<tokio::sync::OwnedSemaphorePermit>,
    _address: AddressSlot,
}

impl ConnectionLimits {
    /// At most `max` connections (0: no cap), and `per_address` from one address (0: none).
    pub fn new(max: usize, per_address: usize) -> Self {
        let port = (max > 0).then(|| Arc::new(tokio::sync::Semaphore::new(max)));
        Self { port, per_address: PerAddress::new(per_address) }
    }

    /// Places for one more connection from `ip`.
    pub fn acquire(&self, ip: IpAddr) -> Result<ConnectionSlot, ConnectionRefused> {
        let port = match &self.port {
            Some(port) => Some(port.clone().try_acquire_owned().map_err(|_| ConnectionRefused::Port)?),
            None => None,
        };
        let address = self.per_address.acquire(ip).ok_or(ConnectionRefused::Address)?;
        Ok(ConnectionSlot { _port: port, _address: address })
    }
}

/// Waits until the HTTP/2 client preface has arrived on a cleartext connection (peeked,
/// not consumed: the server reads it again). An HTTP/2 server waits for it forever; a
/// deadline around this is what closes a connection that says nothing.
pub async fn h2_preface(tcp: &TcpStream) -> std::io::Result<()> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; PREFACE.len()];
    loop {
        tcp.readable().await?;
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != PREFACE[..n] {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP/2 preface"));
        }
        if n == PREFACE.len() {
            return Ok(());
        }
        // A partial preface stays readable: pause rather than spin on the same bytes.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A connection with its places in a port's counts, given back when it closes; what a
/// tonic server fed from an accept loop serves.
pub struct Counted<T> {
    io: T,
    remote: SocketAddr,
    _slot: ConnectionSlot,
}

impl<T> Counted<T> {
    /// `io` from `remote`, holding `slot`.
    pub fn new(io: T, remote: SocketAddr, slot: ConnectionSlot) -> Self {
        Self { io, remote, _slot: slot }
    }
}

impl<T> tonic::transport::server::Connected for Counted<T> {
    type ConnectInfo = SocketAddr;
    fn connect_info(&self) -> SocketAddr {
        self.remote
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Accepts cleartext HTTP/2 connections on `listener` for a tonic server until
/// `shutdown`: each counted against `limits` from accept (past a cap, closed at once) and
/// handed on only once its HTTP/2 preface arrived within `deadline` (else closed), with
/// TCP_NODELAY set. `name` labels the log lines.
pub fn accept_h2(
    listener: TcpListener,
    limits: ConnectionLimits,
    deadline: Duration,
    shutdown: CancellationToken,
    name: &'static str,
) -> Incoming<TcpStream> {
    Incoming::new(listener, limits, deadline, shutdown, name, |tcp: TcpStream| async move {
        h2_preface(&tcp).await.map_err(|e| format!("not an HTTP/2 client: {e}"))?;
        Ok(tcp)
    })
}

/// What a connection's handshake makes of it, or why it was closed.
type Handshake<IO> = Pin<Box<dyn Future<Output = Result<IO, String>> + Send>>;

/// The connections accepted on a listener that finished their handshake in time, as a
/// stream for `serve_with_incoming_shutdown`.
///
/// The stream owns the listener and runs the accept itself, so the port closes the moment
/// the stream ends (at `shutdown`) or is dropped with the server's future; a detached
/// accept task would close it at some later point, and a host restarted on the same port
/// raced it (the queue restart test saw `AddrInUse`). Handshakes run on their own tasks in
/// a `JoinSet`, in parallel and aborted with the stream.
pub struct Incoming<IO> {
    listener: Option<TcpListener>,
    limits: ConnectionLimits,
    deadline: Duration,
    name: &'static str,
    handshake: Box<dyn Fn(TcpStream) -> Handshake<IO> + Send>,
    handshakes: tokio::task::JoinSet<Option<Counted<IO>>>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    shutdown: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl<IO: Send + 'static> Incoming<IO> {
    /// Accepts on `listener` until `shutdown`; each connection counted against `limits`
    /// from accept, given TCP_NODELAY, and handed on once `handshake` made it into `IO`
    /// within `deadline` (else closed; the error is logged at debug under `name`).
    pub fn new<F, Fut>(
        listener: TcpListener,
        limits: ConnectionLimits,
        deadline: Duration,
        shutdown: CancellationToken,
        name: &'static str,
        handshake: F,
    ) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = Result<IO, String>> + Send + 'static,
    {
        Self {
            listener: Some(listener),
            limits,
            deadline,
            name,
            handshake: Box::new(move |tcp| Box::pin(handshake(tcp))),
            handshakes: tokio::task::JoinSet::new(),
            backoff: None,
            shutdown: Box::pin(shutdown.cancelled_owned()),
        }
    }

    fn accept(&mut self, cx: &mut Context<'_>) {
        let name = self.name;
        while let Some(listener) = &self.listener {
            if let Some(backoff) = &mut self.backoff {
                if backoff.as_mut().poll(cx).is_pending() {
                    return;
                }
                self.backoff = None;
            }
            let (tcp, remote) = match listener.poll_accept(cx) {
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(e)) => {
                    // EMFILE and friends: keep serving the connections there are.
                    tracing::warn!(error = %e, "{name}: accept failed");
                    self.backoff = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                    continue;
                }
                Poll::Pending => return,
            };
            let slot = match self.limits.acquire(remote.ip()) {
                Ok(slot) => slot,
                Err(refused) => {
                    tracing::warn!(%remote, ?refused, "{name}: connection cap reached; closed");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let handshake = (self.handshake)(tcp);
            let deadline = self.deadline;
            self.handshakes.spawn(async move {
                match tokio::time::timeout(deadline, handshake).await {
                    Ok(Ok(io)) => Some(Counted::new(io, remote, slot)),
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "{name}: handshake failed; closed");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "{name}: no handshake in time; closed");
                        None
                    }
                }
            });
        }
    }
}

impl<IO: Send + 'static> futures_util::Stream for Incoming<IO> {
    type Item = std::io::Result<Counted<IO>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.listener.is_none() {
            return Poll::Ready(None);
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            // The port closes now, not when the server has drained.
            this.listener = None;
            this.handshakes.abort_all();
            return Poll::Ready(None);
        }
        this.accept(cx);
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(conn)))) => return Poll::Ready(Some(Ok(conn))),
                Poll::Ready(Some(Ok(None))) => continue,
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "{}: handshake task failed", this.name);
                    continue;
                }
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_cap_and_the_map_forgets_it_when_all_is_given_back() {
        let limit = PerAddress::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let first = limit.acquire(a).unwrap();
        let second = limit.acquire(mapped).unwrap();
        assert!(limit.acquire(a).is_none(), "the mapped address is the same address");
        assert!(limit.acquire("10.0.0.2".parse().unwrap()).is_some());
        drop((first, second));
        assert_eq!(limit.addresses(), 0);
        assert!(PerAddress::new(0).acquire(a).is_some());
    }

    #[test]
    fn a_port_cap_counts_every_address_and_frees_on_drop() {
        let limits = ConnectionLimits::new(2, 1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let first = limits.acquire(a).unwrap();
        assert_eq!(limits.acquire(a).err(), Some(ConnectionRefused::Address));
        let _second = limits.acquire("10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(limits.acquire("10.0.0.3".parse().unwrap()).err(), Some(ConnectionRefused::Port));
        drop(first);
        assert!(limits.acquire("10.0.0.3".parse().unwrap()).is_ok());
    }

    #[tokio::test]
    async fn incoming_hands_on_a_preface_and_closes_a_silent_connection_at_the_deadline() {
        use futures_util::StreamExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tonic::transport::server::Connected;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let limits = ConnectionLimits::new(4, 0);
        let mut incoming = accept_h2(listener, limits, Duration::from_millis(200), shutdown.clone(), "test");
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut speaker = TcpStream::connect(addr).await.unwrap();
        speaker.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        let conn = incoming.next().await.expect("a connection").expect("accepted");
        assert_eq!(conn.connect_info(), speaker.local_addr().unwrap());
        // The silent one is closed by the host: its read ends (EOF or reset).
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }

    #[tokio::test]
    async fn incoming_closes_the_port_when_shutdown_fires() {
        use futures_util::StreamExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let mut incoming = accept_h2(
            listener,
            ConnectionLimits::new(0, 0),
            Duration::from_secs(5),
            shutdown.clone(),
            "test",
        );
        shutdown.cancel();
        assert!(incoming.next().await.is_none(), "the stream ends at shutdown");
        // The stream is still alive (a draining server holds it); the port is free anyway.
        TcpListener::bind(addr).await.expect("the port was closed at shutdown");
        assert!(incoming.next().await.is_none());
    }
}
