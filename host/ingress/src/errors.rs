//! Error types of the ingress and the error pages (text or JSON) users see.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::headers::{HostError, X_REQUEST_ID};
use burrow_host_core::admission::Refusal;
use burrow_host_core::dial::OpenError;

/// The ingress could not start or stopped on a fatal error.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The `[ingress]` table is invalid.
    #[error(transparent)]
    Config(#[from] super::config::IngressConfigError),
    /// The TLS certificate or key could not be loaded.
    #[error("ingress.tls: {0}")]
    Tls(#[from] burrow_host_tls::TlsError),
    /// The listener's address could not be read.
    #[error("ingress listener: {0}")]
    Listener(#[source] std::io::Error),
}

/// Why a user request was not proxied; each maps to one status and a message naming the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// No usable host in the request (400).
    #[error("{0}")]
    BadHost(HostError),
    /// No workload plugin claims the host (404).
    #[error("no workload is served at {host}")]
    NoRoute { host: String },
    /// A plugin trapped, ran out of time or memory, or misbehaved (503, fail closed).
    #[error("the {stage} plugin failed: {message}")]
    Plugin { stage: &'static str, message: String },
    /// The workload was found ended (a finished CI job, an expired workspace) (410).
    #[error("workload {workload_id:?} ({kind}) has ended")]
    WorkloadEnded { kind: String, workload_id: String },
    /// The authorizer denied the request (401 or 403).
    #[error("access denied: {reason}")]
    Denied { status: StatusCode, reason: String },
    /// No tunnel could be opened to the workload (504, 502 or 503, see [`open_error_status`]).
    #[error("{}", describe_open_error(.agent_id, .service, .error))]
    Open { agent_id: String, service: String, error: OpenError },
    /// The tunnel opened but the workload's HTTP exchange failed (502).
    #[error("service {service:?} of agent {agent_id:?} did not answer: {message}")]
    Workload { agent_id: String, service: String, message: String },
    /// `CONNECT` (tunnelling, including HTTP/2 extended CONNECT) is not offered (501).
    #[error("CONNECT is not supported: send plain HTTP requests or an HTTP/1.1 Upgrade")]
    ConnectUnsupported,
    /// A request to one of the host's own endpoints (`/_burrow/...`) is malformed (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A browser page of another origin tried to open a terminal or port-forward
    /// WebSocket with the user's cookie (403).
    #[error("cross-origin request refused: origin {origin:?} may not open this WebSocket")]
    CrossOrigin { origin: String },
    /// The user's address has `ingress.max_requests_per_address` requests in progress (429).
    #[error("too many requests in progress from this address (at most {limit} at once)")]
    TooManyRequests { limit: usize },
    /// The port has `ingress.max_requests` requests in progress (503).
    #[error("the ingress is at its cap of {limit} requests in progress")]
    Overloaded { limit: usize },
    /// The forwarded request could not be built (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Refusal> for ProxyError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NoRoute { name } => ProxyError::NoRoute { host: name },
            Refusal::WorkloadEnded { kind, workload_id } => ProxyError::WorkloadEnded { kind, workload_id },
            Refusal::Unauthenticated { reason } => {
                ProxyError::Denied { status: StatusCode::UNAUTHORIZED, reason }
            }
            Refusal::Forbidden { reason } => ProxyError::Denied { status: StatusCode::FORBIDDEN, reason },
            Refusal::Plugin { stage, message } => ProxyError::Plugin { stage, message },
        }
    }
}

fn describe_open_error(agent_id: &str, service: &str, error: &OpenError) -> String {
    match error {
        OpenError::Refused { code, message } => format!(
            "agent {agent_id:?} refused to connect to service {service:?}: {message} ({})",
            refusal_code_name(*code)
        ),
        other => other.to_string(),
    }
}

/// `REFUSAL_CODE_UNKNOWN_SERVICE` becomes `unknown_service`, for humans and JSON clients.
fn refusal_code_name(code: burrow_proto::pb::RefusalCode) -> String {
    let name = code.as_str_name();
    name.strip_prefix("REFUSAL_CODE_").unwrap_or(name).to_ascii_lowercase()
}

/// The status a failed tunnel open maps to.
pub fn open_error_status(error: &OpenError) -> StatusCode {
    match error {
        OpenError::NoTunnel { .. } => StatusCode::GATEWAY_TIMEOUT,
        OpenError::Refused { .. } | OpenError::Broken(_) => StatusCode::BAD_GATEWAY,
        OpenError::ShuttingDown | OpenError::ClusterUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl ProxyError {
    /// The HTTP status sent to the user.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadHost(_) => StatusCode::BAD_REQUEST,
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::Plugin { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Denied { status, .. } => *status,
            Self::WorkloadEnded { .. } => StatusCode::GONE,
            Self::Open { error, .. } => open_error_status(error),
            Self::Workload { .. } => StatusCode::BAD_GATEWAY,
            Self::ConnectUnsupported => StatusCode::NOT_IMPLEMENTED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::CrossOrigin { .. } => StatusCode::FORBIDDEN,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable name of the cause (the JSON `error` field).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadHost(_) => "bad_host",
            Self::NoRoute { .. } => "no_route",
            Self::Plugin { .. } => "plugin_failed",
            Self::Denied { status, .. } if *status == StatusCode::UNAUTHORIZED => "unauthenticated",
            Self::Denied { .. } => "forbidden",
            Self::WorkloadEnded { .. } => "workload_ended",
            Self::Open { error: OpenError::NoTunnel { .. }, .. } => "no_tunnel",
            Self::Open { error: OpenError::Refused { .. }, .. } => "agent_refused",
            Self::Open { error: OpenError::Broken(_), .. } => "tunnel_broken",
            Self::Open { error: OpenError::ShuttingDown, .. } => "shutting_down",
            Self::Open { error: OpenError::ClusterUnavailable { .. }, .. } => "cluster_unavailable",
            Self::Workload { .. } => "workload_failed",
            Self::ConnectUnsupported => "connect_unsupported",
            Self::BadRequest(_) => "bad_request",
            Self::CrossOrigin { .. } => "cross_origin",
            Self::TooManyRequests { .. } => "too_many_requests",
            Self::Overloaded { .. } => "overloaded",
            Self::Internal(_) => "internal",
        }
    }

    /// What users are told: the cause in their terms (the names they asked for, a stable
    /// code), never the detail behind it (plugin names, digests and trap messages, the
    /// agent's own error text with its addresses, Redis errors, HTTP error chains), which
    /// the log keeps under the same request id.
    pub fn public_message(&self) -> String {
        match self {
            Self::Plugin { stage, .. } => {
                format!("a plugin failed at the {stage} step, so the request was refused; try again later")
            }
            Self::Open { agent_id, service, error } => match error {
                OpenError::NoTunnel { waited, .. } => {
                    format!("agent {agent_id:?} has no tunnel available after waiting {waited:?}: is it running and connected?")
                }
                OpenError::Refused { code, .. } => {
                    let why = match code {
                        burrow_proto::pb::RefusalCode::UnknownService => "is not offered by the agent",
                        burrow_proto::pb::RefusalCode::DialFailed => "could not be reached by the agent",
                        burrow_proto::pb::RefusalCode::NotAllowed => "is not allowed by the agent's policy",
                        burrow_proto::pb::RefusalCode::ShuttingDown => {
                            "is unavailable: the agent is shutting down"
                        }
                        burrow_proto::pb::RefusalCode::Limit => "is busy: the agent is at its limit",
                        _ => "was refused by the agent",
                    };
                    format!("service {service:?} of agent {agent_id:?} {why} ({})", refusal_code_name(*code))
                }
                OpenError::Broken(_) => format!("the tunnel to agent {agent_id:?} failed while connecting"),
                OpenError::ShuttingDown => "this host is shutting down".into(),
                OpenError::ClusterUnavailable { .. } => {
                    format!("agent {agent_id:?} is not connected to this replica and the others cannot be reached right now")
                }
            },
            Self::Workload { agent_id, service, .. } => {
                format!("service {service:?} of agent {agent_id:?} did not answer")
            }
            Self::TooManyRequests { .. } => {
                "too many requests from your address are in progress at once; retry when some have finished"
                    .into()
            }
            Self::Overloaded { .. } => {
                "this host is serving as many requests as it can right now; retry shortly".into()
            }
            Self::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }

    /// Renders the error page: JSON when the client accepts it, else `text/plain`. Always
    /// carries the request id, in the body and in `X-Request-Id`.
    pub fn to_response(&self, request_id: &str, json: bool) -> Response<Full<Bytes>> {
        let status = self.status();
        let message = self.public_message();
        let (content_type, body) = if json {
            let mut value = serde_json::json!({
                "error": self.code(),
                "status": status.as_u16(),
                "message": message,
                "request_id": request_id,
            });
            if let Self::Open { error: OpenError::Refused { code, .. }, .. } = self {
                value["refusal_code"] = refusal_code_name(*code).into();
            }
            ("application/json", format!("{value}\n"))
        } else {
            let reason = status.canonical_reason().unwrap_or("Error");
            let text = format!(
                "{} {reason}\n\n{message}\n\nerror: {}\nrequest id: {request_id}\n",
                status.as_u16(),
                self.code()
            );
            ("text/plain; charset=utf-8", text)
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert(&X_REQUEST_ID, id);
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"burrow\""));
        }
        // Overload and passing failures (a plugin, the cluster, a drain): tell clients when
        // to come back instead of letting them retry in a tight loop.
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// Whether the client prefers JSON error bodies: it accepts `application/json` (or a `+json`
/// type) with a quality at least as high as any `text/*` type it lists. Wildcards alone mean
/// text, which suits browsers and curl.
pub fn wants_json(headers: &HeaderMap) -> bool {
    let mut best_json = 0.0_f32;
    let mut best_text = 0.0_f32;
    let ranges = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    for range in ranges {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let quality = parts
            .filter_map(|param| param.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, q)| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if media == "application/json" || (media.starts_with("application/") && media.ends_with("+json")) {
            best_json = best_json.max(quality);
        } else if media.starts_with("text/") {
            best_text = best_text.max(quality);
        }
    }
    best_json > 0.0 && best_json >= best_text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use burrow_proto::pb::RefusalCode;
    use http_body_util::BodyExt;

    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, value.parse().unwrap());
        headers
    }

    fn open(error: OpenError) -> ProxyError {
        ProxyError::Open { agent_id: "demo".into(), service: "web".into(), error }
    }

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn open_errors_map_to_gateway_statuses() {
        let no_tunnel = OpenError::NoTunnel { agent_id: "demo".into(), waited: Duration::from_secs(20) };
        assert_eq!(open_error_status(&no_tunnel), StatusCode::GATEWAY_TIMEOUT);
        let refused = OpenError::Refused { code: RefusalCode::UnknownService, message: "no db".into() };
        assert_eq!(open_error_status(&refused), StatusCode::BAD_GATEWAY);
        assert_eq!(open_error_status(&OpenError::Broken("reset".into())), StatusCode::BAD_GATEWAY);
        assert_eq!(open_error_status(&OpenError::ShuttingDown), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(open(no_tunnel).status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(open(refused).code(), "agent_refused");
    }

    #[test]
    fn other_errors_map_to_their_statuses() {
        let cases = [
            (ProxyError::BadHost(HostError::Missing), 400),
            (ProxyError::NoRoute { host: "x".into() }, 404),
            (ProxyError::Plugin { stage: "router", message: "trap".into() }, 503),
            (ProxyError::Denied { status: StatusCode::UNAUTHORIZED, reason: "r".into() }, 401),
            (ProxyError::Denied { status: StatusCode::FORBIDDEN, reason: "r".into() }, 403),
            (ProxyError::Workload { agent_id: "a".into(), service: "s".into(), message: "m".into() }, 502),
            (ProxyError::ConnectUnsupported, 501),
            (ProxyError::BadRequest("x".into()), 400),
            (ProxyError::CrossOrigin { origin: "https://evil.example".into() }, 403),
            (ProxyError::TooManyRequests { limit: 2 }, 429),
            (ProxyError::Overloaded { limit: 2 }, 503),
            (ProxyError::Internal("x".into()), 500),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
        }
    }

    #[test]
    fn accept_negotiation() {
        assert!(wants_json(&accept("application/json")));
        assert!(wants_json(&accept("application/problem+json, text/plain;q=0.5")));
        assert!(wants_json(&accept("text/plain;q=0.1, application/json")));
        assert!(!wants_json(&accept("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")));
        assert!(!wants_json(&accept("*/*")));
        assert!(!wants_json(&accept("application/json;q=0")));
        assert!(!wants_json(&accept("text/plain, application/json;q=0.5")));
        assert!(!wants_json(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn json_error_body_names_cause_and_request_id() {
        let error = open(OpenError::Refused { code: RefusalCode::UnknownService, message: "no db".into() });
        let response = error.to_response("abc123", true);
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(response.headers()[&X_REQUEST_ID], "abc123");
        let value: serde_json::Value = serde_json::from_str(&body(response).await).unwrap();
        assert_eq!(value["error"], "agent_refused");
        assert_eq!(value["status"], 502);
        assert_eq!(value["request_id"], "abc123");
        assert_eq!(value["refusal_code"], "unknown_service");
        let message = value["message"].as_str().unwrap();
        assert!(
            message.contains("\"demo\"") && message.contains("\"web\"") && message.contains("not offered")
        );
        assert!(!message.contains("no db"), "the agent's own words stay in the log: {message}");
    }

    #[tokio::test]
    async fn text_error_body_names_cause_and_request_id() {
        let error = open(OpenError::NoTunnel { agent_id: "demo".into(), waited: Duration::from_secs(20) });
        let response = error.to_response("abc123", false);
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(response.headers()[&X_REQUEST_ID], "abc123");
        let text = body(response).await;
        assert!(text.starts_with("504 Gateway Timeout\n"), "{text}");
        assert!(text.contains("\"demo\"") && text.contains("20s"), "{text}");
        assert!(text.contains("request id: abc123"), "{text}");
    }

    #[tokio::test]
    async fn bad_input_error_pages_keep_internal_detail_out() {
        let cases = [
            ProxyError::Plugin {
                stage: "authorizer",
                message: "plugin authorizer-x (sha256 ab12) trapped: wasm `unreachable`".into(),
            },
            open(OpenError::Broken("h2 protocol error: connection reset by 10.0.0.7".into())),
            open(OpenError::ClusterUnavailable {
                agent_id: "demo".into(),
                reason: "Redis: Connection refused (os error 111)".into(),
            }),
            open(OpenError::Refused {
                code: RefusalCode::DialFailed,
                message: "connect 10.1.2.3:5432: refused".into(),
            }),
            ProxyError::Workload {
                agent_id: "demo".into(),
                service: "web".into(),
                message: "hyper::Error(IncompleteMessage)".into(),
            },
            ProxyError::Internal("http::Error(InvalidUri)".into()),
        ];
        for error in cases {
            for json in [false, true] {
                let text = body(error.to_response("rid-1", json)).await;
                for secret in [
                    "sha256",
                    "trapped",
                    "10.0.0.7",
                    "Redis",
                    "10.1.2.3",
                    "hyper",
                    "InvalidUri",
                    "unreachable",
                ] {
                    assert!(!text.contains(secret), "{secret:?} leaked in {text}");
                }
                assert!(text.contains("rid-1"), "{text}");
                assert!(text.contains(error.code()), "the stable code is shown: {text}");
            }
        }
    }

    #[test]
    fn unavailable_answers_say_when_to_retry() {
        let unavailable = ProxyError::Plugin { stage: "authorizer", message: "trap".into() };
        assert_eq!(unavailable.to_response("id", false).headers()[header::RETRY_AFTER], "5");
        let shutting_down = open(OpenError::ShuttingDown);
        assert_eq!(shutting_down.to_response("id", true).headers()[header::RETRY_AFTER], "5");
        let busy = ProxyError::TooManyRequests { limit: 1 };
        assert_eq!(busy.to_response("id", false).headers()[header::RETRY_AFTER], "5");
        assert_eq!(
            ProxyError::Overloaded { limit: 1 }.to_response("id", false).headers()[header::RETRY_AFTER],
            "5"
        );
        let gone = ProxyError::NoRoute { host: "x".into() };
        assert!(!gone.to_response("id", false).headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn unauthorized_asks_for_a_bearer_token() {
        let denied = ProxyError::Denied { status: StatusCode::UNAUTHORIZED, reason: "token required".into() };
        let response = denied.to_response("id", false);
        assert!(response.headers()[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer"));
        let forbidden = ProxyError::Denied { status: StatusCode::FORBIDDEN, reason: "no".into() };
        assert!(!forbidden.to_response("id", false).headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
