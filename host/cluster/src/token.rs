//! Short-lived tokens replicas present to each other on the private API.
//!
//! `v1.<claims>.<mac>`: `claims` is base64url JSON `{"iss","aud","exp"}` (caller replica,
//! callee replica, expiry in Unix milliseconds) and `mac` is base64url HMAC-SHA256 of
//! `"burrow-replica-token.v1." + claims` under the cluster's shared secret. There is no
//! algorithm field to confuse (the weakness of JWT's `alg`), the audience stops a token
//! captured from one replica being replayed against another, and the short lifetime
//! bounds replay against the same one. Verification is constant time (`hmac`'s
//! `verify_slice`).

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use burrow_host_time::now_ms;

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
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    exp: u64,
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
        let claims = Claims { iss: issuer.to_owned(), aud: audience.to_owned(), exp };
        let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let mut mac = self.mac.clone();
        mac.update(self.domain);
        mac.update(claims.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("v1.{claims}.{sig}")
    }

    /// Checks a token presented to replica `me`; returns the calling replica's id.
    pub fn verify(&self, token: &str, me: &str) -> Result<String, TokenError> {
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
        Ok(claims.iss)
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
