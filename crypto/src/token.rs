//! Operator tokens: kept only as a hash, compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A configured secret token, held as its SHA-256 digest so the plaintext need not
/// stay in memory and comparisons take the same time whatever the input.
#[derive(Clone)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &[u8]) -> TokenHash {
        TokenHash(Sha256::digest(token).into())
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
