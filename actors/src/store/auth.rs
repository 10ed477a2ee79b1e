//! The Authentication Service's tables, and the typed operations on them that
//! the service runs inside the store writer's transactions. Written only through
//! the writer, read with plain read transactions.

use quicnprotochat_crypto::mls::Suite;
use quicnprotochat_wire::IdentityKey;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::auth::ClaimedPackage;
use crate::store::StoreError;

/// Node secrets: the OPAQUE server setup.
pub const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// The key of the OPAQUE server setup in [`SECRETS`].
pub const OPAQUE_SETUP_KEY: &str = "opaque_server_setup";

/// username → OPAQUE password record.
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// device identity key → username.
pub const DEVICES: TableDefinition<&[u8; 32], &str> = TableDefinition::new("devices");
/// (username, device identity key) → time added (ms since the epoch).
pub const ACCOUNT_DEVICES: TableDefinition<(&str, &[u8; 32]), u64> =
    TableDefinition::new("account_devices");
/// SHA-256 of a session token → (device identity key, expiry ms since the epoch).
pub const SESSIONS: TableDefinition<&[u8; 32], (&[u8; 32], u64)> = TableDefinition::new("sessions");
/// (device, package number) → one-time KeyPackage.
pub const KEY_PACKAGES: TableDefinition<(&[u8; 32], u64), &[u8]> =
    TableDefinition::new("key_packages");
/// device → last-resort KeyPackage.
pub const LAST_RESORT: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("last_resort");
/// device → (next package number, times the last-resort package was served).
pub const KP_STATS: TableDefinition<&[u8; 32], (u64, u64)> = TableDefinition::new("kp_stats");
/// The post-quantum suite's KeyPackages, in tables of their own (the tables above
/// are the mandatory suite's and keep their names, so older files open as they are).
pub const KEY_PACKAGES_PQ: TableDefinition<(&[u8; 32], u64), &[u8]> =
    TableDefinition::new("key_packages_pq");
/// The post-quantum suite's last-resort packages.
pub const LAST_RESORT_PQ: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("last_resort_pq");
/// The post-quantum suite's package counters.
pub const KP_STATS_PQ: TableDefinition<&[u8; 32], (u64, u64)> = TableDefinition::new("kp_stats_pq");

/// The KeyPackage tables of one ciphersuite.
#[derive(Clone, Copy)]
pub struct KeyPackageTables {
    /// (device, number) → one-time package.
    pub one_time: TableDefinition<'static, (&'static [u8; 32], u64), &'static [u8]>,
    /// device → last-resort package.
    pub last_resort: TableDefinition<'static, &'static [u8; 32], &'static [u8]>,
    /// device → (next number, times the last-resort package was served).
    pub stats: TableDefinition<'static, &'static [u8; 32], (u64, u64)>,
}

/// The tables of `suite`.
pub fn key_package_tables(suite: Suite) -> KeyPackageTables {
    match suite {
        Suite::Classic => KeyPackageTables {
            one_time: KEY_PACKAGES,
            last_resort: LAST_RESORT,
            stats: KP_STATS,
        },
        Suite::PostQuantum => KeyPackageTables {
            one_time: KEY_PACKAGES_PQ,
            last_resort: LAST_RESORT_PQ,
            stats: KP_STATS_PQ,
        },
    }
}

/// device → signed hybrid (X-Wing) public key.
pub const HYBRID_KEYS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("hybrid_keys");
/// device → SHA-256 of its sealed-sender access key.
pub const ACCESS_KEYS: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("access_keys");
/// Identity keys of removed or deleted devices → when they were retired (ms
/// since the epoch). A retired key never registers or logs in again: whoever
/// holds it (a thief with the stolen device) stays out for good.
pub const RETIRED_DEVICES: TableDefinition<&[u8; 32], u64> =
    TableDefinition::new("retired_devices");

/// Whether `device`'s key was retired (its device removed or its account deleted).
fn is_retired(txn: &WriteTransaction, device: &IdentityKey) -> Result<bool, StoreError> {
    Ok(txn.open_table(RETIRED_DEVICES)?.get(&device.0)?.is_some())
}

/// Deletes every row of `device` (a device of `username`): its directory
/// entries, KeyPackages of every suite, hybrid key, access key and sessions;
/// and retires its key, so that it never becomes a device again: the group
/// fences that still name it (until someone commits its MLS removal) fan out
/// nothing to it and accept no external join it would vouch for. Returns the
/// hashes of the sessions it ended.
pub fn remove_device_rows(
    txn: &WriteTransaction,
    username: &str,
    device: &IdentityKey,
) -> Result<Vec<[u8; 32]>, StoreError> {
    txn.open_table(DEVICES)?.remove(&device.0)?;
    txn.open_table(ACCOUNT_DEVICES)?
        .remove((username, &device.0))?;
    for suite in Suite::ALL {
        let t = key_package_tables(suite);
        let mut kps = txn.open_table(t.one_time)?;
        kps.retain_in((&device.0, 0)..=(&device.0, u64::MAX), |_, _| false)?;
        txn.open_table(t.last_resort)?.remove(&device.0)?;
        txn.open_table(t.stats)?.remove(&device.0)?;
    }
    txn.open_table(HYBRID_KEYS)?.remove(&device.0)?;
    txn.open_table(ACCESS_KEYS)?.remove(&device.0)?;
    txn.open_table(RETIRED_DEVICES)?
        .insert(&device.0, super::now_ms())?;
    let mut sessions = txn.open_table(SESSIONS)?;
    let mut dropped = Vec::new();
    for e in sessions.iter()? {
        let (k, v) = e?;
        if v.value().0 == &device.0 {
            dropped.push(*k.value());
        }
    }
    for k in &dropped {
        sessions.remove(k)?;
    }
    Ok(dropped)
}

/// Ends every session of every device of `username` but `keep`; returns
/// their hashes. (Sessions are keyed by token hash: the scan is over all of
/// them, as for a removed device; both are rare.)
pub fn end_account_sessions(
    txn: &WriteTransaction,
    username: &str,
    keep: Option<&[u8; 32]>,
) -> Result<Vec<[u8; 32]>, StoreError> {
    let devices: std::collections::HashSet<[u8; 32]> = txn
        .open_table(ACCOUNT_DEVICES)?
        .range((username, &[0u8; 32])..=(username, &[255u8; 32]))?
        .map(|e| e.map(|(k, _)| *k.value().1))
        .collect::<Result<_, _>>()?;
    let mut sessions = txn.open_table(SESSIONS)?;
    let mut ended = Vec::new();
    for e in sessions.iter()? {
        let (k, v) = e?;
        if devices.contains(v.value().0) && keep != Some(k.value()) {
            ended.push(*k.value());
        }
    }
    for k in &ended {
        sessions.remove(k)?;
    }
    Ok(ended)
}

/// Claims one KeyPackage of `tables`' suite per device of `devices` that
/// published keys: a one-time package is deleted as it is returned; when none
/// is left the last-resort one is served and counted.
pub fn claim_packages(
    txn: &WriteTransaction,
    tables: KeyPackageTables,
    devices: Vec<IdentityKey>,
) -> Result<Vec<ClaimedPackage>, StoreError> {
    let mut kps = txn.open_table(tables.one_time)?;
    let mut stats = txn.open_table(tables.stats)?;
    let last_resort = txn.open_table(tables.last_resort)?;
    let hybrid = txn.open_table(HYBRID_KEYS)?;
    let mut out = Vec::new();
    for d in devices {
        let Some(hybrid_public_key) = hybrid.get(&d.0)?.map(|v| v.value().to_vec()) else {
            continue; // never uploaded anything: nothing to serve
        };
        let first = kps
            .range((&d.0, 0)..=(&d.0, u64::MAX))?
            .next()
            .transpose()?
            .map(|(k, v)| (k.value().1, v.value().to_vec()));
        let (key_package, is_last_resort) = match first {
            Some((n, kp)) => {
                kps.remove((&d.0, n))?;
                (kp, false)
            }
            None => {
                let Some(kp) = last_resort.get(&d.0)?.map(|v| v.value().to_vec()) else {
                    continue;
                };
                let (next, served) = stats.get(&d.0)?.map(|v| v.value()).unwrap_or((0, 0));
                stats.insert(&d.0, (next, served + 1))?;
                (kp, true)
            }
        };
        out.push(ClaimedPackage {
            identity_key: d,
            key_package,
            hybrid_public_key,
            last_resort: is_last_resort,
        });
    }
    Ok(out)
}

/// A one-time package's key: (device, number).
type StoredPackageKey = ([u8; 32], u64);

/// Frames every stored KeyPackage as an MLSMessage (RFC 9420 §6): files from
/// before schema 4 hold them bare, as uploaded then. Returns how many changed.
pub(super) fn frame_stored_key_packages(txn: &WriteTransaction) -> Result<usize, StoreError> {
    use quicnprotochat_crypto::mls::key_package_message;
    let mut changed = 0;
    for suite in [Suite::Classic, Suite::PostQuantum] {
        let t = key_package_tables(suite);
        let mut one_time = txn.open_table(t.one_time)?;
        let bare: Vec<(StoredPackageKey, Vec<u8>)> = one_time
            .iter()?
            .map(|e| e.map(|(k, v)| ((*k.value().0, k.value().1), v.value().to_vec())))
            .collect::<Result<_, _>>()?;
        for ((device, n), kp) in bare {
            let framed = key_package_message(&kp);
            if framed != kp {
                one_time.insert((&device, n), framed.as_slice())?;
                changed += 1;
            }
        }
        let mut last_resort = txn.open_table(t.last_resort)?;
        let bare: Vec<([u8; 32], Vec<u8>)> = last_resort
            .iter()?
            .map(|e| e.map(|(k, v)| (*k.value(), v.value().to_vec())))
            .collect::<Result<_, _>>()?;
        for (device, kp) in bare {
            let framed = key_package_message(&kp);
            if framed != kp {
                last_resort.insert(&device, framed.as_slice())?;
                changed += 1;
            }
        }
    }
    Ok(changed)
}

/// Applies one account write to `txn` (the redb writer's batch); what to
/// answer once the commit's fate is known. Every refusal is decided before
/// anything is written.
pub(super) fn apply(
    txn: &WriteTransaction,
    op: super::ops::AccountWrite,
) -> super::writer::AfterCommit {
    use super::ops::{AccountRefusal, AccountWrite, after_commit};
    let e = |e: StoreError| crate::error::DeliveryError::from(e);
    match op {
        AccountWrite::InitSecret { name, value, reply } => {
            let stored = (|| -> Result<Vec<u8>, StoreError> {
                let mut t = txn.open_table(SECRETS)?;
                if let Some(v) = t.get(name)? {
                    return Ok(v.value().to_vec());
                }
                t.insert(name, value.as_slice())?;
                Ok(value)
            })();
            after_commit(reply, stored.map_err(e))
        }
        AccountWrite::Register {
            username,
            record,
            device,
            now_ms,
            reply,
        } => {
            let result = (|| -> Result<Result<(), AccountRefusal>, StoreError> {
                let mut users = txn.open_table(USERS)?;
                let mut devices = txn.open_table(DEVICES)?;
                if users.get(username.as_str())?.is_some() {
                    return Ok(Err(AccountRefusal::UsernameTaken));
                }
                if devices.get(&device.0)?.is_some() {
                    return Ok(Err(AccountRefusal::DeviceTaken));
                }
                if is_retired(txn, &device)? {
                    return Ok(Err(AccountRefusal::DeviceRetired));
                }
                users.insert(username.as_str(), record.as_slice())?;
                devices.insert(&device.0, username.as_str())?;
                txn.open_table(ACCOUNT_DEVICES)?
                    .insert((username.as_str(), &device.0), now_ms)?;
                Ok(Ok(()))
            })();
            after_commit(reply, result.map_err(e))
        }
        AccountWrite::Login {
            username,
            device,
            token_hash,
            expires_at_ms,
            now_ms,
            max_devices,
            record_hash,
            reply,
        } => {
            let result = (|| -> Result<Result<(), AccountRefusal>, StoreError> {
                if is_retired(txn, &device)? {
                    return Ok(Err(AccountRefusal::DeviceRetired));
                }
                let record = txn
                    .open_table(USERS)?
                    .get(username.as_str())?
                    .map(|r| super::ops::password_record_fingerprint(r.value()));
                if record != Some(record_hash) {
                    return Ok(Err(AccountRefusal::PasswordChanged));
                }
                let mut devices = txn.open_table(DEVICES)?;
                let owner = devices.get(&device.0)?.map(|v| v.value().to_string());
                match owner {
                    Some(o) if o != username => return Ok(Err(AccountRefusal::OtherAccount)),
                    Some(_) => {}
                    None => {
                        let mut account = txn.open_table(ACCOUNT_DEVICES)?;
                        let has = account
                            .range(
                                (username.as_str(), &[0u8; 32])..=(username.as_str(), &[255u8; 32]),
                            )?
                            .count();
                        if let Err(refusal) =
                            AccountRefusal::check_another_device_fits(has as u64, max_devices)
                        {
                            return Ok(Err(refusal));
                        }
                        devices.insert(&device.0, username.as_str())?;
                        account.insert((username.as_str(), &device.0), now_ms)?;
                    }
                }
                txn.open_table(SESSIONS)?
                    .insert(&token_hash, (&device.0, expires_at_ms))?;
                Ok(Ok(()))
            })();
            after_commit(reply, result.map_err(e))
        }
        AccountWrite::Logout { token_hash, reply } => {
            let result = (|| -> Result<(), StoreError> {
                txn.open_table(SESSIONS)?.remove(&token_hash)?;
                Ok(())
            })();
            after_commit(reply, result.map_err(e))
        }
        AccountWrite::ExtendSession {
            token_hash,
            expires_at_ms,
            reply,
        } => {
            let result = (|| -> Result<(), StoreError> {
                let mut sessions = txn.open_table(SESSIONS)?;
                let found = sessions
                    .get(&token_hash)?
                    .map(|v| (*v.value().0, v.value().1));
                // Never moved back (two resumes at once) nor revived.
                if let Some((device, end)) = found {
                    sessions.insert(&token_hash, (&device, end.max(expires_at_ms)))?;
                }
                Ok(())
            })();
            after_commit(reply, result.map_err(e))
        }
        AccountWrite::LogoutEverywhere { username, reply } => {
            after_commit(reply, end_account_sessions(txn, &username, None).map_err(e))
        }
        AccountWrite::ChangePassword {
            username,
            record,
            keep,
            reply,
        } => {
            let result = (|| -> Result<Result<Vec<[u8; 32]>, AccountRefusal>, StoreError> {
                let mut users = txn.open_table(USERS)?;
                // Not an account deleted meanwhile: that would bring it back.
                if users.get(username.as_str())?.is_none() {
                    return Ok(Err(AccountRefusal::PasswordChanged));
                }
                users.insert(username.as_str(), record.as_slice())?;
                Ok(Ok(end_account_sessions(txn, &username, keep.as_ref())?))
            })();
            after_commit(reply, result.map_err(e))
        }
        AccountWrite::RemoveDevice {
            username,
            device,
            reply,
        } => after_commit(
            reply,
            remove_device_rows(txn, &username, &device).map_err(e),
        ),
        AccountWrite::DeleteAccount { username, reply } => after_commit(
            reply,
            super::admin::delete_account_rows(txn, &username).map_err(e),
        ),
        AccountWrite::Upload { upload, reply } => {
            after_commit(reply, store_upload(txn, upload).map_err(e))
        }
        AccountWrite::Claim {
            suite,
            devices,
            reply,
        } => after_commit(
            reply,
            claim_packages(txn, key_package_tables(suite), devices).map_err(e),
        ),
        AccountWrite::SetAccessKey {
            device,
            hash,
            reply,
        } => {
            let result = (|| -> Result<(), StoreError> {
                txn.open_table(ACCESS_KEYS)?.insert(&device.0, &hash)?;
                Ok(())
            })();
            after_commit(reply, result.map_err(e))
        }
    }
}

/// Stores a checked upload, or refuses it (too many stored, or a first upload
/// without a last-resort package or hybrid key) before writing anything.
fn store_upload(
    txn: &WriteTransaction,
    upload: crate::auth::CheckedUpload,
) -> Result<Result<(), super::ops::AccountRefusal>, StoreError> {
    let crate::auth::CheckedUpload {
        device,
        suite,
        one_time,
        last_resort,
        hybrid_public_key,
    } = upload;
    let tables = key_package_tables(suite);
    let mut stats = txn.open_table(tables.stats)?;
    let (next, served) = stats.get(&device.0)?.map(|v| v.value()).unwrap_or((0, 0));
    let mut kps = txn.open_table(tables.one_time)?;
    let stored = kps.range((&device.0, 0)..=(&device.0, u64::MAX))?.count() as u64;
    let has_last_resort = txn
        .open_table(tables.last_resort)?
        .get(&device.0)?
        .is_some();
    let has_hybrid = txn.open_table(HYBRID_KEYS)?.get(&device.0)?.is_some();
    if let Err(refusal) = super::ops::check_upload_fits(
        stored,
        one_time.len(),
        has_last_resort || !last_resort.is_empty(),
        has_hybrid || !hybrid_public_key.is_empty(),
    ) {
        return Ok(Err(refusal));
    }
    for (i, kp) in one_time.iter().enumerate() {
        kps.insert((&device.0, next + i as u64), kp.as_slice())?;
    }
    stats.insert(&device.0, (next + one_time.len() as u64, served))?;
    if !last_resort.is_empty() {
        txn.open_table(tables.last_resort)?
            .insert(&device.0, last_resort.as_slice())?;
    }
    if !hybrid_public_key.is_empty() {
        txn.open_table(HYBRID_KEYS)?
            .insert(&device.0, hybrid_public_key.as_slice())?;
    }
    Ok(Ok(()))
}

/// The Authentication Service's reads on redb.
impl super::ServerStore {
    /// A node secret, if stored.
    pub fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db().begin_read()?;
        Ok(txn
            .open_table(SECRETS)?
            .get(name)?
            .map(|v| v.value().to_vec()))
    }

    /// Every device, and every session alive at `now_ms`.
    pub fn directory(&self, now_ms: u64) -> Result<super::Directory, StoreError> {
        use redb::ReadableTableMetadata;
        let txn = self.db().begin_read()?;
        let mut out = super::Directory::default();
        for e in txn.open_table(DEVICES)?.iter()? {
            let (k, v) = e?;
            out.devices
                .push((IdentityKey(*k.value()), v.value().to_string()));
        }
        for e in txn.open_table(SESSIONS)?.iter()? {
            let (k, v) = e?;
            let (identity, expires_at_ms) = v.value();
            if expires_at_ms > now_ms {
                out.sessions
                    .push((*k.value(), IdentityKey(*identity), expires_at_ms));
            }
        }
        out.accounts_exist = !txn.open_table(USERS)?.is_empty()?;
        Ok(out)
    }

    /// The OPAQUE password record of `username`.
    pub fn password_record(&self, username: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db().begin_read()?;
        let users = txn.open_table(USERS)?;
        Ok(users.get(username)?.map(|v| v.value().to_vec()))
    }

    /// Per device with published keys: its hybrid key and last-resort package
    /// of `suite`, consuming nothing.
    pub fn last_resort_packages(
        &self,
        suite: Suite,
        devices: &[IdentityKey],
    ) -> Result<Vec<ClaimedPackage>, StoreError> {
        let tables = key_package_tables(suite);
        let txn = self.db().begin_read()?;
        let last_resort = txn.open_table(tables.last_resort)?;
        let hybrid = txn.open_table(HYBRID_KEYS)?;
        let mut out = Vec::new();
        for d in devices {
            let (Some(h), Some(kp)) = (hybrid.get(&d.0)?, last_resort.get(&d.0)?) else {
                continue;
            };
            out.push(ClaimedPackage {
                identity_key: *d,
                key_package: kp.value().to_vec(),
                hybrid_public_key: h.value().to_vec(),
                last_resort: true,
            });
        }
        Ok(out)
    }

    /// One-time packages of the mandatory suite `device` has left, and how
    /// often its last-resort package was served.
    pub fn key_package_status(&self, device: &IdentityKey) -> Result<(u64, u64), StoreError> {
        let txn = self.db().begin_read()?;
        let remaining = txn
            .open_table(KEY_PACKAGES)?
            .range((&device.0, 0)..=(&device.0, u64::MAX))?
            .count() as u64;
        let served = txn
            .open_table(KP_STATS)?
            .get(&device.0)?
            .map(|v| v.value().1)
            .unwrap_or(0);
        Ok((remaining, served))
    }

    /// The hash of `device`'s sealed-sender access key, if set.
    pub fn access_key(&self, device: &IdentityKey) -> Result<Option<[u8; 32]>, StoreError> {
        let txn = self.db().begin_read()?;
        Ok(txn
            .open_table(ACCESS_KEYS)?
            .get(&device.0)?
            .map(|v| *v.value()))
    }

    /// The hybrid keys of those of `devices` that published one.
    pub fn hybrid_keys(
        &self,
        devices: &[[u8; 32]],
    ) -> Result<std::collections::HashMap<[u8; 32], Vec<u8>>, StoreError> {
        let txn = self.db().begin_read()?;
        let hybrid = txn.open_table(HYBRID_KEYS)?;
        let mut out = std::collections::HashMap::new();
        for d in devices {
            if let Some(k) = hybrid.get(d)? {
                out.insert(*d, k.value().to_vec());
            }
        }
        Ok(out)
    }
}
