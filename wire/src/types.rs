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
    /// The payload as the sender gave it.
    pub data: Vec<u8>,
}

impl Envelope {
    /// Reads an envelope off the wire.
    pub fn read(reader: envelope::Reader<'_>) -> capnp::Result<Envelope> {
        Ok(Envelope {
            seq: reader.get_seq(),
            data: reader.get_data()?.to_vec(),
        })
    }

    /// Writes the envelope onto the wire.
    pub fn write(&self, mut builder: envelope::Builder<'_>) {
        builder.set_seq(self.seq);
        builder.set_data(&self.data);
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
