//! The node side of groups against a real node: the epoch fence of `commit`
//! (first commit per epoch wins, the rest are STALE_EPOCH and store nothing), its
//! durability across restarts and actor crashes, and `enqueueBatch` storing many
//! inboxes' messages in one all-or-nothing transaction.

use std::collections::BTreeMap;

use quicnprotochat::config::ServerConfig;
use quicnprotochat_client::{ClientError, SessionHandle};
use quicnprotochat_crypto::Identity;
use quicnprotochat_tests::{TestNode, local, mls_commit};
use quicnprotochat_wire::{ErrorCode, IdentityKey};

fn key(id: &Identity) -> IdentityKey {
    IdentityKey(id.public_key())
}

fn code(r: Result<Vec<u64>, ClientError>) -> Option<ErrorCode> {
    r.err().and_then(|e| e.code())
}

/// Everything in `session`'s inbox, as (seq, payload).
async fn inbox(session: &SessionHandle) -> Vec<(u64, Vec<u8>)> {
    session
        .fetch(0, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.data))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_commits_one_wins_per_epoch_and_losers_store_nothing() {
    const MEMBERS: usize = 6;
    const EPOCHS: u64 = 12;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let ids: Vec<Identity> = (0..MEMBERS).map(|_| Identity::generate()).collect();
        let mut sessions = Vec::new();
        for id in &ids {
            sessions.push(node.session(id).await);
        }
        let group = b"group-race".to_vec();
        let members: Vec<Vec<u8>> = ids.iter().map(|i| i.public_key().to_vec()).collect();
        let mut winners = Vec::new();
        for epoch in 0..EPOCHS {
            // Every member commits at this epoch at once, each to every other member.
            let attempts = sessions.iter().enumerate().map(|(m, (_, s))| {
                let deliveries: Vec<(IdentityKey, Vec<u8>)> = ids
                    .iter()
                    .enumerate()
                    .filter(|(o, _)| *o != m)
                    .map(|(_, o)| (key(o), format!("commit e{epoch} by {m}").into_bytes()))
                    .collect();
                let group = group.clone();
                let members = &members;
                async move {
                    (
                        m,
                        s.commit(
                            &group,
                            epoch,
                            members,
                            &deliveries,
                            &mls_commit(&group, epoch),
                        )
                        .await,
                    )
                }
            });
            let results = futures::future::join_all(attempts).await;
            let won: Vec<usize> = results
                .iter()
                .filter(|(_, r)| r.is_ok())
                .map(|(m, _)| *m)
                .collect();
            assert_eq!(won.len(), 1, "exactly one commit wins epoch {epoch}");
            for (m, r) in results {
                if m != won[0] {
                    assert_eq!(code(r), Some(ErrorCode::StaleEpoch), "loser {m} at {epoch}");
                }
            }
            winners.push(won[0]);
        }
        // Each member's inbox holds exactly the winners' commits (not its own), in
        // epoch order, with gap-free seqs.
        for (m, (_, s)) in sessions.iter().enumerate() {
            let got = inbox(s).await;
            let expected: Vec<Vec<u8>> = winners
                .iter()
                .enumerate()
                .filter(|(_, w)| **w != m)
                .map(|(e, w)| format!("commit e{e} by {w}").into_bytes())
                .collect();
            assert_eq!(
                got.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
                expected
            );
            assert_eq!(
                got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                (1..=expected.len() as u64).collect::<Vec<_>>()
            );
        }
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_survives_restarts_and_actor_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let alice = Identity::generate();
    let bob = Identity::generate();
    let group = b"durable-fence".to_vec();
    let ab = vec![alice.public_key().to_vec(), bob.public_key().to_vec()];
    local(async {
        let (_c, a) = node.session(&alice).await;
        a.commit(
            &group,
            0,
            &ab,
            &[(key(&bob), b"e0".to_vec())],
            &mls_commit(&group, 0),
        )
        .await
        .unwrap();
    })
    .await;
    let node = node.restart().await;
    local(async {
        let (_c, a) = node.session(&alice).await;
        assert_eq!(
            code(
                a.commit(
                    &group,
                    0,
                    &ab,
                    &[(key(&bob), b"again".to_vec())],
                    &mls_commit(&group, 0)
                )
                .await
            ),
            Some(ErrorCode::StaleEpoch)
        );
        a.commit(
            &group,
            1,
            &ab,
            &[(key(&bob), b"e1".to_vec())],
            &mls_commit(&group, 1),
        )
        .await
        .unwrap();
    })
    .await;
    node.crash_group(&group).await;
    local(async {
        let (_c, a) = node.session(&alice).await;
        assert_eq!(
            code(
                a.commit(
                    &group,
                    1,
                    &ab,
                    &[(key(&bob), b"again".to_vec())],
                    &mls_commit(&group, 1)
                )
                .await
            ),
            Some(ErrorCode::StaleEpoch)
        );
        // An epoch the group never reached is the caller's error, not a fork.
        assert_eq!(
            code(
                a.commit(
                    &group,
                    5,
                    &ab,
                    &[(key(&bob), b"ahead".to_vec())],
                    &mls_commit(&group, 5)
                )
                .await
            ),
            Some(ErrorCode::BadRequest)
        );
        let (_c, b) = node.session(&bob).await;
        let got: Vec<Vec<u8>> = inbox(&b).await.into_iter().map(|(_, p)| p).collect();
        assert_eq!(got, vec![b"e0".to_vec(), b"e1".to_vec()]);
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_commit_stores_nothing_and_does_not_move_the_fence() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.queue_limit = 2;
    let node = TestNode::start_with(config).await;
    local(async {
        let (alice, bob, carol) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let (_c, a) = node.session(&alice).await;
        let (_c, b) = node.session(&bob).await;
        let (_c, c) = node.session(&carol).await;
        // Carol's inbox is full.
        a.enqueue(&key(&carol), b"1").await.unwrap();
        a.enqueue(&key(&carol), b"2").await.unwrap();
        let group = b"full".to_vec();
        let ab = vec![
            alice.public_key().to_vec(),
            bob.public_key().to_vec(),
            carol.public_key().to_vec(),
        ];
        let deliveries = [
            (key(&bob), b"commit".to_vec()),
            (key(&carol), b"commit".to_vec()),
        ];
        assert_eq!(
            code(
                a.commit(&group, 0, &ab, &deliveries, &mls_commit(&group, 0))
                    .await
            ),
            Some(ErrorCode::QueueFull)
        );
        assert!(inbox(&b).await.is_empty(), "nothing of the commit stored");
        // Once carol catches up, the same epoch is still open.
        c.ack(2).await.unwrap();
        let seqs = a
            .commit(&group, 0, &ab, &deliveries, &mls_commit(&group, 0))
            .await
            .unwrap();
        assert_eq!(seqs, vec![1, 3]);
        assert_eq!(inbox(&b).await, vec![(1, b"commit".to_vec())]);
        // Too large a payload and a malformed recipient are refused up front.
        let big = vec![0u8; node.config.max_payload + 1];
        assert_eq!(
            code(
                a.commit(&group, 1, &ab, &[(key(&bob), big)], &mls_commit(&group, 1))
                    .await
            ),
            Some(ErrorCode::TooLarge)
        );
        let err = a
            .commit(&[], 1, &ab, &deliveries, &mls_commit(&[], 1))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_clear_mls_header_names_another_group_or_epoch_is_refused_and_stores_nothing()
 {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (alice, bob) = (Identity::generate(), Identity::generate());
        let (_c, a) = node.session(&alice).await;
        let (_c, b) = node.session(&bob).await;
        let group = b"headers".to_vec();
        let ab = vec![alice.public_key().to_vec(), bob.public_key().to_vec()];
        let to_bob = [(key(&bob), b"commit".to_vec())];
        // A real MLS application message is not a commit.
        let app = {
            use openmls_memory_storage::MemoryStorage;
            use quicnprotochat_crypto::mls::{GroupMember, Suite};
            let member = GroupMember::new(&alice, MemoryStorage::default()).unwrap();
            let mut g = member.create_group(Suite::Classic, "x").unwrap();
            g.encrypt(&member, b"hi").unwrap()
        };
        let refused = [
            ("another epoch", mls_commit(&group, 1)),
            ("another group", mls_commit(b"other", 0)),
            ("an application message", app),
            ("garbage", b"\x00\x01\x00\x02junk".to_vec()),
            ("nothing", Vec::new()),
        ];
        for (what, commit) in refused {
            let err = a
                .commit(&group, 0, &ab, &to_bob, &commit)
                .await
                .unwrap_err();
            assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{what}: {err}");
            assert!(err.to_string().contains("mlsCommit"), "{what}: {err}");
        }
        assert!(
            inbox(&b).await.is_empty(),
            "nothing of a refused commit stored"
        );
        // The epoch is still open to a commit whose header matches.
        a.commit(&group, 0, &ab, &to_bob, &mls_commit(&group, 0))
            .await
            .unwrap();
        assert_eq!(inbox(&b).await, vec![(1, b"commit".to_vec())]);
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_batch_is_one_all_or_nothing_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.queue_limit = 3;
    let node = TestNode::start_with(config).await;
    local(async {
        let ids: Vec<Identity> = (0..4).map(|_| Identity::generate()).collect();
        let (_c, sender) = node.session(&Identity::generate()).await;
        let mut sessions = Vec::new();
        for id in &ids {
            sessions.push(node.session(id).await.1);
        }
        // Two messages to the same inbox keep their order; seqs come back in the
        // deliveries' order.
        let batch: Vec<(IdentityKey, Vec<u8>)> = vec![
            (key(&ids[0]), b"a1".to_vec()),
            (key(&ids[1]), b"b1".to_vec()),
            (key(&ids[0]), b"a2".to_vec()),
            (key(&ids[2]), b"c1".to_vec()),
        ];
        assert_eq!(
            sender.enqueue_batch(&batch).await.unwrap(),
            vec![1, 1, 2, 1]
        );
        assert_eq!(
            inbox(&sessions[0]).await,
            vec![(1, b"a1".to_vec()), (2, b"a2".to_vec())]
        );
        // ids[0] has room for one more, not two: the whole batch is refused.
        let over: Vec<(IdentityKey, Vec<u8>)> = vec![
            (key(&ids[3]), b"d1".to_vec()),
            (key(&ids[0]), b"a3".to_vec()),
            (key(&ids[0]), b"a4".to_vec()),
        ];
        assert_eq!(
            code(sender.enqueue_batch(&over).await),
            Some(ErrorCode::QueueFull)
        );
        assert!(inbox(&sessions[3]).await.is_empty(), "nothing stored");
        // The refused batch consumed no seq anywhere.
        assert_eq!(
            sender
                .enqueue_batch(&[
                    (key(&ids[3]), b"d1".to_vec()),
                    (key(&ids[0]), b"a3".to_vec())
                ])
                .await
                .unwrap(),
            vec![1, 3]
        );
        assert_eq!(
            code(sender.enqueue_batch(&[]).await),
            Some(ErrorCode::BadRequest)
        );
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_over_shared_inboxes_neither_deadlock_nor_gap() {
    const SENDERS: usize = 8;
    const ROUNDS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let ids: Vec<Identity> = (0..5).map(|_| Identity::generate()).collect();
        let tasks = (0..SENDERS).map(|s| {
            let node = &node;
            let ids = &ids;
            async move {
                let (_c, session) = node.session(&Identity::generate()).await;
                for r in 0..ROUNDS {
                    // Each sender names the inboxes in its own order.
                    let batch: Vec<(IdentityKey, Vec<u8>)> = (0..ids.len())
                        .map(|i| {
                            let who = (i + s) % ids.len();
                            (key(&ids[who]), format!("{s}/{r}").into_bytes())
                        })
                        .collect();
                    session.enqueue_batch(&batch).await.unwrap();
                }
            }
        });
        futures::future::join_all(tasks).await;
        for id in &ids {
            let (_c, s) = node.session(id).await;
            let got = inbox(&s).await;
            let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
            assert_eq!(seqs, (1..=(SENDERS * ROUNDS) as u64).collect::<Vec<_>>());
            // Every sender's rounds arrive in the order sent.
            let mut last: BTreeMap<String, usize> = BTreeMap::new();
            for (_, p) in got {
                let text = String::from_utf8(p).unwrap();
                let (s, r) = text.split_once('/').unwrap();
                let r: usize = r.parse().unwrap();
                if let Some(prev) = last.insert(s.to_string(), r) {
                    assert!(r > prev);
                }
            }
        }
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_members_a_commit_named_may_commit_next() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (alice, bob, mallory) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let (_c, a) = node.session(&alice).await;
        let (_c, b) = node.session(&bob).await;
        let (_c, m) = node.session(&mallory).await;
        let group = b"members-only".to_vec();
        let ab = vec![alice.public_key().to_vec(), bob.public_key().to_vec()];
        let to_bob = [(key(&bob), b"commit".to_vec())];
        // The member list must name the committer.
        let err = a
            .commit(
                &group,
                0,
                &[bob.public_key().to_vec()],
                &to_bob,
                &mls_commit(&group, 0),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
        a.commit(&group, 0, &ab, &to_bob, &mls_commit(&group, 0))
            .await
            .unwrap();

        // A stranger who learned the group id cannot take its next epoch.
        let mallory_list = vec![mallory.public_key().to_vec()];
        assert_eq!(
            code(
                m.commit(&group, 1, &mallory_list, &to_bob, &mls_commit(&group, 1))
                    .await
            ),
            Some(ErrorCode::Unauthorized)
        );
        assert_eq!(inbox(&b).await.len(), 1, "nothing of mallory's stored");
        // Bob commits, removing alice; then alice may not commit any more.
        let to_alice = [(key(&alice), b"you are out".to_vec())];
        b.commit(
            &group,
            1,
            &[bob.public_key().to_vec()],
            &to_alice,
            &mls_commit(&group, 1),
        )
        .await
        .unwrap();
        assert_eq!(
            code(
                a.commit(&group, 2, &ab, &to_bob, &mls_commit(&group, 2))
                    .await
            ),
            Some(ErrorCode::Unauthorized)
        );
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_group_actors_retire_without_losing_the_fence_or_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.idle_inbox_after = std::time::Duration::from_millis(20);
    let node = TestNode::start_with(config).await;
    local(async {
        let (alice, bob) = (Identity::generate(), Identity::generate());
        let (_c, a) = node.session(&alice).await;
        let ab = vec![alice.public_key().to_vec(), bob.public_key().to_vec()];
        let to_bob = [(key(&bob), b"c".to_vec())];
        let group = b"idle".to_vec();
        // Commits arriving around the moments the actor retires: every one is
        // answered (never a dropped message), each epoch exactly once.
        for epoch in 0..30u64 {
            a.commit(&group, epoch, &ab, &to_bob, &mls_commit(&group, epoch))
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(epoch % 4 * 10)).await;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while node.live_group_actors().await > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(node.live_group_actors().await, 0, "idle actors retire");
        // A fresh actor reads the fence back from the store.
        assert_eq!(
            code(
                a.commit(&group, 29, &ab, &to_bob, &mls_commit(&group, 29))
                    .await
            ),
            Some(ErrorCode::StaleEpoch)
        );
        a.commit(&group, 30, &ab, &to_bob, &mls_commit(&group, 30))
            .await
            .unwrap();
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_does_not_reach_every_member_it_names_is_refused_and_writes_no_fence() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (alice, bob, carol) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let (_c, a) = node.session(&alice).await;
        let (_c, b) = node.session(&bob).await;
        let group = b"undelivered".to_vec();
        let abc = vec![
            alice.public_key().to_vec(),
            bob.public_key().to_vec(),
            carol.public_key().to_vec(),
        ];
        let commit = mls_commit(&group, 0);
        // No deliveries at all: only a fence would be written.
        let err = a.commit(&group, 0, &abc, &[], &commit).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
        assert!(err.to_string().contains("2 member(s)"), "{err}");
        // Carol is named but gets nothing.
        let to_bob = [(key(&bob), b"commit".to_vec())];
        let err = a
            .commit(&group, 0, &abc, &to_bob, &commit)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
        assert!(inbox(&b).await.is_empty(), "nothing of it stored");
        // No fence was written: bob, not yet a recorded member, may still
        // start the group at epoch 0.
        let ab = vec![alice.public_key().to_vec(), bob.public_key().to_vec()];
        let to_alice = [(key(&alice), b"commit".to_vec())];
        b.commit(&group, 0, &ab, &to_alice, &commit).await.unwrap();
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_creates_so_many_groups_and_no_more_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.limits.groups_per_device = 2;
    let node = TestNode::start_with(config).await;
    let me = Identity::generate();
    let solo = vec![me.public_key().to_vec()];
    local(async {
        let (_c, s) = node.session(&me).await;
        for g in [&b"one"[..], b"two"] {
            s.commit(g, 0, &solo, &[], &mls_commit(g, 0)).await.unwrap();
        }
        let err = s
            .commit(b"three", 0, &solo, &[], &mls_commit(b"three", 0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::QuotaExceeded), "{err}");
        assert!(err.to_string().contains("2 groups"), "{err}");
        // Commits to groups it already has are not creations.
        s.commit(b"one", 1, &solo, &[], &mls_commit(b"one", 1))
            .await
            .expect("an existing group goes on");
    })
    .await;
    let node = node.restart().await;
    local(async {
        let (_c, s) = node.session(&me).await;
        let err = s
            .commit(b"three", 0, &solo, &[], &mls_commit(b"three", 0))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(ErrorCode::QuotaExceeded),
            "the count survives a restart: {err}"
        );
        // Another device has its own quota.
        let them = Identity::generate();
        let (_c2, other) = node.session(&them).await;
        other
            .commit(
                b"three",
                0,
                &[them.public_key().to_vec()],
                &[],
                &mls_commit(b"three", 0),
            )
            .await
            .expect("another device's quota is its own");
    })
    .await;
    node.stop().await;
}

/// `commitGroup` and `sendGroup` through a real node: recipients come from the
/// fence, only members send and only to members, a commit adding members needs
/// its Welcome, an oversized part is refused; every refusal stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_sends_and_shared_commits_reach_members_only_and_refusals_store_nothing() {
    use quicnprotochat_client::CommitBodies;
    use quicnprotochat_wire::Inbound;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (alice, bob, carol) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let (_ca, a) = node.session(&alice).await;
        let (_cb, b) = node.session(&bob).await;
        let (_cc, c) = node.session(&carol).await;
        let gid = b"shared-group".to_vec();
        let members = |ids: &[&Identity]| -> Vec<Vec<u8>> {
            ids.iter().map(|i| i.public_key().to_vec()).collect()
        };
        let bodies = |welcome: &[u8]| CommitBodies {
            commit: b"commit".to_vec(),
            welcome: welcome.to_vec(),
            receipt: b"receipt".to_vec(),
            ..CommitBodies::default()
        };
        let refused = |r: Result<u32, ClientError>| r.err().and_then(|e| e.code());

        // Creating the group with bob in it: bob gets the Welcome, alice her receipt.
        let delivered = a
            .commit_group(
                &gid,
                0,
                &members(&[&alice, &bob]),
                &mls_commit(&gid, 0),
                &bodies(b"welcome"),
            )
            .await
            .unwrap();
        assert_eq!(delivered, 2);
        let got = b.fetch(0, 0).await.unwrap();
        assert_eq!(
            got[0].inbound().unwrap(),
            Inbound::Shared {
                part: b"",
                body: b"welcome"
            }
        );

        // A stranger may not send to the group; a member may not send to a stranger.
        let stranger = c.send_group(&gid, b"spam", &[]).await.unwrap_err();
        assert_eq!(stranger.code(), Some(ErrorCode::Unauthorized), "{stranger}");
        let to_stranger = a
            .send_group(&gid, b"hi", &[(key(&carol), Vec::new())])
            .await
            .unwrap_err();
        assert_eq!(
            to_stranger.code(),
            Some(ErrorCode::BadRequest),
            "{to_stranger}"
        );
        let big_part = a
            .send_group(&gid, b"hi", &[(key(&bob), vec![0; 4096])])
            .await
            .unwrap_err();
        assert_eq!(big_part.code(), Some(ErrorCode::TooLarge), "{big_part}");
        assert!(c.fetch(0, 0).await.unwrap().is_empty());
        assert_eq!(
            b.fetch(0, 0).await.unwrap().len(),
            1,
            "nothing more for bob"
        );

        // Adding carol without a Welcome is refused and leaves the epoch open.
        let three = members(&[&alice, &bob, &carol]);
        assert_eq!(
            refused(
                a.commit_group(&gid, 1, &three, &mls_commit(&gid, 1), &bodies(b""))
                    .await
            ),
            Some(ErrorCode::BadRequest)
        );
        // A stranger cannot take the epoch.
        assert_eq!(
            refused(
                c.commit_group(&gid, 1, &three, &mls_commit(&gid, 1), &bodies(b"w"))
                    .await
            ),
            Some(ErrorCode::Unauthorized)
        );
        assert_eq!(
            a.commit_group(&gid, 1, &three, &mls_commit(&gid, 1), &bodies(b"w2"))
                .await
                .unwrap(),
            3,
            "bob the commit, carol the Welcome, alice her receipt"
        );
        assert_eq!(
            refused(
                b.commit_group(&gid, 1, &three, &mls_commit(&gid, 1), &bodies(b""))
                    .await
            ),
            Some(ErrorCode::StaleEpoch)
        );

        // Now a send reaches both other members, each with its own seq.
        let outcomes = a.send_group(&gid, b"hello both", &[]).await.unwrap();
        let mut reached: Vec<IdentityKey> = outcomes.iter().map(|o| o.recipient).collect();
        reached.sort();
        let mut expected = vec![key(&bob), key(&carol)];
        expected.sort();
        assert_eq!(reached, expected);
        assert!(outcomes.iter().all(|o| o.outcome.is_ok()));
        let carol_got = c.fetch(0, 0).await.unwrap();
        assert_eq!(
            carol_got.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(
            carol_got[1].inbound().unwrap(),
            Inbound::Shared {
                part: b"",
                body: b"hello both"
            }
        );
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_keeps_at_most_its_quota_of_group_info_bytes_and_a_commit_past_it_goes_on_without()
{
    // A solo group's GroupInfo, to size the quota: two and a half of them.
    use quicnprotochat_client::CommitBodies;
    use quicnprotochat_crypto::mls::{Group, Suite};
    use quicnprotochat_tests::accounts::{device, log_in, register};
    let bodies = |info: Option<&[u8]>| CommitBodies {
        receipt: b"receipt".to_vec(),
        group_info: info.map(<[u8]>::to_vec).unwrap_or_default(),
        ..CommitBodies::default()
    };
    let probe = device();
    let mut g = probe.mls.create_group(Suite::Classic, "probe").unwrap();
    let size = g.self_update(&probe.mls).unwrap().group_info.unwrap().len() as u64;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.limits.group_info_bytes_per_device = size * 5 / 2;
    let node = TestNode::start_with(config).await;
    let hana = device();
    let me = vec![hana.key().0.to_vec()];
    let mut groups = Vec::new();
    local(async {
        let (_ch, h) = register(&node, "hana", "pw", &hana).await;
        // Publishes a GroupInfo in a group of its own by a self-update.
        let publish = async |group: &mut Group, info: bool| {
            let out = group.self_update(&hana.mls).unwrap();
            let info = if info { out.group_info.clone() } else { None };
            let r = h
                .commit_group(
                    &group.group_id(),
                    out.epoch,
                    &me,
                    &out.commit,
                    &bodies(info.as_deref()),
                )
                .await;
            if r.is_ok() {
                group.confirm_commit(&hana.mls).unwrap();
            } else {
                group.discard_commit(&hana.mls).unwrap();
            }
            r
        };
        for name in ["a", "b", "c"] {
            groups.push(hana.mls.create_group(Suite::Classic, name).unwrap());
        }
        // Whether the node keeps a GroupInfo for the group now.
        let kept = async |group: &Group| match h.group_info(&group.group_id()).await {
            Ok(_) => true,
            Err(e) if e.code() == Some(ErrorCode::NotFound) => false,
            Err(e) => panic!("{e}"),
        };
        publish(&mut groups[0], true).await.unwrap();
        publish(&mut groups[1], true).await.unwrap();
        publish(&mut groups[2], true)
            .await
            .expect("a commit past the quota goes on");
        assert!(kept(&groups[0]).await && kept(&groups[1]).await);
        assert!(!kept(&groups[2]).await, "its GroupInfo is not kept");
        // Its own GroupInfo replaced counts once.
        publish(&mut groups[0], true).await.unwrap();
        assert!(
            kept(&groups[0]).await,
            "a replacement frees the one it replaces"
        );
        // A commit publishing none frees the group's share.
        publish(&mut groups[0], false).await.unwrap();
        publish(&mut groups[2], true).await.unwrap();
        assert!(kept(&groups[2]).await, "room again once a's is gone");
    })
    .await;
    let node = node.restart().await;
    local(async {
        let (_ch, h) = log_in(&node, "hana", "pw", &hana).await;
        let out = groups[0].self_update(&hana.mls).unwrap();
        h.commit_group(
            &groups[0].group_id(),
            out.epoch,
            &me,
            &out.commit,
            &bodies(out.group_info.as_deref()),
        )
        .await
        .unwrap();
        assert_eq!(
            h.group_info(&groups[0].group_id())
                .await
                .unwrap_err()
                .code(),
            Some(ErrorCode::NotFound),
            "b's and c's still count after a restart"
        );
    })
    .await;
    node.stop().await;
}
