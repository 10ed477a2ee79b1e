//! Lines to show the user (messages and notices), kept until shown: with their
//! parts and time, so `recv` and `chat` can print the time and `--json` the
//! fields. Profiles written before lines had parts keep theirs in the old
//! `unread` table, read here as whole lines without a time.

use super::groups::{CURSOR, ClientTxn, TxnResult};
use super::*;
use crate::display::{escape_untrusted as esc, group_line};
use crate::messenger::Line;

/// (seq, n) → (ms since the Unix epoch, group or "", sender or "" for a notice,
/// text): a line to show, kept until shown.
const LINES: TableDefinition<(u64, u32), (u64, &str, &str, &str)> =
    TableDefinition::new("unread_lines");
/// The same, as written by older versions: the line as shown.
const LEGACY_LINES: TableDefinition<(u64, u32), &str> = TableDefinition::new("unread");

/// Lines the client itself produces (not from an envelope) sit after the lines of
/// the last applied envelope, from this place on.
const LOCAL_LINES_FROM: u32 = 1 << 31;

/// Where a line to show sits: the seq of the envelope that produced it, and its
/// place among that envelope's lines.
pub type LineKey = (u64, u32);

/// A line waiting to be shown.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShownLine {
    /// When this device made it, ms since the Unix epoch (`None`: stored by an
    /// older version).
    pub at_ms: Option<u64>,
    /// The group it belongs to.
    pub group: Option<String>,
    /// Who sent it; `None` for a notice about the group.
    pub sender: Option<String>,
    /// The message or the notice (for an older version's line: all of it).
    pub text: String,
}

impl ShownLine {
    fn new(line: &Line) -> ShownLine {
        ShownLine {
            at_ms: Some(now_ms()),
            group: line.group.clone(),
            sender: line.sender.clone(),
            text: line.text.clone(),
        }
    }

    /// Whether it is a notice about a group (joined, removed, …) rather than a
    /// message someone sent.
    pub fn is_notice(&self) -> bool {
        self.sender.is_none() && self.at_ms.is_some()
    }

    /// `[GROUP] SENDER: TEXT` or `[GROUP] * NOTICE`, escaped for a terminal.
    pub fn display(&self) -> String {
        if self.at_ms.is_none() {
            return esc(&self.text).into_owned();
        }
        group_line(self.group.as_deref(), self.sender.as_deref(), &self.text)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ClientTxn<'_> {
    /// Adds a line to show (the `n`th of envelope `seq`).
    pub fn add_line(&self, seq: u64, n: u32, line: &Line) -> TxnResult<()> {
        let l = ShownLine::new(line);
        self.txn.open_table(LINES)?.insert(
            (seq, n),
            (
                l.at_ms.unwrap_or(0),
                l.group.as_deref().unwrap_or(""),
                l.sender.as_deref().unwrap_or(""),
                l.text.as_str(),
            ),
        )?;
        Ok(())
    }

    /// Adds a line the client produced itself (no envelope: e.g. a change it
    /// gave up on), after everything applied so far.
    pub fn add_local_line(&self, line: &Line) -> TxnResult<()> {
        let seq = self
            .txn
            .open_table(CURSOR)?
            .get("inbox")?
            .map(|v| v.value())
            .unwrap_or(0);
        let n = self
            .txn
            .open_table(LINES)?
            .range((seq, LOCAL_LINES_FROM)..=(seq, u32::MAX))?
            .next_back()
            .transpose()?
            .map_or(LOCAL_LINES_FROM, |(k, _)| k.value().1 + 1);
        self.add_line(seq, n, line)
    }

    /// Forgets a line once shown.
    pub fn remove_line(&self, key: LineKey) -> TxnResult<()> {
        self.txn.open_table(LINES)?.remove(key)?;
        match self.txn.open_table(LEGACY_LINES) {
            Ok(mut legacy) => {
                legacy.remove(key)?;
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

impl ClientState {
    /// Lines not yet shown, in the order they arrived (an older version's
    /// first).
    pub fn unread(&self) -> Result<Vec<(LineKey, ShownLine)>, StateError> {
        let mut out = self.read(
            |t| {
                t.open_table(LEGACY_LINES)?
                    .iter()?
                    .map(|e| {
                        let (k, v) = e?;
                        let line = ShownLine {
                            at_ms: None,
                            group: None,
                            sender: None,
                            text: v.value().to_string(),
                        };
                        Ok((k.value(), line))
                    })
                    .collect()
            },
            Vec::new(),
        )?;
        let current: Vec<(LineKey, ShownLine)> = self.read(
            |t| {
                t.open_table(LINES)?
                    .iter()?
                    .map(|e| {
                        let (k, v) = e?;
                        let (at_ms, group, sender, text) = v.value();
                        let line = ShownLine {
                            at_ms: Some(at_ms),
                            group: (!group.is_empty()).then(|| group.to_string()),
                            sender: (!sender.is_empty()).then(|| sender.to_string()),
                            text: text.to_string(),
                        };
                        Ok((k.value(), line))
                    })
                    .collect()
            },
            Vec::new(),
        )?;
        out.extend(current);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(group: &str, sender: Option<&str>, text: &str) -> Line {
        Line {
            seq: 1,
            group: Some(group.into()),
            sender: sender.map(str::to_string),
            text: text.into(),
            epoch: Some(1),
        }
    }

    #[test]
    fn lines_keep_their_parts_and_time_until_shown() {
        let dir = tempfile::tempdir().unwrap();
        let state = ClientState::open(dir.path()).unwrap();
        let before = now_ms();
        state
            .write(|t| {
                t.add_line(3, 0, &line("g", Some("alice"), "hi\nthere"))?;
                t.add_line(3, 1, &line("g", None, "bob joined"))?;
                t.set_cursor(3)?;
                t.add_local_line(&line("g", None, "gave up"))
            })
            .unwrap();
        let unread = state.unread().unwrap();
        let shown: Vec<String> = unread.iter().map(|(_, l)| l.display()).collect();
        assert_eq!(
            shown,
            ["[g] alice: hi\\nthere", "[g] * bob joined", "[g] * gave up"]
        );
        assert!(unread.iter().all(|(_, l)| l.at_ms.unwrap() >= before));
        assert!(!unread[0].1.is_notice() && unread[1].1.is_notice());
        state.write(|t| t.remove_line(unread[0].0)).unwrap();
        assert_eq!(state.unread().unwrap().len(), 2);
    }

    #[test]
    fn lines_stored_by_an_older_version_are_shown_whole_and_forgotten_once_shown() {
        let dir = tempfile::tempdir().unwrap();
        let state = ClientState::open(dir.path()).unwrap();
        state
            .write(|t| {
                t.txn
                    .open_table(LEGACY_LINES)?
                    .insert((1, 0), "[g] alice: old")?;
                t.add_line(2, 0, &line("g", Some("bob"), "new"))
            })
            .unwrap();
        let unread = state.unread().unwrap();
        assert_eq!(unread[0].1.display(), "[g] alice: old");
        assert_eq!(unread[0].1.at_ms, None);
        assert_eq!(unread[1].1.display(), "[g] bob: new");
        state.write(|t| t.remove_line(unread[0].0)).unwrap();
        assert_eq!(state.unread().unwrap().len(), 1);
    }
}
