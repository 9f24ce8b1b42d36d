//! The connector of the pooled workload client: "connecting" means claiming an agent tunnel
//! and dialing a service over it.
//!
//! hyper-util's legacy client pools connections by URI authority, so each (agent, service)
//! pair gets a synthetic authority that encodes both; keep-alive connections (tunnels) are then
//! reused only for the same workload.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;

use super::headers::new_request_id;
use crate::context::{HostContext, OpenError, RouteHint};
use crate::tunnel_io::TunnelStream;

/// Every synthetic authority ends with this; `.invalid` can never resolve (RFC 6761).
const SYNTHETIC_SUFFIX: &str = ".tunnel.burrow.invalid";

tokio::task_local! {
    /// The id of the request being sent, so a tunnel opened on its behalf carries it in `Dial`
    /// (the agent logs it). The connector only sees a URI, hence the task-local.
    static REQUEST_ID: String;
}

tokio::task_local! {
    /// The workload and user session a request is for, for the router plugin.
    static ROUTE_HINT: RouteHint;
}

/// Runs `future` with the route hint visible to the connector.
pub fn with_route_hint<F: Future>(hint: RouteHint, future: F) -> impl Future<Output = F::Output> {
    ROUTE_HINT.scope(hint, future)
}

/// Runs `future` (a client request) with `request_id` visible to the connector.
pub fn with_request_id<F: Future>(request_id: String, future: F) -> impl Future<Output = F::Output> {
    REQUEST_ID.scope(request_id, future)
}

/// The absolute URI the pooled client is given for a request to `service` of `agent_id`; the
/// client sends only its path and query (origin-form) to the workload.
pub fn workload_uri(
    agent_id: &str,
    service: &str,
    path_and_query: Option<&PathAndQuery>,
) -> Result<Uri, http::Error> {
    let authority = format!("a{}.s{}{SYNTHETIC_SUFFIX}", hex::encode(agent_id), hex::encode(service));
    let authority = Authority::try_from(authority)?;
    let path_and_query = path_and_query.cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder().scheme(Scheme::HTTP).authority(authority).path_and_query(path_and_query).build()
}

/// Inverse of [`workload_uri`]: the (agent id, service) a synthetic URI names.
pub fn decode_workload_uri(uri: &Uri) -> Option<(String, String)> {
    let labels = uri.host()?.strip_suffix(SYNTHETIC_SUFFIX)?;
    let (agent, service) = labels.split_once('.')?;
    let decode = |label: &str, prefix: char| {
        let bytes = hex::decode(label.strip_prefix(prefix)?).ok()?;
        String::from_utf8(bytes).ok()
    };
    Some((decode(agent, 'a')?, decode(service, 's')?))
}

/// Why the connector produced no connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// [`HostContext::open_tunnel`] failed.
    #[error("{error}")]
    Open { agent_id: String, service: String, error: OpenError },
    /// The URI was not built by [`workload_uri`] (a bug, never user input).
    #[error("not a workload URI: {0}")]
    BadDestination(String),
}

/// Finds the [`ConnectError`] behind a client error by walking `source()`, so the caller can
/// answer 504/502/503 instead of a generic 502.
pub fn find_connect_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a ConnectError> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<ConnectError>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

/// A `tower::Service<Uri>` opening agent tunnels for hyper-util's pooled client.
#[derive(Clone)]
pub struct TunnelConnector {
    ctx: Arc<HostContext>,
    stream_wait: Duration,
}

impl TunnelConnector {
    /// `stream_wait` bounds how long a connect waits for an idle tunnel of the agent.
    pub fn new(ctx: Arc<HostContext>, stream_wait: Duration) -> Self {
        Self { ctx, stream_wait }
    }

    /// Opens a tunnel to `service` of `agent_id` outside the pool (used for upgrades, whose
    /// connection becomes a raw byte pipe and must never be reused).
    pub async fn open(
        &self,
        agent_id: &str,
        service: &str,
        request_id: &str,
        hint: Option<&RouteHint>,
    ) -> Result<TunnelConnection, ConnectError> {
        self.ctx
            .open_tunnel_routed(agent_id, service, request_id, self.stream_wait, hint)
            .await
            .map(TunnelConnection::new)
            .map_err(|error| ConnectError::Open {
                agent_id: agent_id.to_owned(),
                service: service.to_owned(),
                error,
            })
    }
}

impl tower::Service<Uri> for TunnelConnector {
    type Response = TunnelConnection;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<TunnelConnection, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Read now: hyper-util may finish this connect in a background task after the request
        // that started it was served by another pooled connection.
        let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| new_request_id());
        let hint = ROUTE_HINT.try_with(Clone::clone).ok();
        let connector = self.clone();
        Box::pin(async move {
            let (agent_id, service) =
                decode_workload_uri(&uri).ok_or_else(|| ConnectError::BadDestination(uri.to_string()))?;
            connector.open(&agent_id, &service, &request_id, hint.as_ref()).await
        })
    }
}

/// A dialed tunnel as hyper client I/O.
#[derive(Debug)]
pub struct TunnelConnection {
    io: TokioIo<TunnelStream>,
}

impl TunnelConnection {
    fn new(stream: TunnelStream) -> Self {
        Self { io: TokioIo::new(stream) }
    }
}

impl Connection for TunnelConnection {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for TunnelConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for TunnelConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_uri_round_trips_any_names() {
        for (agent, service) in [("demo", "web"), ("Agent.With:Odd/Chars é", "svc name"), ("a", "")] {
            let pq = PathAndQuery::from_static("/x?y=1");
            let uri = workload_uri(agent, service, Some(&pq)).unwrap();
            assert_eq!(uri.scheme(), Some(&Scheme::HTTP));
            assert_eq!(uri.path_and_query().unwrap().as_str(), "/x?y=1");
            assert!(uri.host().unwrap().ends_with(".invalid"));
            assert_eq!(decode_workload_uri(&uri).unwrap(), (agent.to_owned(), service.to_owned()));
        }
        let root = workload_uri("demo", "web", None).unwrap();
        assert_eq!(root.path(), "/");
    }

    #[test]
    fn distinct_workloads_get_distinct_pool_keys() {
        let a = workload_uri("ab", "c", None).unwrap();
        let b = workload_uri("a", "bc", None).unwrap();
        assert_ne!(a.authority(), b.authority());
    }

    #[test]
    fn foreign_uris_are_not_decoded() {
        for uri in ["http://example.com/", "http://a64.s77.tunnel.burrow.invalid.example/", "/path"] {
            assert!(decode_workload_uri(&uri.parse().unwrap()).is_none(), "{uri}");
        }
        assert!(decode_workload_uri(&"http://azz.s00.tunnel.burrow.invalid/".parse().unwrap()).is_none());
    }

    #[test]
    fn connect_error_is_found_through_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error")]
        struct Outer(#[source] Box<dyn StdError + Send + Sync>);

        let inner =
            ConnectError::Open { agent_id: "a".into(), service: "s".into(), error: OpenError::ShuttingDown };
        let outer = Outer(Box::new(inner));
        let found = find_connect_error(&outer).unwrap();
        assert!(matches!(found, ConnectError::Open { error: OpenError::ShuttingDown, .. }));
        let unrelated = Outer(Box::new(io::Error::other("boom")));
        assert!(find_connect_error(&unrelated).is_none());
    }
}
