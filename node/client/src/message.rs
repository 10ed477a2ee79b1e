//! What travels inside a sealed envelope between clients: an MLS message (or a
//! Welcome) for one group, the sender's claimed username, and roster entries that
//! tell members who a new member is and how to seal to it.
//!
//! The envelope around it (crypto crate) authenticates the sending device; the MLS
//! message inside authenticates the group member. Usernames here are claims made by
//! group members, shown as such; hybrid keys are signed by the identity they name,
//! so a roster entry cannot point a member at someone else's key.

/// Format version; anything else is refused.
const VERSION: u8 = 1;

/// What a client message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A Welcome into a group (we were added).
    Welcome,
    /// An MLS message of the group: application message, commit or proposal.
    Group,
    /// Our own commit made at `epoch` was accepted: the node stores this receipt in
    /// our inbox in the same transaction as the commit's deliveries, so a client
    /// that crashed before learning the outcome can still apply its commit.
    /// The node's receipt for the committer's own accepted commit.
    CommitReceipt {
        /// The epoch the commit was made in.
        epoch: u64,
    },
}

/// A member as the sender knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterEntry {
    /// The device's identity key.
    pub identity: [u8; 32],
    /// The username its owner claims.
    pub username: String,
    /// The member device's signed hybrid (X-Wing) public key.
    pub hybrid_key: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// What one group payload carries inside its X-Wing seal.
pub struct ClientMessage {
    /// What kind of message this is.
    pub body: Body,
    /// The MLS group it belongs to.
    pub group_id: Vec<u8>,
    /// The MLS message (empty for a receipt).
    pub mls: Vec<u8>,
    /// The username the sender goes by.
    pub sender_name: String,
    /// The sender's view of who is who (identity, name, hybrid key).
    pub roster: Vec<RosterEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
/// Why bytes are not a client message.
pub enum MessageError {
    #[error("message truncated")]
    /// The bytes end early.
    Truncated,
    #[error("unsupported message version {0}")]
    /// A format version this build does not know.
    Version(u8),
    #[error("unknown message kind {0}")]
    /// A message kind this build does not know.
    Kind(u8),
    #[error("field too long to encode")]
    /// A field longer than its length prefix allows.
    TooLong,
    #[error("text is not UTF-8")]
    /// A name that is not UTF-8.
    Utf8,
    #[error("trailing bytes after the message")]
    /// Bytes after the message.
    Trailing,
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), MessageError> {
    let len = u32::try_from(bytes.len()).map_err(|_| MessageError::TooLong)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        if self.0.len() < n {
            return Err(MessageError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, MessageError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, MessageError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn bytes(&mut self) -> Result<&'a [u8], MessageError> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes"));
        self.take(len as usize)
    }

    fn text(&mut self) -> Result<String, MessageError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| MessageError::Utf8)
    }
}

impl ClientMessage {
    /// The message's wire form.
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        let mut out = Vec::with_capacity(64 + self.mls.len());
        out.push(VERSION);
        match self.body {
            Body::Welcome => out.push(1),
            Body::Group => out.push(2),
            Body::CommitReceipt { epoch } => {
                out.push(3);
                out.extend_from_slice(&epoch.to_be_bytes());
            }
        }
        put(&mut out, &self.group_id)?;
        put(&mut out, &self.mls)?;
        put(&mut out, self.sender_name.as_bytes())?;
        let count = u32::try_from(self.roster.len()).map_err(|_| MessageError::TooLong)?;
        out.extend_from_slice(&count.to_be_bytes());
        for e in &self.roster {
            out.extend_from_slice(&e.identity);
            put(&mut out, e.username.as_bytes())?;
            put(&mut out, &e.hybrid_key)?;
        }
        Ok(out)
    }

    /// Reads a message; exactly the bytes of one, no more.
    pub fn decode(bytes: &[u8]) -> Result<ClientMessage, MessageError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(MessageError::Version(version));
        }
        let body = match r.u8()? {
            1 => Body::Welcome,
            2 => Body::Group,
            3 => Body::CommitReceipt { epoch: r.u64()? },
            k => return Err(MessageError::Kind(k)),
        };
        let group_id = r.bytes()?.to_vec();
        let mls = r.bytes()?.to_vec();
        let sender_name = r.text()?;
        let count = u32::from_be_bytes(r.take(4)?.try_into().expect("4 bytes"));
        let mut roster = Vec::new();
        for _ in 0..count {
            let identity: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
            let username = r.text()?;
            let hybrid_key = r.bytes()?.to_vec();
            roster.push(RosterEntry {
                identity,
                username,
                hybrid_key,
            });
        }
        if !r.0.is_empty() {
            return Err(MessageError::Trailing);
        }
        Ok(ClientMessage {
            body,
            group_id,
            mls,
            sender_name,
            roster,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_message() -> impl Strategy<Value = ClientMessage> {
        (
            prop_oneof![
                Just(Body::Welcome),
                Just(Body::Group),
                any::<u64>().prop_map(|epoch| Body::CommitReceipt { epoch })
            ],
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(any::<u8>(), 0..200),
            "[a-z]{0,12}",
            proptest::collection::vec(
                (
                    any::<[u8; 32]>(),
                    "[a-z]{0,8}",
                    proptest::collection::vec(any::<u8>(), 0..50),
                ),
                0..4,
            ),
        )
            .prop_map(|(body, group_id, mls, sender_name, roster)| ClientMessage {
                body,
                group_id,
                mls,
                sender_name,
                roster: roster
                    .into_iter()
                    .map(|(identity, username, hybrid_key)| RosterEntry {
                        identity,
                        username,
                        hybrid_key,
                    })
                    .collect(),
            })
    }

    proptest! {
        /// The fuzz target of the format: arbitrary bytes are a value or a typed
        /// error, never a panic (`scripts/fuzz.sh` runs many more cases).
        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = ClientMessage::decode(&data);
        }

        #[test]
        fn round_trips(m in arb_message()) {
            prop_assert_eq!(ClientMessage::decode(&m.encode().unwrap()).unwrap(), m);
        }

        #[test]
        fn truncation_and_garbage_are_typed_errors(m in arb_message(), cut in any::<prop::sample::Index>(), junk in proptest::collection::vec(any::<u8>(), 0..64)) {
            let bytes = m.encode().unwrap();
            let cut = cut.index(bytes.len());
            prop_assert!(ClientMessage::decode(&bytes[..cut]).is_err());
            let _ = ClientMessage::decode(&junk);
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert_eq!(ClientMessage::decode(&longer), Err(MessageError::Trailing));
        }
    }
}
