//! Encrypted group chat end to end through the client's Messenger against a real
//! node: invite, join, send, receive in order, remove, self-update, leave; the
//! commit race (many members commit at one epoch, exactly one wins, nobody forks);
//! a group of 20; messages from a future epoch held until their commit arrives.

use quicnprotochat_wire::Inbound;
use std::collections::BTreeMap;

use quicnprotochat::config::ServerConfig;
use quicnprotochat_client::messenger::{CrashPoint, MessengerError};
use quicnprotochat_crypto::mls::Suite;
use quicnprotochat_tests::{
    Person, TestNode, alice_and_bob_in_g, assert_no_fork, local, pull_shown as pull,
};

/// A node whose login limit lets a test register many users from one address.
async fn node_for_many(dir: &std::path::Path) -> TestNode {
    let mut config = ServerConfig::ephemeral(dir);
    config.rate_limits.logins_per_min_per_address = 10_000;
    TestNode::start_with(config).await
}

/// The chat lines (not notices) of one group.
fn said(lines: &[String], group: &str) -> Vec<String> {
    let prefix = format!("[{group}] ");
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|l| !l.starts_with("* "))
        .map(str::to_string)
        .collect()
}

/// `n` people named PREFIX0.., the first of whom creates `group` and invites the
/// rest in one call; all have joined on return.
async fn group_of(node: &TestNode, prefix: &str, n: usize, group: &str) -> Vec<Person> {
    let mut people = Vec::new();
    for i in 0..n {
        people.push(node.person(&format!("{prefix}{i:02}")).await);
    }
    let names: Vec<String> = people[1..]
        .iter()
        .map(|p| p.messenger.username().to_string())
        .collect();
    people[0]
        .messenger
        .create_group(group, Suite::Classic)
        .await
        .unwrap();
    people[0].messenger.invite(group, &names).await.unwrap();
    for p in &mut people[1..] {
        pull(&mut p.messenger).await;
    }
    people
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_chat_remove_update_and_leave() {
    for suite in [Suite::Classic, Suite::PostQuantum] {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path()).await;
        local(async {
            let mut alice = node.person("alice").await;
            let mut bob = node.person("bob").await;
            let mut carol = node.person("carol").await;
            alice.messenger.create_group("team", suite).await.unwrap();
            assert!(matches!(
                alice.messenger.create_group("team", suite).await,
                Err(MessengerError::GroupExists(_))
            ));
            alice
                .messenger
                .invite("team", &["bob".into(), "carol".into()])
                .await
                .unwrap();
            let joined = pull(&mut bob.messenger).await;
            assert!(joined[0].contains("joined, invited by alice"), "{joined:?}");
            pull(&mut carol.messenger).await;
            assert_no_fork(&[&alice, &bob, &carol], "team").await;
            assert_eq!(
                bob.messenger.group("team").await.unwrap().members,
                vec!["alice", "bob", "carol"]
            );

            for i in 0..3 {
                alice
                    .messenger
                    .send("team", &format!("hello {i}"))
                    .await
                    .unwrap();
            }
            bob.messenger.send("team", "hi from bob").await.unwrap();
            assert_eq!(
                said(&pull(&mut carol.messenger).await, "team"),
                vec![
                    "alice: hello 0",
                    "alice: hello 1",
                    "alice: hello 2",
                    "bob: hi from bob"
                ]
            );
            assert_eq!(
                said(&pull(&mut bob.messenger).await, "team"),
                vec!["alice: hello 0", "alice: hello 1", "alice: hello 2"]
            );

            // Removal: carol learns it and can read nothing sent afterwards.
            alice
                .messenger
                .remove("team", &["carol".into()])
                .await
                .unwrap();
            let lines = pull(&mut carol.messenger).await;
            assert!(
                lines.iter().any(|l| l.contains("you were removed")),
                "{lines:?}"
            );
            assert!(matches!(
                carol.messenger.send("team", "still here?").await,
                Err(MessengerError::UnknownGroup(_))
            ));
            alice.messenger.send("team", "carol is gone").await.unwrap();
            assert!(said(&pull(&mut carol.messenger).await, "team").is_empty());
            let lines = pull(&mut bob.messenger).await;
            assert!(
                lines.iter().any(|l| l.contains("alice removed carol")),
                "{lines:?}"
            );
            assert_eq!(said(&lines, "team"), vec!["alice: carol is gone"]);

            // Self-update moves the epoch; everyone follows.
            let before = bob.messenger.group("team").await.unwrap().epoch;
            let after = bob.messenger.update("team").await.unwrap();
            assert_eq!(after, before + 1);
            pull(&mut alice.messenger).await;
            assert_no_fork(&[&alice, &bob], "team").await;
            alice.messenger.send("team", "after update").await.unwrap();
            assert_eq!(
                said(&pull(&mut bob.messenger).await, "team"),
                vec!["alice: after update"]
            );

            // Leaving: bob asks, alice's client commits it.
            bob.messenger.leave("team").await.unwrap();
            let lines = pull(&mut alice.messenger).await;
            assert!(
                lines.iter().any(|l| l.contains("bob asked to leave")),
                "{lines:?}"
            );
            assert_eq!(
                alice.messenger.group("team").await.unwrap().members,
                vec!["alice"]
            );

            // Clear errors.
            assert!(matches!(
                alice.messenger.send("nope", "x").await,
                Err(MessengerError::UnknownGroup(_))
            ));
            assert!(matches!(
                alice.messenger.invite("team", &["nobody".into()]).await,
                Err(MessengerError::UnknownUser(_))
            ));
        })
        .await;
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_commits_converge_without_forks() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let mut people = group_of(&node, "racer", 8, "race").await;
        // Trials with 2, 4 and 8 members committing at the same epoch at once.
        for (trial, racers) in [2usize, 4, 8, 3, 8].into_iter().enumerate() {
            let start = people[0].messenger.group("race").await.unwrap().epoch;
            let commits = people[..racers]
                .iter_mut()
                .map(|p| async move { p.messenger.update("race").await });
            let epochs: Vec<u64> = futures::future::join_all(commits)
                .await
                .into_iter()
                .map(|r| r.expect("every racer's commit lands, after retries"))
                .collect();
            // One winner per epoch: the racers' commits took distinct epochs.
            let mut sorted = epochs.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), racers, "trial {trial}: {epochs:?}");
            assert_eq!(*sorted.last().unwrap(), start + racers as u64);
            for p in &mut people {
                pull(&mut p.messenger).await;
            }
            let refs: Vec<&Person> = people.iter().collect();
            assert_no_fork(&refs, "race").await;
        }
        // And everyone can still read everyone.
        for (i, p) in people.iter_mut().enumerate() {
            let text = format!("from {i}");
            p.messenger.send("race", &text).await.unwrap();
        }
        for (i, p) in people.iter_mut().enumerate() {
            let got = said(&pull(&mut p.messenger).await, "race");
            assert_eq!(got.len(), 7, "member {i} reads the 7 others: {got:?}");
        }
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_twenty_reads_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_for_many(dir.path()).await;
    local(async {
        let mut people = group_of(&node, "member", 20, "twenty").await;
        for p in &mut people {
            let text = format!("hi from {}", p.messenger.username());
            p.messenger.send("twenty", &text).await.unwrap();
        }
        for p in &mut people {
            let me = p.messenger.username().to_string();
            let got = said(&pull(&mut p.messenger).await, "twenty");
            let mut by_sender: BTreeMap<String, String> = BTreeMap::new();
            for line in got {
                let (s, t) = line.split_once(": ").unwrap();
                assert_eq!(t, format!("hi from {s}"));
                assert!(by_sender.insert(s.to_string(), t.to_string()).is_none());
            }
            assert_eq!(by_sender.len(), 19, "{me} decrypts every other member");
            assert!(!by_sender.contains_key(&me));
        }
        let refs: Vec<&Person> = people.iter().collect();
        assert_no_fork(&refs, "twenty").await;
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_a_later_epoch_waits_for_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (mut alice, mut bob) = alice_and_bob_in_g(&node).await;
        alice.messenger.update("g").await.unwrap();
        alice
            .messenger
            .send("g", "sent after the update")
            .await
            .unwrap();

        // Swap the two envelopes in bob's inbox: the message now arrives before
        // the commit that moves bob into its epoch. Only a member can put a
        // shared body into bob's inbox: alice, through the group's fan-out.
        let conn = node.connect().await.unwrap();
        let raw = conn
            .login("bob", bob.password.as_bytes(), &bob.identity, None)
            .await
            .unwrap()
            .session;
        let mut envs = raw.fetch(0, 0).await.unwrap();
        assert_eq!(envs.len(), 2, "the commit, then the message");
        raw.ack(envs.last().unwrap().seq).await.unwrap();
        envs.reverse();
        let conn = node.connect().await.unwrap();
        let raw_alice = conn
            .login("alice", alice.password.as_bytes(), &alice.identity, None)
            .await
            .unwrap()
            .session;
        let gid = alice.messenger.group("g").await.unwrap().group_id;
        let me = quicnprotochat_wire::IdentityKey(bob.identity.public_key());
        for e in &envs {
            let Ok(Inbound::Shared { part, body }) = e.inbound() else {
                panic!("group traffic arrives as shared bodies");
            };
            let sent = raw_alice
                .send_group(&gid, body, &[(me, part.to_vec())])
                .await
                .unwrap();
            assert!(sent[0].outcome.is_ok());
        }

        let lines = pull(&mut bob.messenger).await;
        let commit = lines.iter().position(|l| l.contains("updated their keys"));
        let message = lines
            .iter()
            .position(|l| l.ends_with("alice: sent after the update"));
        assert!(
            commit.is_some() && message.is_some() && commit < message,
            "held, then shown after its commit: {lines:?}"
        );
        assert!(bob.messenger.state().held().unwrap().is_empty());
        assert_no_fork(&[&alice, &bob], "g").await;

        // Replayed envelopes (same bytes again) are refused, not applied twice.
        for e in &envs {
            let Ok(Inbound::Shared { part, body }) = e.inbound() else {
                unreachable!("checked above");
            };
            raw_alice
                .send_group(&gid, body, &[(me, part.to_vec())])
                .await
                .unwrap();
        }
        let lines = pull(&mut bob.messenger).await;
        assert!(said(&lines, "g").is_empty(), "{lines:?}");
        assert_no_fork(&[&alice, &bob], "g").await;
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_accepted_while_the_client_died_is_applied_from_its_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (mut alice, mut bob) = alice_and_bob_in_g(&node).await;
        let before = alice.messenger.group("g").await.unwrap().epoch;

        alice
            .messenger
            .die_in_next_commit(CrashPoint::AfterAcceptance);
        alice.messenger.update("g").await.unwrap();
        let mut alice = alice.restart(&node).await;
        pull(&mut bob.messenger).await;
        assert_eq!(bob.messenger.group("g").await.unwrap().epoch, before + 1);

        let lines = pull(&mut alice.messenger).await;
        assert!(
            lines.iter().any(|l| l.contains("your change was applied")),
            "{lines:?}"
        );
        assert_no_fork(&[&alice, &bob], "g").await;
        bob.messenger.send("g", "still one group").await.unwrap();
        assert_eq!(
            said(&pull(&mut alice.messenger).await, "g"),
            vec!["bob: still one group"]
        );
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_saved_but_never_sent_is_discarded_and_redone() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (mut alice, mut bob) = alice_and_bob_in_g(&node).await;
        let before = alice.messenger.group("g").await.unwrap().epoch;

        // The process dies with the commit saved as pending, before sending it.
        alice
            .messenger
            .die_in_next_commit(CrashPoint::BeforeSending);
        alice.messenger.update("g").await.unwrap();
        let mut alice = alice.restart(&node).await;
        // No receipt in the inbox: it never reached the node, so it is dropped,
        // and the next change goes through.
        pull(&mut alice.messenger).await;
        assert_eq!(alice.messenger.group("g").await.unwrap().epoch, before);
        assert_eq!(alice.messenger.update("g").await.unwrap(), before + 1);
        pull(&mut bob.messenger).await;
        assert_no_fork(&[&alice, &bob], "g").await;
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_naming_a_member_falsely_shows_the_directorys_name_not_the_claim() {
    use quicnprotochat_client::message::RosterEntry;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (mut alice, bob) = alice_and_bob_in_g(&node).await;
        let mut carol = node.person("carol").await;
        // alice's client is modified: its roster calls bob's device "mallory",
        // and its Welcome to carol carries that roster.
        let bob_key = bob.messenger.identity_key();
        let bob_hybrid = alice
            .messenger
            .state()
            .roster_entry(&bob_key)
            .unwrap()
            .expect("alice knows bob")
            .hybrid_key;
        alice
            .messenger
            .state()
            .write(|t| {
                t.put_roster(&RosterEntry {
                    identity: bob_key,
                    username: "mallory".into(),
                    hybrid_key: bob_hybrid,
                })
            })
            .unwrap();
        alice
            .messenger
            .invite("g", &["carol".into()])
            .await
            .unwrap();

        let lines = pull(&mut carol.messenger).await;
        assert!(
            lines.iter().any(|l| l.contains("joined, invited by alice")),
            "{lines:?}"
        );
        let members = carol.messenger.group("g").await.unwrap().members;
        assert!(members.iter().any(|m| m == "bob"), "{members:?}");
        assert!(!members.iter().any(|m| m == "mallory"), "{members:?}");
        // A name confirmed once is never taken away by a later claim.
        let entry = carol.messenger.state().roster_entry(&bob_key).unwrap();
        assert_eq!(entry.map(|e| e.username).as_deref(), Some("bob"));
    })
    .await;
    node.stop().await;
}
