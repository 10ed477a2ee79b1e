//! What anyone, the delivery service included, can read of an MLS handshake
//! message without any group secret: the clear header of a PrivateMessage (or the
//! framing of a PublicMessage). The node uses it to check that a commit offered to
//! its epoch fence is a commit of the group and epoch the call names.

use openmls::prelude::tls_codec::Deserialize;
use openmls::prelude::{ContentType, MlsMessageIn};

use super::MlsError;

/// The clear header of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitHeader {
    /// The group the commit is for.
    pub group_id: Vec<u8>,
    /// The epoch it was made in.
    pub epoch: u64,
}

/// Reads the clear header of `bytes`, which must be exactly one MLS message
/// carrying a commit (PrivateMessage or PublicMessage).
pub fn commit_header(bytes: &[u8]) -> Result<CommitHeader, MlsError> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| MlsError::Malformed(e.to_string()))?;
    let msg = msg
        .try_into_protocol_message()
        .map_err(|_| MlsError::Malformed("not a PrivateMessage or PublicMessage".into()))?;
    if msg.content_type() != ContentType::Commit {
        return Err(MlsError::Malformed(format!(
            "a {:?} message, not a commit",
            msg.content_type()
        )));
    }
    Ok(CommitHeader {
        group_id: msg.group_id().as_slice().to_vec(),
        epoch: msg.epoch().as_u64(),
    })
}
