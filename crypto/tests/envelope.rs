//! The hybrid envelope and sealed sender: round trips, and every kind of tampering,
//! truncation, swapped component, wrong key or replayed signature context refused
//! with a typed error.

use proptest::prelude::*;
use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::envelope::{
    ENVELOPE_OVERHEAD, EnvelopeError, HybridKeyPair, HybridPublicKey, SEALED_SENDER_AAD, open,
    open_sealed_sender, padded_len, seal, seal_sealed_sender,
};

struct Recipient {
    identity: Identity,
    keys: HybridKeyPair,
    public: HybridPublicKey,
}

fn recipient() -> Recipient {
    let identity = Identity::generate();
    let keys = HybridKeyPair::generate(1_700_000_000_000);
    let published = keys.signed_public(&identity).to_bytes();
    let public = HybridPublicKey::verify(&published, &identity.public_key()).unwrap();
    Recipient {
        identity,
        keys,
        public,
    }
}

#[test]
fn seal_open_round_trip_with_padding_to_buckets() {
    let r = recipient();
    for len in [0usize, 1, 252, 253, 1024, 70_000] {
        let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let env = seal(&r.public, &plaintext, b"aad");
        assert_eq!(env.len(), ENVELOPE_OVERHEAD + padded_len(len));
        assert_eq!(open(&r.keys, &env, b"aad").unwrap(), plaintext);
    }
    // Two seals of the same plaintext differ (fresh encapsulation each time).
    assert_ne!(seal(&r.public, b"x", b""), seal(&r.public, b"x", b""));
}

#[test]
fn published_keys_verify_only_for_their_identity_and_unchanged() {
    let r = recipient();
    let bytes = r.keys.signed_public(&r.identity).to_bytes();
    let other = Identity::generate();
    assert_eq!(
        HybridPublicKey::verify(&bytes, &other.public_key()).unwrap_err(),
        EnvelopeError::WrongIdentity
    );
    for i in [0usize, 5, 40, 48, 60, 500, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[i] ^= 1;
        assert!(
            HybridPublicKey::verify(&bad, &r.identity.public_key()).is_err(),
            "flip at {i}"
        );
    }
    assert_eq!(
        HybridPublicKey::verify(&bytes[1..], &r.identity.public_key()).unwrap_err(),
        EnvelopeError::MalformedKey
    );
    // A key signed by someone else but claiming this identity.
    let forged = r.keys.signed_public(&other).to_bytes();
    let mut claimed = forged.clone();
    claimed[1..33].copy_from_slice(&r.identity.public_key());
    assert_eq!(
        HybridPublicKey::verify(&claimed, &r.identity.public_key()).unwrap_err(),
        EnvelopeError::BadKeySignature
    );
}

#[test]
fn sealed_sender_reveals_and_verifies_the_sender_only_inside() {
    let alice = Identity::generate();
    let bob = recipient();
    let env = seal_sealed_sender(&alice, &bob.public, b"hi bob", 42);
    let opened = open_sealed_sender(&bob.identity.public_key(), &bob.keys, &env).unwrap();
    assert_eq!(opened.sender, alice.public_key());
    assert_eq!(opened.timestamp_ms, 42);
    assert_eq!(opened.payload, b"hi bob");
    // The sender's key is nowhere in the envelope's bytes.
    let pk = alice.public_key();
    assert!(!env.windows(pk.len()).any(|w| w == pk));
}

#[test]
fn a_sealed_sender_message_replayed_to_another_recipient_is_refused() {
    let alice = Identity::generate();
    let mallory = recipient();
    let bob = recipient();
    let env = seal_sealed_sender(&alice, &mallory.public, b"for mallory only", 7);
    // mallory opens the outer layer and re-seals alice's signed inner message to bob.
    let inner = open(&mallory.keys, &env, SEALED_SENDER_AAD).unwrap();
    let replayed = seal(&bob.public, &inner, SEALED_SENDER_AAD);
    assert_eq!(
        open_sealed_sender(&bob.identity.public_key(), &bob.keys, &replayed).unwrap_err(),
        EnvelopeError::BadSenderSignature
    );
    // A sealed-sender envelope does not open as a plain one, nor the reverse.
    assert_eq!(
        open(&mallory.keys, &env, b"").unwrap_err(),
        EnvelopeError::Decrypt
    );
    let plain = seal(&bob.public, &inner, b"");
    assert_eq!(
        open_sealed_sender(&bob.identity.public_key(), &bob.keys, &plain).unwrap_err(),
        EnvelopeError::Decrypt
    );
}

#[derive(Debug, Clone)]
enum Tamper {
    Flip(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Extend(u8),
    WrongAad,
    WrongRecipient,
    WrongRecipientSameKeyId,
    SwapKemCiphertext,
    SwapBody,
    Version(u8),
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, b)| Tamper::Flip(i, b)),
        2 => any::<prop::sample::Index>().prop_map(Tamper::Truncate),
        1 => any::<u8>().prop_map(Tamper::Extend),
        1 => Just(Tamper::WrongAad),
        1 => Just(Tamper::WrongRecipient),
        1 => Just(Tamper::WrongRecipientSameKeyId),
        1 => Just(Tamper::SwapKemCiphertext),
        1 => Just(Tamper::SwapBody),
        1 => (2u8..=255).prop_map(Tamper::Version),
    ]
}

const HEADER: usize = 1 + 8 + 1120;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn every_tampering_is_refused(
        plaintext in proptest::collection::vec(any::<u8>(), 0..600),
        aad in proptest::collection::vec(any::<u8>(), 0..16),
        how in tamper(),
    ) {
        let r = recipient();
        let env = seal(&r.public, &plaintext, &aad);
        prop_assert_eq!(open(&r.keys, &env, &aad).unwrap(), plaintext.clone());
        let other = recipient();
        let (keys, bad, bad_aad): (&HybridKeyPair, Vec<u8>, Vec<u8>) = match how {
            Tamper::Flip(i, bits) => {
                let mut b = env.clone();
                b[i.index(env.len())] ^= bits;
                (&r.keys, b, aad.clone())
            }
            Tamper::Truncate(i) => (&r.keys, env[..i.index(env.len())].to_vec(), aad.clone()),
            Tamper::Extend(byte) => {
                let mut b = env.clone();
                b.push(byte);
                (&r.keys, b, aad.clone())
            }
            Tamper::WrongAad => {
                let mut a = aad.clone();
                a.push(1);
                (&r.keys, env.clone(), a)
            }
            Tamper::WrongRecipient => (&other.keys, env.clone(), aad.clone()),
            Tamper::WrongRecipientSameKeyId => {
                let mut b = env.clone();
                b[1..9].copy_from_slice(&other.keys.key_id());
                (&other.keys, b, aad.clone())
            }
            Tamper::SwapKemCiphertext => {
                let second = seal(&r.public, &plaintext, &aad);
                let mut b = env.clone();
                b[9..HEADER].copy_from_slice(&second[9..HEADER]);
                (&r.keys, b, aad.clone())
            }
            Tamper::SwapBody => {
                let second = seal(&r.public, &plaintext, &aad);
                let mut b = env[..HEADER].to_vec();
                b.extend_from_slice(&second[HEADER..]);
                (&r.keys, b, aad.clone())
            }
            Tamper::Version(v) => {
                let mut b = env.clone();
                b[0] = v;
                (&r.keys, b, aad.clone())
            }
        };
        let result = open(keys, &bad, &bad_aad);
        prop_assert!(result.is_err(), "tampered envelope opened: {:?}", result);
        // The error is typed and says the right kind of thing.
        let e = result.unwrap_err();
        prop_assert!(matches!(
            e,
            EnvelopeError::Decrypt | EnvelopeError::Truncated | EnvelopeError::WrongKey
                | EnvelopeError::UnsupportedVersion(_) | EnvelopeError::BadPadding
        ), "{:?}", e);
    }
}

#[test]
fn private_key_material_stays_out_of_debug_output() {
    let keys = HybridKeyPair::from_seed([0x5a; 32], 0);
    let shown = format!("{keys:?}");
    assert!(shown.contains("redacted"));
    assert!(!shown.contains("5a, 5a") && !shown.contains("5a5a") && !shown.contains("90, 90"));
    let id = Identity::generate();
    assert!(!format!("{:?}", keys.signed_public(&id)).contains("signature"));
}
