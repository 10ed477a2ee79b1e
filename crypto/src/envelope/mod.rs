//! The hybrid envelope: every per-recipient payload is sealed to the recipient's
//! X-Wing (X25519 + ML-KEM-768) key, so the payload stays secret even against an
//! adversary who records traffic today and has a quantum computer tomorrow.
//!
//! Layers, inside out: `padding` hides exact lengths; `seal` encrypts to one
//! recipient key; `sealed_sender` puts the sender's identity and signature inside
//! the envelope, so the delivery service can relay without learning who sent it;
//! `hybrid_key` is the signed public key recipients publish.

mod hybrid_key;
mod padding;
mod seal;
mod sealed_sender;

pub use hybrid_key::{HybridKeyPair, HybridPublicKey, SIGNED_HYBRID_KEY_LEN};
pub use padding::{pad, padded_len, unpad};
pub use seal::{ENVELOPE_OVERHEAD, ENVELOPE_VERSION, open, seal, seal_with_randomness};
pub use sealed_sender::{
    SEALED_SENDER_AAD, SealedMessage, open_sealed_sender, seal_sealed_sender,
    seal_sealed_sender_with_randomness,
};

/// Why an envelope or hybrid key was refused. Every failure is the sender's (or an
/// attacker's) doing; none says more than needed about which check failed, beyond
/// what is safe to reveal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope too short")]
    Truncated,
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    #[error("envelope is for another key")]
    WrongKey,
    #[error("envelope does not decrypt")]
    Decrypt,
    #[error("envelope padding is malformed")]
    BadPadding,
    #[error("sender signature does not verify")]
    BadSenderSignature,
    #[error("hybrid public key is malformed")]
    MalformedKey,
    #[error("hybrid public key signature does not verify")]
    BadKeySignature,
    #[error("hybrid public key belongs to another identity")]
    WrongIdentity,
}
