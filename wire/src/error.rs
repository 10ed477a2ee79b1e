//! Stable error codes. Every refusal the node sends is a Cap'n Proto exception whose
//! text starts with one of these codes and a colon; peers map the text back to a
//! typed [`ErrorCode`], whatever prefixes the RPC layer puts in front of it.

use std::fmt;

/// Why the node refused a call. The code names whose fault it is and what the
/// caller can do about it; the text after it is for humans only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The recipient's queue holds as many messages as the node allows; retry later.
    QueueFull,
    /// The payload (or request) is larger than the node accepts; do not retry as is.
    TooLarge,
    /// Missing or wrong credentials, token or signature.
    Unauthorized,
    /// The caller sent too much too fast; retry after a while.
    RateLimited,
    /// A commit for this group and epoch was already accepted; catch up, then retry.
    StaleEpoch,
    /// The named thing does not exist.
    NotFound,
    /// The request is malformed or asks for something impossible.
    BadRequest,
    /// The node does not implement this call (yet).
    Unimplemented,
    /// The thing to create exists already (e.g. a taken username).
    AlreadyExists,
    /// The caller's account (or device) holds as much of something as the node
    /// allows (devices, groups, stored bytes); free some, do not just retry.
    QuotaExceeded,
    /// A transient node-side failure (an actor restarted, the store is unavailable);
    /// nothing the caller had acknowledged is lost; retrying may succeed.
    Unavailable,
    /// The node's disk is nearly full (below its high-water mark of free space):
    /// it takes nothing that only adds data for good (accounts, devices, groups,
    /// KeyPackage uploads) until its operator frees space. Messages still pass.
    StorageFull,
}

/// The `NOT_FOUND` detail of a KeyPackage claim for an unknown user or device.
/// Part of the contract: clients tell an unknown user from one who published
/// nothing for the asked suite by these details (an older client reads only the
/// code).
pub const NO_SUCH_USER: &str = "no such user or device";
/// The `NOT_FOUND` detail of a KeyPackage claim for a user with nothing
/// published for the asked suite.
pub const NO_KEY_PACKAGES: &str = "no KeyPackages published for this ciphersuite";

impl ErrorCode {
    /// Every code, for exhaustive tests and parsing.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::QueueFull,
        ErrorCode::TooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::RateLimited,
        ErrorCode::StaleEpoch,
        ErrorCode::NotFound,
        ErrorCode::BadRequest,
        ErrorCode::Unimplemented,
        ErrorCode::Unavailable,
        ErrorCode::AlreadyExists,
        ErrorCode::QuotaExceeded,
        ErrorCode::StorageFull,
    ];

    /// The stable text of the code, as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::QueueFull => "QUEUE_FULL",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::StaleEpoch => "STALE_EPOCH",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::Unimplemented => "UNIMPLEMENTED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::AlreadyExists => "ALREADY_EXISTS",
            ErrorCode::QuotaExceeded => "QUOTA_EXCEEDED",
            ErrorCode::StorageFull => "STORAGE_FULL",
        }
    }

    /// Parses the stable text of a code.
    pub fn from_code_str(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The code a peer that predates this one reads instead: sent after it
    /// (`STORAGE_FULL: UNAVAILABLE: …`), so an older client, which skips codes
    /// it does not know, still sees a typed refusal rather than a broken
    /// connection. `None` for the codes every version knows.
    pub const fn fallback(self) -> Option<ErrorCode> {
        match self {
            ErrorCode::StorageFull => Some(ErrorCode::Unavailable),
            _ => None,
        }
    }

    /// Whether the same call may succeed if simply tried again later.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::QueueFull
                | ErrorCode::RateLimited
                | ErrorCode::Unavailable
                | ErrorCode::StorageFull
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal with its code and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct WireError {
    /// Whose fault it is and what the caller can do (stable on the wire).
    pub code: ErrorCode,
    /// For humans only; never parsed.
    pub detail: String,
}

impl WireError {
    /// A refusal with `code` and a human-readable `detail`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        WireError {
            code,
            detail: detail.into(),
        }
    }

    /// Finds the code in an exception text. The RPC layer prefixes remote exception
    /// texts (e.g. `remote exception: Failed: QUEUE_FULL: inbox holds 1000`), so the
    /// first `: `-separated token that is a known code wins.
    pub fn parse(text: &str) -> Option<WireError> {
        let mut rest = text;
        loop {
            let (head, tail) = match rest.split_once(':') {
                Some((h, t)) => (h, Some(t)),
                None => (rest, None),
            };
            if let Some(code) = ErrorCode::from_code_str(head.trim()) {
                let mut detail = tail.map(|t| t.trim_start()).unwrap_or("");
                if let Some(older) = code.fallback() {
                    detail = detail
                        .strip_prefix(older.as_str())
                        .and_then(|d| d.strip_prefix(':'))
                        .map_or(detail, str::trim_start);
                }
                return Some(WireError::new(code, detail));
            }
            rest = tail?;
        }
    }
}

/// Name of the counter of refusals by code (`code` label). Counted here because
/// every typed refusal a node sends passes through this one conversion; clients
/// only convert the other way, and without an installed recorder it is a no-op.
pub const REFUSALS_TOTAL: &str = "qpc_refusals_total";

impl From<WireError> for capnp::Error {
    fn from(e: WireError) -> Self {
        metrics::counter!(REFUSALS_TOTAL, "code" => e.code.as_str()).increment(1);
        let text = match e.code.fallback() {
            Some(older) => format!("{}: {older}: {}", e.code, e.detail),
            None => format!("{}: {}", e.code, e.detail),
        };
        match e.code {
            ErrorCode::Unimplemented => capnp::Error::unimplemented(text),
            ErrorCode::RateLimited | ErrorCode::QueueFull => capnp::Error::overloaded(text),
            _ => capnp::Error::failed(text),
        }
    }
}

/// What a peer can make of a failed call: a typed refusal by the node, or a failure
/// of the transport / RPC layer itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The node refused the call with a typed error.
    #[error("refused: {0}")]
    Refused(WireError),
    /// The connection or the RPC layer failed; the call's fate is unknown.
    #[error("connection failed: {0}")]
    Transport(String),
}

impl CallError {
    /// The refusal code, if the node refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Refused(w) => Some(w.code),
            CallError::Transport(_) => None,
        }
    }
}

/// What capnp says when a peer's message exceeds its reader limits. The node cannot
/// put our code on that refusal (it happens below the RPC layer, and costs the
/// connection), so the text is recognised here, in one place.
const CAPNP_TOO_LARGE_MARKERS: [&str; 2] = ["which is too large", "Read limit exceeded"];

impl From<capnp::Error> for CallError {
    fn from(e: capnp::Error) -> Self {
        match (e.kind, WireError::parse(&e.extra)) {
            (capnp::ErrorKind::Disconnected, _) => CallError::Transport(e.to_string()),
            (_, Some(w)) => CallError::Refused(w),
            // A method the peer's schema does not have yet (an older node).
            (capnp::ErrorKind::Unimplemented, None) => {
                CallError::Refused(WireError::new(ErrorCode::Unimplemented, e.extra))
            }
            (_, None) if CAPNP_TOO_LARGE_MARKERS.iter().any(|m| e.extra.contains(m)) => {
                CallError::Refused(WireError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "the node's read limits refused the message and closed the connection ({})",
                        e.extra
                    ),
                ))
            }
            (_, None) => CallError::Transport(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_code_round_trips_through_its_text() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code_str(code.as_str()), Some(code));
        }
    }

    #[test]
    fn a_newer_code_travels_with_its_fallback_and_each_side_reads_its_own() {
        let sent: capnp::Error = WireError::new(ErrorCode::StorageFull, "disk low").into();
        assert_eq!(sent.extra, "STORAGE_FULL: UNAVAILABLE: disk low");
        assert_eq!(
            WireError::parse(&sent.extra),
            Some(WireError::new(ErrorCode::StorageFull, "disk low"))
        );
        // An older peer knows no STORAGE_FULL: it skips it and finds UNAVAILABLE.
        let older = sent.extra.split_once(": ").unwrap().1;
        assert_eq!(
            WireError::parse(older).map(|w| w.code),
            Some(ErrorCode::Unavailable)
        );
    }

    #[test]
    fn parse_finds_the_code_behind_rpc_prefixes() {
        let w = WireError::parse("remote exception: Failed: QUEUE_FULL: inbox holds 1000").unwrap();
        assert_eq!(w, WireError::new(ErrorCode::QueueFull, "inbox holds 1000"));
        assert_eq!(
            WireError::parse("STALE_EPOCH:").unwrap().code,
            ErrorCode::StaleEpoch
        );
        assert_eq!(WireError::parse("something else: entirely"), None);
        assert_eq!(WireError::parse(""), None);
    }

    #[test]
    fn capnp_read_limit_refusals_are_too_large() {
        let e = capnp::Error::failed("remote exception: Message has 1572885 words, which is too large. To increase the limit on the receiving end, see capnp::message::ReaderOptions.".into());
        assert_eq!(CallError::from(e).code(), Some(ErrorCode::TooLarge));
    }

    #[test]
    fn disconnected_is_transport_even_if_text_has_a_code() {
        let e = capnp::Error::disconnected("NOT_FOUND: gone".into());
        assert!(matches!(CallError::from(e), CallError::Transport(_)));
    }

    #[test]
    fn a_method_the_peer_does_not_have_is_refused_as_unimplemented() {
        // What capnp-rpc answers for a method number the server's schema lacks.
        let e = capnp::Error::unimplemented("Method not implemented.".into());
        assert_eq!(CallError::from(e).code(), Some(ErrorCode::Unimplemented));
    }

    proptest! {
        #[test]
        fn error_round_trips_through_capnp_exception(idx in 0usize..ErrorCode::ALL.len(), detail in "[ -~]{0,64}") {
            let sent = WireError::new(ErrorCode::ALL[idx], detail.trim_start());
            let exception: capnp::Error = sent.clone().into();
            // What the remote side sees after capnp-rpc serialized and prefixed it.
            let remote = capnp::Error::failed(format!("remote exception: {exception}"));
            prop_assert_eq!(CallError::from(remote), CallError::Refused(sent));
        }
    }
}
