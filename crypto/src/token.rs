//! Operator tokens: kept only as a hash, compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A configured secret token, held as its SHA-256 digest so the plaintext need not
/// stay in memory and comparisons take the same time whatever the input.
#[derive(Clone)]
pub struct TokenHash([u8; 32]);

/// A fresh 256-bit session token from the operating system's random source.
pub fn generate_token() -> [u8; 32] {
    crate::auth::fresh_nonce()
}

impl TokenHash {
    /// The hash of `token` (SHA-256).
    pub fn of(token: &[u8]) -> TokenHash {
        TokenHash(Sha256::digest(token).into())
    }

    /// Restores a hash as stored.
    pub fn from_digest(digest: [u8; 32]) -> TokenHash {
        TokenHash(digest)
    }

    /// The digest, for storage and lookup (never the token itself).
    pub fn digest(&self) -> [u8; 32] {
        self.0
    }

    /// Whether `presented` is the token; constant time in the token's content.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        bool::from(self.0.ct_eq(&digest))
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_same_token() {
        let h = TokenHash::of(b"s3cret");
        assert!(h.matches(b"s3cret"));
        assert!(!h.matches(b"s3cre"));
        assert!(!h.matches(b""));
        assert!(!format!("{h:?}").contains("s3cret"));
    }
}
