//! The page and its assets, compiled into the binary so a host needs no files beside
//! it. Assets are served on every host name under [`ASSETS_PREFIX`] without admission:
//! they are public (the vendored xterm.js and our own small script and style), and
//! revalidated by ETag so an upgraded host is never stuck behind a cached copy.

use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use sha2::{Digest, Sha256};

/// Where the assets live on every host name.
pub const ASSETS_PREFIX: &str = "/_burrow/assets/";

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// (name, content type, body).
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("xterm.js", JS, include_bytes!("../assets/vendor/xterm.js")),
    ("xterm.css", CSS, include_bytes!("../assets/vendor/xterm.css")),
    ("addon-fit.js", JS, include_bytes!("../assets/vendor/addon-fit.js")),
    ("terminal.js", JS, include_bytes!("../assets/terminal.js")),
    ("terminal.css", CSS, include_bytes!("../assets/terminal.css")),
];

const PAGE: &[u8] = include_bytes!("../assets/terminal.html");

/// The page may run only our own scripts, connect only to its own origin (the session's
/// WebSocket), and never be framed: a terminal in a hidden frame could be driven by
/// another site's clicks. xterm.js sets inline styles on its elements.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                        connect-src 'self'; img-src 'self' data:; font-src 'self'; \
                        base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|(_, _, body)| format!("\"{}\"", &hex::encode(Sha256::digest(body))[..32]))
            .collect()
    })
}

/// The terminal page. Never cached: it is only served after admission.
pub fn page_response() -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(PAGE));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// The asset at `path` (which starts with [`ASSETS_PREFIX`]); `None` if there is none.
/// `304` when the client's `If-None-Match` names the current version.
pub fn asset_response(path: &str, request_headers: &HeaderMap) -> Option<Response<Bytes>> {
    let name = path.strip_prefix(ASSETS_PREFIX)?;
    let index = ASSETS.iter().position(|(asset, _, _)| *asset == name)?;
    let (_, content_type, body) = ASSETS[index];
    let etag = &etags()[index];
    let fresh = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    let mut response = if fresh {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let mut response = Response::new(Bytes::from_static(body));
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    };
    let headers = response.headers_mut();
    // Revalidate each time (a 304 costs one round trip) rather than risk an old script
    // talking to a newer host.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_served_and_revalidated() {
        let empty = HeaderMap::new();
        let js = asset_response("/_burrow/assets/xterm.js", &empty).unwrap();
        assert_eq!(js.status(), StatusCode::OK);
        assert_eq!(js.headers()[header::CONTENT_TYPE], JS);
        assert!(js.body().len() > 100_000, "the vendored xterm.js");
        let etag = js.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        let cached = asset_response("/_burrow/assets/xterm.js", &again).unwrap();
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        assert!(cached.body().is_empty());
        assert!(asset_response("/_burrow/assets/../Cargo.toml", &empty).is_none());
        assert!(asset_response("/_burrow/assets/", &empty).is_none());
    }

    #[test]
    fn the_page_loads_only_vendored_assets() {
        let page = page_response();
        let html = std::str::from_utf8(page.body()).unwrap();
        for (name, _, _) in ASSETS {
            assert!(html.contains(&format!("{ASSETS_PREFIX}{name}")), "the page uses {name}");
        }
        assert!(!html.contains("<script>"), "no inline scripts: the CSP forbids them");
        assert_eq!(page.headers()[header::X_FRAME_OPTIONS], "DENY");
    }
}
