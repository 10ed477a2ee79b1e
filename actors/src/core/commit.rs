//! What a `commit` call must be before the group's fence is even asked: rules on
//! the call itself, with no state and no I/O (the fence's own rules are in
//! [`super::epoch`]).

use std::collections::BTreeSet;

use quicnprotochat_crypto::mls::CommitHeader;
use quicnprotochat_wire::ErrorCode;
use quicnprotochat_wire::limits::{MAX_DELIVERIES, MAX_GROUP_INFO};

/// Longest group id the node keeps (MLS group ids are usually 16–32 bytes).
pub const MAX_GROUP_ID_LEN: usize = 256;

/// Why a commit call is malformed: the caller's doing; nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitCallRefusal {
    #[error("groupId must be 1 to {MAX_GROUP_ID_LEN} bytes")]
    /// The group id is empty or too long.
    GroupIdLength,
    #[error("at most {MAX_DELIVERIES} members")]
    /// More members than one call may name.
    TooManyMembers,
    #[error("members must name the group's members after the commit, the committer among them")]
    /// The members do not include the committer.
    CommitterNotAMember,
    #[error("mlsCommit is missing: a commit call carries the MLS commit it offers")]
    /// The call carries no MLS commit.
    MissingCommit,
    #[error("mlsCommit: {0}")]
    /// The MLS commit does not parse (why).
    MalformedCommit(String),
    #[error(
        "mlsCommit is a commit of another group or epoch (its header says epoch {header_epoch}, the call {call_epoch})"
    )]
    /// The commit's clear header names another group or epoch than the call.
    HeaderMismatch {
        /// The epoch in the commit's header.
        header_epoch: u64,
        /// The epoch the call named.
        call_epoch: u64,
    },
    #[error("groupInfo is larger than {MAX_GROUP_INFO} bytes")]
    /// The published GroupInfo is too large to keep.
    GroupInfoTooLarge,
    #[error(
        "groupInfo is {len} bytes; a group of {members} registered member(s) may keep at most \
         {allowance} (a GroupInfo grows with its members, ~1.4 KiB each)"
    )]
    /// The GroupInfo is larger than its group's size explains: a device
    /// could otherwise keep a MiB on the node for every group it creates.
    GroupInfoOverQuota {
        /// Its size.
        len: usize,
        /// The registered members the commit names.
        members: usize,
        /// What a group of that size may keep.
        allowance: usize,
    },
    #[error("groupInfo: {0}")]
    /// The published GroupInfo does not parse (why).
    MalformedGroupInfo(String),
    #[error(
        "groupInfo describes another group or epoch (epoch {info_epoch}; the commit leads to {next_epoch})"
    )]
    /// The published GroupInfo is not of the group at the epoch the commit leads to.
    GroupInfoMismatch {
        /// The epoch the GroupInfo describes.
        info_epoch: u64,
        /// The epoch the commit leads to.
        next_epoch: u64,
    },
}

impl CommitCallRefusal {
    /// The wire code the caller gets: its size (`TOO_LARGE`), its account's
    /// quota (`QUOTA_EXCEEDED`) or its content (`BAD_REQUEST`).
    pub fn code(&self) -> ErrorCode {
        match self {
            CommitCallRefusal::TooManyMembers | CommitCallRefusal::GroupInfoTooLarge => {
                ErrorCode::TooLarge
            }
            CommitCallRefusal::GroupInfoOverQuota { .. } => ErrorCode::QuotaExceeded,
            CommitCallRefusal::GroupIdLength
            | CommitCallRefusal::CommitterNotAMember
            | CommitCallRefusal::MissingCommit
            | CommitCallRefusal::MalformedCommit(_)
            | CommitCallRefusal::HeaderMismatch { .. }
            | CommitCallRefusal::MalformedGroupInfo(_)
            | CommitCallRefusal::GroupInfoMismatch { .. } => ErrorCode::BadRequest,
        }
    }
}

/// What a GroupInfo may take for a group of `registered_members`: a fixed part
/// and a share per member generous for the post-quantum suite's leaves and
/// parent nodes (measured: ~1.4 KiB per member), up to [`MAX_GROUP_INFO`].
pub fn group_info_allowance(registered_members: usize) -> usize {
    const FIXED: usize = 8 * 1024;
    const PER_MEMBER: usize = 4 * 1024;
    FIXED
        .saturating_add(PER_MEMBER.saturating_mul(registered_members))
        .min(MAX_GROUP_INFO)
}

/// Whether a GroupInfo of `len` bytes fits a group of `registered_members`
/// (the members the commit names that are registered devices: naming
/// strangers' keys buys no room).
pub fn check_group_info_quota(
    len: usize,
    registered_members: usize,
) -> Result<(), CommitCallRefusal> {
    let allowance = group_info_allowance(registered_members);
    if len > allowance {
        return Err(CommitCallRefusal::GroupInfoOverQuota {
            len,
            members: registered_members,
            allowance,
        });
    }
    Ok(())
}

/// The group id must be 1 to [`MAX_GROUP_ID_LEN`] bytes.
pub fn check_group_id(group_id: &[u8]) -> Result<(), CommitCallRefusal> {
    if group_id.is_empty() || group_id.len() > MAX_GROUP_ID_LEN {
        return Err(CommitCallRefusal::GroupIdLength);
    }
    Ok(())
}

/// The members a commit names: at most [`MAX_DELIVERIES`], the committer among
/// them.
pub fn check_members(
    members: &BTreeSet<[u8; 32]>,
    committer: &[u8; 32],
) -> Result<(), CommitCallRefusal> {
    if members.len() > MAX_DELIVERIES {
        return Err(CommitCallRefusal::TooManyMembers);
    }
    if !members.contains(committer) {
        return Err(CommitCallRefusal::CommitterNotAMember);
    }
    Ok(())
}

/// The commit a call offers must be an MLS commit of the call's group at the
/// call's epoch, as its clear header says: the deliveries are sealed per
/// recipient, so this header is the one part of the commit the node can read.
pub fn check_commit_header(
    mls_commit: &[u8],
    group_id: &[u8],
    epoch: u64,
) -> Result<CommitHeader, CommitCallRefusal> {
    if mls_commit.is_empty() {
        return Err(CommitCallRefusal::MissingCommit);
    }
    let header = quicnprotochat_crypto::mls::commit_header(mls_commit)
        .map_err(|e| CommitCallRefusal::MalformedCommit(e.to_string()))?;
    if header.group_id != group_id || header.epoch != epoch {
        return Err(CommitCallRefusal::HeaderMismatch {
            header_epoch: header.epoch,
            call_epoch: epoch,
        });
    }
    Ok(header)
}

/// The GroupInfo a commit made at `epoch` publishes (empty: none) must be of
/// the call's group at the epoch the commit leads to, and small enough to keep.
/// Its signature is the joiners' to check: the node has no tree to check it with.
pub fn check_group_info(
    group_info: &[u8],
    group_id: &[u8],
    epoch: u64,
) -> Result<Option<Vec<u8>>, CommitCallRefusal> {
    if group_info.is_empty() {
        return Ok(None);
    }
    if group_info.len() > MAX_GROUP_INFO {
        return Err(CommitCallRefusal::GroupInfoTooLarge);
    }
    let header = quicnprotochat_crypto::mls::group_info_header(group_info)
        .map_err(|e| CommitCallRefusal::MalformedGroupInfo(e.to_string()))?;
    let next_epoch = epoch + 1;
    if header.group_id != group_id || header.epoch != next_epoch {
        return Err(CommitCallRefusal::GroupInfoMismatch {
            info_epoch: header.epoch,
            next_epoch,
        });
    }
    Ok(Some(group_info.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_and_member_lists_are_bounded_and_name_the_committer() {
        assert_eq!(check_group_id(b""), Err(CommitCallRefusal::GroupIdLength));
        assert_eq!(
            check_group_id(&[0; MAX_GROUP_ID_LEN + 1]),
            Err(CommitCallRefusal::GroupIdLength)
        );
        check_group_id(&[0; MAX_GROUP_ID_LEN]).unwrap();
        let members: BTreeSet<[u8; 32]> = [[1; 32], [2; 32]].into_iter().collect();
        check_members(&members, &[1; 32]).unwrap();
        assert_eq!(
            check_members(&members, &[3; 32]),
            Err(CommitCallRefusal::CommitterNotAMember)
        );
        let many: BTreeSet<[u8; 32]> = (0..=MAX_DELIVERIES as u32)
            .map(|i| {
                let mut k = [0u8; 32];
                k[..4].copy_from_slice(&i.to_le_bytes());
                k
            })
            .collect();
        assert_eq!(
            check_members(&many, &[0; 32]).unwrap_err().code(),
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn a_published_group_info_is_bounded_and_must_parse() {
        assert_eq!(check_group_info(b"", b"g", 0), Ok(None));
        assert_eq!(
            check_group_info(&vec![0; MAX_GROUP_INFO + 1], b"g", 0),
            Err(CommitCallRefusal::GroupInfoTooLarge)
        );
        assert_eq!(
            check_group_info(&vec![0; MAX_GROUP_INFO + 1], b"g", 0)
                .unwrap_err()
                .code(),
            ErrorCode::TooLarge
        );
        assert!(matches!(
            check_group_info(b"garbage", b"g", 0),
            Err(CommitCallRefusal::MalformedGroupInfo(_))
        ));
    }

    #[test]
    fn a_group_info_may_grow_with_its_registered_members_and_no_further() {
        assert!(check_group_info_quota(8 * 1024, 0).is_ok());
        assert!(matches!(
            check_group_info_quota(64 * 1024, 1),
            Err(CommitCallRefusal::GroupInfoOverQuota {
                allowance: 12_288,
                ..
            })
        ));
        // ~1.4 KiB per member (post-quantum suite) always fits.
        for n in [1, 2, 10, 100, 700] {
            assert!(check_group_info_quota(1_434 * n + 2_048, n).is_ok(), "{n}");
        }
        assert_eq!(group_info_allowance(usize::MAX), MAX_GROUP_INFO);
    }

    #[test]
    fn a_missing_or_garbage_commit_is_refused() {
        assert_eq!(
            check_commit_header(b"", b"g", 0),
            Err(CommitCallRefusal::MissingCommit)
        );
        assert!(matches!(
            check_commit_header(b"garbage", b"g", 0),
            Err(CommitCallRefusal::MalformedCommit(_))
        ));
    }
}
