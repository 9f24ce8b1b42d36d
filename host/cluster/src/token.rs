//! Short-lived tokens replicas present to each other on the private API.
//!
//! `v1.<claims>.<mac>`: `claims` is base64url JSON `{"iss","aud","exp"}` (caller replica,
//! callee replica, expiry in Unix milliseconds) and `mac` is base64url HMAC-SHA256 of
//! `"burrow-replica-token.v1." + claims` under the cluster's shared secret. There is no
//! algorithm field to confuse (the weakness of JWT's `alg`), and verification is constant
//! time (`hmac`'s `verify_slice`).
//!
//! A token for the replica API is also *bound* ([`TokenKey::mint_bound`]): its claims add
//! `bnd`, a digest of the one request it is for (agent, service, request id, kind,
//! principal: see `forward::binding`), and `jti`, a random nonce. The serving replica
//! checks the digest against the request it got and remembers the nonce until the token
//! expires ([`ReplayGuard`]), so a captured token opens nothing else and opens its own
//! request once. The audience stops replay against another replica; the short lifetime
//! bounds how long a nonce must be remembered.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use burrow_host_time::{now_ms, Expiring, NotInserted};

const DOMAIN: &[u8] = b"burrow-replica-token.v1.";
/// Clock difference between replicas that is tolerated.
const SKEW: Duration = Duration::from_secs(5);

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not of the form `v1.<claims>.<mac>`.
    #[error("malformed replica token")]
    Malformed,
    /// The MAC does not match: wrong secret or tampered claims.
    #[error("replica token signature is invalid (do all replicas share one cluster secret?)")]
    BadSignature,
    /// Issued for another replica.
    #[error("replica token is for replica {0:?}, not this one")]
    WrongAudience(String),
    /// Past its expiry.
    #[error("replica token expired {0:?} ago (are the replicas' clocks in sync?)")]
    Expired(Duration),
    /// Claims a lifetime longer than any this cluster issues.
    #[error("replica token claims a lifetime beyond the cluster's limit")]
    TooLong,
    /// Not bound to a request where one must be (an old-style or a control token).
    #[error("replica token is not bound to a request")]
    Unbound,
    /// Bound to another request (another agent, service or request id).
    #[error("replica token is bound to another request")]
    WrongBinding,
    /// Its nonce was seen before: a replay.
    #[error("replica token was already used (replayed)")]
    Replayed,
    /// Too many live nonces to remember another: refused rather than forgotten.
    #[error("too many replica tokens in flight; try again")]
    Busy,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    exp: u64,
    /// Digest of the request the token is for (bound tokens only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bnd: Option<String>,
    /// Random nonce, remembered by the audience until `exp` (bound tokens only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
}

/// What a verified bound token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundClaims {
    /// The calling replica.
    pub issuer: String,
    /// Expiry, Unix milliseconds.
    pub exp: u64,
    /// The request digest it is bound to (compare with [`BoundClaims::check_binding`]).
    binding: String,
    /// The nonce to remember ([`ReplayGuard::admit`]).
    nonce: [u8; 16],
}

impl BoundClaims {
    /// Whether the token was minted for the request whose digest is `binding`.
    pub fn check_binding(&self, binding: &str) -> Result<(), TokenError> {
        use subtle::ConstantTimeEq;
        if self.binding.len() == binding.len()
            && bool::from(self.binding.as_bytes().ct_eq(binding.as_bytes()))
        {
            Ok(())
        } else {
            Err(TokenError::WrongBinding)
        }
    }
}

/// Signs and checks replica tokens with one shared secret.
#[derive(Clone)]
pub struct TokenKey {
    mac: Hmac<Sha256>,
    lifetime: Duration,
    /// Signed before the claims, so a token minted for one use (replica calls, the
    /// control API) never verifies for another even under the same secret.
    domain: &'static [u8],
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey").field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

impl TokenKey {
    /// A key from the shared secret; tokens it mints live `lifetime`.
    pub fn new(secret: &[u8], lifetime: Duration) -> Self {
        Self::with_domain(DOMAIN, secret, lifetime)
    }

    /// A key for tokens of another use (`domain` names it, e.g. `b"burrow-control-token.v1."`).
    pub fn with_domain(domain: &'static [u8], secret: &[u8], lifetime: Duration) -> Self {
        // HMAC accepts keys of any length; config validation already demands 32 bytes.
        let mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        Self { mac, lifetime, domain }
    }

    /// A token from `issuer` for `audience`, valid from now for the key's lifetime.
    pub fn mint(&self, issuer: &str, audience: &str) -> String {
        self.mint_at(issuer, audience, now_ms() + self.lifetime.as_millis() as u64)
    }

    /// A token expiring at `exp` (Unix ms): for tools and tests that need a token with a
    /// chosen expiry, e.g. an expired one.
    pub fn mint_at(&self, issuer: &str, audience: &str, exp: u64) -> String {
        self.sign(&Claims { iss: issuer.to_owned(), aud: audience.to_owned(), exp, bnd: None, jti: None })
    }

    /// A token from `issuer` for `audience`, good for the one request whose digest is
    /// `binding`, once.
    pub fn mint_bound(&self, issuer: &str, audience: &str, binding: &str) -> String {
        let nonce: [u8; 16] = rand::random();
        let claims = Claims {
            iss: issuer.to_owned(),
            aud: audience.to_owned(),
            exp: now_ms() + self.lifetime.as_millis() as u64,
            bnd: Some(binding.to_owned()),
            jti: Some(URL_SAFE_NO_PAD.encode(nonce)),
        };
        self.sign(&claims)
    }

    fn sign(&self, claims: &Claims) -> String {
        let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let mut mac = self.mac.clone();
        mac.update(self.domain);
        mac.update(claims.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("v1.{claims}.{sig}")
    }

    /// Checks a bound token presented to replica `me`: signature, audience, expiry, and
    /// that it is bound. The caller then checks the binding against the request and has
    /// the nonce admitted by its [`ReplayGuard`].
    pub fn verify_bound(&self, token: &str, me: &str) -> Result<BoundClaims, TokenError> {
        let claims = self.verify_claims(token, me)?;
        let (Some(binding), Some(jti)) = (claims.bnd, claims.jti) else {
            return Err(TokenError::Unbound);
        };
        let nonce = URL_SAFE_NO_PAD
            .decode(jti)
            .ok()
            .and_then(|n| <[u8; 16]>::try_from(n).ok())
            .ok_or(TokenError::Malformed)?;
        Ok(BoundClaims { issuer: claims.iss, exp: claims.exp, binding, nonce })
    }

    /// Checks a token presented to replica `me`; returns the calling replica's id.
    pub fn verify(&self, token: &str, me: &str) -> Result<String, TokenError> {
        self.verify_claims(token, me).map(|c| c.iss)
    }

    fn verify_claims(&self, token: &str, me: &str) -> Result<Claims, TokenError> {
        let rest = token.strip_prefix("v1.").ok_or(TokenError::Malformed)?;
        let (claims_b64, sig_b64) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD.decode(sig_b64).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac.clone();
        mac.update(self.domain);
        mac.update(claims_b64.as_bytes());
        // Check the signature before parsing anything the caller controls.
        mac.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(claims_b64)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.aud != me {
            return Err(TokenError::WrongAudience(claims.aud));
        }
        let now = now_ms();
        if claims.exp + (SKEW.as_millis() as u64) < now {
            return Err(TokenError::Expired(Duration::from_millis(now - claims.exp)));
        }
        if claims.exp > now + (self.lifetime + SKEW).as_millis() as u64 {
            return Err(TokenError::TooLong);
        }
        Ok(claims)
    }
}

/// The nonces of bound tokens seen and not yet expired, so each token opens one request.
///
/// Bounded: a nonce is kept until its token's expiry (plus the clock skew allowed), and at
/// most `capacity` at once; beyond that new tokens are refused ([`TokenError::Busy`], the
/// caller tries another replica) rather than old nonces forgotten early, which would
/// reopen a replay window. Only tokens with a valid signature reach it, so only a replica
/// holding the secret can fill it.
pub struct ReplayGuard {
    seen: Expiring<[u8; 16]>,
}

impl ReplayGuard {
    /// A guard remembering at most `capacity` live nonces.
    pub fn new(capacity: usize) -> Self {
        Self { seen: Expiring::new(capacity) }
    }

    /// Admits `claims`' nonce if it was not seen before; remembers it until the token
    /// could no longer verify (its expiry plus the skew allowed).
    pub fn admit(&self, claims: &BoundClaims) -> Result<(), TokenError> {
        match self.seen.insert(claims.nonce, claims.exp + SKEW.as_millis() as u64) {
            Ok(()) => Ok(()),
            Err(NotInserted::Known) => Err(TokenError::Replayed),
            Err(NotInserted::Full) => Err(TokenError::Busy),
        }
    }

    /// How many nonces are remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> TokenKey {
        TokenKey::new(secret.as_bytes(), Duration::from_secs(30))
    }

    #[test]
    fn a_token_of_one_domain_never_verifies_in_another() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let replica = TokenKey::new(secret, Duration::from_secs(30));
        let control = TokenKey::with_domain(b"burrow-control-token.v1.", secret, Duration::from_secs(30));
        let token = control.mint("cli", "burrow-control");
        assert_eq!(control.verify(&token, "burrow-control").unwrap(), "cli");
        assert_eq!(replica.verify(&token, "burrow-control").unwrap_err(), TokenError::BadSignature);
    }

    #[test]
    fn replay_a_bound_token_opens_its_own_request_once() {
        let k = key("0123456789abcdef0123456789abcdef");
        let guard = ReplayGuard::new(16);
        let token = k.mint_bound("a", "b", "digest-1");
        let claims = k.verify_bound(&token, "b").unwrap();
        assert_eq!(claims.issuer, "a");
        claims.check_binding("digest-1").unwrap();
        assert_eq!(claims.check_binding("digest-2").unwrap_err(), TokenError::WrongBinding);
        guard.admit(&claims).unwrap();
        let again = k.verify_bound(&token, "b").unwrap();
        assert_eq!(guard.admit(&again).unwrap_err(), TokenError::Replayed);
        // Two tokens for the same request still differ by their nonce.
        let other = k.verify_bound(&k.mint_bound("a", "b", "digest-1"), "b").unwrap();
        guard.admit(&other).unwrap();
        // Unbound tokens (old-style, or another use's) are refused where a bound one is due.
        assert_eq!(k.verify_bound(&k.mint("a", "b"), "b").unwrap_err(), TokenError::Unbound);
    }

    #[test]
    fn replay_guard_is_bounded_and_forgets_only_expired_nonces() {
        let k = key("0123456789abcdef0123456789abcdef");
        let guard = ReplayGuard::new(2);
        for _ in 0..2 {
            guard.admit(&k.verify_bound(&k.mint_bound("a", "b", "d"), "b").unwrap()).unwrap();
        }
        let third = k.verify_bound(&k.mint_bound("a", "b", "d"), "b").unwrap();
        assert_eq!(guard.admit(&third).unwrap_err(), TokenError::Busy);
        assert_eq!(guard.len(), 2);
        // Nonces whose tokens can no longer verify are dropped to make room.
        let mut expired = third.clone();
        expired.exp = now_ms() - 60_000;
        let fresh = ReplayGuard::new(2);
        fresh.admit(&expired).unwrap();
        let mut also_expired = k.verify_bound(&k.mint_bound("a", "b", "d"), "b").unwrap();
        also_expired.exp = now_ms() - 60_000;
        fresh.admit(&also_expired).unwrap();
        fresh.admit(&third).unwrap();
        assert_eq!(fresh.len(), 1);
    }

    #[test]
    fn round_trip_names_the_caller() {
        let k = key("0123456789abcdef0123456789abcdef");
        let token = k.mint("host-a", "host-b");
        assert_eq!(k.verify(&token, "host-b").unwrap(), "host-a");
    }

    #[test]
    fn every_kind_of_bad_token_is_refused() {
        let k = key("0123456789abcdef0123456789abcdef");
        let other = key("ffffffffffffffffffffffffffffffff");
        let token = k.mint("a", "b");
        assert_eq!(other.verify(&token, "b").unwrap_err(), TokenError::BadSignature);
        assert!(matches!(k.verify(&token, "c").unwrap_err(), TokenError::WrongAudience(a) if a == "b"));
        assert_eq!(k.verify("garbage", "b").unwrap_err(), TokenError::Malformed);
        assert_eq!(k.verify("v1.only", "b").unwrap_err(), TokenError::Malformed);
        // Tampered claims keep the old signature: refused before parsing.
        let (_, sig) = token.rsplit_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"iss":"a","aud":"b","exp":99999999999999}"#);
        assert_eq!(k.verify(&format!("v1.{forged}.{sig}"), "b").unwrap_err(), TokenError::BadSignature);
        let expired = k.mint_at("a", "b", now_ms() - 60_000);
        assert!(matches!(k.verify(&expired, "b").unwrap_err(), TokenError::Expired(_)));
        let too_long = k.mint_at("a", "b", now_ms() + 3_600_000);
        assert_eq!(k.verify(&too_long, "b").unwrap_err(), TokenError::TooLong);
    }
}
