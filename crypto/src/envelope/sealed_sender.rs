//! Sealed sender: the sender's identity and signature travel inside the envelope.
//!
//! Inner format: `version (1) ‖ sender identity key (32) ‖ timestamp ms (8) ‖
//! signature (64) ‖ payload`, where the signature covers a label, the recipient's
//! identity key, SHA-256 of the payload and the timestamp. Binding the recipient
//! means a signed message cannot be re-sealed to someone else and pass as sent to
//! them.

use sha2::{Digest, Sha256};

use super::EnvelopeError;
use super::hybrid_key::{HybridKeyPair, HybridPublicKey};
use super::seal::{open, seal, seal_with_randomness};
use crate::identity::{self, Identity, KEY_LEN, SIGNATURE_LEN};

const INNER_VERSION: u8 = 1;
const INNER_HEADER: usize = 1 + KEY_LEN + 8 + SIGNATURE_LEN;
const SIGNATURE_LABEL: &[u8] = b"quicnprotochat/sealed-sender/v1";
/// Associated data of the outer envelope, so a sealed-sender envelope cannot be
/// mistaken for another kind.
pub const SEALED_SENDER_AAD: &[u8] = b"quicnprotochat/sealed-sender";

/// An opened sealed-sender message with its verified sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedMessage {
    /// The sender's identity key (its signature verified).
    pub sender: [u8; KEY_LEN],
    /// When the sender sealed it (ms since the Unix epoch), as it signed.
    pub timestamp_ms: u64,
    /// What the sender sent.
    pub payload: Vec<u8>,
}

fn signed_bytes(recipient: &[u8; KEY_LEN], payload: &[u8], timestamp_ms: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_LABEL.len() + 1 + KEY_LEN + 32 + 8);
    m.extend_from_slice(SIGNATURE_LABEL);
    m.push(0);
    m.extend_from_slice(recipient);
    m.extend_from_slice(&Sha256::digest(payload));
    m.extend_from_slice(&timestamp_ms.to_be_bytes());
    m
}

fn inner(
    sender: &Identity,
    recipient: &HybridPublicKey,
    payload: &[u8],
    timestamp_ms: u64,
) -> Vec<u8> {
    let signature = sender.sign(&signed_bytes(
        recipient.identity_key(),
        payload,
        timestamp_ms,
    ));
    let mut m = Vec::with_capacity(INNER_HEADER + payload.len());
    m.push(INNER_VERSION);
    m.extend_from_slice(&sender.public_key());
    m.extend_from_slice(&timestamp_ms.to_be_bytes());
    m.extend_from_slice(&signature);
    m.extend_from_slice(payload);
    m
}

/// Seals `payload` from `sender` to `recipient`.
pub fn seal_sealed_sender(
    sender: &Identity,
    recipient: &HybridPublicKey,
    payload: &[u8],
    timestamp_ms: u64,
) -> Vec<u8> {
    seal(
        recipient,
        &inner(sender, recipient, payload, timestamp_ms),
        SEALED_SENDER_AAD,
    )
}

/// [`seal_sealed_sender`] with fixed randomness: only for known-answer tests.
#[doc(hidden)]
pub fn seal_sealed_sender_with_randomness(
    sender: &Identity,
    recipient: &HybridPublicKey,
    payload: &[u8],
    timestamp_ms: u64,
    randomness: &[u8; 64],
) -> Vec<u8> {
    seal_with_randomness(
        recipient,
        &inner(sender, recipient, payload, timestamp_ms),
        SEALED_SENDER_AAD,
        randomness,
    )
}

/// Opens a sealed-sender envelope addressed to `my_identity_key` and verifies who
/// sent it.
pub fn open_sealed_sender(
    my_identity_key: &[u8; KEY_LEN],
    keypair: &HybridKeyPair,
    envelope: &[u8],
) -> Result<SealedMessage, EnvelopeError> {
    let inner = open(keypair, envelope, SEALED_SENDER_AAD)?;
    if inner.len() < INNER_HEADER {
        return Err(EnvelopeError::Truncated);
    }
    if inner[0] != INNER_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(inner[0]));
    }
    let sender: [u8; KEY_LEN] = inner[1..1 + KEY_LEN].try_into().expect("sized");
    let timestamp_ms = u64::from_be_bytes(
        inner[1 + KEY_LEN..1 + KEY_LEN + 8]
            .try_into()
            .expect("sized"),
    );
    let signature = &inner[1 + KEY_LEN + 8..INNER_HEADER];
    let payload = &inner[INNER_HEADER..];
    identity::verify(
        &sender,
        &signed_bytes(my_identity_key, payload, timestamp_ms),
        signature,
    )
    .map_err(|_| EnvelopeError::BadSenderSignature)?;
    Ok(SealedMessage {
        sender,
        timestamp_ms,
        payload: payload.to_vec(),
    })
}
