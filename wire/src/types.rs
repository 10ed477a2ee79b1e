//! Typed values that cross the wire, so no other crate reads raw Cap'n Proto.

use crate::error::{ErrorCode, WireError};
use crate::node_capnp::envelope;

/// Length of an Ed25519 public key, which names an identity and its inbox.
pub const IDENTITY_KEY_LEN: usize = 32;

/// An identity's public key: the name of its inbox.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey(pub [u8; IDENTITY_KEY_LEN]);

impl IdentityKey {
    /// Reads an identity key from the wire; anything but 32 bytes is `BAD_REQUEST`.
    pub fn from_wire(bytes: &[u8], what: &str) -> Result<IdentityKey, WireError> {
        let arr: [u8; IDENTITY_KEY_LEN] = bytes.try_into().map_err(|_| {
            WireError::new(
                ErrorCode::BadRequest,
                format!(
                    "{what} must be a {IDENTITY_KEY_LEN}-byte identity key, got {} bytes",
                    bytes.len()
                ),
            )
        })?;
        Ok(IdentityKey(arr))
    }

    /// Lower-case hex, the form shown to people.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Public keys are not secret, but a short form keeps logs readable.
        write!(f, "IdentityKey({}…)", &self.to_hex()[..16])
    }
}

/// One stored message of an inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Its place in the inbox: gap-free, increasing, never reused.
    pub seq: u64,
    /// The payload as the sender gave it (for a shared envelope, the body all
    /// its recipients share; for a missed note, the note).
    pub data: Vec<u8>,
    /// What `data` is.
    pub kind: EnvelopeKind,
    /// For a shared envelope: this recipient's own part (may be empty).
    pub part: Vec<u8>,
}

/// What an envelope's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeKind {
    /// What a client enqueued for this inbox alone.
    Direct,
    /// A body stored once for many recipients.
    Shared,
    /// The node's note of messages it could not queue while the inbox was full.
    Missed,
}

/// An envelope's content, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// What a client enqueued for this inbox alone.
    Direct(&'a [u8]),
    /// A shared body with this recipient's part.
    Shared {
        /// This recipient's part (may be empty).
        part: &'a [u8],
        /// The shared body.
        body: &'a [u8],
    },
    /// Messages dropped for this inbox while it was full.
    Missed(crate::fanout::Missed),
}

impl Envelope {
    /// A client's message for this inbox alone.
    pub fn direct(seq: u64, data: Vec<u8>) -> Envelope {
        Envelope {
            seq,
            data,
            kind: EnvelopeKind::Direct,
            part: Vec::new(),
        }
    }

    /// A recipient's view of a shared body.
    pub fn shared(seq: u64, part: Vec<u8>, body: Vec<u8>) -> Envelope {
        Envelope {
            seq,
            data: body,
            kind: EnvelopeKind::Shared,
            part,
        }
    }

    /// The node's missed-messages note.
    pub fn missed(seq: u64, note: Vec<u8>) -> Envelope {
        Envelope {
            seq,
            data: note,
            kind: EnvelopeKind::Missed,
            part: Vec::new(),
        }
    }

    /// What the envelope carries, typed (a malformed note is an error).
    pub fn inbound(&self) -> Result<Inbound<'_>, WireError> {
        Ok(match self.kind {
            EnvelopeKind::Direct => Inbound::Direct(&self.data),
            EnvelopeKind::Shared => Inbound::Shared {
                part: &self.part,
                body: &self.data,
            },
            EnvelopeKind::Missed => Inbound::Missed(crate::fanout::Missed::decode(&self.data)?),
        })
    }

    /// Reads an envelope off the wire.
    pub fn read(reader: envelope::Reader<'_>) -> capnp::Result<Envelope> {
        use crate::node_capnp::EnvelopeKind as Wire;
        let kind = match reader.get_kind() {
            Ok(Wire::Direct) => EnvelopeKind::Direct,
            Ok(Wire::Shared) => EnvelopeKind::Shared,
            Ok(Wire::Missed) => EnvelopeKind::Missed,
            Err(_) => return Err(capnp::Error::failed("unknown envelope kind".into())),
        };
        Ok(Envelope {
            seq: reader.get_seq(),
            data: reader.get_data()?.to_vec(),
            kind,
            part: reader.get_part()?.to_vec(),
        })
    }

    /// Writes the envelope onto the wire.
    pub fn write(&self, mut builder: envelope::Builder<'_>) {
        use crate::node_capnp::EnvelopeKind as Wire;
        builder.set_seq(self.seq);
        builder.set_data(&self.data);
        builder.set_kind(match self.kind {
            EnvelopeKind::Direct => Wire::Direct,
            EnvelopeKind::Shared => Wire::Shared,
            EnvelopeKind::Missed => Wire::Missed,
        });
        if !self.part.is_empty() {
            builder.set_part(&self.part);
        }
    }
}

/// Reads a list of envelopes, checking the node kept its promise of strictly
/// increasing seqs.
pub fn read_envelopes(
    list: capnp::struct_list::Reader<'_, envelope::Owned>,
) -> Result<Vec<Envelope>, WireError> {
    let mut out = Vec::with_capacity(list.len() as usize);
    for r in list.iter() {
        let env = Envelope::read(r).map_err(|e| {
            WireError::new(ErrorCode::BadRequest, format!("malformed envelope: {e}"))
        })?;
        if let Some(prev) = out.last().map(|p: &Envelope| p.seq)
            && env.seq <= prev
        {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                format!("envelopes out of order: seq {} after {prev}", env.seq),
            ));
        }
        out.push(env);
    }
    Ok(out)
}
