//! Upgrade fixtures: a node database, two client profiles and a few wire
//! messages written by the code of one day, checked in under
//! `tests/fixtures/<date>/`, and opened by today's code. A later change of a
//! table layout, a record encoding or a message format must migrate them (or
//! bump a version and say why it cannot), or this test fails.
//!
//! `scripts/make-fixtures.sh` writes a new set (the ignored test below); old
//! sets stay, so every version keeps being opened.
//!
//! Nothing here may expire: the profiles log in again with their passwords (a
//! saved session token would lapse), and no KeyPackage is claimed (their
//! lifetimes run out).

use std::path::{Path, PathBuf};
use std::time::Duration;

use quicnprotochat_client::ClientState;
use quicnprotochat_client::commands::{ClientOptions, enroll, login};
use quicnprotochat_client::message::ClientMessage;
use quicnprotochat_client::messenger::Messenger;
use quicnprotochat_crypto::envelope::{BodyProtection, open_shared, seal_shared};
use quicnprotochat_crypto::mls::Suite;
use quicnprotochat_tests::{TestNode, local, pull_shown};
use serde::{Deserialize, Serialize};

const SETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

/// What a set's `expected.json` says its wire messages hold.
#[derive(Serialize, Deserialize)]
struct Expected {
    /// The commit of the code that wrote the set.
    written_by: String,
    /// `wire/group-message.body` + `.part`, opened with bob's hybrid key.
    sender: String,
    group_id: String,
    mls_len: usize,
    sender_name: String,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn options(node: &TestNode, profile: &Path) -> ClientOptions {
    ClientOptions {
        server: node.addr.to_string(),
        ca_cert: node.cert_path(),
        state_dir: profile.to_path_buf(),
        auth_token: None,
        json: false,
        ca_bundle: None,
        server_name: None,
    }
}

async fn messenger(node: &TestNode, profile: &Path, user: &str) -> Messenger {
    login(&options(node, profile), user, &format!("pw-{user}"))
        .await
        .expect("logs in with the password");
    Messenger::start(ClientState::open(profile).unwrap(), node.address())
        .await
        .expect("messenger starts on the old profile")
}

fn sets() -> Vec<PathBuf> {
    let mut sets: Vec<PathBuf> = std::fs::read_dir(SETS)
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    sets.sort();
    sets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn todays_code_opens_every_checked_in_node_database_profile_and_wire_message() {
    let sets = sets();
    assert!(!sets.is_empty(), "no fixture sets under {SETS}");
    for set in sets {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&set, dir.path());
        let expected: Expected =
            serde_json::from_slice(&std::fs::read(dir.path().join("expected.json")).unwrap())
                .unwrap();
        let node = TestNode::start(&dir.path().join("node")).await;
        local(async {
            let mut alice = messenger(&node, &dir.path().join("alice"), "alice").await;
            let mut bob = messenger(&node, &dir.path().join("bob"), "bob").await;
            // What waited in bob's inbox on the old node is read by today's code.
            let lines = pull_shown(&mut bob).await;
            assert!(
                lines
                    .iter()
                    .any(|l| l == "[g] alice: queued before the upgrade"),
                "{}: {lines:?}",
                set.display()
            );
            // The old groups keep working both ways.
            alice.send("g", "after the upgrade").await.unwrap();
            bob.send("g", "and back").await.unwrap();
            let lines = pull_shown(&mut bob).await;
            assert!(
                lines.iter().any(|l| l == "[g] alice: after the upgrade"),
                "{lines:?}"
            );
            let lines = pull_shown(&mut alice).await;
            assert!(lines.iter().any(|l| l == "[g] bob: and back"), "{lines:?}");
            alice.send("pq", "post-quantum, after").await.unwrap();
            let lines = pull_shown(&mut bob).await;
            assert!(
                lines.iter().any(|l| l == "[pq] alice: post-quantum, after"),
                "{lines:?}"
            );
            for g in ["g", "pq"] {
                let (a, b) = (alice.group(g).await.unwrap(), bob.group(g).await.unwrap());
                assert_eq!(a.epoch_authenticator, b.epoch_authenticator, "{g}");
            }

            // The old wire message opens with bob's old key and decodes.
            let hybrid = bob.state().hybrid_key().unwrap();
            let wire = dir.path().join("wire");
            let body = std::fs::read(wire.join("group-message.body")).unwrap();
            let part = std::fs::read(wire.join("group-message.part")).unwrap();
            let opened = open_shared(&hybrid, &part, &body).unwrap();
            assert_eq!(hex(&opened.sender), expected.sender);
            let msg = ClientMessage::decode(&opened.payload).unwrap();
            assert_eq!(hex(&msg.group_id), expected.group_id);
            assert_eq!(msg.mls.len(), expected.mls_len);
            assert_eq!(msg.sender_name, expected.sender_name);
            alice.close().await;
            bob.close().await;
        })
        .await;
        node.stop().await;
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes a new set under `tests/fixtures/<QPC_FIXTURE_SET>/` (run by
/// `scripts/make-fixtures.sh`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes fixtures; run by scripts/make-fixtures.sh"]
async fn write_fixture_set() {
    let name = std::env::var("QPC_FIXTURE_SET").expect("QPC_FIXTURE_SET names the set");
    let written_by = std::env::var("QPC_FIXTURE_COMMIT").unwrap_or_else(|_| "unknown".into());
    let out = Path::new(SETS).join(&name);
    assert!(
        !out.exists(),
        "{} exists: sets are never rewritten",
        out.display()
    );
    let work = tempfile::tempdir().unwrap();
    let node = TestNode::start(&work.path().join("node")).await;
    let expected = local(async {
        let mut people = Vec::new();
        for user in ["alice", "bob"] {
            let profile = work.path().join(user);
            let state = ClientState::open(&profile).unwrap();
            let conn = node.connect().await.unwrap();
            enroll(&state, &conn, user, &format!("pw-{user}"), None)
                .await
                .unwrap();
            conn.close().await;
            people.push(Messenger::start(state, node.address()).await.unwrap());
        }
        let [mut alice, mut bob]: [Messenger; 2] = people.try_into().ok().unwrap();
        alice.create_group("g", Suite::Classic).await.unwrap();
        alice.invite("g", &["bob".into()]).await.unwrap();
        pull_shown(&mut bob).await;
        alice.create_group("pq", Suite::PostQuantum).await.unwrap();
        alice.invite("pq", &["bob".into()]).await.unwrap();
        pull_shown(&mut bob).await;
        bob.send("pq", "read before the upgrade").await.unwrap();
        pull_shown(&mut alice).await;
        // Left in bob's inbox: the new code must read it.
        alice.send("g", "queued before the upgrade").await.unwrap();

        // A wire message as today's code seals it for bob.
        let gid = alice.group("g").await.unwrap().group_id;
        let msg = ClientMessage {
            body: quicnprotochat_client::message::Body::Group,
            group_id: gid.clone(),
            mls: vec![7; 100],
            sender_name: "alice".into(),
            roster: Vec::new(),
        };
        let alice_id = alice.state().identity().unwrap();
        let bob_key = bob
            .state()
            .hybrid_key()
            .unwrap()
            .signed_public(&bob.state().identity().unwrap());
        let sealed = seal_shared(
            &alice_id,
            &msg.encode().unwrap(),
            0,
            BodyProtection::Wrapped,
            &[bob_key],
        );
        let wire = work.path().join("wire");
        std::fs::create_dir_all(&wire).unwrap();
        std::fs::write(wire.join("group-message.body"), &sealed.body).unwrap();
        std::fs::write(wire.join("group-message.part"), &sealed.parts[0]).unwrap();
        alice.close().await;
        bob.close().await;
        Expected {
            written_by,
            sender: hex(&alice_id.public_key()),
            group_id: hex(&gid),
            mls_len: 100,
            sender_name: "alice".into(),
        }
    })
    .await;
    node.stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(
        work.path().join("expected.json"),
        serde_json::to_vec_pretty(&expected).unwrap(),
    )
    .unwrap();
    copy_dir(work.path(), &out);
    eprintln!("wrote {}", out.display());
}
