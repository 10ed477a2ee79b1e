//! The client's outbox against a real node: a message is written with its id
//! before it is sent, waits (in order) while it cannot go, and a message sent
//! again after its answer was lost is shown once to each receiver.

use quicnprotochat_client::messenger::Messenger;
use quicnprotochat_client::state::history::Delivery;
use quicnprotochat_tests::{TestNode, alice_and_bob_in_g, local, pull_shown};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_again_after_its_answer_was_lost_is_shown_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (mut alice, mut bob) = alice_and_bob_in_g(&node).await;
        alice.messenger.lose_next_send_answer();
        let lost = alice.messenger.send("g", "only once").await;
        assert!(
            matches!(&lost, Err(e) if Messenger::is_connection_loss(e)),
            "{lost:?}"
        );
        // Alice does not know it arrived: it waits in her outbox, pending.
        let history = alice.messenger.history("g", 10).unwrap();
        assert_eq!(history.last().unwrap().text, "only once");
        assert_eq!(history.last().unwrap().delivery, Delivery::Pending);
        // The retry re-encrypts it (a new ciphertext) with the same id.
        assert_eq!(alice.messenger.flush_outbox().await.unwrap(), 1);
        let history = alice.messenger.history("g", 10).unwrap();
        let mine: Vec<_> = history.iter().filter(|e| e.text == "only once").collect();
        assert_eq!(mine.len(), 1, "{history:?}");
        assert_eq!(mine[0].delivery, Delivery::Done);
        // Bob got both copies and shows one.
        assert_eq!(
            pull_shown(&mut bob.messenger).await,
            vec!["[g] alice: only once".to_string()]
        );
        let bobs = bob.messenger.history("g", 10).unwrap();
        assert_eq!(
            bobs.iter().filter(|e| e.text == "only once").count(),
            1,
            "{bobs:?}"
        );
        // Later messages are not mistaken for repeats.
        alice.messenger.send("g", "only once").await.unwrap();
        assert_eq!(
            pull_shown(&mut bob.messenger).await,
            vec!["[g] alice: only once".to_string()],
            "the same text with a new id is a new message"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_in_order_while_the_node_is_down_and_go_out_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let mut config = node.config.clone();
    config.listen = node.addr;
    local(async {
        let (mut alice, mut bob) = alice_and_bob_in_g(&node).await;
        node.stop().await;
        for text in ["first", "second"] {
            let queued = alice.messenger.send("g", text).await;
            assert!(
                matches!(&queued, Err(e) if Messenger::is_connection_loss(e)),
                "{queued:?}"
            );
        }
        let history = alice.messenger.history("g", 10).unwrap();
        let pending: Vec<_> = history
            .iter()
            .filter(|e| e.delivery == Delivery::Pending)
            .map(|e| e.text.as_str())
            .collect();
        assert_eq!(pending, vec!["first", "second"]);

        let node = TestNode::start_with(config).await;
        // A new send goes after what waited (the first try after the restart
        // may still see the old connection break).
        let mut tries = 0;
        loop {
            tries += 1;
            match alice.messenger.flush_outbox().await {
                Ok(_) => break,
                Err(e) if Messenger::is_connection_loss(&e) && tries < 5 => {}
                Err(e) => panic!("flush failed: {e}"),
            }
        }
        alice.messenger.send("g", "third").await.unwrap();
        assert!(
            alice
                .messenger
                .history("g", 10)
                .unwrap()
                .iter()
                .all(|e| e.delivery == Delivery::Done)
        );
        let mut lines = Vec::new();
        for _ in 0..5 {
            match bob.messenger.pull(std::time::Duration::ZERO).await {
                Ok(_) => break,
                Err(e) if Messenger::is_connection_loss(&e) => {}
                Err(e) => panic!("pull failed: {e}"),
            }
        }
        lines.extend(pull_shown(&mut bob.messenger).await);
        assert_eq!(
            lines,
            vec![
                "[g] alice: first".to_string(),
                "[g] alice: second".to_string(),
                "[g] alice: third".to_string(),
            ]
        );
        node.stop().await;
    })
    .await;
}
