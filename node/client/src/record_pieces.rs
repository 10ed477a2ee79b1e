//! Large records of the client's MLS storage, kept as pieces named by content.
//!
//! OpenMLS hands its storage whole records: the ratchet tree, and the message
//! secrets, which it rewrites after every message read and which carry the
//! member lists of past epochs. In a group of 1,000 on the X-Wing suite those are
//! megabytes, of which one message changes a few bytes. A record of
//! [`PIECED_FROM`] bytes or more is therefore cut into [`PIECE_BYTES`] pieces, each
//! sealed on its own under its content id ([`ProfileKey::content_id`]); the
//! record's own place holds the list of ids. Rewriting it stores only the pieces
//! that changed. Each piece counts the records using it and goes with the last
//! one, in the same transaction as the records.

use std::collections::BTreeSet;

use quicnprotochat_crypto::at_rest::ProfileKey;
use redb::{ReadableTable, TableDefinition};

/// Pieces, by content id, each sealed.
const PIECES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("mls_chunks");
/// How many records use each piece.
const USERS: TableDefinition<&[u8; 32], u32> = TableDefinition::new("mls_chunk_refs");

/// Records at least this large are stored in pieces.
pub(crate) const PIECED_FROM: usize = 64 * 1024;
/// The size of one piece.
pub(crate) const PIECE_BYTES: usize = 16 * 1024;
/// First byte of a piece list: then the ids of the pieces, 32 bytes each, in
/// order. No JSON or binary-encoded record starts with it.
const PIECE_LIST_TAG: u8 = 0xC7;

/// A piece id.
pub(crate) type PieceId = [u8; 32];

/// Why a record in pieces could not be read back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PieceError {
    #[error("a piece of a stored record is missing")]
    Missing,
    #[error("client store: {0}")]
    Store(String),
}

/// The ids in `plain` if it is a piece list.
pub(crate) fn piece_list(plain: &[u8]) -> Option<Vec<PieceId>> {
    match plain.split_first() {
        Some((&PIECE_LIST_TAG, ids)) => Some(
            ids.chunks_exact(32)
                .map(|id| id.try_into().expect("32-byte ids"))
                .collect(),
        ),
        _ => None,
    }
}

/// Only a small stored value can be a piece list (records up to 32 MiB have
/// lists under [`PIECED_FROM`]): larger ones need not be opened to tell.
pub(crate) fn may_be_piece_list(stored: &[u8]) -> bool {
    stored.len() <= PIECED_FROM
}

fn sealed_name(id: &PieceId) -> Vec<u8> {
    let mut name = b"mls_chunks/".to_vec();
    name.extend_from_slice(id);
    name
}

/// A record cut into pieces: what goes in its own place, and the pieces.
pub(crate) struct Split<'v> {
    /// The piece list.
    pub list: Vec<u8>,
    pieces: Vec<(PieceId, &'v [u8])>,
}

/// Cuts `value` into pieces if it is large enough to be stored that way.
pub(crate) fn split<'v>(key: &ProfileKey, value: &'v [u8]) -> Option<Split<'v>> {
    if value.len() < PIECED_FROM {
        return None;
    }
    let mut list = Vec::with_capacity(1 + value.len().div_ceil(PIECE_BYTES) * 32);
    list.push(PIECE_LIST_TAG);
    let pieces: Vec<(PieceId, &[u8])> = value
        .chunks(PIECE_BYTES)
        .map(|piece| {
            let id = key.content_id(piece);
            list.extend_from_slice(&id);
            (id, piece)
        })
        .collect();
    Some(Split { list, pieces })
}

/// The piece tables inside one write transaction.
pub(crate) struct PieceWriter<'t> {
    pieces: redb::Table<'t, &'static [u8; 32], &'static [u8]>,
    users: redb::Table<'t, &'static [u8; 32], u32>,
}

impl<'t> PieceWriter<'t> {
    pub(crate) fn open(txn: &'t redb::WriteTransaction) -> Result<Self, redb::Error> {
        Ok(PieceWriter {
            pieces: txn.open_table(PIECES)?,
            users: txn.open_table(USERS)?,
        })
    }

    /// One record moves from the pieces `old` to those of `new` (either may be
    /// empty): pieces it keeps are left alone, new ones gain a user (stored if
    /// they had none), dropped ones lose one (deleted with the last). A record
    /// counts once per distinct piece.
    pub(crate) fn replace(
        &mut self,
        key: &ProfileKey,
        old: &[PieceId],
        new: Option<&Split<'_>>,
    ) -> Result<(), redb::Error> {
        let kept: BTreeSet<PieceId> = old.iter().copied().collect();
        let mut now = BTreeSet::new();
        for (id, piece) in new.map_or(&[][..], |s| &s.pieces[..]) {
            if !now.insert(*id) || kept.contains(id) {
                continue;
            }
            let users = self.users.get(id)?.map_or(0, |c| c.value());
            if users == 0 {
                self.pieces
                    .insert(id, key.seal(&sealed_name(id), piece).as_slice())?;
            }
            self.users.insert(id, users + 1)?;
        }
        for id in kept.difference(&now) {
            let users = self.users.get(id)?.map_or(0, |c| c.value());
            match users {
                0 | 1 => {
                    self.users.remove(id)?;
                    self.pieces.remove(id)?;
                }
                users => {
                    self.users.insert(id, users - 1)?;
                }
            }
        }
        Ok(())
    }
}

/// Puts a record back together from its pieces.
pub(crate) fn join(
    txn: &redb::ReadTransaction,
    key: &ProfileKey,
    ids: &[PieceId],
) -> Result<Vec<u8>, PieceError> {
    let err = |e: &dyn std::fmt::Display| PieceError::Store(e.to_string());
    let pieces = txn.open_table(PIECES).map_err(|e| err(&e))?;
    let mut out = Vec::with_capacity(ids.len() * PIECE_BYTES);
    for id in ids {
        let piece = pieces
            .get(id)
            .map_err(|e| err(&e))?
            .ok_or(PieceError::Missing)?;
        out.extend_from_slice(
            &key.open(&sealed_name(id), piece.value())
                .map_err(|e| err(&e))?,
        );
    }
    Ok(out)
}

/// Pieces stored, and the sum of their use counts (for tests).
#[cfg(test)]
pub(crate) fn census(db: &redb::Database) -> (usize, u64) {
    use redb::ReadableDatabase;
    let txn = db.begin_read().unwrap();
    let n = match txn.open_table(PIECES) {
        Ok(t) => t.iter().unwrap().count(),
        Err(_) => 0,
    };
    let users = match txn.open_table(USERS) {
        Ok(t) => t.iter().unwrap().map(|e| e.unwrap().1.value() as u64).sum(),
        Err(_) => 0,
    };
    (n, users)
}

/// Deletes one stored piece, as damage would (for tests).
#[cfg(test)]
pub(crate) fn lose_a_piece(db: &redb::Database) {
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(PIECES).unwrap();
        let id = *t.first().unwrap().unwrap().0.value();
        t.remove(&id).unwrap();
    }
    txn.commit().unwrap();
}
