//! Groups past the old per-recipient ceiling (below 200 members: every commit was
//! sealed and uploaded once per member), and independent delivery: one member's
//! full inbox never blocks the others, and its owner is told what it missed.
//! Real node, real clients (QUIC, TLS, Cap'n Proto, fsync'd redb, OpenMLS).

use quicnprotochat::config::ServerConfig;
use quicnprotochat_crypto::mls::Suite;
use quicnprotochat_tests::{Person, TestNode, assert_no_fork, local, pull_shown as pull};

/// A node whose login and claim limits let one test address enroll and invite
/// hundreds of people.
async fn node_for_crowds(dir: &std::path::Path, queue_limit: u64) -> TestNode {
    let mut config = ServerConfig::ephemeral(dir);
    config.rate_limits.logins_per_min_per_address = 100_000;
    config.rate_limits.claims_per_min_per_requester = 100_000;
    config.queue_limit = queue_limit;
    TestNode::start_with(config).await
}

async fn crowd(node: &TestNode, prefix: &str, n: usize) -> Vec<Person> {
    let mut people = Vec::with_capacity(n);
    for i in 0..n {
        people.push(node.person(&format!("{prefix}{i:03}")).await);
    }
    people
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_250_is_built_through_a_real_node_and_every_member_decrypts() {
    const MEMBERS: usize = 250;
    let dir = tempfile::tempdir().unwrap();
    let node = node_for_crowds(dir.path(), 1000).await;
    local(async {
        let started = std::time::Instant::now();
        let mut people = crowd(&node, "m", MEMBERS).await;
        eprintln!("enrolled {MEMBERS} in {:?}", started.elapsed());
        let names: Vec<String> = people[1..]
            .iter()
            .map(|p| p.messenger.username().to_string())
            .collect();
        people[0]
            .messenger
            .create_group("crowd", Suite::PostQuantum)
            .await
            .unwrap();
        people[0].messenger.invite("crowd", &names).await.unwrap();
        eprintln!("invited at {:?}", started.elapsed());
        let report = people[0]
            .messenger
            .send("crowd", "hello, all 250 of you")
            .await
            .unwrap();
        assert_eq!(report.seqs.len(), MEMBERS - 1, "{:?}", report.undelivered);
        let (bodies, _) = node.context().store.shared_bodies().await.unwrap();
        assert_eq!(bodies, 2, "the Welcome and the message, each stored once");
        for p in &mut people[1..] {
            let lines = pull(&mut p.messenger).await;
            assert!(lines[0].contains("joined, invited by m000"), "{lines:?}");
            assert!(
                lines
                    .iter()
                    .any(|l| l.ends_with("m000: hello, all 250 of you")),
                "{} decrypts: {lines:?}",
                p.messenger.username()
            );
        }
        eprintln!("all read at {:?}", started.elapsed());
        let (bodies, _) = node.context().store.shared_bodies().await.unwrap();
        assert_eq!(bodies, 0, "deleted once the last member acked");
        let summary = people[MEMBERS - 1].messenger.group("crowd").await.unwrap();
        assert_eq!(summary.members.len(), MEMBERS);
        assert_no_fork(&people.iter().collect::<Vec<_>>(), "crowd").await;
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_does_not_block_the_group_and_its_owner_sees_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_for_crowds(dir.path(), 5).await;
    local(async {
        let mut people = crowd(&node, "p", 3).await;
        people[0]
            .messenger
            .create_group("team", Suite::PostQuantum)
            .await
            .unwrap();
        people[0]
            .messenger
            .invite("team", &["p001".into(), "p002".into()])
            .await
            .unwrap();
        pull(&mut people[1].messenger).await;
        // p002 stays offline: the Welcome is one of its 5 places. p001 reads.
        let mut read_by_p001 = Vec::new();
        for i in 0..8 {
            let report = people[0]
                .messenger
                .send("team", &format!("message {i}"))
                .await
                .unwrap();
            assert_eq!(report.seqs.len(), 1 + usize::from(i < 4), "{report:?}");
            if i >= 4 {
                let summary = report.summary("team");
                assert!(
                    summary.contains("not delivered to p002 (QUEUE_FULL)"),
                    "the sender learns whose inbox was full: {summary}"
                );
            }
            read_by_p001.extend(pull(&mut people[1].messenger).await);
        }
        // The group goes on: a commit still reaches the full inbox.
        people[0].messenger.update("team").await.unwrap();
        people[0]
            .messenger
            .send("team", "after the update")
            .await
            .unwrap();
        assert_eq!(
            read_by_p001
                .iter()
                .filter(|l| l.contains("p000: message"))
                .count(),
            8,
            "the member with room got everything: {read_by_p001:?}"
        );
        // The owner of the full inbox reads what was kept, is told what it
        // missed, and goes on reading.
        let mut lines = pull(&mut people[2].messenger).await;
        assert_eq!(
            lines.iter().filter(|l| l.contains("p000: message")).count(),
            4,
            "{lines:?}"
        );
        people[0]
            .messenger
            .send("team", "welcome back")
            .await
            .unwrap();
        lines.extend(pull(&mut people[2].messenger).await);
        // (The note is queued right after the ack that made room, so it may
        // arrive with the first pull or the next.)
        assert!(
            lines
                .iter()
                .any(|l| l.contains("you missed 5 message(s) of team")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.ends_with("p000: welcome back")),
            "{lines:?}"
        );
        assert_no_fork(&[&people[0], &people[2]], "team").await;
    })
    .await;
    node.stop().await;
}
