//! Fan-out by reference: a shared body is stored once, each recipient inbox gets
//! its own gap-free seq pointing at it, the body goes with the last ack (also
//! across a restart), a full inbox drops only its own copy and its owner is told,
//! and concurrent fan-outs never gap or reuse a seq. Real store, real writer,
//! real inbox actors; no network.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use quicnprotochat_actors::DeliveryError;
use quicnprotochat_actors::core::inbox::{Admission, InboxLimits, InboxRefusal};
use quicnprotochat_actors::inbox::{
    Delivery, InboxRegistry, InboxSettings, SharedBody, SharedRecipient,
};
use quicnprotochat_actors::store::StoreWriter;
use quicnprotochat_actors::store::{ServerStore, StoreOptions};
use quicnprotochat_wire::{IdentityKey, Inbound};

struct Rig {
    store: ServerStore,
    writer: StoreWriter,
    registry: InboxRegistry,
}

async fn rig(path: &Path, queue_limit: u64) -> Rig {
    // The previous rig's writer thread may still be letting go of the file.
    let mut store = None;
    for _ in 0..200 {
        match ServerStore::open(&path.join("node.redb"), StoreOptions::default()) {
            Ok(s) => {
                store = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let store = store.expect("the store reopens");
    let (writer, _thread) = StoreWriter::start(store.clone()).unwrap();
    let registry = InboxRegistry::start(
        writer.clone(),
        InboxSettings {
            limits: InboxLimits {
                queue_limit,
                max_payload: 64 * 1024,
            },
            idle_after: Duration::from_secs(60),
            long_polls: 2,
            live_actors: 1_000_000,
        },
    )
    .await
    .unwrap();
    Rig {
        store,
        writer,
        registry,
    }
}

impl Rig {
    async fn stop(self) {
        self.registry.stop().await;
        self.writer.shutdown().await;
    }
}

fn inbox(n: u8) -> IdentityKey {
    IdentityKey([n; 32])
}

fn shared(body: &[u8], to: &[(u8, &[u8])], admission: Admission) -> SharedBody {
    SharedBody {
        body: body.to_vec(),
        recipients: to
            .iter()
            .map(|(n, part)| SharedRecipient {
                inbox: inbox(*n),
                part: part.to_vec(),
                admission,
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_body_is_stored_once_and_deleted_after_the_last_ack_also_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let body = vec![7u8; 4096];
    {
        let rig = rig(dir.path(), 100).await;
        rig.registry
            .enqueue(inbox(1), b"before".to_vec())
            .await
            .unwrap();
        let outcomes = rig
            .registry
            .deliver_shared(
                b"group",
                vec![shared(
                    &body,
                    &[(1, b"p1"), (2, b""), (3, b"p3")],
                    Admission::Droppable,
                )],
                None,
            )
            .await
            .unwrap();
        assert_eq!(outcomes, vec![vec![Ok(2), Ok(1), Ok(1)]]);
        assert_eq!(rig.store.shared_bodies().unwrap(), (1, 4096), "one copy");
        // Each recipient fetches its own envelope: its part, then the body.
        for (n, part) in [(1u8, &b"p1"[..]), (2, b""), (3, b"p3")] {
            let envs = rig.store.fetch(&inbox(n), 0, 10, 1 << 20).unwrap();
            let last = envs.last().unwrap();
            assert_eq!(
                last.inbound().unwrap(),
                Inbound::Shared { part, body: &body }
            );
        }
        rig.registry.ack(inbox(1), 2).await.unwrap();
        rig.registry.ack(inbox(2), 1).await.unwrap();
        assert_eq!(
            rig.store.shared_bodies().unwrap(),
            (1, 4096),
            "one recipient left"
        );
        rig.stop().await;
    }
    // After a restart the last recipient still reads it, and its ack deletes it.
    let rig = rig(dir.path(), 100).await;
    let envs = rig.store.fetch(&inbox(3), 0, 10, 1 << 20).unwrap();
    assert_eq!(envs.len(), 1);
    assert!(matches!(envs[0].inbound(), Ok(Inbound::Shared { .. })));
    rig.registry.ack(inbox(3), 1).await.unwrap();
    assert_eq!(
        rig.store.shared_bodies().unwrap(),
        (0, 0),
        "gone with the last ack"
    );
    assert_eq!(rig.store.stored_total().unwrap(), 0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_drops_only_its_own_copy_and_its_owner_is_told_after_its_ack() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig(dir.path(), 3).await;
    for i in 0..3u8 {
        rig.registry.enqueue(inbox(1), vec![i]).await.unwrap();
    }
    for k in 0..3u8 {
        let outcomes = rig
            .registry
            .deliver_shared(
                b"team",
                vec![shared(&[k], &[(1, b""), (2, b"")], Admission::Droppable)],
                None,
            )
            .await
            .unwrap();
        assert!(
            matches!(outcomes[0][0], Err(InboxRefusal::QueueFull { .. })),
            "the full inbox refuses for itself"
        );
        assert_eq!(
            outcomes[0][1],
            Ok(u64::from(k) + 1),
            "the others are served"
        );
    }
    // A commit still reaches the full inbox (up to twice its limit).
    let outcomes = rig
        .registry
        .deliver_shared(
            b"team",
            vec![shared(
                b"commit",
                &[(1, b""), (2, b"")],
                Admission::Handshake,
            )],
            None,
        )
        .await
        .unwrap();
    assert_eq!(outcomes, vec![vec![Ok(4), Ok(4)]]);
    // The owner reads on; its ack makes room, and the marker follows.
    rig.registry.ack(inbox(1), 4).await.unwrap();
    let mut envs = Vec::new();
    for _ in 0..100 {
        envs = rig.store.fetch(&inbox(1), 4, 10, 1 << 20).unwrap();
        if !envs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(envs.len(), 1);
    assert_eq!(envs[0].seq, 5, "the marker takes the next seq: no gap");
    let Ok(Inbound::Missed(missed)) = envs[0].inbound() else {
        panic!("a missed-messages marker");
    };
    assert_eq!(missed.count, 3);
    assert_eq!(missed.groups, vec![b"team".to_vec()]);
    // Told once: later traffic is ordinary again.
    rig.registry.ack(inbox(1), 5).await.unwrap();
    let outcomes = rig
        .registry
        .deliver_shared(
            b"team",
            vec![shared(b"x", &[(1, b"")], Admission::Droppable)],
            None,
        )
        .await
        .unwrap();
    assert_eq!(outcomes, vec![vec![Ok(6)]]);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_survive_a_restart_and_are_still_told() {
    let dir = tempfile::tempdir().unwrap();
    {
        let rig = rig(dir.path(), 1).await;
        rig.registry.enqueue(inbox(1), vec![0]).await.unwrap();
        rig.registry
            .deliver_shared(
                b"g",
                vec![shared(b"m", &[(1, b"")], Admission::Droppable)],
                None,
            )
            .await
            .unwrap();
        rig.stop().await;
    }
    let rig = rig(dir.path(), 1).await;
    rig.registry.ack(inbox(1), 1).await.unwrap();
    let mut envs = Vec::new();
    for _ in 0..100 {
        envs = rig.store.fetch(&inbox(1), 1, 10, 1 << 20).unwrap();
        if !envs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Ok(Inbound::Missed(missed)) = envs[0].inbound() else {
        panic!("the drop is told after a restart: {envs:?}");
    };
    assert_eq!(missed.count, 1);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_cannot_reach_a_remaining_member_stores_nothing_and_names_the_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig(dir.path(), 1).await;
    rig.registry.enqueue(inbox(1), vec![0]).await.unwrap();
    rig.registry
        .deliver_shared(
            b"g",
            vec![shared(b"c1", &[(1, b"")], Admission::Handshake)],
            None,
        )
        .await
        .unwrap();
    let refused = rig
        .registry
        .deliver_shared(
            b"g",
            vec![shared(b"c2", &[(2, b""), (1, b"")], Admission::Handshake)],
            None,
        )
        .await;
    match refused {
        Err(DeliveryError::RefusedBy {
            inbox: who,
            refusal: InboxRefusal::QueueFull { .. },
        }) => assert_eq!(who, inbox(1)),
        other => panic!("expected a refusal naming inbox 1, got {other:?}"),
    }
    assert_eq!(
        rig.store.stored_count(&inbox(2)).unwrap(),
        0,
        "all or nothing"
    );
    // The abandoned reservation of inbox 2 is taken back: its next seq is 1.
    assert_eq!(rig.registry.enqueue(inbox(2), vec![1]).await.unwrap(), 1);
    rig.stop().await;
}

/// One step of the concurrent workload.
#[derive(Debug, Clone)]
enum Op {
    /// A group send to these inboxes.
    Shared(Vec<u8>),
    /// A commit-like all-or-nothing batch to these inboxes.
    Batch(Vec<u8>),
    /// One message to one inbox.
    Single(u8),
    /// The owner acks everything it has.
    AckAll(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let inboxes = proptest::collection::btree_set(0u8..6, 1..6)
        .prop_map(|s| s.into_iter().collect::<Vec<_>>());
    prop_oneof![
        inboxes.clone().prop_map(Op::Shared),
        inboxes.prop_map(Op::Batch),
        (0u8..6).prop_map(Op::Single),
        (0u8..6).prop_map(Op::AckAll),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Many fan-outs, batches, single enqueues and acks at once, across a
    /// restart: every seq an inbox answered is unique, the stored seqs of each
    /// inbox are exactly the answered ones not yet acked, with no gap.
    #[test]
    fn concurrent_fanout_never_gaps_or_reuses_a_seq(ops in proptest::collection::vec(op(), 1..40), queue_limit in 3u64..12) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let dir = tempfile::tempdir().unwrap();
            let mut answered: BTreeMap<u8, BTreeSet<u64>> = BTreeMap::new();
            for round in 0..2 {
                let rig = rig(dir.path(), queue_limit).await;
                let registry = rig.registry.clone();
                let tasks: Vec<_> = ops.iter().cloned().enumerate().map(|(i, op)| {
                    let registry = registry.clone();
                    let store = rig.store.clone();
                    tokio::spawn(async move {
                        let mut got: Vec<(u8, u64)> = Vec::new();
                        match op {
                            Op::Shared(to) => {
                                let body = shared(&[i as u8], &to.iter().map(|n| (*n, &b""[..])).collect::<Vec<_>>(), Admission::Droppable);
                                if let Ok(outcomes) = registry.deliver_shared(b"g", vec![body], None).await {
                                    for (n, o) in to.iter().zip(&outcomes[0]) {
                                        if let Ok(seq) = o {
                                            got.push((*n, *seq));
                                        }
                                    }
                                }
                            }
                            Op::Batch(to) => {
                                let deliveries = to.iter().map(|n| Delivery { recipient: inbox(*n), payload: vec![round] }).collect();
                                if let Ok(seqs) = registry.enqueue_many(deliveries, None).await {
                                    got.extend(to.iter().copied().zip(seqs));
                                }
                            }
                            Op::Single(n) => {
                                if let Ok(seq) = registry.enqueue(inbox(n), vec![round]).await {
                                    got.push((n, seq));
                                }
                            }
                            Op::AckAll(n) => {
                                let last = store.inbox_meta(&inbox(n)).unwrap().last_seq;
                                registry.ack(inbox(n), last).await.unwrap();
                            }
                        }
                        got
                    })
                }).collect();
                for t in tasks {
                    for (n, seq) in t.await.unwrap() {
                        assert!(answered.entry(n).or_default().insert(seq), "seq {seq} of inbox {n} answered twice");
                    }
                }
                for n in 0..6u8 {
                    let stored: BTreeSet<u64> = rig.store.fetch(&inbox(n), 0, 10_000, usize::MAX).unwrap().into_iter().map(|e| e.seq).collect();
                    let meta = rig.store.inbox_meta(&inbox(n)).unwrap();
                    let expected: BTreeSet<u64> = (meta.acked + 1..=meta.last_seq).collect();
                    assert_eq!(&stored, &expected, "inbox {n}: no gap between ack mark and last seq");
                    let mine = answered.get(&n).cloned().unwrap_or_default();
                    for seq in &stored {
                        // Markers are the node's own; everything else was answered.
                        let env = rig.store.fetch(&inbox(n), seq - 1, 1, usize::MAX).unwrap();
                        let marker = matches!(env[0].inbound(), Ok(Inbound::Missed(_)));
                        assert!(marker || mine.contains(seq), "inbox {n}: stored seq {seq} was never answered");
                    }
                    if let Some(max) = mine.iter().max() {
                        assert!(meta.last_seq >= *max, "an answered seq is durable");
                    }
                }
                // Acks of everything before the restart, so markers get a chance.
                for n in 0..6u8 {
                    let last = rig.store.inbox_meta(&inbox(n)).unwrap().last_seq;
                    rig.registry.ack(inbox(n), last).await.unwrap();
                }
                rig.stop().await;
            }
        });
    }
}
