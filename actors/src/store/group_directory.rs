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
/// Group id → (the device that published its GroupInfo, the GroupInfo's bytes).
/// A GroupInfo kept from before this table has no row: nobody is charged.
const GROUP_INFO_PUBLISHERS: TableDefinition<&[u8], (&[u8; 32], u64)> =
    TableDefinition::new("group_info_publishers");
/// Device → the bytes of the GroupInfos it published that are still kept (its
/// quota of stored GroupInfo bytes).
const PUBLISHED_BYTES: TableDefinition<&[u8; 32], u64> = TableDefinition::new("published_bytes");

/// Creates the tables if missing.
pub(super) fn open_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(GROUP_INFOS)?;
    txn.open_table(MEMBER_GROUPS)?;
    txn.open_table(GROUP_INFO_PUBLISHERS)?;
    txn.open_table(PUBLISHED_BYTES)?;
    Ok(())
}

/// The bytes of the GroupInfos `device` published that are still kept, and of
/// those the bytes of `group_id`'s (0 if another device published it).
pub(super) fn group_info_bytes(
    txn: &WriteTransaction,
    device: &[u8; 32],
    group_id: &[u8],
) -> Result<(u64, u64), StoreError> {
    let total = txn
        .open_table(PUBLISHED_BYTES)?
        .get(device)?
        .map_or(0, |v| v.value());
    let here = match txn.open_table(GROUP_INFO_PUBLISHERS)?.get(group_id)? {
        Some(v) if v.value().0 == device => v.value().1,
        _ => 0,
    };
    Ok((total, here))
}

/// Moves `bytes` onto (`add`) or off `device`'s published total.
fn charge(
    txn: &WriteTransaction,
    device: &[u8; 32],
    bytes: u64,
    add: bool,
) -> Result<(), StoreError> {
    let mut totals = txn.open_table(PUBLISHED_BYTES)?;
    let now = totals.get(device)?.map_or(0, |v| v.value());
    let next = if add {
        now.saturating_add(bytes)
    } else {
        now.saturating_sub(bytes)
    };
    if next == 0 {
        totals.remove(device)?;
    } else {
        totals.insert(device, next)?;
    }
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
/// had, which describes an epoch the group has left), charged to `publisher`;
/// the one it replaces is taken off its own publisher's total.
pub(super) fn record_commit(
    txn: &WriteTransaction,
    group_id: &[u8],
    before: &[[u8; 32]],
    after: &[[u8; 32]],
    group_info: Option<&[u8]>,
    publisher: Option<&[u8; 32]>,
) -> Result<(), StoreError> {
    let old = txn
        .open_table(GROUP_INFO_PUBLISHERS)?
        .remove(group_id)?
        .map(|v| (*v.value().0, v.value().1));
    if let Some((device, bytes)) = old {
        charge(txn, &device, bytes, false)?;
    }
    if let (Some(info), Some(device)) = (group_info, publisher) {
        let bytes = info.len() as u64;
        txn.open_table(GROUP_INFO_PUBLISHERS)?
            .insert(group_id, (device, bytes))?;
        charge(txn, device, bytes, true)?;
    }
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
    record_commit(txn, group_id, members, &[], None, None)
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
