//! [`Store`]: the node's database, whichever backend, and what the node reads
//! from it. Reads see committed data only; a read that must follow every earlier
//! write goes through the writer instead ([`super::writer::WriteOp::Load`],
//! [`super::ops::GroupWrite::Fence`]).

use std::collections::HashMap;

use quicnprotochat_crypto::mls::Suite;
use quicnprotochat_wire::{Envelope, IdentityKey};

use super::admin::Account;
use super::postgres::PgStore;
use super::server::{ServerStore, StoreError};
use crate::auth::ClaimedPackage;

/// The node's database. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    /// The embedded redb file (one node).
    Redb(ServerStore),
    /// PostgreSQL (one or more nodes).
    Postgres(Box<PgStore>),
}

/// What the Authentication Service loads as a node starts.
#[derive(Debug, Default)]
pub struct Directory {
    /// Every device with its account's name.
    pub devices: Vec<(IdentityKey, String)>,
    /// Every live session: token hash, device, expiry (ms since the epoch).
    pub sessions: Vec<([u8; 32], IdentityKey, u64)>,
    /// Whether any account exists.
    pub accounts_exist: bool,
}

/// Runs a redb read on the blocking pool (it may touch the disk).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| StoreError::ReadTask)?
}

/// `store.$method()` on either backend: redb on the blocking pool.
macro_rules! read {
    ($self:ident, $method:ident) => {
        match $self {
            Store::Redb(s) => {
                let s = s.clone();
                blocking(move || s.$method()).await
            }
            Store::Postgres(p) => p.$method().await,
        }
    };
}

impl Store {
    /// Which backend, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Redb(_) => "redb",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Envelopes of `inbox` with seq > `after`, in seq order, at most `limit`,
    /// no more than `max_bytes` of payload (but always at least one if any exist).
    pub async fn fetch(
        &self,
        inbox: IdentityKey,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        match self {
            Store::Redb(s) => {
                let s = s.clone();
                blocking(move || s.fetch(&inbox, after, limit, max_bytes)).await
            }
            Store::Postgres(p) => p.fetch(&inbox, after, limit, max_bytes).await,
        }
    }

    /// Every inbox that holds unacknowledged messages.
    pub async fn inboxes_with_messages(&self) -> Result<Vec<IdentityKey>, StoreError> {
        read!(self, inboxes_with_messages)
    }

    /// How many shared bodies are stored, and their bytes.
    pub async fn shared_bodies(&self) -> Result<(u64, u64), StoreError> {
        read!(self, shared_bodies)
    }

    /// The latest GroupInfo of `group_id`, if its last commit published one.
    pub async fn group_info(&self, group_id: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Redb(s) => {
                let s = s.clone();
                blocking(move || s.group_info(&group_id)).await
            }
            Store::Postgres(p) => p.group_info(&group_id).await,
        }
    }

    /// The groups any of `devices` is a member of, sorted, at most `max`.
    pub async fn groups_of(
        &self,
        devices: Vec<[u8; 32]>,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        match self {
            Store::Redb(s) => {
                let s = s.clone();
                blocking(move || s.groups_of(&devices, max)).await
            }
            Store::Postgres(p) => p.groups_of(&devices, max).await,
        }
    }

    /// A node secret, if stored.
    pub async fn secret(&self, name: &'static str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Redb(s) => s.secret(name),
            Store::Postgres(p) => p.secret(name).await,
        }
    }

    /// Every device, and every session alive at `now_ms`.
    pub async fn directory(&self, now_ms: u64) -> Result<Directory, StoreError> {
        match self {
            Store::Redb(s) => {
                let s = s.clone();
                blocking(move || s.directory(now_ms)).await
            }
            Store::Postgres(p) => p.directory(now_ms).await,
        }
    }

    /// The OPAQUE password record of `username`.
    pub async fn password_record(&self, username: String) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Redb(s) => {
                let s = s.clone();
                blocking(move || s.password_record(&username)).await
            }
            Store::Postgres(p) => p.password_record(&username).await,
        }
    }

    /// Per device with published keys: its hybrid key and last-resort package
    /// of `suite`, consuming nothing.
    pub async fn last_resort_packages(
        &self,
        suite: Suite,
        devices: Vec<IdentityKey>,
    ) -> Result<Vec<ClaimedPackage>, StoreError> {
        match self {
            Store::Redb(s) => {
                let s = s.clone();
                blocking(move || s.last_resort_packages(suite, &devices)).await
            }
            Store::Postgres(p) => p.last_resort_packages(suite, &devices).await,
        }
    }

    /// One-time packages `device` has left, and how often its last-resort
    /// package was served (the mandatory suite's).
    pub async fn key_package_status(&self, device: IdentityKey) -> Result<(u64, u64), StoreError> {
        match self {
            Store::Redb(s) => s.key_package_status(&device),
            Store::Postgres(p) => p.key_package_status(&device).await,
        }
    }

    /// The hash of `device`'s sealed-sender access key, if set.
    pub async fn access_key(&self, device: IdentityKey) -> Result<Option<[u8; 32]>, StoreError> {
        match self {
            Store::Redb(s) => s.access_key(&device),
            Store::Postgres(p) => p.access_key(&device).await,
        }
    }

    /// The hybrid keys of those of `devices` that published one.
    pub async fn hybrid_keys(
        &self,
        devices: Vec<[u8; 32]>,
    ) -> Result<HashMap<[u8; 32], Vec<u8>>, StoreError> {
        match self {
            Store::Redb(s) => {
                let s = s.clone();
                blocking(move || s.hybrid_keys(&devices)).await
            }
            Store::Postgres(p) => p.hybrid_keys(&devices).await,
        }
    }

    /// Every account with its devices, by name.
    pub async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        match self {
            Store::Redb(s) => {
                let s = s.clone();
                blocking(move || super::admin::accounts(&s)).await
            }
            Store::Postgres(p) => p.accounts().await,
        }
    }
}
