//! The challenge–response that proves an identity on one connection.
//!
//! The node hands out a fresh random nonce; the client signs a transcript of a
//! domain-separation label, the nonce, its own public key and a channel binding: a
//! secret both ends export from this connection's TLS session (RFC 5705/8446
//! exporter). A signature is therefore useless on any other connection, even one to
//! the same node made by a relaying attacker.

use crate::identity::{self, IdentityError};

/// Length of the node's challenge nonce.
pub const AUTH_NONCE_LEN: usize = 32;
/// Length of the TLS exporter secret used as channel binding.
pub const CHANNEL_BINDING_LEN: usize = 32;
/// Label for the TLS exporter, shared by client and node.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-quicnprotochat-auth";

const TRANSCRIPT_LABEL: &[u8] = b"quicnprotochat/auth/v1";

/// A fresh challenge nonce from the operating system's random source.
pub fn fresh_nonce() -> [u8; AUTH_NONCE_LEN] {
    use rand08::RngCore;
    let mut nonce = [0u8; AUTH_NONCE_LEN];
    rand08::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

/// The bytes a client signs to authenticate on a connection.
pub fn auth_transcript(
    nonce: &[u8; AUTH_NONCE_LEN],
    identity_key: &[u8; identity::KEY_LEN],
    channel_binding: &[u8; CHANNEL_BINDING_LEN],
) -> Vec<u8> {
    let mut t = Vec::with_capacity(TRANSCRIPT_LABEL.len() + 1 + 32 * 3);
    t.extend_from_slice(TRANSCRIPT_LABEL);
    t.push(0);
    t.extend_from_slice(nonce);
    t.extend_from_slice(identity_key);
    t.extend_from_slice(channel_binding);
    t
}

/// Checks a client's answer to the challenge.
pub fn verify_authentication(
    nonce: &[u8; AUTH_NONCE_LEN],
    identity_key: &[u8; identity::KEY_LEN],
    channel_binding: &[u8; CHANNEL_BINDING_LEN],
    signature: &[u8],
) -> Result<(), IdentityError> {
    let transcript = auth_transcript(nonce, identity_key, channel_binding);
    identity::verify(identity_key, &transcript, signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_change_to_the_transcript_inputs_fails(nonce in any::<[u8; 32]>(), binding in any::<[u8; 32]>(), flip in 0usize..64) {
            let id = Identity::generate();
            let pk = id.public_key();
            let sig = id.sign(&auth_transcript(&nonce, &pk, &binding));
            prop_assert!(verify_authentication(&nonce, &pk, &binding, &sig).is_ok());
            let (mut n2, mut b2) = (nonce, binding);
            if flip < 32 { n2[flip] ^= 1 } else { b2[flip - 32] ^= 1 }
            prop_assert!(verify_authentication(&n2, &pk, &b2, &sig).is_err());
            let other = Identity::generate().public_key();
            prop_assert!(verify_authentication(&nonce, &other, &binding, &sig).is_err());
        }
    }
}
