//! What an MLS application message carries: the text, and the message's id.
//!
//! The id is the sender's, chosen once when the message enters its outbox and
//! kept across retries: a message re-encrypted and sent again after a lost
//! answer has a new ciphertext but the same id, and receivers show it once.
//!
//! Wire form: `0xFF, version, id (16 bytes), text (UTF-8)`. Versions before
//! this one sent the bare UTF-8 text, which never starts with `0xFF` (no UTF-8
//! text does), so both are read.

/// First byte of a versioned application message (never the first byte of
/// UTF-8 text).
const MARK: u8 = 0xFF;
/// This format's version.
const VERSION: u8 = 1;

/// A message's id: random, chosen by its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh random id.
    pub fn random() -> MessageId {
        let token = quicnprotochat_crypto::token::generate_token();
        let mut id = [0u8; 16];
        id.copy_from_slice(&token[..16]);
        MessageId(id)
    }

    /// Hex, for people and scripts.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// The key under which a receiver remembers having shown message `id` of
/// group `group_id` from member `sender` (beside the digests of processed
/// ciphertexts; the prefix keeps the two apart). The sender is part of it: a
/// member reusing another's id hides nothing of the other's.
pub fn seen_key(group_id: &[u8], sender: &[u8], id: MessageId) -> [u8; 32] {
    let mut bytes = Vec::with_capacity(48 + group_id.len() + sender.len() + 16);
    bytes.extend_from_slice(b"quicnprotochat message id");
    for part in [group_id, sender] {
        bytes.extend_from_slice(&(part.len() as u64).to_be_bytes());
        bytes.extend_from_slice(part);
    }
    bytes.extend_from_slice(&id.0);
    quicnprotochat_crypto::digest(&bytes)
}

/// An application message as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppContent {
    /// Text with its id.
    Text {
        /// The sender's id for it.
        id: MessageId,
        /// What it says.
        text: String,
    },
    /// Text from a version before ids (no id: never recognised as a repeat).
    Legacy(String),
    /// A later version this build cannot read (which).
    Unknown(u8),
}

/// The plaintext of a text message with `id`.
pub fn encode_text(id: MessageId, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 16 + text.len());
    out.push(MARK);
    out.push(VERSION);
    out.extend_from_slice(&id.0);
    out.extend_from_slice(text.as_bytes());
    out
}

/// Reads a plaintext; bytes that are no message at all read as legacy text
/// (lossily), as earlier versions showed them.
pub fn decode(plaintext: &[u8]) -> AppContent {
    match plaintext {
        [MARK, VERSION, rest @ ..] if rest.len() >= 16 => {
            let (id, text) = rest.split_at(16);
            AppContent::Text {
                id: MessageId(id.try_into().expect("16 bytes")),
                text: String::from_utf8_lossy(text).into_owned(),
            }
        }
        [MARK, version, ..] if *version != VERSION => AppContent::Unknown(*version),
        _ => AppContent::Legacy(String::from_utf8_lossy(plaintext).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_text_message_reads_back_with_its_id() {
        let id = MessageId([7; 16]);
        assert_eq!(
            decode(&encode_text(id, "hello")),
            AppContent::Text {
                id,
                text: "hello".into()
            }
        );
    }

    #[test]
    fn an_older_versions_bare_text_reads_as_legacy_and_a_newer_version_as_unknown() {
        assert_eq!(decode(b"hi"), AppContent::Legacy("hi".into()));
        assert_eq!(decode(&[MARK, 9, 1, 2]), AppContent::Unknown(9));
    }

    proptest! {
        #[test]
        fn no_text_is_mistaken_for_a_versioned_message(text in ".*") {
            prop_assert_eq!(decode(text.as_bytes()), AppContent::Legacy(text.clone()));
        }

        #[test]
        fn every_text_and_id_round_trip(text in ".*", id in any::<[u8; 16]>()) {
            let id = MessageId(id);
            prop_assert_eq!(decode(&encode_text(id, &text)), AppContent::Text { id, text: text.clone() });
        }
    }
}
