//! Which calls may share a plugin instance (`instances = "per-user"`), and the bounded
//! pool of idle instances keyed that way.

use std::collections::VecDeque;

use burrow_plugin_contract::types::{Credential, Principal};

/// Whose calls an instance may serve under `instances = "per-user"`.
///
/// A credential never reaches an instance that served another one, so whatever a plugin
/// keeps in its globals (a parsed token, a cached identity) is only ever seen again by
/// the same user. Calls that carry no credential (workload `resolve`, `expired`,
/// routing, lifecycle hooks; users without a credential) share instances.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Isolation {
    /// No credential in the call.
    Shared,
    /// SHA-256 over the credential (kind-tagged, length-prefixed): the instance's owner.
    Credential([u8; 32]),
}

impl Isolation {
    /// The key of a user's credential (`Shared` for none).
    pub(crate) fn of_credential(credential: &Credential) -> Isolation {
        let parts: [&[u8]; 3] = match credential {
            Credential::None => return Isolation::Shared,
            Credential::Bearer(token) => [b"bearer", token.as_bytes(), b""],
            Credential::Cookie { name, value } => [b"cookie", name.as_bytes(), value.as_bytes()],
            Credential::SshPublicKey { user, key, .. } => [b"ssh-key", user.as_bytes(), key],
            Credential::SshPassword { user, password } => {
                [b"ssh-password", user.as_bytes(), password.as_bytes()]
            }
        };
        Isolation::Credential(digest(&parts))
    }

    /// The key of an agent token.
    pub(crate) fn of_agent_token(token: &str) -> Isolation {
        Isolation::Credential(digest(&[b"agent", token.as_bytes()]))
    }

    /// The key of a principal the host signed in itself (no credential reaches the plugin).
    pub(crate) fn of_principal(principal: &Principal) -> Isolation {
        Isolation::Credential(digest(&[b"principal", principal.id.as_bytes()]))
    }
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// Initialised instances waiting for their next call, oldest first, each with the
/// isolation key of the calls it served. Bounded by `warm_pool`; a put past that drops
/// the least recently used. Small (16 by default), so a scan beats a map.
pub(crate) struct WarmPool<T> {
    pub(crate) idle: VecDeque<(Isolation, T)>,
}

impl<T> Default for WarmPool<T> {
    fn default() -> Self {
        Self { idle: VecDeque::new() }
    }
}

impl<T> WarmPool<T> {
    /// The most recently used instance that served `key`.
    pub(crate) fn take(&mut self, key: Isolation) -> Option<T> {
        let at = self.idle.iter().rposition(|(k, _)| *k == key)?;
        self.idle.remove(at).map(|(_, warm)| warm)
    }

    pub(crate) fn put(&mut self, key: Isolation, warm: T, cap: usize) {
        while self.idle.len() >= cap.max(1) {
            self.idle.pop_front();
        }
        self.idle.push_back((key, warm));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_is_its_own_key_and_none_is_shared() {
        let bearer = |t: &str| Isolation::of_credential(&Credential::Bearer(t.into()));
        assert_eq!(Isolation::of_credential(&Credential::None), Isolation::Shared);
        assert_eq!(bearer("a"), bearer("a"));
        assert_ne!(bearer("a"), bearer("b"));
        // The same bytes in another kind of credential, or split differently, are another key.
        let cookie = Isolation::of_credential(&Credential::Cookie { name: "a".into(), value: String::new() });
        assert_ne!(bearer("a"), cookie);
        let split = |user: &str, password: &str| {
            Isolation::of_credential(&Credential::SshPassword {
                user: user.into(),
                password: password.into(),
            })
        };
        assert_ne!(split("ab", "c"), split("a", "bc"));
        assert_ne!(bearer("a"), Isolation::of_agent_token("a"));
        assert_ne!(bearer("a"), Isolation::of_principal(&Principal::new("a")));
    }

    #[test]
    fn the_pool_hands_an_instance_back_only_for_its_key_and_drops_the_least_recently_used() {
        let (a, b) = (Isolation::of_agent_token("a"), Isolation::of_agent_token("b"));
        let mut pool = WarmPool::default();
        pool.put(a, 1, 2);
        pool.put(b, 2, 2);
        assert_eq!(pool.take(Isolation::Shared), None);
        assert_eq!(pool.take(a), Some(1));
        assert_eq!(pool.take(a), None);
        pool.put(a, 3, 2);
        pool.put(Isolation::Shared, 4, 2);
        // Full at 2: putting the shared one dropped b's (the oldest).
        assert_eq!(pool.take(b), None);
        assert_eq!(pool.take(a), Some(3));
        assert_eq!(pool.take(Isolation::Shared), Some(4));
    }
}
