//! The client's OpenMLS storage, in the profile's redb file.
//!
//! Reads go to redb (through what the current operation has written so far);
//! writes collect in the operation's overlay and reach disk only when the caller
//! commits them, together with the rest of what that operation changes (cursor,
//! roster, lines), in ONE redb transaction ([`crate::client::state::ClientState::transact`]).
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

use crate::client::record_pieces::{self, PieceError, PieceWriter};
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

const KEY_PACKAGE_LABEL: &[u8] = b"KeyPackage";
const PSK_LABEL: &[u8] = b"Psk";
const ENCRYPTION_KEY_PAIR_LABEL: &[u8] = b"EncryptionKeyPair";
const SIGNATURE_KEY_PAIR_LABEL: &[u8] = b"SignatureKeyPair";
const EPOCH_KEY_PAIRS_LABEL: &[u8] = b"EpochKeyPairs";

// related to PublicGroup
const TREE_LABEL: &[u8] = b"Tree";
const GROUP_CONTEXT_LABEL: &[u8] = b"GroupContext";
const INTERIM_TRANSCRIPT_HASH_LABEL: &[u8] = b"InterimTranscriptHash";
const CONFIRMATION_TAG_LABEL: &[u8] = b"ConfirmationTag";

// related to MlsGroup
const JOIN_CONFIG_LABEL: &[u8] = b"MlsGroupJoinConfig";
const OWN_LEAF_NODES_LABEL: &[u8] = b"OwnLeafNodes";
const GROUP_STATE_LABEL: &[u8] = b"GroupState";
const QUEUED_PROPOSAL_LABEL: &[u8] = b"QueuedProposal";
const PROPOSAL_QUEUE_REFS_LABEL: &[u8] = b"ProposalQueueRefs";
const OWN_LEAF_NODE_INDEX_LABEL: &[u8] = b"OwnLeafNodeIndex";
const EPOCH_SECRETS_LABEL: &[u8] = b"EpochSecrets";
const RESUMPTION_PSK_STORE_LABEL: &[u8] = b"ResumptionPsk";
const MESSAGE_SECRETS_LABEL: &[u8] = b"MessageSecrets";

impl StorageProvider<CURRENT_VERSION> for RedbMlsStorage {
    type Error = MlsStoreError;

    fn queue_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
        proposal: &QueuedProposal,
    ) -> Result<(), Self::Error> {
        // write proposal to key (group_id, proposal_ref)
        let key = serde_json::to_vec(&(group_id, proposal_ref))?;
        let value = serde_json::to_vec(proposal)?;
        self.write::<CURRENT_VERSION>(QUEUED_PROPOSAL_LABEL, &key, value)?;

        // update proposal list for group_id
        let key = serde_json::to_vec(group_id)?;
        let value = serde_json::to_vec(proposal_ref)?;
        self.append::<CURRENT_VERSION>(PROPOSAL_QUEUE_REFS_LABEL, &key, value)?;

        Ok(())
    }

    fn write_tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        tree: &TreeSync,
    ) -> Result<(), Self::Error> {
        self.write::<CURRENT_VERSION>(
            TREE_LABEL,
            &serde_json::to_vec(&group_id)?,
            encode_binary(&tree)?,
        )
    }

    fn write_interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        interim_transcript_hash: &InterimTranscriptHash,
    ) -> Result<(), Self::Error> {
        self.write::<CURRENT_VERSION>(
            INTERIM_TRANSCRIPT_HASH_LABEL,
            &serde_json::to_vec(group_id)?,
            serde_json::to_vec(interim_transcript_hash)?,
        )
    }

    fn write_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_context: &GroupContext,
    ) -> Result<(), Self::Error> {
        self.write::<CURRENT_VERSION>(
            GROUP_CONTEXT_LABEL,
            &serde_json::to_vec(group_id)?,
            serde_json::to_vec(group_context)?,
        )
    }

    fn write_confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        confirmation_tag: &ConfirmationTag,
    ) -> Result<(), Self::Error> {
        self.write::<CURRENT_VERSION>(
            CONFIRMATION_TAG_LABEL,
            &serde_json::to_vec(group_id)?,
            serde_json::to_vec(confirmation_tag)?,
        )
    }

    fn write_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
        signature_key_pair: &SignatureKeyPair,
    ) -> Result<(), Self::Error> {
        self.write::<CURRENT_VERSION>(
            SIGNATURE_KEY_PAIR_LABEL,
            &serde_json::to_vec(public_key)?,
            serde_json::to_vec(signature_key_pair)?,
        )
    }

    fn queued_proposal_refs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<ProposalRef>, Self::Error> {
        self.read_list(PROPOSAL_QUEUE_REFS_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn queued_proposals<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<(ProposalRef, QueuedProposal)>, Self::Error> {
        let refs: Vec<ProposalRef> =
            self.read_list(PROPOSAL_QUEUE_REFS_LABEL, &serde_json::to_vec(group_id)?)?;

        refs.into_iter()
            .map(|proposal_ref| -> Result<_, _> {
                let key = (group_id, &proposal_ref);
                let key = serde_json::to_vec(&key)?;

                let proposal =
                    self.read(QUEUED_PROPOSAL_LABEL, &key)?
                        .ok_or(MlsStoreError::Inconsistent(
                            "queued proposal without its record",
                        ))?;
                Ok((proposal_ref, proposal))
            })
            .collect::<Result<Vec<_>, _>>()
    }

    fn tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<TreeSync>, Self::Error> {
        self.read(TREE_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn group_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupContext>, Self::Error> {
        self.read(GROUP_CONTEXT_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<InterimTranscriptHash>, Self::Error> {
        self.read(
            INTERIM_TRANSCRIPT_HASH_LABEL,
            &serde_json::to_vec(group_id)?,
        )
    }

    fn confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ConfirmationTag>, Self::Error> {
        self.read(CONFIRMATION_TAG_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<Option<SignatureKeyPair>, Self::Error> {
        self.read(SIGNATURE_KEY_PAIR_LABEL, &serde_json::to_vec(public_key)?)
    }

    fn write_key_package<
        HashReference: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &HashReference,
        key_package: &KeyPackage,
    ) -> Result<(), Self::Error> {
        let key = serde_json::to_vec(&hash_ref)?;
        let value = serde_json::to_vec(&key_package)?;

        self.write::<CURRENT_VERSION>(KEY_PACKAGE_LABEL, &key, value)
    }

    fn write_psk<
        PskId: traits::PskId<CURRENT_VERSION>,
        PskBundle: traits::PskBundle<CURRENT_VERSION>,
    >(
        &self,
        psk_id: &PskId,
        psk: &PskBundle,
    ) -> Result<(), Self::Error> {
        self.write::<CURRENT_VERSION>(
            PSK_LABEL,
            &serde_json::to_vec(&psk_id)?,
            serde_json::to_vec(&psk)?,
        )
    }

    fn write_encryption_key_pair<
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
        key_pair: &HpkeKeyPair,
    ) -> Result<(), Self::Error> {
        self.write::<CURRENT_VERSION>(
            ENCRYPTION_KEY_PAIR_LABEL,
            &serde_json::to_vec(public_key)?,
            serde_json::to_vec(key_pair)?,
        )
    }

    fn key_package<
        KeyPackageRef: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<Option<KeyPackage>, Self::Error> {
        let key = serde_json::to_vec(&hash_ref)?;
        self.read(KEY_PACKAGE_LABEL, &key)
    }

    fn psk<PskBundle: traits::PskBundle<CURRENT_VERSION>, PskId: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskId,
    ) -> Result<Option<PskBundle>, Self::Error> {
        self.read(PSK_LABEL, &serde_json::to_vec(&psk_id)?)
    }

    fn encryption_key_pair<
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<Option<HpkeKeyPair>, Self::Error> {
        self.read(ENCRYPTION_KEY_PAIR_LABEL, &serde_json::to_vec(public_key)?)
    }

    fn delete_signature_key_pair<
        SignaturePublicKeuy: traits::SignaturePublicKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKeuy,
    ) -> Result<(), Self::Error> {
        self.delete::<CURRENT_VERSION>(SIGNATURE_KEY_PAIR_LABEL, &serde_json::to_vec(public_key)?)
    }

    fn delete_encryption_key_pair<EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<(), Self::Error> {
        self.delete::<CURRENT_VERSION>(ENCRYPTION_KEY_PAIR_LABEL, &serde_json::to_vec(&public_key)?)
    }

    fn delete_key_package<KeyPackageRef: traits::HashReference<CURRENT_VERSION>>(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<(), Self::Error> {
        self.delete::<CURRENT_VERSION>(KEY_PACKAGE_LABEL, &serde_json::to_vec(&hash_ref)?)
    }

    fn delete_psk<PskKey: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskKey,
    ) -> Result<(), Self::Error> {
        self.delete::<CURRENT_VERSION>(PSK_LABEL, &serde_json::to_vec(&psk_id)?)
    }

    fn group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupState>, Self::Error> {
        self.read(GROUP_STATE_LABEL, &serde_json::to_vec(&group_id)?)
    }

    fn write_group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_state: &GroupState,
    ) -> Result<(), Self::Error> {
        self.write::<CURRENT_VERSION>(
            GROUP_STATE_LABEL,
            &serde_json::to_vec(group_id)?,
            serde_json::to_vec(group_state)?,
        )
    }

    fn delete_group_state<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete::<CURRENT_VERSION>(GROUP_STATE_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MessageSecrets>, Self::Error> {
        self.read(MESSAGE_SECRETS_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn write_message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        message_secrets: &MessageSecrets,
    ) -> Result<(), Self::Error> {
        self.write::<CURRENT_VERSION>(
            MESSAGE_SECRETS_LABEL,
            &serde_json::to_vec(group_id)?,
            encode_binary(message_secrets)?,
        )
    }

    fn delete_message_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete::<CURRENT_VERSION>(MESSAGE_SECRETS_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ResumptionPskStore>, Self::Error> {
        self.read(RESUMPTION_PSK_STORE_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn write_resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        resumption_psk_store: &ResumptionPskStore,
    ) -> Result<(), Self::Error> {
        self.write::<CURRENT_VERSION>(
            RESUMPTION_PSK_STORE_LABEL,
            &serde_json::to_vec(group_id)?,
            serde_json::to_vec(resumption_psk_store)?,
        )
    }

    fn delete_all_resumption_psk_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete::<CURRENT_VERSION>(RESUMPTION_PSK_STORE_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<LeafNodeIndex>, Self::Error> {
        self.read(OWN_LEAF_NODE_INDEX_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn write_own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        own_leaf_index: &LeafNodeIndex,
    ) -> Result<(), Self::Error> {
        self.write::<CURRENT_VERSION>(
            OWN_LEAF_NODE_INDEX_LABEL,
            &serde_json::to_vec(group_id)?,
            serde_json::to_vec(own_leaf_index)?,
        )
    }

    fn delete_own_leaf_index<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete::<CURRENT_VERSION>(OWN_LEAF_NODE_INDEX_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupEpochSecrets>, Self::Error> {
        self.read(EPOCH_SECRETS_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn write_group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_epoch_secrets: &GroupEpochSecrets,
    ) -> Result<(), Self::Error> {
        self.write::<CURRENT_VERSION>(
            EPOCH_SECRETS_LABEL,
            &serde_json::to_vec(group_id)?,
            serde_json::to_vec(group_epoch_secrets)?,
        )
    }

    fn delete_group_epoch_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete::<CURRENT_VERSION>(EPOCH_SECRETS_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn write_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
        key_pairs: &[HpkeKeyPair],
    ) -> Result<(), Self::Error> {
        let key = epoch_key_pairs_id(group_id, epoch, leaf_index)?;
        let value = serde_json::to_vec(key_pairs)?;

        self.write::<CURRENT_VERSION>(EPOCH_KEY_PAIRS_LABEL, &key, value)
    }

    fn encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<Vec<HpkeKeyPair>, Self::Error> {
        let key = epoch_key_pairs_id(group_id, epoch, leaf_index)?;
        let storage_key = build_key_from_vec::<CURRENT_VERSION>(EPOCH_KEY_PAIRS_LABEL, key);

        let value = self.get_raw(&storage_key)?;

        if let Some(value) = value {
            return decode_value(&value);
        }

        Ok(vec![])
    }

    fn delete_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<(), Self::Error> {
        let key = epoch_key_pairs_id(group_id, epoch, leaf_index)?;
        self.delete::<CURRENT_VERSION>(EPOCH_KEY_PAIRS_LABEL, &key)
    }

    fn clear_proposal_queue<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        // Get all proposal refs for this group.
        let proposal_refs: Vec<ProposalRef> =
            self.read_list(PROPOSAL_QUEUE_REFS_LABEL, &serde_json::to_vec(group_id)?)?;
        for proposal_ref in proposal_refs {
            // Delete all proposals.
            let key = serde_json::to_vec(&(group_id, proposal_ref))?;
            self.delete::<CURRENT_VERSION>(QUEUED_PROPOSAL_LABEL, &key)?;
        }

        // Delete the proposal refs from the store.
        self.delete::<CURRENT_VERSION>(PROPOSAL_QUEUE_REFS_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn mls_group_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MlsGroupJoinConfig>, Self::Error> {
        self.read(JOIN_CONFIG_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn write_mls_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        config: &MlsGroupJoinConfig,
    ) -> Result<(), Self::Error> {
        let key = serde_json::to_vec(group_id)?;
        let value = serde_json::to_vec(config)?;

        self.write::<CURRENT_VERSION>(JOIN_CONFIG_LABEL, &key, value)
    }

    fn own_leaf_nodes<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<LeafNode>, Self::Error> {
        self.read_list(OWN_LEAF_NODES_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn append_own_leaf_node<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        leaf_node: &LeafNode,
    ) -> Result<(), Self::Error> {
        let key = serde_json::to_vec(group_id)?;
        let value = serde_json::to_vec(leaf_node)?;
        self.append::<CURRENT_VERSION>(OWN_LEAF_NODES_LABEL, &key, value)
    }

    fn delete_own_leaf_nodes<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete::<CURRENT_VERSION>(OWN_LEAF_NODES_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn delete_group_config<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete::<CURRENT_VERSION>(JOIN_CONFIG_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn delete_tree<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete::<CURRENT_VERSION>(TREE_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn delete_confirmation_tag<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete::<CURRENT_VERSION>(CONFIRMATION_TAG_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn delete_context<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete::<CURRENT_VERSION>(GROUP_CONTEXT_LABEL, &serde_json::to_vec(group_id)?)
    }

    fn delete_interim_transcript_hash<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.delete::<CURRENT_VERSION>(
            INTERIM_TRANSCRIPT_HASH_LABEL,
            &serde_json::to_vec(group_id)?,
        )
    }

    fn remove_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
    ) -> Result<(), Self::Error> {
        let key = serde_json::to_vec(group_id)?;
        let value = serde_json::to_vec(proposal_ref)?;

        self.remove_item::<CURRENT_VERSION>(PROPOSAL_QUEUE_REFS_LABEL, &key, value)?;

        let key = serde_json::to_vec(&(group_id, proposal_ref))?;
        self.delete::<CURRENT_VERSION>(QUEUED_PROPOSAL_LABEL, &key)
    }
}

/// A storage key: label, key, version.
fn build_key_from_vec<const V: u16>(label: &[u8], key: Vec<u8>) -> Vec<u8> {
    let mut key_out = label.to_vec();
    key_out.extend_from_slice(&key);
    key_out.extend_from_slice(&u16::to_be_bytes(V));
    key_out
}

fn epoch_key_pairs_id(
    group_id: &impl traits::GroupId<CURRENT_VERSION>,
    epoch: &impl traits::EpochKey<CURRENT_VERSION>,
    leaf_index: u32,
) -> Result<Vec<u8>, MlsStoreError> {
    let mut key = serde_json::to_vec(group_id)?;
    key.extend_from_slice(&serde_json::to_vec(epoch)?);
    key.extend_from_slice(&serde_json::to_vec(&leaf_index)?);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::record_pieces::PIECE_BYTES;

    const LABEL: &[u8] = b"Tree";

    fn store() -> (tempfile::TempDir, RedbMlsStorage) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let s = RedbMlsStorage::new(Arc::new(db), Arc::new(ProfileKey::generate()));
        (dir, s)
    }

    fn put(s: &RedbMlsStorage, key: &[u8], value: Option<Vec<u8>>) {
        match value {
            Some(v) => s.write::<CURRENT_VERSION>(LABEL, key, v).unwrap(),
            None => s.delete::<CURRENT_VERSION>(LABEL, key).unwrap(),
        }
        let txn = s.db.begin_write().unwrap();
        s.write_overlay(&txn, &s.take_overlay()).unwrap();
        txn.commit().unwrap();
    }

    fn get(s: &RedbMlsStorage, key: &[u8]) -> Option<Vec<u8>> {
        s.get_raw(&build_key_from_vec::<CURRENT_VERSION>(LABEL, key.to_vec()))
            .unwrap()
    }

    fn pieces(s: &RedbMlsStorage) -> (usize, u64) {
        record_pieces::census(&s.db)
    }

    /// `len` bytes with no two pieces alike.
    fn value(len: usize, seed: u8) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(seed);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn a_large_record_is_stored_in_pieces_and_reads_back_the_same() {
        let (_d, s) = store();
        let big = value(10 * PIECE_BYTES + 123, 1);
        put(&s, b"a", Some(big.clone()));
        assert_eq!(get(&s, b"a"), Some(big));
        assert_eq!(pieces(&s), (11, 11));
        let small = value(100, 2);
        put(&s, b"b", Some(small.clone()));
        assert_eq!(get(&s, b"b"), Some(small));
        assert_eq!(pieces(&s), (11, 11), "small records are not cut");
    }

    #[test]
    fn rewriting_a_large_record_stores_only_the_changed_pieces_and_frees_the_old_ones() {
        let (_d, s) = store();
        let mut v = value(8 * PIECE_BYTES, 3);
        put(&s, b"a", Some(v.clone()));
        for round in 0..20u8 {
            // One byte in the 5th piece changes, as a ratchet step does.
            v[4 * PIECE_BYTES + 10] = round;
            put(&s, b"a", Some(v.clone()));
            assert_eq!(get(&s, b"a").as_ref(), Some(&v));
            assert_eq!(pieces(&s), (8, 8), "round {round}: old pieces freed");
        }
        // Shrinking to a small record frees every piece.
        put(&s, b"a", Some(value(10, 4)));
        assert_eq!(pieces(&s), (0, 0));
    }

    #[test]
    fn a_piece_shared_by_two_records_lives_until_the_last_one_goes() {
        let (_d, s) = store();
        let v = value(5 * PIECE_BYTES, 5);
        put(&s, b"a", Some(v.clone()));
        put(&s, b"b", Some(v.clone()));
        assert_eq!(pieces(&s), (5, 10));
        put(&s, b"a", None);
        assert_eq!(get(&s, b"a"), None);
        assert_eq!(get(&s, b"b"), Some(v), "b still reads whole");
        assert_eq!(pieces(&s), (5, 5));
        put(&s, b"b", None);
        assert_eq!(pieces(&s), (0, 0));
    }

    #[test]
    fn a_missing_piece_is_a_typed_error_not_a_wrong_value() {
        let (_d, s) = store();
        put(&s, b"a", Some(value(4 * PIECE_BYTES, 6)));
        record_pieces::lose_a_piece(&s.db);
        let err = s
            .get_raw(&build_key_from_vec::<CURRENT_VERSION>(LABEL, b"a".to_vec()))
            .unwrap_err();
        assert!(matches!(err, MlsStoreError::Inconsistent(_)), "{err}");
    }
}
