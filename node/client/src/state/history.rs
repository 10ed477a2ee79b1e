//! Message history: what was said in each group, received and sent, with its
//! time, kept in the profile. Bounded: the newest [`MAX_HISTORY_PER_GROUP`] of
//! each group; older ones are forgotten first.

use super::groups::{ClientTxn, TxnResult};
use super::*;

/// (group id, place) → (milliseconds since the Unix epoch, sender, text). Places
/// grow by one per entry within a group.
const HISTORY: TableDefinition<(&[u8], u64), (u64, &str, &str)> = TableDefinition::new("history");

/// How many messages of one group a profile keeps.
pub const MAX_HISTORY_PER_GROUP: u64 = 10_000;

/// One message of a group's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// When this device received it, or sent it (ms since the Unix epoch).
    pub at_ms: u64,
    /// Who sent it (a username, or a device key for an unknown sender).
    pub sender: String,
    /// What it said.
    pub text: String,
    /// Whether it is through (received, or taken by the node), or one of ours
    /// still in the outbox.
    pub delivery: Delivery,
}

/// Where a message of the history stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Received, or sent and taken by the node.
    #[default]
    Done,
    /// Ours, in the outbox: it goes out when the node can be reached.
    Pending,
    /// Ours, refused by the node (why).
    Failed(String),
}

impl Delivery {
    /// One word for scripts: `done`, `pending`, `failed`.
    pub fn word(&self) -> &'static str {
        match self {
            Delivery::Done => "done",
            Delivery::Pending => "pending",
            Delivery::Failed(_) => "failed",
        }
    }
}

impl ClientTxn<'_> {
    /// Adds `entry` to the history of `group_id`, forgetting its oldest entry
    /// once the group holds [`MAX_HISTORY_PER_GROUP`].
    pub fn add_history(&self, group_id: &[u8], entry: &HistoryEntry) -> TxnResult<()> {
        let mut table = self.txn.open_table(HISTORY)?;
        let (first, next) = {
            let mut range = table.range((group_id, 0)..=(group_id, u64::MAX))?;
            let first = range.next().transpose()?.map(|(k, _)| k.value().1);
            let last = range.next_back().transpose()?.map(|(k, _)| k.value().1);
            (first, last.or(first).map_or(0, |l| l + 1))
        };
        table.insert(
            (group_id, next),
            (entry.at_ms, entry.sender.as_str(), entry.text.as_str()),
        )?;
        if let Some(first) = first
            && next - first >= MAX_HISTORY_PER_GROUP
        {
            table.remove((group_id, first))?;
        }
        Ok(())
    }
}

impl ClientState {
    /// The newest `limit` messages of `group_id`, oldest first.
    pub fn history(&self, group_id: &[u8], limit: usize) -> Result<Vec<HistoryEntry>, StateError> {
        self.read(
            |t| {
                let table = t.open_table(HISTORY)?;
                let mut newest = Vec::new();
                for row in table.range((group_id, 0)..=(group_id, u64::MAX))?.rev() {
                    if newest.len() == limit {
                        break;
                    }
                    let (_, value) = row?;
                    let (at_ms, sender, text) = value.value();
                    newest.push(HistoryEntry {
                        at_ms,
                        sender: sender.to_string(),
                        text: text.to_string(),
                        delivery: Delivery::Done,
                    });
                }
                newest.reverse();
                Ok(newest)
            },
            Vec::new(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> HistoryEntry {
        HistoryEntry {
            at_ms: n,
            sender: "alice".into(),
            text: format!("m{n}"),
            delivery: Delivery::Done,
        }
    }

    #[test]
    fn history_keeps_each_groups_newest_messages_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let state = ClientState::open(dir.path()).unwrap();
        let total = MAX_HISTORY_PER_GROUP + 5;
        state
            .write(|t| {
                for n in 0..total {
                    t.add_history(b"g", &entry(n))?;
                }
                t.add_history(b"other", &entry(7))
            })
            .unwrap();
        let all = state.history(b"g", usize::MAX).unwrap();
        assert_eq!(all.len() as u64, MAX_HISTORY_PER_GROUP);
        assert_eq!(
            all.first(),
            Some(&entry(5)),
            "the oldest are forgotten first"
        );
        assert_eq!(all.last(), Some(&entry(total - 1)));
        assert_eq!(
            state.history(b"g", 2).unwrap(),
            vec![entry(total - 2), entry(total - 1)]
        );
        assert_eq!(state.history(b"other", 10).unwrap(), vec![entry(7)]);
        assert!(state.history(b"none", 10).unwrap().is_empty());
    }
}
