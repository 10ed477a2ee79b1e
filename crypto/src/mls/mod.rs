//! MLS group membership (RFC 9420) over OpenMLS, generic over OpenMLS'
//! `StorageProvider`: the client keeps its groups in redb, tests in memory.
//!
//! The wrapper owns the decisions the rest of the project must not make twice:
//! which ciphersuites, how an identity becomes a credential, where the group's name
//! lives, how many past epochs stay readable, and how incoming messages are sorted
//! into events ("applied", "not yet", "too old").

mod group;
mod header;
mod member;
mod provider;
#[cfg(feature = "test-vectors")]
mod vectors;

pub use group::{CommitOutput, Group, GroupEvent};
pub use header::{CommitHeader, GroupInfoHeader, commit_header, group_info_header};
pub use member::{GroupMember, ValidatedKeyPackage, key_package_message, validate_key_package};
pub use provider::MlsProvider;
#[cfg(feature = "test-vectors")]
pub use vectors::VectorJoiner;

use openmls::prelude::Ciphersuite;

/// Group context extension type (private range) carrying the group's display name.
pub const GROUP_NAME_EXTENSION: u16 = 0xff00;

/// How many past epochs' application messages stay decryptable, so messages sent
/// just before a commit still open after it.
pub const MAX_PAST_EPOCHS: usize = 3;

/// The ciphersuites a group may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`: the mandatory suite.
    Classic,
    /// `MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519`: X-Wing KEM, so the group's
    /// key schedule is post-quantum.
    PostQuantum,
}

impl Suite {
    /// Every suite this build speaks.
    pub const ALL: [Suite; 2] = [Suite::Classic, Suite::PostQuantum];

    /// The MLS ciphersuite behind the name.
    pub fn ciphersuite(self) -> Ciphersuite {
        match self {
            Suite::Classic => Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
            Suite::PostQuantum => Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519,
        }
    }

    /// The suite of an MLS ciphersuite, if this build speaks it.
    pub fn from_ciphersuite(cs: Ciphersuite) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.ciphersuite() == cs)
    }

    /// The ciphersuite's code on the wire (RFC 9420 registry value).
    pub fn code(self) -> u16 {
        self.ciphersuite().into()
    }

    /// The suite with this wire code; 0 names the mandatory suite.
    pub fn from_code(code: u16) -> Option<Suite> {
        if code == 0 {
            return Some(Suite::Classic);
        }
        Suite::ALL.into_iter().find(|s| s.code() == code)
    }
}

/// Why an MLS operation failed. Each variant says whose doing it is.
#[derive(Debug, thiserror::Error)]
pub enum MlsError {
    /// The bytes are not a well-formed MLS message of the expected kind.
    #[error("malformed MLS message: {0}")]
    Malformed(String),
    /// The message is for another group.
    #[error("message belongs to another group")]
    WrongGroup,
    /// A KeyPackage failed validation (signature, suite, lifetime, ...).
    #[error("invalid KeyPackage: {0}")]
    InvalidKeyPackage(String),
    /// The message failed MLS validation or decryption.
    #[error("message rejected: {0}")]
    Rejected(String),
    /// The named member is not in the group.
    #[error("no such member in the group")]
    NoSuchMember,
    /// This member is no longer part of the group.
    #[error("not a member of this group any more")]
    NotActive,
    /// A commit of ours is waiting to be confirmed or discarded.
    #[error("a commit is pending; confirm or discard it first")]
    CommitPending,
    /// A proposal someone made (a leave) must be committed before this member
    /// may send application messages (RFC 9420 §12.2: no application data over
    /// pending proposals).
    #[error(
        "a requested change (someone's leave) must be committed first; the next pull commits it"
    )]
    ProposalsPending,
    /// The storage provider failed.
    #[error("MLS storage: {0}")]
    Storage(String),
    /// A bug in us or in OpenMLS.
    #[error("MLS library error: {0}")]
    Library(String),
}

fn library(e: impl std::fmt::Display) -> MlsError {
    MlsError::Library(e.to_string())
}
