//! The relying party: the provider's discovery document and keys, the authorization
//! request (code flow with PKCE S256, a nonce and a CSRF state), and the code exchange
//! with the ID token verified against the provider's keys (`openidconnect`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType, CoreGenderClaim,
    CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreRevocableToken,
    CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, ProviderMetadataWithLogout, RedirectUrl, Scope,
    StandardErrorResponse, StandardTokenResponse, TokenResponse, UserInfoClaims,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::config::SignInConfig;
use crate::session::Identity;

/// Claims beyond the standard ones, kept by name: the groups claim is configurable.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExtraClaims {
    #[serde(flatten)]
    claims: HashMap<String, serde_json::Value>,
}
impl AdditionalClaims for ExtraClaims {}

impl ExtraClaims {
    fn strings(&self, name: &str) -> Option<Vec<String>> {
        match self.claims.get(name)? {
            serde_json::Value::Array(items) => {
                Some(items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            }
            serde_json::Value::String(one) => Some(vec![one.clone()]),
            _ => None,
        }
    }

    fn string(&self, name: &str) -> Option<String> {
        self.claims.get(name)?.as_str().map(str::to_owned)
    }
}

/// A token response whose ID token carries the additional claims `C`.
pub type TokenResponseWith<C> = StandardTokenResponse<
    IdTokenFields<
        C,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

/// `openidconnect`'s core client with ID tokens carrying the additional claims `C`, and
/// endpoints as discovery sets them (authorization set; token and userinfo maybe). The
/// tests' relying party uses it too.
pub type DiscoveredClient<C> = openidconnect::Client<
    C,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenResponseWith<C>,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

type Client = DiscoveredClient<ExtraClaims>;

/// Why a sign-in failed at the provider's end.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// Discovery or the provider's keys could not be fetched.
    #[error("the sign-in provider could not be reached: {0}")]
    Discovery(String),
    /// The code exchange failed.
    #[error("the sign-in provider refused the code: {0}")]
    Exchange(String),
    /// The ID token is missing or did not verify (signature, issuer, audience, expiry, nonce).
    #[error("the ID token did not verify: {0}")]
    IdToken(String),
    /// The claims are unusable (no user name, control characters, ...).
    #[error("{0}")]
    Claims(String),
}

/// An authorization request to send the browser to, and what to keep until it returns.
pub struct Authorization {
    /// The provider's authorization URL with every parameter.
    pub url: String,
    /// The `state` to expect back.
    pub csrf: String,
    /// The PKCE verifier for the exchange.
    pub pkce_verifier: String,
    /// The ID token's expected nonce.
    pub nonce: String,
}

/// How long discovered metadata and keys are trusted before they are fetched again (a
/// provider rotating keys is picked up within it; an unknown key triggers a refetch).
const METADATA_TTL: Duration = Duration::from_secs(600);

/// The relying party for one provider.
pub struct RelyingParty {
    config: Arc<SignInConfig>,
    client_secret: Option<String>,
    http: openidconnect::reqwest::Client,
    discovered: Mutex<Option<(Instant, Client)>>,
}

impl RelyingParty {
    /// A relying party for `config` (checked by [`SignInConfig::validate`]); nothing is
    /// fetched until the first sign-in.
    pub fn new(config: Arc<SignInConfig>) -> Result<Self, String> {
        let client_secret = config.client_secret()?;
        let http = openidconnect::reqwest::Client::builder()
            // A provider must not send the host's requests elsewhere (SSRF), and
            // openidconnect asks for no redirects on the token endpoint.
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("sign_in: HTTP client: {e}"))?;
        Ok(Self { config, client_secret, http, discovered: Mutex::new(None) })
    }

    async fn client(&self, refresh: bool) -> Result<Client, OidcError> {
        let mut discovered = self.discovered.lock().await;
        if let (false, Some((at, client))) = (refresh, discovered.as_ref()) {
            if at.elapsed() < METADATA_TTL {
                return Ok(client.clone());
            }
        }
        let issuer =
            IssuerUrl::new(self.config.issuer.clone()).map_err(|e| OidcError::Discovery(e.to_string()))?;
        let metadata = ProviderMetadataWithLogout::discover_async(issuer, &self.http)
            .await
            .map_err(|e| OidcError::Discovery(error_chain(&e)))?;
        let redirect =
            RedirectUrl::new(self.config.callback_url()).map_err(|e| OidcError::Discovery(e.to_string()))?;
        let client = Client::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            self.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect);
        *discovered = Some((Instant::now(), client.clone()));
        Ok(client)
    }

    /// A new authorization request.
    pub async fn authorize(&self) -> Result<Authorization, OidcError> {
        let client = self.client(false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in self.config.scopes.iter().filter(|s| s.as_str() != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, csrf, nonce) = request.set_pkce_challenge(challenge).url();
        Ok(Authorization {
            url: url.to_string(),
            csrf: csrf.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
        })
    }

    /// Exchanges `code` and verifies the ID token; returns who signed in.
    pub async fn finish(&self, code: &str, pkce_verifier: &str, nonce: &str) -> Result<Identity, OidcError> {
        let client = self.client(false).await?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Exchange(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Exchange(error_chain(&e)))?;
        let id_token =
            tokens.id_token().ok_or_else(|| OidcError::IdToken("the provider sent none".into()))?;
        let nonce = Nonce::new(nonce.to_owned());
        let claims = match id_token.claims(&client.id_token_verifier(), &nonce) {
            Ok(claims) => claims.clone(),
            // The provider may have rotated its keys since discovery: fetch them once more.
            Err(_) => {
                let client = self.client(true).await?;
                let verifier = client.id_token_verifier();
                let claims =
                    id_token.claims(&verifier, &nonce).map_err(|e| OidcError::IdToken(e.to_string()))?;
                claims.clone()
            }
        };
        let subject = claims.subject().as_str().to_owned();
        let username_claim = self.config.username_claim.as_str();
        let mut username = match username_claim {
            "preferred_username" => claims.preferred_username().map(|u| u.as_str().to_owned()),
            "email" => claims.email().map(|e| e.as_str().to_owned()),
            "sub" => Some(subject.clone()),
            other => claims.additional_claims().string(other),
        };
        let mut groups = claims.additional_claims().strings(&self.config.groups_claim);
        // Some providers release profile claims and groups only through userinfo.
        if username.is_none() || groups.is_none() {
            if let Ok(request) =
                client.user_info(tokens.access_token().clone(), Some(claims.subject().clone()))
            {
                if let Ok(info) = request.request_async(&self.http).await {
                    let info: UserInfoClaims<ExtraClaims, CoreGenderClaim> = info;
                    if username.is_none() {
                        username = match username_claim {
                            "preferred_username" => info.preferred_username().map(|u| u.as_str().to_owned()),
                            "email" => info.email().map(|e| e.as_str().to_owned()),
                            other => info.additional_claims().string(other),
                        };
                    }
                    if groups.is_none() {
                        groups = info.additional_claims().strings(&self.config.groups_claim);
                    }
                }
            }
        }
        Identity {
            issuer: claims.issuer().as_str().to_owned(),
            username: username.unwrap_or_else(|| subject.clone()),
            subject,
            name: claims.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned()),
            email: claims.email().map(|e| e.as_str().to_owned()),
            groups: groups.unwrap_or_default(),
        }
        .bounded()
        .map_err(OidcError::Claims)
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
