//! The commands that act for the account with its password, or look at
//! published keys: `logout`, `change-password`, `remove-device`, `check-key`.
//! They run on the profile and a connection of their own (`commands`); a
//! resident client runs them too, letting go of the profile while they run and
//! then carrying on with whatever login the profile holds (none after a
//! logout), as it does for `login`.

use serde::{Deserialize, Serialize};

use crate::commands::{self, ClientOptions, CommandError};

/// One such command with its arguments (passwords already read). As JSON-RPC
/// parameters: an object with these fields (`docs/daemon.md`).
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    tag = "method",
    content = "params",
    rename_all = "kebab-case",
    deny_unknown_fields
)]
pub enum AccountCommand {
    /// `logout [--everywhere]` (everywhere needs the password).
    Logout {
        /// End every session of every device of the account.
        #[serde(default)]
        everywhere: bool,
        /// The account password (for `everywhere`).
        #[serde(default)]
        password: Option<String>,
    },
    /// `change-password`.
    ChangePassword {
        /// The password now.
        current: String,
        /// The new one.
        new: String,
    },
    /// `remove-device --identity HEX`.
    RemoveDevice {
        /// The device to remove (hex identity key).
        identity: String,
        /// The account password.
        password: String,
    },
    /// `check-key [--username NAME]`.
    CheckKey {
        /// The user whose keys to verify (none: this device's count).
        #[serde(default)]
        username: Option<String>,
    },
}

/// The method names, as a daemon lists them.
pub const ACCOUNT_METHODS: [&str; 4] = ["logout", "change-password", "remove-device", "check-key"];

// Written by hand: the passwords never reach a log.
impl std::fmt::Debug for AccountCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            AccountCommand::Logout { everywhere, .. } => {
                return write!(f, "Logout {{ everywhere: {everywhere} }}");
            }
            AccountCommand::ChangePassword { .. } => "ChangePassword",
            AccountCommand::RemoveDevice { identity, .. } => {
                return write!(f, "RemoveDevice {{ identity: {identity:?} }}");
            }
            AccountCommand::CheckKey { username } => {
                return write!(f, "CheckKey {{ username: {username:?} }}");
            }
        };
        f.write_str(name)
    }
}

impl AccountCommand {
    /// Runs the command on the profile in `opts` (which nobody else holds
    /// meanwhile) and gives what the CLI prints.
    pub async fn run(&self, opts: &ClientOptions) -> Result<String, CommandError> {
        match self {
            AccountCommand::Logout {
                everywhere: false, ..
            } => commands::logout(opts).await,
            AccountCommand::Logout {
                everywhere: true,
                password,
            } => {
                let password = password.as_deref().ok_or_else(|| {
                    CommandError::Password("logout everywhere needs the account password".into())
                })?;
                commands::logout_everywhere(opts, password).await
            }
            AccountCommand::ChangePassword { current, new } => {
                commands::change_password(opts, current, new).await
            }
            AccountCommand::RemoveDevice { identity, password } => {
                crate::group_commands::remove_device(opts, identity, password).await
            }
            AccountCommand::CheckKey { username } => {
                commands::check_key(opts, username.as_deref()).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows_in_debug_output() {
        let c = AccountCommand::ChangePassword {
            current: "old-secret".into(),
            new: "new-secret".into(),
        };
        let r = AccountCommand::RemoveDevice {
            identity: "ab".into(),
            password: "pw-secret".into(),
        };
        let shown = format!("{c:?} {r:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn every_method_parses_from_its_json_rpc_shape() {
        for (method, params) in [
            ("logout", serde_json::json!({})),
            (
                "logout",
                serde_json::json!({"everywhere": true, "password": "p"}),
            ),
            (
                "change-password",
                serde_json::json!({"current": "a", "new": "b"}),
            ),
            (
                "remove-device",
                serde_json::json!({"identity": "ab", "password": "p"}),
            ),
            ("check-key", serde_json::json!({"username": "bob"})),
        ] {
            assert!(ACCOUNT_METHODS.contains(&method));
            let parsed: AccountCommand =
                serde_json::from_value(serde_json::json!({"method": method, "params": params}))
                    .unwrap_or_else(|e| panic!("{method}: {e}"));
            let back = serde_json::to_value(&parsed).unwrap();
            assert_eq!(back["method"], method);
        }
    }
}
