//! Helpers for routers.

/// A 64-bit hash that is the same on every platform and in every release of this SDK
/// (unlike `std`'s `DefaultHasher`), for sticky routing: FNV-1a over the parts, each
/// followed by a separator so `("ab", "c")` and `("a", "bc")` differ, then the splitmix64
/// finaliser so every output bit depends on every input bit.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(PRIME);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_separated() {
        // Pinned: routers depend on this never changing.
        assert_eq!(stable_hash(&[]), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(stable_hash(&[b"alice"]), 0x441b_53b1_b6ba_2c50);
        assert_eq!(stable_hash(&[b"alice", b"r1"]), 0xfd85_be0c_4533_7317);
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        let buckets = (0..1000).fold([0u32; 4], |mut b, i| {
            b[(stable_hash(&[format!("user-{i}").as_bytes()]) % 4) as usize] += 1;
            b
        });
        assert!(buckets.iter().all(|&n| n > 200), "{buckets:?}");
    }
}
