//! Ed25519 identity keys. The public key names the identity and its inbox; later it
//! is also the MLS credential and leaf signature key.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

/// Length of a serialized secret key and of a public key.
pub const KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Why an identity key or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// A stored secret of the wrong length (a damaged profile).
    #[error("identity secret key must be {KEY_LEN} bytes, got {0}")]
    BadSecretLength(usize),
    /// A public key of the wrong length.
    #[error("public key must be {KEY_LEN} bytes, got {0}")]
    BadPublicKeyLength(usize),
    /// 32 bytes that are no Ed25519 public key.
    #[error("public key is not a valid Ed25519 point")]
    BadPublicKey,
    /// A signature of the wrong length.
    #[error("signature must be {SIGNATURE_LEN} bytes, got {0}")]
    BadSignatureLength(usize),
    /// A signature that does not verify.
    #[error("signature does not verify")]
    BadSignature,
}

/// An identity key pair. The secret never appears in `Debug` output.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
}

impl Identity {
    /// A fresh identity from the operating system's random source.
    pub fn generate() -> Identity {
        let mut rng = rand08::rngs::OsRng;
        Identity {
            signing: SigningKey::generate(&mut rng),
        }
    }

    /// Restores an identity from its 32-byte secret.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Identity, IdentityError> {
        let arr: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| IdentityError::BadSecretLength(bytes.len()))?;
        Ok(Identity {
            signing: SigningKey::from_bytes(&arr),
        })
    }

    /// The 32-byte secret, for storage; zeroed when dropped.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The public key: the identity as others know it.
    pub fn public_key(&self) -> [u8; KEY_LEN] {
        self.signing.verifying_key().to_bytes()
    }

    /// Signs `message` (Ed25519).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(message).to_bytes()
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &hex_prefix(&self.public_key()))
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        + "…"
}

/// Verifies a signature by `public_key` over `message`, strictly (no malleable or
/// small-order keys).
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), IdentityError> {
    let pk: [u8; KEY_LEN] = public_key
        .try_into()
        .map_err(|_| IdentityError::BadPublicKeyLength(public_key.len()))?;
    let key = VerifyingKey::from_bytes(&pk).map_err(|_| IdentityError::BadPublicKey)?;
    let sig: [u8; SIGNATURE_LEN] = signature
        .try_into()
        .map_err(|_| IdentityError::BadSignatureLength(signature.len()))?;
    let sig = Signature::from_bytes(&sig);
    key.verify_strict(message, &sig)
        .map_err(|_| IdentityError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_round_trips_and_debug_hides_it() {
        let id = Identity::generate();
        let back = Identity::from_secret_bytes(&id.secret_bytes()[..]).unwrap();
        assert_eq!(id.public_key(), back.public_key());
        let shown = format!("{id:?}");
        let secret_hex: String = id
            .secret_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!shown.contains(&secret_hex[..16]));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn signatures_verify_only_for_the_signed_message_and_key() {
        let id = Identity::generate();
        let other = Identity::generate();
        let sig = id.sign(b"hello");
        assert_eq!(verify(&id.public_key(), b"hello", &sig), Ok(()));
        assert_eq!(
            verify(&id.public_key(), b"hellp", &sig),
            Err(IdentityError::BadSignature)
        );
        assert_eq!(
            verify(&other.public_key(), b"hello", &sig),
            Err(IdentityError::BadSignature)
        );
        assert_eq!(
            verify(&id.public_key(), b"hello", &sig[..63]),
            Err(IdentityError::BadSignatureLength(63))
        );
        assert_eq!(
            verify(&[0u8; 31], b"hello", &sig),
            Err(IdentityError::BadPublicKeyLength(31))
        );
    }
}
