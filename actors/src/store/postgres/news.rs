//! What nodes sharing a database tell each other: which inboxes got messages
//! (to wake long-polls) and that accounts changed (to reload caches), as
//! PostgreSQL notifications sent inside the writing transaction, so only what
//! commits is told.

use futures::StreamExt;
use quicnprotochat_wire::IdentityKey;
use tokio_postgres::NoTls;

use super::{PgStore, pg};
use crate::store::StoreError;

/// The channel nodes tell each other what they wrote on.
pub(crate) const CHANNEL: &str = "qpc";
/// Notifications held for the node at most; past it new ones are dropped (a
/// long-poll they would have woken then ends by its timeout; fetches and acks
/// read the store anyway).
const NEWS_QUEUE: usize = 4096;

/// What another node wrote, as its notification tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    /// Messages were stored in this inbox.
    Inbox(IdentityKey),
    /// Accounts, devices or sessions changed.
    Accounts,
}

impl News {
    /// The notification's payload: kind, node, and the inbox in hex.
    pub(super) fn payload(&self, node_id: u64) -> String {
        match self {
            News::Inbox(k) => format!("i {node_id:016x} {}", hex(&k.0)),
            News::Accounts => format!("a {node_id:016x}"),
        }
    }

    /// The news in `payload`, unless this node sent it (or it is unreadable).
    fn parse(payload: &str, node_id: u64) -> Option<News> {
        let mut parts = payload.split(' ');
        let kind = parts.next()?;
        let from = u64::from_str_radix(parts.next()?, 16).ok()?;
        if from == node_id {
            return None;
        }
        match kind {
            "i" => {
                let h = parts.next()?;
                let mut key = [0u8; 32];
                if h.len() != 64 {
                    return None;
                }
                for (i, b) in key.iter_mut().enumerate() {
                    *b = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                Some(News::Inbox(IdentityKey(key)))
            }
            "a" => Some(News::Accounts),
            _ => None,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl PgStore {
    /// Listens for what other nodes write: a connection of its own that
    /// `LISTEN`s, its news forwarded to the returned queue (bounded; dropped
    /// when full). Ends when the connection does.
    pub async fn listen(&self) -> Result<tokio::sync::mpsc::Receiver<News>, StoreError> {
        let (client, mut connection) = self.config.connect(NoTls).await.map_err(pg)?;
        let (tx, rx) = tokio::sync::mpsc::channel(NEWS_QUEUE);
        let held = tx.clone();
        let node_id = self.node_id;
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        if let Some(news) = News::parse(n.payload(), node_id) {
                            let _ = tx.try_send(news);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "PostgreSQL listener connection ended");
                        break;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(pg)?;
        // Dropping the client would close the connection: a task holds it
        // until the node drops the queue.
        tokio::spawn(async move {
            held.closed().await;
            drop(client);
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_reaches_other_nodes_and_not_its_sender() {
        let inbox = News::Inbox(IdentityKey([0xab; 32]));
        for news in [inbox, News::Accounts] {
            let payload = news.payload(7);
            assert_eq!(News::parse(&payload, 8), Some(news.clone()), "{payload}");
            assert_eq!(News::parse(&payload, 7), None, "a node's own news");
        }
    }

    #[test]
    fn unreadable_news_is_ignored() {
        for payload in ["", "i", "i 07", "i 07 abcd", "x 07", "i zz 00", "a"] {
            assert_eq!(News::parse(payload, 8), None, "{payload:?}");
        }
    }
}
