//! The account and KeyPackage rules that need no stored state: what a username
//! may be, what an upload must hold. Pure functions, no I/O.

use quicnprotochat_crypto::envelope::HybridPublicKey;
use quicnprotochat_crypto::mls::{Suite, key_package_message, validate_key_package};
use quicnprotochat_wire::IdentityKey;
use std::time::{Duration, Instant};

use super::AuthError;

/// Shortest and longest username.
pub const USERNAME_MIN: usize = 3;
/// Longest username.
pub const USERNAME_MAX: usize = 32;
/// Most one-time KeyPackages one upload may carry, and one device may have stored.
pub const MAX_UPLOAD: usize = 200;
/// Most one-time KeyPackages one device may have stored, per suite.
pub const MAX_STORED_KEY_PACKAGES: u64 = 1000;

pub use quicnprotochat_wire::error::{NO_KEY_PACKAGES, NO_SUCH_USER};
/// How long an OPAQUE login may take between its start and its finish.
pub const LOGIN_FINISH_WITHIN: Duration = Duration::from_secs(60);
/// How long a session opened by device key alone lives.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a session token lives unused, by default: each use (a resume)
/// moves its end this far ahead (see [`session_extension`]).
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The new end of a session token used at `now_ms`, if it is time to write
/// one: a token lives `idle` past its last use, and its stored end is moved
/// at most once per eighth of `idle` (a token in daily use costs a write every
/// few days, not one per connection). So a token ends between 7/8 of `idle`
/// and `idle` after its last resume, and one resumed regularly does not end
/// (a connection kept open does not resume: it ends at the end it had).
pub fn session_extension(expires_at_ms: u64, now_ms: u64, idle: Duration) -> Option<u64> {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let renewed = now_ms.saturating_add(idle_ms);
    (renewed.saturating_sub(expires_at_ms) >= (idle_ms / 8).max(1)).then_some(renewed)
}
/// How long after a password login (OPAQUE) its session may remove devices: a
/// stolen token or device key alone must not lock the owner out of the account.
pub const PASSWORD_FRESH_FOR: Duration = Duration::from_secs(300);

/// How a session was opened, and when: what it may do, and for how long,
/// depends on it.
#[derive(Debug, Clone, Copy)]
pub enum SessionProof {
    /// A signature by the device key alone (`authenticate`), at `opened`.
    Key {
        /// When the session was opened.
        opened: Instant,
    },
    /// A remembered session token (`resume`): it lasts as long as the token.
    Token,
    /// The account password (OPAQUE `loginFinish`), at `at`.
    Password {
        /// When the password was proven.
        at: Instant,
    },
}

impl SessionProof {
    /// Whether a session without a token (opened by device key alone) has
    /// outlived [`SESSION_TTL`], as a token's session would have.
    pub fn expired(&self, now: Instant) -> bool {
        matches!(self, SessionProof::Key { opened } if now.duration_since(*opened) > SESSION_TTL)
    }

    /// Whether the session may act for the whole account (remove a device,
    /// log out everywhere): only within [`PASSWORD_FRESH_FOR`] of a password
    /// login.
    pub fn may_act_for_the_account(&self, now: Instant) -> bool {
        matches!(self, SessionProof::Password { at } if now.duration_since(*at) < PASSWORD_FRESH_FOR)
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

/// A KeyPackage upload whose content passed [`check_upload`].
pub struct CheckedUpload {
    pub(crate) device: IdentityKey,
    pub(crate) suite: Suite,
    pub(crate) one_time: Vec<Vec<u8>>,
    pub(crate) last_resort: Vec<u8>,
    pub(crate) hybrid_public_key: Vec<u8>,
}

/// The rules of an upload that need no stored state: at most [`MAX_UPLOAD`]
/// one-time packages, each valid (signature, suite, lifetime), naming `device`
/// and not marked last-resort; the last-resort one marked so; one suite for all;
/// the hybrid key signed by `device`. Pure CPU work, no I/O. Packages may come
/// framed as MLSMessages (RFC 9420 §6) or bare (older clients); they are kept
/// framed.
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
    // Stored, and served, as RFC 9420 MLSMessages whichever way they came.
    Ok(CheckedUpload {
        device,
        suite,
        one_time: one_time.iter().map(|kp| key_package_message(kp)).collect(),
        last_resort: if last_resort.is_empty() {
            last_resort
        } else {
            key_package_message(&last_resort)
        },
        hybrid_public_key,
    })
}

/// The session a connection opened, as the KeyPackage rule sees it.
#[derive(Debug, Clone, Copy)]
pub struct OpenedSession {
    /// Its device.
    pub device: IdentityKey,
    /// Whether its session is still alive (not logged out, expired or ended by
    /// a device removal).
    pub alive: bool,
    /// Whether its device belongs to an account.
    pub registered: bool,
}

/// Why a KeyPackage request is refused before anything is served.
pub const KEY_PACKAGES_NEED_A_SESSION: &str =
    "KeyPackages are served to registered devices: log in first";

/// Who asks for KeyPackages, as the claim limits count them. On a node with
/// accounts only a registered device whose session, opened on this
/// connection, is alive (strangers take nothing: `UNAUTHORIZED`); on a node
/// without accounts, the caller's address.
pub fn key_package_requester(
    accounts_exist: bool,
    address: std::net::IpAddr,
    opened: Option<OpenedSession>,
) -> Result<crate::core::rate::Requester, &'static str> {
    use crate::core::rate::Requester;
    if !accounts_exist {
        return Ok(Requester::Address(address));
    }
    match opened {
        Some(s) if s.alive && s.registered => Ok(Requester::Device(s.device.0)),
        _ => Err(KEY_PACKAGES_NEED_A_SESSION),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_fresh_password_login_removes_devices_and_key_sessions_end_like_token_ones() {
        let t = Instant::now();
        let password = SessionProof::Password { at: t };
        assert!(password.may_act_for_the_account(t));
        assert!(password.may_act_for_the_account(t + PASSWORD_FRESH_FOR - Duration::from_secs(1)));
        assert!(!password.may_act_for_the_account(t + PASSWORD_FRESH_FOR));
        let key = SessionProof::Key { opened: t };
        assert!(!key.may_act_for_the_account(t));
        assert!(!SessionProof::Token.may_act_for_the_account(t));
        assert!(!key.expired(t + SESSION_TTL));
        assert!(key.expired(t + SESSION_TTL + Duration::from_secs(1)));
        assert!(!SessionProof::Token.expired(t + SESSION_TTL * 2));
        assert!(!password.expired(t + SESSION_TTL * 2));
    }

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

    #[test]
    fn only_a_registered_device_with_a_live_session_claims_key_packages_on_a_node_with_accounts() {
        use crate::core::rate::Requester;
        let address: std::net::IpAddr = [192, 0, 2, 7].into();
        let device = IdentityKey([7; 32]);
        let session = |alive, registered| {
            Some(OpenedSession {
                device,
                alive,
                registered,
            })
        };
        assert_eq!(
            key_package_requester(false, address, None),
            Ok(Requester::Address(address))
        );
        assert_eq!(
            key_package_requester(true, address, session(true, true)),
            Ok(Requester::Device([7; 32]))
        );
        for refused in [None, session(false, true), session(true, false)] {
            assert_eq!(
                key_package_requester(true, address, refused),
                Err(KEY_PACKAGES_NEED_A_SESSION)
            );
        }
    }

    #[test]
    fn a_token_in_use_is_extended_at_most_once_per_eighth_of_its_idle_time() {
        let idle = Duration::from_secs(800);
        let idle_ms = 800_000;
        let issued_at = 1_000_000;
        let end = issued_at + idle_ms;
        // Used again soon: no write.
        assert_eq!(session_extension(end, issued_at + 99_999, idle), None);
        // An eighth of its idle time later: moved to a full idle time ahead.
        assert_eq!(
            session_extension(end, issued_at + 100_000, idle),
            Some(issued_at + 100_000 + idle_ms)
        );
        // A zero idle time never divides by zero.
        assert_eq!(session_extension(5, 5, Duration::ZERO), None);
    }
}
