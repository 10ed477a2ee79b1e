//! X-Wing known-answer vectors (draft-connolly-cfrg-xwing-kem, vendored in
//! `tests/vectors/x-wing/`, provenance in its README) through our envelope's use
//! of the KEM: the hybrid key made from the vector's seed has the vector's public
//! key, an envelope sealed with the vector's encapsulation randomness carries the
//! vector's ciphertext, our decapsulation of it yields the vector's shared
//! secret, and the envelope opens.

use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::envelope::{HybridKeyPair, kem_parts, open, seal_with_randomness};
use serde::Deserialize;

#[derive(Deserialize)]
struct Kat {
    seed: String,
    eseed: String,
    ss: String,
    sk: String,
    pk: String,
    ct: String,
}

fn hex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("hex")
}

#[test]
fn our_envelope_uses_x_wing_exactly_as_the_draft_s_vectors_say() {
    let path = format!(
        "{}/tests/vectors/x-wing/test-vectors.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let kats: Vec<Kat> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(kats.len(), 3);
    let identity = Identity::generate();
    for (i, kat) in kats.iter().enumerate() {
        let seed: [u8; 32] = hex(&kat.seed).try_into().unwrap();
        assert_eq!(
            hex(&kat.sk),
            seed,
            "#{i}: the decapsulation key is the seed"
        );
        let keypair = HybridKeyPair::from_seed(seed, 0);
        assert_eq!(
            keypair.public_bytes().to_vec(),
            hex(&kat.pk),
            "#{i}: public key"
        );

        let randomness: [u8; 64] = hex(&kat.eseed).try_into().unwrap();
        let public = keypair.signed_public(&identity);
        let envelope = seal_with_randomness(&public, b"kat", b"aad", &randomness);
        let (ct, ss) = kem_parts(&keypair, &envelope).unwrap();
        assert_eq!(ct, hex(&kat.ct), "#{i}: ciphertext");
        assert_eq!(ss.to_vec(), hex(&kat.ss), "#{i}: shared secret");
        assert_eq!(open(&keypair, &envelope, b"aad").unwrap(), b"kat");
    }
}
