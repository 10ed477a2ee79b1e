//! The client's local state: one redb file per profile, holding the identity, the
//! hybrid key, the remembered login and the OpenMLS storage (KeyPackage secrets).
//! Those secrets are sealed at rest with the profile key (`profile_key`), which
//! lives outside the database; values written by older versions are sealed when
//! the profile opens.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::at_rest::{ProfileKey, is_sealed};
use quicnprotochat_crypto::envelope::HybridKeyPair;
use quicnprotochat_crypto::mls::GroupMember;
use quicnprotochat_crypto::private_fs::{private_dir, private_file};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::message::RosterEntry;
use crate::mls_store::{MLS, RedbMlsStorage};
use crate::profile_key::{KeyFileError, key_file_for, load_or_create};

/// Page cache of a profile's database (redb's own default is 1 GiB, far more
/// than a client needs).
pub const CACHE_BYTES: usize = 16 * 1024 * 1024;

const IDENTITY: TableDefinition<&str, &[u8]> = TableDefinition::new("identity");
const KEY_ED25519_SECRET: &str = "ed25519_secret";

/// Name of the client's database inside its state directory.
pub const STATE_FILE: &str = "client.redb";

#[derive(Debug, thiserror::Error)]
/// Why the profile could not be used.
pub enum StateError {
    #[error("cannot create state directory {path}: {source}")]
    /// The profile folder could not be created.
    Dir {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    #[error("client state {path}: {message}")]
    /// The database failed (where, why).
    Store {
        /// The file or folder concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    #[error(transparent)]
    /// The profile key could not be had.
    Key(#[from] KeyFileError),
    #[error("{}", in_use_text(dir, *pid))]
    /// Another process owns the profile (a daemon, `chat`, `web` or another
    /// command): which, when it said.
    InUse {
        /// The profile folder.
        dir: PathBuf,
        /// The owner's process id.
        pid: Option<u32>,
    },
}

fn in_use_text(dir: &Path, pid: Option<u32>) -> String {
    let who = match pid {
        Some(pid) => format!("pid {pid}"),
        None => "another process".to_string(),
    };
    format!(
        "profile {} in use by {who}; run one process per profile (`quicnprotochat daemon` serves every command while it runs)",
        dir.display()
    )
}

/// The name a secret is sealed under: its table and key.
fn sealed_name(table: &str, key: &[u8]) -> Vec<u8> {
    let mut name = Vec::with_capacity(table.len() + 1 + key.len());
    name.extend_from_slice(table.as_bytes());
    name.push(b'/');
    name.extend_from_slice(key);
    name
}

/// The tables whose values are secrets (keyed by text).
const SECRET_TABLES: [TableDefinition<&str, &[u8]>; 3] = [IDENTITY, LOGIN, HYBRID];

/// An opened client profile.
pub struct ClientState {
    db: Arc<Database>,
    path: PathBuf,
    key: Arc<ProfileKey>,
    /// This process's hold on the profile; after `db` so that it is let go of
    /// last.
    _owner: Arc<owner::ProfileOwner>,
}

impl ClientState {
    /// Opens the profile in `dir`, creating it on first use. The folder is
    /// owner-only (0700) and the database file too (0600): both are tightened if
    /// they were wider.
    pub fn open(dir: &Path) -> Result<ClientState, StateError> {
        ClientState::open_with_cache(dir, CACHE_BYTES)
    }

    /// [`ClientState::open`] with a page cache of `cache_bytes` (a process
    /// holding many profiles, such as the load generator, keeps each small).
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<ClientState, StateError> {
        private_dir(dir).map_err(|source| StateError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let owner = owner::ProfileOwner::take(dir)?;
        let path = dir.join(STATE_FILE);
        private_file(&path).map_err(|e| StateError::Store {
            path: path.clone(),
            message: format!("cannot make it owner-only: {e}"),
        })?;
        let store_err = |e: &dyn std::fmt::Display| StateError::Store {
            path: path.clone(),
            message: e.to_string(),
        };
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(&path)
            .map_err(|e| store_err(&e))?;
        // A new key only for a profile that has no sealed secret yet: a lost key
        // file must be an error, not a silent new identity.
        let sealed = has_sealed_identity(&db).map_err(|e| store_err(&e))?;
        let key = load_or_create(&key_file_for(dir), !sealed)?;
        let state = ClientState {
            db: Arc::new(db),
            path,
            key: Arc::new(key),
            _owner: owner,
        };
        state.seal_legacy_values()?;
        Ok(state)
    }

    /// Seals, in one transaction, every secret an older version stored in the
    /// clear.
    fn seal_legacy_values(&self) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let mut sealed = 0usize;
        for table in SECRET_TABLES {
            let mut t = txn.open_table(table).map_err(|e| self.err(e))?;
            let legacy: Vec<(String, Vec<u8>)> = t
                .iter()
                .map_err(|e| self.err(e))?
                .filter_map(|e| e.ok())
                .filter(|(_, v)| !is_sealed(v.value()))
                .map(|(k, v)| (k.value().to_string(), v.value().to_vec()))
                .collect();
            for (k, v) in legacy {
                let value = self.key.seal(&sealed_name(table.name(), k.as_bytes()), &v);
                t.insert(k.as_str(), value.as_slice())
                    .map_err(|e| self.err(e))?;
                sealed += 1;
            }
        }
        {
            let mut t = txn.open_table(MLS).map_err(|e| self.err(e))?;
            let legacy: Vec<(Vec<u8>, Vec<u8>)> = t
                .iter()
                .map_err(|e| self.err(e))?
                .filter_map(|e| e.ok())
                .filter(|(_, v)| !is_sealed(v.value()))
                .map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                .collect();
            for (k, v) in legacy {
                let value = self.key.seal(&RedbMlsStorage::sealed_name(&k), &v);
                t.insert(k.as_slice(), value.as_slice())
                    .map_err(|e| self.err(e))?;
                sealed += 1;
            }
        }
        if sealed == 0 {
            txn.abort().map_err(|e| self.err(e))?;
            return Ok(());
        }
        txn.commit().map_err(|e| self.err(e))
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
                return self.identity_from(secret.value());
            }
        }
        let identity = Identity::generate();
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(IDENTITY).map_err(|e| self.err(e))?;
            // Another process may have raced us: keep whichever was stored first.
            if let Some(existing) = table.get(KEY_ED25519_SECRET).map_err(|e| self.err(e))? {
                return self.identity_from(existing.value());
            }
            let sealed = self.key.seal(
                &sealed_name(IDENTITY.name(), KEY_ED25519_SECRET.as_bytes()),
                &identity.secret_bytes()[..],
            );
            table
                .insert(KEY_ED25519_SECRET, sealed.as_slice())
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(identity)
    }

    fn identity_from(&self, stored: &[u8]) -> Result<Identity, StateError> {
        let secret = self
            .key
            .open(
                &sealed_name(IDENTITY.name(), KEY_ED25519_SECRET.as_bytes()),
                stored,
            )
            .map_err(|e| self.err(e))?;
        Identity::from_secret_bytes(&secret).map_err(|e| self.err(e))
    }
}

/// Whether the profile's identity secret is sealed (so its key file must exist).
fn has_sealed_identity(db: &Database) -> Result<bool, redb::Error> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(IDENTITY) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    Ok(table
        .get(KEY_ED25519_SECRET)?
        .is_some_and(|v| is_sealed(v.value())))
}

const LOGIN: TableDefinition<&str, &[u8]> = TableDefinition::new("login");
const HYBRID: TableDefinition<&str, &[u8]> = TableDefinition::new("hybrid_key");

/// A login remembered between runs.
#[derive(Clone)]
pub struct SavedLogin {
    /// The account.
    pub username: String,
    /// The session token (a secret).
    pub token: Vec<u8>,
    /// When it ends (ms since the Unix epoch).
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
            Ok(t) => match t.get(key).map_err(|e| self.err(e))? {
                Some(v) => Ok(Some(
                    self.key
                        .open(&sealed_name(table.name(), key.as_bytes()), v.value())
                        .map_err(|e| self.err(e))?
                        .to_vec(),
                )),
                None => Ok(None),
            },
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
                let sealed = self.key.seal(&sealed_name(table.name(), k.as_bytes()), v);
                t.insert(*k, sealed.as_slice()).map_err(|e| self.err(e))?;
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

    /// A fresh view of the profile's OpenMLS storage with an empty overlay: each
    /// independent user of MLS state (a group actor, a join) takes its own.
    pub fn mls_storage(&self) -> RedbMlsStorage {
        RedbMlsStorage::new(self.db.clone(), self.key.clone())
    }

    /// The device's MLS side over its own view of the profile's OpenMLS storage.
    pub fn mls_member(
        &self,
        identity: &Identity,
    ) -> Result<GroupMember<RedbMlsStorage>, StateError> {
        GroupMember::new(identity, self.mls_storage()).map_err(|e| self.err(e))
    }

    /// Commits what `member` wrote to its storage, in one transaction.
    pub fn save_mls(&self, member: &GroupMember<RedbMlsStorage>) -> Result<(), StateError> {
        self.transact(member.provider().storage_provider(), |_| Ok(()))
    }
}

pub mod groups;
pub mod history;
pub mod lines;
pub mod outbox;
pub mod owner;
