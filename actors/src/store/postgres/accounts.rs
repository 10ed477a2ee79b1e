//! The Authentication Service's writes on PostgreSQL, inside the writer's batch
//! transaction. Every refusal is decided before anything is written.

use quicnprotochat_wire::IdentityKey;
use tokio_postgres::Transaction;

use super::{i, key32, pg, u};
use crate::auth::{CheckedUpload, ClaimedPackage};
use crate::store::StoreError;
use crate::store::admin::{Account, DeletedAccount};
use crate::store::ops::{AccountRefusal, check_upload_fits, suite_code};
use quicnprotochat_crypto::mls::Suite;

/// Stores `value` as secret `name` unless one is stored; returns the stored one.
pub(super) async fn init_secret(
    txn: &Transaction<'_>,
    name: &str,
    value: &[u8],
) -> Result<Vec<u8>, StoreError> {
    txn.execute(
        "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        &[&name, &value],
    )
    .await
    .map_err(pg)?;
    let row = txn
        .query_one("SELECT value FROM secrets WHERE name = $1", &[&name])
        .await
        .map_err(pg)?;
    Ok(row.get(0))
}

/// Whether `device`'s key was retired (removed, or its account deleted).
async fn is_retired(txn: &Transaction<'_>, device: &IdentityKey) -> Result<bool, StoreError> {
    Ok(txn
        .query_opt(
            "SELECT 1 FROM retired_devices WHERE device = $1",
            &[&&device.0[..]],
        )
        .await
        .map_err(pg)?
        .is_some())
}

/// A new account with its first device.
pub(super) async fn register(
    txn: &Transaction<'_>,
    username: &str,
    record: &[u8],
    device: &IdentityKey,
    now_ms: u64,
) -> Result<Result<(), AccountRefusal>, StoreError> {
    if is_retired(txn, device).await? {
        return Ok(Err(AccountRefusal::DeviceRetired));
    }
    let inserted = txn
        .execute(
            "INSERT INTO users (username, record) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&username, &record],
        )
        .await
        .map_err(pg)?;
    if inserted == 0 {
        return Ok(Err(AccountRefusal::UsernameTaken));
    }
    let added = txn
        .execute(
            "INSERT INTO devices (device, username, added_ms) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
            &[&&device.0[..], &username, &i(now_ms)],
        )
        .await
        .map_err(pg)?;
    if added == 0 {
        // Take the account row back: nothing of a refusal stays.
        txn.execute("DELETE FROM users WHERE username = $1", &[&username])
            .await
            .map_err(pg)?;
        return Ok(Err(AccountRefusal::DeviceTaken));
    }
    Ok(Ok(()))
}

/// A session for `device` of `username`, adding the device to the account if new.
pub(super) async fn login(
    txn: &Transaction<'_>,
    username: &str,
    device: &IdentityKey,
    token_hash: &[u8; 32],
    (expires_at_ms, now_ms): (u64, u64),
    max_devices: u32,
    record_hash: &[u8; 32],
) -> Result<Result<(), AccountRefusal>, StoreError> {
    if is_retired(txn, device).await? {
        return Ok(Err(AccountRefusal::DeviceRetired));
    }
    // The record the login proved, still (locked against a password change
    // committing in between).
    let record = txn
        .query_opt(
            "SELECT record FROM users WHERE username = $1 FOR SHARE",
            &[&username],
        )
        .await
        .map_err(pg)?
        .map(|r| crate::store::ops::password_record_fingerprint(r.get::<_, &[u8]>(0)));
    if record.as_ref() != Some(record_hash) {
        return Ok(Err(AccountRefusal::PasswordChanged));
    }
    // A new device counts against the account's quota. The account's row is
    // locked first, so two nodes adding devices at once count one another.
    let known = txn
        .query_opt(
            "SELECT username FROM devices WHERE device = $1",
            &[&&device.0[..]],
        )
        .await
        .map_err(pg)?;
    if known.is_none() {
        txn.query_opt(
            "SELECT 1 FROM users WHERE username = $1 FOR UPDATE",
            &[&username],
        )
        .await
        .map_err(pg)?;
        let has: i64 = txn
            .query_one(
                "SELECT count(*) FROM devices WHERE username = $1",
                &[&username],
            )
            .await
            .map_err(pg)?
            .get(0);
        if let Err(refusal) =
            AccountRefusal::check_another_device_fits(has.max(0) as u64, max_devices)
        {
            return Ok(Err(refusal));
        }
    }
    txn.execute(
        "INSERT INTO devices (device, username, added_ms) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
        &[&&device.0[..], &username, &i(now_ms)],
    )
    .await
    .map_err(pg)?;
    let owner: String = txn
        .query_one(
            "SELECT username FROM devices WHERE device = $1",
            &[&&device.0[..]],
        )
        .await
        .map_err(pg)?
        .get(0);
    if owner != username {
        return Ok(Err(AccountRefusal::OtherAccount));
    }
    txn.execute(
        "INSERT INTO sessions (token_hash, device, expires_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (token_hash) DO UPDATE SET device = $2, expires_ms = $3",
        &[&&token_hash[..], &&device.0[..], &i(expires_at_ms)],
    )
    .await
    .map_err(pg)?;
    Ok(Ok(()))
}

/// Ends a session.
pub(super) async fn logout(txn: &Transaction<'_>, token_hash: &[u8; 32]) -> Result<(), StoreError> {
    txn.execute(
        "DELETE FROM sessions WHERE token_hash = $1",
        &[&&token_hash[..]],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Moves the end of session `token_hash`, if it is still there.
pub(super) async fn extend_session(
    txn: &Transaction<'_>,
    token_hash: &[u8; 32],
    expires_at_ms: u64,
) -> Result<(), StoreError> {
    txn.execute(
        "UPDATE sessions SET expires_ms = GREATEST(expires_ms, $2) WHERE token_hash = $1",
        &[&&token_hash[..], &i(expires_at_ms)],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Ends every session of every device of `username` but `keep`; returns
/// their hashes.
pub(super) async fn end_account_sessions(
    txn: &Transaction<'_>,
    username: &str,
    keep: Option<&[u8; 32]>,
) -> Result<Vec<[u8; 32]>, StoreError> {
    let keep: &[u8] = keep.map(|k| &k[..]).unwrap_or(&[]);
    let rows = txn
        .query(
            "DELETE FROM sessions WHERE device IN \
             (SELECT device FROM devices WHERE username = $1) AND token_hash <> $2 \
             RETURNING token_hash",
            &[&username, &keep],
        )
        .await
        .map_err(pg)?;
    rows.iter().map(|r| key32(r.get(0))).collect()
}

/// Replaces the OPAQUE record of `username`; `false` if there is no such
/// account (deleted meanwhile).
pub(super) async fn set_password_record(
    txn: &Transaction<'_>,
    username: &str,
    record: &[u8],
) -> Result<bool, StoreError> {
    let updated = txn
        .execute(
            "UPDATE users SET record = $2 WHERE username = $1",
            &[&username, &record],
        )
        .await
        .map_err(pg)?;
    Ok(updated == 1)
}

/// Deletes every row of `device` and retires its key; returns the hashes of
/// the sessions it ended.
pub(super) async fn remove_device(
    txn: &Transaction<'_>,
    device: &IdentityKey,
    now_ms: u64,
) -> Result<Vec<[u8; 32]>, StoreError> {
    let d = &device.0[..];
    txn.execute(
        "INSERT INTO retired_devices (device, retired_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&d, &i(now_ms)],
    )
    .await
    .map_err(pg)?;
    for sql in [
        "DELETE FROM devices WHERE device = $1",
        "DELETE FROM key_packages WHERE device = $1",
        "DELETE FROM kp_stats WHERE device = $1",
        "DELETE FROM hybrid_keys WHERE device = $1",
        "DELETE FROM access_keys WHERE device = $1",
    ] {
        txn.execute(sql, &[&d]).await.map_err(pg)?;
    }
    let rows = txn
        .query(
            "DELETE FROM sessions WHERE device = $1 RETURNING token_hash",
            &[&d],
        )
        .await
        .map_err(pg)?;
    rows.iter().map(|r| key32(r.get(0))).collect()
}

/// Deletes account `username` and its devices' rows.
pub(super) async fn delete_account(
    txn: &Transaction<'_>,
    username: &str,
    now_ms: u64,
) -> Result<Option<DeletedAccount>, StoreError> {
    let deleted = txn
        .execute("DELETE FROM users WHERE username = $1", &[&username])
        .await
        .map_err(pg)?;
    if deleted == 0 {
        return Ok(None);
    }
    let rows = txn
        .query(
            "SELECT device FROM devices WHERE username = $1 ORDER BY device",
            &[&username],
        )
        .await
        .map_err(pg)?;
    let devices: Vec<IdentityKey> = rows
        .iter()
        .map(|r| key32(r.get(0)).map(IdentityKey))
        .collect::<Result<_, _>>()?;
    let mut sessions = Vec::new();
    for d in &devices {
        sessions.extend(remove_device(txn, d, now_ms).await?);
    }
    Ok(Some((
        Account {
            username: username.to_string(),
            devices,
        },
        sessions,
    )))
}

/// Stores a checked upload, or refuses it before writing anything.
pub(super) async fn store_upload(
    txn: &Transaction<'_>,
    upload: &CheckedUpload,
) -> Result<Result<(), AccountRefusal>, StoreError> {
    let d = &upload.device.0[..];
    let suite = suite_code(upload.suite);
    // Lock the device's counters (created if missing) first: two uploads of
    // one device on two nodes are then applied one after the other.
    txn.execute(
        "INSERT INTO kp_stats (device, suite, next_n, served) VALUES ($1, $2, 0, 0) \
         ON CONFLICT DO NOTHING",
        &[&d, &suite],
    )
    .await
    .map_err(pg)?;
    let stats = txn
        .query_one(
            "SELECT next_n, last_resort IS NOT NULL FROM kp_stats \
             WHERE device = $1 AND suite = $2 FOR UPDATE",
            &[&d, &suite],
        )
        .await
        .map_err(pg)?;
    let next = u(stats.get(0));
    let has_last_resort: bool = stats.get(1);
    let stored = txn
        .query_one(
            "SELECT count(*) FROM key_packages WHERE device = $1 AND suite = $2",
            &[&d, &suite],
        )
        .await
        .map_err(pg)?;
    let has_hybrid = txn
        .query_opt("SELECT 1 FROM hybrid_keys WHERE device = $1", &[&d])
        .await
        .map_err(pg)?
        .is_some();
    if let Err(refusal) = check_upload_fits(
        u(stored.get(0)),
        upload.one_time.len(),
        has_last_resort || !upload.last_resort.is_empty(),
        has_hybrid || !upload.hybrid_public_key.is_empty(),
    ) {
        return Ok(Err(refusal));
    }
    let numbers: Vec<i64> = (0..upload.one_time.len() as u64)
        .map(|k| i(next + k))
        .collect();
    let packages: Vec<&[u8]> = upload.one_time.iter().map(|p| p.as_slice()).collect();
    txn.execute(
        "INSERT INTO key_packages (device, suite, n, kp) \
           SELECT $1, $2, n, kp FROM unnest($3::BIGINT[], $4::BYTEA[]) AS t(n, kp)",
        &[&d, &suite, &numbers, &packages],
    )
    .await
    .map_err(pg)?;
    txn.execute(
        "UPDATE kp_stats SET next_n = $3, \
           last_resort = CASE WHEN $4::BYTEA IS NULL THEN last_resort ELSE $4 END \
         WHERE device = $1 AND suite = $2",
        &[
            &d,
            &suite,
            &i(next + upload.one_time.len() as u64),
            &(!upload.last_resort.is_empty()).then_some(upload.last_resort.as_slice()),
        ],
    )
    .await
    .map_err(pg)?;
    if !upload.hybrid_public_key.is_empty() {
        txn.execute(
            "INSERT INTO hybrid_keys (device, key) VALUES ($1, $2) \
             ON CONFLICT (device) DO UPDATE SET key = $2",
            &[&d, &upload.hybrid_public_key],
        )
        .await
        .map_err(pg)?;
    }
    Ok(Ok(()))
}

/// Claims one KeyPackage of `suite` per device of `devices` with published
/// keys: the oldest one-time package, deleted as it is returned (rows another
/// node's claim holds are skipped, so no package is served twice), or the
/// last-resort one, counted.
pub(super) async fn claim(
    txn: &Transaction<'_>,
    suite: Suite,
    devices: &[IdentityKey],
) -> Result<Vec<ClaimedPackage>, StoreError> {
    let suite = suite_code(suite);
    let mut out = Vec::new();
    for device in devices {
        let d = &device.0[..];
        let Some(hybrid) = txn
            .query_opt("SELECT key FROM hybrid_keys WHERE device = $1", &[&d])
            .await
            .map_err(pg)?
        else {
            continue; // never uploaded anything: nothing to serve
        };
        let one_time = txn
            .query_opt(
                "DELETE FROM key_packages WHERE (device, suite, n) = \
                   (SELECT device, suite, n FROM key_packages WHERE device = $1 AND suite = $2 \
                    ORDER BY n LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING kp",
                &[&d, &suite],
            )
            .await
            .map_err(pg)?;
        let (key_package, last_resort) = match one_time {
            Some(r) => (r.get(0), false),
            None => {
                let row = txn
                    .query_opt(
                        "UPDATE kp_stats SET served = served + 1 \
                         WHERE device = $1 AND suite = $2 AND last_resort IS NOT NULL \
                         RETURNING last_resort",
                        &[&d, &suite],
                    )
                    .await
                    .map_err(pg)?;
                match row {
                    Some(r) => (r.get(0), true),
                    None => continue,
                }
            }
        };
        out.push(ClaimedPackage {
            identity_key: *device,
            key_package,
            hybrid_public_key: hybrid.get(0),
            last_resort,
        });
    }
    Ok(out)
}

/// Sets the hash of a device's sealed-sender access key.
pub(super) async fn set_access_key(
    txn: &Transaction<'_>,
    device: &IdentityKey,
    hash: &[u8; 32],
) -> Result<(), StoreError> {
    txn.execute(
        "INSERT INTO access_keys (device, hash) VALUES ($1, $2) \
         ON CONFLICT (device) DO UPDATE SET hash = $2",
        &[&&device.0[..], &&hash[..]],
    )
    .await
    .map_err(pg)?;
    Ok(())
}
