//! Agent tokens: what the control plane hands a workload's agent when it creates the
//! workload, so the agent lives exactly as long as its workload.
//!
//! ```text
//! bwt1.<key id>.<base64url(JSON claims)>.<base64url(Ed25519 signature)>
//! ```
//!
//! - The signature covers `bwt1.<key id>.<claims>` as sent, so nothing is re-encoded
//!   before checking, and the key id cannot be swapped.
//! - The key id is the first 8 bytes (hex) of SHA-256 over the public key: a host with
//!   the current and the previous key finds the right one at once, and a rotated-out key
//!   names itself in the error.
//! - The claims name the workload (kind, id), the agent identity, the services it may
//!   offer and the validity window, in Unix milliseconds like the rest of the host.
//! - Tokens are bearer secrets: [`AgentClaims`] never holds the token, and errors never
//!   quote it.
//!
//! Ed25519 through `ring` (already the host's TLS and SSH crypto): verification is
//! constant-time and needs no state, so every replica verifies locally.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Every agent token starts with this; other bearer tokens (permanent agents' static
/// tokens) never do, so the host knows which check applies without trying both.
pub const TOKEN_PREFIX: &str = "bwt1.";

/// Longest token accepted: claims with many services stay far below this; anything
/// longer is refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentClaims {
    /// Workload kind (`workspace`, `ci-job`, `terminal`, or an admin's own).
    pub kind: String,
    /// Workload id.
    pub workload_id: String,
    /// The agent identity the token authenticates.
    pub agent_id: String,
    /// Services the agent may offer; empty: any it announces.
    pub services: Vec<String>,
    /// Unix milliseconds.
    pub issued_at: u64,
    /// Unix milliseconds; the token is refused from then on.
    pub expires_at: u64,
    /// Unique per token, for logs and targeted revocation.
    pub token_id: String,
}

/// Why a token was refused. The messages name the cause, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not an agent token (it must start with {TOKEN_PREFIX:?} and have four parts)")]
    Malformed,
    #[error("the token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("the token was signed by key {0}, which this host does not hold (rotated out?)")]
    UnknownKey(String),
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token's claims are unreadable: {0}")]
    BadClaims(String),
    #[error("the token expired at {expired_at} (Unix ms)")]
    Expired { expired_at: u64 },
    #[error("the token is not valid before {issued_at} (Unix ms); check the clocks")]
    NotYetValid { issued_at: u64 },
    #[error("the signing key is unusable: {0}")]
    Key(String),
}

/// How far a token's issue time may lie in the future (clock skew between replicas).
const MAX_SKEW_MS: u64 = 60_000;

/// A public key and its id.
struct VerifyKey {
    id: String,
    public: Vec<u8>,
}

/// The host's keys: the first signs, every one verifies (current and previous, for
/// rotation without refusing tokens already handed out).
pub struct KeyRing {
    signer: Ed25519KeyPair,
    signer_id: String,
    verifiers: Vec<VerifyKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.verifiers.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("KeyRing").field("signer", &self.signer_id).field("verifiers", &ids).finish()
    }
}

/// The id of a public key: 8 bytes of its SHA-256, in hex.
fn key_id(public: &[u8]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

/// A new Ed25519 private key in PKCS#8 (v2) DER, for `burrow-host` to write to a file.
pub fn generate_pkcs8() -> Result<Vec<u8>, TokenError> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|e| TokenError::Key(e.to_string()))
}

impl KeyRing {
    /// A ring from PKCS#8 DER private keys, current first; at least one.
    pub fn from_pkcs8(keys: &[&[u8]]) -> Result<KeyRing, TokenError> {
        let mut pairs = Vec::with_capacity(keys.len());
        for (i, der) in keys.iter().enumerate() {
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map_err(|e| TokenError::Key(format!("key {}: {e}", i + 1)))?;
            pairs.push(pair);
        }
        let mut pairs = pairs.into_iter();
        let signer = pairs.next().ok_or_else(|| TokenError::Key("no signing key".into()))?;
        let mut verifiers = vec![VerifyKey {
            id: key_id(signer.public_key().as_ref()),
            public: signer.public_key().as_ref().to_vec(),
        }];
        for pair in pairs {
            let public = pair.public_key().as_ref().to_vec();
            verifiers.push(VerifyKey { id: key_id(&public), public });
        }
        let signer_id = verifiers[0].id.clone();
        Ok(KeyRing { signer, signer_id, verifiers })
    }

    /// The id of the key that signs.
    pub fn signer_id(&self) -> &str {
        &self.signer_id
    }

    /// Signs `claims` with the current key.
    pub fn sign(&self, claims: &AgentClaims) -> String {
        let json = serde_json::to_vec(claims).expect("claims always serialise");
        let signed = format!("{TOKEN_PREFIX}{}.{}", self.signer_id, URL_SAFE_NO_PAD.encode(json));
        let signature = self.signer.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    /// Checks `token`'s signature and validity at `now_ms`, and returns its claims.
    /// Revocation is the caller's to check (it needs the cluster's state).
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<AgentClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let rest = token.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Malformed)?;
        let mut parts = rest.split('.');
        let (Some(kid), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let key = self
            .verifiers
            .iter()
            .find(|k| k.id == kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.chars().take(16).collect()))?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
        let signed_len = TOKEN_PREFIX.len() + kid.len() + 1 + claims.len();
        UnparsedPublicKey::new(&ED25519, &key.public)
            .verify(&token.as_bytes()[..signed_len], &signature)
            .map_err(|_| TokenError::BadSignature)?;
        // Only signed bytes are parsed.
        let json = URL_SAFE_NO_PAD.decode(claims).map_err(|_| TokenError::Malformed)?;
        let claims: AgentClaims =
            serde_json::from_slice(&json).map_err(|e| TokenError::BadClaims(e.to_string()))?;
        if now_ms >= claims.expires_at {
            return Err(TokenError::Expired { expired_at: claims.expires_at });
        }
        if claims.issued_at > now_ms.saturating_add(MAX_SKEW_MS) {
            return Err(TokenError::NotYetValid { issued_at: claims.issued_at });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn claims() -> AgentClaims {
        AgentClaims {
            kind: "workspace".into(),
            workload_id: "ws-1".into(),
            agent_id: "ws-1".into(),
            services: vec!["web".into(), "ssh".into()],
            issued_at: NOW,
            expires_at: NOW + 15 * 60_000,
            token_id: "t-1".into(),
        }
    }

    fn ring(keys: &[&Vec<u8>]) -> KeyRing {
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
        KeyRing::from_pkcs8(&keys).unwrap()
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let key = generate_pkcs8().unwrap();
        let ring = ring(&[&key]);
        let token = ring.sign(&claims());
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(ring.verify(&token, NOW + 1).unwrap(), claims());
        assert_eq!(
            ring.verify(&token, NOW + 15 * 60_000),
            Err(TokenError::Expired { expired_at: NOW + 15 * 60_000 })
        );
        assert_eq!(
            ring.verify(&token, NOW - 2 * MAX_SKEW_MS),
            Err(TokenError::NotYetValid { issued_at: NOW }),
            "issued in the future beyond the skew"
        );
    }

    #[test]
    fn rotation_keeps_tokens_of_the_previous_key_and_signs_with_the_new() {
        let old = generate_pkcs8().unwrap();
        let new = generate_pkcs8().unwrap();
        let before = ring(&[&old]);
        let old_token = before.sign(&claims());
        let after = ring(&[&new, &old]);
        assert_eq!(after.verify(&old_token, NOW).unwrap(), claims(), "previous key still verifies");
        let new_token = after.sign(&claims());
        assert!(new_token.starts_with(&format!("{TOKEN_PREFIX}{}.", after.signer_id())));
        assert_ne!(after.signer_id(), before.signer_id());
        // Once the old key is dropped, its tokens name it in the refusal.
        let dropped = ring(&[&new]);
        assert_eq!(dropped.verify(&old_token, NOW), Err(TokenError::UnknownKey(before.signer_id().into())));
    }

    #[test]
    fn tampered_and_foreign_tokens_are_refused() {
        let ring_a = ring(&[&generate_pkcs8().unwrap()]);
        let token = ring_a.sign(&claims());
        // Claims changed after signing (another workload id): the signature fails.
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims();
        forged.workload_id = "ws-2".into();
        let forged_claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let tampered = format!("{}.{}.{}.{}", parts[0], parts[1], forged_claims, parts[3]);
        assert_eq!(ring_a.verify(&tampered, NOW), Err(TokenError::BadSignature));
        // Signed by another host's key that names ours: refused.
        let ring_b = ring(&[&generate_pkcs8().unwrap()]);
        let foreign = ring_b.sign(&claims());
        let relabelled = foreign.replacen(ring_b.signer_id(), ring_a.signer_id(), 1);
        assert_eq!(ring_a.verify(&relabelled, NOW), Err(TokenError::BadSignature));
        assert!(matches!(ring_a.verify(&foreign, NOW), Err(TokenError::UnknownKey(_))));
    }

    #[test]
    fn malformed_input_gets_a_clear_error_without_the_token() {
        let ring = ring(&[&generate_pkcs8().unwrap()]);
        for bad in ["", "static-token-123", "bwt1.", "bwt1.a.b", "bwt1.a.b.c.d", "bwt2.a.b.c"] {
            let error = ring.verify(bad, NOW).unwrap_err();
            assert!(matches!(error, TokenError::Malformed | TokenError::UnknownKey(_)), "{bad:?}: {error}");
        }
        let long = format!("{TOKEN_PREFIX}{}", "a".repeat(MAX_TOKEN_LEN));
        assert_eq!(ring.verify(&long, NOW), Err(TokenError::TooLong));
        let secret = ring.sign(&claims());
        let wrong = format!("{secret}x");
        let message = ring.verify(&wrong, NOW).unwrap_err().to_string();
        assert!(!message.contains(&secret[20..]), "the error quotes no token: {message}");
        assert!(KeyRing::from_pkcs8(&[b"not a key"]).is_err());
        assert!(KeyRing::from_pkcs8(&[]).is_err());
    }
}
