//! Browser sign-in on the ingress: the sign-in host's pages, the ticket and logout
//! endpoints on every workload host, the signed-in principal for admission, and the
//! answers of `burrow_host_signin` as HTTP responses.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::headers::X_REQUEST_ID;
use super::proxy::ResponseBody;
use burrow_host_plugins::types::Principal;
use burrow_host_signin::{Answer, SignIn, CALLBACK_PATH, LOGOUT_PATH, REDEEM_PATH, START_PATH};

/// Answers the request if it is the sign-in's: any request to the sign-in host, and the
/// ticket and logout paths on workload hosts. `None`: a workload request.
pub(super) async fn route(sign_in: &SignIn, request: &Request<Incoming>, host: &str) -> Option<Answer> {
    let path = request.uri().path();
    let query = request.uri().query().unwrap_or("");
    let on_sign_in_host = sign_in.is_sign_in_host(host);
    if !on_sign_in_host && path != REDEEM_PATH && path != LOGOUT_PATH {
        return None;
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Some(Answer::Page {
            status: 405,
            message: "sign-in pages are read with GET".into(),
            cookies: vec![],
        });
    }
    let cookies = cookie_headers(request.headers());
    Some(match (on_sign_in_host, path) {
        (_, LOGOUT_PATH) => sign_in.logout(host, &cookies).await,
        (true, START_PATH) => sign_in.start(query, &cookies).await,
        (true, CALLBACK_PATH) => sign_in.callback(query, &cookies).await,
        (false, REDEEM_PATH) => sign_in.redeem(host, query).await,
        _ => Answer::Page { status: 404, message: "there is nothing here".into(), cookies: vec![] },
    })
}

fn cookie_headers(headers: &HeaderMap) -> Vec<&str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).collect()
}

/// The principal a browser signed in as on this host, if any.
pub(super) async fn principal(sign_in: &SignIn, headers: &HeaderMap, host: &str) -> Option<Principal> {
    let identity = sign_in.identity(host, &cookie_headers(headers)).await?;
    let mut labels = vec![
        ("authenticated-by".to_owned(), "oidc".to_owned()),
        ("oidc.issuer".to_owned(), identity.issuer),
        ("oidc.subject".to_owned(), identity.subject),
    ];
    if let Some(email) = identity.email {
        labels.push(("oidc.email".to_owned(), email));
    }
    Some(Principal { id: identity.username, groups: identity.groups, labels })
}

/// Whether a request is a browser loading a page (so a redirect to sign in helps it);
/// scripts and API clients get the plain 401.
pub(super) fn browser_navigation(request: &Request<Incoming>) -> bool {
    let get = request.method() == Method::GET || request.method() == Method::HEAD;
    let html = request
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with("text/html")));
    get && html
}

/// An answer as a response. Pages are plain HTML naming the request id; nothing here
/// is cached.
pub(super) fn respond(answer: Answer, request_id: &str) -> Response<ResponseBody> {
    let (status, location, message, cookies) = match answer {
        Answer::Redirect { location, cookies } => {
            (StatusCode::SEE_OTHER, Some(location), String::new(), cookies)
        }
        Answer::Page { status, message, cookies } => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            None,
            message,
            cookies,
        ),
    };
    let body = if location.is_some() {
        String::new()
    } else {
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Burrow sign-in</title></head>\
             <body><h1 id=\"status\">{}</h1><p id=\"message\">{}</p><p>request id: <code>{}</code></p>\
             <p><a id=\"logout\" href=\"{LOGOUT_PATH}\">Sign out</a></p></body></html>\n",
            status.as_u16(),
            escape(&message),
            escape(request_id)
        )
    };
    let mut response =
        Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(&X_REQUEST_ID, id);
    }
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
