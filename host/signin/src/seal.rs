//! Sealed values: what the host hands a browser (cookies, the sign-in state, the
//! one-use ticket that carries a sign-in to a workload's own host) encrypted and
//! authenticated, so a browser, a workload or another site can neither read nor forge
//! nor alter them.
//!
//! `v1.<base64url(nonce ‖ ciphertext ‖ tag)>`, ChaCha20-Poly1305 (ring) with a random
//! 96-bit nonce. Each purpose has its own key, derived from the cookie secret with
//! HKDF-SHA256 (`info` = the purpose), and the purpose is also the AEAD's associated
//! data: a ticket never opens as a session, a session for one purpose never as another.
//! The plaintext is JSON `{"exp": <unix ms>, "v": <value>}`; a value past `exp` does not
//! open. Several secrets may be configured: the first seals, every one opens, so a
//! secret is rotated by putting the new one first and dropping the old once the longest
//! session sealed under it has ended.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use burrow_host_time::now_ms;

/// A cookie secret must be at least this long.
pub const MIN_SECRET_LEN: usize = 32;
/// Browsers keep cookies up to 4096 bytes, name and attributes included.
pub const MAX_SEALED_LEN: usize = 3800;
const SALT: &[u8] = b"burrow-sign-in.v1";

/// What a sealed value is for; each has its own key and associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The sign-in in progress on the sign-in host (PKCE verifier, nonce, CSRF token).
    LoginState,
    /// Where a user was going when sent to sign in.
    Return,
    /// Carries a sign-in from the sign-in host to one workload host, once.
    Ticket,
    /// The user's session on the sign-in host (so other workloads need no new login).
    RootSession,
    /// The user's session on one workload host.
    WorkloadSession,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::LoginState => b"login-state",
            Purpose::Return => b"return",
            Purpose::Ticket => b"ticket",
            Purpose::RootSession => b"root-session",
            Purpose::WorkloadSession => b"workload-session",
        }
    }

    const ALL: [Purpose; 5] = [
        Purpose::LoginState,
        Purpose::Return,
        Purpose::Ticket,
        Purpose::RootSession,
        Purpose::WorkloadSession,
    ];
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not of the form this host makes.
    #[error("malformed sealed value")]
    Malformed,
    /// No key opens it for this purpose: forged, altered, of another purpose, or sealed
    /// under a secret no longer configured.
    #[error("sealed value does not open (forged, altered, of another use, or under a retired secret)")]
    Invalid,
    /// It opened but its time is over.
    #[error("sealed value expired")]
    Expired,
    /// The value would be too large for a cookie.
    #[error("sealed value would be {0} bytes, more than a cookie holds")]
    TooLarge(usize),
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    exp: u64,
    v: T,
}

/// Keys for every purpose, from one or more cookie secrets.
pub struct Sealer {
    /// Per secret (the first seals), a key per purpose in [`Purpose::ALL`] order.
    keys: Vec<[LessSafeKey; 5]>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("secrets", &self.keys.len()).finish_non_exhaustive()
    }
}

struct KeyLen;
impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        CHACHA20_POLY1305.key_len()
    }
}

fn derive(secret: &[u8], purpose: Purpose) -> LessSafeKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret);
    let info = [purpose.label()];
    let okm = prk.expand(&info, KeyLen).expect("a ChaCha20 key is far below HKDF's limit");
    let mut key = [0u8; 32];
    okm.fill(&mut key).expect("the buffer is the key's length");
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 32-byte key"))
}

impl Sealer {
    /// A sealer from `secrets` (each at least [`MIN_SECRET_LEN`] bytes; the first seals).
    pub fn new(secrets: &[Vec<u8>]) -> Result<Self, String> {
        if secrets.is_empty() {
            return Err("at least one cookie secret".into());
        }
        if let Some(short) = secrets.iter().position(|s| s.len() < MIN_SECRET_LEN) {
            return Err(format!("cookie secret #{} is shorter than {MIN_SECRET_LEN} bytes", short + 1));
        }
        let keys = secrets.iter().map(|secret| Purpose::ALL.map(|purpose| derive(secret, purpose))).collect();
        Ok(Self { keys, rng: SystemRandom::new() })
    }

    fn index(purpose: Purpose) -> usize {
        Purpose::ALL.iter().position(|p| *p == purpose).expect("every purpose is listed")
    }

    /// Seals `value` for `purpose`, valid until `exp` (Unix ms).
    pub fn seal<T: Serialize>(&self, purpose: Purpose, value: &T, exp: u64) -> Result<String, SealError> {
        let mut data =
            serde_json::to_vec(&Envelope { exp, v: value }).expect("sealed values serialize to JSON");
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the system RNG works");
        let key = &self.keys[0][Self::index(purpose)];
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(purpose.label()),
            &mut data,
        )
        .expect("ChaCha20-Poly1305 seals any length a cookie can hold");
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&data);
        let sealed = format!("v1.{}", URL_SAFE_NO_PAD.encode(raw));
        if sealed.len() > MAX_SEALED_LEN {
            return Err(SealError::TooLarge(sealed.len()));
        }
        Ok(sealed)
    }

    /// Opens a value sealed for `purpose` that has not expired.
    pub fn open<T: DeserializeOwned>(&self, purpose: Purpose, sealed: &str) -> Result<T, SealError> {
        if sealed.len() > MAX_SEALED_LEN {
            return Err(SealError::Malformed);
        }
        let raw = sealed
            .strip_prefix("v1.")
            .and_then(|b64| URL_SAFE_NO_PAD.decode(b64).ok())
            .ok_or(SealError::Malformed)?;
        if raw.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at the nonce's length");
        for keys in &self.keys {
            let mut buf = ciphertext.to_vec();
            let key = &keys[Self::index(purpose)];
            let Ok(plain) =
                key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(purpose.label()), &mut buf)
            else {
                continue;
            };
            // Authenticated: it is ours, so a parse failure is a bug or a format change.
            let envelope: Envelope<T> = serde_json::from_slice(plain).map_err(|_| SealError::Malformed)?;
            if envelope.exp <= now_ms() {
                return Err(SealError::Expired);
            }
            return Ok(envelope.v);
        }
        Err(SealError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(secret: &[u8]) -> Sealer {
        Sealer::new(&[secret.to_vec()]).unwrap()
    }

    const A: &[u8] = b"0123456789abcdef0123456789abcdef";
    const B: &[u8] = b"fedcba9876543210fedcba9876543210";

    #[test]
    fn cookie_values_round_trip_and_hide_their_content() {
        let s = sealer(A);
        let sealed = s.seal(Purpose::WorkloadSession, &"alice@example", now_ms() + 60_000).unwrap();
        assert!(!sealed.contains("alice"));
        assert_eq!(s.open::<String>(Purpose::WorkloadSession, &sealed).unwrap(), "alice@example");
        // A fresh nonce each time: the same value never seals to the same text.
        assert_ne!(sealed, s.seal(Purpose::WorkloadSession, &"alice@example", now_ms() + 60_000).unwrap());
    }

    #[test]
    fn cookie_values_of_another_purpose_secret_or_time_do_not_open() {
        let s = sealer(A);
        let sealed = s.seal(Purpose::Ticket, &1u32, now_ms() + 60_000).unwrap();
        assert_eq!(s.open::<u32>(Purpose::WorkloadSession, &sealed).unwrap_err(), SealError::Invalid);
        assert_eq!(sealer(B).open::<u32>(Purpose::Ticket, &sealed).unwrap_err(), SealError::Invalid);
        let old = s.seal(Purpose::Ticket, &1u32, now_ms() - 1).unwrap();
        assert_eq!(s.open::<u32>(Purpose::Ticket, &old).unwrap_err(), SealError::Expired);
        // Any flipped character is caught.
        let mut tampered = sealed.clone().into_bytes();
        let at = tampered.len() - 5;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(s.open::<u32>(Purpose::Ticket, &tampered).is_err());
        for garbage in ["", "v1.", "v1.AAAA", "v2.abc", "plain-text", &"v1.x".repeat(2000)] {
            assert_eq!(
                s.open::<u32>(Purpose::Ticket, garbage).unwrap_err(),
                SealError::Malformed,
                "{garbage:.20}"
            );
        }
    }

    #[test]
    fn cookie_secrets_rotate_the_first_seals_every_one_opens() {
        let old = sealer(A);
        let sealed_old = old.seal(Purpose::RootSession, &"x", now_ms() + 60_000).unwrap();
        let rotated = Sealer::new(&[B.to_vec(), A.to_vec()]).unwrap();
        assert_eq!(rotated.open::<String>(Purpose::RootSession, &sealed_old).unwrap(), "x");
        let sealed_new = rotated.seal(Purpose::RootSession, &"y", now_ms() + 60_000).unwrap();
        assert_eq!(old.open::<String>(Purpose::RootSession, &sealed_new).unwrap_err(), SealError::Invalid);
        assert_eq!(sealer(B).open::<String>(Purpose::RootSession, &sealed_new).unwrap(), "y");
    }

    #[test]
    fn cookie_secrets_must_be_long_and_values_small() {
        assert!(Sealer::new(&[]).is_err());
        assert!(Sealer::new(&[b"short".to_vec()]).unwrap_err().contains("#1"));
        let big = "g".repeat(4000);
        assert!(matches!(
            sealer(A).seal(Purpose::Ticket, &big, now_ms() + 1000),
            Err(SealError::TooLarge(_))
        ));
    }
}
