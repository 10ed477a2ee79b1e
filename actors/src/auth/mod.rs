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
use std::time::Duration;

use quicnprotochat_crypto::mls::Suite;
use quicnprotochat_crypto::opaque::{self, ServerLoginState, ServerSetup};
use quicnprotochat_crypto::token::{TokenHash, generate_token};
use quicnprotochat_wire::IdentityKey;

mod directory;
mod error;
mod rules;

use crate::store::StoreWriter;
use crate::store::auth::OPAQUE_SETUP_KEY;
use crate::store::ops::AccountWrite;
use crate::store::writer::WriteOp;
use crate::store::{Store, StoreError};
pub use directory::MemberEntry;
pub use error::AuthError;
use error::opaque_err;
pub use rules::*;

use crate::store::now_ms;

/// What the service keeps in memory of a directory read from the store:
/// device → username, token hash → session, and whether accounts exist.
type Cached = (
    HashMap<IdentityKey, String>,
    HashMap<[u8; 32], SessionRecord>,
    bool,
);

fn cached(directory: crate::store::Directory) -> Cached {
    let sessions = directory
        .sessions
        .into_iter()
        .map(|(hash, identity, expires_at_ms)| {
            let session = SessionRecord {
                identity,
                expires_at_ms,
            };
            (hash, session)
        })
        .collect();
    (
        directory.devices.into_iter().collect(),
        sessions,
        directory.accounts_exist,
    )
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
    /// The token itself: handed to the client once, never stored.
    pub token: [u8; 32],
    /// SHA-256 of the token: what the node keeps.
    pub token_hash: [u8; 32],
    /// When the session ends (ms since the Unix epoch).
    pub expires_at_ms: u64,
}

/// One claimed KeyPackage with what a sender needs to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedPackage {
    /// The device the package belongs to.
    pub identity_key: IdentityKey,
    /// The KeyPackage (MLS wire encoding).
    pub key_package: Vec<u8>,
    /// The device's signed hybrid (X-Wing) public key.
    pub hybrid_public_key: Vec<u8>,
    /// Whether this is the reusable last-resort package.
    pub last_resort: bool,
}

/// Whom a KeyPackage claim is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimTarget {
    /// Every device of this username.
    Username(String),
    /// This one device.
    Device(IdentityKey),
}

/// What an account looks like to one of its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    /// The account's name.
    pub username: String,
    /// How many devices the account has.
    pub device_count: u32,
}

/// The Authentication Service of a node.
pub struct AuthService {
    writer: StoreWriter,
    store: Store,
    setup: ServerSetup,
    /// device → username, for every registered device.
    devices: RwLock<HashMap<IdentityKey, String>>,
    /// token hash → session.
    sessions: RwLock<HashMap<[u8; 32], SessionRecord>>,
    /// Devices one account may have.
    max_devices_per_account: u32,
    /// How long a session token lives unused.
    session_idle: Duration,
    accounts_exist: AtomicBool,
}

impl AuthService {
    /// Loads (or, on first start, creates and persists) the OPAQUE server setup,
    /// the device directory and the live sessions.
    pub async fn open(
        store: Store,
        writer: StoreWriter,
        max_devices_per_account: u32,
        session_idle: Duration,
    ) -> Result<AuthService, AuthError> {
        let existing = store.secret(OPAQUE_SETUP_KEY).await?;
        let setup = match existing {
            Some(bytes) => ServerSetup::from_bytes(&bytes).map_err(|_| {
                AuthError::from(StoreError::Corrupt("OPAQUE server setup unreadable".into()))
            })?,
            None => {
                // Nodes starting together on one database race here: the
                // first setup stored wins, and every node uses that one.
                let value = ServerSetup::generate().to_bytes().to_vec();
                let stored = writer
                    .request(|reply| {
                        WriteOp::Account(AccountWrite::InitSecret {
                            name: OPAQUE_SETUP_KEY,
                            value,
                            reply,
                        })
                    })
                    .await?;
                ServerSetup::from_bytes(&stored).map_err(|_| {
                    AuthError::from(StoreError::Corrupt("OPAQUE server setup unreadable".into()))
                })?
            }
        };
        let (devices, sessions, accounts) = cached(store.directory(now_ms()).await?);
        Ok(AuthService {
            writer,
            store,
            setup,
            devices: RwLock::new(devices),
            sessions: RwLock::new(sessions),
            max_devices_per_account,
            session_idle,
            accounts_exist: AtomicBool::new(accounts),
        })
    }

    /// Reloads the devices and live sessions from the store: another node
    /// sharing it registered, logged in, logged out or removed something.
    pub async fn reload_directory(&self) -> Result<(), AuthError> {
        let (devices, sessions, accounts) = cached(self.store.directory(now_ms()).await?);
        *self.devices.write().expect("lock") = devices;
        *self.sessions.write().expect("lock") = sessions;
        if accounts {
            self.accounts_exist.store(true, Ordering::Release);
        }
        Ok(())
    }

    // ---- registration and login ------------------------------------------------

    /// OPAQUE registration, first step. A taken name is refused here already.
    pub async fn register_start(
        &self,
        username: &str,
        request: &[u8],
    ) -> Result<Vec<u8>, AuthError> {
        check_username(username)?;
        if self.password_record(username).await?.is_some() {
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
        self.writer
            .request(|reply| {
                WriteOp::Account(AccountWrite::Register {
                    username: username.to_string(),
                    record,
                    device,
                    now_ms: now_ms(),
                    reply,
                })
            })
            .await??;
        self.devices
            .write()
            .expect("lock")
            .insert(device, username.to_string());
        self.accounts_exist.store(true, Ordering::Release);
        Ok(())
    }

    async fn password_record(&self, username: &str) -> Result<Option<Vec<u8>>, AuthError> {
        Ok(self.store.password_record(username.to_string()).await?)
    }

    /// OPAQUE login, first step. Unknown users get an answer from a fake record,
    /// indistinguishable from a real one. Also returns the SHA-256 of the
    /// record used, which the last step hands back: a login may only finish
    /// against the record it started with (a password change in between
    /// refuses it).
    pub async fn login_start(
        &self,
        username: &str,
        request: &[u8],
    ) -> Result<(ServerLoginState, Vec<u8>, [u8; 32]), AuthError> {
        // A malformed name cannot exist; answer it like any unknown user.
        let record = if check_username(username).is_ok() {
            self.password_record(username).await?
        } else {
            None
        };
        // (A fake record's login never verifies: its hash is never compared.)
        let record_hash = record
            .as_deref()
            .map_or([0; 32], crate::store::ops::password_record_fingerprint);
        let (state, response) =
            opaque::server_login_start(&self.setup, record.as_deref(), request, username)
                .map_err(opaque_err)?;
        Ok((state, response, record_hash))
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
        record_hash: [u8; 32],
    ) -> Result<IssuedSession, AuthError> {
        opaque::server_login_finish(state, finalization, username)
            .map_err(|_| AuthError::Unauthorized)?;
        // Only a real account can get here: a fake record never verifies.
        let token = generate_token();
        let token_hash = TokenHash::of(&token).digest();
        let idle_ms = u64::try_from(self.session_idle.as_millis()).unwrap_or(u64::MAX);
        let expires_at_ms = now_ms().saturating_add(idle_ms);
        self.writer
            .request(|reply| {
                WriteOp::Account(AccountWrite::Login {
                    username: username.to_string(),
                    device,
                    token_hash,
                    expires_at_ms,
                    now_ms: now_ms(),
                    max_devices: self.max_devices_per_account,
                    record_hash,
                    reply,
                })
            })
            .await??;
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

    /// Resumes a session by token: returns its device, token hash and end.
    /// A use: the session's end moves [`AuthService::session_idle`] ahead
    /// (durably, at most once per eighth of it: `rules::session_extension`).
    pub async fn resume(&self, token: &[u8]) -> Result<(IdentityKey, [u8; 32], u64), AuthError> {
        let hash = TokenHash::of(token).digest();
        let now = now_ms();
        // Looked up by SHA-256 of the token: timing can reveal at most something
        // about a hash, which says nothing usable about the token.
        let found = self.sessions.read().expect("lock").get(&hash).copied();
        let session = match found {
            Some(s) if s.expires_at_ms > now => s,
            _ => return Err(AuthError::Unauthorized),
        };
        let Some(expires_at_ms) = session_extension(session.expires_at_ms, now, self.session_idle)
        else {
            return Ok((session.identity, hash, session.expires_at_ms));
        };
        self.writer
            .request(|reply| {
                WriteOp::Account(AccountWrite::ExtendSession {
                    token_hash: hash,
                    expires_at_ms,
                    reply,
                })
            })
            .await?;
        // Unless it ended while the write was under way.
        let mut sessions = self.sessions.write().expect("lock");
        match sessions.get_mut(&hash) {
            Some(s) => {
                s.expires_at_ms = s.expires_at_ms.max(expires_at_ms);
                Ok((s.identity, hash, s.expires_at_ms))
            }
            None => Err(AuthError::Unauthorized),
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
            .request(|reply| WriteOp::Account(AccountWrite::Logout { token_hash, reply }))
            .await?;
        self.sessions.write().expect("lock").remove(&token_hash);
        Ok(())
    }

    /// Ends every session of every device of `by`'s account (its own too);
    /// returns how many ended.
    pub async fn logout_everywhere(&self, by: IdentityKey) -> Result<usize, AuthError> {
        let account = self.account_of(&by).ok_or(AuthError::Unauthorized)?;
        let ended = self
            .writer
            .request(|reply| {
                WriteOp::Account(AccountWrite::LogoutEverywhere {
                    username: account.username.clone(),
                    reply,
                })
            })
            .await?;
        self.forget_sessions(&ended);
        Ok(ended.len())
    }

    /// A new password for `by`'s account, first step: an OPAQUE registration
    /// under the account's own name (stateless at the node, like
    /// `register_start`).
    pub fn change_password_start(
        &self,
        by: IdentityKey,
        request: &[u8],
    ) -> Result<Vec<u8>, AuthError> {
        let account = self.account_of(&by).ok_or(AuthError::Unauthorized)?;
        opaque::server_register_start(&self.setup, request, &account.username).map_err(opaque_err)
    }

    /// A new password, last step: replaces the account's record and ends every
    /// other session of the account (`keep` goes on); returns how many ended.
    pub async fn change_password_finish(
        &self,
        by: IdentityKey,
        upload: &[u8],
        keep: Option<[u8; 32]>,
    ) -> Result<usize, AuthError> {
        let account = self.account_of(&by).ok_or(AuthError::Unauthorized)?;
        let record = opaque::server_register_finish(upload).map_err(opaque_err)?;
        let ended = self
            .writer
            .request(|reply| {
                WriteOp::Account(AccountWrite::ChangePassword {
                    username: account.username.clone(),
                    record,
                    keep,
                    reply,
                })
            })
            .await??;
        self.forget_sessions(&ended);
        Ok(ended.len())
    }

    // ---- the device directory ---------------------------------------------------

    /// Whether anything may be delivered to `inbox`: once accounts exist, only
    /// registered devices have inboxes, so strangers cannot create them.
    /// Whether any account exists (from then on only registered devices act).
    pub fn accounts_exist(&self) -> bool {
        self.accounts_exist.load(Ordering::Acquire)
    }

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

    /// Every device of `device`'s account, sorted (`device` alone without one).
    pub fn devices_of_account(&self, device: &IdentityKey) -> Vec<IdentityKey> {
        let username = self.devices.read().expect("lock").get(device).cloned();
        match username {
            Some(u) => self.devices_of(&u),
            None => vec![*device],
        }
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
        let dropped_sessions = self
            .writer
            .request(|reply| {
                WriteOp::Account(AccountWrite::RemoveDevice {
                    username: account.username.clone(),
                    device,
                    reply,
                })
            })
            .await?;
        self.devices.write().expect("lock").remove(&device);
        self.forget_sessions(&dropped_sessions);
        Ok(())
    }

    /// Drops sessions the store has just ended from the cache.
    fn forget_sessions(&self, ended: &[[u8; 32]]) {
        let mut sessions = self.sessions.write().expect("lock");
        for k in ended {
            sessions.remove(k);
        }
    }

    /// Every account with its devices, by name (the operator's view).
    pub async fn accounts(&self) -> Result<Vec<crate::store::admin::Account>, AuthError> {
        Ok(self.store.accounts().await?)
    }

    /// Deletes the account `username` (the operator's call): its login, its
    /// devices with their sessions, KeyPackages and keys. Returns its devices,
    /// whose inboxes the caller then purges; `NotFound` without such an
    /// account.
    pub async fn delete_account(&self, username: &str) -> Result<Vec<IdentityKey>, AuthError> {
        let deleted = self
            .writer
            .request(|reply| {
                WriteOp::Account(AccountWrite::DeleteAccount {
                    username: username.to_string(),
                    reply,
                })
            })
            .await?;
        let Some((account, dropped_sessions)) = deleted else {
            return Err(AuthError::NotFound("no such account"));
        };
        let mut devices = self.devices.write().expect("lock");
        for d in &account.devices {
            devices.remove(d);
        }
        drop(devices);
        let mut sessions = self.sessions.write().expect("lock");
        for k in dropped_sessions {
            sessions.remove(&k);
        }
        Ok(account.devices)
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
        self.writer
            .request(|reply| WriteOp::Account(AccountWrite::Upload { upload, reply }))
            .await??;
        Ok(())
    }

    /// Claims one KeyPackage per device of `devices` (a target resolved by
    /// [`AuthService::target_devices`]): a one-time package is deleted in the
    /// transaction that returns it; when none is left the last-resort package
    /// is served (and counted).
    pub async fn claim_key_packages(
        &self,
        devices: Vec<IdentityKey>,
        suite: Suite,
    ) -> Result<Vec<ClaimedPackage>, AuthError> {
        if devices.is_empty() {
            return Err(AuthError::NotFound(NO_SUCH_USER));
        }
        let claimed = self
            .writer
            .request(|reply| {
                WriteOp::Account(AccountWrite::Claim {
                    suite,
                    devices,
                    reply,
                })
            })
            .await?;
        if claimed.is_empty() {
            return Err(AuthError::NotFound(NO_KEY_PACKAGES));
        }
        Ok(claimed)
    }

    /// What a claim against `devices` would serve, consuming nothing: per
    /// device with published keys, its hybrid key and last-resort package of
    /// `suite` (reusable by design, so serving it here is not counted as
    /// served).
    pub async fn peek_key_packages(
        &self,
        devices: Vec<IdentityKey>,
        suite: Suite,
    ) -> Result<Vec<ClaimedPackage>, AuthError> {
        if devices.is_empty() {
            return Err(AuthError::NotFound(NO_SUCH_USER));
        }
        let out = self.store.last_resort_packages(suite, devices).await?;
        if out.is_empty() {
            return Err(AuthError::NotFound(NO_KEY_PACKAGES));
        }
        Ok(out)
    }

    /// The registered devices a claim against `target` is for (none for an
    /// unknown name or device).
    pub fn target_devices(&self, target: &ClaimTarget) -> Vec<IdentityKey> {
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
    pub async fn key_package_status(&self, device: &IdentityKey) -> Result<(u64, u64), AuthError> {
        Ok(self.store.key_package_status(*device).await?)
    }

    // ---- sealed sender ----------------------------------------------------------------

    /// Sets the hash of the access key senders must present to reach `device`
    /// without a session. Only a device of an account has one (a bare key on a
    /// node without accounts has nobody to give the key to).
    pub async fn set_access_key(
        &self,
        device: IdentityKey,
        access_key_hash: [u8; 32],
    ) -> Result<(), AuthError> {
        if self.account_of(&device).is_none() {
            return Err(AuthError::BadRequest(
                "only a registered device can set an access key".into(),
            ));
        }
        self.writer
            .request(|reply| {
                WriteOp::Account(AccountWrite::SetAccessKey {
                    device,
                    hash: access_key_hash,
                    reply,
                })
            })
            .await?;
        Ok(())
    }

    /// Whether `access_key` opens `device`'s inbox to sealed senders (constant
    /// time in the key; an inbox without an access key opens to nobody).
    pub async fn check_access_key(
        &self,
        device: &IdentityKey,
        access_key: &[u8],
    ) -> Result<bool, AuthError> {
        let stored = self.store.access_key(*device).await?;
        Ok(stored.is_some_and(|hash| TokenHash::from_digest(hash).matches(access_key)))
    }
}
