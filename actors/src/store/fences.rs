//! Each MLS group's epoch fence on redb: the epoch its next commit must be made
//! at and who may make it, which device created it (its group quota), and the
//! garbage collection of fences no registered device can use.

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::ops::{GroupWrite, after_commit};
use super::server::StoreError;
use super::writer::AfterCommit;

/// Epoch fence per MLS group: group id → the epoch the next commit must be made at.
pub(super) const GROUPS: TableDefinition<&[u8], u64> = TableDefinition::new("groups");
/// group id → identity keys (32 bytes each, concatenated) that may commit next.
pub(super) const GROUP_MEMBERS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("group_members");
/// Group id → the device whose commit created its fence.
pub(super) const GROUP_CREATORS: TableDefinition<&[u8], &[u8; 32]> =
    TableDefinition::new("group_creators");
/// Device → how many live fences it created (its group quota).
pub(super) const GROUPS_CREATED: TableDefinition<&[u8; 32], u64> =
    TableDefinition::new("groups_created");

/// The persisted epoch fence of `group_id` as of `txn`: the epoch the next commit
/// must be made at (`None`: no commit yet) and who may make it.
pub fn group_fence(
    txn: &WriteTransaction,
    group_id: &[u8],
) -> Result<(Option<u64>, Vec<[u8; 32]>), StoreError> {
    let next = txn.open_table(GROUPS)?.get(group_id)?.map(|v| v.value());
    let members = txn
        .open_table(GROUP_MEMBERS)?
        .get(group_id)?
        .map(|v| members_of(v.value()))
        .unwrap_or_default();
    Ok((next, members))
}

/// Records that the next commit of `group_id` must be made at `next_epoch`, by
/// one of `members`.
/// Deletes the fences of the groups none of whose members `is_member_alive`
/// (checked again inside this transaction, so a fence that changed meanwhile
/// stays). Returns how many were deleted.
pub fn collect_dead_group_fences(
    txn: &WriteTransaction,
    is_member_alive: &dyn Fn(&[u8; 32]) -> bool,
) -> Result<usize, StoreError> {
    let mut members_table = txn.open_table(GROUP_MEMBERS)?;
    let dead: Vec<Vec<u8>> = members_table
        .iter()?
        .filter_map(|e| e.ok())
        .filter(|(_, v)| {
            !v.value()
                .chunks_exact(32)
                .any(|c| is_member_alive(c.try_into().expect("32-byte chunks")))
        })
        .map(|(k, _)| k.value().to_vec())
        .collect();
    let mut groups = txn.open_table(GROUPS)?;
    let mut creators = txn.open_table(GROUP_CREATORS)?;
    let mut created = txn.open_table(GROUPS_CREATED)?;
    for g in &dead {
        let members: Vec<[u8; 32]> = members_table
            .remove(g.as_slice())?
            .map(|v| members_of(v.value()))
            .unwrap_or_default();
        super::group_directory::forget_group(txn, g, &members)?;
        groups.remove(g.as_slice())?;
        let creator = creators.remove(g.as_slice())?.map(|c| *c.value());
        if let Some(c) = creator {
            let n = created.get(&c)?.map_or(0, |v| v.value());
            if n <= 1 {
                created.remove(&c)?;
            } else {
                created.insert(&c, n - 1)?;
            }
        }
    }
    Ok(dead.len())
}

/// How many live group fences `device` created.
pub fn groups_created(txn: &WriteTransaction, device: &[u8; 32]) -> Result<u64, StoreError> {
    Ok(txn
        .open_table(GROUPS_CREATED)?
        .get(device)?
        .map_or(0, |v| v.value()))
}

/// Writes a group's fence; `creator` is set for the commit that creates it (and
/// counts against that device's quota). `group_info`: the GroupInfo the commit
/// published, if any (kept in place of the one before, which no longer matches),
/// charged to `publisher`, the committer.
pub fn set_group_fence(
    txn: &WriteTransaction,
    group_id: &[u8],
    next_epoch: u64,
    members: &[[u8; 32]],
    creator: Option<&[u8; 32]>,
    group_info: Option<&[u8]>,
    publisher: &[u8; 32],
) -> Result<(), StoreError> {
    let (_, before) = group_fence(txn, group_id)?;
    super::group_directory::record_commit(
        txn,
        group_id,
        &before,
        members,
        group_info,
        Some(publisher),
    )?;
    if let Some(c) = creator {
        txn.open_table(GROUP_CREATORS)?.insert(group_id, c)?;
        let n = groups_created(txn, c)?;
        txn.open_table(GROUPS_CREATED)?.insert(c, n + 1)?;
    }
    txn.open_table(GROUPS)?.insert(group_id, next_epoch)?;
    txn.open_table(GROUP_MEMBERS)?
        .insert(group_id, members.concat().as_slice())?;
    Ok(())
}

/// A fence's members as stored: identity keys, 32 bytes each, concatenated.
pub(super) fn members_of(bytes: &[u8]) -> Vec<[u8; 32]> {
    bytes
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32-byte chunks"))
        .collect()
}

/// Applies one group request to `txn` (the redb writer's batch).
pub(super) fn apply(txn: &WriteTransaction, op: GroupWrite) -> AfterCommit {
    let e = crate::error::DeliveryError::from;
    match op {
        GroupWrite::Fence { group_id, reply } => {
            after_commit(reply, group_fence(txn, &group_id).map_err(e))
        }
        GroupWrite::GroupsCreated { device, reply } => {
            after_commit(reply, groups_created(txn, &device).map_err(e))
        }
        GroupWrite::GroupInfoBytes {
            device,
            group_id,
            reply,
        } => after_commit(
            reply,
            super::group_directory::group_info_bytes(txn, &device, &group_id).map_err(e),
        ),
        GroupWrite::CollectDead {
            is_member_alive,
            reply,
        } => after_commit(
            reply,
            collect_dead_group_fences(txn, &*is_member_alive).map_err(e),
        ),
    }
}
