//! Secrets at rest: values a client profile keeps on disk (identity key, MLS
//! secrets, session token, hybrid key seed) are sealed with a 256-bit profile key
//! that lives outside the database, so a copy of the database alone (a backup, a
//! synced folder, a stolen file) reveals none of them.
//!
//! A sealed value is `MAGIC || nonce (24) || XChaCha20-Poly1305(value)`, with the
//! value's table and key as associated data, so a value moved to another key does
//! not open. Values written before sealing existed have no `MAGIC` (they are JSON
//! or raw key bytes, which never start with a zero byte) and are told apart by it.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand08::RngCore;
use zeroize::Zeroizing;

/// How every sealed value starts (a zero byte, which no legacy value starts with).
pub const MAGIC: &[u8; 4] = b"\0qs1";
const NONCE_LEN: usize = 24;
/// Length of a profile key.
pub const KEY_LEN: usize = 32;

/// Why a stored value did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AtRestError {
    /// Sealed, but not with this key, under another name, or damaged.
    #[error("a sealed value does not open with this profile key (wrong key file, or damaged)")]
    Open,
}

/// The key a profile's secrets are sealed with.
pub struct ProfileKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for ProfileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProfileKey(<secret>)")
    }
}

impl ProfileKey {
    /// A fresh random key.
    pub fn generate() -> ProfileKey {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rand08::rngs::OsRng.fill_bytes(&mut k[..]);
        ProfileKey(k)
    }

    /// A key from its bytes (as kept in a key file).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> ProfileKey {
        ProfileKey(Zeroizing::new(bytes))
    }

    /// The key's bytes, to write to its key file.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.0.clone()
    }

    /// Seals `value` stored under `name` (table and key).
    pub fn seal(&self, name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand08::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = XChaCha20Poly1305::new((&*self.0).into());
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: name,
                },
            )
            .expect("XChaCha20-Poly1305 seals any length we store");
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// An identifier for `content` that depends on the content and this key
    /// only: equal contents get equal ids within one profile (so stored pieces
    /// can be shared), and without the key an id confirms no guess about the
    /// content. HMAC-SHA-256 under a key derived from the profile key for this use.
    pub fn content_id(&self, content: &[u8]) -> [u8; 32] {
        use hkdf::Hkdf;
        use sha2::Sha256;
        let mut derived = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(None, &self.0[..])
            .expand(b"quicnprotochat profile content id", &mut derived[..])
            .expect("32 bytes is a valid HKDF-SHA-256 output length");
        let (id, _) = Hkdf::<Sha256>::extract(Some(&derived[..]), content);
        id.into()
    }

    /// Opens a value stored under `name`: a sealed one is decrypted and checked,
    /// a legacy (unsealed) one is returned as it is.
    pub fn open(&self, name: &[u8], stored: &[u8]) -> Result<Zeroizing<Vec<u8>>, AtRestError> {
        if !is_sealed(stored) {
            return Ok(Zeroizing::new(stored.to_vec()));
        }
        let rest = &stored[MAGIC.len()..];
        if rest.len() < NONCE_LEN {
            return Err(AtRestError::Open);
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new((&*self.0).into());
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: name,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| AtRestError::Open)
    }
}

/// Whether a stored value is sealed (rather than written by an older version).
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ids_are_equal_for_equal_content_and_depend_on_the_key() {
        let (a, b) = (ProfileKey::generate(), ProfileKey::generate());
        assert_eq!(a.content_id(b"chunk"), a.content_id(b"chunk"));
        assert_ne!(a.content_id(b"chunk"), a.content_id(b"chunk!"));
        assert_ne!(a.content_id(b"chunk"), b.content_id(b"chunk"));
    }
    use proptest::prelude::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_name() {
        let key = ProfileKey::generate();
        let sealed = key.seal(b"identity/ed25519_secret", b"secret");
        assert!(is_sealed(&sealed));
        assert_eq!(
            &key.open(b"identity/ed25519_secret", &sealed).unwrap()[..],
            b"secret"
        );
        assert_eq!(key.open(b"login/token", &sealed), Err(AtRestError::Open));
        assert_eq!(
            ProfileKey::generate().open(b"identity/ed25519_secret", &sealed),
            Err(AtRestError::Open)
        );
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert_eq!(
            key.open(b"identity/ed25519_secret", &damaged),
            Err(AtRestError::Open)
        );
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn legacy_values_pass_through_unchanged() {
        let key = ProfileKey::generate();
        for legacy in [&b"{\"json\":1}"[..], b"[1,2]", &[7u8; 32], b""] {
            assert!(!is_sealed(legacy));
            assert_eq!(&key.open(b"n", legacy).unwrap()[..], legacy);
        }
    }

    proptest! {
        #[test]
        fn any_value_round_trips_and_garbage_never_panics(
            value in proptest::collection::vec(any::<u8>(), 0..2048),
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let key = ProfileKey::generate();
            let sealed = key.seal(b"t/k", &value);
            prop_assert_eq!(&key.open(b"t/k", &sealed).unwrap()[..], &value[..]);
            let mut g = MAGIC.to_vec();
            g.extend_from_slice(&garbage);
            prop_assert!(key.open(b"t/k", &g).is_err());
        }
    }
}
