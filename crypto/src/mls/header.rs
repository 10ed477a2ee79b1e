//! What anyone, the delivery service included, can read of an MLS handshake
//! message without any group secret: the clear header of a PrivateMessage (or the
//! framing of a PublicMessage), and the group context of a GroupInfo. The node
//! uses them to check that a commit offered to its epoch fence, and the GroupInfo
//! published with it, are of the group and epoch the call names.

use openmls::prelude::tls_codec::Deserialize;
use openmls::prelude::{ContentType, MlsMessageBodyIn, MlsMessageIn};

use super::MlsError;

/// The clear header of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitHeader {
    /// The group the commit is for.
    pub group_id: Vec<u8>,
    /// The epoch it was made in.
    pub epoch: u64,
    /// Whether it is an external commit (RFC 9420 §12.4.3.2): a PublicMessage
    /// whose sender is `new_member_commit`, by which a device not yet in the
    /// group joins it from the group's published GroupInfo.
    pub external: bool,
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
        // Only a commit can be here, and the only external commit sender is
        // new_member_commit.
        external: msg.is_external(),
    })
}

/// The clear group context of a GroupInfo: which group, at which epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoHeader {
    /// The group it describes.
    pub group_id: Vec<u8>,
    /// The epoch it describes.
    pub epoch: u64,
}

/// Reads the group context of `bytes`, which must be exactly one MLS message
/// carrying a GroupInfo. Its signature is not checked (that needs the group's
/// tree): the joiner checks it.
pub fn group_info_header(bytes: &[u8]) -> Result<GroupInfoHeader, MlsError> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| MlsError::Malformed(e.to_string()))?;
    let MlsMessageBodyIn::GroupInfo(info) = msg.extract() else {
        return Err(MlsError::Malformed("not a GroupInfo".into()));
    };
    Ok(GroupInfoHeader {
        group_id: info.group_id().as_slice().to_vec(),
        epoch: info.epoch().as_u64(),
    })
}
