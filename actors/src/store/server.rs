//! The node's tables and the operations on them.
//!
//! Messages are appended to `log`, keyed by a node-global counter, so consecutive
//! writes touch consecutive keys and redb's copy-on-write dirties few pages per
//! batch; `inbox_idx (inbox, seq) → log key` finds an inbox's messages, and
//! `inbox_meta` holds each inbox's last seq and ack mark. All three change in the
//! same transaction, so a crash leaves an inbox either before or after a write.
//!
//! A body many inboxes share (a group message, a commit, a Welcome) is one `log`
//! entry that several `inbox_idx` entries point at; `body_refs` counts them and
//! the entry goes with the last ack. A recipient's own small part of such an
//! envelope sits in `parts`. Messages the node could not queue for a full inbox
//! are counted in `missed` until the marker that tells the owner is queued.

use std::path::Path;
use std::sync::Arc;

use quicnprotochat_wire::fanout::Missed;
use quicnprotochat_wire::{Envelope, IdentityKey};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::fences::{GROUP_CREATORS, GROUP_MEMBERS, GROUPS, GROUPS_CREATED};
use crate::core::inbox::InboxMeta;

pub(super) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(super) const INBOX_IDX: TableDefinition<(&[u8; 32], u64), u64> =
    TableDefinition::new("inbox_idx");
pub(super) const INBOX_META: TableDefinition<&[u8; 32], (u64, u64)> =
    TableDefinition::new("inbox_meta");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Log key of a shared body → how many inbox entries point at it (absent: the
/// entry belongs to one inbox alone).
pub(super) const BODY_REFS: TableDefinition<u64, u64> = TableDefinition::new("body_refs");
/// (inbox, seq) → the recipient's part of a shared envelope (absent when empty).
pub(super) const PARTS: TableDefinition<(&[u8; 32], u64), &[u8]> = TableDefinition::new("parts");
/// Inbox → messages dropped for it while full, not yet told (an encoded
/// missed-messages envelope).
pub(super) const MISSED: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("missed");
/// Log keys of missed-messages notes (the node's own envelopes).
pub(super) const NOTES: TableDefinition<u64, ()> = TableDefinition::new("notes");

const KEY_SCHEMA_VERSION: &str = "schema_version";
const KEY_NEXT_LOG: &str = "next_log";

/// Version of the table layout this code writes. Opening a file of a newer version
/// is refused; older versions are migrated forward.
///
/// Version 2 added shared bodies (`body_refs`, `parts`) and `missed`: a version-1
/// node would delete a shared body with its first ack, so it must not open a
/// version-2 file. Version 1 files need nothing but the new (empty) tables.
///
/// Version 3 added each group's GroupInfo and the index of groups by member
/// ([`super::group_directory`]): a version-2 node would move fences without
/// the index, so it must not open a version-3 file. Older files get the index
/// built from their fences.
///
/// Version 4 keeps KeyPackages framed as RFC 9420 MLSMessages; older files have
/// theirs framed on open.
pub const SCHEMA_VERSION: u64 = 4;

/// Failures of the store. All of them are the node's fault, not the caller's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    /// The database file could not be opened.
    Database(#[from] redb::DatabaseError),
    #[error("transaction: {0}")]
    /// A transaction could not begin.
    Transaction(#[from] redb::TransactionError),
    #[error("table: {0}")]
    /// A table could not be opened.
    Table(#[from] redb::TableError),
    #[error("storage: {0}")]
    /// Reading or writing failed.
    Storage(#[from] redb::StorageError),
    #[error("commit: {0}")]
    /// A commit failed. Whether it is durable is not known: a disk can fail
    /// after landing the bytes that make it so.
    Commit(#[from] redb::CommitError),
    #[error("storage: {0}")]
    /// Any other redb failure.
    Redb(#[from] redb::Error),
    #[error(
        "database schema version {found} is newer than this node understands ({SCHEMA_VERSION})"
    )]
    /// The file was written by a newer node.
    SchemaTooNew {
        /// The version the file says.
        found: u64,
    },
    #[error("the store failed while committing this write; it may or may not be stored: {0}")]
    /// This write's commit failed: it may be on disk or not (a torn write can
    /// land the commit and still fail). The writer refuses everything after it.
    CommitOutcomeUnknown(String),
    #[error("store is unavailable after an earlier write failure: {0}")]
    /// An earlier commit failed: the writer refuses everything after it (why);
    /// this write was not applied.
    Poisoned(String),
    #[error("store writer has shut down")]
    /// The writer thread has stopped.
    WriterGone,
    #[error("PostgreSQL: {0}")]
    /// PostgreSQL refused or could not be reached (what it said).
    Postgres(String),
    #[error(
        "the database's synchronous_commit is {0}: a commit could return before it is durable; set it to on (the default)"
    )]
    /// The database may answer a commit before it is durable.
    NotDurable(String),
    #[error("the target database already holds node data: copy into an empty database")]
    /// A copy's target is not empty (nothing was written).
    TargetNotEmpty,
    #[error("a store read task failed")]
    /// A read on the blocking pool panicked or was cancelled.
    ReadTask,
    #[error("inconsistent store: {0}")]
    /// What the store holds contradicts itself (what).
    Corrupt(String),
    #[error("cannot make {path} owner-only: {source}")]
    /// The file or folder could not be made owner-only.
    Permissions {
        /// Which one.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// How the store commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// fsync every commit (`Durability::Immediate`). Only tests of pure logic turn
    /// this off; the node never does.
    pub durable: bool,
    /// redb two-phase commit: the commit is protected by a second fsync rather than
    /// redb's non-cryptographic checksum, which bytes chosen by remote parties could
    /// otherwise be crafted against.
    pub two_phase_commit: bool,
    /// Memory redb may use to cache pages. redb's own default (1 GiB) is most
    /// of a node's memory under write load: recently written payloads stay
    /// cached (measured: 1.2 GB RSS after 6 s of 1 MiB enqueues).
    pub cache_bytes: usize,
}

/// Default page cache of the node's database.
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durable: true,
            two_phase_commit: true,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// The node's database.
#[derive(Clone)]
pub struct ServerStore {
    db: Arc<Database>,
    options: StoreOptions,
}

impl ServerStore {
    /// Opens (or creates) the node's database and makes sure every table exists.
    /// Opens (or creates) the node's database at `path`, owner-only (0600): it
    /// holds the OPAQUE server setup and the password records.
    pub fn open(path: &Path, options: StoreOptions) -> Result<ServerStore, StoreError> {
        quicnprotochat_crypto::private_fs::private_file(path).map_err(|source| {
            StoreError::Permissions {
                path: path.to_owned(),
                source,
            }
        })?;
        let db = redb::Builder::new()
            .set_cache_size(options.cache_bytes)
            .create(path)?;
        ServerStore::init(db, options)
    }

    /// Opens (or creates) the node's database on `backend`: for tests that
    /// inject I/O failures under redb. The node itself always uses [`Self::open`].
    #[doc(hidden)]
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        options: StoreOptions,
    ) -> Result<ServerStore, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(options.cache_bytes)
            .create_with_backend(backend)?;
        ServerStore::init(db, options)
    }

    /// Makes sure every table exists, migrating older layouts.
    fn init(db: Database, options: StoreOptions) -> Result<ServerStore, StoreError> {
        let store = ServerStore {
            db: Arc::new(db),
            options,
        };
        let txn = store.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get(KEY_SCHEMA_VERSION)?.map(|v| v.value());
            match found {
                None => {
                    meta.insert(KEY_SCHEMA_VERSION, SCHEMA_VERSION)?;
                }
                Some(v) if v > SCHEMA_VERSION => return Err(StoreError::SchemaTooNew { found: v }),
                Some(v) if v < SCHEMA_VERSION => {
                    tracing::info!(from = v, to = SCHEMA_VERSION, "migrating the node database");
                    meta.insert(KEY_SCHEMA_VERSION, SCHEMA_VERSION)?;
                    if v < 3 {
                        super::group_directory::open_tables(&txn)?;
                        let groups = super::group_directory::rebuild_member_index(&txn)?;
                        tracing::info!(groups, "indexed the groups' members");
                    }
                    if v < 4 {
                        let framed = super::auth::frame_stored_key_packages(&txn)?;
                        tracing::info!(framed, "framed the stored KeyPackages as MLSMessages");
                    }
                }
                Some(_) => {}
            }
            txn.open_table(LOG)?;
            txn.open_table(INBOX_IDX)?;
            txn.open_table(INBOX_META)?;
            txn.open_table(BODY_REFS)?;
            txn.open_table(PARTS)?;
            txn.open_table(MISSED)?;
            txn.open_table(NOTES)?;
            txn.open_table(GROUPS)?;
            txn.open_table(GROUP_MEMBERS)?;
            txn.open_table(GROUP_CREATORS)?;
            txn.open_table(GROUPS_CREATED)?;
            super::group_directory::open_tables(&txn)?;
            use super::auth::*;
            txn.open_table(SECRETS)?;
            txn.open_table(USERS)?;
            txn.open_table(DEVICES)?;
            txn.open_table(ACCOUNT_DEVICES)?;
            txn.open_table(SESSIONS)?;
            txn.open_table(KEY_PACKAGES)?;
            txn.open_table(LAST_RESORT)?;
            txn.open_table(KP_STATS)?;
            txn.open_table(KEY_PACKAGES_PQ)?;
            txn.open_table(LAST_RESORT_PQ)?;
            txn.open_table(KP_STATS_PQ)?;
            txn.open_table(HYBRID_KEYS)?;
            txn.open_table(ACCESS_KEYS)?;
            txn.open_table(RETIRED_DEVICES)?;
        }
        txn.commit()?;
        Ok(store)
    }

    /// The database, for read transactions of other stores' tables.
    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// How the store commits.
    pub fn options(&self) -> StoreOptions {
        self.options
    }

    /// A write transaction outside the writer thread, for tests that drive
    /// [`WriteBatch`] directly. The node itself writes only through the writer.
    #[doc(hidden)]
    pub fn begin_write_for_tests(&self) -> Result<WriteTransaction, StoreError> {
        self.begin_write()
    }

    pub(crate) fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        if !self.options.durable {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        }
        txn.set_two_phase_commit(self.options.two_phase_commit);
        Ok(txn)
    }

    /// The persisted marks of an inbox (all zero for one never used).
    /// Every inbox that holds unacknowledged messages.
    pub fn inboxes_with_messages(&self) -> Result<Vec<IdentityKey>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INBOX_META)?;
        let mut out = Vec::new();
        for e in table.iter()? {
            let (k, v) = e?;
            let (last_seq, acked) = v.value();
            if last_seq > acked {
                out.push(IdentityKey(*k.value()));
            }
        }
        Ok(out)
    }

    /// An inbox's marks: its highest seq and its highest acknowledged seq.
    pub fn inbox_meta(&self, inbox: &IdentityKey) -> Result<InboxMeta, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INBOX_META)?;
        Ok(read_meta(&table, inbox)?)
    }

    /// Envelopes of `inbox` with seq > `after`, in seq order, at most `limit`, and
    /// no more than `max_bytes` of payload (but always at least one if any exist).
    pub fn fetch(
        &self,
        inbox: &IdentityKey,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        let txn = self.db.begin_read()?;
        let idx = txn.open_table(INBOX_IDX)?;
        let log = txn.open_table(LOG)?;
        let refs = txn.open_table(BODY_REFS)?;
        let parts = txn.open_table(PARTS)?;
        let notes = txn.open_table(NOTES)?;
        let start = after.saturating_add(1);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if after == u64::MAX {
            return Ok(out);
        }
        for entry in idx
            .range((&inbox.0, start)..=(&inbox.0, u64::MAX))?
            .take(limit)
        {
            let (key, log_key) = entry?;
            let seq = key.value().1;
            let log_key = log_key.value();
            let stored = log.get(log_key)?.ok_or_else(|| {
                StoreError::Corrupt(format!("index points to missing log entry {log_key}"))
            })?;
            let data = stored.value().to_vec();
            bytes += data.len();
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(if refs.get(log_key)?.is_some() {
                let part = parts.get((&inbox.0, seq))?;
                let part = part.map(|p| p.value().to_vec()).unwrap_or_default();
                Envelope::shared(seq, part, data)
            } else if notes.get(log_key)?.is_some() {
                Envelope::missed(seq, data)
            } else {
                Envelope::direct(seq, data)
            });
        }
        Ok(out)
    }

    /// How many shared bodies are stored, and their bytes (for tests and the
    /// performance figures).
    pub fn shared_bodies(&self) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read()?;
        let refs = txn.open_table(BODY_REFS)?;
        let log = txn.open_table(LOG)?;
        let (mut n, mut bytes) = (0, 0);
        for e in refs.iter()? {
            let (k, _) = e?;
            n += 1;
            bytes += log.get(k.value())?.map_or(0, |v| v.value().len() as u64);
        }
        Ok((n, bytes))
    }

    /// Number of stored (unacknowledged) messages of all inboxes.
    pub fn stored_total(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(INBOX_IDX)?.len()?)
    }

    /// Number of stored (unacknowledged) messages of `inbox`; for tests and metrics.
    pub fn stored_count(&self, inbox: &IdentityKey) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let idx = txn.open_table(INBOX_IDX)?;
        let mut n = 0;
        for e in idx.range((&inbox.0, 0)..=(&inbox.0, u64::MAX))? {
            e?;
            n += 1;
        }
        Ok(n)
    }
}

fn read_meta(
    table: &impl ReadableTable<&'static [u8; 32], (u64, u64)>,
    inbox: &IdentityKey,
) -> Result<InboxMeta, redb::StorageError> {
    Ok(table
        .get(&inbox.0)?
        .map(|v| {
            let (last_seq, acked) = v.value();
            InboxMeta {
                last_seq,
                acked,
                missed: 0,
            }
        })
        .unwrap_or_default())
}

/// The writes of one store transaction. The writer thread opens one per batch.
pub struct WriteBatch<'txn> {
    log: redb::Table<'txn, u64, &'static [u8]>,
    idx: redb::Table<'txn, (&'static [u8; 32], u64), u64>,
    meta: redb::Table<'txn, &'static [u8; 32], (u64, u64)>,
    refs: redb::Table<'txn, u64, u64>,
    parts: redb::Table<'txn, (&'static [u8; 32], u64), &'static [u8]>,
    missed: redb::Table<'txn, &'static [u8; 32], &'static [u8]>,
    notes: redb::Table<'txn, u64, ()>,
    counters: redb::Table<'txn, &'static str, u64>,
    next_log: u64,
}

impl<'txn> WriteBatch<'txn> {
    /// Opens the tables a batch writes to, inside `txn`.
    pub fn open(txn: &'txn WriteTransaction) -> Result<WriteBatch<'txn>, StoreError> {
        let counters = txn.open_table(META)?;
        let next_log = counters.get(KEY_NEXT_LOG)?.map(|v| v.value()).unwrap_or(1);
        Ok(WriteBatch {
            log: txn.open_table(LOG)?,
            idx: txn.open_table(INBOX_IDX)?,
            meta: txn.open_table(INBOX_META)?,
            refs: txn.open_table(BODY_REFS)?,
            parts: txn.open_table(PARTS)?,
            missed: txn.open_table(MISSED)?,
            notes: txn.open_table(NOTES)?,
            counters,
            next_log,
        })
    }

    /// The inbox's marks as of this transaction (sees the batch's own writes).
    pub fn inbox_meta(&self, inbox: &IdentityKey) -> Result<InboxMeta, StoreError> {
        Ok(read_meta(&self.meta, inbox)?)
    }

    /// Stores message `seq` of `inbox`. Seqs of one inbox must arrive in order,
    /// each exactly one above the last stored: anything else is a bug upstream, and
    /// refusing it here keeps a gap or a reuse from ever reaching the disk.
    pub fn append(
        &mut self,
        inbox: &IdentityKey,
        seq: u64,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        let mut m = self.next_meta(inbox, seq)?;
        let log_key = self.next_log;
        self.next_log += 1;
        self.log.insert(log_key, payload)?;
        self.idx.insert((&inbox.0, seq), log_key)?;
        m.last_seq = seq;
        self.meta.insert(&inbox.0, (m.last_seq, m.acked))?;
        Ok(())
    }

    /// The inbox's marks, once `seq` is checked to be the next one.
    fn next_meta(&self, inbox: &IdentityKey, seq: u64) -> Result<InboxMeta, StoreError> {
        let m = self.inbox_meta(inbox)?;
        if seq != m.last_seq + 1 {
            return Err(StoreError::Corrupt(format!(
                "append of seq {seq} to inbox {inbox:?} whose last seq is {}",
                m.last_seq
            )));
        }
        Ok(m)
    }

    /// Stores a body several inboxes will share; returns its log key. It has no
    /// reference yet: add them with [`WriteBatch::append_shared`] in the same
    /// transaction.
    pub fn put_body(&mut self, body: &[u8]) -> Result<u64, StoreError> {
        let log_key = self.next_log;
        self.next_log += 1;
        self.log.insert(log_key, body)?;
        self.refs.insert(log_key, 0)?;
        Ok(log_key)
    }

    /// Stores message `seq` of `inbox` as a reference to the shared body at
    /// `body` with this recipient's `part`. Same seq rule as [`WriteBatch::append`].
    pub fn append_shared(
        &mut self,
        inbox: &IdentityKey,
        seq: u64,
        body: u64,
        part: &[u8],
    ) -> Result<(), StoreError> {
        let mut m = self.next_meta(inbox, seq)?;
        let refs = self
            .refs
            .get(body)?
            .map(|v| v.value())
            .ok_or_else(|| StoreError::Corrupt(format!("reference to unknown body {body}")))?;
        self.refs.insert(body, refs + 1)?;
        if !part.is_empty() {
            self.parts.insert((&inbox.0, seq), part)?;
        }
        self.idx.insert((&inbox.0, seq), body)?;
        m.last_seq = seq;
        self.meta.insert(&inbox.0, (m.last_seq, m.acked))?;
        Ok(())
    }

    /// Counts a message of `group` dropped because `inbox` was full.
    pub fn record_missed(&mut self, inbox: &IdentityKey, group: &[u8]) -> Result<(), StoreError> {
        let mut m = self.missed(inbox)?;
        m.add(group);
        self.missed.insert(&inbox.0, m.encode().as_slice())?;
        Ok(())
    }

    /// What was dropped for `inbox` and not yet told.
    pub fn missed(&self, inbox: &IdentityKey) -> Result<Missed, StoreError> {
        let Some(v) = self.missed.get(&inbox.0)? else {
            return Ok(Missed::default());
        };
        Missed::decode(v.value()).map_err(|_| {
            StoreError::Corrupt(format!("unreadable missed record of inbox {inbox:?}"))
        })
    }

    /// Queues the missed-messages envelope of `inbox` as message `seq` and
    /// clears the count it tells.
    pub fn append_missed_marker(
        &mut self,
        inbox: &IdentityKey,
        seq: u64,
    ) -> Result<(), StoreError> {
        let m = self.missed(inbox)?;
        let log_key = self.next_log;
        self.append(inbox, seq, &m.encode())?;
        self.notes.insert(log_key, ())?;
        self.missed.remove(&inbox.0)?;
        Ok(())
    }

    /// Whether `seqs` (in order, possibly several per inbox) would each be exactly
    /// one above the inbox's last stored seq: checked before a multi-inbox write
    /// touches anything, so it is applied whole or not at all.
    pub fn check_appends<'a>(
        &self,
        seqs: impl IntoIterator<Item = (&'a IdentityKey, u64)>,
    ) -> Result<(), StoreError> {
        let mut last: std::collections::HashMap<&IdentityKey, u64> = Default::default();
        for (inbox, seq) in seqs {
            let prev = match last.get(inbox) {
                Some(p) => *p,
                None => self.inbox_meta(inbox)?.last_seq,
            };
            if seq != prev + 1 {
                return Err(StoreError::Corrupt(format!(
                    "append of seq {seq} to inbox {inbox:?} whose last seq is {prev}"
                )));
            }
            last.insert(inbox, seq);
        }
        Ok(())
    }

    /// Deletes every message of `inbox` up to and including `up_to`; returns how
    /// many were deleted.
    pub fn ack(&mut self, inbox: &IdentityKey, up_to: u64) -> Result<u64, StoreError> {
        let mut m = self.inbox_meta(inbox)?;
        let up_to = up_to.min(m.last_seq);
        if up_to <= m.acked {
            return Ok(0);
        }
        let removed: Vec<(u64, u64)> = self
            .idx
            .extract_from_if((&inbox.0, m.acked + 1)..=(&inbox.0, up_to), |_, _| true)?
            .map(|e| e.map(|(k, v)| (k.value().1, v.value())))
            .collect::<Result<_, _>>()?;
        for (seq, log_key) in &removed {
            let refs = self.refs.get(*log_key)?.map(|v| v.value());
            match refs {
                None => {
                    self.log.remove(*log_key)?;
                    self.notes.remove(*log_key)?;
                }
                Some(n) if n <= 1 => {
                    self.refs.remove(*log_key)?;
                    self.log.remove(*log_key)?;
                }
                Some(n) => {
                    self.refs.insert(*log_key, n - 1)?;
                }
            }
            self.parts.remove((&inbox.0, *seq))?;
        }
        m.acked = up_to;
        self.meta.insert(&inbox.0, (m.last_seq, m.acked))?;
        Ok(removed.len() as u64)
    }

    /// Persists the log counter; call once before committing.
    pub fn finish(mut self) -> Result<(), StoreError> {
        self.counters.insert(KEY_NEXT_LOG, self.next_log)?;
        Ok(())
    }
}
