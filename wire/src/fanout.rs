//! What the node makes of group fan-out: the missed-messages note of a full inbox
//! (the `missed` envelope kind of `schemas/node.capnp`) and the limits of shared
//! bodies' parts.

use crate::error::{ErrorCode, WireError};

/// Largest per-recipient part the node stores (an X-Wing-wrapped key is ~1.2 KB).
pub const MAX_PART: usize = 2048;
/// Most group ids one missed-messages envelope names (the count covers them all).
pub const MAX_MISSED_GROUPS: usize = 16;

/// What a missed-messages envelope says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Missed {
    /// How many messages were dropped.
    pub count: u64,
    /// The groups they were for (at most [`MAX_MISSED_GROUPS`]).
    pub groups: Vec<Vec<u8>>,
}

impl Missed {
    /// Counts one more dropped message of `group`.
    pub fn add(&mut self, group: &[u8]) {
        self.count = self.count.saturating_add(1);
        if self.groups.len() < MAX_MISSED_GROUPS && !self.groups.iter().any(|g| g == group) {
            self.groups.push(group.to_vec());
        }
    }

    /// The note's bytes (the `data` of a `missed` envelope).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.count.to_be_bytes());
        let groups = &self.groups[..self.groups.len().min(MAX_MISSED_GROUPS)];
        out.extend_from_slice(&(groups.len() as u16).to_be_bytes());
        for g in groups {
            let g = &g[..g.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(g.len() as u16).to_be_bytes());
            out.extend_from_slice(g);
        }
        out
    }

    /// Reads a note; anything else is a typed error.
    pub fn decode(mut rest: &[u8]) -> Result<Missed, WireError> {
        let bad = || WireError::new(ErrorCode::BadRequest, "malformed missed-messages envelope");
        let mut take = |n: usize| -> Result<&[u8], WireError> {
            if rest.len() < n {
                return Err(bad());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let count = u64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
        let n = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        if n > MAX_MISSED_GROUPS {
            return Err(bad());
        }
        let mut groups = Vec::with_capacity(n);
        for _ in 0..n {
            let len = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
            groups.push(take(len)?.to_vec());
        }
        if !rest.is_empty() {
            return Err(bad());
        }
        Ok(Missed { count, groups })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn missed_notes_round_trip(groups in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..30)) {
            let mut m = Missed::default();
            for g in &groups {
                m.add(g);
            }
            prop_assert_eq!(m.count, groups.len() as u64);
            prop_assert!(m.groups.len() <= MAX_MISSED_GROUPS);
            prop_assert_eq!(Missed::decode(&m.encode()).unwrap(), m);
        }

        #[test]
        fn arbitrary_bytes_decode_or_refuse_without_panic(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Missed::decode(&data);
        }
    }
}
