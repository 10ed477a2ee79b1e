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
    /// Request bytes all calls in flight together may hold.
    pub bytes_per_node: u64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            calls_per_connection: 128,
            bytes_per_connection: 16 * 1024 * 1024,
            bytes_per_node: 256 * 1024 * 1024,
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
        }
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
        /// Whatever the order of admissions and releases over several
        /// connections, what is held never exceeds the caps (beyond one
        /// oversized request alone) and everything is given back in the end.
        #[test]
        fn held_bytes_never_exceed_the_caps(
            ops in proptest::collection::vec((0usize..4, 0u64..80, any::<bool>()), 1..200)
        ) {
            let config = small();
            let node = NodeBudget::new(config);
            let conns: Vec<_> = (0..4).map(|_| node.connection()).collect();
            let mut permits: Vec<Vec<CallPermit>> = (0..4).map(|_| Vec::new()).collect();
            for (c, bytes, release) in ops {
                if release && !permits[c].is_empty() {
                    permits[c].remove(0);
                } else if let Ok(p) = conns[c].admit(bytes) {
                    permits[c].push(p);
                }
                for (i, conn) in conns.iter().enumerate() {
                    let (calls, held) = conn.in_flight();
                    prop_assert!(calls <= config.calls_per_connection);
                    prop_assert!(held <= config.bytes_per_connection);
                    prop_assert_eq!(calls as usize, permits[i].len());
                }
                prop_assert!(node.bytes_in_flight() <= config.bytes_per_node);
            }
            drop(permits);
            prop_assert_eq!(node.bytes_in_flight(), 0);
            prop_assert!(node.peak_bytes_in_flight() <= config.bytes_per_node);
        }
    }
}
