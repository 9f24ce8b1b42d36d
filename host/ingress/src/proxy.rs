//! One user request: route, authorize, forward over a tunnel, stream the answer back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::Uri;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use super::config::IngressConfig;
use super::errors::{wants_json, ProxyError};
use super::headers::{self, ForwardedInfo, X_REQUEST_ID};
use super::pool::{SendError, WorkloadPool};
use super::reserved::{self, Endpoint};
use super::sign_in;
use super::upgrade;
use super::InFlight;
use burrow_host_core::admission::{AdmissionRequest, Refusal};
use burrow_host_core::context::HostContext;
use burrow_host_plugins::types::{Action, Credential, Target};
use burrow_host_signin::SignIn;

/// Body of every response the ingress sends: the workload's streamed body or a small error page.
pub type ResponseBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// TCP peer of the user connection.
    pub peer: SocketAddr,
    /// Whether the ingress terminated TLS on it.
    pub tls: bool,
}

/// State shared by every request of one ingress.
pub struct Proxy {
    config: Arc<IngressConfig>,
    pub(super) ctx: Arc<HostContext>,
    pool: Arc<WorkloadPool>,
    /// Upgraded byte pipes outlive their HTTP connection; they are counted here so shutdown
    /// waits for them, and cut when the grace period ends.
    pub(super) in_flight: Arc<InFlight>,
    pub(super) force_close: CancellationToken,
    /// Cancelled when the host starts shutting down: web terminals tell their users.
    pub(super) shutdown: CancellationToken,
    /// Browser sign-in with OpenID Connect (`[sign_in]`), if configured.
    pub(super) sign_in: Option<Arc<SignIn>>,
    /// The host's own cookies (the session cookie, the sign-in's): never passed to a
    /// workload, never set by one.
    reserved_cookies: Vec<String>,
}

impl Proxy {
    /// How long an upgraded pipe may carry nothing (zero: no limit).
    pub(super) fn upgrade_idle_timeout(&self) -> std::time::Duration {
        self.config.upgrade_idle_timeout
    }

    /// The session cookie users carry (`ingress.session_cookie`).
    fn session_cookie(&self) -> Option<&str> {
        self.config.session_cookie.as_deref()
    }

    /// The host's own cookies, which workloads may neither read nor set.
    pub(super) fn reserved_cookies(&self) -> Vec<&str> {
        self.reserved_cookies.iter().map(String::as_str).collect()
    }

    /// Builds the workload connection pool from `config`.
    pub fn new(
        config: Arc<IngressConfig>,
        ctx: Arc<HostContext>,
        in_flight: Arc<InFlight>,
        force_close: CancellationToken,
        shutdown: CancellationToken,
        sign_in: Option<Arc<SignIn>>,
    ) -> Self {
        let pool = WorkloadPool::new(
            ctx.clone(),
            config.stream_wait,
            config.max_idle_per_workload,
            config.idle_connection_timeout,
        );
        let mut reserved_cookies: Vec<String> = config.session_cookie.iter().cloned().collect();
        if let Some(sign_in) = &sign_in {
            reserved_cookies.extend(sign_in.cookie_names());
        }
        Self { config, ctx, pool, in_flight, force_close, shutdown, sign_in, reserved_cookies }
    }

    /// How long a request waits for a tunnel of its agent.
    pub(super) fn stream_wait(&self) -> std::time::Duration {
        self.config.stream_wait
    }

    /// Serves one request; never fails: errors become error pages. Every response carries
    /// `X-Request-Id`.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let request_id = headers::request_id(request.headers(), self.config.trust_forwarded);
        let json = wants_json(request.headers());
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let named_host = raw_host(&request);
        let raw_host = named_host.as_ref().map_or_else(|_| String::new(), |host| host.to_owned());

        let mut response = match self.proxy(request, conn, &request_id, named_host).await {
            Ok(response) => {
                // The workload answered (whatever its status): the tunnel did its job.
                self.ctx.metrics.request(if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    "upgraded"
                } else {
                    "proxied"
                });
                response
            }
            Err(error) => {
                self.ctx.metrics.request(error.code());
                let status = error.status();
                if status.is_server_error() {
                    tracing::warn!(%request_id, %method, host = %raw_host, %path, status = status.as_u16(), %error, "request failed");
                } else {
                    // Refusals are routine (every user without a token is one) and counted in
                    // `burrow_requests_total{outcome}`; at INFO they would flood the log.
                    tracing::debug!(%request_id, %method, host = %raw_host, %path, status = status.as_u16(), %error, "request refused");
                }
                error
                    .to_response(&request_id, json)
                    .map(|body| body.map_err(|never| match never {}).boxed_unsync())
            }
        };
        if let Ok(id) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(&X_REQUEST_ID, id);
        }
        tracing::debug!(
            %request_id,
            %method,
            host = %raw_host,
            %path,
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request"
        );
        response
    }

    async fn proxy(
        &self,
        mut request: Request<Incoming>,
        conn: ConnInfo,
        request_id: &str,
        named_host: Result<String, headers::HostError>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        if request.method() == Method::CONNECT {
            return Err(ProxyError::ConnectUnsupported);
        }
        let raw_host = named_host.map_err(ProxyError::BadHost)?;
        let raw_host = raw_host.as_str();
        let host = headers::parse_host(raw_host).map_err(ProxyError::BadHost)?;
        // The workload's own name, against which the cookies it sets are vetted.
        let cookie_host = host.clone();
        // Only HTTP/1.1 can upgrade; h2 clients would need extended CONNECT, which is not offered.
        let upgrade = if request.version() == Version::HTTP_11 {
            headers::upgrade_protocol(request.headers())
        } else {
            None
        };
        if let Some(sign_in) = &self.sign_in {
            if let Some(answer) = sign_in::route(sign_in, &request, raw_host).await {
                return Ok(sign_in::respond(answer, request_id));
            }
        }
        if let Some(asset) = reserved::asset(&request) {
            return asset;
        }
        let websocket =
            upgrade.as_ref().is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let endpoint = reserved::endpoint(request.uri().path());
        let action = match (endpoint, &upgrade) {
            (Some(Endpoint::Terminal), _) => Action::Terminal,
            (Some(Endpoint::Forward), _) => Action::PortForward,
            (None, None) => Action::Http,
            (None, Some(_)) if websocket => Action::Websocket,
            (None, Some(_)) => Action::Upgrade,
        };

        // Two credentials would leave it to each reader which one counts (the authorizer
        // sees the first; an open workload might read the second): refuse the request.
        if request.headers().get_all(http::header::AUTHORIZATION).iter().nth(1).is_some() {
            return Err(ProxyError::BadRequest("more than one Authorization header".into()));
        }
        let credential = self.credential(request.headers());
        // A bearer token speaks for itself (non-browser clients); otherwise a browser may
        // carry this host's sign-in.
        let signed_in = match (&self.sign_in, &credential) {
            (Some(sign_in), Credential::None | Credential::Cookie { .. }) => {
                sign_in::principal(sign_in, request.headers(), raw_host).await
            }
            _ => None,
        };
        let may_sign_in = self.sign_in.is_some()
            && signed_in.is_none()
            && matches!(credential, Credential::None)
            && sign_in::browser_navigation(&request);
        let path =
            request.uri().path_and_query().map_or_else(|| request.uri().path(), |pq| pq.as_str()).to_owned();
        let admission = self
            .ctx
            .admission
            .admit(AdmissionRequest {
                action,
                host,
                ssh_user: String::new(),
                method: request.method().as_str().to_owned(),
                path: path.clone(),
                port: 0,
                credential,
                signed_in,
                peer: conn.peer,
                request_id: request_id.to_owned(),
            })
            .await;
        let admitted = match (admission, &self.sign_in) {
            (Ok(admitted), _) => admitted,
            // Not signed in, and a browser that can be: off to sign in, and back here.
            (Err(Refusal::Unauthenticated { .. }), Some(sign_in)) if may_sign_in => {
                return Ok(sign_in::respond(sign_in.sign_in_redirect(raw_host, &path), request_id));
            }
            (Err(refusal), _) => return Err(refusal.into()),
        };
        let route = &admitted.target;
        tracing::debug!(request_id, agent_id = %route.agent_id, service = %route.service, principal = admitted.principal_id(), "admitted");
        if let Some(endpoint) = endpoint {
            if upgrade.is_some() && !websocket {
                return Err(ProxyError::BadRequest("this endpoint upgrades to WebSocket only".into()));
            }
            return reserved::serve(self, endpoint, request, &admitted, websocket, raw_host, request_id)
                .await;
        }

        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        if admitted.strip_credentials {
            parts.headers.remove(header::AUTHORIZATION);
        }
        // The host's cookies are never the workload's: an open workload must not read a
        // user's session either (it could replay it against a workload they may use).
        for name in self.reserved_cookies() {
            headers::remove_cookie(&mut parts.headers, name);
        }
        let proto = if conn.tls { "https" } else { "http" };
        let forwarded = ForwardedInfo { client_ip: conn.peer.ip(), proto, host: raw_host };
        headers::apply_forwarded(&mut parts.headers, forwarded, self.config.trust_forwarded);
        let host_value = HeaderValue::from_str(raw_host).map_err(|e| ProxyError::Internal(e.to_string()))?;
        parts.headers.insert(header::HOST, host_value);
        let id_value = HeaderValue::from_str(request_id).map_err(|e| ProxyError::Internal(e.to_string()))?;
        parts.headers.insert(&X_REQUEST_ID, id_value);
        // The workload always speaks HTTP/1.1 in origin-form, whatever the user spoke.
        parts.version = Version::HTTP_11;
        parts.uri = origin_form(&parts.uri);

        if let (Some(protocol), Some(client_upgrade)) = (upgrade, client_upgrade) {
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol);
            let request = Request::from_parts(parts, body);
            return upgrade::forward(self, &admitted, request, client_upgrade, request_id, &cookie_host)
                .await;
        }

        let request = Request::from_parts(parts, body);
        let response = self
            .pool
            .send(route, &admitted.session_key, request_id, request)
            .await
            .map_err(|error| send_error(route, error))?;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ProxyError::Workload {
                agent_id: route.agent_id.clone(),
                service: route.service.clone(),
                message: "answered 101 Switching Protocols to a request that asked for no upgrade".into(),
            });
        }
        Ok(relay_response(response, &cookie_host, &self.reserved_cookies(), request_id))
    }

    /// The user's credential: a bearer token, else the configured session cookie.
    fn credential(&self, headers: &http::HeaderMap) -> Credential {
        if let Some(token) = headers::bearer_token(headers) {
            return Credential::Bearer(token);
        }
        match self.session_cookie().and_then(|name| headers::cookie(headers, name).map(|value| (name, value)))
        {
            Some((name, value)) => Credential::Cookie { name: name.to_owned(), value },
            None => Credential::None,
        }
    }
}

/// The host the request names: the URI authority (h2 `:authority`, or an HTTP/1.1 absolute-form
/// target, which RFC 9112 §3.2.2 says wins) or else the `Host` header.
///
/// A request whose host is ambiguous is refused rather than routed by one reading of it,
/// since a proxy in front may have routed or filtered it by another: more than one `Host`
/// line (RFC 9112 §3.2: 400), an HTTP/2 `host` header naming another host than
/// `:authority` (RFC 9113 §8.3.1: malformed), or a `Host` that is not visible ASCII.
fn raw_host(request: &Request<Incoming>) -> Result<String, headers::HostError> {
    let mut host_lines = request.headers().get_all(header::HOST).iter();
    let host_header = host_lines.next();
    if host_lines.next().is_some() {
        return Err(headers::HostError::Ambiguous("more than one Host header".into()));
    }
    let host_header = match host_header {
        Some(value) => Some(value.to_str().map_err(|_| {
            headers::HostError::Invalid(String::from_utf8_lossy(value.as_bytes()).into_owned())
        })?),
        None => None,
    };
    match (request.uri().authority(), host_header) {
        (Some(authority), Some(host)) if request.version() == Version::HTTP_2 => {
            let same = matches!(
                (headers::parse_host(authority.as_str()), headers::parse_host(host)),
                (Ok(a), Ok(b)) if a == b
            );
            if !same {
                return Err(headers::HostError::Ambiguous(format!(
                    ":authority {:?} and host {host:?} differ",
                    authority.as_str()
                )));
            }
            Ok(authority.as_str().to_owned())
        }
        (Some(authority), _) => Ok(authority.as_str().to_owned()),
        (None, Some(host)) if !host.trim().is_empty() => Ok(host.to_owned()),
        (None, _) => Err(headers::HostError::Missing),
    }
}

fn origin_form(uri: &Uri) -> Uri {
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    path_and_query.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

/// Maps a failed send to the user-facing error: a failed tunnel open keeps its precise
/// status (504/502/503); anything after that is the workload's fault (502).
fn send_error(route: &Target, error: SendError) -> ProxyError {
    match error {
        SendError::Open(error) => {
            ProxyError::Open { agent_id: route.agent_id.clone(), service: route.service.clone(), error }
        }
        SendError::Workload(error) => ProxyError::Workload {
            agent_id: route.agent_id.clone(),
            service: route.service.clone(),
            message: error_chain(&error),
        },
    }
}

/// `outer: inner: innermost`, since hyper's top-level messages alone are vague.
pub(super) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        text.push_str(": ");
        text.push_str(&error.to_string());
        source = error.source();
    }
    text
}

/// The workload's response with hop-by-hop headers removed, cookies it may not set
/// removed (see [`headers::strip_planted_cookies`]; `host` is the workload's host name),
/// and its body streamed as is.
pub(super) fn relay_response(
    response: Response<Incoming>,
    host: &str,
    reserved_cookies: &[&str],
    request_id: &str,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let removed = headers::strip_planted_cookies(&mut parts.headers, host, reserved_cookies);
    if removed > 0 {
        tracing::info!(%request_id, host, removed, "removed Set-Cookie headers naming a parent domain or the session cookie");
    }
    Response::from_parts(parts, body.boxed_unsync())
}

pub(super) fn empty_body() -> ResponseBody {
    Empty::new().map_err(|never: Infallible| match never {}).boxed_unsync()
}
