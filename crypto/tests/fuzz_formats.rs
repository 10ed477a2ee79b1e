//! Fuzzed decoders of the client-side formats: whatever bytes arrive, opening a
//! hybrid envelope or a sealed-sender envelope, removing padding, reading a
//! published hybrid key, a commit's clear header or a KeyPackage returns a typed
//! error or a value, never panics. Stable Rust: proptest drives them; CI runs the
//! default case count, `scripts/fuzz.sh` many more (`PROPTEST_CASES`).

use proptest::prelude::*;
use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::envelope::{
    HybridKeyPair, HybridPublicKey, open, open_sealed_sender, seal, seal_sealed_sender, unpad,
};
use quicnprotochat_crypto::mls::{commit_header, validate_key_package};
use std::sync::OnceLock;

struct Keys {
    identity: Identity,
    keys: HybridKeyPair,
    public: HybridPublicKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let identity = Identity::generate();
        let keys = HybridKeyPair::generate(1_700_000_000_000);
        let public = HybridPublicKey::verify(
            &keys.signed_public(&identity).to_bytes(),
            &identity.public_key(),
        )
        .unwrap();
        Keys {
            identity,
            keys,
            public,
        }
    })
}

/// Arbitrary bytes, biased towards the lengths the formats care about.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 1100..1300),
        proptest::collection::vec(any::<u8>(), 0..4096),
    ]
}

proptest! {
    #[test]
    fn opening_arbitrary_bytes_never_panics(data in bytes()) {
        let k = keys();
        prop_assert!(open(&k.keys, &data, b"aad").is_err());
        prop_assert!(open_sealed_sender(&k.identity.public_key(), &k.keys, &data).is_err());
        let _ = unpad(&data);
        let _ = HybridPublicKey::verify(&data, &k.identity.public_key());
        let _ = commit_header(&data);
        let _ = validate_key_package(&data);
    }

    /// A real envelope with bytes changed or cut is refused, never opened.
    #[test]
    fn a_tampered_envelope_is_refused(
        plaintext in proptest::collection::vec(any::<u8>(), 0..512),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        cut in any::<bool>(),
    ) {
        let k = keys();
        let mut env = seal(&k.public, &plaintext, b"aad");
        let i = at.index(env.len());
        if cut {
            env.truncate(i);
        } else {
            env[i] ^= flip;
        }
        prop_assert!(open(&k.keys, &env, b"aad").is_err());
        let mut sealed = seal_sealed_sender(&k.identity, &k.public, &plaintext, 1);
        let j = at.index(sealed.len());
        sealed[j] ^= flip;
        prop_assert!(open_sealed_sender(&k.identity.public_key(), &k.keys, &sealed).is_err());
    }
}
