//! Shared bodies: one upload for a whole group, each recipient with a small part.
//!
//! Inner (signed) form: `sender identity key (32) ‖ timestamp ms (8) ‖ signature
//! (64) ‖ payload`, the signature over a label, SHA-256 of the payload and the
//! timestamp. Unlike sealed sender it names no recipient: one body serves them all.
//!
//! Body: `version (1) ‖ protection (1) ‖ …`:
//! - protection 0, *MLS*: the signed form as is. For groups whose own key schedule
//!   is post-quantum (the X-Wing MLS suite): the MLS message inside is the secret,
//!   already sealed to the group; the rest (group id, claimed names, members'
//!   public keys) is what the node holds anyway. No per-recipient part.
//! - protection 1, *wrapped*: `ChaCha20-Poly1305(K, padded signed form)` under a
//!   fresh random key K, and each recipient's part is K sealed to its X-Wing key
//!   (`seal`, bound to SHA-256 of the body). For groups on the classic suite:
//!   every payload stays post-quantum protected, at ~1.2 KB and one X-Wing
//!   encapsulation per recipient.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::EnvelopeError;
use super::hybrid_key::{HybridKeyPair, HybridPublicKey};
use super::padding::{pad, unpad};
use super::seal::{open, seal};
use super::sealed_sender::SealedMessage;
use crate::identity::{self, Identity, KEY_LEN, SIGNATURE_LEN};

const BODY_VERSION: u8 = 1;
const SIGNED_HEADER: usize = KEY_LEN + 8 + SIGNATURE_LEN;
const SIGNATURE_LABEL: &[u8] = b"quicnprotochat/shared-body/v1";
const PART_AAD_LABEL: &[u8] = b"quicnprotochat/shared-body-key/v1";

/// How a shared body keeps its payload secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyProtection {
    /// By the MLS message inside (the group's suite is post-quantum).
    Mls,
    /// By a fresh key wrapped with X-Wing for each recipient.
    Wrapped,
}

/// A sealed shared body and, for [`BodyProtection::Wrapped`], one part per
/// recipient in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSeal {
    /// Uploaded and stored once.
    pub body: Vec<u8>,
    /// One per recipient (none for [`BodyProtection::Mls`]).
    pub parts: Vec<Vec<u8>>,
}

fn signed_bytes(payload: &[u8], timestamp_ms: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_LABEL.len() + 1 + 32 + 8);
    m.extend_from_slice(SIGNATURE_LABEL);
    m.push(0);
    m.extend_from_slice(&Sha256::digest(payload));
    m.extend_from_slice(&timestamp_ms.to_be_bytes());
    m
}

fn signed(sender: &Identity, payload: &[u8], timestamp_ms: u64) -> Vec<u8> {
    let signature = sender.sign(&signed_bytes(payload, timestamp_ms));
    let mut m = Vec::with_capacity(SIGNED_HEADER + payload.len());
    m.extend_from_slice(&sender.public_key());
    m.extend_from_slice(&timestamp_ms.to_be_bytes());
    m.extend_from_slice(&signature);
    m.extend_from_slice(payload);
    m
}

fn verify_signed(inner: &[u8]) -> Result<SealedMessage, EnvelopeError> {
    if inner.len() < SIGNED_HEADER {
        return Err(EnvelopeError::Truncated);
    }
    let sender: [u8; KEY_LEN] = inner[..KEY_LEN].try_into().expect("sized");
    let timestamp_ms = u64::from_be_bytes(inner[KEY_LEN..KEY_LEN + 8].try_into().expect("sized"));
    let signature = &inner[KEY_LEN + 8..SIGNED_HEADER];
    let payload = &inner[SIGNED_HEADER..];
    identity::verify(&sender, &signed_bytes(payload, timestamp_ms), signature)
        .map_err(|_| EnvelopeError::BadSenderSignature)?;
    Ok(SealedMessage {
        sender,
        timestamp_ms,
        payload: payload.to_vec(),
    })
}

fn part_aad(body: &[u8]) -> Vec<u8> {
    let mut aad = PART_AAD_LABEL.to_vec();
    aad.extend_from_slice(&Sha256::digest(body));
    aad
}

/// Seals `payload` from `sender` once for many recipients: with
/// [`BodyProtection::Wrapped`], `recipients` each get a part, in order.
pub fn seal_shared(
    sender: &Identity,
    payload: &[u8],
    timestamp_ms: u64,
    protection: BodyProtection,
    recipients: &[HybridPublicKey],
) -> SharedSeal {
    let inner = signed(sender, payload, timestamp_ms);
    match protection {
        BodyProtection::Mls => {
            let mut body = Vec::with_capacity(2 + inner.len());
            body.extend_from_slice(&[BODY_VERSION, 0]);
            body.extend_from_slice(&inner);
            SharedSeal {
                body,
                parts: Vec::new(),
            }
        }
        BodyProtection::Wrapped => {
            use rand08::RngCore;
            let mut key = Zeroizing::new([0u8; 32]);
            rand08::rngs::OsRng.fill_bytes(&mut key[..]);
            let padded = Zeroizing::new(pad(&inner));
            let header = [BODY_VERSION, 1];
            // A fresh key per body: the all-zero nonce is used once per key.
            let ct = ChaCha20Poly1305::new(Key::from_slice(&key[..]))
                .encrypt(
                    Nonce::from_slice(&[0u8; 12]),
                    Payload {
                        msg: &padded,
                        aad: &header,
                    },
                )
                .expect("ChaCha20-Poly1305 encryption cannot fail for these sizes");
            let mut body = header.to_vec();
            body.extend_from_slice(&ct);
            let aad = part_aad(&body);
            let parts = recipients.iter().map(|r| seal(r, &key[..], &aad)).collect();
            SharedSeal { body, parts }
        }
    }
}

/// Opens a shared body with this recipient's `part` and verifies who sent it.
pub fn open_shared(
    keypair: &HybridKeyPair,
    part: &[u8],
    body: &[u8],
) -> Result<SealedMessage, EnvelopeError> {
    match body {
        [BODY_VERSION, 0, inner @ ..] => verify_signed(inner),
        [BODY_VERSION, 1, ct @ ..] => {
            let key = Zeroizing::new(open(keypair, part, &part_aad(body))?);
            if key.len() != 32 {
                return Err(EnvelopeError::Decrypt);
            }
            let padded = Zeroizing::new(
                ChaCha20Poly1305::new(Key::from_slice(&key[..]))
                    .decrypt(
                        Nonce::from_slice(&[0u8; 12]),
                        Payload {
                            msg: ct,
                            aad: &body[..2],
                        },
                    )
                    .map_err(|_| EnvelopeError::Decrypt)?,
            );
            verify_signed(unpad(&padded)?)
        }
        [BODY_VERSION, ..] | [] => Err(EnvelopeError::Truncated),
        [v, ..] => Err(EnvelopeError::UnsupportedVersion(*v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (Identity, HybridKeyPair, HybridPublicKey) {
        let id = Identity::generate();
        let kp = HybridKeyPair::generate(1);
        let public = HybridPublicKey::verify(&kp.signed_public(&id).to_bytes(), &id.public_key())
            .expect("own key verifies");
        (id, kp, public)
    }

    #[test]
    fn both_protections_open_for_every_recipient_with_the_verified_sender() {
        let (alice, _, _) = device();
        let (_, bob_kp, bob) = device();
        let (_, carol_kp, carol) = device();
        for protection in [BodyProtection::Mls, BodyProtection::Wrapped] {
            let s = seal_shared(
                &alice,
                b"hello group",
                7,
                protection,
                &[bob.clone(), carol.clone()],
            );
            let parts: Vec<&[u8]> = match protection {
                BodyProtection::Mls => vec![&[], &[]],
                BodyProtection::Wrapped => s.parts.iter().map(|p| p.as_slice()).collect(),
            };
            for (kp, part) in [(&bob_kp, parts[0]), (&carol_kp, parts[1])] {
                let m = open_shared(kp, part, &s.body).unwrap();
                assert_eq!(m.sender, alice.public_key());
                assert_eq!(m.payload, b"hello group");
                assert_eq!(m.timestamp_ms, 7);
            }
        }
    }

    #[test]
    fn a_wrapped_body_is_secret_and_bound_to_its_parts() {
        let (alice, _, _) = device();
        let (_, bob_kp, bob) = device();
        let (_, carol_kp, _) = device();
        let s = seal_shared(&alice, b"secret words", 1, BodyProtection::Wrapped, &[bob]);
        assert!(
            !s.body.windows(12).any(|w| w == b"secret words"),
            "the payload is not in clear"
        );
        assert_eq!(
            open_shared(&carol_kp, &s.parts[0], &s.body),
            Err(EnvelopeError::WrongKey)
        );
        let other = seal_shared(&alice, b"other", 1, BodyProtection::Wrapped, &[]);
        assert!(
            open_shared(&bob_kp, &s.parts[0], &other.body).is_err(),
            "a part opens only its own body"
        );
        let mut flipped = s.body.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(open_shared(&bob_kp, &s.parts[0], &flipped).is_err());
    }

    #[test]
    fn a_forged_sender_is_refused() {
        let (alice, _, _) = device();
        let (mallory, bob_kp, _) = device();
        let mut s = seal_shared(&alice, b"hi", 1, BodyProtection::Mls, &[]);
        s.body[2..2 + KEY_LEN].copy_from_slice(&mallory.public_key());
        assert_eq!(
            open_shared(&bob_kp, &[], &s.body),
            Err(EnvelopeError::BadSenderSignature)
        );
        assert_eq!(
            open_shared(&bob_kp, &[], &[]),
            Err(EnvelopeError::Truncated)
        );
        assert_eq!(
            open_shared(&bob_kp, &[], &[9, 0]),
            Err(EnvelopeError::UnsupportedVersion(9))
        );
    }
}
