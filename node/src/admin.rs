//! `admin`: an operator's commands, on a stopped node's data folder or, with
//! the node's operator token, on a running node over the network.

use std::path::{Path, PathBuf};

use quicnprotochat_actors::store::admin;
use quicnprotochat_actors::store::postgres::PgStore;
use quicnprotochat_actors::store::{ServerStore, StoreError, StoreOptions};

use crate::server::DB_FILE;
use quicnprotochat_client::commands::{ClientOptions, CommandError};

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

/// `admin copy-to-postgres`: every record of the stopped node's database into
/// the empty PostgreSQL database at `url`, in one transaction. Says what it
/// copied.
pub async fn copy_to_postgres(data_dir: &Path, url: &str) -> Result<String, AdminError> {
    let store = open(data_dir)?;
    let snapshot = tokio::task::spawn_blocking(move || store.snapshot())
        .await
        .map_err(|_| StoreError::ReadTask)??;
    let target = PgStore::open(url).await?;
    target.import(&snapshot).await?;
    let counts: Vec<String> = snapshot
        .counts()
        .into_iter()
        .map(|(what, n)| format!("{n} {what}"))
        .collect();
    Ok(format!(
        "copied {} to {}",
        counts.join(", "),
        crate::config::redact_url(url)
    ))
}

/// `admin accounts`: each account with its devices (identity keys in hex).
pub fn accounts(data_dir: &Path) -> Result<String, AdminError> {
    let accounts = admin::accounts(&open(data_dir)?)?;
    Ok(account_lines(
        accounts
            .iter()
            .map(|a| (a.username.as_str(), &a.devices[..])),
    ))
}

/// One line per account: `NAME  N device(s)  HEX HEX…`.
fn account_lines<'a>(
    accounts: impl Iterator<Item = (&'a str, &'a [quicnprotochat_wire::IdentityKey])>,
) -> String {
    let lines: Vec<String> = accounts
        .map(|(username, devices)| {
            let hexes: Vec<String> = devices.iter().map(|d| hex::encode(d.0)).collect();
            format!(
                "{}  {} device(s)  {}",
                quicnprotochat_client::display::escape_untrusted(username),
                devices.len(),
                hexes.join(" ")
            )
        })
        .collect();
    if lines.is_empty() {
        return "no accounts".into();
    }
    lines.join("\n")
}

/// `admin --server … accounts`: the same, from a running node.
pub async fn accounts_remote(
    opts: &ClientOptions,
    operator_token: &str,
) -> Result<String, CommandError> {
    let conn = opts.connect().await?;
    let accounts = conn.operator(operator_token).await?.accounts().await;
    conn.close().await;
    let accounts = accounts?;
    Ok(account_lines(
        accounts
            .iter()
            .map(|a| (a.username.as_str(), &a.devices[..])),
    ))
}

/// `admin --server … delete-account NAME`: the same as on a stopped node, on
/// the running one (its sessions end at once).
pub async fn delete_account_remote(
    opts: &ClientOptions,
    operator_token: &str,
    username: &str,
) -> Result<String, CommandError> {
    let conn = opts.connect().await?;
    let deleted = conn
        .operator(operator_token)
        .await?
        .delete_account(username)
        .await;
    conn.close().await;
    Ok(format!(
        "deleted account {username} and its {} device(s)",
        deleted?.len()
    ))
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
