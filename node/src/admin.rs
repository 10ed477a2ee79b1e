//! `admin`: an operator's commands on a stopped node's data folder.

use std::path::{Path, PathBuf};

use quicnprotochat_actors::store::admin;
use quicnprotochat_actors::store::{ServerStore, StoreError, StoreOptions};

use crate::server::DB_FILE;

/// Why an admin command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No node database in the folder given.
    #[error("no node database at {0} (see --data-dir)")]
    NoDatabase(PathBuf),
    /// A node has the database open.
    #[error("the node's database at {0} is in use: stop the node first")]
    InUse(PathBuf),
    /// No account of that name.
    #[error("no account named {0:?}")]
    NoSuchAccount(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn open(data_dir: &Path) -> Result<ServerStore, AdminError> {
    let path = data_dir.join(DB_FILE);
    if !path.is_file() {
        return Err(AdminError::NoDatabase(path));
    }
    ServerStore::open(&path, StoreOptions::default()).map_err(|e| match e {
        StoreError::Database(redb::DatabaseError::DatabaseAlreadyOpen) => AdminError::InUse(path),
        other => other.into(),
    })
}

/// `admin accounts`: each account with its devices (identity keys in hex).
pub fn accounts(data_dir: &Path) -> Result<String, AdminError> {
    let accounts = admin::accounts(&open(data_dir)?)?;
    if accounts.is_empty() {
        return Ok("no accounts".into());
    }
    Ok(accounts
        .iter()
        .map(|a| {
            let devices: Vec<String> = a.devices.iter().map(|d| hex::encode(d.0)).collect();
            format!(
                "{}  {} device(s)  {}",
                crate::client::display::escape_untrusted(&a.username),
                a.devices.len(),
                devices.join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// `admin delete-account NAME`: the account, its devices and their queued
/// messages are gone; the name is free.
pub fn delete_account(data_dir: &Path, username: &str) -> Result<String, AdminError> {
    let store = open(data_dir)?;
    match admin::delete_account(&store, username)? {
        Some(a) => Ok(format!(
            "deleted account {username} and its {} device(s)",
            a.devices.len()
        )),
        None => Err(AdminError::NoSuchAccount(username.into())),
    }
}
