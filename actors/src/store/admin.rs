//! What an operator does to a node's accounts: list them with their devices,
//! delete one. On a stopped node's data ([`accounts`], [`delete_account`]: the
//! database file directly; redb lets one process open it, so a running node's
//! file is refused), or inside a running node's write transaction
//! ([`delete_account_rows`], through its writer). Each change is one durable
//! transaction, as the node's own writes are.

use quicnprotochat_wire::IdentityKey;
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use super::auth::{ACCOUNT_DEVICES, USERS, remove_device_rows};
use super::server::{ServerStore, StoreError, WriteBatch};

/// One account and its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Its name.
    pub username: String,
    /// Its devices' identity keys.
    pub devices: Vec<IdentityKey>,
}

/// Every account, by name.
pub fn accounts(store: &ServerStore) -> Result<Vec<Account>, StoreError> {
    let txn = store.db().begin_read()?;
    let users = txn.open_table(USERS)?;
    let devices = txn.open_table(ACCOUNT_DEVICES)?;
    let mut out = Vec::new();
    for row in users.iter()? {
        let username = row?.0.value().to_string();
        out.push(account_of(&devices, username)?);
    }
    Ok(out)
}

/// The account `username` with its devices, read from `devices`.
fn account_of(
    devices: &impl ReadableTable<(&'static str, &'static [u8; 32]), u64>,
    username: String,
) -> Result<Account, StoreError> {
    let range = (username.as_str(), &[0u8; 32])..=(username.as_str(), &[0xffu8; 32]);
    let mut account_devices = Vec::new();
    for d in devices.range(range)? {
        account_devices.push(IdentityKey(*d?.0.value().1));
    }
    Ok(Account {
        username,
        devices: account_devices,
    })
}

/// An account just deleted, and the hashes of the sessions that ended with it.
pub type DeletedAccount = (Account, Vec<[u8; 32]>);

/// Deletes the rows of account `username` in `txn`: its login record and every
/// device with its sessions, KeyPackages and keys (not its devices' inboxes:
/// the caller empties them). Returns the account as it was and the hashes of
/// the sessions it ended, or `None` when there is no such account.
pub fn delete_account_rows(
    txn: &WriteTransaction,
    username: &str,
) -> Result<Option<DeletedAccount>, StoreError> {
    if txn.open_table(USERS)?.get(username)?.is_none() {
        return Ok(None);
    }
    let account = account_of(&txn.open_table(ACCOUNT_DEVICES)?, username.to_string())?;
    let mut sessions = Vec::new();
    for device in &account.devices {
        sessions.extend(remove_device_rows(txn, username, device)?);
    }
    txn.open_table(USERS)?.remove(username)?;
    Ok(Some((account, sessions)))
}

/// Deletes the account `username`: its login record, every device with its
/// sessions, KeyPackages and keys, and everything queued in the devices'
/// inboxes; the name is free again. Groups keep the devices as members until a
/// member commits their removal, as when a device is removed. Returns the
/// account as it was, or `None` when there is no such account.
pub fn delete_account(store: &ServerStore, username: &str) -> Result<Option<Account>, StoreError> {
    let txn = store.begin_write()?;
    let Some((account, _sessions)) = delete_account_rows(&txn, username)? else {
        return Ok(None);
    };
    {
        let mut inboxes = WriteBatch::open(&txn)?;
        for device in &account.devices {
            inboxes.ack(device, u64::MAX)?;
        }
        inboxes.finish()?;
    }
    txn.commit()?;
    Ok(Some(account))
}
