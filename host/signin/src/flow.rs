//! The sign-in steps, as answers the ingress turns into HTTP responses.
//!
//! 1. A browser without a session asks a workload host for a page that needs one: it is
//!    sent to `<url>/_burrow/sign-in/start?r=<sealed return>` ([`SignIn::sign_in_redirect`]).
//! 2. `start` on the sign-in host: a live root session skips the provider; otherwise the
//!    login state (PKCE verifier, nonce, CSRF state) goes into a short-lived cookie and
//!    the browser to the provider ([`SignIn::start`]).
//! 3. `callback` on the sign-in host: the state must match the cookie's; the code is
//!    exchanged and the ID token verified; a root session cookie is set ([`SignIn::callback`]).
//! 4. The browser goes on to the workload's host with a ticket for that host only,
//!    redeemed once into that host's own session cookie ([`SignIn::redeem`]), then to
//!    the page it asked for.
//! 5. `logout` on any host ends the sign-in everywhere: its session id is remembered as
//!    ended until the session would have expired ([`SignIn::logout`]).

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

use burrow_host_time::now_ms;

use crate::config::SignInConfig;
use crate::oidc::RelyingParty;
use crate::seal::{Purpose, Sealer};
use crate::session::{Identity, LoginState, ReturnTo, RootSession, Ticket, WorkloadSession};
use burrow_host_time::{Expiring, NotInserted};

/// The host's sign-in paths (on the sign-in host, except [`REDEEM_PATH`] and
/// [`LOGOUT_PATH`], which every workload host serves too).
pub const START_PATH: &str = "/_burrow/sign-in/start";
/// Where a workload host turns a ticket into its own session cookie.
pub const REDEEM_PATH: &str = "/_burrow/sign-in/session";
/// Ends the sign-in (on any host).
pub const LOGOUT_PATH: &str = "/_burrow/sign-in/logout";
/// The cookie holding a sign-in in progress (sign-in host only).
const STATE_COOKIE: &str = "burrow_sign_in_state";
/// How long a sign-in may take at the provider.
const LOGIN_WINDOW_MS: u64 = 10 * 60 * 1000;
/// How long a ticket is good for: one redirect.
const TICKET_MS: u64 = 60 * 1000;
/// Tickets redeemed and sign-ins ended that one replica remembers at once.
const MEMORY: usize = 100_000;

/// A boxed future of a shared-marks call.
pub type MarkFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'a>>;

/// Where replicas share what one of them learned of a sign-in (a ticket redeemed, a
/// sign-in ended), so a logout on one replica ends the session on all (Redis in a
/// cluster). Without it, each replica knows only its own.
pub trait SharedMarks: Send + Sync {
    /// Sets `key` of `namespace` for `ttl` unless set: true when this call set it.
    fn mark_once<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        ttl: std::time::Duration,
    ) -> MarkFuture<'a, bool>;
    /// Whether `key` of `namespace` is set.
    fn marked<'a>(&'a self, namespace: &'a str, key: &'a str) -> MarkFuture<'a, bool>;
}

const TICKETS: &str = "sign-in-ticket";
const ENDED: &str = "sign-in-ended";
/// A session found live in the shared marks is trusted this long before it is asked
/// again: a logout on another replica takes effect here within it.
const LIVE_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 303 to `location`, setting `cookies` (full `Set-Cookie` values).
    Redirect { location: String, cookies: Vec<String> },
    /// A page with this status and message (and `cookies` to set).
    Page { status: u16, message: String, cookies: Vec<String> },
}

/// The sign-in of one host process.
pub struct SignIn {
    config: Arc<SignInConfig>,
    sealer: Sealer,
    party: RelyingParty,
    /// The sign-in host's name and port as browsers send it (`Host`), lowercase.
    sign_in_host: String,
    scheme: &'static str,
    redeemed: Expiring<String>,
    ended: Expiring<String>,
    shared: Option<Arc<dyn SharedMarks>>,
    /// Session ids the shared marks showed live, and when (bounded by `MEMORY`).
    live: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    rng: SystemRandom,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn").field("issuer", &self.config.issuer).field("url", &self.config.url).finish()
    }
}

/// The first value of cookie `name` among `cookies` (values of `Cookie` headers) that
/// `accept` takes; several cookies of one name may arrive (one planted for a parent
/// domain, say), so each is tried.
fn cookie_values<'c>(cookies: &[&'c str], name: &str) -> Vec<&'c str> {
    cookies
        .iter()
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .collect()
}

/// `host[:port]` without the port, lowercase (a name, as workloads have; an IPv6
/// literal is kept whole).
fn host_name(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    match lower.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name.to_owned()
        }
        _ => lower,
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

fn page(status: u16, message: &str) -> Answer {
    Answer::Page { status, message: message.to_owned(), cookies: Vec::new() }
}

impl SignIn {
    /// The sign-in for `config` (validated).
    pub fn new(config: SignInConfig) -> Result<Self, String> {
        config.validate()?;
        let sealer = Sealer::new(&config.cookie_secrets()?)?;
        let url = url::Url::parse(&config.url).map_err(|e| format!("sign_in.url: {e}"))?;
        let sign_in_host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        }
        .to_ascii_lowercase();
        let scheme = if config.secure_cookies() { "https" } else { "http" };
        let config = Arc::new(config);
        Ok(Self {
            party: RelyingParty::new(config.clone())?,
            config,
            sealer,
            sign_in_host,
            scheme,
            redeemed: Expiring::new(MEMORY),
            ended: Expiring::new(MEMORY),
            shared: None,
            live: Default::default(),
            rng: SystemRandom::new(),
        })
    }

    /// The cookie name a sign-in lives in. Under https it carries the `__Host-` prefix,
    /// which browsers only accept host-only, `Secure` and for `/`: a sibling cannot set
    /// it through the parent domain at all.
    pub fn cookie_name(&self) -> String {
        if self.config.secure_cookies() {
            format!("__Host-{}", self.config.cookie_name)
        } else {
            self.config.cookie_name.clone()
        }
    }

    /// Shares redeemed tickets and ended sign-ins with the other replicas through `shared`.
    pub fn with_shared(mut self, shared: Option<Arc<dyn SharedMarks>>) -> Self {
        self.shared = shared;
        self
    }

    /// Whether the sign-in `sid` (ending at `expires_at`) was ended, here or on another
    /// replica. The shared marks unreachable: what this replica knows (a logout elsewhere
    /// then takes effect once they answer again; logged).
    async fn has_ended(&self, sid: &str, expires_at: u64) -> bool {
        if self.ended.contains(&sid.to_owned()) {
            return true;
        }
        let Some(shared) = &self.shared else { return false };
        {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            if live.get(sid).is_some_and(|at| at.elapsed() < LIVE_RECHECK) {
                return false;
            }
        }
        match shared.marked(ENDED, sid).await {
            Ok(true) => {
                let _ = self.ended.insert(sid.to_owned(), expires_at);
                true
            }
            Ok(false) => {
                let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
                if live.len() >= MEMORY {
                    live.retain(|_, at| at.elapsed() < LIVE_RECHECK);
                    if live.len() >= MEMORY {
                        live.clear();
                    }
                }
                live.insert(sid.to_owned(), std::time::Instant::now());
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "sign-in: cannot reach the shared marks; logouts on other replicas are not seen");
                false
            }
        }
    }

    /// Every cookie the sign-in sets (workloads may neither read nor set them).
    pub fn cookie_names(&self) -> Vec<String> {
        vec![self.cookie_name(), STATE_COOKIE.to_owned()]
    }

    /// Whether requests for `host` (as the browser sent `Host`) are for the sign-in host.
    pub fn is_sign_in_host(&self, host: &str) -> bool {
        host.eq_ignore_ascii_case(&self.sign_in_host)
    }

    fn cookie(&self, name: &str, value: &str, path: &str, max_age_ms: u64) -> String {
        let secure = if self.config.secure_cookies() { "; Secure" } else { "" };
        format!("{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite=Lax{secure}", max_age_ms / 1000)
    }

    fn clear_cookie(&self, name: &str, path: &str) -> String {
        let secure = if self.config.secure_cookies() { "; Secure" } else { "" };
        format!("{name}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Lax{secure}")
    }

    fn random(&self) -> String {
        let mut bytes = [0u8; 16];
        self.rng.fill(&mut bytes).expect("the system RNG works");
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Who is signed in on workload host `host` (`Host` as sent), from its session
    /// cookie among `cookies` (the `Cookie` header values). A cookie sealed for another
    /// host, forged, expired or of an ended sign-in counts as none.
    pub async fn identity(&self, host: &str, cookies: &[&str]) -> Option<Identity> {
        let name = self.cookie_name();
        let host = host_name(host);
        let sessions: Vec<RootSession> = cookie_values(cookies, &name)
            .into_iter()
            .filter_map(|value| self.sealer.open::<WorkloadSession>(Purpose::WorkloadSession, value).ok())
            .filter(|session| session.host == host)
            .map(|session| session.session)
            .collect();
        for session in sessions {
            if !self.has_ended(&session.sid, session.expires_at).await {
                return Some(session.identity);
            }
        }
        None
    }

    /// Where to send a browser that must sign in to see `path` on `host`.
    pub fn sign_in_redirect(&self, host: &str, path: &str) -> Answer {
        let back = ReturnTo { host: host.to_owned(), path: path.to_owned() };
        match self.sealer.seal(Purpose::Return, &back, now_ms() + LOGIN_WINDOW_MS) {
            Ok(sealed) => Answer::Redirect {
                location: format!("{}{START_PATH}?r={sealed}", self.config.url.trim_end_matches('/')),
                cookies: Vec::new(),
            },
            Err(_) => page(414, "the address is too long to sign in and come back to"),
        }
    }

    /// `start`, on the sign-in host, with the request's query and cookies.
    pub async fn start(&self, query: &str, cookies: &[&str]) -> Answer {
        let Some(back) =
            query_param(query, "r").and_then(|r| self.sealer.open::<ReturnTo>(Purpose::Return, &r).ok())
        else {
            return page(400, "this sign-in link is invalid or has expired; open the page again");
        };
        // Already signed in here: straight on to the workload.
        let roots: Vec<RootSession> = cookie_values(cookies, &self.cookie_name())
            .into_iter()
            .filter_map(|v| self.sealer.open::<RootSession>(Purpose::RootSession, v).ok())
            .collect();
        for root in roots {
            if !self.has_ended(&root.sid, root.expires_at).await {
                return self.ticket_redirect(root, &back, Vec::new());
            }
        }
        let authorization = match self.party.authorize().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "sign-in could not start");
                return page(503, "the sign-in provider cannot be reached; try again shortly");
            }
        };
        let state = LoginState {
            csrf: authorization.csrf,
            pkce_verifier: authorization.pkce_verifier,
            nonce: authorization.nonce,
            return_to: back,
        };
        match self.sealer.seal(Purpose::LoginState, &state, now_ms() + LOGIN_WINDOW_MS) {
            Ok(sealed) => Answer::Redirect {
                location: authorization.url,
                cookies: vec![self.cookie(STATE_COOKIE, &sealed, "/_burrow/sign-in/", LOGIN_WINDOW_MS)],
            },
            Err(_) => page(414, "the address is too long to sign in and come back to"),
        }
    }

    /// `callback`, on the sign-in host: the provider's answer.
    pub async fn callback(&self, query: &str, cookies: &[&str]) -> Answer {
        let clear_state = self.clear_cookie(STATE_COOKIE, "/_burrow/sign-in/");
        let Some(state) = cookie_values(cookies, STATE_COOKIE)
            .into_iter()
            .find_map(|v| self.sealer.open::<LoginState>(Purpose::LoginState, v).ok())
        else {
            return Answer::Page {
                status: 400,
                message:
                    "no sign-in is in progress in this browser (or it took too long); open the page again"
                        .into(),
                cookies: vec![clear_state],
            };
        };
        let returned = query_param(query, "state").unwrap_or_default();
        // The state is a secret until used: compared in constant time.
        if !bool::from(returned.as_bytes().ct_eq(state.csrf.as_bytes())) {
            return Answer::Page {
                status: 400,
                message: "the sign-in answer does not match this browser's sign-in".into(),
                cookies: vec![clear_state],
            };
        }
        if let Some(error) = query_param(query, "error") {
            tracing::info!(%error, description = query_param(query, "error_description").unwrap_or_default(), "the provider refused the sign-in");
            return Answer::Page {
                status: 403,
                message: format!("the sign-in provider refused: {error}"),
                cookies: vec![clear_state],
            };
        }
        let Some(code) = query_param(query, "code") else {
            return Answer::Page {
                status: 400,
                message: "the sign-in answer carries no code".into(),
                cookies: vec![clear_state],
            };
        };
        let identity = match self.party.finish(&code, &state.pkce_verifier, &state.nonce).await {
            Ok(identity) => identity,
            Err(e) => {
                tracing::warn!(error = %e, "sign-in failed");
                return Answer::Page {
                    status: 502,
                    message: "the sign-in could not be completed".into(),
                    cookies: vec![clear_state],
                };
            }
        };
        tracing::info!(user = %identity.username, subject = %identity.subject, "signed in");
        let root = RootSession {
            sid: self.random(),
            identity,
            expires_at: now_ms() + self.config.session_lifetime.as_millis() as u64,
        };
        let lifetime = self.config.session_lifetime.as_millis() as u64;
        let mut cookies = vec![clear_state];
        match self.sealer.seal(Purpose::RootSession, &root, root.expires_at) {
            Ok(sealed) => cookies.push(self.cookie(&self.cookie_name(), &sealed, "/", lifetime)),
            Err(e) => {
                tracing::warn!(error = %e, "sign-in session does not fit a cookie");
                return Answer::Page {
                    status: 500,
                    message: "the sign-in is too large to keep".into(),
                    cookies,
                };
            }
        }
        self.ticket_redirect(root, &state.return_to, cookies)
    }

    fn ticket_redirect(&self, root: RootSession, back: &ReturnTo, cookies: Vec<String>) -> Answer {
        let ticket = Ticket {
            host: host_name(&back.host),
            nonce: self.random(),
            path: back.path.clone(),
            session: root,
        };
        match self.sealer.seal(Purpose::Ticket, &ticket, now_ms() + TICKET_MS) {
            Ok(sealed) => Answer::Redirect {
                location: format!("{}://{}{REDEEM_PATH}?t={sealed}", self.scheme, back.host),
                cookies,
            },
            Err(_) => {
                Answer::Page { status: 500, message: "the sign-in is too large to carry".into(), cookies }
            }
        }
    }

    /// `REDEEM_PATH` on workload host `host` (`Host` as sent): the ticket becomes this
    /// host's session cookie, once.
    pub async fn redeem(&self, host: &str, query: &str) -> Answer {
        let Some(ticket) =
            query_param(query, "t").and_then(|t| self.sealer.open::<Ticket>(Purpose::Ticket, &t).ok())
        else {
            return page(400, "this sign-in link is invalid or has expired; open the page again");
        };
        if ticket.host != host_name(host) {
            return page(400, "this sign-in link is for another address");
        }
        if self.has_ended(&ticket.session.sid, ticket.session.expires_at).await {
            return page(400, "this sign-in has ended; open the page again");
        }
        let used = page(400, "this sign-in link was already used; open the page again");
        if self.redeemed.insert(ticket.nonce.clone(), now_ms() + TICKET_MS + 1000).is_err() {
            return used;
        }
        if let Some(shared) = &self.shared {
            match shared
                .mark_once(TICKETS, &ticket.nonce, std::time::Duration::from_millis(TICKET_MS + 1000))
                .await
            {
                Ok(true) => {}
                Ok(false) => return used,
                // A replay would need the link itself, within its minute, on another
                // replica, while the marks are down: accepted on this replica's memory.
                Err(e) => {
                    tracing::warn!(error = %e, "sign-in: cannot reach the shared marks to redeem a ticket once")
                }
            }
        }
        let remaining = ticket.session.expires_at.saturating_sub(now_ms());
        let session = WorkloadSession { host: ticket.host, session: ticket.session };
        // Only a path on this host: browsers read `//x` and `/\x` as another site.
        let path = if ticket.path.starts_with('/')
            && !ticket.path.starts_with("//")
            && !ticket.path.starts_with("/\\")
        {
            ticket.path
        } else {
            "/".into()
        };
        match self.sealer.seal(Purpose::WorkloadSession, &session, session.session.expires_at) {
            Ok(sealed) => Answer::Redirect {
                location: path,
                cookies: vec![self.cookie(&self.cookie_name(), &sealed, "/", remaining)],
            },
            Err(_) => page(500, "the sign-in is too large to keep"),
        }
    }

    /// `LOGOUT_PATH` on any host: ends the sign-in the request's cookie belongs to
    /// (every workload session made from it) and clears this host's cookie.
    pub async fn logout(&self, host: &str, cookies: &[&str]) -> Answer {
        let name = self.cookie_name();
        let host_only = host_name(host);
        let sessions = cookie_values(cookies, &name).into_iter().filter_map(|value| {
            self.sealer
                .open::<WorkloadSession>(Purpose::WorkloadSession, value)
                .ok()
                .filter(|s| s.host == host_only)
                .map(|s| s.session)
                .or_else(|| self.sealer.open::<RootSession>(Purpose::RootSession, value).ok())
        });
        let sessions: Vec<RootSession> = sessions.collect();
        for session in sessions {
            if let Err(NotInserted::Full) = self.ended.insert(session.sid.clone(), session.expires_at) {
                tracing::warn!("sign-in logout memory is full; the session ends when its cookie expires");
            }
            if let Some(shared) = &self.shared {
                let left = std::time::Duration::from_millis(session.expires_at.saturating_sub(now_ms()));
                if let Err(e) = shared.mark_once(ENDED, &session.sid, left).await {
                    tracing::warn!(error = %e, "sign-in: cannot tell the other replicas of a logout");
                }
            }
            tracing::info!(user = %session.identity.username, "signed out");
        }
        Answer::Page {
            status: 200,
            message: "You are signed out.".into(),
            cookies: vec![self.clear_cookie(&name, "/")],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign_in() -> SignIn {
        // One file per call: tests run in parallel, and rewriting a file another test is
        // reading would show it a truncated secret.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let secret = std::env::temp_dir().join(format!("burrow-signin-flow-{}-{n}", std::process::id()));
        std::fs::write(&secret, [9u8; 32]).unwrap();
        let config: SignInConfig = toml::from_str(&format!(
            "issuer = \"http://127.0.0.1:9\"\nclient_id = \"burrow\"\nurl = \"http://burrow.localhost:8080\"\n\
             cookie_secret_files = [{:?}]\n",
            secret.display().to_string()
        ))
        .unwrap();
        SignIn::new(config).unwrap()
    }

    fn alice() -> RootSession {
        RootSession {
            sid: "sid-1".into(),
            identity: Identity {
                issuer: "http://127.0.0.1:9".into(),
                subject: "u-alice".into(),
                username: "alice".into(),
                name: None,
                email: None,
                groups: vec!["dev".into()],
            },
            expires_at: now_ms() + 3_600_000,
        }
    }

    /// The ticket a redirect carries, and the cookie its redemption sets.
    fn ticket_for(s: &SignIn, host: &str) -> String {
        let back = ReturnTo { host: host.into(), path: "/page?x=1".into() };
        let Answer::Redirect { location, .. } = s.ticket_redirect(alice(), &back, Vec::new()) else {
            panic!("a redirect")
        };
        assert!(location.starts_with(&format!("http://{host}{REDEEM_PATH}?t=")), "{location}");
        location.split_once('?').unwrap().1.to_owned()
    }

    fn session_cookie(answer: &Answer) -> String {
        let Answer::Redirect { cookies, .. } = answer else { panic!("a redirect: {answer:?}") };
        let cookie = &cookies[0];
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && !cookie.contains("Domain"));
        cookie.split(';').next().unwrap().to_owned()
    }

    #[tokio::test]
    async fn sign_in_a_ticket_opens_one_session_on_its_own_host_once() {
        let s = sign_in();
        let query = ticket_for(&s, "web-a1.localhost:8080");
        let answer = s.redeem("web-a1.localhost:8080", &query).await;
        let Answer::Redirect { location, .. } = &answer else { panic!("{answer:?}") };
        assert_eq!(location, "/page?x=1");
        let cookie = session_cookie(&answer);
        let identity = s.identity("web-a1.localhost:8080", &[cookie.as_str()]).await.unwrap();
        assert_eq!(identity.username, "alice");
        // Once only, and on its own host only.
        assert!(matches!(s.redeem("web-a1.localhost:8080", &query).await, Answer::Page { status: 400, .. }));
        let other = ticket_for(&s, "web-a1.localhost:8080");
        assert!(matches!(s.redeem("web-a2.localhost:8080", &other).await, Answer::Page { status: 400, .. }));
        // The session cookie of one workload is nobody on another.
        assert!(s.identity("web-a2.localhost:8080", &[cookie.as_str()]).await.is_none());
    }

    #[tokio::test]
    async fn sign_in_logout_ends_every_session_of_the_sign_in() {
        let s = sign_in();
        let a1 = session_cookie(&s.redeem("web-a1.localhost", &ticket_for(&s, "web-a1.localhost")).await);
        let a2 = session_cookie(&s.redeem("web-a2.localhost", &ticket_for(&s, "web-a2.localhost")).await);
        assert!(s.identity("web-a2.localhost", &[a2.as_str()]).await.is_some());
        let Answer::Page { cookies, .. } = s.logout("web-a1.localhost", &[a1.as_str()]).await else {
            panic!()
        };
        assert!(cookies[0].contains("Max-Age=0"));
        assert!(s.identity("web-a1.localhost", &[a1.as_str()]).await.is_none());
        assert!(
            s.identity("web-a2.localhost", &[a2.as_str()]).await.is_none(),
            "the same sign-in on another workload"
        );
        // A ticket of the ended sign-in no longer opens a session either.
        assert!(matches!(
            s.redeem("web-a2.localhost", &ticket_for(&s, "web-a2.localhost")).await,
            Answer::Page { status: 400, .. }
        ));
    }

    #[test]
    fn sign_in_redirects_carry_a_sealed_return_address() {
        let s = sign_in();
        let Answer::Redirect { location, cookies } = s.sign_in_redirect("web-a1.localhost:8080", "/a?b=c")
        else {
            panic!()
        };
        assert!(cookies.is_empty());
        assert!(
            location.starts_with("http://burrow.localhost:8080/_burrow/sign-in/start?r=v1."),
            "{location}"
        );
        assert!(!location.contains("web-a1"), "the return address is sealed: {location}");
        assert!(s.is_sign_in_host("BURROW.localhost:8080") && !s.is_sign_in_host("burrow.localhost"));
        assert_eq!(s.cookie_names(), ["burrow_sign_in", "burrow_sign_in_state"]);
    }
}
