//! Sealing a payload to one recipient's hybrid key.
//!
//! Format (version 1): `version (1) ‖ key id (8) ‖ X-Wing ciphertext (1120) ‖
//! ChaCha20-Poly1305(padded plaintext)`. The AEAD key and nonce come from HKDF-SHA256
//! over the X-Wing shared secret, with a domain-separation label and the header
//! (version, key id, encapsulation) as info; the header and the caller's `aad` are
//! the AEAD's associated data. Each envelope has a fresh encapsulation, so a fresh
//! key: the derived nonce is never reused.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use x_wing::Decapsulate;
use zeroize::Zeroizing;

use super::EnvelopeError;
use super::hybrid_key::{HybridKeyPair, HybridPublicKey};
use super::padding::{pad, unpad};

/// The format version every envelope starts with.
pub const ENVELOPE_VERSION: u8 = 1;
const KEY_ID_LEN: usize = 8;
const KEM_CT_LEN: usize = x_wing::CIPHERTEXT_SIZE;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + KEM_CT_LEN;
const TAG_LEN: usize = 16;
/// Bytes an envelope adds to the padded plaintext.
pub const ENVELOPE_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
const KDF_LABEL: &[u8] = b"quicnprotochat/envelope/v1";

fn derive(shared: &[u8], header: &[u8]) -> (Zeroizing<[u8; 32]>, [u8; 12]) {
    let hk = Hkdf::<Sha256>::new(None, shared);
    let mut info = Vec::with_capacity(KDF_LABEL.len() + 1 + header.len());
    info.extend_from_slice(KDF_LABEL);
    info.push(0);
    info.extend_from_slice(header);
    let mut okm = Zeroizing::new([0u8; 44]);
    hk.expand(&info, &mut okm[..])
        .expect("44 bytes is a valid HKDF length");
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&okm[..32]);
    let nonce: [u8; 12] = okm[32..].try_into().expect("12 bytes");
    (key, nonce)
}

/// Seals `plaintext` to `recipient`; `aad` is bound but not carried.
pub fn seal(recipient: &HybridPublicKey, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    use rand08::RngCore;
    let mut randomness = Zeroizing::new([0u8; 64]);
    rand08::rngs::OsRng.fill_bytes(&mut randomness[..]);
    seal_with_randomness(recipient, plaintext, aad, &randomness)
}

/// [`seal`] with the encapsulation randomness given: only for known-answer tests.
/// Reusing randomness destroys confidentiality.
#[doc(hidden)]
pub fn seal_with_randomness(
    recipient: &HybridPublicKey,
    plaintext: &[u8],
    aad: &[u8],
    randomness: &[u8; 64],
) -> Vec<u8> {
    let (kem_ct, shared) = recipient
        .encapsulation_key()
        .encapsulate_deterministic(randomness[..].try_into().expect("64 bytes"));
    let mut out = Vec::with_capacity(HEADER_LEN + super::padded_len(plaintext.len()) + TAG_LEN);
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&recipient.key_id());
    out.extend_from_slice(kem_ct.as_slice());
    let (key, nonce) = derive(shared.as_slice(), &out);
    let padded = Zeroizing::new(pad(plaintext));
    let mut aead_aad = Vec::with_capacity(HEADER_LEN + aad.len());
    aead_aad.extend_from_slice(&out);
    aead_aad.extend_from_slice(aad);
    let ct = ChaCha20Poly1305::new(Key::from_slice(&key[..]))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &padded,
                aad: &aead_aad,
            },
        )
        .expect("ChaCha20-Poly1305 encryption cannot fail for these sizes");
    out.extend_from_slice(&ct);
    out
}

/// The KEM ciphertext an envelope carries and the shared secret `keypair`
/// decapsulates from it, exactly as [`open`] derives it: only for known-answer
/// tests of our use of X-Wing. `None` for an envelope too short to hold one.
#[doc(hidden)]
pub fn kem_parts(keypair: &HybridKeyPair, envelope: &[u8]) -> Option<(Vec<u8>, [u8; 32])> {
    let header = envelope.get(..HEADER_LEN)?;
    let kem_ct: x_wing::Ciphertext = header[1 + KEY_ID_LEN..].try_into().ok()?;
    let shared = keypair.decapsulation_key().decapsulate(&kem_ct);
    Some((kem_ct.to_vec(), shared.as_slice().try_into().ok()?))
}

/// Opens an envelope sealed to `keypair` with the same `aad`.
pub fn open(
    keypair: &HybridKeyPair,
    envelope: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    if envelope.len() < HEADER_LEN + TAG_LEN {
        return Err(
            if envelope.first().is_some_and(|v| *v != ENVELOPE_VERSION) {
                EnvelopeError::UnsupportedVersion(envelope[0])
            } else {
                EnvelopeError::Truncated
            },
        );
    }
    if envelope[0] != ENVELOPE_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(envelope[0]));
    }
    let (header, ct) = envelope.split_at(HEADER_LEN);
    if header[1..1 + KEY_ID_LEN] != keypair.key_id() {
        return Err(EnvelopeError::WrongKey);
    }
    let kem_ct: x_wing::Ciphertext = header[1 + KEY_ID_LEN..]
        .try_into()
        .map_err(|_| EnvelopeError::Truncated)?;
    let shared = keypair.decapsulation_key().decapsulate(&kem_ct);
    let (key, nonce) = derive(shared.as_slice(), header);
    let mut aead_aad = Vec::with_capacity(HEADER_LEN + aad.len());
    aead_aad.extend_from_slice(header);
    aead_aad.extend_from_slice(aad);
    let padded = Zeroizing::new(
        ChaCha20Poly1305::new(Key::from_slice(&key[..]))
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: ct,
                    aad: &aead_aad,
                },
            )
            .map_err(|_| EnvelopeError::Decrypt)?,
    );
    Ok(unpad(&padded)?.to_vec())
}
