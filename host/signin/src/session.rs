//! What a sign-in carries, from the provider's claims to the cookie on one workload's
//! host, and the bounded memories that make tickets single-use and logouts final.
//!
//! The cookie design, against workloads that are sibling host names under one parent
//! (`web-a1.example.com`, `web-b1.example.com`), each of which could set cookies for the
//! parent domain:
//! - the provider sends the browser back to the sign-in host only (one redirect URI);
//!   that host keeps a [`RootSession`] in a cookie of its own;
//! - it then sends the browser to the workload's host with a [`Ticket`] sealed for that
//!   host alone, valid a minute, usable once;
//! - the workload's host turns the ticket into a [`WorkloadSession`] cookie without a
//!   `Domain` attribute (host-only), sealed and naming that host: a cookie planted from a
//!   sibling (through the parent domain) names another host and is ignored.

use serde::{Deserialize, Serialize};

/// Groups kept from the provider's claims: cookies are small.
pub const MAX_GROUPS: usize = 64;
/// Longest group, user name or subject kept.
pub const MAX_CLAIM_LEN: usize = 256;

/// Who signed in, as the provider said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The provider (issuer URL).
    pub issuer: String,
    /// The provider's stable id of the user (`sub`).
    pub subject: String,
    /// The user name (the configured claim, `preferred_username` by default; `sub` when
    /// the provider gives none): the principal id the authorizer sees.
    pub username: String,
    /// Display name, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// E-mail, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Groups (the configured claim), at most [`MAX_GROUPS`].
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Identity {
    /// Checks and trims what a provider sent: claims are bounded in length and number,
    /// and a user name with control characters is refused rather than passed on.
    pub fn bounded(mut self) -> Result<Self, String> {
        for (what, value) in [("sub", &self.subject), ("user name", &self.username)] {
            if value.is_empty() || value.len() > MAX_CLAIM_LEN || value.chars().any(char::is_control) {
                return Err(format!(
                    "the provider's {what} claim is empty, too long or has control characters"
                ));
            }
        }
        self.groups.retain(|g| !g.is_empty() && g.len() <= MAX_CLAIM_LEN && !g.chars().any(char::is_control));
        self.groups.truncate(MAX_GROUPS);
        for field in [&mut self.name, &mut self.email] {
            if field.as_ref().is_some_and(|v| v.len() > MAX_CLAIM_LEN || v.chars().any(char::is_control)) {
                *field = None;
            }
        }
        Ok(self)
    }
}

/// Where a user was going: a workload's host (with port, as the browser named it) and
/// the path with its query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnTo {
    /// `Host` as the browser sent it.
    pub host: String,
    /// Origin-form target (`/path?query`).
    pub path: String,
}

/// The sign-in in progress, in a cookie on the sign-in host between the redirect to the
/// provider and the provider's redirect back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// Must equal the `state` the provider sends back (CSRF).
    pub csrf: String,
    /// The PKCE verifier whose challenge went to the provider.
    pub pkce_verifier: String,
    /// Must be the ID token's `nonce`.
    pub nonce: String,
    /// Where to go once signed in.
    pub return_to: ReturnTo,
}

/// The user's session on the sign-in host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootSession {
    /// Session id: every workload session made from this sign-in carries it, so one
    /// logout ends them all.
    pub sid: String,
    /// Who.
    pub identity: Identity,
    /// When the session ends (Unix ms); workload sessions end then too.
    pub expires_at: u64,
}

/// A sign-in on its way to one workload host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The only host it is good for (lowercase, no port).
    pub host: String,
    /// Single use: remembered once redeemed.
    pub nonce: String,
    /// The path to go on to.
    pub path: String,
    /// The session it grants.
    pub session: RootSession,
}

/// The user's session on one workload host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSession {
    /// The host it was made for (lowercase, no port); any other host ignores it.
    pub host: String,
    /// Its sign-in.
    pub session: RootSession,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            issuer: "https://idp".into(),
            subject: "u-1".into(),
            username: "alice".into(),
            name: Some("Alice".into()),
            email: None,
            groups: vec!["dev".into()],
        }
    }

    #[test]
    fn sign_in_claims_are_bounded() {
        let mut many = identity();
        many.groups = (0..200).map(|i| format!("g{i}")).collect();
        many.groups.push("bad\ngroup".into());
        many.name = Some("x".repeat(1000));
        let bounded = many.bounded().unwrap();
        assert_eq!(bounded.groups.len(), MAX_GROUPS);
        assert!(bounded.groups.iter().all(|g| !g.contains('\n')));
        assert_eq!(bounded.name, None);
        let mut bad = identity();
        bad.username = "al\rice".into();
        assert!(bad.bounded().is_err());
        let mut empty = identity();
        empty.subject.clear();
        assert!(empty.bounded().is_err());
    }
}
