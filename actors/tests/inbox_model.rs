//! Property test: the inbox state machine together with the real redb store behaves
//! like a plain in-memory model, under random enqueue / fetch / ack / restart
//! sequences over a few inboxes.

use std::collections::BTreeMap;

use proptest::prelude::*;
use quicnprotochat_actors::core::inbox::{AckPlan, InboxLimits, InboxRefusal, InboxState};
use quicnprotochat_actors::store::server::WriteBatch;
use quicnprotochat_actors::store::{ServerStore, StoreOptions};
use quicnprotochat_wire::IdentityKey;

const LIMITS: InboxLimits = InboxLimits {
    queue_limit: 6,
    max_payload: 24,
};
const INBOXES: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        inbox: usize,
        len: usize,
    },
    Fetch {
        inbox: usize,
        after: u64,
        limit: usize,
    },
    Ack {
        inbox: usize,
        up_to: u64,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..INBOXES, 0usize..30).prop_map(|(inbox, len)| Op::Enqueue { inbox, len }),
        2 => (0..INBOXES, 0u64..20, 1usize..8)
            .prop_map(|(inbox, after, limit)| Op::Fetch { inbox, after, limit }),
        2 => (0..INBOXES, 0u64..20).prop_map(|(inbox, up_to)| Op::Ack { inbox, up_to }),
        1 => Just(Op::Restart),
    ]
}

/// The model: what an inbox should hold.
#[derive(Default, Clone)]
struct ModelInbox {
    last_seq: u64,
    acked: u64,
    messages: BTreeMap<u64, Vec<u8>>,
}

fn inbox_key(i: usize) -> IdentityKey {
    IdentityKey([i as u8 + 1; 32])
}

fn write<T>(store: &ServerStore, f: impl FnOnce(&mut WriteBatch<'_>) -> T) -> T {
    let txn = store.begin_write_for_tests().unwrap();
    let out;
    {
        let mut batch = WriteBatch::open(&txn).unwrap();
        out = f(&mut batch);
        batch.finish().unwrap();
    }
    txn.commit().unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn store_and_state_machine_match_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let options = StoreOptions { durable: true, two_phase_commit: false, ..StoreOptions::default() };
        let mut store = ServerStore::open(&path, options).unwrap();
        let mut states: Vec<InboxState> = (0..INBOXES)
            .map(|i| InboxState::recovered(store.inbox_meta(&inbox_key(i)).unwrap()))
            .collect();
        let mut model = vec![ModelInbox::default(); INBOXES];
        let mut counter = 0u8;

        for op in ops {
            match op {
                Op::Enqueue { inbox, len } => {
                    counter = counter.wrapping_add(1);
                    let payload = vec![counter; len];
                    let m = &mut model[inbox];
                    let expected = if len > LIMITS.max_payload {
                        Err("too large")
                    } else if m.last_seq - m.acked >= LIMITS.queue_limit {
                        Err("full")
                    } else {
                        Ok(m.last_seq + 1)
                    };
                    let got = states[inbox].admit(len, LIMITS);
                    match (&expected, &got) {
                        (Ok(e), Ok(g)) => {
                            prop_assert_eq!(e, g);
                            write(&store, |b| b.append(&inbox_key(inbox), *g, &payload)).unwrap();
                            states[inbox].mark_durable(*g);
                            m.last_seq = *g;
                            m.messages.insert(*g, payload);
                        }
                        (Err("too large"), Err(InboxRefusal::TooLarge { .. })) => {}
                        (Err("full"), Err(InboxRefusal::QueueFull { .. })) => {}
                        _ => prop_assert!(false, "enqueue: expected {:?}, got {:?}", expected, got),
                    }
                }
                Op::Fetch { inbox, after, limit } => {
                    let got = store.fetch(&inbox_key(inbox), after, limit, usize::MAX).unwrap();
                    let want: Vec<(u64, Vec<u8>)> = model[inbox]
                        .messages
                        .range(after + 1..)
                        .take(limit)
                        .map(|(s, d)| (*s, d.clone()))
                        .collect();
                    let got: Vec<(u64, Vec<u8>)> = got.into_iter().map(|e| (e.seq, e.data)).collect();
                    prop_assert_eq!(got, want);
                }
                Op::Ack { inbox, up_to } => {
                    let m = &mut model[inbox];
                    let got = states[inbox].ack(up_to);
                    if up_to > m.last_seq {
                        prop_assert!(matches!(got, Err(InboxRefusal::AckBeyondEnd { .. })), "{:?}", got);
                    } else {
                        match got.unwrap() {
                            AckPlan::Delete(r) => {
                                prop_assert_eq!(r.from, m.acked + 1);
                                write(&store, |b| b.ack(&inbox_key(inbox), r.to)).unwrap();
                                states[inbox].mark_ack_durable(r.to);
                            }
                            // Every deletion here is committed at once.
                            AckPlan::Done => prop_assert!(up_to <= m.acked),
                            AckPlan::AfterInFlight => prop_assert!(false, "nothing is in flight"),
                        }
                        m.acked = m.acked.max(up_to);
                        m.messages.retain(|s, _| *s > up_to);
                    }
                }
                Op::Restart => {
                    drop(store);
                    store = ServerStore::open(&path, options).unwrap();
                    for (i, state) in states.iter_mut().enumerate() {
                        *state = InboxState::recovered(store.inbox_meta(&inbox_key(i)).unwrap());
                    }
                }
            }
            for (i, m) in model.iter().enumerate() {
                prop_assert_eq!(states[i].assigned(), m.last_seq);
                prop_assert_eq!(states[i].depth(), m.last_seq - m.acked);
                prop_assert_eq!(store.stored_count(&inbox_key(i)).unwrap(), m.messages.len() as u64);
            }
        }
    }
}
