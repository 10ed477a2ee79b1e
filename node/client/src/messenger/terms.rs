//! The terms the messenger and the client's actors share: limits, what the
//! messenger answers (reports of sends, the typed errors of group operations,
//! lines to show, what a group looks like) and the test crash points. The actors
//! import them from here, never from the messenger that drives them.

use quicnprotochat_crypto::mls::{MlsError, Suite};

use crate::ClientError;
use crate::actors::session;
use crate::state::StateError;

/// How often an outgoing commit is rebuilt after losing the epoch race.
pub const MAX_COMMIT_ATTEMPTS: u32 = 8;
/// Pulls in a row that may fail to commit a group's waiting proposals (someone's
/// leave) before they are dropped with a line, so a refusal never blocks a
/// profile for good.
pub const MAX_PROPOSAL_ATTEMPTS: u32 = 3;
/// Most messages held for a later epoch; past that they are reported and dropped.
pub const MAX_HELD: usize = 1000;
/// Most bytes of deliveries one commit call carries: well inside the node's
/// Cap'n Proto read limit (twice the larger of its payload limit and 4 MiB).
pub const MAX_COMMIT_BYTES: usize = 6 * 1024 * 1024;

/// Group names: 1 to 64 characters, none of which breaks a `[GROUP]` line.
pub(crate) fn validate_group_name(name: &str) -> Result<(), MessengerError> {
    if name.is_empty() || name.len() > 64 || name.contains(['[', ']', '\n']) {
        return Err(MessengerError::Mls(MlsError::Rejected(
            "group names are 1 to 64 characters without brackets".into(),
        )));
    }
    Ok(())
}

/// Where a test makes the next commit stop, as if the process had died there.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The pending commit is saved, nothing was sent.
    BeforeSending,
    /// The node accepted the commit; we never heard.
    AfterAcceptance,
}

/// Whether `e` means the connection to the node is gone (and a new one may
/// succeed), rather than a refusal or a local failure.
pub fn is_connection_loss(e: &MessengerError) -> bool {
    matches!(e, MessengerError::Client(c) if session::is_connection_loss(c))
}

/// What became of one message sent to a group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendReport {
    /// The seqs it got in the inboxes that took it.
    pub seqs: Vec<u64>,
    /// Member devices (by name) whose inbox did not take it, and why (a full
    /// inbox: its owner will see that it missed a message).
    pub undelivered: Vec<(String, quicnprotochat_wire::WireError)>,
    /// Member devices the node says no longer exist (removed from their
    /// account): the sender's client removes them from the group.
    pub gone: Vec<[u8; 32]>,
    /// Bytes this device uploaded for it: the shared body, and per named
    /// recipient its identity key and part (none in a post-quantum-suite group).
    pub upload_bytes: usize,
}

impl SendReport {
    /// Whether there were recipients and none took it (so it reached nobody).
    pub fn reached_nobody(&self) -> bool {
        self.seqs.is_empty() && !self.undelivered.is_empty()
    }

    /// One line for people: how many got it, and who did not.
    pub fn summary(&self, group: &str) -> String {
        let mut s = format!("sent to {} member device(s) of {group}", self.seqs.len());
        if !self.undelivered.is_empty() {
            let who: Vec<String> = self
                .undelivered
                .iter()
                .map(|(name, why)| format!("{name} ({})", why.code))
                .collect();
            s.push_str(&format!("; not delivered to {}", who.join(", ")));
        }
        s
    }
}

/// Why a group operation failed, in words the user can act on.
#[derive(Debug, thiserror::Error)]
pub enum MessengerError {
    #[error("no group named {0:?} on this profile (see `groups`)")]
    /// No group of this name in the profile.
    UnknownGroup(String),
    #[error("a group named {0:?} exists already on this profile")]
    /// A group of this name exists already.
    GroupExists(String),
    #[error("unknown user {0:?}")]
    /// The node knows no such user.
    UnknownUser(String),
    #[error("{user} is not a member of {group}")]
    /// The user is not in the group.
    NotAMember {
        /// The user.
        user: String,
        /// The group.
        group: String,
    },
    #[error("{user} is already a member of {group}")]
    /// The user is in the group already.
    AlreadyMember {
        /// The user.
        user: String,
        /// The group.
        group: String,
    },
    #[error(
        "unknown user {user:?}, or no KeyPackage published for this group's ciphersuite ({suite:?})"
    )]
    /// The user published no KeyPackage for the group's suite.
    WrongSuite {
        /// The user.
        user: String,
        /// The suite the group uses.
        suite: Suite,
    },
    #[error("{user}'s published keys do not verify: {reason}")]
    /// The user's published keys do not verify.
    BadKeys {
        /// The user.
        user: String,
        /// Why.
        reason: String,
    },
    #[error("no hybrid key known for member {0}: cannot seal to it")]
    /// A member with no known hybrid key (cannot seal to it).
    NoKeyFor(String),
    #[error("the group changed {0} times while committing; try again")]
    /// Other commits kept winning.
    CommitRetriesExhausted(u32),
    #[error(
        "the outbox holds {0} messages waiting for the node: nothing more is queued until some go out"
    )]
    /// The outbox is full (how many it holds).
    OutboxFull(u64),
    #[error("the leave did not reach the group ({0}); you are still a member, nothing changed")]
    /// The leave proposal reached no member (why); it was taken back.
    LeaveNotSent(String),
    #[error("the commit's deliveries ({bytes} bytes) exceed what one call may carry")]
    /// A commit too large for one call.
    CommitTooLarge {
        /// Their size in bytes.
        bytes: usize,
    },
    #[error(transparent)]
    /// The text is not a message that can be sent (nothing was sent).
    Message(#[from] crate::core::MessageRefusal),
    #[error(transparent)]
    /// The node refused, or could not be reached.
    Client(#[from] ClientError),
    #[error(transparent)]
    /// The profile could not be read or written.
    State(#[from] StateError),
    #[error("MLS: {0}")]
    /// MLS refused (why).
    Mls(#[from] MlsError),
    #[error("message encoding: {0}")]
    /// A payload that is not a client message.
    Encoding(#[from] crate::message::MessageError),
    #[error(transparent)]
    /// This device's KeyPackages could not be made.
    KeyPackages(#[from] crate::key_packages::KeyPackageError),
    #[error("the client's {0} stopped")]
    /// A client actor stopped (which).
    ActorStopped(&'static str),
    #[error("a client actor failed: {0}")]
    /// A client actor failed (why).
    ActorFailed(String),
}

/// One thing to show the user, produced while applying the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The inbox seq of the envelope that produced it.
    pub seq: u64,
    /// The group it belongs to (`None` outside any group).
    pub group: Option<String>,
    /// `None` for notices about the group rather than messages in it.
    pub sender: Option<String>,
    /// What to show.
    pub text: String,
    /// The group's epoch after the envelope was applied.
    pub epoch: Option<u64>,
}

impl Line {
    /// `[GROUP] SENDER: TEXT`, or `[GROUP] * NOTICE`: one line whatever the
    /// parts hold (control characters in them are shown escaped).
    pub fn display(&self) -> String {
        crate::display::group_line(self.group.as_deref(), self.sender.as_deref(), &self.text)
    }
}

/// What a group looks like from this profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// The local name.
    pub name: String,
    /// The MLS group id.
    pub group_id: Vec<u8>,
    /// The epoch this profile is in.
    pub epoch: u64,
    /// The members' names, as claimed.
    pub members: Vec<String>,
    /// The group's suite.
    pub suite: Option<Suite>,
    /// Equal for every member in the same epoch: no fork.
    pub epoch_authenticator: Vec<u8>,
}
