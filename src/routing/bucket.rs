//! Sticky assignment buckets: the same (salt, unit key) lands in the same bucket on
//! every replica and every abgate version.
//!
//! The algorithm is part of abgate's contract (changing it would move users
//! between arms mid-experiment), so it is fixed and documented here:
//!
//! ```text
//! seed   = XXH3_64(salt bytes, seed 0)
//! bucket = XXH3_64(unit key bytes, seed = seed) mod 10_000
//! ```
//!
//! Shadow arms mirror by the same hash under their own seed, so whether a
//! user is mirrored is sticky and independent of the arm the user is in:
//!
//! ```text
//! mirror seed   = XXH3_64(salt bytes ++ 0x00 "shadow" 0x00 ++ shadow arm name, seed 0)
//! mirror bucket = XXH3_64(unit key bytes, seed = mirror seed) mod 10_000
//! mirrored      = mirror bucket < percent (basis points)
//! ```
//!
//! XXH3 (xxHash 0.8, frozen since 2020) is specified, portable and implemented in
//! many languages, so a client or a warehouse query can recompute a user's bucket.
//! The modulo bias of a 64-bit hash reduced to 10,000 buckets is below 1e-15.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::config::BUCKETS;

/// The per-experiment hash seed derived from its salt (computed once per table build).
pub fn salt_seed(salt: &str) -> u64 {
    xxh3_64(salt.as_bytes())
}

/// The mirror hash seed of one shadow arm of an experiment (see the module doc).
pub fn mirror_seed(salt: &str, shadow: &str) -> u64 {
    let mut key = Vec::with_capacity(salt.len() + shadow.len() + 8);
    key.extend_from_slice(salt.as_bytes());
    key.extend_from_slice(b"\0shadow\0");
    key.extend_from_slice(shadow.as_bytes());
    xxh3_64(&key)
}

/// The bucket (0..10_000) of a unit key under a salt seed.
pub fn bucket(seed: u64, unit_key: &[u8]) -> u32 {
    (xxh3_64_with_seed(unit_key, seed) % u64::from(BUCKETS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frozen values: if this test fails, assignments changed for every user of
    /// every deployment. Cross-checked with the Python `xxhash` package
    /// (`xxhash.xxh3_64_intdigest(key, seed=xxhash.xxh3_64_intdigest(salt)) % 10000`).
    #[test]
    fn buckets_are_frozen() {
        let seed = salt_seed("sentiment");
        let got: Vec<u32> = ["user-1", "user-2", "alice", ""]
            .iter()
            .map(|k| bucket(seed, k.as_bytes()))
            .collect();
        assert_eq!(got, GOLDEN);
    }

    const GOLDEN: [u32; 4] = [2314, 8788, 7901, 5747];

    /// Mirror buckets are part of the contract too: changing them would
    /// change which users' requests are copied mid-experiment. Reference
    /// values from Python's `xxhash`:
    /// `s = xxh3_64_intdigest(b"sentiment\0shadow\0candidate")`,
    /// `xxh3_64_intdigest(key, seed=s) % 10000`.
    #[test]
    fn mirror_buckets_are_frozen_and_differ_from_assignment() {
        let seed = mirror_seed("sentiment", "candidate");
        let got: Vec<u32> = ["user-1", "user-2", "alice", ""]
            .iter()
            .map(|k| bucket(seed, k.as_bytes()))
            .collect();
        assert_eq!(seed, 11_337_380_639_852_072_765);
        assert_eq!(got, [756, 917, 9203, 2261]);
        assert_ne!(seed, salt_seed("sentiment"));
        assert_ne!(mirror_seed("sentiment", "other"), seed);
    }

    #[test]
    fn salts_make_assignments_independent() {
        let (a, b) = (salt_seed("exp-a"), salt_seed("exp-b"));
        let same = (0..10_000)
            .filter(|i| {
                let k = format!("u{i}");
                (bucket(a, k.as_bytes()) < 5000) == (bucket(b, k.as_bytes()) < 5000)
            })
            .count();
        // Independent halves agree about half the time: 5000 ± 4σ (σ = 50).
        assert!((4800..=5200).contains(&same), "{same}");
    }
}
