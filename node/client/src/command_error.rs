//! What a client command reports when it fails: one printable line, a stable
//! kind for scripts (`--json`) and an exit status (README, "Exit status").

use std::path::PathBuf;

use crate::ClientError;

/// Errors of a command, each printable as one line.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("invalid server address {0:?}: expected HOST:PORT")]
    /// `--server` is not `HOST:PORT` (what was given).
    BadServer(String),
    #[error(
        "cannot use the server certificate {path}: {reason} (pass --ca-cert or QPC_CA_CERT, or --ca-bundle)"
    )]
    /// The pinned certificate could not be read.
    CaCert {
        /// The file or folder concerned.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    #[error(transparent)]
    /// The node refused, or could not be reached.
    Client(#[from] ClientError),
    #[error(transparent)]
    /// The profile could not be opened or written.
    State(#[from] crate::state::StateError),
    #[error("cannot read the password: {0}")]
    /// No password could be read (why).
    Password(String),
    #[error("not logged in on this profile: run `quicnprotochat login --username NAME` first")]
    /// The profile holds no login.
    NotLoggedIn,
    #[error("the session of {username} has ended: log in again")]
    /// The remembered session was revoked or expired.
    SessionEnded {
        /// The account.
        username: String,
    },
    #[error("{0}")]
    /// Anything else a command refuses (what).
    Invalid(String),
    #[error(
        "{0}: not sent yet; the message waits in this profile's outbox and goes out with the next send (or at once under a running daemon)"
    )]
    /// The node could not be reached (why); the message stays queued.
    Queued(String),
    #[error("{message}")]
    /// The command failed in the profile's daemon, which said why.
    Daemon {
        /// Its message, as the command would print it.
        message: String,
        /// Its kind (one of [`CommandError::kind`]'s).
        kind: &'static str,
        /// The node's refusal code, when the node refused.
        refusal: Option<String>,
    },
}

impl From<crate::key_packages::KeyPackageError> for CommandError {
    fn from(e: crate::key_packages::KeyPackageError) -> Self {
        match e {
            crate::key_packages::KeyPackageError::State(s) => CommandError::State(s),
            other => CommandError::Invalid(other.to_string()),
        }
    }
}

/// Every kind [`CommandError::kind`] gives.
pub const KINDS: [&str; 7] = [
    "refused",
    "unreachable",
    "not_logged_in",
    "certificate",
    "profile",
    "password",
    "invalid",
];

/// Exit status of a client command that failed: the node refused.
pub const EXIT_REFUSED: u8 = 3;
/// Exit status: the node could not be reached, or the connection failed.
pub const EXIT_UNREACHABLE: u8 = 4;
/// Exit status: the profile is not logged in, or its session ended.
pub const EXIT_NOT_LOGGED_IN: u8 = 5;
/// Exit status of every other failure (bad input, the profile, the terminal).
/// clap's usage errors exit with 2.
pub const EXIT_FAILED: u8 = 1;

impl CommandError {
    /// What kind of failure, stable for scripts: `refused`, `unreachable`,
    /// `not_logged_in`, `certificate`, `profile`, `password`, `invalid`.
    pub fn kind(&self) -> &'static str {
        use ClientError as C;
        match self {
            CommandError::Client(C::Refused(_)) => "refused",
            CommandError::Client(C::Unreachable { .. } | C::Transport(_) | C::Protocol(_))
            | CommandError::Queued(_) => "unreachable",
            CommandError::Client(C::Session(_))
            | CommandError::NotLoggedIn
            | CommandError::SessionEnded { .. } => "not_logged_in",
            CommandError::Client(C::Tls(_) | C::CertificateMismatch { .. })
            | CommandError::CaCert { .. } => "certificate",
            CommandError::State(_) => "profile",
            CommandError::Password(_) => "password",
            CommandError::BadServer(_) | CommandError::Invalid(_) => "invalid",
            CommandError::Daemon { kind, .. } => kind,
        }
    }

    /// The node's refusal code (e.g. `UNAUTHORIZED`), when the node refused.
    pub fn refusal_code(&self) -> Option<String> {
        match self {
            CommandError::Client(c) => c.code().map(|c| c.to_string()),
            CommandError::Daemon { refusal, .. } => refusal.clone(),
            _ => None,
        }
    }

    /// The process's exit status for this failure (README, "Exit status").
    pub fn exit_code(&self) -> u8 {
        match self.kind() {
            "refused" => EXIT_REFUSED,
            "unreachable" => EXIT_UNREACHABLE,
            "not_logged_in" => EXIT_NOT_LOGGED_IN,
            _ => EXIT_FAILED,
        }
    }
}
