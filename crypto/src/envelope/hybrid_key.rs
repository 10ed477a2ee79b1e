//! The hybrid (X-Wing) key a client publishes, signed by its identity key together
//! with a key id and creation time, so a server cannot substitute its own.

use sha2::{Digest, Sha256};
use x_wing::{Decapsulator, KeyExport};
use zeroize::Zeroizing;

use super::EnvelopeError;
use crate::identity::{self, Identity, KEY_LEN, SIGNATURE_LEN};

/// Length of an X-Wing encapsulation (public) key.
pub(crate) const XWING_PUBLIC_LEN: usize = x_wing::ENCAPSULATION_KEY_SIZE;
/// Length of a serialized signed hybrid public key.
pub const SIGNED_HYBRID_KEY_LEN: usize = 1 + KEY_LEN + 8 + 8 + XWING_PUBLIC_LEN + SIGNATURE_LEN;

const KEY_VERSION: u8 = 1;
const SIGNATURE_LABEL: &[u8] = b"quicnprotochat/hybrid-key/v1";

/// The key id: the first 8 bytes of SHA-256 of the public key, so it cannot be
/// chosen independently of the key it names.
fn key_id_of(public: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(public);
    digest[..8].try_into().expect("8 bytes")
}

/// A recipient's private hybrid key (its 32-byte X-Wing seed) and public half.
pub struct HybridKeyPair {
    seed: Zeroizing<[u8; 32]>,
    decapsulation: x_wing::DecapsulationKey,
    created_at_ms: u64,
}

impl HybridKeyPair {
    /// A fresh key from the operating system's random source.
    pub fn generate(created_at_ms: u64) -> HybridKeyPair {
        use rand08::RngCore;
        let mut seed = Zeroizing::new([0u8; 32]);
        rand08::rngs::OsRng.fill_bytes(&mut seed[..]);
        HybridKeyPair::from_seed(*seed, created_at_ms)
    }

    /// Restores a key from its seed (as stored, or fixed in test vectors).
    pub fn from_seed(seed: [u8; 32], created_at_ms: u64) -> HybridKeyPair {
        HybridKeyPair {
            decapsulation: x_wing::DecapsulationKey::from(seed),
            seed: Zeroizing::new(seed),
            created_at_ms,
        }
    }

    /// The seed, for storage.
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// When the key pair was made (ms since the Unix epoch).
    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    pub(crate) fn decapsulation_key(&self) -> &x_wing::DecapsulationKey {
        &self.decapsulation
    }

    /// The public key bytes.
    pub fn public_bytes(&self) -> [u8; XWING_PUBLIC_LEN] {
        let exported = self.decapsulation.encapsulation_key().to_bytes();
        exported.as_slice().try_into().expect("exact size")
    }

    /// The short id envelopes name this key by.
    pub fn key_id(&self) -> [u8; 8] {
        key_id_of(&self.public_bytes())
    }

    /// The public key, signed by `identity`, ready to publish.
    pub fn signed_public(&self, identity: &Identity) -> HybridPublicKey {
        let public = self.public_bytes();
        let identity_key = identity.public_key();
        let key_id = key_id_of(&public);
        let message = signed_bytes(&identity_key, &key_id, self.created_at_ms, &public);
        HybridPublicKey {
            identity_key,
            key_id,
            created_at_ms: self.created_at_ms,
            encapsulation_key: x_wing::EncapsulationKey::try_from(&public[..])
                .expect("own public key parses"),
            public,
            signature: identity.sign(&message),
        }
    }
}

impl std::fmt::Debug for HybridKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridKeyPair")
            .field("key_id", &self.key_id())
            .field("seed", &"<redacted>")
            .finish()
    }
}

fn signed_bytes(
    identity_key: &[u8; KEY_LEN],
    key_id: &[u8; 8],
    created_at_ms: u64,
    public: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_LABEL.len() + 1 + KEY_LEN + 16 + public.len());
    m.extend_from_slice(SIGNATURE_LABEL);
    m.push(0);
    m.extend_from_slice(identity_key);
    m.extend_from_slice(key_id);
    m.extend_from_slice(&created_at_ms.to_be_bytes());
    m.extend_from_slice(public);
    m
}

/// A published hybrid key whose signature has been checked.
#[derive(Clone)]
pub struct HybridPublicKey {
    identity_key: [u8; KEY_LEN],
    key_id: [u8; 8],
    created_at_ms: u64,
    public: [u8; XWING_PUBLIC_LEN],
    encapsulation_key: x_wing::EncapsulationKey,
    signature: [u8; SIGNATURE_LEN],
}

impl HybridPublicKey {
    /// Serialized form: version, identity key, key id, creation time, public key,
    /// signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIGNED_HYBRID_KEY_LEN);
        out.push(KEY_VERSION);
        out.extend_from_slice(&self.identity_key);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&self.created_at_ms.to_be_bytes());
        out.extend_from_slice(&self.public);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses a published key and checks that `expected_identity` signed it.
    pub fn verify(
        bytes: &[u8],
        expected_identity: &[u8; KEY_LEN],
    ) -> Result<HybridPublicKey, EnvelopeError> {
        if bytes.len() != SIGNED_HYBRID_KEY_LEN {
            return Err(EnvelopeError::MalformedKey);
        }
        if bytes[0] != KEY_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(bytes[0]));
        }
        let mut at = 1;
        let mut take = |n: usize| {
            let s = &bytes[at..at + n];
            at += n;
            s
        };
        let identity_key: [u8; KEY_LEN] = take(KEY_LEN).try_into().expect("sized");
        let key_id: [u8; 8] = take(8).try_into().expect("sized");
        let created_at_ms = u64::from_be_bytes(take(8).try_into().expect("sized"));
        let public: [u8; XWING_PUBLIC_LEN] = take(XWING_PUBLIC_LEN).try_into().expect("sized");
        let signature: [u8; SIGNATURE_LEN] = take(SIGNATURE_LEN).try_into().expect("sized");
        if &identity_key != expected_identity {
            return Err(EnvelopeError::WrongIdentity);
        }
        if key_id != key_id_of(&public) {
            return Err(EnvelopeError::MalformedKey);
        }
        identity::verify(
            &identity_key,
            &signed_bytes(&identity_key, &key_id, created_at_ms, &public),
            &signature,
        )
        .map_err(|_| EnvelopeError::BadKeySignature)?;
        let encapsulation_key = x_wing::EncapsulationKey::try_from(&public[..])
            .map_err(|_| EnvelopeError::MalformedKey)?;
        Ok(HybridPublicKey {
            identity_key,
            key_id,
            created_at_ms,
            public,
            encapsulation_key,
            signature,
        })
    }

    /// The identity (Ed25519 key) that signed this key.
    pub fn identity_key(&self) -> &[u8; KEY_LEN] {
        &self.identity_key
    }

    /// The short id envelopes name this key by.
    pub fn key_id(&self) -> [u8; 8] {
        self.key_id
    }

    /// When the key pair was made (ms since the Unix epoch).
    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    /// SHA-256 of the serialized key, for people to compare.
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(self.to_bytes()).into()
    }

    pub(crate) fn encapsulation_key(&self) -> &x_wing::EncapsulationKey {
        &self.encapsulation_key
    }
}

impl std::fmt::Debug for HybridPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridPublicKey")
            .field("key_id", &self.key_id)
            .field("created_at_ms", &self.created_at_ms)
            .finish()
    }
}
