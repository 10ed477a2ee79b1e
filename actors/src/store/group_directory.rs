//! What the node keeps of its groups beside their fences: each group's latest
//! GroupInfo as its last committer published it, and which groups each device
//! is a member of (an index kept from the fences, in the same transactions).
//! Together they let a device that lost its state learn its account's groups and
//! rejoin them by external commit. The node cannot read a group's secrets from a
//! GroupInfo: it is signed and public to members by design (RFC 9420 §12.4.3).

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::fences::GROUP_MEMBERS;
use super::server::{ServerStore, StoreError};

/// Group id → its latest GroupInfo (an MLSMessage).
pub(super) const GROUP_INFOS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("group_infos");
/// (member device, group id) → (): the groups whose fence names a device.
pub(super) const MEMBER_GROUPS: TableDefinition<(&[u8; 32], &[u8]), ()> =
    TableDefinition::new("member_groups");

/// Creates the tables if missing.
pub(super) fn open_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(GROUP_INFOS)?;
    txn.open_table(MEMBER_GROUPS)?;
    Ok(())
}

/// Builds the member index from every fence (a file from before the index).
pub(super) fn rebuild_member_index(txn: &WriteTransaction) -> Result<usize, StoreError> {
    let fences: Vec<(Vec<u8>, Vec<u8>)> = txn
        .open_table(GROUP_MEMBERS)?
        .iter()?
        .map(|e| e.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
        .collect::<Result<_, _>>()?;
    let mut index = txn.open_table(MEMBER_GROUPS)?;
    for (group_id, members) in &fences {
        for m in members.chunks_exact(32) {
            let m: &[u8; 32] = m.try_into().expect("32-byte chunks");
            index.insert((m, group_id.as_slice()), ())?;
        }
    }
    Ok(fences.len())
}

/// Moves the index of `group_id` from the members `before` to those `after`,
/// and keeps `group_info` as its latest GroupInfo (`None`: forget the one it
/// had, which describes an epoch the group has left).
pub(super) fn record_commit(
    txn: &WriteTransaction,
    group_id: &[u8],
    before: &[[u8; 32]],
    after: &[[u8; 32]],
    group_info: Option<&[u8]>,
) -> Result<(), StoreError> {
    let mut index = txn.open_table(MEMBER_GROUPS)?;
    for gone in before.iter().filter(|m| !after.contains(m)) {
        index.remove((gone, group_id))?;
    }
    for new in after.iter().filter(|m| !before.contains(m)) {
        index.insert((new, group_id), ())?;
    }
    let mut infos = txn.open_table(GROUP_INFOS)?;
    match group_info {
        Some(info) => infos.insert(group_id, info)?,
        None => infos.remove(group_id)?,
    };
    Ok(())
}

/// Forgets everything kept of a group whose fence is deleted.
pub(super) fn forget_group(
    txn: &WriteTransaction,
    group_id: &[u8],
    members: &[[u8; 32]],
) -> Result<(), StoreError> {
    record_commit(txn, group_id, members, &[], None)
}

impl ServerStore {
    /// The latest GroupInfo of `group_id`, if its last commit published one.
    pub fn group_info(&self, group_id: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db().begin_read()?;
        let infos = txn.open_table(GROUP_INFOS)?;
        Ok(infos.get(group_id)?.map(|v| v.value().to_vec()))
    }

    /// The groups any of `devices` is a member of, sorted, at most `max`.
    pub fn groups_of(&self, devices: &[[u8; 32]], max: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let txn = self.db().begin_read()?;
        let index = txn.open_table(MEMBER_GROUPS)?;
        let mut groups = std::collections::BTreeSet::new();
        for d in devices {
            for entry in index.range((d, &[][..])..)? {
                let (key, _) = entry?;
                let (member, group) = key.value();
                if member != d {
                    break;
                }
                groups.insert(group.to_vec());
            }
        }
        Ok(groups.into_iter().take(max).collect())
    }
}
