//! The outbound HTTP client behind `wasi:http`: vets a request against the plugin's
//! [`Allowlist`](super::allowlist::Allowlist), resolves once, connects only to the vetted
//! addresses, and enforces the deadlines and the response cap.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::allowlist::Target;
use super::{OutboundHttpConfigError, OutboundPolicy};

/// Largest response head (status line and headers) accepted from a server.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// The TLS client: the Mozilla roots plus the PEM certificates in `ca_file`.
pub(super) fn tls_config(
    ca_file: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, OutboundHttpConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let invalid =
            |reason: String| OutboundHttpConfigError::CaFileInvalid { path: path.to_owned(), reason };
        let pem = std::fs::read(path)
            .map_err(|source| OutboundHttpConfigError::CaFileRead { path: path.to_owned(), source })?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| invalid(format!("bad PEM: {e}")))?;
            roots.add(cert).map_err(|e| invalid(format!("unusable certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(invalid("holds no PEM certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OutboundHttpConfigError::CaFileInvalid {
            path: ca_file.map(Path::to_path_buf).unwrap_or_default(),
            reason: format!("TLS setup: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The client speaks HTTP/1.1 only; say so, or an h2-preferring server may pick h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The `wasi:http` hooks of one call's store: the plugin's policy plus its name for the
/// log. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct OutboundHooks {
    policy: Arc<OutboundPolicy>,
    plugin: Arc<str>,
}

impl OutboundHooks {
    /// `plugin` names the plugin in refusal logs.
    pub(crate) fn new(policy: Arc<OutboundPolicy>, plugin: Arc<str>) -> Self {
        Self { policy, plugin }
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for OutboundHooks {
    fn is_supported_scheme(&mut self, scheme: &Scheme) -> bool {
        *scheme == Scheme::HTTP || *scheme == Scheme::HTTPS
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send> {
        // `fut` reports response-side errors to the guest's request body stream; this
        // implementation reports them through the response body instead, like the
        // default one.
        drop(fut);
        let hooks = self.clone();
        Box::new(async move { hooks.send(request, options).await })
    }
}

/// The request's deadlines, each the guest's wish capped by the plugin's `timeout`.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
}

impl Deadlines {
    fn new(cap: Duration, options: Option<RequestOptions>) -> Self {
        let options = options.unwrap_or_default();
        let pick = |wish: Option<Duration>| wish.map_or(cap, |w| w.min(cap));
        Self {
            connect: pick(options.connect_timeout),
            first_byte: pick(options.first_byte_timeout),
            between_bytes: pick(options.between_bytes_timeout),
        }
    }
}

impl OutboundHooks {
    fn refuse(&self, target: &dyn fmt::Display, reason: &str, error: HttpError) -> HttpError {
        tracing::debug!(plugin = %self.plugin, host = %target, reason, "outbound HTTP refused");
        error
    }

    async fn send(
        &self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
        let uri = request.uri().clone();
        let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
        let tls = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => {
                return Err(self.refuse(
                    authority,
                    "scheme is not http or https",
                    HttpError::HttpRequestDenied,
                ))
            }
        };
        let target = Target::from_authority(authority).ok_or(HttpError::HttpRequestUriInvalid)?;
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let policy = &*self.policy;
        if !policy.allow.allows(&target, port) {
            let shown = format!("{target}:{port}");
            return Err(self.refuse(&shown, "not on the allowlist", HttpError::HttpRequestDenied));
        }

        let deadlines = Deadlines::new(policy.timeout, options);
        let connect_by = Instant::now() + deadlines.connect;
        let addrs = match &target {
            Target::Ip(ip) => vec![SocketAddr::new(*ip, port)],
            Target::Name(name) => resolve(name, port, connect_by).await?,
        };
        if let Some(bad) = addrs.iter().find(|a| !policy.allow.may_reach(a.ip(), port)) {
            let shown = format!("{target}:{port} ({})", bad.ip());
            return Err(self.refuse(
                &shown,
                "resolves to a non-public address",
                HttpError::DestinationIpProhibited,
            ));
        }

        let tcp = connect(&addrs, connect_by).await?;
        // The head goes out in one write; Nagle would only delay it.
        let _ = tcp.set_nodelay(true);

        // Origin form on the wire (the authority travels in `Host`), as a non-proxy
        // client sends it.
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        *request.uri_mut() = http::Uri::try_from(path).map_err(|_| HttpError::HttpRequestUriInvalid)?;
        if !request.headers().contains_key(http::header::HOST) {
            let host = http::HeaderValue::from_str(authority.as_str())
                .map_err(|_| HttpError::HttpRequestUriInvalid)?;
            request.headers_mut().insert(http::header::HOST, host);
        }

        if tls {
            let name = match &target {
                Target::Ip(ip) => ServerName::IpAddress((*ip).into()),
                Target::Name(name) => {
                    ServerName::try_from(name.clone()).map_err(|_| HttpError::HttpRequestUriInvalid)?
                }
            };
            let connector = tokio_rustls::TlsConnector::from(policy.tls.clone());
            let stream = tokio::time::timeout_at(connect_by, connector.connect(name, tcp))
                .await
                .map_err(|_| HttpError::ConnectionTimeout)?
                .map_err(|e| tls_error(&e))?;
            self.exchange(stream, request, deadlines).await
        } else {
            self.exchange(tcp, request, deadlines).await
        }
    }

    /// Sends the request over an open connection and waits for the response head.
    async fn exchange<S>(
        &self,
        stream: S,
        request: http::Request<WasiBody>,
        deadlines: Deadlines,
    ) -> Result<(http::Response<WasiBody>, IoFuture), HttpError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_RESPONSE_HEAD)
            .handshake::<_, WasiBody>(TokioIo::new(stream))
            .await
            .map_err(|e| hyper_error(&e))?;
        let mut conn = Box::pin(conn);
        // A HEAD response (and 204/304) declares a length it does not send.
        let bodiless_request = request.method() == http::Method::HEAD;
        let send = tokio::time::timeout(deadlines.first_byte, sender.send_request(request));
        tokio::pin!(send);
        // The connection must be polled for the request to make progress; it may also
        // finish first (the server closed), after which `send` resolves too.
        let mut finished = None;
        let response = loop {
            tokio::select! {
                response = &mut send => break response,
                done = &mut conn, if finished.is_none() => finished = Some(done),
            }
        };
        let response =
            response.map_err(|_| HttpError::ConnectionReadTimeout)?.map_err(|e| hyper_error(&e))?;

        let limit = self.policy.max_response_bytes;
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let bodiless = bodiless_request
            || response.status() == http::StatusCode::NO_CONTENT
            || response.status() == http::StatusCode::NOT_MODIFIED;
        if let Some(len) = declared.filter(|len| *len > limit && !bodiless) {
            return Err(HttpError::HttpResponseBodySize(Some(len)));
        }
        let response = response.map(|incoming| {
            ResponseBody {
                incoming,
                idle: Box::pin(tokio::time::sleep(deadlines.between_bytes)),
                between_bytes: deadlines.between_bytes,
                received: 0,
                limit,
                done: false,
            }
            .boxed_unsync()
        });
        let io: IoFuture = Box::new(async move {
            match finished {
                Some(done) => done,
                None => conn.await,
            }
            .map_err(|e| hyper_error(&e))
        });
        Ok((response, io))
    }
}

async fn resolve(name: &str, port: u16, by: Instant) -> Result<Vec<SocketAddr>, HttpError> {
    let addrs = tokio::time::timeout_at(by, tokio::net::lookup_host((name, port)))
        .await
        .map_err(|_| HttpError::DnsTimeout)?
        .map_err(|e| HttpError::DnsError { rcode: Some(e.to_string()), info_code: None })?
        .collect::<Vec<_>>();
    if addrs.is_empty() {
        return Err(HttpError::DnsError { rcode: Some("no address".into()), info_code: None });
    }
    Ok(addrs)
}

/// Connects to the first of `addrs` that answers, all before `by`.
async fn connect(addrs: &[SocketAddr], by: Instant) -> Result<TcpStream, HttpError> {
    let mut last = HttpError::ConnectionTimeout;
    for addr in addrs {
        match tokio::time::timeout_at(by, TcpStream::connect(addr)).await {
            Err(_) => return Err(HttpError::ConnectionTimeout),
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => {
                last = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
                    std::io::ErrorKind::TimedOut => HttpError::ConnectionTimeout,
                    std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
                        HttpError::DestinationIpUnroutable
                    }
                    _ => HttpError::DestinationUnavailable,
                }
            }
        }
    }
    Err(last)
}

fn tls_error(e: &std::io::Error) -> HttpError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            HttpError::TlsCertificateError
        }
        Some(rustls::Error::AlertReceived(alert)) => HttpError::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        Some(_) => HttpError::TlsProtocolError,
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => HttpError::ConnectionTerminated,
        None => HttpError::TlsProtocolError,
    }
}

fn hyper_error(e: &hyper::Error) -> HttpError {
    // A failing request body (the guest's stream) surfaces as hyper's cause.
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(body) = cause.downcast_ref::<HttpError>() {
            return match body {
                HttpError::HttpRequestBodySize(size) => HttpError::HttpRequestBodySize(*size),
                other => HttpError::InternalError(Some(format!("request body: {other}"))),
            };
        }
        source = cause.source();
    }
    if e.is_timeout() {
        HttpError::HttpResponseTimeout
    } else if e.is_parse_too_large() {
        HttpError::HttpResponseHeaderSectionSize(None)
    } else if e.is_incomplete_message() {
        HttpError::HttpResponseIncomplete
    } else if e.is_canceled() || e.is_closed() {
        HttpError::ConnectionTerminated
    } else {
        HttpError::HttpProtocolError
    }
}

/// The response body: bounded in size, and failing when the server stalls longer than
/// the between-bytes timeout.
struct ResponseBody {
    incoming: hyper::body::Incoming,
    idle: Pin<Box<Sleep>>,
    between_bytes: Duration,
    received: u64,
    limit: u64,
    done: bool,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let fail = |this: &mut Self, e: HttpError| {
            this.done = true;
            Poll::Ready(Some(Err(e)))
        };
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.received > this.limit {
                        let received = this.received;
                        return fail(this, HttpError::HttpResponseBodySize(Some(received)));
                    }
                }
                this.idle.as_mut().reset(Instant::now() + this.between_bytes);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => fail(this, hyper_error(&e)),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                ready!(this.idle.as_mut().poll(cx));
                fail(this, HttpError::ConnectionReadTimeout)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
