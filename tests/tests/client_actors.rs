//! The client's actor tree (DESIGN.md, "Client: the actor tree") against a real
//! node: one supervised actor per group, restarted from the profile when it fails;
//! the session actor getting a lost connection back by itself; the receiver's
//! follow (pushed by the node) not holding up anything else.

use std::time::Duration;

use quicnprotochat_client::actors::ConnectionEvent;
use quicnprotochat_client::messenger::Messenger;
use quicnprotochat_crypto::mls::Suite;
use quicnprotochat_tests::{TestNode, alice_and_bob_in_g, assert_no_fork, local, pull_shown};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_group_has_its_own_actor_and_a_left_group_stops_its_actor() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (mut alice, mut bob) = alice_and_bob_in_g(&node).await;
        alice
            .messenger
            .create_group("h", Suite::PostQuantum)
            .await
            .unwrap();
        alice.messenger.invite("h", &["bob".into()]).await.unwrap();
        pull_shown(&mut bob.messenger).await;
        alice.messenger.send("g", "in g").await.unwrap();
        alice.messenger.send("h", "in h").await.unwrap();
        let lines = pull_shown(&mut bob.messenger).await;
        assert!(lines.contains(&"[g] alice: in g".to_string()), "{lines:?}");
        assert!(lines.contains(&"[h] alice: in h".to_string()), "{lines:?}");
        assert_eq!(bob.messenger.group_actors().await.unwrap(), (2, 0));

        bob.messenger.leave("h").await.unwrap();
        // The actor of a group the profile no longer has is gone.
        let mut live = 2;
        for _ in 0..100 {
            live = bob.messenger.group_actors().await.unwrap().0;
            if live == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(live, 1);
        pull_shown(&mut alice.messenger).await;
        assert_no_fork(&[&alice, &bob], "g").await;
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_actor_is_restarted_from_the_profile_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (mut alice, mut bob) = alice_and_bob_in_g(&node).await;
        alice.messenger.send("g", "before").await.unwrap();
        assert_eq!(
            pull_shown(&mut bob.messenger).await,
            vec!["[g] alice: before".to_string()]
        );
        let epoch = bob.messenger.group("g").await.unwrap().epoch;

        bob.messenger.crash_group_actor("g").await.unwrap();
        alice.messenger.send("g", "after").await.unwrap();
        alice.messenger.update("g").await.unwrap();
        // The next message for the group starts a fresh actor from the profile:
        // same epoch state, the message applied once.
        assert_eq!(
            pull_shown(&mut bob.messenger).await,
            vec![
                "[g] alice: after".to_string(),
                format!("[g] * alice updated their keys (epoch {})", epoch + 1),
            ]
        );
        let (live, failures) = bob.messenger.group_actors().await.unwrap();
        assert_eq!((live, failures), (1, 1));
        bob.messenger.send("g", "still here").await.unwrap();
        assert_eq!(
            pull_shown(&mut alice.messenger).await,
            vec!["[g] bob: still here".to_string()]
        );
        assert_no_fork(&[&alice, &bob], "g").await;
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_actor_reconnects_after_the_node_restarts_at_the_same_address() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let mut config = node.config.clone();
    config.listen = node.addr;
    local(async {
        let (mut alice, mut bob) = alice_and_bob_in_g(&node).await;
        let mut events = alice.messenger.connection_events();
        node.stop().await;
        let node = TestNode::start_with(config).await;

        // The first request may see the old connection break; the next one
        // reconnects (with backoff) and resumes the session.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match alice.messenger.send("g", "after the restart").await {
                Ok(_) => break,
                Err(e) if Messenger::is_connection_loss(&e) && attempts < 3 => {}
                Err(e) => panic!("send failed: {e}"),
            }
        }
        let mut seen = Vec::new();
        while let Ok(e) = events.try_recv() {
            seen.push(e);
        }
        assert!(seen.contains(&ConnectionEvent::Reconnected), "{seen:?}");
        // Bob's tree reconnects just the same, and nothing was lost.
        let mut lines = Vec::new();
        for _ in 0..3 {
            match bob.messenger.pull(Duration::ZERO).await {
                Ok(_) => break,
                Err(e) if Messenger::is_connection_loss(&e) => {}
                Err(e) => panic!("pull failed: {e}"),
            }
        }
        lines.extend(pull_shown(&mut bob.messenger).await);
        assert!(
            lines.contains(&"[g] alice: after the restart".to_string()),
            "{lines:?}"
        );
        node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_in_flight_does_not_hold_up_a_send() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (mut alice, mut bob) = alice_and_bob_in_g(&node).await;
        // Bob starts waiting up to a minute for his inbox, then gives up waiting
        // (as `chat` does when a line is typed); the long-poll stays in flight.
        let waited = tokio::time::timeout(
            Duration::from_millis(200),
            bob.messenger.pull(Duration::from_secs(60)),
        )
        .await;
        assert!(waited.is_err(), "nothing was there to return early");
        // His send (which first catches up on the inbox) does not queue behind it.
        tokio::time::timeout(Duration::from_secs(30), bob.messenger.send("g", "typed"))
            .await
            .expect("send not held up by the long-poll")
            .unwrap();
        assert_eq!(
            pull_shown(&mut alice.messenger).await,
            vec!["[g] bob: typed".to_string()]
        );
        // And what the long-poll brings later is applied once.
        alice.messenger.send("g", "late").await.unwrap();
        let mut lines = Vec::new();
        for _ in 0..50 {
            lines.extend(pull_shown(&mut bob.messenger).await);
            if !lines.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(lines, vec!["[g] alice: late".to_string()]);
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_inbox_is_pushed_and_applied_as_messages_arrive_without_being_asked() {
    // `labelled`: 0 until the counter first moves.
    use quicnprotochat_tests::scrape::{labelled, scrape};
    let dir = tempfile::tempdir().unwrap();
    let mut config = quicnprotochat::config::ServerConfig::ephemeral(dir.path());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let node = TestNode::start_with(config).await;
    let metrics = node.metrics_addr.expect("metrics endpoint bound");
    local(async {
        let (mut alice, bob) = alice_and_bob_in_g(&node).await;
        let mut arrivals = bob.messenger.follow().await.unwrap();
        let pushes = labelled(&scrape(metrics).await, "qpc_pushes_total");
        for text in ["one", "two", "three"] {
            alice.messenger.send("g", text).await.unwrap();
            // The node pushes to bob's receiver; he only waits for the notice.
            tokio::time::timeout(Duration::from_secs(30), arrivals.recv())
                .await
                .expect("a notice while following")
                .expect("still following")
                .unwrap();
        }
        // Each message came by push (one at a time: each was awaited).
        let pushed = labelled(&scrape(metrics).await, "qpc_pushes_total") - pushes;
        assert!(pushed >= 3.0, "{pushed} pushes");
        let unread: Vec<String> = bob
            .messenger
            .unread()
            .unwrap()
            .into_iter()
            .map(|(_, l)| l.display())
            .filter(|l| !l.contains(" * "))
            .collect();
        assert_eq!(
            unread,
            vec!["[g] alice: one", "[g] alice: two", "[g] alice: three"]
        );
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_messenger_releases_the_profile_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (_alice, mut bob) = alice_and_bob_in_g(&node).await;
        // A restarted client process opens the same profile right away: every
        // actor of the old tree must have let go of the file by then.
        for _ in 0..10 {
            bob = bob.restart(&node).await;
            pull_shown(&mut bob.messenger).await;
        }
        assert_eq!(bob.messenger.group("g").await.unwrap().members.len(), 2);
    })
    .await;
    node.stop().await;
}
