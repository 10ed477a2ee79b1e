//! Why the Authentication Service refuses, and how that reaches the wire.

use quicnprotochat_crypto::opaque::OpaqueError;
use quicnprotochat_wire::{ErrorCode, WireError};

use crate::error::DeliveryError;
use crate::store::StoreError;
use crate::store::ops::AccountRefusal;

/// Why the Authentication Service refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid username: {0}")]
    /// The username breaks the rules (and which one).
    BadUsername(&'static str),
    #[error("username is taken")]
    /// Another account has this username.
    UsernameTaken,
    /// One answer for wrong password, unknown user, wrong identity key, expired or
    /// revoked token: the caller learns nothing about which.
    #[error("wrong username, password, identity key or token")]
    Unauthorized,
    #[error("{0}")]
    /// A quota of the account is used up (what, and the quota).
    QuotaExceeded(String),
    #[error("{}", AccountRefusal::DeviceRetired)]
    /// The device's key was retired (removed, or its account deleted).
    DeviceRetired,
    #[error("{0}")]
    /// The named user or device does not exist.
    NotFound(&'static str),
    #[error("{0}")]
    /// The request is malformed or impossible (what is wrong).
    BadRequest(String),
    #[error("storage: {0}")]
    /// The store failed; nothing was changed.
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

impl From<AccountRefusal> for AuthError {
    fn from(r: AccountRefusal) -> Self {
        match r {
            AccountRefusal::UsernameTaken => AuthError::UsernameTaken,
            AccountRefusal::OtherAccount | AccountRefusal::PasswordChanged => {
                AuthError::Unauthorized
            }
            AccountRefusal::DeviceRetired => AuthError::DeviceRetired,
            AccountRefusal::TooManyDevices { .. } => AuthError::QuotaExceeded(r.to_string()),
            AccountRefusal::DeviceTaken | AccountRefusal::BadRequest(_) => {
                AuthError::BadRequest(r.to_string())
            }
        }
    }
}

impl From<AuthError> for WireError {
    fn from(e: AuthError) -> Self {
        let code = match &e {
            AuthError::BadUsername(_) | AuthError::BadRequest(_) => ErrorCode::BadRequest,
            AuthError::UsernameTaken => ErrorCode::AlreadyExists,
            AuthError::Unauthorized | AuthError::DeviceRetired => ErrorCode::Unauthorized,
            AuthError::NotFound(_) => ErrorCode::NotFound,
            AuthError::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            // Details are for the operator's log (connection.rs logs them).
            AuthError::Store(_) => {
                return WireError::new(ErrorCode::Unavailable, "storage unavailable");
            }
        };
        WireError::new(code, e.to_string())
    }
}

/// redb's error types convert into [`AuthError::Store`], so `?` works on them.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for AuthError {
            fn from(e: $t) -> Self {
                AuthError::from(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub(super) fn opaque_err(e: OpaqueError) -> AuthError {
    match e {
        OpaqueError::Malformed => AuthError::BadRequest("malformed OPAQUE message".into()),
        OpaqueError::Unauthorized => AuthError::Unauthorized,
        OpaqueError::Protocol(p) => AuthError::BadRequest(p),
    }
}
