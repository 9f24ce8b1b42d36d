//! Credential hashes, looked up by hash.
//!
//! The config holds SHA-256 hashes of credentials, never the credentials. A presented
//! secret is hashed and the hash looked up with a binary search over the sorted hashes:
//! O(log n) per handshake, where a scan of every entry cost about 1.2 ms of host CPU per
//! agent handshake at 10,000 agents (BENCHMARKS.md, "Agents at scale").
//!
//! The search's comparisons exit early, so its timing may say where the presented
//! secret's hash falls among the configured hashes. That is information about hashes,
//! which are not secrets: finding a credential from its SHA-256 is a preimage search,
//! hopeless for the random tokens this list is meant for. What must not leak, whether a
//! presented secret is right, takes one full-length constant-time comparison at the end.

use std::collections::HashMap;

use subtle::ConstantTimeEq;

pub(super) type Hash = [u8; 32];

/// Hashes and their owners (indices into the policy's agents or users), sorted by hash.
#[derive(Default)]
pub(super) struct Secrets {
    sorted: Vec<(Hash, usize)>,
}

impl Secrets {
    /// The owner of the secret whose hash is `hash`, if any.
    pub(super) fn owner(&self, hash: &Hash) -> Option<usize> {
        let i = match self.sorted.binary_search_by(|(h, _)| h.cmp(hash)) {
            Ok(i) => i,
            // Not configured: the answer is the same whatever the near misses were.
            Err(_) => return None,
        };
        let (stored, owner) = &self.sorted[i];
        bool::from(stored.ct_eq(hash)).then_some(*owner)
    }

    pub(super) fn len(&self) -> usize {
        self.sorted.len()
    }
}

/// Collects secrets while the config is read, refusing a hash given to two owners in
/// O(1) per entry (a list of 10,000 agents must load in milliseconds: the host compiles
/// and initialises plugin instances under a call deadline).
#[derive(Default)]
pub(super) struct SecretsBuilder {
    by_hash: HashMap<Hash, usize>,
}

impl SecretsBuilder {
    pub(super) fn with_capacity(n: usize) -> SecretsBuilder {
        SecretsBuilder { by_hash: HashMap::with_capacity(n) }
    }

    /// Adds a secret unless the same owner already has it; the same hash for two owners
    /// would make a credential ambiguous.
    pub(super) fn add(&mut self, field: &str, sha256: Hash, owner: usize) -> Result<(), String> {
        match self.by_hash.get(&sha256) {
            Some(o) if *o == owner => Ok(()),
            Some(_) => {
                Err(format!("{field}: the same token hash is configured for two different identities"))
            }
            None => {
                self.by_hash.insert(sha256, owner);
                Ok(())
            }
        }
    }

    pub(super) fn build(self) -> Secrets {
        let mut sorted: Vec<(Hash, usize)> = self.by_hash.into_iter().collect();
        sorted.sort_unstable_by_key(|(hash, _)| *hash);
        Secrets { sorted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct hashes, none all-zero or all-ones.
    fn hash(n: u32) -> Hash {
        let n = n + 1;
        let mut h = [0u8; 32];
        // Spread over the first and last bytes so sorting matters.
        h[0] = (n.wrapping_mul(97) % 251) as u8;
        h[1..5].copy_from_slice(&n.to_be_bytes());
        h[31] = n as u8;
        h
    }

    #[test]
    fn finds_every_owner_and_nothing_else() {
        let mut b = SecretsBuilder::with_capacity(1000);
        for n in 0..1000 {
            b.add("f", hash(n), n as usize).unwrap();
        }
        let s = b.build();
        assert_eq!(s.len(), 1000);
        for n in 0..1000 {
            assert_eq!(s.owner(&hash(n)), Some(n as usize));
        }
        for n in 1000..1100 {
            assert_eq!(s.owner(&hash(n)), None);
        }
        assert_eq!(s.owner(&[0u8; 32]), None);
        assert_eq!(s.owner(&[0xffu8; 32]), None);
        assert_eq!(Secrets::default().owner(&hash(1)), None);
    }

    #[test]
    fn a_hash_for_two_owners_is_refused_and_a_repeat_for_one_is_kept_once() {
        let mut b = SecretsBuilder::default();
        b.add("a", hash(1), 0).unwrap();
        b.add("a again", hash(1), 0).unwrap();
        let err = b.add("b", hash(1), 1).unwrap_err();
        assert!(err.starts_with("b: ") && err.contains("two different identities"), "{err}");
        assert_eq!(b.build().len(), 1);
    }
}
