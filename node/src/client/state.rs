//! The client's local state: one redb file per profile, holding the identity, the
//! hybrid key, the remembered login and the OpenMLS storage (KeyPackage secrets).

use std::path::{Path, PathBuf};

use openmls_memory_storage::MemoryStorage;
use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::envelope::HybridKeyPair;
use quicnprotochat_crypto::mls::GroupMember;
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

const LOGIN: TableDefinition<&str, &[u8]> = TableDefinition::new("login");
const HYBRID: TableDefinition<&str, &[u8]> = TableDefinition::new("hybrid_key");
const MLS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mls_storage");

/// A login remembered between runs.
#[derive(Clone)]
pub struct SavedLogin {
    pub username: String,
    pub token: Vec<u8>,
    pub expires_at_ms: u64,
}

impl std::fmt::Debug for SavedLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedLogin")
            .field("username", &self.username)
            .field("token", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

impl ClientState {
    fn get(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        match txn.open_table(table) {
            Ok(t) => Ok(t
                .get(key)
                .map_err(|e| self.err(e))?
                .map(|v| v.value().to_vec())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    fn put_all(
        &self,
        table: TableDefinition<&str, &[u8]>,
        entries: &[(&str, &[u8])],
    ) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = txn.open_table(table).map_err(|e| self.err(e))?;
            for (k, v) in entries {
                t.insert(*k, *v).map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// The remembered login, if any.
    pub fn saved_login(&self) -> Result<Option<SavedLogin>, StateError> {
        let (Some(user), Some(token), Some(exp)) = (
            self.get(LOGIN, "username")?,
            self.get(LOGIN, "token")?,
            self.get(LOGIN, "expires_at_ms")?,
        ) else {
            return Ok(None);
        };
        let exp: [u8; 8] = exp
            .try_into()
            .map_err(|_| self.err("corrupt login expiry"))?;
        Ok(Some(SavedLogin {
            username: String::from_utf8(user).map_err(|e| self.err(e))?,
            token,
            expires_at_ms: u64::from_be_bytes(exp),
        }))
    }

    /// Remembers a login (token included: the state directory is private).
    pub fn save_login(&self, login: &SavedLogin) -> Result<(), StateError> {
        self.put_all(
            LOGIN,
            &[
                ("username", login.username.as_bytes()),
                ("token", &login.token),
                ("expires_at_ms", &login.expires_at_ms.to_be_bytes()),
            ],
        )
    }

    /// The device's hybrid (X-Wing) key, generated and stored on first use.
    pub fn hybrid_key(&self) -> Result<HybridKeyPair, StateError> {
        if let (Some(seed), Some(created)) = (
            self.get(HYBRID, "seed")?,
            self.get(HYBRID, "created_at_ms")?,
        ) {
            let seed: [u8; 32] = seed
                .try_into()
                .map_err(|_| self.err("corrupt hybrid key"))?;
            let created: [u8; 8] = created
                .try_into()
                .map_err(|_| self.err("corrupt hybrid key"))?;
            return Ok(HybridKeyPair::from_seed(seed, u64::from_be_bytes(created)));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let key = HybridKeyPair::generate(now);
        self.put_all(
            HYBRID,
            &[("seed", key.seed()), ("created_at_ms", &now.to_be_bytes())],
        )?;
        Ok(key)
    }

    /// The device's MLS side, with the OpenMLS storage this profile kept.
    pub fn mls_member(
        &self,
        identity: &Identity,
    ) -> Result<GroupMember<MemoryStorage>, StateError> {
        let storage = MemoryStorage::default();
        {
            let txn = self.db.begin_read().map_err(|e| self.err(e))?;
            match txn.open_table(MLS) {
                Ok(t) => {
                    let mut values = storage
                        .values
                        .write()
                        .map_err(|_| self.err("MLS storage lock"))?;
                    for e in t.iter().map_err(|e| self.err(e))? {
                        let (k, v) = e.map_err(|e| self.err(e))?;
                        values.insert(k.value().to_vec(), v.value().to_vec());
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(self.err(e)),
            }
        }
        GroupMember::new(identity, storage).map_err(|e| self.err(e))
    }

    /// Writes the MLS storage back, all of it in one transaction: after a crash
    /// the profile holds the state before or after an operation, never a mix.
    pub fn save_mls(&self, member: &GroupMember<MemoryStorage>) -> Result<(), StateError> {
        let values = member
            .provider()
            .storage_provider()
            .values
            .read()
            .map_err(|_| self.err("MLS storage lock"))?
            .clone();
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = txn.open_table(MLS).map_err(|e| self.err(e))?;
            t.retain(|_, _| false).map_err(|e| self.err(e))?;
            for (k, v) in &values {
                t.insert(k.as_slice(), v.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }
}
