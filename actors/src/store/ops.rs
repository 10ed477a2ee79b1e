//! The writes of the Authentication Service and the group actors, as typed
//! requests to the store writer. Each backend's writer applies them in arrival
//! order inside its batch transaction and answers after the commit, so what a
//! caller is told is durable (or refused with nothing written). Reads that must
//! see every earlier write (a group's fence as a new actor starts) go the same
//! way.

use quicnprotochat_crypto::mls::Suite;
use quicnprotochat_wire::IdentityKey;

use super::admin::DeletedAccount;
use super::writer::Reply;
use crate::auth::{CheckedUpload, ClaimedPackage};
use crate::error::DeliveryError;

/// Why an account write was refused. Nothing of it was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountRefusal {
    #[error("username is taken")]
    /// Another account has this username.
    UsernameTaken,
    #[error("this identity key already belongs to an account")]
    /// The device already belongs to an account.
    DeviceTaken,
    #[error(
        "this device was removed from its account: its key can never register or log in \
         again (start a new profile)"
    )]
    /// The device's key was retired (the device removed, or its account deleted).
    DeviceRetired,
    #[error("an account may have at most {max} devices: remove one first")]
    /// The account has as many devices as the node allows.
    TooManyDevices {
        /// The quota.
        max: u32,
    },
    #[error("the device belongs to another account")]
    /// A login names a device of another account.
    OtherAccount,
    #[error("the password changed while logging in")]
    /// The login proved a password record that has been replaced (or the
    /// account deleted) since it started.
    PasswordChanged,
    #[error("{0}")]
    /// The request does not fit what is stored (what is wrong).
    BadRequest(String),
}

/// What a login carries of the password record it proved, and what a
/// store compares it with in the login's write (a record replaced meanwhile
/// refuses the login): SHA-256 of the record.
pub fn password_record_fingerprint(record: &[u8]) -> [u8; 32] {
    quicnprotochat_crypto::token::TokenHash::of(record).digest()
}

impl AccountRefusal {
    /// The device quota, the same in every store: an account that has `has`
    /// devices may add one more while it is under `max`.
    pub fn check_another_device_fits(has: u64, max: u32) -> Result<(), AccountRefusal> {
        match has < u64::from(max) {
            true => Ok(()),
            false => Err(AccountRefusal::TooManyDevices { max }),
        }
    }
}

/// A write of the Authentication Service.
pub enum AccountWrite {
    /// Stores `value` as the secret `name` unless one is stored; answers the one
    /// stored (so nodes starting together on one database agree).
    InitSecret {
        /// Which secret.
        name: &'static str,
        /// Its value, if none is stored yet.
        value: Vec<u8>,
        /// Answered with the stored value.
        reply: Reply<Vec<u8>>,
    },
    /// A new account with its first device.
    Register {
        /// The account's name.
        username: String,
        /// Its OPAQUE password record.
        record: Vec<u8>,
        /// Its first device.
        device: IdentityKey,
        /// Now (ms since the Unix epoch).
        now_ms: u64,
        /// Answered once durable.
        reply: Reply<Result<(), AccountRefusal>>,
    },
    /// A session for `device` of `username` (added to the account if new).
    Login {
        /// The account.
        username: String,
        /// The device logging in.
        device: IdentityKey,
        /// SHA-256 of the session token.
        token_hash: [u8; 32],
        /// When the session ends (ms since the Unix epoch).
        expires_at_ms: u64,
        /// Now (ms since the Unix epoch).
        now_ms: u64,
        /// Devices the account may have at most (a new device past it is
        /// refused).
        max_devices: u32,
        /// SHA-256 of the password record the login proved: a record replaced
        /// meanwhile (a password change) refuses the login.
        record_hash: [u8; 32],
        /// Answered once durable.
        reply: Reply<Result<(), AccountRefusal>>,
    },
    /// Ends a session.
    Logout {
        /// SHA-256 of its token.
        token_hash: [u8; 32],
        /// Answered once durable.
        reply: Reply<()>,
    },
    /// Moves the end of a live session (it was used); nothing if the session
    /// ended meanwhile (a logout is never undone).
    ExtendSession {
        /// SHA-256 of its token.
        token_hash: [u8; 32],
        /// Its new end (ms since the Unix epoch).
        expires_at_ms: u64,
        /// Answered once durable.
        reply: Reply<()>,
    },
    /// Ends every session of every device of `username`; answers the hashes
    /// of the sessions it ended.
    LogoutEverywhere {
        /// The account.
        username: String,
        /// Answered once durable.
        reply: Reply<Vec<[u8; 32]>>,
    },
    /// Replaces the OPAQUE record of `username` and ends every session of its
    /// devices but `keep`; answers the hashes of the sessions it ended.
    ChangePassword {
        /// The account.
        username: String,
        /// The new OPAQUE password record.
        record: Vec<u8>,
        /// SHA-256 of the session that asked, which goes on.
        keep: Option<[u8; 32]>,
        /// Answered once durable; refused if the account is gone.
        reply: Reply<Result<Vec<[u8; 32]>, AccountRefusal>>,
    },
    /// Removes a device of `username` with its sessions, KeyPackages and keys;
    /// answers the hashes of the sessions it ended.
    RemoveDevice {
        /// The account.
        username: String,
        /// The device.
        device: IdentityKey,
        /// Answered once durable.
        reply: Reply<Vec<[u8; 32]>>,
    },
    /// Deletes an account and its devices' rows (not their inboxes).
    DeleteAccount {
        /// The account.
        username: String,
        /// Answered with what was deleted (`None`: no such account).
        reply: Reply<Option<DeletedAccount>>,
    },
    /// Stores a checked KeyPackage upload.
    Upload {
        /// What [`crate::auth::check_upload`] accepted.
        upload: CheckedUpload,
        /// Answered once durable, or refused (limits, missing first keys).
        reply: Reply<Result<(), AccountRefusal>>,
    },
    /// Claims one KeyPackage of `suite` per device: a one-time package is
    /// deleted in the transaction that returns it.
    Claim {
        /// The suite.
        suite: Suite,
        /// The devices.
        devices: Vec<IdentityKey>,
        /// Answered with what was claimed, once durable.
        reply: Reply<Vec<ClaimedPackage>>,
    },
    /// Sets the hash of a device's sealed-sender access key.
    SetAccessKey {
        /// The device.
        device: IdentityKey,
        /// SHA-256 of the access key.
        hash: [u8; 32],
        /// Answered once durable.
        reply: Reply<()>,
    },
}

/// Whether a member device (its identity key) still exists.
pub type MemberCheck = Box<dyn Fn(&[u8; 32]) -> bool + Send>;

/// What the group actors ask of the store in write order.
pub enum GroupWrite {
    /// A group's fence: the epoch the next commit must be made at (`None`: no
    /// commit yet) and who may make it.
    Fence {
        /// The group.
        group_id: Vec<u8>,
        /// Answered with the fence.
        reply: Reply<(Option<u64>, Vec<[u8; 32]>)>,
    },
    /// How many live fences a device created (its group quota).
    GroupsCreated {
        /// The device.
        device: [u8; 32],
        /// Answered with the count.
        reply: Reply<u64>,
    },
    /// The bytes of the GroupInfos a device published that are still kept, and
    /// of those the bytes of one group's (its quota of stored GroupInfo bytes).
    GroupInfoBytes {
        /// The device.
        device: [u8; 32],
        /// The group it is about to publish in.
        group_id: Vec<u8>,
        /// Answered with (the device's total, this group's share of it).
        reply: Reply<(u64, u64)>,
    },
    /// Deletes the fences of groups none of whose members `is_member_alive`.
    CollectDead {
        /// Whether a member device still exists.
        is_member_alive: MemberCheck,
        /// Answered with how many were deleted.
        reply: Reply<usize>,
    },
}

/// Answers `reply` with `value` once the commit is known to have succeeded;
/// with the commit's failure otherwise.
pub(super) fn after_commit<T: Send + 'static>(
    reply: Reply<T>,
    value: Result<T, DeliveryError>,
) -> super::writer::AfterCommit {
    Box::new(move |commit: Result<(), DeliveryError>| {
        let _ = reply.send(commit.and(value));
    })
}

impl AccountWrite {
    /// Answers the request with `err` without applying it.
    pub(super) fn refuse(self, err: DeliveryError) {
        match self {
            AccountWrite::InitSecret { reply, .. } => drop(reply.send(Err(err))),
            AccountWrite::Register { reply, .. }
            | AccountWrite::Login { reply, .. }
            | AccountWrite::Upload { reply, .. } => drop(reply.send(Err(err))),
            AccountWrite::Logout { reply, .. }
            | AccountWrite::ExtendSession { reply, .. }
            | AccountWrite::SetAccessKey { reply, .. } => drop(reply.send(Err(err))),
            AccountWrite::RemoveDevice { reply, .. }
            | AccountWrite::LogoutEverywhere { reply, .. } => drop(reply.send(Err(err))),
            AccountWrite::ChangePassword { reply, .. } => drop(reply.send(Err(err))),
            AccountWrite::DeleteAccount { reply, .. } => drop(reply.send(Err(err))),
            AccountWrite::Claim { reply, .. } => drop(reply.send(Err(err))),
        }
    }
}

impl GroupWrite {
    /// Answers the request with `err` without applying it.
    pub(super) fn refuse(self, err: DeliveryError) {
        match self {
            GroupWrite::Fence { reply, .. } => drop(reply.send(Err(err))),
            GroupWrite::GroupsCreated { reply, .. } => drop(reply.send(Err(err))),
            GroupWrite::GroupInfoBytes { reply, .. } => drop(reply.send(Err(err))),
            GroupWrite::CollectDead { reply, .. } => drop(reply.send(Err(err))),
        }
    }
}

/// The number a suite's KeyPackages are stored under in SQL.
pub fn suite_code(suite: Suite) -> i16 {
    match suite {
        Suite::Classic => 0,
        Suite::PostQuantum => 1,
    }
}

/// The rules of an upload against what the device has stored: at most
/// [`crate::auth::MAX_STORED_KEY_PACKAGES`] one-time packages, and a
/// last-resort package and hybrid key from the first upload on (`has_*`: after
/// this upload). The same for every backend.
pub fn check_upload_fits(
    stored: u64,
    uploading: usize,
    has_last_resort: bool,
    has_hybrid: bool,
) -> Result<(), AccountRefusal> {
    use crate::auth::MAX_STORED_KEY_PACKAGES;
    if stored + uploading as u64 > MAX_STORED_KEY_PACKAGES {
        return Err(AccountRefusal::BadRequest(format!(
            "at most {MAX_STORED_KEY_PACKAGES} KeyPackages may be stored per device ({stored} are)"
        )));
    }
    if !has_last_resort {
        return Err(AccountRefusal::BadRequest(
            "the first upload must include a last-resort KeyPackage".into(),
        ));
    }
    if !has_hybrid {
        return Err(AccountRefusal::BadRequest(
            "the first upload must include the hybrid public key".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::AccountRefusal;

    #[test]
    fn an_account_under_its_device_quota_may_add_one_and_at_it_may_not() {
        assert_eq!(AccountRefusal::check_another_device_fits(0, 1), Ok(()));
        assert_eq!(AccountRefusal::check_another_device_fits(15, 16), Ok(()));
        assert_eq!(
            AccountRefusal::check_another_device_fits(16, 16),
            Err(AccountRefusal::TooManyDevices { max: 16 })
        );
        assert!(AccountRefusal::check_another_device_fits(0, 0).is_err());
    }
}
