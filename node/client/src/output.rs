//! How client commands print: lines for a person (with the time), or with
//! `--json` one JSON object per line for a script. The JSON field names are
//! stable (README, "Scripting"); a new field may appear, none is renamed.

use serde::Serialize;
use serde_json::json;

use crate::commands::CommandError;
use crate::display::{escape_untrusted, utc_time};
use crate::messenger::GroupSummary;
use crate::state::history::HistoryEntry;
use crate::state::lines::ShownLine;

/// One group, as `groups --json` and the web UI show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupView {
    /// The local name.
    pub name: String,
    /// The epoch this profile is in.
    pub epoch: u64,
    /// The members' names, one per device.
    pub members: Vec<String>,
    /// `Classic` or `PostQuantum`.
    pub suite: String,
    /// The first bytes of the epoch authenticator, hex: equal for every member
    /// in one epoch (compare it like a safety number).
    pub check: String,
}

impl From<GroupSummary> for GroupView {
    fn from(g: GroupSummary) -> Self {
        let check: Vec<u8> = g.epoch_authenticator.iter().take(8).copied().collect();
        GroupView {
            name: g.name,
            epoch: g.epoch,
            members: g.members,
            suite: format!(
                "{:?}",
                g.suite
                    .unwrap_or(quicnprotochat_crypto::mls::Suite::Classic)
            ),
            check: hex::encode(check),
        }
    }
}

/// One message of a group's history, as `history --json` and the web UI show
/// it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MessageView {
    /// When this device received or sent it, ms since the Unix epoch.
    pub at_ms: u64,
    /// The same, `YYYY-MM-DD HH:MM:SS` UTC.
    pub time: String,
    /// Who sent it.
    pub sender: String,
    /// What it said, as sent (shown as text, never as markup).
    pub text: String,
    /// `done` (received, or taken by the node), `pending` (ours, in the
    /// outbox) or `failed` (ours, refused by the node).
    pub delivery: &'static str,
    /// Why the node refused it, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl From<&HistoryEntry> for MessageView {
    fn from(e: &HistoryEntry) -> Self {
        MessageView {
            at_ms: e.at_ms,
            time: utc_time(e.at_ms),
            sender: e.sender.clone(),
            text: e.text.clone(),
            delivery: e.delivery.word(),
            failed: match &e.delivery {
                crate::state::history::Delivery::Failed(why) => Some(why.clone()),
                _ => None,
            },
        }
    }
}

/// `HH:MM:SS` (UTC) of `ms`.
fn clock(ms: u64) -> String {
    utc_time(ms)[11..].to_string()
}

/// A line of `recv`: `YYYY-MM-DD HH:MM:SS  [GROUP] SENDER: TEXT` (UTC; a line
/// stored by an older version has no time).
pub fn recv_text(line: &ShownLine) -> String {
    match line.at_ms {
        Some(at) => format!("{}  {}", utc_time(at), line.display()),
        None => line.display(),
    }
}

/// A line of `chat` in `group`: `HH:MM:SS [SENDER] TEXT` for its messages, the
/// `recv` form without the date for everything else.
pub fn chat_text(line: &ShownLine, group: &str) -> String {
    let shown = match (&line.sender, line.group.as_deref()) {
        (Some(sender), Some(g)) if g == group => format!(
            "[{}] {}",
            escape_untrusted(sender),
            escape_untrusted(&line.text)
        ),
        _ => line.display(),
    };
    match line.at_ms {
        Some(at) => format!("{} {shown}", clock(at)),
        None => shown,
    }
}

/// A line of `recv` or `chat` as JSON: `{"type": "message"|"notice", "at_ms",
/// "time", "group", "sender", "text"}` (`"type": "line"` with `text` alone for
/// one stored by an older version). Texts are as sent, unescaped: JSON
/// escaping makes them safe to print.
pub fn line_json(line: &ShownLine) -> String {
    let Some(at) = line.at_ms else {
        return json!({ "type": "line", "text": line.text }).to_string();
    };
    json!({
        "type": if line.is_notice() { "notice" } else { "message" },
        "at_ms": at,
        "time": utc_time(at),
        "group": line.group,
        "sender": line.sender,
        "text": line.text,
    })
    .to_string()
}

/// A message of `history --json`: `{"type": "message", "at_ms", "time",
/// "group", "sender", "text", "delivery"}` (and `failed`, why, when refused).
pub fn history_json(group: &str, e: &HistoryEntry) -> String {
    #[derive(Serialize)]
    struct Entry<'a> {
        r#type: &'static str,
        #[serde(flatten)]
        message: MessageView,
        group: &'a str,
    }
    let entry = Entry {
        r#type: "message",
        message: e.into(),
        group,
    };
    serde_json::to_string(&entry).expect("a message serializes")
}

/// A group of `groups --json` or `members --json`.
pub fn group_json(g: GroupSummary) -> String {
    serde_json::to_string(&GroupView::from(g)).expect("a group serializes")
}

/// What a command without output of its own says, with `--json`:
/// `{"ok": true, "message": LINE}`.
pub fn done_json(message: &str) -> String {
    json!({ "ok": true, "message": message }).to_string()
}

/// A failed command with `--json` (on stderr): `{"ok": false, "error": {"kind",
/// "code", "message"}}`; `code` is the node's refusal code when it refused.
pub fn error_json(e: &CommandError) -> String {
    json!({
        "ok": false,
        "error": {
            "kind": e.kind(),
            "code": e.refusal_code(),
            "message": e.to_string(),
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sender: Option<&str>, text: &str) -> ShownLine {
        ShownLine {
            at_ms: Some(1_796_031_961_766),
            group: Some("g".into()),
            sender: sender.map(str::to_string),
            text: text.into(),
        }
    }

    #[test]
    fn recv_and_chat_lines_carry_the_time_and_stay_one_line() {
        let l = line(Some("alice"), "hi\n[g] bob: fake");
        assert_eq!(
            recv_text(&l),
            "2026-11-30 09:46:01  [g] alice: hi\\n[g] bob: fake"
        );
        assert_eq!(chat_text(&l, "g"), "09:46:01 [alice] hi\\n[g] bob: fake");
        assert_eq!(
            chat_text(&l, "other"),
            "09:46:01 [g] alice: hi\\n[g] bob: fake"
        );
        assert_eq!(
            chat_text(&line(None, "bob joined"), "g"),
            "09:46:01 [g] * bob joined"
        );
    }

    #[test]
    fn json_lines_have_stable_fields_and_the_text_as_sent() {
        let v: serde_json::Value =
            serde_json::from_str(&line_json(&line(Some("alice"), "a\nb"))).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["at_ms"], 1_796_031_961_766u64);
        assert_eq!(v["time"], "2026-11-30 09:46:01");
        assert_eq!(v["group"], "g");
        assert_eq!(v["sender"], "alice");
        assert_eq!(v["text"], "a\nb");
        let n: serde_json::Value = serde_json::from_str(&line_json(&line(None, "x"))).unwrap();
        assert_eq!(n["type"], "notice");
        assert!(n["sender"].is_null());
        let e = error_json(&CommandError::NotLoggedIn);
        let e: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert_eq!(e["ok"], false);
        assert_eq!(e["error"]["kind"], "not_logged_in");
    }
}
