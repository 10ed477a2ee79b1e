//! Several nodes on one PostgreSQL database serve one population: accounts made
//! on one node log in on another, a message enqueued through one node wakes a
//! long-poll on another, seqs stay gap-free with writers on both, and a node
//! that stops leaves its clients to carry on through the other.
//!
//! Needs PostgreSQL: `QPC_TEST_STORE` (see `scripts/start-postgres.sh`).
//! Without it the tests say why and pass, unless `QPC_REQUIRE_POSTGRES` is set
//! (as CI sets it), when they fail.

use std::time::{Duration, Instant};

use quicnprotochat::config::ServerConfig;
use quicnprotochat_tests::accounts::{device, log_in, register};
use quicnprotochat_tests::{TestNode, create_test_database, local, test_store_url};
use quicnprotochat_wire::tls;

/// The URL of a fresh database, or `None` (after saying why) without PostgreSQL.
async fn fresh_database(name: &str) -> Option<String> {
    let Some(url) = test_store_url() else {
        if std::env::var_os("QPC_REQUIRE_POSTGRES").is_some() {
            panic!("QPC_REQUIRE_POSTGRES is set but QPC_TEST_STORE is not");
        }
        eprintln!("skipped: set QPC_TEST_STORE to a PostgreSQL URL to run the multi-node tests");
        return None;
    };
    let unique = format!(
        "{name}_{}_{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    Some(create_test_database(&url, &unique).await)
}

/// Two nodes on `store` sharing one certificate (as a deployment's nodes do).
async fn two_nodes(store: &str, dirs: &[tempfile::TempDir; 2]) -> (TestNode, TestNode) {
    let mut a = ServerConfig::ephemeral(dirs[0].path());
    a.store = Some(store.to_string());
    let a = TestNode::start_with(a).await;
    let mut b = ServerConfig::ephemeral(dirs[1].path());
    b.store = Some(store.to_string());
    b.tls_cert = Some(dirs[0].path().join(tls::CERT_FILE));
    b.tls_key = Some(dirs[0].path().join(tls::KEY_FILE));
    std::fs::copy(
        dirs[0].path().join(tls::CERT_FILE),
        dirs[1].path().join(tls::CERT_FILE),
    )
    .unwrap();
    let b = TestNode::start_with(b).await;
    (a, b)
}

/// Waits until `f` holds (another node's news arrives asynchronously).
async fn eventually<F: AsyncFnMut() -> bool>(mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_enqueued_on_one_node_wakes_a_long_poll_on_another() {
    let Some(store) = fresh_database("two_nodes").await else {
        return;
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (node_a, node_b) = two_nodes(&store, &dirs).await;
    let alice = device();
    let bob = device();
    local(async {
        let (_ca, alice_s) = register(&node_a, "alice", "pw", &alice).await;
        let (_cb, bob_s) = register(&node_b, "bob", "pw", &bob).await;
        // Node A learns of bob's device from B's notification.
        eventually(async || alice_s.enqueue(&bob.key(), b"hello").await.is_ok()).await;
        let got = bob_s.fetch(0, 0).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].seq, 1);
        // A long-poll waiting on B is woken by an enqueue through A.
        let waiting = bob_s.fetch_wait(1, 0, Duration::from_secs(20));
        let sending = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            alice_s.enqueue(&bob.key(), b"across").await.unwrap()
        };
        let started = Instant::now();
        let (woken, seq) = tokio::join!(waiting, sending);
        let woken = woken.unwrap();
        assert_eq!(seq, 2, "seqs are gap-free across nodes");
        assert_eq!(woken.len(), 1, "woken with the message");
        assert_eq!(woken[0].data, b"across");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "woken, not timed out"
        );
        // Writers on both nodes: seqs stay one inbox's gap-free sequence.
        let mut seqs = Vec::new();
        for k in 0..10u8 {
            let via_a = alice_s.enqueue(&bob.key(), &[k]).await.unwrap();
            seqs.push(via_a);
        }
        let carol = device();
        let (_cc, carol_s) = register(&node_b, "carol", "pw", &carol).await;
        for k in 0..10u8 {
            seqs.push(carol_s.enqueue(&bob.key(), &[k]).await.unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (3..=22).collect::<Vec<u64>>());
        let all = bob_s.fetch(0, 0).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=22).collect::<Vec<u64>>()
        );
        // An ack through B of seqs B's inbox actor heard of only from the store.
        bob_s.ack(22).await.unwrap();
        assert!(bob_s.fetch(0, 0).await.unwrap().is_empty());
    })
    .await;
    node_a.stop().await;
    node_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_stopped_node_carry_on_through_another_with_nothing_lost() {
    let Some(store) = fresh_database("failover").await else {
        return;
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (node_a, node_b) = two_nodes(&store, &dirs).await;
    let alice = device();
    let bob = device();
    let acknowledged = local(async {
        let (_ca, alice_s) = register(&node_a, "alice", "pw", &alice).await;
        let (_cb, _bob_s) = register(&node_a, "bob", "pw", &bob).await;
        let mut seqs = Vec::new();
        for k in 0..20u8 {
            seqs.push(alice_s.enqueue(&bob.key(), &[k]).await.unwrap());
        }
        seqs
    })
    .await;
    node_a.stop().await;
    local(async {
        // Bob logs in on B (the account and its messages are in the database).
        let bob_again = log_in(&node_b, "bob", "pw", &bob).await;
        let got = bob_again.1.fetch(0, 0).await.unwrap();
        assert_eq!(
            got.iter().map(|e| e.seq).collect::<Vec<_>>(),
            acknowledged,
            "every acknowledged message is there"
        );
        assert_eq!(
            got.iter().map(|e| e.data[0]).collect::<Vec<_>>(),
            (0..20).collect::<Vec<u8>>()
        );
    })
    .await;
    node_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_commit_per_epoch_holds_across_nodes() {
    use quicnprotochat_tests::mls_commit;
    use quicnprotochat_wire::{ErrorCode, IdentityKey};
    let Some(store) = fresh_database("fence").await else {
        return;
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (node_a, node_b) = two_nodes(&store, &dirs).await;
    let alice = quicnprotochat_crypto::Identity::generate();
    let bob = quicnprotochat_crypto::Identity::generate();
    let bob_key = IdentityKey(bob.public_key());
    let group = b"shared-fence".to_vec();
    let ab = vec![alice.public_key().to_vec(), bob.public_key().to_vec()];
    local(async {
        let (_ca, via_a) = node_a.session(&alice).await;
        let (_cb, via_b) = node_b.session(&alice).await;
        let commit = async |s: &quicnprotochat_client::SessionHandle, epoch: u64, text: &[u8]| {
            s.commit(
                &group,
                epoch,
                &ab,
                &[(bob_key, text.to_vec())],
                &mls_commit(&group, epoch),
            )
            .await
        };
        // B's group actor holds the fence at epoch 1 in memory ...
        commit(&via_b, 0, b"e0").await.unwrap();
        // ... when A accepts the commit at epoch 1 ...
        commit(&via_a, 1, b"e1 via A").await.unwrap();
        // ... so B's offer at epoch 1 passes B's own check, and the store refuses it.
        let lost = commit(&via_b, 1, b"e1 via B").await.unwrap_err();
        assert_eq!(lost.code(), Some(ErrorCode::StaleEpoch), "{lost}");
        // B learned the fence from the store: the next epoch goes through it,
        // and the seq it answers is the one stored (bob's inbox got seq 2
        // through A, which B's inbox actor may not have heard of yet).
        assert_eq!(commit(&via_b, 2, b"e2").await.unwrap(), vec![3]);
        let (_cbob, bob_s) = node_a.session(&bob).await;
        let got: Vec<Vec<u8>> = bob_s
            .fetch(0, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.data)
            .collect();
        assert_eq!(
            got,
            vec![b"e0".to_vec(), b"e1 via A".to_vec(), b"e2".to_vec()]
        );
    })
    .await;
    node_a.stop().await;
    node_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_may_acknowledge_before_durable_is_refused() {
    use quicnprotochat_actors::store::StoreError;
    use quicnprotochat_actors::store::postgres::PgStore;
    let Some(store) = fresh_database("not_durable").await else {
        return;
    };
    let name = store.rsplit_once('/').unwrap().1.to_string();
    let (client, connection) = tokio_postgres::connect(&store, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET synchronous_commit = off"
        ))
        .await
        .unwrap();
    match PgStore::open(&store).await {
        Err(StoreError::NotDurable(setting)) => assert_eq!(setting, "off"),
        other => panic!("expected NotDurable, got {other:?}"),
    }
    client
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET synchronous_commit = on"
        ))
        .await
        .unwrap();
    PgStore::open(&store)
        .await
        .expect("a durable database opens");
}
