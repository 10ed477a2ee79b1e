//! What the seeded actor tests share: a replayable RNG, the seeds to run, and
//! inbox names.
#![allow(dead_code)] // each test file uses its own part

use quicnprotochat_wire::IdentityKey;

/// xorshift64*: enough randomness for choosing moments and operations, and
/// replayable from its seed.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for `seed` (mixed, so neighbouring seeds differ at once).
    pub(crate) fn seeded(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The seeds to run: the one in the environment variable `var` (a replay), or
/// `defaults`.
pub(crate) fn seeds(var: &str, defaults: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    match std::env::var(var) {
        Ok(s) => vec![s.parse().unwrap_or_else(|_| panic!("{var} is a number"))],
        Err(_) => defaults.collect(),
    }
}

/// Inbox `i` of a test.
pub(crate) fn inbox(i: u8) -> IdentityKey {
    IdentityKey([i + 1; 32])
}
