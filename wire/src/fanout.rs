//! Envelopes the node makes: a shared body with one recipient's part, and the
//! missed-messages marker. Both ends read them, so their layout lives here (see
//! the "Fan-out envelopes" comment at the end of `schemas/node.capnp`).

use crate::error::{ErrorCode, WireError};

/// First byte of a shared-body envelope.
pub const SHARED: u8 = 0x02;
/// First byte of a missed-messages envelope.
pub const MISSED: u8 = 0x03;
/// Largest per-recipient part the node stores (an X-Wing-wrapped key is ~1.2 KB).
pub const MAX_PART: usize = 2048;
/// Most group ids one missed-messages envelope names (the count covers them all).
pub const MAX_MISSED_GROUPS: usize = 16;

/// What an inbox envelope is, by its first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// What a client enqueued for this inbox alone.
    Direct(&'a [u8]),
    /// A body shared by many recipients, with this recipient's part.
    Shared {
        /// This recipient's part (empty when the body needs none).
        part: &'a [u8],
        /// The shared body.
        body: &'a [u8],
    },
    /// Messages the node could not queue for this inbox (it was full).
    Missed(Missed),
}

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

    /// The envelope's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![MISSED];
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

    fn decode(mut rest: &[u8]) -> Result<Missed, WireError> {
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

/// The envelope one recipient of a shared body fetches.
pub fn compose_shared(part: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + part.len() + body.len());
    out.push(SHARED);
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
    out.extend_from_slice(body);
    out
}

/// Tells apart what an inbox envelope is.
pub fn parse(data: &[u8]) -> Result<Inbound<'_>, WireError> {
    match data.first() {
        Some(&SHARED) => {
            let bad = || WireError::new(ErrorCode::BadRequest, "malformed shared envelope");
            let len = data.get(1..5).ok_or_else(bad)?;
            let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
            let part = data.get(5..5usize.saturating_add(len)).ok_or_else(bad)?;
            Ok(Inbound::Shared {
                part,
                body: &data[5 + len..],
            })
        }
        Some(&MISSED) => Ok(Inbound::Missed(Missed::decode(&data[1..])?)),
        _ => Ok(Inbound::Direct(data)),
    }
}

/// Whether a client may enqueue `payload` for one inbox: the first bytes of the
/// node's own envelopes are reserved, so no client can forge one.
pub fn check_client_payload(payload: &[u8]) -> Result<(), WireError> {
    match payload.first() {
        Some(&b) if b == SHARED || b == MISSED => Err(WireError::new(
            ErrorCode::BadRequest,
            format!(
                "a payload may not start with byte 0x{b:02x}: it marks envelopes the node makes"
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn shared_envelopes_round_trip(part in proptest::collection::vec(any::<u8>(), 0..64), body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let data = compose_shared(&part, &body);
            prop_assert_eq!(parse(&data).unwrap(), Inbound::Shared { part: &part, body: &body });
        }

        #[test]
        fn missed_markers_round_trip(groups in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..30)) {
            let mut m = Missed::default();
            for g in &groups {
                m.add(g);
            }
            prop_assert_eq!(m.count, groups.len() as u64);
            prop_assert!(m.groups.len() <= MAX_MISSED_GROUPS);
            let bytes = m.encode();
            prop_assert_eq!(parse(&bytes).unwrap(), Inbound::Missed(m));
        }

        #[test]
        fn arbitrary_bytes_parse_or_refuse_without_panic(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse(&data);
        }
    }

    #[test]
    fn client_payloads_may_not_look_like_node_envelopes() {
        assert!(check_client_payload(&[SHARED, 0]).is_err());
        assert!(check_client_payload(&[MISSED]).is_err());
        assert!(check_client_payload(&[1, 2, 3]).is_ok());
        assert!(check_client_payload(&[]).is_ok());
    }
}
