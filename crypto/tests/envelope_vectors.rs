//! Known-answer vectors for our envelope formats, checked in as JSON
//! (`tests/vectors/envelope.json`). Every input is fixed (seeds, randomness,
//! timestamps; Ed25519 signatures are deterministic), so the outputs must match
//! byte for byte: a change of format, KDF label, padding or signature input shows
//! up here. `QPC_REGEN_VECTORS=1 cargo test -p quicnprotochat-crypto --test
//! envelope_vectors` rewrites the file, which is only right after a deliberate
//! format change (with a version bump).

use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::envelope::{
    HybridKeyPair, HybridPublicKey, open, open_sealed_sender, seal_sealed_sender_with_randomness,
    seal_with_randomness,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct EnvelopeVector {
    identity_secret: String,
    hybrid_seed: String,
    created_at_ms: u64,
    signed_hybrid_key: String,
    plaintext: String,
    aad: String,
    randomness: String,
    envelope: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct SealedSenderVector {
    sender_secret: String,
    recipient_identity_secret: String,
    recipient_hybrid_seed: String,
    timestamp_ms: u64,
    payload: String,
    randomness: String,
    envelope: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Vectors {
    description: String,
    envelopes: Vec<EnvelopeVector>,
    sealed_sender: Vec<SealedSenderVector>,
}

fn fixed(label: &str, i: usize) -> [u8; 32] {
    Sha256::digest(format!("quicnprotochat kat {label} {i}")).into()
}

fn fixed64(label: &str, i: usize) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&fixed(&format!("{label} a"), i));
    out[32..].copy_from_slice(&fixed(&format!("{label} b"), i));
    out
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("hex")
}

fn generate() -> Vectors {
    let plaintexts: [&[u8]; 4] = [b"", b"hello", &[0xa5; 300], &[7; 5000]];
    let envelopes = plaintexts
        .iter()
        .enumerate()
        .map(|(i, plaintext)| {
            let identity = Identity::from_secret_bytes(&fixed("identity", i)).unwrap();
            let keys = HybridKeyPair::from_seed(fixed("hybrid", i), 1_700_000_000_000 + i as u64);
            let public = keys.signed_public(&identity);
            let aad = if i % 2 == 0 {
                Vec::new()
            } else {
                b"context".to_vec()
            };
            let randomness = fixed64("encap", i);
            EnvelopeVector {
                identity_secret: hex::encode(fixed("identity", i)),
                hybrid_seed: hex::encode(fixed("hybrid", i)),
                created_at_ms: keys.created_at_ms(),
                signed_hybrid_key: hex::encode(public.to_bytes()),
                plaintext: hex::encode(plaintext),
                aad: hex::encode(&aad),
                randomness: hex::encode(randomness),
                envelope: hex::encode(seal_with_randomness(&public, plaintext, &aad, &randomness)),
            }
        })
        .collect();
    let sealed_sender = (0..2)
        .map(|i| {
            let sender = Identity::from_secret_bytes(&fixed("sender", i)).unwrap();
            let recipient = Identity::from_secret_bytes(&fixed("recipient", i)).unwrap();
            let keys = HybridKeyPair::from_seed(fixed("recipient hybrid", i), 1_700_000_000_000);
            let public = keys.signed_public(&recipient);
            let payload = format!("sealed sender payload {i}").into_bytes();
            let randomness = fixed64("sealed encap", i);
            SealedSenderVector {
                sender_secret: hex::encode(fixed("sender", i)),
                recipient_identity_secret: hex::encode(fixed("recipient", i)),
                recipient_hybrid_seed: hex::encode(fixed("recipient hybrid", i)),
                timestamp_ms: 1_700_000_123_456 + i as u64,
                payload: hex::encode(&payload),
                randomness: hex::encode(randomness),
                envelope: hex::encode(seal_sealed_sender_with_randomness(
                    &sender,
                    &public,
                    &payload,
                    1_700_000_123_456 + i as u64,
                    &randomness,
                )),
            }
        })
        .collect();
    Vectors {
        description: "quicnprotochat envelope v1 and sealed sender v1 known-answer vectors; \
                      inputs are SHA-256 of fixed labels, see crypto/tests/envelope_vectors.rs"
            .into(),
        envelopes,
        sealed_sender,
    }
}

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/envelope.json");

#[test]
fn envelope_formats_match_the_checked_in_vectors() {
    let fresh = generate();
    if std::env::var_os("QPC_REGEN_VECTORS").is_some() {
        std::fs::write(PATH, serde_json::to_string_pretty(&fresh).unwrap() + "\n").unwrap();
        return;
    }
    let stored: Vectors = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    assert_eq!(stored.envelopes.len(), 4);
    assert_eq!(stored.sealed_sender.len(), 2);

    // The stored vectors open with nothing but their stated inputs...
    for v in &stored.envelopes {
        let identity = Identity::from_secret_bytes(&unhex(&v.identity_secret)).unwrap();
        let keys =
            HybridKeyPair::from_seed(unhex(&v.hybrid_seed).try_into().unwrap(), v.created_at_ms);
        let public =
            HybridPublicKey::verify(&unhex(&v.signed_hybrid_key), &identity.public_key()).unwrap();
        assert_eq!(public.key_id(), keys.key_id());
        assert_eq!(
            open(&keys, &unhex(&v.envelope), &unhex(&v.aad)).unwrap(),
            unhex(&v.plaintext)
        );
    }
    for v in &stored.sealed_sender {
        let sender = Identity::from_secret_bytes(&unhex(&v.sender_secret)).unwrap();
        let recipient = Identity::from_secret_bytes(&unhex(&v.recipient_identity_secret)).unwrap();
        let keys = HybridKeyPair::from_seed(unhex(&v.recipient_hybrid_seed).try_into().unwrap(), 0);
        let opened =
            open_sealed_sender(&recipient.public_key(), &keys, &unhex(&v.envelope)).unwrap();
        assert_eq!(opened.sender, sender.public_key());
        assert_eq!(opened.timestamp_ms, v.timestamp_ms);
        assert_eq!(opened.payload, unhex(&v.payload));
    }
    // ...and this code produces exactly them.
    assert_eq!(
        stored, fresh,
        "envelope format changed: bump its version and regenerate"
    );
}
