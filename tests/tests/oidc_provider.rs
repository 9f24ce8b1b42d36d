//! The OpenID Connect provider harness (`burrow_tests::oidc`) is a real provider: its
//! discovery document names every endpoint a relying party needs, and a full
//! authorization-code flow with PKCE, driven through its login page in headless
//! Chromium, yields an ID token that verifies against its JWKS with the account's
//! claims. The relying party here is the `openidconnect` crate, which the host's own
//! browser sign-in (issue 12) will use too.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use burrow_tests::browser::Browser;
use burrow_tests::oidc::{Account, Client, OidcProvider, ProviderConfig};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IdToken, IssuerUrl,
    LogoutRequest, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PostLogoutRedirectUrl,
    ProviderMetadataWithLogout, RedirectUrl, Scope, TokenResponse, UserInfoClaims,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const CLIENT_ID: &str = "burrow";
const CLIENT_SECRET: &str = "burrow-client-secret-0123456789";
/// How long to wait for the browser's request to reach the redirect target.
const PATIENCE: Duration = Duration::from_secs(30);

/// The non-standard `groups` claim the provider releases with scope `groups`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GroupsClaim {
    #[serde(default)]
    groups: Vec<String>,
}
impl AdditionalClaims for GroupsClaim {}

type GroupsIdToken =
    IdToken<GroupsClaim, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;
/// The host's client type, with ID tokens that carry `groups`.
type GroupsClient = burrow_host_signin::oidc::DiscoveredClient<GroupsClaim>;

fn alice() -> Account {
    Account::new("u-alice", "alice")
        .name("Alice Liddell")
        .email("alice@example.test")
        .groups(["admins", "dev"])
}

/// The relying party's HTTP client. Redirects are not followed, as openidconnect asks
/// (a provider could otherwise point the client anywhere; and the PKCE check below
/// reads the redirect itself).
fn http_client() -> openidconnect::reqwest::Client {
    openidconnect::reqwest::Client::builder()
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client")
}

/// The relying party's side of the redirects: a server on 127.0.0.1:0 that reports
/// each request's path and query to the test and shows a page naming the path.
struct RedirectTarget {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<(String, String)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RedirectTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RedirectTarget {
    async fn start() -> RedirectTarget {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let path = req.uri().path().to_owned();
                        let query = req.uri().query().unwrap_or_default().to_owned();
                        // Chromium asks for a favicon on its own; only pages count.
                        if path != "/favicon.ico" {
                            let _ = tx.send((path.clone(), query));
                        }
                        let page = format!("<!DOCTYPE html><title>rp</title><p id=\"landed\">{path}</p>");
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "text/html; charset=utf-8")
                                    .body(Full::new(Bytes::from(page)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RedirectTarget { addr, requests, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next request that reaches it: path and query parameters.
    async fn next(&mut self, what: &str) -> (String, Vec<(String, String)>) {
        let (path, query) = tokio::time::timeout(PATIENCE, self.requests.recv())
            .await
            .unwrap_or_else(|_| panic!("no request reached the redirect target within {PATIENCE:?} ({what})"))
            .expect("redirect target running");
        let params = openidconnect::url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        (path, params)
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// What the page shows, for failure messages.
const PAGE_TEXT: &str = "location.href + ' :: ' + (document.body ? document.body.innerText : '')";

/// Types `login` into the login page's field and presses its button, as a person would.
async fn sign_in_as(browser: &mut Browser, login: &str) {
    browser
        .wait_for(
            "document.readyState === 'complete' && document.querySelector('input[name=login]')",
            PAGE_TEXT,
        )
        .await;
    // The field keeps a rejected name; select it so typing replaces it.
    browser.eval("const f = document.querySelector('input[name=login]'); f.focus(); f.select(); true").await;
    browser.type_text(login).await;
    browser.eval("document.getElementById('submit').click(); true").await;
}

#[tokio::test]
async fn sign_in_provider_discovery_names_the_endpoints() {
    let provider = OidcProvider::start(
        &ProviderConfig::new()
            .client(
                Client::confidential(CLIENT_ID, CLIENT_SECRET).redirect_uri("http://127.0.0.1:9/callback"),
            )
            .account(alice()),
    );
    let issuer = provider.issuer();
    assert!(issuer.starts_with("http://127.0.0.1:"), "issuer {issuer}");
    let http = http_client();

    // The document as any relying party reads it.
    let response = http.get(provider.discovery_url()).send().await.expect("discovery document");
    assert_eq!(response.status().as_u16(), 200);
    let doc: Value = serde_json::from_str(&response.text().await.unwrap()).expect("discovery is JSON");
    assert_eq!(doc["issuer"], issuer.as_str());
    for key in
        ["authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri", "end_session_endpoint"]
    {
        let url = doc[key].as_str().unwrap_or_else(|| panic!("{key} in {doc:#}"));
        assert!(url.starts_with(&format!("{issuer}/")), "{key} = {url} is not on the issuer {issuer}");
    }
    let has = |key: &str, value: &str| doc[key].as_array().is_some_and(|a| a.iter().any(|v| v == value));
    assert!(has("code_challenge_methods_supported", "S256"), "{doc:#}");
    assert!(has("response_types_supported", "code"), "{doc:#}");
    for scope in ["openid", "profile", "email", "groups"] {
        assert!(has("scopes_supported", scope), "scope {scope}: {doc:#}");
    }
    for claim in ["sub", "preferred_username", "name", "email", "groups"] {
        assert!(has("claims_supported", claim), "claim {claim}: {doc:#}");
    }

    // And as openidconnect parses it (issuer check, JWKS fetched), with the logout
    // extension the host will need.
    let metadata = ProviderMetadataWithLogout::discover_async(IssuerUrl::new(issuer.clone()).unwrap(), &http)
        .await
        .expect("openidconnect discovers the provider");
    assert!(metadata.additional_metadata().end_session_endpoint.is_some());
    assert!(!metadata.jwks().keys().is_empty(), "the provider publishes a signing key");
}

#[tokio::test]
async fn sign_in_provider_code_flow_with_pkce_in_chromium() {
    let mut target = RedirectTarget::start().await;
    let redirect_uri = target.url("/callback");
    let signed_out_uri = target.url("/signed-out");
    let provider = OidcProvider::start(
        &ProviderConfig::new()
            .client(
                Client::confidential(CLIENT_ID, CLIENT_SECRET)
                    .redirect_uri(&redirect_uri)
                    .post_logout_redirect_uri(&signed_out_uri),
            )
            .account(alice())
            .account(Account::new("u-bob", "bob"))
            .id_token_ttl(Duration::from_secs(60)),
    );
    let issuer = provider.issuer();
    let http = http_client();
    let metadata = ProviderMetadataWithLogout::discover_async(IssuerUrl::new(issuer.clone()).unwrap(), &http)
        .await
        .expect("openidconnect discovers the provider");
    let end_session =
        metadata.additional_metadata().end_session_endpoint.clone().expect("end_session_endpoint");
    let client: GroupsClient = GroupsClient::from_provider_metadata(
        metadata,
        ClientId::new(CLIENT_ID.into()),
        Some(ClientSecret::new(CLIENT_SECRET.into())),
    )
    .set_redirect_uri(RedirectUrl::new(redirect_uri.clone()).unwrap());
    let scopes = ["profile", "email", "groups"].map(|s| Scope::new(s.into()));

    // PKCE is required of this confidential client too: without a challenge the provider
    // sends the browser back with an error, not to a login page.
    let (no_pkce_url, no_pkce_state, _) = client
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .add_scopes(scopes.clone())
        .url();
    let refused = http.get(no_pkce_url.as_str()).send().await.expect("authorization endpoint");
    let location = refused.headers()["location"].to_str().unwrap().to_owned();
    assert!(refused.status().is_redirection(), "{}: {location}", refused.status());
    let location = openidconnect::url::Url::parse(&location).unwrap();
    let refusal: Vec<(String, String)> = location.query_pairs().into_owned().collect();
    assert!(location.as_str().starts_with(&redirect_uri), "{location}");
    assert_eq!(param(&refusal, "error"), Some("invalid_request"), "{location}");
    assert_eq!(param(&refusal, "state"), Some(no_pkce_state.secret().as_str()));

    // The flow a browser sign-in runs.
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (auth_url, state, nonce) = client
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .add_scopes(scopes.clone())
        .set_pkce_challenge(challenge)
        .url();
    let mut browser = Browser::start(800, 600).await;
    browser.navigate(auth_url.as_str()).await;

    // An unknown user is refused on the page, and may try again.
    sign_in_as(&mut browser, "mallory").await;
    let error = browser.wait_for("document.getElementById('error')?.innerText", PAGE_TEXT).await;
    assert!(error.as_str().unwrap().contains("Unknown user"), "{error}");
    assert!(target.requests.is_empty(), "a refused sign-in must not reach the client");

    sign_in_as(&mut browser, "alice").await;
    let (path, params) = target.next("after signing in").await;
    assert_eq!(path, "/callback");
    assert_eq!(param(&params, "state"), Some(state.secret().as_str()), "{params:?}");
    assert_eq!(param(&params, "iss"), Some(issuer.as_str()), "RFC 9207 issuer identification: {params:?}");
    let code = param(&params, "code").unwrap_or_else(|| panic!("no code: {params:?}")).to_owned();
    browser.wait_for("document.getElementById('landed')?.innerText === '/callback'", PAGE_TEXT).await;

    // The code is exchanged with the client's secret (HTTP Basic) and the PKCE verifier.
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .expect("a token endpoint")
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap_or_else(|e| panic!("token exchange: {e:?}\nprovider log:\n{}", provider.log()));
    let id_token = tokens.id_token().expect("an ID token");
    let id_verifier = client.id_token_verifier();
    let claims =
        id_token.claims(&id_verifier, &nonce).expect("the ID token verifies against the provider's JWKS");
    assert_eq!(claims.issuer().as_str(), issuer);
    assert_eq!(claims.audiences().iter().map(|a| a.as_str()).collect::<Vec<_>>(), [CLIENT_ID]);
    assert_eq!(claims.subject().as_str(), "u-alice");
    assert_eq!(claims.nonce().map(|n| n.secret()), Some(nonce.secret()));
    assert_eq!(claims.preferred_username().map(|u| u.as_str()), Some("alice"));
    assert_eq!(claims.name().and_then(|n| n.get(None)).map(|n| n.as_str()), Some("Alice Liddell"));
    assert_eq!(claims.email().map(|e| e.as_str()), Some("alice@example.test"));
    assert_eq!(claims.additional_claims().groups, ["admins", "dev"]);
    // The configured lifetime (60 s), not the default.
    assert_eq!((claims.expiration() - claims.issue_time()).num_seconds(), 60);

    // The verification is real: a token whose signature was tampered with fails it.
    let jwt = id_token.to_string();
    let (head, signature) = jwt.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let forged: GroupsIdToken = format!("{head}.{flipped}{}", &signature[1..]).parse().expect("still a JWT");
    assert!(forged.claims(&id_verifier, &nonce).is_err(), "a forged signature verified");
    // So is the nonce check.
    assert!(id_token.claims(&id_verifier, &Nonce::new("another".into())).is_err());

    // The userinfo endpoint releases the same claims for the access token.
    let info: UserInfoClaims<GroupsClaim, CoreGenderClaim> = client
        .user_info(tokens.access_token().clone(), Some(claims.subject().clone()))
        .expect("a userinfo endpoint")
        .request_async(&http)
        .await
        .expect("userinfo");
    assert_eq!(info.preferred_username().map(|u| u.as_str()), Some("alice"));
    assert_eq!(info.additional_claims().groups, ["admins", "dev"]);

    // The provider keeps its own session: a second sign-in goes straight back to the
    // client, without the login page.
    let (challenge2, _) = PkceCodeChallenge::new_random_sha256();
    let (again_url, again_state, _) = client
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .add_scopes(scopes.clone())
        .set_pkce_challenge(challenge2)
        .url();
    browser.navigate(again_url.as_str()).await;
    let (path, params) = target.next("a second sign-in with the provider's session").await;
    assert_eq!(path, "/callback");
    assert_eq!(param(&params, "state"), Some(again_state.secret().as_str()));
    assert!(param(&params, "code").is_some(), "{params:?}");

    // RP-initiated logout: the end-session endpoint asks, the user confirms, the browser
    // lands on the post-logout redirect URI with the state.
    let logout_url = LogoutRequest::from(end_session)
        .set_id_token_hint(id_token)
        .set_client_id(ClientId::new(CLIENT_ID.into()))
        .set_post_logout_redirect_uri(PostLogoutRedirectUrl::new(signed_out_uri.clone()).unwrap())
        .set_state(CsrfToken::new("bye".into()))
        .http_get_url();
    browser.navigate(logout_url.as_str()).await;
    browser
        .wait_for("document.readyState === 'complete' && document.getElementById('logout')", PAGE_TEXT)
        .await;
    browser.eval("document.getElementById('logout').click(); true").await;
    let (path, params) = target.next("after signing out").await;
    assert_eq!(path, "/signed-out");
    assert_eq!(param(&params, "state"), Some("bye"));

    // Signed out at the provider: the next sign-in shows the login page again.
    let (challenge3, _) = PkceCodeChallenge::new_random_sha256();
    let (third_url, _, _) = client
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .add_scopes(scopes)
        .set_pkce_challenge(challenge3)
        .url();
    browser.navigate(third_url.as_str()).await;
    browser.wait_for("document.querySelector('input[name=login]')", PAGE_TEXT).await;
    assert!(target.requests.is_empty(), "signed out, yet the provider redirected to the client");
}
