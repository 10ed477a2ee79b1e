//! Supervision chaos: inbox and group actors made to panic at random moments
//! while senders enqueue and a committer moves a group's fence. Afterwards every
//! acknowledged message is stored with its seq, each inbox's seqs run without a
//! gap or a repeat, the fence moved exactly once per accepted commit, and once
//! the load stops every actor retires: none leaked.
//!
//! Seeded: `QPC_CHAOS_SEED=N` replays one run; a failure names its seed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Rng, inbox, seeds, start_groups, start_inboxes};
use quicnprotochat_actors::DeliveryError;
use quicnprotochat_actors::group::CommitError;
use quicnprotochat_actors::inbox::Delivery;
use quicnprotochat_actors::store::StoreWriter;
use quicnprotochat_actors::store::{ServerStore, StoreOptions};

const INBOXES: u8 = 4;
const SENDS_PER_INBOX: u32 = 60;
const COMMITS: u64 = 30;
const CRASHES: usize = 40;

/// Retries while the actor in the way is being replaced, as a client would.
async fn retrying<T, E: std::fmt::Debug>(
    mut attempt: impl AsyncFnMut() -> Result<T, E>,
    restarting: impl Fn(&E) -> bool,
) -> T {
    for _ in 0..1000 {
        match attempt().await {
            Ok(v) => return v,
            Err(e) if restarting(&e) => tokio::time::sleep(Duration::from_millis(1)).await,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    panic!("never came back");
}

async fn run(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = ServerStore::open(&dir.path().join("node.redb"), StoreOptions::default()).unwrap();
    let (writer, _thread) = StoreWriter::start(store.clone()).unwrap();
    let idle_after = Duration::from_millis(150);
    let inboxes = start_inboxes(&writer, idle_after, 1_000).await;
    let groups = start_groups(&inboxes, &writer, idle_after, 100).await;
    let gid = b"chaos".to_vec();
    let members: BTreeSet<[u8; 32]> = (0..INBOXES).map(|i| inbox(i).0).collect();
    let done = Arc::new(AtomicBool::new(false));

    // Senders: each inbox gets SENDS_PER_INBOX messages, acked one by one.
    let senders = (0..INBOXES).map(|i| {
        let inboxes = inboxes.clone();
        async move {
            let mut acked = BTreeMap::new();
            for n in 0..SENDS_PER_INBOX {
                let payload = format!("{i}:{n}").into_bytes();
                let seq = retrying(
                    async || inboxes.enqueue(inbox(i), payload.clone()).await,
                    |e| matches!(e, DeliveryError::Restarting),
                )
                .await;
                acked.insert(seq, payload);
            }
            (i, acked)
        }
    });
    // The committer: one commit per epoch, by member 0, to every other member.
    let committer = {
        let groups = groups.clone();
        let (gid, members) = (gid.clone(), members.clone());
        async move {
            let mut delivered = Vec::new();
            for epoch in 0..COMMITS {
                let deliveries: Vec<Delivery> = (1..INBOXES)
                    .map(|i| Delivery {
                        recipient: inbox(i),
                        payload: format!("commit {epoch}").into_bytes(),
                    })
                    .collect();
                let seqs = retrying(
                    async || {
                        let deliveries = deliveries
                            .iter()
                            .map(|d| Delivery {
                                recipient: d.recipient,
                                payload: d.payload.clone(),
                            })
                            .collect();
                        groups
                            .commit(&gid, epoch, inbox(0), members.clone(), deliveries)
                            .await
                    },
                    |e| matches!(e, CommitError::Delivery(DeliveryError::Restarting)),
                )
                .await;
                for (i, seq) in (1..INBOXES).zip(seqs) {
                    delivered.push((i, seq, format!("commit {epoch}").into_bytes()));
                }
            }
            delivered
        }
    };
    // Chaos: panics at random moments, to random inbox actors and the group's.
    let chaos = {
        let (inboxes, groups, gid, done) =
            (inboxes.clone(), groups.clone(), gid.clone(), done.clone());
        async move {
            let mut rng = Rng::seeded(seed);
            let mut crashes = 0;
            while crashes < CRASHES && !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_micros(200 + rng.next() % 2_000)).await;
                let target = rng.next() % (INBOXES as u64 + 1);
                let _ = if target == INBOXES as u64 {
                    groups.crash(&gid).await
                } else {
                    inboxes.crash(inbox(target as u8)).await
                };
                crashes += 1;
            }
            crashes
        }
    };
    let (sent, committed, crashes) =
        tokio::join!(futures::future::join_all(senders), committer, chaos);
    done.store(true, Ordering::Relaxed);

    // Every acknowledged message is stored under its seq; seqs are gap-free.
    let mut expected: BTreeMap<u8, BTreeMap<u64, Vec<u8>>> = sent.into_iter().collect();
    for (i, seq, payload) in committed {
        let prior = expected.get_mut(&i).unwrap().insert(seq, payload);
        assert!(
            prior.is_none(),
            "seed {seed}: seq {seq} of inbox {i} given twice"
        );
    }
    for (i, acked) in &expected {
        let stored: BTreeMap<u64, Vec<u8>> = store
            .fetch(&inbox(*i), 0, 100_000, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| (e.seq, e.data))
            .collect();
        assert_eq!(
            &stored, acked,
            "seed {seed}: inbox {i} holds exactly what was acked"
        );
        let seqs: Vec<u64> = stored.keys().copied().collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "seed {seed}: inbox {i} seqs gap-free"
        );
    }
    // The fence moved once per accepted commit: the next epoch is COMMITS.
    let stale = groups
        .commit(&gid, COMMITS - 1, inbox(0), members.clone(), Vec::new())
        .await;
    assert!(
        matches!(stale, Err(CommitError::Fence(_))),
        "seed {seed}: {stale:?}"
    );
    let restarts = inboxes.restarts() + groups.restarts();
    assert!(
        restarts > 0,
        "seed {seed}: the chaos hit nothing ({crashes} crashes)"
    );

    // No actor leaks: with the load gone, every one retires.
    let mut live = (usize::MAX, usize::MAX);
    for _ in 0..200 {
        live = (inboxes.live_actors().await, groups.live_actors().await);
        if live == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        live,
        (0, 0),
        "seed {seed}: actors left alive after the load"
    );
    eprintln!("seed {seed}: {crashes} crashes, {restarts} restarts, nothing lost");
    groups.stop().await;
    inboxes.stop().await;
    writer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_actor_panics_under_load_lose_nothing_acknowledged_and_leak_no_actor() {
    for seed in seeds("QPC_CHAOS_SEED", 1..=3) {
        run(seed).await;
    }
}
