//! Groups: what the client keeps besides OpenMLS' own storage. Every change one
//! incoming message or one operation makes (OpenMLS writes, cursor, roster, lines to
//! show, messages held for a later epoch) is committed in ONE transaction, so a
//! crash leaves the profile before or after it, never in between.

use super::*;

/// Group display name → group id (names are local to this profile).
const GROUP_NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("group_names");
/// Group id → display name.
const GROUP_IDS: TableDefinition<&[u8], &str> = TableDefinition::new("group_ids");
/// Member identity → (username as the node's directory confirmed it, or empty;
/// signed hybrid key), encoded as a roster entry.
const ROSTER: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("roster");
/// "inbox" → the highest seq of the own inbox that has been applied.
pub(super) const CURSOR: TableDefinition<&str, u64> = TableDefinition::new("cursor");
/// seq → an opened message from an epoch the group has not reached yet.
const HELD: TableDefinition<u64, &[u8]> = TableDefinition::new("held");

/// The account's devices as this profile last settled its groups with them.
const KNOWN_DEVICES: TableDefinition<&[u8; 32], ()> = TableDefinition::new("known_devices");

/// Group id → how many pulls in a row failed to commit its waiting proposals.
const PROPOSAL_FAILURES: TableDefinition<&[u8], u32> = TableDefinition::new("proposal_failures");

/// "list" → 1 from a fresh profile's first login until it has asked the node
/// which groups its account is in.
const REJOIN: TableDefinition<&str, u32> = TableDefinition::new("rejoin");
/// Group id → failed looks so far: the account's groups, as first listed, that
/// this profile is still to rejoin. Only that first list: a group left later is
/// never rejoined behind the user's back.
const REJOIN_GROUPS: TableDefinition<&[u8], u32> = TableDefinition::new("rejoin_groups");

/// Digest of a processed group message → its place in `PROCESSED_ORDER`.
const PROCESSED: TableDefinition<&[u8; 32], u64> = TableDefinition::new("processed_messages");
/// Place → digest: which digests are oldest, to forget them first.
const PROCESSED_ORDER: TableDefinition<u64, &[u8; 32]> =
    TableDefinition::new("processed_messages_order");

/// How many processed group messages a profile remembers, to ignore replays of
/// them (a sender's retry stored twice, a node or network repeating one). A
/// replay older than that is processed again and, its keys being gone, reported
/// as unreadable.
pub const MAX_REMEMBERED_MESSAGES: u64 = 16_384;

/// The writes of one client transaction.
pub struct ClientTxn<'a> {
    pub(super) txn: &'a redb::WriteTransaction,
}

pub(super) type TxnResult<T> = Result<T, redb::Error>;

impl ClientTxn<'_> {
    /// Names a group (both directions).
    pub fn set_group(&self, name: &str, group_id: &[u8]) -> TxnResult<()> {
        self.txn.open_table(GROUP_NAMES)?.insert(name, group_id)?;
        self.txn.open_table(GROUP_IDS)?.insert(group_id, name)?;
        Ok(())
    }

    /// Forgets a group locally (after leaving it or being removed).
    pub fn forget_group(&self, group_id: &[u8]) -> TxnResult<()> {
        let name = self
            .txn
            .open_table(GROUP_IDS)?
            .remove(group_id)?
            .map(|n| n.value().to_string());
        if let Some(name) = name {
            self.txn.open_table(GROUP_NAMES)?.remove(name.as_str())?;
        }
        self.txn.open_table(PROPOSAL_FAILURES)?.remove(group_id)?;
        Ok(())
    }

    /// Remembers who a member is: its hybrid key, and its name if the node's
    /// directory confirmed one. An entry without a name never takes away a
    /// name confirmed before.
    pub fn put_roster(&self, entry: &RosterEntry) -> TxnResult<()> {
        let mut table = self.txn.open_table(ROSTER)?;
        let mut entry = entry.clone();
        if entry.username.is_empty()
            && let Some(known) = table
                .get(&entry.identity)?
                .and_then(|v| decode_roster(entry.identity, v.value()))
        {
            entry.username = known.username;
        }
        table.insert(&entry.identity, encode_roster(&entry).as_slice())?;
        Ok(())
    }

    /// Counts one more failed attempt to commit a group's waiting proposals;
    /// returns the count so far.
    pub fn proposal_failed(&self, group_id: &[u8]) -> TxnResult<u32> {
        let mut t = self.txn.open_table(PROPOSAL_FAILURES)?;
        let n = t.get(group_id)?.map_or(0, |v| v.value()) + 1;
        t.insert(group_id, n)?;
        Ok(n)
    }

    /// The group's waiting proposals were committed or given up on.
    pub fn proposals_settled(&self, group_id: &[u8]) -> TxnResult<()> {
        self.txn.open_table(PROPOSAL_FAILURES)?.remove(group_id)?;
        Ok(())
    }

    /// This profile is to ask for its account's groups and rejoin them.
    pub fn expect_rejoin(&self) -> TxnResult<()> {
        self.txn.open_table(REJOIN)?.insert("list", 1)?;
        Ok(())
    }

    /// The account's groups as the node listed them: these are to be rejoined.
    pub fn rejoin_listed(&self, groups: &[Vec<u8>]) -> TxnResult<()> {
        self.txn.open_table(REJOIN)?.remove("list")?;
        let mut t = self.txn.open_table(REJOIN_GROUPS)?;
        for g in groups {
            t.insert(g.as_slice(), 0)?;
        }
        Ok(())
    }

    /// A look at `group` failed for the `looks`-th time.
    pub fn rejoin_failed(&self, group: &[u8], looks: u32) -> TxnResult<()> {
        self.txn.open_table(REJOIN_GROUPS)?.insert(group, looks)?;
        Ok(())
    }

    /// `group` is rejoined, or given up on.
    pub fn rejoin_done(&self, group: &[u8]) -> TxnResult<()> {
        self.txn.open_table(REJOIN_GROUPS)?.remove(group)?;
        Ok(())
    }

    /// The account's devices, as the profile's groups now reflect them.
    pub fn set_known_devices(&self, devices: &BTreeSet<[u8; 32]>) -> TxnResult<()> {
        let mut t = self.txn.open_table(KNOWN_DEVICES)?;
        t.retain(|_, _| false)?;
        for d in devices {
            t.insert(d, ())?;
        }
        Ok(())
    }

    /// Everything up to `seq` of the inbox is applied.
    pub fn set_cursor(&self, seq: u64) -> TxnResult<()> {
        self.txn.open_table(CURSOR)?.insert("inbox", seq)?;
        Ok(())
    }

    /// Keeps a message from a later epoch until its commit.
    pub fn hold(&self, seq: u64, message: &[u8]) -> TxnResult<()> {
        self.txn.open_table(HELD)?.insert(seq, message)?;
        Ok(())
    }

    /// Remembers that the group message with `digest` was processed (kept to
    /// the newest [`MAX_REMEMBERED_MESSAGES`]).
    pub fn remember_processed(&self, digest: &[u8; 32]) -> TxnResult<()> {
        let mut by_digest = self.txn.open_table(PROCESSED)?;
        if by_digest.get(digest)?.is_some() {
            return Ok(());
        }
        let mut order = self.txn.open_table(PROCESSED_ORDER)?;
        let place = order.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
        order.insert(place, digest)?;
        by_digest.insert(digest, place)?;
        if place >= MAX_REMEMBERED_MESSAGES {
            let oldest = order
                .remove(place - MAX_REMEMBERED_MESSAGES)?
                .map(|d| *d.value());
            if let Some(d) = oldest {
                by_digest.remove(&d)?;
            }
        }
        Ok(())
    }

    /// Forgets a held message once applied.
    pub fn release(&self, seq: u64) -> TxnResult<()> {
        self.txn.open_table(HELD)?.remove(seq)?;
        Ok(())
    }
}

fn encode_roster(e: &RosterEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + e.username.len() + e.hybrid_key.len());
    out.extend_from_slice(&(e.username.len() as u32).to_be_bytes());
    out.extend_from_slice(e.username.as_bytes());
    out.extend_from_slice(&e.hybrid_key);
    out
}

fn decode_roster(identity: [u8; 32], bytes: &[u8]) -> Option<RosterEntry> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let name = bytes.get(4..4 + len)?;
    Some(RosterEntry {
        identity,
        username: String::from_utf8(name.to_vec()).ok()?,
        hybrid_key: bytes.get(4 + len..)?.to_vec(),
    })
}

impl ClientState {
    /// Commits, in one durable transaction, what `storage` has written since its
    /// last commit and the writes `f` makes. On any failure neither reaches disk
    /// and the storage's uncommitted writes are dropped, so memory matches disk.
    pub fn transact(
        &self,
        storage: &RedbMlsStorage,
        f: impl FnOnce(&ClientTxn<'_>) -> TxnResult<()>,
    ) -> Result<(), StateError> {
        let overlay = storage.take_overlay();
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        storage
            .write_overlay(&txn, &overlay)
            .map_err(|e| self.err(e))?;
        f(&ClientTxn { txn: &txn }).map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))
    }

    /// Runs `f` in one durable transaction that touches no MLS state.
    pub fn write(&self, f: impl FnOnce(&ClientTxn<'_>) -> TxnResult<()>) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        f(&ClientTxn { txn: &txn }).map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))
    }

    pub(super) fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
        missing: T,
    ) -> Result<T, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        match f(&txn) {
            Ok(v) => Ok(v),
            Err(redb::Error::TableDoesNotExist(_)) => Ok(missing),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Whether the group message with `digest` was processed already.
    pub fn was_processed(&self, digest: &[u8; 32]) -> Result<bool, StateError> {
        self.read(
            |t| Ok(t.open_table(PROCESSED)?.get(digest)?.is_some()),
            false,
        )
    }

    /// The id of the group named `name`.
    pub fn group_id(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.read(
            |t| {
                Ok(t.open_table(GROUP_NAMES)?
                    .get(name)?
                    .map(|v| v.value().to_vec()))
            },
            None,
        )
    }

    /// The name of the group `group_id`.
    pub fn group_name(&self, group_id: &[u8]) -> Result<Option<String>, StateError> {
        self.read(
            |t| {
                Ok(t.open_table(GROUP_IDS)?
                    .get(group_id)?
                    .map(|v| v.value().to_string()))
            },
            None,
        )
    }

    /// Every group of this profile: (name, id), by name.
    pub fn groups(&self) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        self.read(
            |t| {
                t.open_table(GROUP_NAMES)?
                    .iter()?
                    .map(|e| {
                        let (k, v) = e?;
                        Ok((k.value().to_string(), v.value().to_vec()))
                    })
                    .collect()
            },
            Vec::new(),
        )
    }

    /// What this profile knows of a member.
    pub fn roster_entry(&self, identity: &[u8]) -> Result<Option<RosterEntry>, StateError> {
        let Ok(identity) = <[u8; 32]>::try_from(identity) else {
            return Ok(None);
        };
        self.read(
            |t| {
                Ok(t.open_table(ROSTER)?
                    .get(&identity)?
                    .and_then(|v| decode_roster(identity, v.value())))
            },
            None,
        )
    }

    /// The highest seq of the own inbox already applied.
    pub fn cursor(&self) -> Result<u64, StateError> {
        self.read(
            |t| {
                Ok(t.open_table(CURSOR)?
                    .get("inbox")?
                    .map(|v| v.value())
                    .unwrap_or(0))
            },
            0,
        )
    }

    /// Messages waiting for a later epoch, in seq order.
    pub fn held(&self) -> Result<Vec<(u64, Vec<u8>)>, StateError> {
        self.read(
            |t| {
                t.open_table(HELD)?
                    .iter()?
                    .map(|e| {
                        let (k, v) = e?;
                        Ok((k.value(), v.value().to_vec()))
                    })
                    .collect()
            },
            Vec::new(),
        )
    }

    /// The account's devices as this profile last settled its groups with them
    /// (empty before the first look).
    pub fn known_devices(&self) -> Result<BTreeSet<[u8; 32]>, StateError> {
        self.read(
            |t| {
                t.open_table(KNOWN_DEVICES)?
                    .iter()?
                    .map(|e| Ok(*e?.0.value()))
                    .collect()
            },
            BTreeSet::new(),
        )
    }

    /// Whether this profile has yet to ask which groups its account is in.
    pub fn rejoin_to_list(&self) -> Result<bool, StateError> {
        self.read(|t| Ok(t.open_table(REJOIN)?.get("list")?.is_some()), false)
    }

    /// The groups still to rejoin, with how many looks failed so far.
    pub fn rejoin_pending(&self) -> Result<Vec<(Vec<u8>, u32)>, StateError> {
        self.read(
            |t| {
                t.open_table(REJOIN_GROUPS)?
                    .iter()?
                    .map(|e| {
                        let (k, v) = e?;
                        Ok((k.value().to_vec(), v.value()))
                    })
                    .collect()
            },
            Vec::new(),
        )
    }

    /// `wanted`, or `wanted-2`, `wanted-3`, … : the first name no other group of
    /// this profile has (names are local; two groups may be called alike).
    pub fn free_group_name(&self, wanted: &str, group_id: &[u8]) -> Result<String, StateError> {
        let mut name = wanted.to_string();
        let mut n = 2;
        while self.group_id(&name)?.is_some_and(|g| g != group_id) {
            name = format!("{wanted}-{n}");
            n += 1;
        }
        Ok(name)
    }

    /// The seqs of the held messages, without reading the messages.
    pub fn held_seqs(&self) -> Result<Vec<u64>, StateError> {
        self.read(
            |t| {
                t.open_table(HELD)?
                    .iter()?
                    .map(|e| Ok(e?.0.value()))
                    .collect()
            },
            Vec::new(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u64) -> [u8; 32] {
        let mut d = [0u8; 32];
        d[..8].copy_from_slice(&n.to_be_bytes());
        d
    }

    #[test]
    fn an_entry_without_a_confirmed_name_keeps_the_name_confirmed_before() {
        let dir = tempfile::tempdir().unwrap();
        let state = ClientState::open(dir.path()).unwrap();
        let entry = |name: &str, key: u8| RosterEntry {
            identity: [7; 32],
            username: name.into(),
            hybrid_key: vec![key; 4],
        };
        state.write(|t| t.put_roster(&entry("bob", 1))).unwrap();
        state.write(|t| t.put_roster(&entry("", 2))).unwrap();
        let kept = state.roster_entry(&[7; 32]).unwrap().unwrap();
        assert_eq!(
            (kept.username.as_str(), kept.hybrid_key),
            ("bob", vec![2; 4])
        );
        state.write(|t| t.put_roster(&entry("", 3))).unwrap();
        let unnamed = RosterEntry {
            identity: [8; 32],
            ..entry("", 3)
        };
        state.write(|t| t.put_roster(&unnamed)).unwrap();
        assert_eq!(state.roster_entry(&[8; 32]).unwrap(), Some(unnamed));
    }

    #[test]
    fn remembered_messages_are_bounded_and_the_oldest_are_forgotten_first() {
        let dir = tempfile::tempdir().unwrap();
        let state = ClientState::open(dir.path()).unwrap();
        let total = MAX_REMEMBERED_MESSAGES + 10;
        state
            .write(|t| {
                for n in 0..total {
                    t.remember_processed(&digest(n))?;
                    t.remember_processed(&digest(n))?; // twice: counted once
                }
                Ok(())
            })
            .unwrap();
        for n in 0..10 {
            assert!(!state.was_processed(&digest(n)).unwrap(), "{n} forgotten");
        }
        for n in [10, total / 2, total - 1] {
            assert!(state.was_processed(&digest(n)).unwrap(), "{n} remembered");
        }
        let kept = state
            .read(
                |t| Ok(redb::ReadableTableMetadata::len(&t.open_table(PROCESSED)?)?),
                0,
            )
            .unwrap();
        assert_eq!(kept, MAX_REMEMBERED_MESSAGES);
    }
}
