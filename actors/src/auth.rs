//! The Authentication Service: accounts (OPAQUE), devices, sessions, KeyPackages,
//! hybrid keys and sealed-sender access keys.
//!
//! Every write goes through the store writer in one transaction per operation (a
//! KeyPackage claim reads and deletes in the same transaction, so a one-time
//! package is never served twice). What the hot path asks ("is this a registered
//! device?", "is this session alive?") is answered from memory, kept in step with
//! the store after each commit.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quicnprotochat_crypto::envelope::HybridPublicKey;
use quicnprotochat_crypto::mls::{Suite, validate_key_package};
use quicnprotochat_crypto::opaque::{self, OpaqueError, ServerLoginState, ServerSetup};
use quicnprotochat_crypto::token::{TokenHash, generate_token};
use quicnprotochat_wire::{ErrorCode, IdentityKey, WireError};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};

use crate::error::DeliveryError;
use crate::store::auth::*;
use crate::store::writer::{StoreWriter, TransactError};
use crate::store::{ServerStore, StoreError};

/// Shortest and longest username.
pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 32;
/// Most one-time KeyPackages one upload may carry, and one device may have stored.
pub const MAX_UPLOAD: usize = 200;
pub const MAX_STORED_KEY_PACKAGES: u64 = 1000;

/// The `NOT_FOUND` details of a KeyPackage claim: clients tell an unknown user
/// from one who published nothing for the asked suite by them.
pub const NO_SUCH_USER: &str = "no such user or device";
pub const NO_KEY_PACKAGES: &str = "no KeyPackages published for this ciphersuite";
/// How long a session token lives.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why the Authentication Service refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid username: {0}")]
    BadUsername(&'static str),
    #[error("username is taken")]
    UsernameTaken,
    /// One answer for wrong password, unknown user, wrong identity key, expired or
    /// revoked token: the caller learns nothing about which.
    #[error("wrong username, password, identity key or token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("storage: {0}")]
    Store(#[from] DeliveryError),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        AuthError::Store(e.into())
    }
}

impl From<redb::Error> for AuthError {
    fn from(e: redb::Error) -> Self {
        AuthError::Store(StoreError::Redb(e).into())
    }
}

impl From<TransactError<AuthError>> for AuthError {
    fn from(e: TransactError<AuthError>) -> Self {
        match e {
            TransactError::Refused(a) => a,
            TransactError::Store(s) => AuthError::Store(s),
        }
    }
}

impl From<AuthError> for WireError {
    fn from(e: AuthError) -> Self {
        let code = match &e {
            AuthError::BadUsername(_) | AuthError::BadRequest(_) => ErrorCode::BadRequest,
            AuthError::UsernameTaken => ErrorCode::AlreadyExists,
            AuthError::Unauthorized => ErrorCode::Unauthorized,
            AuthError::NotFound(_) => ErrorCode::NotFound,
            // Details are for the operator's log (connection.rs logs them).
            AuthError::Store(_) => {
                return WireError::new(ErrorCode::Unavailable, "storage unavailable");
            }
        };
        WireError::new(code, e.to_string())
    }
}

/// Checks a username: 3–32 characters of `a-z 0-9 . _ -`, starting with a letter.
pub fn check_username(name: &str) -> Result<(), AuthError> {
    if name.len() < USERNAME_MIN || name.len() > USERNAME_MAX {
        return Err(AuthError::BadUsername("must be 3 to 32 characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(AuthError::BadUsername(
            "must start with a lower-case letter",
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    {
        return Err(AuthError::BadUsername(
            "may contain only a-z, 0-9, '.', '_' and '-'",
        ));
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn storage<E: Into<redb::Error>>(e: E) -> AuthError {
    AuthError::from(e.into())
}

/// A live session.
#[derive(Debug, Clone, Copy)]
struct SessionRecord {
    identity: IdentityKey,
    expires_at_ms: u64,
}

/// A session token just issued: the token itself goes to the client once; the
/// node keeps only its hash.
pub struct IssuedSession {
    pub token: [u8; 32],
    pub token_hash: [u8; 32],
    pub expires_at_ms: u64,
}

/// One claimed KeyPackage with what a sender needs to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedPackage {
    pub identity_key: IdentityKey,
    pub key_package: Vec<u8>,
    pub hybrid_public_key: Vec<u8>,
    pub last_resort: bool,
}

/// Whom a KeyPackage claim is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimTarget {
    Username(String),
    Device(IdentityKey),
}

/// What an account looks like to one of its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    pub username: String,
    pub device_count: u32,
}

/// The Authentication Service of a node.
pub struct AuthService {
    writer: StoreWriter,
    store: ServerStore,
    setup: ServerSetup,
    /// device → username, for every registered device.
    devices: RwLock<HashMap<IdentityKey, String>>,
    /// token hash → session.
    sessions: RwLock<HashMap<[u8; 32], SessionRecord>>,
    accounts_exist: AtomicBool,
}

impl AuthService {
    /// Loads (or, on first start, creates and persists) the OPAQUE server setup,
    /// the device directory and the live sessions.
    pub async fn open(store: ServerStore, writer: StoreWriter) -> Result<AuthService, AuthError> {
        let existing = {
            let txn = store.db().begin_read().map_err(storage)?;
            let t = txn.open_table(SECRETS).map_err(storage)?;
            t.get(OPAQUE_SETUP_KEY)
                .map_err(storage)?
                .map(|v| v.value().to_vec())
        };
        let setup = match existing {
            Some(bytes) => ServerSetup::from_bytes(&bytes).map_err(|_| {
                AuthError::from(StoreError::Corrupt("OPAQUE server setup unreadable".into()))
            })?,
            None => {
                let fresh = ServerSetup::generate();
                let bytes = fresh.to_bytes().to_vec();
                // Another writer cannot race us: the node opens its store once.
                writer
                    .transact(move |txn: &WriteTransaction| -> Result<(), AuthError> {
                        let mut t = txn.open_table(SECRETS).map_err(storage)?;
                        t.insert(OPAQUE_SETUP_KEY, bytes.as_slice())
                            .map_err(storage)?;
                        Ok(())
                    })
                    .await?;
                fresh
            }
        };
        let (devices, sessions, accounts) = {
            let txn = store.db().begin_read().map_err(storage)?;
            let mut devices = HashMap::new();
            for e in txn
                .open_table(DEVICES)
                .map_err(storage)?
                .iter()
                .map_err(storage)?
            {
                let (k, v) = e.map_err(storage)?;
                devices.insert(IdentityKey(*k.value()), v.value().to_string());
            }
            let now = now_ms();
            let mut sessions = HashMap::new();
            for e in txn
                .open_table(SESSIONS)
                .map_err(storage)?
                .iter()
                .map_err(storage)?
            {
                let (k, v) = e.map_err(storage)?;
                let (identity, expires_at_ms) = v.value();
                if expires_at_ms > now {
                    sessions.insert(
                        *k.value(),
                        SessionRecord {
                            identity: IdentityKey(*identity),
                            expires_at_ms,
                        },
                    );
                }
            }
            let accounts = !txn
                .open_table(USERS)
                .map_err(storage)?
                .is_empty()
                .map_err(storage)?;
            (devices, sessions, accounts)
        };
        Ok(AuthService {
            writer,
            store,
            setup,
            devices: RwLock::new(devices),
            sessions: RwLock::new(sessions),
            accounts_exist: AtomicBool::new(accounts),
        })
    }

    // ---- registration and login ------------------------------------------------

    /// OPAQUE registration, first step. A taken name is refused here already.
    pub fn register_start(&self, username: &str, request: &[u8]) -> Result<Vec<u8>, AuthError> {
        check_username(username)?;
        if self.password_record(username)?.is_some() {
            return Err(AuthError::UsernameTaken);
        }
        opaque::server_register_start(&self.setup, request, username).map_err(opaque_err)
    }

    /// OPAQUE registration, last step: stores the account with `device` as its
    /// first device (the caller has proven it holds the device's key).
    pub async fn register_finish(
        &self,
        username: &str,
        upload: &[u8],
        device: IdentityKey,
    ) -> Result<(), AuthError> {
        check_username(username)?;
        let record = opaque::server_register_finish(upload).map_err(opaque_err)?;
        let name = username.to_string();
        self.writer
            .transact(move |txn| -> Result<(), AuthError> {
                let mut users = txn.open_table(USERS).map_err(storage)?;
                let mut devices = txn.open_table(DEVICES).map_err(storage)?;
                if users.get(name.as_str()).map_err(storage)?.is_some() {
                    return Err(AuthError::UsernameTaken);
                }
                if devices.get(&device.0).map_err(storage)?.is_some() {
                    return Err(AuthError::BadRequest(
                        "this identity key already belongs to an account".into(),
                    ));
                }
                users
                    .insert(name.as_str(), record.as_slice())
                    .map_err(storage)?;
                devices.insert(&device.0, name.as_str()).map_err(storage)?;
                txn.open_table(ACCOUNT_DEVICES)
                    .map_err(storage)?
                    .insert((name.as_str(), &device.0), now_ms())
                    .map_err(storage)?;
                Ok(())
            })
            .await?;
        self.devices
            .write()
            .expect("lock")
            .insert(device, username.to_string());
        self.accounts_exist.store(true, Ordering::Release);
        Ok(())
    }

    fn password_record(&self, username: &str) -> Result<Option<Vec<u8>>, AuthError> {
        let txn = self.store.db().begin_read().map_err(storage)?;
        let users = txn.open_table(USERS).map_err(storage)?;
        Ok(users
            .get(username)
            .map_err(storage)?
            .map(|v| v.value().to_vec()))
    }

    /// OPAQUE login, first step. Unknown users get an answer from a fake record,
    /// indistinguishable from a real one.
    pub fn login_start(
        &self,
        username: &str,
        request: &[u8],
    ) -> Result<(ServerLoginState, Vec<u8>), AuthError> {
        // A malformed name cannot exist; answer it like any unknown user.
        let record = if check_username(username).is_ok() {
            self.password_record(username)?
        } else {
            None
        };
        opaque::server_login_start(&self.setup, record.as_deref(), request, username)
            .map_err(opaque_err)
    }

    /// OPAQUE login, last step, for a caller that has proven it holds `device`'s
    /// key. A device not yet in the account is added (a new device logging in
    /// with the account's password). Returns a fresh session.
    pub async fn login_finish(
        &self,
        state: ServerLoginState,
        username: &str,
        finalization: &[u8],
        device: IdentityKey,
    ) -> Result<IssuedSession, AuthError> {
        opaque::server_login_finish(state, finalization, username)
            .map_err(|_| AuthError::Unauthorized)?;
        // Only a real account can get here: a fake record never verifies.
        let token = generate_token();
        let token_hash = TokenHash::of(&token).digest();
        let expires_at_ms = now_ms() + SESSION_TTL.as_millis() as u64;
        let name = username.to_string();
        self.writer
            .transact(move |txn| -> Result<(), AuthError> {
                let mut devices = txn.open_table(DEVICES).map_err(storage)?;
                let owner = devices
                    .get(&device.0)
                    .map_err(storage)?
                    .map(|v| v.value().to_string());
                match owner {
                    Some(o) if o != name => return Err(AuthError::Unauthorized),
                    Some(_) => {}
                    None => {
                        devices.insert(&device.0, name.as_str()).map_err(storage)?;
                        txn.open_table(ACCOUNT_DEVICES)
                            .map_err(storage)?
                            .insert((name.as_str(), &device.0), now_ms())
                            .map_err(storage)?;
                    }
                }
                txn.open_table(SESSIONS)
                    .map_err(storage)?
                    .insert(&token_hash, (&device.0, expires_at_ms))
                    .map_err(storage)?;
                Ok(())
            })
            .await?;
        self.devices
            .write()
            .expect("lock")
            .insert(device, username.to_string());
        self.sessions.write().expect("lock").insert(
            token_hash,
            SessionRecord {
                identity: device,
                expires_at_ms,
            },
        );
        Ok(IssuedSession {
            token,
            token_hash,
            expires_at_ms,
        })
    }

    /// Resumes a session by token: returns its device and expiry.
    pub fn resume(&self, token: &[u8]) -> Result<(IdentityKey, [u8; 32], u64), AuthError> {
        let hash = TokenHash::of(token).digest();
        let sessions = self.sessions.read().expect("lock");
        // Looked up by SHA-256 of the token: timing can reveal at most something
        // about a hash, which says nothing usable about the token.
        match sessions.get(&hash) {
            Some(s) if s.expires_at_ms > now_ms() => Ok((s.identity, hash, s.expires_at_ms)),
            _ => Err(AuthError::Unauthorized),
        }
    }

    /// Whether the session with this token hash is still alive (not logged out,
    /// not expired, device not removed).
    pub fn session_alive(&self, token_hash: &[u8; 32]) -> bool {
        self.sessions
            .read()
            .expect("lock")
            .get(token_hash)
            .is_some_and(|s| s.expires_at_ms > now_ms())
    }

    /// When the session with this token hash expires, if it is alive.
    pub fn session_expiry(&self, token_hash: &[u8; 32]) -> Option<u64> {
        self.sessions
            .read()
            .expect("lock")
            .get(token_hash)
            .map(|s| s.expires_at_ms)
    }

    /// Revokes a session.
    pub async fn logout(&self, token_hash: [u8; 32]) -> Result<(), AuthError> {
        self.writer
            .transact(move |txn| -> Result<(), AuthError> {
                txn.open_table(SESSIONS)
                    .map_err(storage)?
                    .remove(&token_hash)
                    .map_err(storage)?;
                Ok(())
            })
            .await?;
        self.sessions.write().expect("lock").remove(&token_hash);
        Ok(())
    }

    // ---- the device directory ---------------------------------------------------

    /// Whether anything may be delivered to `inbox`: once accounts exist, only
    /// registered devices have inboxes, so strangers cannot create them.
    pub fn accepts_inbox(&self, inbox: &IdentityKey) -> bool {
        !self.accounts_exist.load(Ordering::Acquire)
            || self.devices.read().expect("lock").contains_key(inbox)
    }

    /// The account of a device, if it has one.
    pub fn account_of(&self, device: &IdentityKey) -> Option<AccountView> {
        let username = self.devices.read().expect("lock").get(device)?.clone();
        let device_count = self.devices_of(&username).len() as u32;
        Some(AccountView {
            username,
            device_count,
        })
    }

    fn devices_of(&self, username: &str) -> Vec<IdentityKey> {
        let mut out: Vec<IdentityKey> = self
            .devices
            .read()
            .expect("lock")
            .iter()
            .filter(|(_, u)| u.as_str() == username)
            .map(|(d, _)| *d)
            .collect();
        out.sort();
        out
    }

    /// Removes `device` from the account of `by` (a device of the same account).
    /// Its sessions, KeyPackages and keys go with it; the caller then purges its
    /// inbox.
    pub async fn remove_device(
        &self,
        by: IdentityKey,
        device: IdentityKey,
    ) -> Result<(), AuthError> {
        let account = self.account_of(&by).ok_or(AuthError::Unauthorized)?;
        if self.devices.read().expect("lock").get(&device) != Some(&account.username) {
            return Err(AuthError::NotFound("no such device in this account"));
        }
        if account.device_count <= 1 {
            return Err(AuthError::BadRequest(
                "cannot remove the account's only device".into(),
            ));
        }
        let name = account.username.clone();
        let dropped_sessions = self
            .writer
            .transact(move |txn| -> Result<Vec<[u8; 32]>, AuthError> {
                txn.open_table(DEVICES)
                    .map_err(storage)?
                    .remove(&device.0)
                    .map_err(storage)?;
                txn.open_table(ACCOUNT_DEVICES)
                    .map_err(storage)?
                    .remove((name.as_str(), &device.0))
                    .map_err(storage)?;
                for suite in Suite::ALL {
                    let t = key_package_tables(suite);
                    let mut kps = txn.open_table(t.one_time).map_err(storage)?;
                    kps.retain_in((&device.0, 0)..=(&device.0, u64::MAX), |_, _| false)
                        .map_err(storage)?;
                    txn.open_table(t.last_resort)
                        .map_err(storage)?
                        .remove(&device.0)
                        .map_err(storage)?;
                    txn.open_table(t.stats)
                        .map_err(storage)?
                        .remove(&device.0)
                        .map_err(storage)?;
                }
                txn.open_table(HYBRID_KEYS)
                    .map_err(storage)?
                    .remove(&device.0)
                    .map_err(storage)?;
                txn.open_table(ACCESS_KEYS)
                    .map_err(storage)?
                    .remove(&device.0)
                    .map_err(storage)?;
                let mut sessions = txn.open_table(SESSIONS).map_err(storage)?;
                let mut dropped = Vec::new();
                for e in sessions.iter().map_err(storage)? {
                    let (k, v) = e.map_err(storage)?;
                    if v.value().0 == &device.0 {
                        dropped.push(*k.value());
                    }
                }
                for k in &dropped {
                    sessions.remove(k).map_err(storage)?;
                }
                Ok(dropped)
            })
            .await?;
        self.devices.write().expect("lock").remove(&device);
        let mut sessions = self.sessions.write().expect("lock");
        for k in dropped_sessions {
            sessions.remove(&k);
        }
        Ok(())
    }

    // ---- KeyPackages and hybrid keys ------------------------------------------------

    /// Stores a device's KeyPackages (validated: signature, suite, lifetime, and
    /// that they name `device`) and, when given, its signed hybrid key and a new
    /// last-resort package. Validation is CPU work (~30 ms for 200 packages):
    /// callers on a latency-sensitive thread run [`check_upload`] elsewhere and
    /// then [`AuthService::store_upload`].
    pub async fn upload_key_packages(
        &self,
        device: IdentityKey,
        one_time: Vec<Vec<u8>>,
        last_resort: Vec<u8>,
        hybrid_public_key: Vec<u8>,
    ) -> Result<(), AuthError> {
        let checked = check_upload(device, one_time, last_resort, hybrid_public_key)?;
        self.store_upload(checked).await
    }

    /// Stores an upload that [`check_upload`] accepted.
    pub async fn store_upload(&self, upload: CheckedUpload) -> Result<(), AuthError> {
        let CheckedUpload {
            device,
            suite,
            one_time,
            last_resort,
            hybrid_public_key,
        } = upload;
        let tables = key_package_tables(suite);
        self.writer
            .transact(move |txn| -> Result<(), AuthError> {
                let mut stats = txn.open_table(tables.stats).map_err(storage)?;
                let (next, served) = stats.get(&device.0).map_err(storage)?.map(|v| v.value()).unwrap_or((0, 0));
                let mut kps = txn.open_table(tables.one_time).map_err(storage)?;
                let stored = kps.range((&device.0, 0)..=(&device.0, u64::MAX)).map_err(storage)?.count() as u64;
                if stored + one_time.len() as u64 > MAX_STORED_KEY_PACKAGES {
                    return Err(AuthError::BadRequest(format!(
                        "at most {MAX_STORED_KEY_PACKAGES} KeyPackages may be stored per device ({stored} are)"
                    )));
                }
                let has_last_resort = txn.open_table(tables.last_resort).map_err(storage)?.get(&device.0).map_err(storage)?.is_some();
                if last_resort.is_empty() && !has_last_resort {
                    return Err(AuthError::BadRequest("the first upload must include a last-resort KeyPackage".into()));
                }
                let has_hybrid = txn.open_table(HYBRID_KEYS).map_err(storage)?.get(&device.0).map_err(storage)?.is_some();
                if hybrid_public_key.is_empty() && !has_hybrid {
                    return Err(AuthError::BadRequest("the first upload must include the hybrid public key".into()));
                }
                for (i, kp) in one_time.iter().enumerate() {
                    kps.insert((&device.0, next + i as u64), kp.as_slice()).map_err(storage)?;
                }
                stats.insert(&device.0, (next + one_time.len() as u64, served)).map_err(storage)?;
                if !last_resort.is_empty() {
                    txn.open_table(tables.last_resort).map_err(storage)?.insert(&device.0, last_resort.as_slice()).map_err(storage)?;
                }
                if !hybrid_public_key.is_empty() {
                    txn.open_table(HYBRID_KEYS)
                        .map_err(storage)?
                        .insert(&device.0, hybrid_public_key.as_slice())
                        .map_err(storage)?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Claims one KeyPackage per device of the target: a one-time package is
    /// deleted in the transaction that returns it; when none is left the
    /// last-resort package is served (and counted).
    pub async fn claim_key_packages(
        &self,
        target: ClaimTarget,
        suite: Suite,
    ) -> Result<Vec<ClaimedPackage>, AuthError> {
        let tables = key_package_tables(suite);
        let devices = self.target_devices(&target);
        if devices.is_empty() {
            return Err(AuthError::NotFound(NO_SUCH_USER));
        }
        let claimed = self
            .writer
            .transact(move |txn| -> Result<Vec<ClaimedPackage>, AuthError> {
                let mut kps = txn.open_table(tables.one_time).map_err(storage)?;
                let mut stats = txn.open_table(tables.stats).map_err(storage)?;
                let last_resort = txn.open_table(tables.last_resort).map_err(storage)?;
                let hybrid = txn.open_table(HYBRID_KEYS).map_err(storage)?;
                let mut out = Vec::new();
                for d in devices {
                    let Some(hybrid_public_key) = hybrid
                        .get(&d.0)
                        .map_err(storage)?
                        .map(|v| v.value().to_vec())
                    else {
                        continue; // never uploaded anything: nothing to serve
                    };
                    let first = kps
                        .range((&d.0, 0)..=(&d.0, u64::MAX))
                        .map_err(storage)?
                        .next()
                        .transpose()
                        .map_err(storage)?
                        .map(|(k, v)| (k.value().1, v.value().to_vec()));
                    let (key_package, is_last_resort) = match first {
                        Some((n, kp)) => {
                            kps.remove((&d.0, n)).map_err(storage)?;
                            (kp, false)
                        }
                        None => {
                            let Some(kp) = last_resort
                                .get(&d.0)
                                .map_err(storage)?
                                .map(|v| v.value().to_vec())
                            else {
                                continue;
                            };
                            let (next, served) = stats
                                .get(&d.0)
                                .map_err(storage)?
                                .map(|v| v.value())
                                .unwrap_or((0, 0));
                            stats.insert(&d.0, (next, served + 1)).map_err(storage)?;
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
            })
            .await?;
        if claimed.is_empty() {
            return Err(AuthError::NotFound(NO_KEY_PACKAGES));
        }
        Ok(claimed)
    }

    /// What a claim against `target` would serve, consuming nothing: per device
    /// with published keys, its hybrid key and last-resort package of `suite`
    /// (reusable by design, so serving it here is not counted as served).
    pub fn peek_key_packages(
        &self,
        target: &ClaimTarget,
        suite: Suite,
    ) -> Result<Vec<ClaimedPackage>, AuthError> {
        let devices = self.target_devices(target);
        if devices.is_empty() {
            return Err(AuthError::NotFound(NO_SUCH_USER));
        }
        let tables = key_package_tables(suite);
        let txn = self.store.db().begin_read().map_err(storage)?;
        let last_resort = txn.open_table(tables.last_resort).map_err(storage)?;
        let hybrid = txn.open_table(HYBRID_KEYS).map_err(storage)?;
        let mut out = Vec::new();
        for d in devices {
            let (Some(h), Some(kp)) = (
                hybrid.get(&d.0).map_err(storage)?,
                last_resort.get(&d.0).map_err(storage)?,
            ) else {
                continue;
            };
            out.push(ClaimedPackage {
                identity_key: d,
                key_package: kp.value().to_vec(),
                hybrid_public_key: h.value().to_vec(),
                last_resort: true,
            });
        }
        if out.is_empty() {
            return Err(AuthError::NotFound(NO_KEY_PACKAGES));
        }
        Ok(out)
    }

    /// The registered devices a claim against `target` is for.
    fn target_devices(&self, target: &ClaimTarget) -> Vec<IdentityKey> {
        match target {
            ClaimTarget::Username(name) => self.devices_of(name),
            ClaimTarget::Device(d) if self.devices.read().expect("lock").contains_key(d) => {
                vec![*d]
            }
            ClaimTarget::Device(_) => Vec::new(),
        }
    }

    /// How many one-time packages `device` has left, and how often its last-resort
    /// package was served.
    pub fn key_package_status(&self, device: &IdentityKey) -> Result<(u64, u64), AuthError> {
        let txn = self.store.db().begin_read().map_err(storage)?;
        let remaining = txn
            .open_table(KEY_PACKAGES)
            .map_err(storage)?
            .range((&device.0, 0)..=(&device.0, u64::MAX))
            .map_err(storage)?
            .count() as u64;
        let served = txn
            .open_table(KP_STATS)
            .map_err(storage)?
            .get(&device.0)
            .map_err(storage)?
            .map(|v| v.value().1)
            .unwrap_or(0);
        Ok((remaining, served))
    }

    // ---- sealed sender ----------------------------------------------------------------

    /// Sets the hash of the access key senders must present to reach `device`
    /// without a session.
    pub async fn set_access_key(
        &self,
        device: IdentityKey,
        access_key_hash: [u8; 32],
    ) -> Result<(), AuthError> {
        self.writer
            .transact(move |txn| -> Result<(), AuthError> {
                txn.open_table(ACCESS_KEYS)
                    .map_err(storage)?
                    .insert(&device.0, &access_key_hash)
                    .map_err(storage)?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Whether `access_key` opens `device`'s inbox to sealed senders (constant
    /// time in the key; an inbox without an access key opens to nobody).
    pub fn check_access_key(
        &self,
        device: &IdentityKey,
        access_key: &[u8],
    ) -> Result<bool, AuthError> {
        let txn = self.store.db().begin_read().map_err(storage)?;
        let stored = txn
            .open_table(ACCESS_KEYS)
            .map_err(storage)?
            .get(&device.0)
            .map_err(storage)?
            .map(|v| *v.value());
        Ok(stored.is_some_and(|hash| TokenHash::from_digest(hash).matches(access_key)))
    }
}

/// A KeyPackage upload whose content passed [`check_upload`].
pub struct CheckedUpload {
    device: IdentityKey,
    suite: Suite,
    one_time: Vec<Vec<u8>>,
    last_resort: Vec<u8>,
    hybrid_public_key: Vec<u8>,
}

/// The rules of an upload that need no stored state: at most [`MAX_UPLOAD`]
/// one-time packages, each valid (signature, suite, lifetime), naming `device`
/// and not marked last-resort; the last-resort one marked so; one suite for all;
/// the hybrid key signed by `device`. Pure CPU work, no I/O.
pub fn check_upload(
    device: IdentityKey,
    one_time: Vec<Vec<u8>>,
    last_resort: Vec<u8>,
    hybrid_public_key: Vec<u8>,
) -> Result<CheckedUpload, AuthError> {
    if one_time.len() > MAX_UPLOAD {
        return Err(AuthError::BadRequest(format!(
            "at most {MAX_UPLOAD} KeyPackages per upload"
        )));
    }
    let mut suites = Vec::new();
    for (i, kp) in one_time.iter().enumerate() {
        let v = validate_key_package(kp)
            .map_err(|e| AuthError::BadRequest(format!("KeyPackage {i}: {e}")))?;
        suites.push(v.suite);
        if v.identity_key != device.0 {
            return Err(AuthError::BadRequest(format!(
                "KeyPackage {i} belongs to another identity"
            )));
        }
        if v.last_resort {
            return Err(AuthError::BadRequest(format!(
                "KeyPackage {i} is a last-resort package"
            )));
        }
    }
    if !last_resort.is_empty() {
        let v = validate_key_package(&last_resort)
            .map_err(|e| AuthError::BadRequest(format!("last-resort KeyPackage: {e}")))?;
        if v.identity_key != device.0 || !v.last_resort {
            return Err(AuthError::BadRequest(
                "last-resort KeyPackage must be marked last-resort and belong to this identity"
                    .into(),
            ));
        }
        suites.push(v.suite);
    }
    let suite = suites.first().copied().unwrap_or(Suite::Classic);
    if suites.iter().any(|s| *s != suite) {
        return Err(AuthError::BadRequest(
            "all KeyPackages of one upload must be of one ciphersuite".into(),
        ));
    }
    if !hybrid_public_key.is_empty() {
        HybridPublicKey::verify(&hybrid_public_key, &device.0)
            .map_err(|e| AuthError::BadRequest(format!("hybrid public key: {e}")))?;
    }
    Ok(CheckedUpload {
        device,
        suite,
        one_time,
        last_resort,
        hybrid_public_key,
    })
}

fn opaque_err(e: OpaqueError) -> AuthError {
    match e {
        OpaqueError::Malformed => AuthError::BadRequest("malformed OPAQUE message".into()),
        OpaqueError::Unauthorized => AuthError::Unauthorized,
        OpaqueError::Protocol(p) => AuthError::BadRequest(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_documented_rules() {
        for ok in [
            "bob",
            "alice.smith",
            "a-b_c.9",
            "abcdefghijklmnopqrstuvwxyz012345",
        ] {
            assert!(check_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "Bob",
            "9lives",
            "_x",
            "with space",
            "ünï",
            "abcdefghijklmnopqrstuvwxyz0123456",
        ] {
            assert!(check_username(bad).is_err(), "{bad}");
        }
    }
}
