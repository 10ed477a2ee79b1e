//! What calls may hold at once: a count and a byte budget per connection, and a
//! byte budget for the whole node.
//!
//! A call's request (and the payload copies made from it) stays in memory until
//! the call is answered, which for a durable write means until the disk has
//! committed it. Without a budget a client that pipelines writes faster than the
//! disk syncs grows the node's memory without limit (measured: 4 connections with
//! 128 calls of 1 MiB each in flight took a node to 2 GB). With it, a call over
//! budget is refused at once with a retry hint, and memory held by calls stays
//! below `max_bytes_in_flight` plus one request per connection being refused.
//!
//! A [`CallPermit`] is the right to hold one call's bytes; dropping it gives
//! them back. No clocks, no I/O: property tests drive this directly.
//!
//! Replies are counted too. A call's permit ends when the call returns, but its
//! reply then waits in capnp-rpc's outgoing queue until the peer's flow control
//! lets it out: a client that holds many long-polls and never reads would make
//! the node hold every woken reply (measured: 16 sessions × 8 `fetchWait` woken by
//! 4 MiB each took a node from 65 to 702 MiB per connection). So a large reply
//! reserves its bytes before it is built ([`ConnectionBudget::reserve_reply`]) and
//! gives them back as the connection's stream takes them
//! ([`ConnectionBudget::replies_written`]) or when the connection ends; a reply
//! over the connection's or the node's budget is refused instead (its messages
//! stay stored: a fetch is not destructive).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The caps, with sane defaults for one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Calls one connection may have in flight (answered not yet).
    pub calls_per_connection: u32,
    /// Request bytes one connection's calls in flight may hold.
    pub bytes_per_connection: u64,
    /// Request bytes all calls in flight together may hold, replies waiting to
    /// be written included.
    pub bytes_per_node: u64,
    /// Reply bytes one connection may have waiting to be written.
    pub reply_bytes_per_connection: u64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            calls_per_connection: 128,
            bytes_per_connection: 16 * 1024 * 1024,
            bytes_per_node: 256 * 1024 * 1024,
            reply_bytes_per_connection: 16 * 1024 * 1024,
        }
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    /// This connection has too many calls in flight: the caller's doing.
    #[error("too many calls in flight on this connection (at most {max}); retry after a reply")]
    Calls {
        /// The cap.
        max: u32,
    },
    /// This connection's calls hold too many bytes: the caller's doing.
    #[error(
        "calls in flight on this connection hold {held} bytes, at most {max} allowed; retry after a reply"
    )]
    ConnectionBytes {
        /// Bytes held now.
        held: u64,
        /// The cap.
        max: u64,
    },
    /// This connection's replies wait unread: the caller's doing (it does not
    /// read what it asked for).
    #[error(
        "{queued} reply bytes wait unread on this connection, at most {max} allowed; read the \
         replies, then retry"
    )]
    UnreadReplies {
        /// Reply bytes waiting now.
        queued: u64,
        /// The cap.
        max: u64,
    },
    /// The connection is over: nothing more goes out on it.
    #[error("the connection is closed")]
    Closed,
    /// The node as a whole holds too many bytes in calls: load, nobody's fault.
    #[error("the node is busy ({held} bytes in flight); retry shortly")]
    NodeBytes {
        /// Bytes held now, all connections.
        held: u64,
    },
}

/// The node-wide budget. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct NodeBudget {
    inner: Arc<NodeInner>,
}

#[derive(Debug)]
struct NodeInner {
    config: BudgetConfig,
    bytes: AtomicU64,
    /// Of `bytes`, those of replies waiting to be written.
    replies: AtomicU64,
    /// The most bytes ever held at once (for tests and metrics).
    peak: AtomicU64,
    refused: AtomicU64,
}

impl NodeBudget {
    /// A budget with these caps and nothing held.
    pub fn new(config: BudgetConfig) -> NodeBudget {
        NodeBudget {
            inner: Arc::new(NodeInner {
                config,
                bytes: AtomicU64::new(0),
                replies: AtomicU64::new(0),
                peak: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// The caps.
    pub fn config(&self) -> BudgetConfig {
        self.inner.config
    }

    /// A budget for one new connection.
    pub fn connection(&self) -> ConnectionBudget {
        ConnectionBudget {
            node: self.clone(),
            held: Arc::new(Mutex::new(Held::default())),
        }
    }

    /// Bytes held by calls in flight now.
    pub fn bytes_in_flight(&self) -> u64 {
        self.inner.bytes.load(Ordering::Acquire)
    }

    /// Bytes of replies waiting to be written, all connections.
    pub fn reply_bytes_queued(&self) -> u64 {
        self.inner.replies.load(Ordering::Acquire)
    }

    /// The most bytes calls ever held at once.
    pub fn peak_bytes_in_flight(&self) -> u64 {
        self.inner.peak.load(Ordering::Acquire)
    }

    /// Calls refused for being over a budget, since the node started.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the node's budget, or refuses.
    fn take(&self, bytes: u64) -> Result<(), OverBudget> {
        let max = self.inner.config.bytes_per_node;
        let mut current = self.inner.bytes.load(Ordering::Acquire);
        loop {
            // A single request larger than the whole budget could never pass;
            // it is let through alone (the reader limits bound its size).
            if current > 0 && current.saturating_add(bytes) > max {
                return Err(OverBudget::NodeBytes { held: current });
            }
            match self.inner.bytes.compare_exchange_weak(
                current,
                current + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.inner.peak.fetch_max(current + bytes, Ordering::AcqRel);
                    return Ok(());
                }
                Err(now) => current = now,
            }
        }
    }

    fn give_back(&self, bytes: u64) {
        self.inner.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

#[derive(Debug, Default)]
struct Held {
    calls: u32,
    bytes: u64,
    /// Reply bytes reserved and not yet written.
    replies: u64,
    /// The connection's writer is gone: nothing reserved now would be written.
    closed: bool,
}

/// One connection's budget. Cheap to clone (shared by its capabilities).
#[derive(Debug, Clone)]
pub struct ConnectionBudget {
    node: NodeBudget,
    held: Arc<Mutex<Held>>,
}

impl ConnectionBudget {
    /// Admits one call whose request is `bytes` long, or refuses it; the permit
    /// holds the call's share until dropped.
    pub fn admit(&self, bytes: u64) -> Result<CallPermit, OverBudget> {
        let r = self.try_admit(bytes);
        if r.is_err() {
            self.node.inner.refused.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn try_admit(&self, bytes: u64) -> Result<CallPermit, OverBudget> {
        let config = self.node.inner.config;
        let mut held = self.held.lock().expect("budget lock");
        if held.calls >= config.calls_per_connection {
            return Err(OverBudget::Calls {
                max: config.calls_per_connection,
            });
        }
        // As for the node: one request alone always fits.
        if held.calls > 0 && held.bytes.saturating_add(bytes) > config.bytes_per_connection {
            return Err(OverBudget::ConnectionBytes {
                held: held.bytes,
                max: config.bytes_per_connection,
            });
        }
        self.node.take(bytes)?;
        held.calls += 1;
        held.bytes += bytes;
        Ok(CallPermit {
            budget: self.clone(),
            bytes,
        })
    }

    /// Calls and bytes this connection holds now.
    pub fn in_flight(&self) -> (u32, u64) {
        let held = self.held.lock().expect("budget lock");
        (held.calls, held.bytes)
    }

    /// Whether a reply could be reserved now at all: refused as
    /// [`ConnectionBudget::reserve_reply`] would refuse any reply, so that a
    /// call whose answer cannot be sent does not read it first (a woken
    /// long-poll reads up to 4 MiB from the store).
    pub fn check_reply_room(&self) -> Result<(), OverBudget> {
        let max = self.node.inner.config.reply_bytes_per_connection;
        let held = self.held.lock().expect("budget lock");
        if held.closed {
            return Err(OverBudget::Closed);
        }
        if held.replies >= max {
            self.node.inner.refused.fetch_add(1, Ordering::Relaxed);
            return Err(OverBudget::UnreadReplies {
                queued: held.replies,
                max,
            });
        }
        Ok(())
    }

    /// Reserves `bytes` for a reply about to be built, until the stream takes
    /// them ([`ConnectionBudget::replies_written`]); refused when the
    /// connection's unread replies or the node's bytes are over budget. As for
    /// requests, one reply alone always fits the connection's budget.
    pub fn reserve_reply(&self, bytes: u64) -> Result<(), OverBudget> {
        let max = self.node.inner.config.reply_bytes_per_connection;
        let mut held = self.held.lock().expect("budget lock");
        let r = if held.closed {
            Err(OverBudget::Closed)
        } else if held.replies > 0 && held.replies.saturating_add(bytes) > max {
            Err(OverBudget::UnreadReplies {
                queued: held.replies,
                max,
            })
        } else {
            self.node.take(bytes)
        };
        match r {
            Ok(()) => {
                held.replies += bytes;
                self.node.inner.replies.fetch_add(bytes, Ordering::AcqRel);
            }
            Err(_) => {
                self.node.inner.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    /// The connection's stream took `bytes`: that much of the reserved replies
    /// is gone from memory. (Small replies are not reserved, so what is
    /// written may exceed what was; the count stops at zero.)
    pub fn replies_written(&self, bytes: u64) {
        let mut held = self.held.lock().expect("budget lock");
        let freed = bytes.min(held.replies);
        held.replies -= freed;
        drop(held);
        self.free_replies(freed);
    }

    /// The connection ended: whatever replies it had waiting are dropped.
    pub fn replies_dropped(&self) {
        let mut held = self.held.lock().expect("budget lock");
        held.closed = true;
        let freed = std::mem::take(&mut held.replies);
        drop(held);
        self.free_replies(freed);
    }

    fn free_replies(&self, bytes: u64) {
        if bytes > 0 {
            self.node.inner.replies.fetch_sub(bytes, Ordering::AcqRel);
            self.node.give_back(bytes);
        }
    }

    /// Whether the connection's writer is gone (what works for the connection
    /// in the background, like a push, stops).
    pub fn is_closed(&self) -> bool {
        self.held.lock().expect("budget lock").closed
    }

    /// Reply bytes reserved on this connection and not yet written.
    pub fn replies_queued(&self) -> u64 {
        self.held.lock().expect("budget lock").replies
    }
}

/// One admitted call's share of the budgets; given back on drop.
#[derive(Debug)]
pub struct CallPermit {
    budget: ConnectionBudget,
    bytes: u64,
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        {
            let mut held = self.budget.held.lock().expect("budget lock");
            held.calls -= 1;
            held.bytes -= self.bytes;
        }
        self.budget.node.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> BudgetConfig {
        BudgetConfig {
            calls_per_connection: 3,
            bytes_per_connection: 100,
            bytes_per_node: 150,
            reply_bytes_per_connection: 60,
        }
    }

    #[test]
    fn unread_replies_count_until_written_and_past_the_cap_are_refused() {
        let node = NodeBudget::new(small());
        let c = node.connection();
        c.reserve_reply(40).unwrap();
        assert!(matches!(
            c.reserve_reply(30).unwrap_err(),
            OverBudget::UnreadReplies {
                queued: 40,
                max: 60
            }
        ));
        c.reserve_reply(20).expect("fits exactly");
        assert_eq!(node.reply_bytes_queued(), 60);
        assert_eq!(node.bytes_in_flight(), 60, "replies hold node bytes too");
        c.replies_written(50);
        assert_eq!(c.replies_queued(), 10);
        c.reserve_reply(50).expect("room again once written");
        // More written than reserved (small replies are not reserved): stops at 0.
        c.replies_written(1_000);
        assert_eq!((c.replies_queued(), node.bytes_in_flight()), (0, 0));
    }

    #[test]
    fn a_connections_unread_replies_go_with_it_and_the_node_budget_binds_them_all() {
        let node = NodeBudget::new(small());
        let (c1, c2, c3) = (node.connection(), node.connection(), node.connection());
        c1.reserve_reply(60).unwrap();
        c2.reserve_reply(60).unwrap();
        assert!(matches!(
            c3.reserve_reply(60).unwrap_err(),
            OverBudget::NodeBytes { held: 120 }
        ));
        assert!(c3.admit(40).is_err(), "requests share the node's bytes");
        c1.replies_dropped();
        assert_eq!(node.reply_bytes_queued(), 60);
        c3.reserve_reply(60).expect("c1's bytes came back");
    }

    #[test]
    fn a_closed_connection_reserves_nothing_more() {
        let node = NodeBudget::new(small());
        let c = node.connection();
        assert!(!c.is_closed());
        c.replies_dropped();
        assert!(c.is_closed());
        assert_eq!(c.reserve_reply(10).unwrap_err(), OverBudget::Closed);
        assert_eq!(
            node.reply_bytes_queued(),
            0,
            "nothing held for a gone writer"
        );
    }

    #[test]
    fn no_reply_is_read_for_a_connection_whose_unread_replies_fill_its_budget() {
        let node = NodeBudget::new(small());
        let c = node.connection();
        c.check_reply_room().expect("empty");
        c.reserve_reply(59).unwrap();
        c.check_reply_room().expect("one byte of room is room");
        c.reserve_reply(1).unwrap();
        assert!(matches!(
            c.check_reply_room().unwrap_err(),
            OverBudget::UnreadReplies {
                queued: 60,
                max: 60
            }
        ));
        c.replies_written(60);
        c.check_reply_room().expect("room once written");
        c.replies_dropped();
        assert_eq!(c.check_reply_room().unwrap_err(), OverBudget::Closed);
    }

    #[test]
    fn a_connection_gets_so_many_calls_and_bytes_and_no_more() {
        let node = NodeBudget::new(small());
        let c = node.connection();
        let a = c.admit(10).unwrap();
        let _b = c.admit(10).unwrap();
        let _c = c.admit(10).unwrap();
        assert_eq!(c.admit(1).unwrap_err(), OverBudget::Calls { max: 3 });
        drop(a);
        assert!(matches!(
            c.admit(90).unwrap_err(),
            OverBudget::ConnectionBytes { held: 20, max: 100 }
        ));
        c.admit(80).expect("fits exactly");
        assert_eq!(node.refused(), 2);
    }

    #[test]
    fn the_node_budget_is_shared_by_all_connections() {
        let node = NodeBudget::new(small());
        let (c1, c2) = (node.connection(), node.connection());
        let _a = c1.admit(100).unwrap();
        assert!(matches!(
            c2.admit(60).unwrap_err(),
            OverBudget::NodeBytes { held: 100 }
        ));
        let _b = c2.admit(50).unwrap();
        assert_eq!(node.bytes_in_flight(), 150);
    }

    #[test]
    fn one_request_larger_than_a_budget_still_passes_alone() {
        let node = NodeBudget::new(small());
        let c = node.connection();
        let big = c.admit(1_000).expect("alone, it passes");
        assert!(c.admit(1).is_err(), "but nothing beside it");
        drop(big);
        assert_eq!(node.bytes_in_flight(), 0);
    }

    proptest! {
        /// Whatever the order of admissions, releases, reply reservations and
        /// writes over several connections, what is held never exceeds the
        /// caps (beyond one oversized request alone) and everything is given
        /// back in the end.
        #[test]
        fn held_bytes_never_exceed_the_caps(
            ops in proptest::collection::vec((0usize..4, 0u64..80, 0u8..4), 1..200)
        ) {
            let config = small();
            let node = NodeBudget::new(config);
            let conns: Vec<_> = (0..4).map(|_| node.connection()).collect();
            let mut permits: Vec<Vec<CallPermit>> = (0..4).map(|_| Vec::new()).collect();
            for (c, bytes, op) in ops {
                match op {
                    0 if !permits[c].is_empty() => drop(permits[c].remove(0)),
                    1 => drop(conns[c].reserve_reply(bytes)),
                    2 => conns[c].replies_written(bytes),
                    _ => {
                        if let Ok(p) = conns[c].admit(bytes) {
                            permits[c].push(p);
                        }
                    }
                }
                for (i, conn) in conns.iter().enumerate() {
                    let (calls, held) = conn.in_flight();
                    prop_assert!(calls <= config.calls_per_connection);
                    prop_assert!(held <= config.bytes_per_connection);
                    prop_assert_eq!(calls as usize, permits[i].len());
                    // One reply alone may exceed the cap (bytes < 80).
                    prop_assert!(
                        conn.replies_queued() <= config.reply_bytes_per_connection.max(79)
                    );
                }
                prop_assert!(node.bytes_in_flight() <= config.bytes_per_node);
            }
            drop(permits);
            for conn in &conns {
                conn.replies_dropped();
            }
            prop_assert_eq!(node.bytes_in_flight(), 0);
            prop_assert_eq!(node.reply_bytes_queued(), 0);
            prop_assert!(node.peak_bytes_in_flight() <= config.bytes_per_node);
        }
    }
}
