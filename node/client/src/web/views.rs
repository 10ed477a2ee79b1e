//! What the web API answers, as JSON: the profile, its groups and messages, and
//! typed errors. Field names are part of the API and stay stable.

use serde::Serialize;

use crate::commands::CommandError;
use crate::messenger::MessengerError;

/// The profile as the page first sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatusView {
    /// Whether the profile holds a live login (the messenger runs).
    pub logged_in: bool,
    /// The account, once logged in.
    pub username: Option<String>,
    /// This device's identity key, hex.
    pub identity: String,
    /// The node, `HOST:PORT`.
    pub server: String,
    /// The connection to it: `signed_out`, `connecting`, `connected`,
    /// `reconnecting`.
    pub connection: &'static str,
    /// While reconnecting: milliseconds until the next attempt.
    pub next_try_ms: Option<u64>,
}

pub use crate::output::{GroupView, MessageView};

/// What a send did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SentView {
    /// How many member devices' inboxes took it.
    pub delivered: usize,
    /// Member devices whose inbox did not take it, with why.
    pub undelivered: Vec<String>,
    /// The node is away: it waits in the outbox and goes out when it is back.
    pub queued: bool,
}

/// A refusal, as the page and scripts see it: an HTTP status, a stable code and
/// one line for a person.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WebError {
    /// The HTTP status.
    #[serde(skip)]
    pub status: u16,
    /// Stable and machine-readable: `invalid`, `not_logged_in`, `unknown_group`,
    /// `refused`, `unreachable`, `unauthorized`, `bad_host`, `too_large`, `profile`,
    /// `stopped`.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl WebError {
    /// A refusal of what the caller asked (400).
    pub fn invalid(message: impl Into<String>) -> WebError {
        WebError {
            status: 400,
            code: "invalid",
            message: message.into(),
        }
    }

    /// The UI's agent has stopped (the server is shutting down).
    pub fn stopped() -> WebError {
        WebError {
            status: 503,
            code: "stopped",
            message: "the web UI is shutting down".into(),
        }
    }

    /// No login on this profile yet.
    pub fn not_logged_in() -> WebError {
        WebError {
            status: 409,
            code: "not_logged_in",
            message: "not logged in: register or log in first".into(),
        }
    }
}

impl From<CommandError> for WebError {
    fn from(e: CommandError) -> Self {
        use crate::ClientError as C;
        let message = e.to_string();
        let (status, code) = match &e {
            CommandError::NotLoggedIn => return WebError::not_logged_in(),
            CommandError::Client(C::Refused(_)) => (422, "refused"),
            CommandError::Client(
                C::Unreachable { .. } | C::Transport(_) | C::CertificateMismatch { .. },
            ) => (503, "unreachable"),
            CommandError::State(_) => (500, "profile"),
            _ => (400, "invalid"),
        };
        WebError {
            status,
            code,
            message,
        }
    }
}

impl From<MessengerError> for WebError {
    fn from(e: MessengerError) -> Self {
        match e {
            MessengerError::UnknownGroup(name) => WebError {
                status: 404,
                code: "unknown_group",
                message: format!("no group named {name:?} on this profile"),
            },
            other => CommandError::from(other).into(),
        }
    }
}
