//! A node under hostile load keeps its memory bounded and serves everyone else:
//! pipelined writes beyond a connection's budget are refused with a retry hint,
//! connections beyond the caps are refused before their handshake. Scaled-down
//! versions of the probes in docs/performance.md, asserted on the node's own
//! counters.

use std::time::Duration;

use quicnprotochat::config::ServerConfig;
use quicnprotochat_crypto::Identity;
use quicnprotochat_tests::{TestNode, local};
use quicnprotochat_wire::{ErrorCode, IdentityKey};

const KIB: u64 = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_pipelined_writes_holds_bounded_memory_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.max_payload = 256 * KIB as usize;
    config.queue_limit = 100_000;
    config.rate_limits.enqueue_per_sec_per_session = 1_000_000;
    config.rate_limits.enqueue_per_sec_per_address = 1_000_000;
    config.limits.budget.calls_per_connection = 16;
    config.limits.budget.bytes_per_connection = 1024 * KIB;
    config.limits.budget.bytes_per_node = 2 * 1024 * KIB;
    let node_cap = config.limits.budget.bytes_per_node;
    let node = TestNode::start_with(config).await;
    local(async {
        const FLOODERS: usize = 3;
        const CALLS: usize = 48;
        let payload = vec![7u8; 200 * KIB as usize];
        let mut flooders = Vec::new();
        for _ in 0..FLOODERS {
            let id = Identity::generate();
            let (c, s) = node.session(&id).await;
            flooders.push((c, s, IdentityKey(id.public_key())));
        }
        let bystander = node.connect().await.unwrap();
        // Every flooder pipelines CALLS writes at once while a bystander pings.
        let floods = flooders.iter().map(|(_, s, me)| {
            let calls = (0..CALLS).map(|_| s.enqueue(me, &payload));
            futures::future::join_all(calls)
        });
        let pings = async {
            let mut answered = 0;
            for _ in 0..20 {
                if bystander.ping().await.is_ok() {
                    answered += 1;
                }
            }
            answered
        };
        let (results, answered) = tokio::join!(futures::future::join_all(floods), pings);
        assert_eq!(answered, 20, "the bystander's pings are all answered");
        let mut accepted = 0;
        let mut refused = 0;
        for (i, per_flooder) in results.into_iter().enumerate() {
            let mut seqs = Vec::new();
            for r in per_flooder {
                match r {
                    Ok(seq) => seqs.push(seq),
                    Err(e) => {
                        let code = e.code();
                        assert!(
                            matches!(code, Some(ErrorCode::RateLimited | ErrorCode::Unavailable)),
                            "a refusal over budget is typed and retryable: {e}"
                        );
                        assert!(e.to_string().contains("retry"), "{e}");
                        refused += 1;
                    }
                }
            }
            // What was accepted is stored, gap-free.
            seqs.sort();
            assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
            assert_eq!(node.stored(&flooders[i].2).await.len(), seqs.len());
            accepted += seqs.len();
        }
        assert!(refused > 0, "the flood went over the budget");
        assert!(accepted > 0, "and what fits the budget is served");
        let budget = node.budget();
        assert!(
            budget.peak_bytes_in_flight() <= node_cap,
            "calls held at most {} bytes at once, the cap is {node_cap}",
            budget.peak_bytes_in_flight()
        );
        assert_eq!(budget.bytes_in_flight(), 0, "everything given back");
        // Once the flood is answered, the flooders are served again.
        let (_, s, me) = &flooders[0];
        s.enqueue(me, &payload)
            .await
            .expect("served after the flood");
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_address_cap_are_refused_and_slots_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.limits.admission.connections_per_address = 3;
    let node = TestNode::start_with(config).await;
    local(async {
        let mut open = Vec::new();
        for _ in 0..3 {
            let c = node.connect().await.expect("within the cap");
            c.ping().await.unwrap();
            open.push(c);
        }
        let refused = node.connect().await;
        assert!(
            refused.is_err(),
            "a fourth connection from one address is refused"
        );
        // A closed connection frees its slot.
        open.pop().unwrap().close().await;
        let mut reconnected = None;
        for _ in 0..100 {
            if let Ok(c) = node.connect().await {
                reconnected = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c = reconnected.expect("the freed slot is usable");
        c.ping().await.unwrap();
        for c in open {
            c.ping().await.expect("the others were never disturbed");
        }
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_rate_sender_into_one_inbox_and_a_handshake_storm_leave_others_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.queue_limit = 200;
    config.limits.budget.calls_per_connection = 32;
    config.limits.admission.connections_per_address = 64;
    let node_cap = config.limits.budget.bytes_per_node;
    let node = TestNode::start_with(config).await;
    local(async {
        let victim = IdentityKey(Identity::generate().public_key());
        let (_fc, flooder) = node.session(&Identity::generate()).await;
        let (alice, bob) = (Identity::generate(), Identity::generate());
        let (_ac, a) = node.session(&alice).await;
        let (_bc, b) = node.session(&bob).await;
        let stop = std::rc::Rc::new(std::cell::Cell::new(false));
        // The flood: 64 enqueues in flight into one inbox, again and again.
        let flood = {
            let stop = stop.clone();
            async move {
                let mut codes = std::collections::BTreeMap::new();
                while !stop.get() {
                    let calls = (0..64).map(|_| flooder.enqueue(&victim, &[1u8; 1024]));
                    for r in futures::future::join_all(calls).await {
                        let code = match r {
                            Ok(_) => "stored".to_string(),
                            Err(e) => format!("{:?}", e.code().expect("a typed refusal")),
                        };
                        *codes.entry(code).or_insert(0u32) += 1;
                    }
                }
                codes
            }
        };
        // The handshake storm: connections opened and closed back to back.
        let storm = {
            let stop = stop.clone();
            let node = &node;
            async move {
                let (mut opened, mut refused) = (0u32, 0u32);
                while !stop.get() {
                    let batch = futures::future::join_all((0..16).map(|_| node.connect())).await;
                    for c in batch {
                        match c {
                            Ok(c) => {
                                opened += 1;
                                c.close().await;
                            }
                            Err(_) => refused += 1,
                        }
                    }
                }
                (opened, refused)
            }
        };
        // Meanwhile alice and bob talk: every message arrives, in order.
        let talk = async {
            for i in 0..50u32 {
                let seq = a
                    .enqueue(&IdentityKey(bob.public_key()), &i.to_le_bytes())
                    .await;
                assert_eq!(
                    seq.expect("alice is served during the flood"),
                    u64::from(i) + 1
                );
            }
            let got = b.fetch(0, 0).await.expect("bob is served during the flood");
            assert_eq!(got.len(), 50);
            stop.set(true);
        };
        let (codes, (opened, _refused), ()) = tokio::join!(flood, storm, talk);
        assert_eq!(
            codes.get("stored"),
            Some(&200),
            "the inbox holds its limit: {codes:?}"
        );
        assert!(
            codes
                .keys()
                .all(|k| ["stored", "QueueFull", "RateLimited"].contains(&k.as_str())),
            "every refusal is QUEUE_FULL or RATE_LIMITED: {codes:?}"
        );
        assert!(opened > 0, "handshakes went through");
        let budget = node.budget();
        assert!(budget.peak_bytes_in_flight() <= node_cap);
        assert_eq!(budget.bytes_in_flight(), 0);
    })
    .await;
    node.stop().await;
}

/// A client that holds long-polls on many sessions of one connection and
/// freezes its QUIC credit, then has every inbox filled: the woken replies
/// (about 1 MiB each) wait unread.
struct FrozenReader {
    pause: std::rc::Rc<quicnprotochat_client::rpc::ReplyPause>,
    calls: Vec<tokio::task::JoinHandle<Result<usize, quicnprotochat_client::ClientError>>>,
    /// Keeps the connection's endpoint alive.
    _endpoint: quinn::Endpoint,
}

const SESSIONS: usize = 8;
const WAITS_PER_SESSION: usize = 4;

async fn freeze_and_wake(node: &TestNode) -> FrozenReader {
    use quicnprotochat_client::NodeConnection;
    use quicnprotochat_client::rpc::ReplyPause;
    let pinned = quicnprotochat_wire::tls::read_pinned_cert(&node.cert_path()).unwrap();
    let endpoint = quicnprotochat_client::client_endpoint(node.addr, pinned).unwrap();
    let pause = std::rc::Rc::new(ReplyPause::default());
    let conn = NodeConnection::connect_with_reply_pause(&endpoint, node.addr, pause.clone())
        .await
        .unwrap();
    let identities: Vec<Identity> = (0..SESSIONS).map(|_| Identity::generate()).collect();
    let mut sessions = Vec::new();
    for id in &identities {
        sessions.push(conn.authenticate(id, None).await.unwrap());
    }
    pause.pause();
    let mut calls = Vec::new();
    for s in &sessions {
        for _ in 0..WAITS_PER_SESSION {
            let s = s.clone();
            calls.push(tokio::task::spawn_local(async move {
                s.fetch_wait(0, 0, Duration::from_secs(30))
                    .await
                    .map(|l| l.len())
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every inbox gets 4 × 256 KiB: each woken long-poll would answer ~1 MiB.
    let feeder = Identity::generate();
    let (_f, fs) = node.session(&feeder).await;
    for id in &identities {
        for _ in 0..4 {
            fs.enqueue(
                &IdentityKey(id.public_key()),
                &vec![7u8; 256 * KIB as usize],
            )
            .await
            .unwrap();
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    FrozenReader {
        pause,
        calls,
        _endpoint: endpoint,
    }
}

fn frozen_config(dir: &std::path::Path, stall: Duration) -> ServerConfig {
    let mut config = ServerConfig::ephemeral(dir);
    config.limits.budget.reply_bytes_per_connection = 2 * 1024 * KIB;
    config.limits.reply_stall = stall;
    config.rate_limits.enqueue_per_sec_per_session = 1_000_000;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_a_frozen_reader_leaves_unread_stay_within_its_budget_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let config = frozen_config(dir.path(), Duration::from_secs(60));
    let cap = config.limits.budget.reply_bytes_per_connection;
    let node = TestNode::start_with(config).await;
    local(async {
        let frozen = freeze_and_wake(&node).await;
        // 32 woken replies of ~1 MiB wanted; the node holds at most the
        // connection's reply budget (one reply may pass alone).
        let queued = node.budget().reply_bytes_queued();
        assert!(queued > 0, "the woken replies that fit are counted");
        assert!(
            queued <= cap + 1024 * KIB + 4 * 64,
            "{queued} unread reply bytes held, cap {cap}"
        );
        // Someone else is served meanwhile.
        let bob = Identity::generate();
        let (_b, bs) = node.session(&bob).await;
        for i in 0..20u8 {
            bs.enqueue(&IdentityKey(bob.public_key()), &[i])
                .await
                .unwrap();
        }
        assert_eq!(bs.fetch(0, 0).await.unwrap().len(), 20);
        // The reader reads again: every call is answered, either with its
        // messages or, past the budget, RATE_LIMITED (nothing is lost: a fetch
        // is not destructive).
        frozen.pause.resume();
        let (mut served, mut limited) = (0, 0);
        for c in frozen.calls {
            match c.await.unwrap() {
                Ok(n) => {
                    assert!((1..=4).contains(&n), "{n}");
                    served += 1;
                }
                Err(e) => {
                    assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{e}");
                    assert!(e.to_string().contains("unread"), "{e}");
                    limited += 1;
                }
            }
        }
        assert!(
            served >= 1 && limited >= 1,
            "{served} served, {limited} limited"
        );
        assert_eq!(node.budget().reply_bytes_queued(), 0, "all written");
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_replies_stay_unread_is_closed_and_its_replies_freed() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_with(frozen_config(dir.path(), Duration::from_secs(2))).await;
    local(async {
        let frozen = freeze_and_wake(&node).await;
        assert!(node.budget().reply_bytes_queued() > 0);
        // Past the stall time the node closes the connection: its calls fail
        // and the bytes of its unread replies are given back.
        let mut freed = false;
        for _ in 0..100 {
            if node.budget().reply_bytes_queued() == 0 {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            freed,
            "{} bytes still held",
            node.budget().reply_bytes_queued()
        );
        // What the client had received before the close it still reads; the
        // rest fails with the connection.
        frozen.pause.resume();
        let mut failed = 0;
        for c in frozen.calls {
            failed += usize::from(c.await.unwrap().is_err());
        }
        assert!(failed > 0, "the connection was closed");
    })
    .await;
    node.stop().await;
}

/// Below its disk's high-water mark the node takes nothing that only adds data
/// for good (accounts, devices, groups, KeyPackage uploads): `STORAGE_FULL`.
/// Messages, logins of known devices and commits of existing groups go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_below_its_disk_mark_refuses_new_accounts_devices_groups_and_uploads_only() {
    use quicnprotochat_tests::accounts::{device, log_in, register};
    use quicnprotochat_tests::mls_commit;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    if node.config.store.is_some() {
        // A store in PostgreSQL is on that server's disk: not watched.
        node.stop().await;
        return;
    }
    let (alice, bob, phone) = (device(), device(), device());
    let group = b"before-the-disk-filled".to_vec();
    let members = vec![alice.key().0.to_vec(), bob.key().0.to_vec()];
    let to_bob = [(bob.key(), b"commit".to_vec())];
    local(async {
        let (_ca, a) = register(&node, "alice", "pw", &alice).await;
        register(&node, "bob", "pw", &bob).await;
        a.commit(&group, 0, &members, &to_bob, &mls_commit(&group, 0))
            .await
            .unwrap();
    })
    .await;
    let mut config = node.config.clone();
    node.stop().await;
    config.limits.min_free_disk_bytes = u64::MAX;
    let node = TestNode::start_with(config).await;
    local(async {
        let full = |r: Result<(), quicnprotochat_client::ClientError>, what: &str| {
            let e = r.expect_err(what);
            assert_eq!(e.code(), Some(ErrorCode::StorageFull), "{what}: {e}");
        };
        let carol = device();
        let refused = node
            .connect()
            .await
            .unwrap()
            .register("carol", b"pw", &carol.id, None)
            .await;
        full(refused, "a new account");
        let new_device = node
            .connect()
            .await
            .unwrap()
            .login("alice", b"pw", &phone.id, None)
            .await
            .map(|_| ());
        full(new_device, "a new device");

        let (_ca, a) = log_in(&node, "alice", "pw", &alice).await;
        let kp = alice
            .mls
            .generate_key_package(quicnprotochat_crypto::mls::Suite::Classic, true)
            .unwrap();
        let hybrid = alice.hybrid.signed_public(&alice.id).to_bytes();
        full(
            a.upload_key_packages(&[], &kp, &hybrid).await,
            "a KeyPackage upload",
        );
        let other = b"after-the-disk-filled".to_vec();
        let new_group = a
            .commit(&other, 0, &members, &to_bob, &mls_commit(&other, 0))
            .await
            .map(|_| ());
        full(new_group, "a new group");

        // What a conversation needs still passes.
        a.commit(&group, 1, &members, &to_bob, &mls_commit(&group, 1))
            .await
            .expect("a commit of an existing group");
        a.enqueue(&bob.key(), b"still talking")
            .await
            .expect("a message");
    })
    .await;
    node.stop().await;
}
