//! The delivery guarantees of docs/semantics.md, against a real in-process node:
//! seq assignment, durability across restarts, non-destructive fetch, ack,
//! long-poll, and actor restarts.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use quicnprotochat_crypto::Identity;
use quicnprotochat_tests::{TestNode, local};
use quicnprotochat_wire::{ErrorCode, IdentityKey};

fn key(id: &Identity) -> IdentityKey {
    IdentityKey(id.public_key())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_get_gap_free_seqs_that_survive_restart_until_acked() {
    const SENDERS: usize = 64;
    const PER_SENDER: usize = 4;
    const N: u64 = (SENDERS * PER_SENDER) as u64;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let bob = Identity::generate();

    // 64 senders, each on its own connection, all enqueuing into bob's inbox at once.
    let sent: Vec<(u64, Vec<u8>)> = local(async {
        let mut tasks = Vec::new();
        for s in 0..SENDERS {
            let node = &node;
            let bob = key(&bob);
            tasks.push(async move {
                let (_conn, session) = node.session(&Identity::generate()).await;
                let sends = (0..PER_SENDER).map(|i| {
                    let session = session.clone();
                    async move {
                        let payload = format!("sender {s} message {i}").into_bytes();
                        let seq = session.enqueue(&bob, &payload).await.expect("enqueue");
                        (seq, payload)
                    }
                });
                futures::future::join_all(sends).await
            });
        }
        futures::future::join_all(tasks)
            .await
            .into_iter()
            .flatten()
            .collect()
    })
    .await;

    let seqs: BTreeSet<u64> = sent.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs.len() as u64, N, "no seq handed out twice");
    assert_eq!(seqs, (1..=N).collect(), "seqs are exactly 1..=N");

    let node = node.restart().await;
    local(async {
        let (_conn, bob_session) = node.session(&bob).await;
        let all = bob_session.fetch(0, 0).await.unwrap();
        assert_eq!(
            all.len() as u64,
            N,
            "every acknowledged message survived the restart"
        );
        for (seq, payload) in &sent {
            assert_eq!(
                &all[(*seq - 1) as usize].data,
                payload,
                "seq {seq} holds what was sent"
            );
        }
        // The next seq continues where the last one stopped.
        let (_c, other) = node.session(&Identity::generate()).await;
        assert_eq!(
            other.enqueue(&key(&bob), b"after restart").await.unwrap(),
            N + 1
        );

        // Fetch is not destructive.
        assert_eq!(bob_session.fetch(0, 0).await.unwrap().len() as u64, N + 1);
        assert_eq!(bob_session.fetch(N - 1, 0).await.unwrap().len(), 2);

        bob_session.ack(N).await.unwrap();
        let rest = bob_session.fetch(0, 0).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].seq, N + 1);
    })
    .await;

    // Acked messages stay gone after a restart, and seqs never go back.
    let node = node.restart().await;
    local(async {
        let (_conn, bob_session) = node.session(&bob).await;
        let rest = bob_session.fetch(0, 0).await.unwrap();
        assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![N + 1]);
        bob_session.ack(N + 1).await.unwrap();
        assert!(bob_session.fetch(0, 0).await.unwrap().is_empty());
        let (_c, other) = node.session(&Identity::generate()).await;
        assert_eq!(other.enqueue(&key(&bob), b"x").await.unwrap(), N + 2);
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_respects_after_and_limit_and_acks_are_idempotent_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let me = Identity::generate();
        let (_conn, s) = node.session(&me).await;
        for i in 1..=5u64 {
            assert_eq!(s.enqueue(&key(&me), &[i as u8]).await.unwrap(), i);
        }
        let page = s.fetch(1, 2).await.unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert!(s.fetch(5, 0).await.unwrap().is_empty());

        let beyond = s.ack(6).await.unwrap_err();
        assert_eq!(beyond.code(), Some(ErrorCode::BadRequest), "{beyond}");
        assert_eq!(
            s.fetch(0, 0).await.unwrap().len(),
            5,
            "a refused ack deletes nothing"
        );

        s.ack(3).await.unwrap();
        s.ack(2).await.unwrap();
        s.ack(3).await.unwrap();
        assert_eq!(
            s.fetch(0, 0)
                .await
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            vec![4, 5]
        );
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_wait_returns_at_once_waits_for_arrivals_and_times_out_empty() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let bob = Identity::generate();
        let (_c1, bob_s) = node.session(&bob).await;
        let (_c2, alice_s) = node.session(&Identity::generate()).await;

        let start = Instant::now();
        let none = bob_s
            .fetch_wait(0, 0, Duration::from_millis(200))
            .await
            .unwrap();
        assert!(none.is_empty());
        assert!(start.elapsed() >= Duration::from_millis(150), "it waited");

        // A waiter is woken by an enqueue that happens while it waits.
        let waiting = bob_s.fetch_wait(0, 0, Duration::from_secs(20));
        let sending = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            alice_s.enqueue(&key(&bob), b"wake up").await.unwrap()
        };
        let start = Instant::now();
        let (got, seq) = tokio::join!(waiting, sending);
        let got = got.unwrap();
        assert_eq!(seq, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, b"wake up");
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "woken, not timed out"
        );

        // Something already there: returned at once.
        let got = bob_s
            .fetch_wait(0, 0, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        // Waiting after the last seq waits again.
        let none = bob_s
            .fetch_wait(1, 0, Duration::from_millis(100))
            .await
            .unwrap();
        assert!(none.is_empty());
    })
    .await;
    node.stop().await;
}

/// The next thing a push subscription hands over, within a few seconds.
async fn next_pushed(
    pushed: &mut tokio::sync::mpsc::Receiver<quicnprotochat_client::Pushed>,
) -> Option<quicnprotochat_client::Pushed> {
    tokio::time::timeout(Duration::from_secs(10), pushed.recv())
        .await
        .expect("something pushed within 10 s")
}

/// A pushed batch, answered without acking anything.
fn batch(p: Option<quicnprotochat_client::Pushed>) -> Vec<quicnprotochat_wire::Envelope> {
    let (envelopes, applied) = batch_and_answer(p);
    applied.up_to(0);
    envelopes
}

/// A pushed batch and the answer to give the node.
fn batch_and_answer(
    p: Option<quicnprotochat_client::Pushed>,
) -> (
    Vec<quicnprotochat_wire::Envelope>,
    quicnprotochat_client::Applied,
) {
    match p {
        Some(quicnprotochat_client::Pushed::Batch { envelopes, applied }) => (envelopes, applied),
        other => panic!("expected a pushed batch, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_delivers_what_is_queued_and_what_arrives_without_fetch_and_keeps_it_until_acked() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let bob = Identity::generate();
        let (_c1, bob_s) = node.session(&bob).await;
        let (_c2, alice_s) = node.session(&Identity::generate()).await;
        alice_s.enqueue(&key(&bob), b"one").await.unwrap();
        alice_s.enqueue(&key(&bob), b"two").await.unwrap();

        // What is queued after the subscription's cursor comes at once.
        let (to, mut pushed) = tokio::sync::mpsc::channel(4);
        bob_s.subscribe(1, to).await.unwrap();
        let first = batch(next_pushed(&mut pushed).await);
        assert_eq!(
            first
                .iter()
                .map(|e| (e.seq, e.data.clone()))
                .collect::<Vec<_>>(),
            vec![(2, b"two".to_vec())],
            "only what is after the cursor"
        );

        // What arrives later is pushed as it arrives, with no call of bob's.
        alice_s.enqueue(&key(&bob), b"three").await.unwrap();
        let next = batch(next_pushed(&mut pushed).await);
        assert_eq!(next.len(), 1);
        assert_eq!((next[0].seq, next[0].data.as_slice()), (3, &b"three"[..]));

        // Pushing deletes nothing: the inbox keeps it until acked.
        assert_eq!(bob_s.fetch(0, 0).await.unwrap().len(), 3);
        bob_s.ack(1).await.unwrap();
        assert_eq!(bob_s.fetch(0, 0).await.unwrap().len(), 2);

        // The answer to a push acks: the node deletes through it before it
        // pushes the next batch.
        alice_s.enqueue(&key(&bob), b"four").await.unwrap();
        let (four, applied) = batch_and_answer(next_pushed(&mut pushed).await);
        assert_eq!(four[0].seq, 4);
        applied.up_to(4);
        alice_s.enqueue(&key(&bob), b"five").await.unwrap();
        assert_eq!(batch(next_pushed(&mut pushed).await)[0].seq, 5);
        let left: Vec<u64> = bob_s
            .fetch(0, 0)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(left, vec![5], "acked through 4 by the answer");
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_makes_one_call_at_a_time_and_coalesces_what_arrives_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let bob = Identity::generate();
        let (_c1, bob_s) = node.session(&bob).await;
        let (_c2, alice_s) = node.session(&Identity::generate()).await;
        // The first `deliver` stays unanswered while bob holds its answer:
        // everything after it waits at the node, and goes in one next call.
        let (to, mut pushed) = tokio::sync::mpsc::channel(4);
        bob_s.subscribe(0, to).await.unwrap();
        alice_s.enqueue(&key(&bob), &[0]).await.unwrap();
        let (first, applied) = batch_and_answer(next_pushed(&mut pushed).await);
        assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1]);
        for i in 1..20u8 {
            alice_s.enqueue(&key(&bob), &[i]).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            pushed.try_recv().is_err(),
            "nothing more while a call is in flight"
        );
        applied.up_to(0);
        let rest = batch(next_pushed(&mut pushed).await);
        assert_eq!(
            rest.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (2..=20).collect::<Vec<u64>>(),
            "what arrived meanwhile, in one call, in order"
        );
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscription_replaces_the_last_and_subscriptions_are_paced() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let bob = Identity::generate();
        let (_c1, bob_s) = node.session(&bob).await;
        let (_c2, alice_s) = node.session(&Identity::generate()).await;
        let (old_to, mut old) = tokio::sync::mpsc::channel(4);
        bob_s.subscribe(0, old_to).await.unwrap();
        // One subscription per second per session: each starts with a read.
        let (again, _) = tokio::sync::mpsc::channel(4);
        let err = bob_s.subscribe(0, again).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::RateLimited), "{err}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (new_to, mut new) = tokio::sync::mpsc::channel(4);
        bob_s.subscribe(0, new_to).await.unwrap();
        alice_s.enqueue(&key(&bob), b"hi").await.unwrap();
        assert_eq!(batch(next_pushed(&mut new).await)[0].data, b"hi");
        // The node let go of the old receiver: its channel closes, empty.
        assert!(next_pushed(&mut old).await.is_none());
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_ends_with_unauthorized_when_its_session_ends() {
    use quicnprotochat_tests::accounts::{device, register};
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let alice = device();
        let (_c1, alice_s) = register(&node, "alice", "pw", &alice).await;
        let (_c2, bob_s) = register(&node, "bob", "pw", &device()).await;
        let (to, mut pushed) = tokio::sync::mpsc::channel(4);
        alice_s.subscribe(0, to).await.unwrap();
        alice_s.logout().await.unwrap();
        // The next news finds the session gone: the node says so and stops.
        bob_s
            .enqueue(&IdentityKey(alice.id.public_key()), b"after logout")
            .await
            .unwrap();
        match next_pushed(&mut pushed).await {
            Some(quicnprotochat_client::Pushed::Ended(e)) => {
                assert_eq!(e.code(), Some(ErrorCode::Unauthorized), "{e}")
            }
            other => panic!("expected the end of the subscription, got {other:?}"),
        }
        assert!(
            next_pushed(&mut pushed).await.is_none(),
            "nothing after the end"
        );
    })
    .await;
    node.stop().await;
}
