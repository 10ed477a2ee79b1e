//! How many connections the node holds: in all, and per source address.
//!
//! Every open connection costs memory (QUIC state, buffers, an RPC system), so
//! their number is capped before the TLS handshake is even done; a cap per
//! address keeps one host from taking every slot. A refused connection costs
//! the node one small packet. A [`ConnectionSlot`] is the right to hold one open
//! connection; dropping it frees the slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The caps, with sane defaults for one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Connections open at once, in all.
    pub connections: u32,
    /// Connections open at once from one source address.
    pub connections_per_address: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            connections: 10_000,
            connections_per_address: 1_000,
        }
    }
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("the node holds {0} connections, its limit")]
    /// The node-wide cap (connections open now).
    Node(u32),
    #[error("{0} connections from this address are open, the limit")]
    /// The per-address cap (connections open now from that address).
    Address(u32),
}

impl Full {
    /// A label for metrics.
    pub fn cap(self) -> &'static str {
        match self {
            Full::Node(_) => "node",
            Full::Address(_) => "address",
        }
    }
}

#[derive(Debug, Default)]
struct Open {
    total: u32,
    /// Only addresses with a connection open: at most `connections` entries.
    per_address: HashMap<IpAddr, u32>,
}

/// The node's connection gate. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct ConnectionGate {
    config: AdmissionConfig,
    open: Arc<Mutex<Open>>,
}

impl ConnectionGate {
    /// A gate with these caps and no connection open.
    pub fn new(config: AdmissionConfig) -> ConnectionGate {
        ConnectionGate {
            config,
            open: Arc::default(),
        }
    }

    /// A slot for one more connection from `address`, or which cap is reached.
    pub fn admit(&self, address: IpAddr) -> Result<ConnectionSlot, Full> {
        let mut open = self.open.lock().expect("gate lock");
        if open.total >= self.config.connections {
            return Err(Full::Node(open.total));
        }
        let from_address = open.per_address.get(&address).copied().unwrap_or(0);
        if from_address >= self.config.connections_per_address {
            return Err(Full::Address(from_address));
        }
        open.total += 1;
        *open.per_address.entry(address).or_insert(0) += 1;
        Ok(ConnectionSlot {
            gate: self.clone(),
            address,
        })
    }

    /// Connections open now: in all, and how many addresses they come from.
    pub fn open(&self) -> (u32, usize) {
        let open = self.open.lock().expect("gate lock");
        (open.total, open.per_address.len())
    }
}

/// One open connection's slot; freed on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    gate: ConnectionGate,
    address: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().expect("gate lock");
        open.total -= 1;
        if let Some(n) = open.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.per_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_take_every_slot() {
        let gate = ConnectionGate::new(AdmissionConfig {
            connections: 4,
            connections_per_address: 2,
        });
        let a1 = gate.admit(ip("127.0.0.1")).unwrap();
        let _a2 = gate.admit(ip("127.0.0.1")).unwrap();
        assert_eq!(gate.admit(ip("127.0.0.1")).unwrap_err(), Full::Address(2));
        let _b1 = gate.admit(ip("127.0.0.2")).unwrap();
        let _b2 = gate.admit(ip("127.0.0.2")).unwrap();
        assert_eq!(gate.admit(ip("127.0.0.3")).unwrap_err(), Full::Node(4));
        drop(a1);
        gate.admit(ip("127.0.0.3")).expect("a freed slot is free");
    }

    #[test]
    fn closed_connections_leave_nothing_behind() {
        let gate = ConnectionGate::new(AdmissionConfig::default());
        let slots: Vec<_> = (0..100)
            .map(|i| gate.admit(ip(&format!("127.0.1.{i}"))).unwrap())
            .collect();
        assert_eq!(gate.open(), (100, 100));
        drop(slots);
        assert_eq!(gate.open(), (0, 0));
    }
}
