//! The client commands that work on a profile's open [`Messenger`]: one
//! definition of what each does and prints, whoever holds the messenger. A
//! one-shot CLI command starts a messenger of its own, runs the command on it
//! and closes it (`group_commands`); a daemon runs it on its resident messenger
//! and hands the text back over its socket (`daemon`), so both print the same.

use std::time::Duration;

use quicnprotochat_crypto::mls::Suite;
use serde::{Deserialize, Serialize};

use crate::commands::{CommandError, devices_last_seen, devices_text, whoami_line};
use crate::display::{escape_untrusted, utc_time};
use crate::messenger::Messenger;
use crate::output;
use crate::state::history::Delivery;
use crate::state::lines::{LineKey, ShownLine};

/// The most messages one `history` returns (a daemon's caller cannot make it
/// read the whole profile into one reply).
pub const MAX_HISTORY_LIMIT: usize = 1_000;

/// A command on the profile, with its arguments as the CLI takes them. As
/// JSON-RPC parameters: an object with these fields (kebab-case method names,
/// `docs/daemon.md`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    tag = "method",
    content = "params",
    rename_all = "kebab-case",
    deny_unknown_fields
)]
pub enum ProfileCommand {
    /// `whoami`.
    #[serde(deserialize_with = "no_params::deserialize")]
    Whoami,
    /// `devices`.
    #[serde(deserialize_with = "no_params::deserialize")]
    Devices,
    /// `groups`.
    #[serde(deserialize_with = "no_params::deserialize")]
    Groups,
    /// `members --group NAME`.
    Members {
        /// The group.
        group: String,
    },
    /// `history --group NAME [--limit N]`.
    History {
        /// The group.
        group: String,
        /// How many of the newest messages (at most [`MAX_HISTORY_LIMIT`]).
        #[serde(default = "default_history_limit")]
        limit: usize,
    },
    /// `send --group NAME MESSAGE`.
    Send {
        /// The group.
        group: String,
        /// The text.
        message: String,
    },
    /// `create-group NAME [--classic]`.
    CreateGroup {
        /// The group's name.
        name: String,
        /// The classic suite instead of the post-quantum one.
        #[serde(default)]
        classic: bool,
    },
    /// `invite --group NAME USERNAME...`.
    Invite {
        /// The group.
        group: String,
        /// Who.
        usernames: Vec<String>,
    },
    /// `join`.
    #[serde(deserialize_with = "no_params::deserialize")]
    Join,
    /// `recv` (what has arrived; a daemon's caller waits with `wait`).
    Recv {
        /// Seconds to wait for something when nothing is there.
        #[serde(default)]
        wait: u64,
    },
    /// `remove --group NAME USERNAME`.
    Remove {
        /// The group.
        group: String,
        /// Who.
        username: String,
    },
    /// `leave --group NAME`.
    Leave {
        /// The group.
        group: String,
    },
    /// `update --group NAME`.
    Update {
        /// The group.
        group: String,
    },
    /// `refresh-keypackage [--count N]`.
    RefreshKeypackage {
        /// How many one-time KeyPackages to publish.
        #[serde(default = "default_key_package_count")]
        count: usize,
    },
}

fn default_key_package_count() -> usize {
    crate::key_packages::DEFAULT_KEY_PACKAGES
}

fn default_history_limit() -> usize {
    20
}

/// Unit variants take no parameters, or an empty object or array.
mod no_params {
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Empty {}
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Nothing {
            Object(Empty),
            Array([(); 0]),
        }
        Option::<Nothing>::deserialize(d).map(|_| ())
    }
}

/// The method names, as a daemon lists them.
pub const METHODS: [&str; 15] = [
    "whoami",
    "devices",
    "groups",
    "members",
    "history",
    "send",
    "create-group",
    "invite",
    "join",
    "recv",
    "remove",
    "leave",
    "update",
    "refresh-keypackage",
    "subscribe",
];

impl ProfileCommand {
    /// Whether the command changes groups (so watchers should look again).
    pub fn changes_groups(&self) -> bool {
        !matches!(
            self,
            ProfileCommand::Whoami
                | ProfileCommand::Devices
                | ProfileCommand::Groups
                | ProfileCommand::Members { .. }
                | ProfileCommand::History { .. }
                | ProfileCommand::Recv { .. }
                | ProfileCommand::RefreshKeypackage { .. }
        )
    }

    /// Whether the command only reads the profile (it answers with the node
    /// down, from what the profile holds).
    pub fn only_reads(&self) -> bool {
        matches!(
            self,
            ProfileCommand::Whoami
                | ProfileCommand::Devices
                | ProfileCommand::Groups
                | ProfileCommand::Members { .. }
                | ProfileCommand::History { .. }
        )
    }

    /// Runs the command on `m` and gives what the CLI prints (`json`: as with
    /// `--json`). `recv` here only takes what has arrived; its `wait` is the
    /// caller's. A read with the node unreachable answers from the profile,
    /// with a note that says so.
    pub async fn run_on(&self, m: &mut Messenger, json: bool) -> Result<Answer, CommandError> {
        let text = match self {
            ProfileCommand::Whoami => {
                return match m.whoami().await {
                    Ok(me) => Ok(Answer::plain(whoami_line(&me))),
                    Err(e) if Messenger::is_connection_loss(&e) => Ok(whoami_from_profile(m)),
                    Err(e) => Err(e.into()),
                };
            }
            ProfileCommand::Devices => {
                let me = quicnprotochat_wire::IdentityKey(m.identity_key());
                return match m.devices().await {
                    Ok(devices) => Ok(Answer::plain(devices_text(&devices, &me, m.username()))),
                    Err(e) if Messenger::is_connection_loss(&e) => devices_from_profile(m),
                    Err(e) => Err(e.into()),
                };
            }
            ProfileCommand::Groups => {
                let note = pull_if_reachable(m).await?;
                return Ok(Answer {
                    note,
                    ..Answer::plain(groups_text(m, json).await?)
                });
            }
            ProfileCommand::Members { group } => {
                let note = pull_if_reachable(m).await?;
                let g = m.group(group).await?;
                let text = if json {
                    output::group_json(g)
                } else {
                    members_by_user(&g.members).join("\n")
                };
                return Ok(Answer {
                    note,
                    ..Answer::plain(text)
                });
            }
            ProfileCommand::History { group, limit } => {
                let note = pull_if_reachable(m).await?;
                let text = history_text(m, group, (*limit).min(MAX_HISTORY_LIMIT), json)?;
                return Ok(Answer {
                    note,
                    ..Answer::plain(text)
                });
            }
            ProfileCommand::Send { group, message } => match m.send(group, message).await {
                Ok(report) => report.summary(group),
                // Queued: a resident client sends it when the node is back.
                Err(e) if Messenger::is_connection_loss(&e) && m.is_followed() => format!(
                    "queued for {group}: the node is unreachable; the message goes out when it is back (`history` shows it pending)"
                ),
                Err(e) if Messenger::is_connection_loss(&e) => {
                    return Err(CommandError::Queued(e.to_string()));
                }
                Err(e) => return Err(e.into()),
            },
            ProfileCommand::CreateGroup { name, classic } => {
                let suite = if *classic {
                    Suite::Classic
                } else {
                    Suite::PostQuantum
                };
                m.create_group(name, suite).await?;
                format!("created group {name} ({suite:?} ciphersuite)")
            }
            ProfileCommand::Invite { group, usernames } => {
                if usernames.is_empty() {
                    return Err(CommandError::Invalid(
                        "name at least one user to invite".into(),
                    ));
                }
                let epoch = m.invite(group, usernames).await?;
                format!(
                    "invited {} to {group}; the group is at epoch {epoch}",
                    usernames.join(", ")
                )
            }
            ProfileCommand::Join => join_text(m, json).await?,
            ProfileCommand::Recv { .. } => {
                // Followed, the lines are there already; and the node may be
                // away.
                if !m.is_followed() {
                    m.pull(Duration::ZERO).await?;
                }
                let unread = m.unread()?;
                let text = unread
                    .iter()
                    .map(|(_, l)| recv_line(l, json))
                    .collect::<Vec<_>>()
                    .join("\n");
                // Shown once the caller has them: the daemon marks them after
                // writing its reply (`Answer::shown`).
                return Ok(Answer {
                    text,
                    note: None,
                    shown: unread.into_iter().map(|(k, _)| k).collect(),
                });
            }
            ProfileCommand::Remove { group, username } => {
                let epoch = m.remove(group, std::slice::from_ref(username)).await?;
                format!("removed {username} from {group}; the group is at epoch {epoch}")
            }
            ProfileCommand::Leave { group } => {
                m.leave(group).await?;
                format!("left {group}; a remaining member's client removes this device")
            }
            ProfileCommand::Update { group } => {
                let epoch = m.update(group).await?;
                format!("refreshed this device's keys in {group}; the group is at epoch {epoch}")
            }
            ProfileCommand::RefreshKeypackage { count } => {
                let remaining = m.publish_key_packages(*count, true).await?;
                crate::key_packages::refreshed_text(*count, remaining)
            }
        };
        Ok(Answer::plain(text))
    }
}

impl ProfileCommand {
    /// The answer from the profile alone, for a command that otherwise asks the
    /// node (`whoami`, `devices`): what a resident client says while the node
    /// is away, rather than waiting for an attempt to fail.
    pub fn answer_from_profile(&self, m: &Messenger) -> Option<Result<Answer, CommandError>> {
        match self {
            ProfileCommand::Whoami => Some(Ok(whoami_from_profile(m))),
            ProfileCommand::Devices => Some(devices_from_profile(m)),
            _ => None,
        }
    }
}

/// `whoami` from the profile: who it is; the node's part unknown.
fn whoami_from_profile(m: &Messenger) -> Answer {
    Answer::noted(
        format!(
            "{} (identity {})",
            m.username(),
            hex::encode(m.identity_key())
        ),
        "the node is unreachable: device count and session expiry unknown",
    )
}

/// `devices` from the profile: as it last settled its groups with them.
fn devices_from_profile(m: &Messenger) -> Result<Answer, CommandError> {
    let me = quicnprotochat_wire::IdentityKey(m.identity_key());
    let known = devices_last_seen(m.state(), &me)?;
    Ok(Answer::noted(
        devices_text(&known, &me, m.username()),
        "the node is unreachable: the devices as this profile last saw them",
    ))
}

/// What a command answers: the text the CLI prints, and a note for stderr
/// (a read that the node could not refresh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What the CLI prints on stdout.
    pub text: String,
    /// What it says on stderr, if anything.
    pub note: Option<String>,
    /// Lines the text shows, to mark shown once it reached the caller
    /// (`recv`).
    pub shown: Vec<LineKey>,
}

impl Answer {
    /// Just text.
    pub fn plain(text: String) -> Answer {
        Answer {
            text,
            note: None,
            shown: Vec::new(),
        }
    }

    fn noted(text: String, note: &str) -> Answer {
        Answer {
            text,
            note: Some(note.to_string()),
            shown: Vec::new(),
        }
    }
}

/// The note of a read answered from the profile alone.
pub const UNREFRESHED: &str =
    "the node is unreachable: this is what the profile holds (newer messages may be waiting)";

/// Applies what waits at the node, when it can be reached: a read answers
/// from the profile anyway, with a note saying the node was not asked.
async fn pull_if_reachable(m: &mut Messenger) -> Result<Option<String>, CommandError> {
    // Followed, the profile is as current as the connection allows (the
    // follower says when the node is away).
    if m.is_followed() {
        return Ok(None);
    }
    match m.pull(Duration::ZERO).await {
        Ok(_) => Ok(None),
        Err(e) if Messenger::is_connection_loss(&e) => Ok(Some(UNREFRESHED.into())),
        Err(e) => Err(e.into()),
    }
}

/// One received line as `recv` prints it.
pub(crate) fn recv_line(l: &ShownLine, json: bool) -> String {
    match json {
        true => output::line_json(l),
        false => output::recv_text(l),
    }
}

/// `join`: applies pending Welcomes (and everything else waiting) and names the
/// groups joined; other lines stay for `recv`.
async fn join_text(m: &mut Messenger, json: bool) -> Result<String, CommandError> {
    // Followed, the Welcomes are applied as they arrive.
    if !m.is_followed() {
        m.pull(Duration::ZERO).await?;
    }
    let joined: Vec<_> = m
        .unread()?
        .into_iter()
        .filter(|(_, l)| l.is_notice() && l.text.starts_with("joined, invited by"))
        .collect();
    let keys: Vec<_> = joined.iter().map(|(k, _)| *k).collect();
    m.mark_shown(&keys)?;
    if joined.is_empty() && !json {
        return Ok("no pending invitations".into());
    }
    Ok(joined
        .iter()
        .map(|(_, l)| match json {
            true => output::line_json(l),
            false => l.display(),
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// `groups`: one line per group with epoch and member count.
async fn groups_text(m: &Messenger, json: bool) -> Result<String, CommandError> {
    let groups = m.groups().await?;
    if json {
        let lines: Vec<String> = groups.into_iter().map(output::group_json).collect();
        return Ok(lines.join("\n"));
    }
    if groups.is_empty() {
        return Ok("no groups".into());
    }
    Ok(groups
        .into_iter()
        .map(|g| {
            // The check is the start of the epoch authenticator: members who
            // compare it (like a safety number) know they are in one group, not
            // in a fork of it.
            let g = output::GroupView::from(g);
            format!(
                "{}  epoch {}  {} member(s)  {}  check {}",
                escape_untrusted(&g.name),
                g.epoch,
                g.members.len(),
                g.suite,
                g.check
            )
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// `history`: the group's newest messages, received and sent, oldest first, as
/// `YYYY-MM-DD HH:MM:SS  SENDER: TEXT` (UTC).
fn history_text(
    m: &Messenger,
    group: &str,
    limit: usize,
    json: bool,
) -> Result<String, CommandError> {
    let entries = m.history(group, limit)?;
    if json {
        let lines: Vec<String> = entries
            .iter()
            .map(|e| output::history_json(group, e))
            .collect();
        return Ok(lines.join("\n"));
    }
    if entries.is_empty() {
        return Ok(format!("no messages in {}", escape_untrusted(group)));
    }
    Ok(entries
        .iter()
        .map(|e| {
            let state = match &e.delivery {
                Delivery::Done => String::new(),
                Delivery::Pending => "  (pending: not sent yet)".into(),
                Delivery::Failed(why) => format!("  (not sent: {})", escape_untrusted(why)),
            };
            format!(
                "{}  {}: {}{state}",
                utc_time(e.at_ms),
                escape_untrusted(&e.sender),
                escape_untrusted(&e.text)
            )
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// One line per user, with how many devices when more than one: a user's
/// devices are separate MLS members, never shown as a bare duplicate.
fn members_by_user(devices: &[String]) -> Vec<String> {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for name in devices {
        match counts.iter_mut().find(|(n, _)| n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    counts
        .into_iter()
        .map(|(name, n)| match n {
            1 => escape_untrusted(name).into_owned(),
            n => format!("{} ({n} devices)", escape_untrusted(name)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<ProfileCommand, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn methods_take_their_parameters_by_name_with_the_clis_defaults() {
        use serde_json::json;
        assert_eq!(
            parse(json!({"method": "history", "params": {"group": "g"}})).unwrap(),
            ProfileCommand::History {
                group: "g".into(),
                limit: 20
            }
        );
        assert_eq!(
            parse(json!({"method": "groups"})).unwrap(),
            ProfileCommand::Groups
        );
        assert_eq!(
            parse(json!({"method": "groups", "params": {}})).unwrap(),
            ProfileCommand::Groups
        );
        assert_eq!(
            parse(json!({"method": "create-group", "params": {"name": "g"}})).unwrap(),
            ProfileCommand::CreateGroup {
                name: "g".into(),
                classic: false
            }
        );
    }

    #[test]
    fn a_missing_or_mistyped_or_unknown_parameter_is_refused() {
        use serde_json::json;
        for v in [
            json!({"method": "history", "params": {}}),
            json!({"method": "history", "params": {"group": 7}}),
            json!({"method": "send", "params": {"group": "g"}}),
            json!({"method": "groups", "params": {"extra": 1}}),
        ] {
            assert!(parse(v.clone()).is_err(), "{v} was accepted");
        }
    }

    #[test]
    fn every_listed_method_but_subscribe_is_a_command() {
        use serde_json::json;
        for method in METHODS.iter().filter(|m| **m != "subscribe") {
            let err = parse(json!({"method": method, "params": {"bogus_param_xyz": 1}}));
            // A known method fails on its parameters, not on its name.
            let text = match err {
                Ok(_) => continue,
                Err(e) => e.to_string(),
            };
            assert!(!text.contains("unknown variant"), "{method}: {text}");
        }
    }
}
