//! The client's OpenMLS storage, in the profile's redb file.
//!
//! Reads go to redb (through what the current operation has written so far);
//! writes collect in the operation's overlay and reach disk only when the caller
//! commits them, together with the rest of what that operation changes (cursor,
//! roster, lines), in ONE redb transaction ([`crate::state::ClientState::transact`]).
//! A crash or an error in the middle of an MLS operation therefore leaves the
//! profile at the state before it, never at a mix.
//!
//! Each user of the store (each group actor, the receiver joining a group) has its
//! own `RedbMlsStorage`: their overlays are separate, so operations on different
//! groups never commit each other's half-done writes.
//!
//! Keys are encoded exactly as `openmls_memory_storage` encodes them (label, JSON
//! key, version), and so are most values (JSON), so profiles written by earlier
//! versions, which mirrored that store into the same table, open unchanged. The
//! values that grow with the group (the ratchet tree, the message secrets) are
//! written in a compact binary encoding instead ([`encode_binary`]): as JSON, a
//! byte string costs ~3.6 bytes per byte, and the X-Wing tree of a 1,000-member
//! group (~1.4 MB of keys) became ~5 MB that every commit re-encrypted and
//! rewrote in each member's profile. Reads accept either encoding. The trait methods
//! follow that crate's implementation (MIT), with its list helpers rebuilt on the
//! overlay and one fix: clearing the proposal queue also deletes the proposals.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use openmls_traits::storage::*;
use quicnprotochat_crypto::at_rest::ProfileKey;

use crate::record_pieces::{self, PieceError, PieceWriter};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// The table holding OpenMLS' records (name kept from the mirrored layout).
pub(crate) const MLS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mls_storage");

/// Why the MLS store failed.
#[derive(Debug, thiserror::Error)]
pub enum MlsStoreError {
    #[error("MLS record encoding: {0}")]
    /// A stored value does not deserialize (why).
    Serialization(String),
    #[error("client store: {0}")]
    /// The database failed (why).
    Store(String),
    #[error("MLS store inconsistent: {0}")]
    /// The stored state contradicts itself (what).
    Inconsistent(&'static str),
}

impl From<serde_json::Error> for MlsStoreError {
    fn from(e: serde_json::Error) -> Self {
        MlsStoreError::Serialization(e.to_string())
    }
}

/// First byte of a value in the binary encoding. JSON text never starts with it (it
/// is a UTF-8 continuation byte), so each stored value says which encoding it has.
const BINARY_TAG: u8 = 0xB1;

/// `value` in the binary encoding: [`BINARY_TAG`], then postcard. Only for types
/// whose serde form postcard reads back (no `deserialize_any`: the join config's
/// untagged deletion policy, for one, stays JSON).
fn encode_binary<V: serde::Serialize>(value: &V) -> Result<Vec<u8>, MlsStoreError> {
    postcard::to_extend(value, vec![BINARY_TAG])
        .map_err(|e| MlsStoreError::Serialization(e.to_string()))
}

/// A stored value in either encoding.
fn decode_value<V: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<V, MlsStoreError> {
    match bytes.split_first() {
        Some((&BINARY_TAG, rest)) => {
            postcard::from_bytes(rest).map_err(|e| MlsStoreError::Serialization(e.to_string()))
        }
        _ => Ok(serde_json::from_slice(bytes)?),
    }
}

/// Writes not yet committed: `None` marks a deletion.
type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Uncommitted writes at one moment (see [`RedbMlsStorage::checkpoint`]).
pub struct Checkpoint(Overlay);

/// OpenMLS storage over the profile's redb file, with a per-operation overlay.
pub struct RedbMlsStorage {
    db: Arc<Database>,
    overlay: Mutex<Overlay>,
    /// Values are sealed with it on disk (the overlay holds them in the clear).
    key: Arc<ProfileKey>,
}

impl RedbMlsStorage {
    /// A view over the profile's database whose values are sealed with `key`.
    pub fn new(db: Arc<Database>, key: Arc<ProfileKey>) -> RedbMlsStorage {
        RedbMlsStorage {
            db,
            overlay: Mutex::new(Overlay::new()),
            key,
        }
    }

    /// The name an MLS value is sealed under.
    pub(crate) fn sealed_name(storage_key: &[u8]) -> Vec<u8> {
        let mut name = b"mls_storage/".to_vec();
        name.extend_from_slice(storage_key);
        name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Overlay> {
        // A panic while holding the lock left at worst a half-written overlay,
        // which the next rollback or commit replaces: no reason to poison.
        self.overlay.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the writes made since the last commit or rollback, leaving none.
    pub(crate) fn take_overlay(&self) -> Overlay {
        std::mem::take(&mut *self.lock())
    }

    /// Forgets the writes made since the last commit: in memory the store is back
    /// at what is on disk.
    pub fn rollback(&self) {
        self.lock().clear();
    }

    /// The uncommitted writes so far, to return to with [`Self::restore`] when a
    /// later step of the same operation fails.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint(self.lock().clone())
    }

    /// Drops the writes made since `checkpoint`.
    pub fn restore(&self, checkpoint: Checkpoint) {
        *self.lock() = checkpoint.0;
    }

    /// Whether writes are waiting for a commit.
    pub fn has_uncommitted(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Applies `overlay` inside `txn`, sealing every value (the caller commits);
    /// large records go in pieces ([`record_pieces`]).
    pub(crate) fn write_overlay(
        &self,
        txn: &redb::WriteTransaction,
        overlay: &Overlay,
    ) -> Result<(), redb::Error> {
        let mut t = txn.open_table(MLS)?;
        let mut pieces = PieceWriter::open(txn)?;
        for (k, v) in overlay {
            let name = Self::sealed_name(k);
            let old = match t.get(k.as_slice())? {
                Some(stored) if record_pieces::may_be_piece_list(stored.value()) => self
                    .key
                    .open(&name, stored.value())
                    .ok()
                    .and_then(|plain| record_pieces::piece_list(&plain))
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            let split = v
                .as_deref()
                .and_then(|v| record_pieces::split(&self.key, v));
            match (v, &split) {
                (Some(_), Some(split)) => {
                    t.insert(k.as_slice(), self.key.seal(&name, &split.list).as_slice())?;
                }
                (Some(v), None) => {
                    t.insert(k.as_slice(), self.key.seal(&name, v).as_slice())?;
                }
                (None, _) => {
                    t.remove(k.as_slice())?;
                }
            }
            pieces.replace(&self.key, &old, split.as_ref())?;
        }
        Ok(())
    }

    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MlsStoreError> {
        if let Some(v) = self.lock().get(key) {
            return Ok(v.clone());
        }
        let err = |e: &dyn std::fmt::Display| MlsStoreError::Store(e.to_string());
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = match txn.open_table(MLS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(err(&e)),
        };
        let plain = match table.get(key).map_err(|e| err(&e))? {
            Some(v) => self
                .key
                .open(&Self::sealed_name(key), v.value())
                .map_err(|e| err(&e))?,
            None => return Ok(None),
        };
        match record_pieces::piece_list(&plain) {
            None => Ok(Some(plain.to_vec())),
            Some(ids) => record_pieces::join(&txn, &self.key, &ids)
                .map(Some)
                .map_err(|e| match e {
                    PieceError::Missing => {
                        MlsStoreError::Inconsistent("a piece of a stored record is missing")
                    }
                    PieceError::Store(e) => MlsStoreError::Store(e),
                }),
        }
    }

    fn write<const VERSION: u16>(
        &self,
        label: &[u8],
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<(), MlsStoreError> {
        let storage_key = build_key_from_vec::<VERSION>(label, key.to_vec());
        self.lock().insert(storage_key, Some(value));
        Ok(())
    }

    fn read_raw_list<const VERSION: u16>(
        &self,
        storage_key: &[u8],
    ) -> Result<Vec<Vec<u8>>, MlsStoreError> {
        match self.get_raw(storage_key)? {
            Some(bytes) => Ok(serde_json::from_slice(&bytes)?),
            None => Ok(Vec::new()),
        }
    }

    fn append<const VERSION: u16>(
        &self,
        label: &[u8],
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<(), MlsStoreError> {
        let storage_key = build_key_from_vec::<VERSION>(label, key.to_vec());
        let mut list = self.read_raw_list::<VERSION>(&storage_key)?;
        list.push(value);
        self.lock()
            .insert(storage_key, Some(serde_json::to_vec(&list)?));
        Ok(())
    }

    fn remove_item<const VERSION: u16>(
        &self,
        label: &[u8],
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<(), MlsStoreError> {
        let storage_key = build_key_from_vec::<VERSION>(label, key.to_vec());
        let mut list = self.read_raw_list::<VERSION>(&storage_key)?;
        if let Some(pos) = list.iter().position(|stored| stored == &value) {
            list.remove(pos);
        }
        self.lock()
            .insert(storage_key, Some(serde_json::to_vec(&list)?));
        Ok(())
    }

    fn read<const VERSION: u16, V: Entity<VERSION>>(
        &self,
        label: &[u8],
        key: &[u8],
    ) -> Result<Option<V>, MlsStoreError> {
        let storage_key = build_key_from_vec::<VERSION>(label, key.to_vec());
        match self.get_raw(&storage_key)? {
            Some(v) => Ok(Some(decode_value(&v)?)),
            None => Ok(None),
        }
    }

    fn read_list<const VERSION: u16, V: Entity<VERSION>>(
        &self,
        label: &[u8],
        key: &[u8],
    ) -> Result<Vec<V>, MlsStoreError> {
        let storage_key = build_key_from_vec::<VERSION>(label, key.to_vec());
        self.read_raw_list::<VERSION>(&storage_key)?
            .iter()
            .map(|v| decode_value(v))
            .collect()
    }

    fn delete<const VERSION: u16>(&self, label: &[u8], key: &[u8]) -> Result<(), MlsStoreError> {
        let storage_key = build_key_from_vec::<VERSION>(label, key.to_vec());
        self.lock().insert(storage_key, None);
        Ok(())
    }
}

/// A storage key: label, key, version.
fn build_key_from_vec<const V: u16>(label: &[u8], key: Vec<u8>) -> Vec<u8> {
    let mut key_out = label.to_vec();
    key_out.extend_from_slice(&key);
    key_out.extend_from_slice(&u16::to_be_bytes(V));
    key_out
}

mod provider;
#[cfg(test)]
mod tests;
