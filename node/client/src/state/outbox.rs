//! The outbox: a message is written here, with its id, before it is sent, and
//! leaves it in the transaction that records it sent (`group` actor). What the
//! node did not take yet waits here, in order, across restarts; what the node
//! refused stays, marked failed with why, until the user sees it.

use super::groups::{ClientTxn, TxnResult};
use super::*;
use crate::app_content::MessageId;

/// Place → (group id, message id, ms since the Unix epoch, text, why it failed
/// or empty while pending). Places only grow: the outbox's order.
const OUTBOX: TableDefinition<u64, OutboxRow> = TableDefinition::new("outbox");

/// (group id, message id, ms, text, why it failed or empty).
type OutboxRow = (
    &'static [u8],
    &'static [u8; 16],
    u64,
    &'static str,
    &'static str,
);

/// Most messages waiting in the outbox; a send beyond is refused until some
/// go out.
pub const MAX_OUTBOX: u64 = 1_000;
/// Most refused messages kept to show; older ones are forgotten first.
pub const MAX_FAILED: usize = 100;

/// A message in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Its place (the outbox's order).
    pub place: u64,
    /// The group.
    pub group_id: Vec<u8>,
    /// Its id, kept across retries.
    pub id: MessageId,
    /// When it was written (ms since the Unix epoch).
    pub at_ms: u64,
    /// What it says.
    pub text: String,
    /// Why the node refused it; `None` while it waits to be sent.
    pub failed: Option<String>,
}

impl ClientTxn<'_> {
    /// Writes a message to the outbox; its place.
    pub fn queue_outgoing(
        &self,
        group_id: &[u8],
        id: MessageId,
        at_ms: u64,
        text: &str,
    ) -> TxnResult<u64> {
        let mut table = self.txn.open_table(OUTBOX)?;
        let place = table.last()?.map_or(0, |(k, _)| k.value() + 1);
        table.insert(place, (group_id, &id.0, at_ms, text, ""))?;
        Ok(place)
    }

    /// The message at `place` was sent: it leaves the outbox.
    pub fn sent(&self, place: u64) -> TxnResult<()> {
        self.txn.open_table(OUTBOX)?.remove(place)?;
        Ok(())
    }

    /// The node refused the message at `place` (`why`): it stays, failed.
    pub fn send_failed(&self, place: u64, why: &str) -> TxnResult<()> {
        let mut table = self.txn.open_table(OUTBOX)?;
        let row = table.get(place)?.map(|v| {
            let (g, id, at, text, _) = v.value();
            (g.to_vec(), *id, at, text.to_string())
        });
        if let Some((g, id, at, text)) = row {
            // Never empty: empty means pending.
            let why = if why.is_empty() { "refused" } else { why };
            table.insert(place, (g.as_slice(), &id, at, text.as_str(), why))?;
        }
        // Bounded: the oldest refusals are forgotten first.
        let failed: Vec<u64> = table
            .iter()?
            .filter_map(|row| row.ok())
            .filter(|(_, v)| !v.value().4.is_empty())
            .map(|(k, _)| k.value())
            .collect();
        for place in failed.iter().take(failed.len().saturating_sub(MAX_FAILED)) {
            table.remove(*place)?;
        }
        Ok(())
    }
}

impl ClientState {
    /// Every message of the outbox, in order.
    pub fn outbox(&self) -> Result<Vec<Outgoing>, StateError> {
        self.read(
            |t| {
                let table = t.open_table(OUTBOX)?;
                let mut out = Vec::new();
                for row in table.iter()? {
                    let (k, v) = row?;
                    let (group_id, id, at_ms, text, failed) = v.value();
                    out.push(Outgoing {
                        place: k.value(),
                        group_id: group_id.to_vec(),
                        id: MessageId(*id),
                        at_ms,
                        text: text.to_string(),
                        failed: (!failed.is_empty()).then(|| failed.to_string()),
                    });
                }
                Ok(out)
            },
            Vec::new(),
        )
    }

    /// How many messages wait in the outbox (refused ones not counted).
    pub fn outbox_waiting(&self) -> Result<u64, StateError> {
        Ok(self.outbox()?.iter().filter(|o| o.failed.is_none()).count() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_messages_are_bounded_and_the_oldest_are_forgotten_first() {
        let dir = tempfile::tempdir().unwrap();
        let state = ClientState::open(dir.path()).unwrap();
        for n in 0..(MAX_FAILED as u8 + 3) {
            state
                .write(|t| {
                    let place = t.queue_outgoing(b"g", MessageId([n; 16]), n.into(), "x")?;
                    t.send_failed(place, "refused")
                })
                .unwrap();
        }
        let out = state.outbox().unwrap();
        assert_eq!(out.len(), MAX_FAILED);
        assert_eq!(out[0].id, MessageId([3; 16]), "the oldest went first");
    }

    #[test]
    fn the_outbox_keeps_its_order_and_a_failure_stays_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let state = ClientState::open(dir.path()).unwrap();
        let (a, b) = (MessageId([1; 16]), MessageId([2; 16]));
        let (mut pa, mut pb) = (0, 0);
        state
            .write(|t| {
                pa = t.queue_outgoing(b"g", a, 1, "first")?;
                pb = t.queue_outgoing(b"g", b, 2, "second")?;
                Ok(())
            })
            .unwrap();
        assert!(pa < pb);
        state.write(|t| t.send_failed(pb, "QUEUE_FULL")).unwrap();
        let out = state.outbox().unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].id, out[0].failed.clone()), (a, None));
        assert_eq!(
            (out[1].id, out[1].failed.clone()),
            (b, Some("QUEUE_FULL".into()))
        );
        state.write(|t| t.sent(pa)).unwrap();
        assert_eq!(state.outbox().unwrap().len(), 1);
        assert_eq!(
            state.outbox_waiting().unwrap(),
            0,
            "a refusal does not wait"
        );
        // Places never go back: a new message comes after the failed one.
        let mut pc = 0;
        state
            .write(|t| {
                pc = t.queue_outgoing(b"g", MessageId([3; 16]), 3, "third")?;
                Ok(())
            })
            .unwrap();
        assert!(pc > pb);
    }
}
