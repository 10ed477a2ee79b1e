//! Inbox actors under supervision and retirement: a panicking actor is replaced
//! from the store, idle actors stop, and through all of it seqs stay gap-free and
//! nothing acknowledged is lost. Real store, real writer, no network.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::start_inboxes;
use quicnprotochat_actors::DeliveryError;
use quicnprotochat_actors::core::inbox::InboxRefusal;
use quicnprotochat_actors::inbox::InboxRegistry;
use quicnprotochat_actors::store::StoreWriter;
use quicnprotochat_actors::store::{ServerStore, StoreOptions};
use quicnprotochat_wire::IdentityKey;

struct Rig {
    _dir: tempfile::TempDir,
    store: ServerStore,
    writer: StoreWriter,
    registry: InboxRegistry,
}

async fn rig(idle_after: Duration) -> Rig {
    rig_with(idle_after, 1_000_000).await
}

async fn rig_with(idle_after: Duration, live_actors: usize) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = ServerStore::open(&dir.path().join("node.redb"), StoreOptions::default()).unwrap();
    let (writer, _thread) = StoreWriter::start(store.clone()).unwrap();
    let registry = start_inboxes(&writer, idle_after, live_actors).await;
    Rig {
        _dir: dir,
        store,
        writer,
        registry,
    }
}

/// Enqueues, retrying while the inbox's actor restarts (as a client would).
async fn enqueue_retrying(registry: &InboxRegistry, inbox: IdentityKey, payload: Vec<u8>) -> u64 {
    for _ in 0..100 {
        match registry.enqueue(inbox, payload.clone()).await {
            Ok(seq) => return seq,
            Err(DeliveryError::Restarting) => tokio::task::yield_now().await,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    panic!("inbox never came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_inbox_actor_restarts_from_the_store_without_loss_or_gap() {
    let rig = rig(Duration::from_secs(60)).await;
    let inbox = IdentityKey([9; 32]);
    let mut seqs = BTreeSet::new();
    for i in 0..10u8 {
        seqs.insert(rig.registry.enqueue(inbox, vec![i]).await.unwrap());
    }

    // Crash while a burst of enqueues is in flight behind and around it.
    let burst = (0..50u8).map(|i| enqueue_retrying(&rig.registry, inbox, vec![100 + i]));
    let (_, burst_seqs) = tokio::join!(
        async {
            tokio::task::yield_now().await;
            rig.registry.crash(inbox).await.unwrap();
        },
        futures::future::join_all(burst)
    );
    seqs.extend(burst_seqs);
    // Wait for the supervisor to have seen the failure, then check.
    for _ in 0..100 {
        if rig.registry.restarts() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rig.registry.restarts(), 1);
    seqs.insert(
        rig.registry
            .enqueue(inbox, b"after".to_vec())
            .await
            .unwrap(),
    );

    assert_eq!(
        seqs,
        (1..=61).collect(),
        "gap-free, no reuse across the restart"
    );
    let stored = rig.store.fetch(&inbox, 0, 1000, usize::MAX).unwrap();
    assert_eq!(stored.len(), 61, "every acknowledged message is stored");
    assert_eq!(rig.store.inbox_meta(&inbox).unwrap().last_seq, 61);
    rig.registry.stop().await;
    rig.writer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_inbox_actors_stop_and_come_back_where_they_left_off() {
    let rig = rig(Duration::from_millis(300)).await;
    let inboxes: Vec<IdentityKey> = (0..20u8).map(|i| IdentityKey([i; 32])).collect();
    for inbox in &inboxes {
        assert_eq!(
            rig.registry.enqueue(*inbox, b"one".to_vec()).await.unwrap(),
            1
        );
    }
    assert!(
        rig.registry.live_actors().await > 0,
        "actors live while in use"
    );
    let mut live = usize::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        live = rig.registry.live_actors().await;
        if live == 0 {
            break;
        }
    }
    assert_eq!(live, 0, "idle actors stopped");
    for inbox in &inboxes {
        assert_eq!(
            rig.registry.enqueue(*inbox, b"two".to_vec()).await.unwrap(),
            2
        );
    }
    rig.registry.stop().await;
    rig.writer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retirement_racing_with_traffic_never_loses_or_repeats_a_seq() {
    // Actors retire after 1 ms of quiet while senders keep pausing for about that
    // long: retirement and new requests interleave as tightly as they can.
    let rig = rig(Duration::from_millis(1)).await;
    let inbox = IdentityKey([7; 32]);
    const ROUNDS: u64 = 3;
    let mut all: Vec<u64> = Vec::new();
    for round in 0..ROUNDS {
        let senders = (0..16u8).map(|s| {
            let registry = rig.registry.clone();
            async move {
                let mut seqs = Vec::new();
                for i in 0..40u8 {
                    // No actor fails here, so retirement must never cost a caller
                    // an error, not even a retryable one.
                    seqs.push(
                        registry
                            .enqueue(inbox, vec![s, i, round as u8])
                            .await
                            .expect("no error"),
                    );
                    tokio::time::sleep(Duration::from_micros(500 + 100 * u64::from(s))).await;
                }
                seqs
            }
        });
        all.extend(
            futures::future::join_all(senders)
                .await
                .into_iter()
                .flatten(),
        );
        // A quiet spell between rounds: the actor retires for certain at least
        // here (within a round, whether 1 ms of quiet occurs depends on the
        // machine's load), and the next round's first requests meet it retiring
        // or just gone.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "no seq handed out twice");
    assert_eq!(unique, (1..=640 * ROUNDS).collect());
    assert_eq!(rig.store.stored_count(&inbox).unwrap(), 640 * ROUNDS);
    eprintln!("retirements during the run: {}", rig.registry.retirements());
    assert!(
        rig.registry.retirements() > 0,
        "the run exercised retirement"
    );
    rig.registry.stop().await;
    rig.writer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_live_cap_idle_actors_retire_early_and_lose_nothing() {
    const CAP: usize = 10;
    // Idle retirement is an hour away: only pressure can retire anything here.
    let rig = rig_with(Duration::from_secs(3600), CAP).await;
    let inboxes: Vec<IdentityKey> = (0..200u8).map(|i| IdentityKey([i; 32])).collect();
    let mut high_water = 0;
    for inbox in &inboxes {
        assert_eq!(
            rig.registry.enqueue(*inbox, b"one".to_vec()).await.unwrap(),
            1
        );
        high_water = high_water.max(rig.registry.live_actors().await);
    }
    assert!(rig.registry.retirements() > 0, "pressure retired actors");
    // Retirement runs in the actors, after the spawn that asked for it: the
    // live count may overshoot by what is in flight, never grow with the
    // number of inboxes.
    assert!(
        high_water <= 4 * CAP,
        "live actors reached {high_water} for a cap of {CAP} over 200 inboxes"
    );
    // Every inbox comes back where it left off (seq 2, nothing lost).
    for inbox in &inboxes {
        assert_eq!(
            rig.registry.enqueue(*inbox, b"two".to_vec()).await.unwrap(),
            2
        );
        assert_eq!(rig.store.fetch(inbox, 0, 10, usize::MAX).unwrap().len(), 2);
    }
    rig.registry.stop().await;
    rig.writer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_holds_so_many_long_polls_and_refuses_more() {
    let rig = rig(Duration::from_secs(60)).await; // 2 long-polls per inbox
    let inbox = IdentityKey([7; 32]);
    let long = Duration::from_secs(30);
    let waits: Vec<_> = (0..3)
        .map(|_| {
            let r = rig.registry.clone();
            tokio::spawn(async move { r.wait(inbox, 0, long).await })
        })
        .collect();
    // Nothing arrives, so the first to finish is the one over the cap.
    let (first, _, rest) = futures::future::select_all(waits).await;
    let refused = first.unwrap().expect_err("a third long-poll is refused");
    assert!(
        matches!(
            refused,
            DeliveryError::Refused(InboxRefusal::TooManyWaiters { max: 2 })
        ),
        "{refused}"
    );
    // The two waiting ones are served as a message arrives.
    rig.registry.enqueue(inbox, b"m".to_vec()).await.unwrap();
    for w in rest {
        assert!(w.await.unwrap().unwrap());
    }
    // And with them gone, there is room again.
    rig.registry.enqueue(inbox, b"n".to_vec()).await.unwrap();
    assert!(rig.registry.wait(inbox, 1, long).await.unwrap());
    rig.registry.stop().await;
    rig.writer.shutdown().await;
}
