//! The client's local state: one redb file per profile, holding the identity.

use std::path::{Path, PathBuf};

use quicnprotochat_crypto::Identity;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const IDENTITY: TableDefinition<&str, &[u8]> = TableDefinition::new("identity");
const KEY_ED25519_SECRET: &str = "ed25519_secret";

/// Name of the client's database inside its state directory.
pub const STATE_FILE: &str = "client.redb";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("client state {path}: {message}")]
    Store { path: PathBuf, message: String },
}

/// An opened client profile.
pub struct ClientState {
    db: Database,
    path: PathBuf,
}

impl ClientState {
    /// Opens the profile in `dir`, creating it (owner-only permissions) on first use.
    pub fn open(dir: &Path) -> Result<ClientState, StateError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        let path = dir.join(STATE_FILE);
        let db = Database::create(&path).map_err(|e| StateError::Store {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(ClientState { db, path })
    }

    fn err(&self, e: impl std::fmt::Display) -> StateError {
        StateError::Store {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// The profile's identity, generated and stored durably on first use.
    pub fn identity(&self) -> Result<Identity, StateError> {
        {
            let txn = self.db.begin_read().map_err(|e| self.err(e))?;
            if let Ok(table) = txn.open_table(IDENTITY)
                && let Some(secret) = table.get(KEY_ED25519_SECRET).map_err(|e| self.err(e))?
            {
                return Identity::from_secret_bytes(secret.value()).map_err(|e| self.err(e));
            }
        }
        let identity = Identity::generate();
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(IDENTITY).map_err(|e| self.err(e))?;
            // Another process may have raced us: keep whichever was stored first.
            if let Some(existing) = table.get(KEY_ED25519_SECRET).map_err(|e| self.err(e))? {
                return Identity::from_secret_bytes(existing.value()).map_err(|e| self.err(e));
            }
            table
                .insert(KEY_ED25519_SECRET, &identity.secret_bytes()[..])
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(identity)
    }
}
