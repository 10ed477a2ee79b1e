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
mod shared;

pub use hybrid_key::{HybridKeyPair, HybridPublicKey, SIGNED_HYBRID_KEY_LEN};
pub use padding::{pad, padded_len, unpad};
pub use seal::{ENVELOPE_OVERHEAD, ENVELOPE_VERSION, kem_parts, open, seal, seal_with_randomness};
pub use sealed_sender::{
    SEALED_SENDER_AAD, SealedMessage, open_sealed_sender, seal_sealed_sender,
    seal_sealed_sender_with_randomness,
};
pub use shared::{BodyProtection, SharedSeal, open_shared, seal_shared};

/// Why an envelope or hybrid key was refused. Every failure is the sender's (or an
/// attacker's) doing; none says more than needed about which check failed, beyond
/// what is safe to reveal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than any envelope can be.
    #[error("envelope too short")]
    Truncated,
    /// A format version this build does not know.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// Sealed to another hybrid key than the one at hand.
    #[error("envelope is for another key")]
    WrongKey,
    /// Tampered with, or sealed with other associated data.
    #[error("envelope does not decrypt")]
    Decrypt,
    /// Decrypted, but the padding inside is not ours.
    #[error("envelope padding is malformed")]
    BadPadding,
    /// A sealed-sender envelope whose sender signature fails.
    #[error("sender signature does not verify")]
    BadSenderSignature,
    /// A published hybrid key of the wrong length or version.
    #[error("hybrid public key is malformed")]
    MalformedKey,
    /// A published hybrid key whose identity signature fails.
    #[error("hybrid public key signature does not verify")]
    BadKeySignature,
    /// A published hybrid key signed by another identity than expected.
    #[error("hybrid public key belongs to another identity")]
    WrongIdentity,
}
