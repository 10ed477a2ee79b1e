//! Every record of a redb node database as plain rows: what `admin
//! copy-to-postgres` moves into a PostgreSQL database, whose tables have the
//! same records (`actors/migrations/`).

use quicnprotochat_crypto::mls::Suite;
use redb::{ReadableDatabase, ReadableTable};

use super::auth::*;
use super::fences::{GROUP_CREATORS, GROUP_MEMBERS, GROUPS, GROUPS_CREATED};
use super::group_directory::{GROUP_INFOS, MEMBER_GROUPS};
use super::ops::suite_code;
use super::server::{BODY_REFS, INBOX_IDX, INBOX_META, LOG, MISSED, NOTES, PARTS};
use super::{ServerStore, StoreError};

/// One message row: inbox, seq, kind (0 direct, 1 shared, 2 missed note), its
/// data (kinds 0 and 2), its body (kind 1) and the recipient's part (kind 1).
pub type MessageRow = (
    [u8; 32],
    u64,
    i16,
    Option<Vec<u8>>,
    Option<u64>,
    Option<Vec<u8>>,
);

/// Per device and suite: device, suite, next number, last-resort serves,
/// last-resort package.
pub type KeyPackageStatsRow = ([u8; 32], i16, u64, u64, Option<Vec<u8>>);
/// An inbox's marks: inbox, last seq, acked, missed record.
pub type InboxRow = ([u8; 32], u64, u64, Option<Vec<u8>>);
/// A fence: group, next epoch, members (concatenated), creator, GroupInfo.
pub type GroupRow = (Vec<u8>, u64, Vec<u8>, Option<[u8; 32]>, Option<Vec<u8>>);

/// Every record of a node database.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Node secrets: name, value.
    pub secrets: Vec<(String, Vec<u8>)>,
    /// Accounts: username, OPAQUE record.
    pub users: Vec<(String, Vec<u8>)>,
    /// Devices: device, username, when added (ms).
    pub devices: Vec<([u8; 32], String, u64)>,
    /// Sessions: token hash, device, expiry (ms).
    pub sessions: Vec<([u8; 32], [u8; 32], u64)>,
    /// One-time KeyPackages: device, suite, number, package.
    pub key_packages: Vec<([u8; 32], i16, u64, Vec<u8>)>,
    /// Per device and suite: next number, last-resort serves, last-resort package.
    pub kp_stats: Vec<KeyPackageStatsRow>,
    /// Hybrid public keys: device, key.
    pub hybrid_keys: Vec<([u8; 32], Vec<u8>)>,
    /// Sealed-sender access keys: device, hash.
    pub access_keys: Vec<([u8; 32], [u8; 32])>,
    /// Inbox marks: inbox, last seq, acked, missed record.
    pub inboxes: Vec<InboxRow>,
    /// Shared bodies: id, data, references.
    pub bodies: Vec<(u64, Vec<u8>, u64)>,
    /// Unacknowledged messages.
    pub messages: Vec<MessageRow>,
    /// Fences: group, next epoch, members (concatenated), creator, GroupInfo.
    pub groups: Vec<GroupRow>,
    /// Live fences each device created.
    pub groups_created: Vec<([u8; 32], u64)>,
    /// Member index: device, group.
    pub member_groups: Vec<([u8; 32], Vec<u8>)>,
}

impl ServerStore {
    /// Reads every record, in one read transaction.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db().begin_read()?;
        let mut s = Snapshot::default();
        for e in txn.open_table(SECRETS)?.iter()? {
            let (k, v) = e?;
            s.secrets.push((k.value().to_string(), v.value().to_vec()));
        }
        for e in txn.open_table(USERS)?.iter()? {
            let (k, v) = e?;
            s.users.push((k.value().to_string(), v.value().to_vec()));
        }
        let added = txn.open_table(ACCOUNT_DEVICES)?;
        for e in txn.open_table(DEVICES)?.iter()? {
            let (k, v) = e?;
            let name = v.value().to_string();
            let when = added
                .get((name.as_str(), k.value()))?
                .map_or(0, |a| a.value());
            s.devices.push((*k.value(), name, when));
        }
        for e in txn.open_table(SESSIONS)?.iter()? {
            let (k, v) = e?;
            let (device, expires) = v.value();
            s.sessions.push((*k.value(), *device, expires));
        }
        for suite in Suite::ALL {
            let t = key_package_tables(suite);
            let code = suite_code(suite);
            for e in txn.open_table(t.one_time)?.iter()? {
                let (k, v) = e?;
                let (device, n) = k.value();
                s.key_packages.push((*device, code, n, v.value().to_vec()));
            }
            let last_resort = txn.open_table(t.last_resort)?;
            let stats = txn.open_table(t.stats)?;
            let mut devices: Vec<[u8; 32]> = Vec::new();
            for e in stats.iter()? {
                devices.push(*e?.0.value());
            }
            for e in last_resort.iter()? {
                devices.push(*e?.0.value());
            }
            devices.sort();
            devices.dedup();
            for d in devices {
                let (next, served) = stats.get(&d)?.map_or((0, 0), |v| v.value());
                let kp = last_resort.get(&d)?.map(|v| v.value().to_vec());
                s.kp_stats.push((d, code, next, served, kp));
            }
        }
        for e in txn.open_table(HYBRID_KEYS)?.iter()? {
            let (k, v) = e?;
            s.hybrid_keys.push((*k.value(), v.value().to_vec()));
        }
        for e in txn.open_table(ACCESS_KEYS)?.iter()? {
            let (k, v) = e?;
            s.access_keys.push((*k.value(), *v.value()));
        }
        let missed = txn.open_table(MISSED)?;
        for e in txn.open_table(INBOX_META)?.iter()? {
            let (k, v) = e?;
            let (last, acked) = v.value();
            let m = missed.get(k.value())?.map(|m| m.value().to_vec());
            s.inboxes.push((*k.value(), last, acked, m));
        }
        let log = txn.open_table(LOG)?;
        let refs = txn.open_table(BODY_REFS)?;
        for e in refs.iter()? {
            let (k, v) = e?;
            let data = log
                .get(k.value())?
                .ok_or_else(|| StoreError::Corrupt(format!("body {} missing", k.value())))?;
            s.bodies.push((k.value(), data.value().to_vec(), v.value()));
        }
        let notes = txn.open_table(NOTES)?;
        let parts = txn.open_table(PARTS)?;
        for e in txn.open_table(INBOX_IDX)?.iter()? {
            let (k, v) = e?;
            let (inbox, seq) = k.value();
            let key = v.value();
            let row = if refs.get(key)?.is_some() {
                let part = parts.get((inbox, seq))?.map(|p| p.value().to_vec());
                (*inbox, seq, 1, None, Some(key), part)
            } else {
                let data = log
                    .get(key)?
                    .ok_or_else(|| StoreError::Corrupt(format!("message {key} missing")))?
                    .value()
                    .to_vec();
                let kind = if notes.get(key)?.is_some() { 2 } else { 0 };
                (*inbox, seq, kind, Some(data), None, None)
            };
            s.messages.push(row);
        }
        let members = txn.open_table(GROUP_MEMBERS)?;
        let creators = txn.open_table(GROUP_CREATORS)?;
        let infos = txn.open_table(GROUP_INFOS)?;
        for e in txn.open_table(GROUPS)?.iter()? {
            let (k, v) = e?;
            let g = k.value();
            s.groups.push((
                g.to_vec(),
                v.value(),
                members
                    .get(g)?
                    .map(|m| m.value().to_vec())
                    .unwrap_or_default(),
                creators.get(g)?.map(|c| *c.value()),
                infos.get(g)?.map(|i| i.value().to_vec()),
            ));
        }
        for e in txn.open_table(GROUPS_CREATED)?.iter()? {
            let (k, v) = e?;
            s.groups_created.push((*k.value(), v.value()));
        }
        for e in txn.open_table(MEMBER_GROUPS)?.iter()? {
            let (k, _) = e?;
            let (device, group) = k.value();
            s.member_groups.push((*device, group.to_vec()));
        }
        Ok(s)
    }
}

impl Snapshot {
    /// How many rows it holds, by what they are (for the operator's report).
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("accounts", self.users.len()),
            ("devices", self.devices.len()),
            ("sessions", self.sessions.len()),
            ("KeyPackages", self.key_packages.len()),
            ("inboxes", self.inboxes.len()),
            ("messages", self.messages.len()),
            ("shared bodies", self.bodies.len()),
            ("groups", self.groups.len()),
        ]
    }
}
