//! The Authentication Service's tables, and the typed operations on them that
//! the service runs inside the store writer's transactions. Written only through
//! the writer, read with plain read transactions.

use quicnprotochat_crypto::mls::Suite;
use quicnprotochat_wire::IdentityKey;
use redb::{ReadableTable, TableDefinition, WriteTransaction};

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

/// Deletes every row of `device` (a device of `username`): its directory
/// entries, KeyPackages of every suite, hybrid key, access key and sessions.
/// Returns the hashes of the sessions it ended.
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
