//! Rejoining groups by external commit, against a real node with real MLS: the
//! node keeps each group's latest GroupInfo with its fence and knows which groups
//! an account's devices are in; a device of a member account (new, or one that
//! lost its state) gets the GroupInfo and joins; strangers get neither, and a
//! GroupInfo that does not match the commit is refused.

use quicnprotochat_client::{ClientError, CommitBodies, SessionHandle};
use quicnprotochat_crypto::mls::{CommitOutput, Group, Suite};
use quicnprotochat_tests::accounts::{Device, device, register};
use quicnprotochat_tests::{TestNode, local};
use quicnprotochat_wire::ErrorCode;

fn key(d: &Device) -> Vec<u8> {
    d.key().0.to_vec()
}

/// The node reads none of the bodies: fixed bytes stand for them.
fn bodies(out: &CommitOutput, group_info: Option<&[u8]>) -> CommitBodies {
    CommitBodies {
        commit: b"commit".to_vec(),
        welcome: out
            .welcome
            .as_ref()
            .map(|_| b"welcome".to_vec())
            .unwrap_or_default(),
        receipt: b"receipt".to_vec(),
        group_info: group_info.map(<[u8]>::to_vec).unwrap_or_default(),
        ..CommitBodies::default()
    }
}

/// hana creates a group and adds ivan's phone; the commit publishes its
/// GroupInfo. Returns hana's group and the commit.
async fn hana_adds_ivan(hana: &Device, h: &SessionHandle, phone: &Device) -> (Group, CommitOutput) {
    let mut group = hana.mls.create_group(Suite::Classic, "tea").unwrap();
    let kp = phone
        .mls
        .generate_key_package(Suite::Classic, false)
        .unwrap();
    let out = group.add_members(&hana.mls, &[kp]).unwrap();
    let members = vec![key(hana), key(phone)];
    h.commit_group(
        &group.group_id(),
        out.epoch,
        &members,
        &out.commit,
        &bodies(&out, out.group_info.as_deref()),
    )
    .await
    .unwrap();
    group.confirm_commit(&hana.mls).unwrap();
    (group, out)
}

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> Option<ErrorCode> {
    r.expect_err("refused").code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_of_a_member_account_finds_its_groups_and_rejoins_by_external_commit() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (hana, phone, laptop) = (device(), device(), device());
        let (_ch, h) = register(&node, "hana", "pw", &hana).await;
        let (_cp, p) = register(&node, "ivan", "pw", &phone).await;
        hana.publish(&h, 0).await;
        phone.publish(&p, 0).await;
        let (mut group, _) = hana_adds_ivan(&hana, &h, &phone).await;
        let gid = group.group_id();

        // ivan's new laptop has no state: the node tells it the account's groups.
        let c = node.connect().await.unwrap();
        let l = c
            .login("ivan", b"pw", &laptop.id, None)
            .await
            .unwrap()
            .session;
        assert_eq!(l.account_groups().await.unwrap(), vec![gid.clone()]);
        let (info, members) = l.group_info(&gid).await.unwrap();
        let mut named: Vec<(Vec<u8>, String, bool)> = members
            .iter()
            .map(|m| {
                (
                    m.identity_key.0.to_vec(),
                    m.username.clone(),
                    !m.hybrid_public_key.is_empty(),
                )
            })
            .collect();
        named.sort();
        let mut expected = vec![
            (key(&hana), "hana".to_string(), true),
            (key(&phone), "ivan".to_string(), true),
        ];
        expected.sort();
        assert_eq!(named, expected, "whom to seal to, and their names");

        let hana_had = node.stored(&hana.key()).await.len();
        let (joined, out) = laptop.mls.join_external(&info).unwrap();
        let everyone = vec![key(&hana), key(&phone), key(&laptop)];
        let delivered = l
            .commit_group(
                &gid,
                out.epoch,
                &everyone,
                &out.commit,
                &bodies(&out, out.group_info.as_deref()),
            )
            .await
            .expect("a device of a member account may join from outside");
        assert_eq!(delivered, 3, "hana, the phone, and the laptop's receipt");
        group.process(&hana.mls, &out.commit).unwrap();
        assert_eq!(group.epoch_authenticator(), joined.epoch_authenticator());
        assert_eq!(
            node.stored(&hana.key()).await.len(),
            hana_had + 1,
            "the join's commit"
        );

        // Once in, the laptop commits like any member; the GroupInfo follows.
        let (info_now, _) = l.group_info(&gid).await.unwrap();
        assert_eq!(info_now, out.group_info.clone().unwrap());
        let stale = l
            .commit_group(&gid, out.epoch, &everyone, &out.commit, &bodies(&out, None))
            .await;
        assert_eq!(code(stale), Some(ErrorCode::StaleEpoch));
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_get_no_group_info_and_cannot_join_from_outside() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (hana, phone, zed) = (device(), device(), device());
        let (_ch, h) = register(&node, "hana", "pw", &hana).await;
        let (_cp, p) = register(&node, "ivan", "pw", &phone).await;
        let (_cz, z) = register(&node, "zed", "pw", &zed).await;
        phone.publish(&p, 0).await;
        let (group, out) = hana_adds_ivan(&hana, &h, &phone).await;
        let gid = group.group_id();

        assert!(z.account_groups().await.unwrap().is_empty());
        assert_eq!(
            code(z.group_info(&gid).await),
            Some(ErrorCode::Unauthorized)
        );
        // Even holding the GroupInfo (leaked), zed's external commit is refused.
        let hana_had = node.stored(&hana.key()).await.len();
        let (_, join) = zed.mls.join_external(&out.group_info.unwrap()).unwrap();
        let members = vec![key(&hana), key(&phone), key(&zed)];
        let refused = z
            .commit_group(
                &gid,
                join.epoch,
                &members,
                &join.commit,
                &bodies(&join, None),
            )
            .await;
        assert_eq!(code(refused), Some(ErrorCode::Unauthorized));
        assert_eq!(
            node.stored(&hana.key()).await.len(),
            hana_had,
            "nothing reached hana"
        );
        assert_eq!(
            code(z.group_info(b"no-such-group").await),
            Some(ErrorCode::Unauthorized),
            "an unknown group says no more than a foreign one"
        );
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_info_must_match_its_commit_and_a_commit_without_one_retires_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (hana, phone) = (device(), device());
        let (_ch, h) = register(&node, "hana", "pw", &hana).await;
        let (_cp, p) = register(&node, "ivan", "pw", &phone).await;
        phone.publish(&p, 0).await;
        let (mut group, first) = hana_adds_ivan(&hana, &h, &phone).await;
        let gid = group.group_id();
        let members = vec![key(&hana), key(&phone)];

        // The GroupInfo of the epoch before does not describe where this commit leads.
        let out = group.self_update(&hana.mls).unwrap();
        let refused = h
            .commit_group(
                &gid,
                out.epoch,
                &members,
                &out.commit,
                &bodies(&out, first.group_info.as_deref()),
            )
            .await;
        assert_eq!(code(refused), Some(ErrorCode::BadRequest));
        let garbage = h
            .commit_group(
                &gid,
                out.epoch,
                &members,
                &out.commit,
                &bodies(&out, Some(b"junk")),
            )
            .await;
        assert_eq!(code(garbage), Some(ErrorCode::BadRequest));
        let huge = vec![0u8; quicnprotochat_wire::limits::MAX_GROUP_INFO + 1];
        let too_large = h
            .commit_group(
                &gid,
                out.epoch,
                &members,
                &out.commit,
                &bodies(&out, Some(&huge)),
            )
            .await;
        assert_eq!(code(too_large), Some(ErrorCode::TooLarge));
        assert_eq!(
            p.group_info(&gid).await.unwrap().0,
            first.group_info.clone().unwrap(),
            "refused commits changed nothing"
        );

        // A commit publishing none: the old one no longer matches and is gone.
        h.commit_group(&gid, out.epoch, &members, &out.commit, &bodies(&out, None))
            .await
            .unwrap();
        group.confirm_commit(&hana.mls).unwrap();
        assert_eq!(code(p.group_info(&gid).await), Some(ErrorCode::NotFound));
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_removed_from_a_group_no_longer_lists_it_and_the_index_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let (hana, phone) = (device(), device());
    let gid = local(async {
        let (_ch, h) = register(&node, "hana", "pw", &hana).await;
        let (_cp, p) = register(&node, "ivan", "pw", &phone).await;
        phone.publish(&p, 0).await;
        let (group, _) = hana_adds_ivan(&hana, &h, &phone).await;
        group.group_id()
    })
    .await;
    // A file from before the index (schema 2): the index is built on open.
    node.stop().await;
    {
        let db = redb::Database::open(dir.path().join("node.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(redb::TableDefinition::<(&[u8; 32], &[u8]), ()>::new(
            "member_groups",
        ))
        .unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert("schema_version", 2)
            .unwrap();
        txn.commit().unwrap();
    }
    let node = TestNode::start(dir.path()).await;
    local(async {
        let c = node.connect().await.unwrap();
        let p = c
            .login("ivan", b"pw", &phone.id, None)
            .await
            .unwrap()
            .session;
        assert_eq!(p.account_groups().await.unwrap(), vec![gid.clone()]);
        let c = node.connect().await.unwrap();
        let h = c
            .login("hana", b"pw", &hana.id, None)
            .await
            .unwrap()
            .session;
        let mut group = hana.mls.load_group(&gid).unwrap().unwrap();
        let out = group.remove_members(&hana.mls, &[&key(&phone)]).unwrap();
        h.commit_group(
            &gid,
            out.epoch,
            &[key(&hana)],
            &out.commit,
            &bodies(&out, None),
        )
        .await
        .unwrap();
        assert!(p.account_groups().await.unwrap().is_empty());
        assert_eq!(h.account_groups().await.unwrap(), vec![gid.clone()]);
    })
    .await;
    node.stop().await;
}

// Through the client's actors: what a device that rejoins, and the members
// around it, see.

mod through_the_client {
    use quicnprotochat_client::messenger::CrashPoint;
    use quicnprotochat_tests::{
        Person, TestNode, alice_and_bob_in_g, assert_no_fork, local, pull_shown,
    };

    fn has(lines: &[String], text: &str) -> bool {
        lines.iter().any(|l| l.contains(text))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rejoin_cut_off_after_the_node_accepted_it_is_redone_and_leaves_no_lost_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path()).await;
        local(async {
            let (mut alice, bob) = alice_and_bob_in_g(&node).await;
            drop(bob); // bob's profile is lost
            let mut bob = Person::log_in_again(&node, "bob").await;
            bob.messenger
                .die_in_next_commit(CrashPoint::AfterAcceptance);
            let lines = pull_shown(&mut bob.messenger).await;
            assert!(!has(&lines, "rejoined"), "{lines:?}");
            assert!(bob.messenger.groups().await.unwrap().is_empty());
            // The node took the commit: the group has a leaf of this device
            // whose keys died with the "process".
            let lines = pull_shown(&mut alice.messenger).await;
            assert!(has(&lines, "bob joined from a new device"), "{lines:?}");

            let lines = pull_shown(&mut bob.messenger).await;
            assert!(has(&lines, "[g] * rejoined"), "{lines:?}");
            pull_shown(&mut alice.messenger).await;
            assert_no_fork(&[&alice, &bob], "g").await;
            let a = alice.messenger.group("g").await.unwrap();
            assert_eq!(
                a.members.len(),
                3,
                "alice, bob's lost device and his new one, no fourth: {:?}",
                a.members
            );
            alice.messenger.send("g", "still here?").await.unwrap();
            let lines = pull_shown(&mut bob.messenger).await;
            assert!(has(&lines, "alice: still here?"), "{lines:?}");
            assert_no_fork(&[&alice, &bob], "g").await;
        })
        .await;
        node.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_with_no_current_group_info_is_named_as_not_rejoinable_and_the_rest_work() {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path()).await;
        local(async {
            let (mut alice, _lost) = alice_and_bob_in_g(&node).await;
            alice
                .messenger
                .create_group("h", quicnprotochat_crypto::mls::Suite::Classic)
                .await
                .unwrap();
            alice.messenger.invite("h", &["bob".into()]).await.unwrap();
            // As if h's last commit had been too large to carry its GroupInfo.
            let h = alice.messenger.group("h").await.unwrap().group_id;
            node.context()
                .writer
                .transact(move |txn| {
                    txn.open_table(redb::TableDefinition::<&[u8], &[u8]>::new("group_infos"))?
                        .remove(h.as_slice())?;
                    Ok::<_, redb::Error>(())
                })
                .await
                .unwrap();
            let mut bob = Person::log_in_again(&node, "bob").await;
            let lines = pull_shown(&mut bob.messenger).await;
            assert!(has(&lines, "[g] * rejoined"), "{lines:?}");
            assert!(
                has(
                    &lines,
                    "cannot be rejoined: the group has no current GroupInfo"
                ),
                "{lines:?}"
            );
            let names: Vec<String> = bob
                .messenger
                .groups()
                .await
                .unwrap()
                .into_iter()
                .map(|g| g.name)
                .collect();
            assert_eq!(names, ["g"]);
            // Settled: later pulls say nothing more of it.
            let lines = pull_shown(&mut bob.messenger).await;
            assert!(!has(&lines, "rejoined"), "{lines:?}");
        })
        .await;
        node.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_left_after_rejoining_is_never_rejoined_behind_the_users_back() {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path()).await;
        local(async {
            let (mut alice, _lost) = alice_and_bob_in_g(&node).await;
            let mut bob = Person::log_in_again(&node, "bob").await;
            let lines = pull_shown(&mut bob.messenger).await;
            assert!(has(&lines, "[g] * rejoined"), "{lines:?}");
            bob.messenger.leave("g").await.unwrap();
            pull_shown(&mut alice.messenger).await;
            // bob's lost device keeps the account in the group, yet this
            // device, which left, stays out.
            for _ in 0..3 {
                let lines = pull_shown(&mut bob.messenger).await;
                assert!(!has(&lines, "rejoined"), "{lines:?}");
            }
            assert!(bob.messenger.groups().await.unwrap().is_empty());
        })
        .await;
        node.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_device_that_rejoins_before_its_other_device_adds_it_is_not_added_twice() {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path()).await;
        local(async {
            let (mut alice, mut phone) = alice_and_bob_in_g(&node).await;
            let mut laptop = Person::log_in_again(&node, "bob").await;
            let lines = pull_shown(&mut laptop.messenger).await;
            assert!(has(&lines, "[g] * rejoined"), "{lines:?}");
            // The phone sees the new device: already in, nothing to add.
            let lines = pull_shown(&mut phone.messenger).await;
            assert!(has(&lines, "bob joined from a new device"), "{lines:?}");
            assert!(!has(&lines, "rejected"), "{lines:?}");
            pull_shown(&mut alice.messenger).await;
            let a = alice.messenger.group("g").await.unwrap();
            assert_eq!(a.members.len(), 3, "{:?}", a.members);
            for p in [&phone, &laptop] {
                let g = p.messenger.group("g").await.unwrap();
                assert_eq!(g.epoch_authenticator, a.epoch_authenticator);
            }
            laptop
                .messenger
                .send("g", "hello from the laptop")
                .await
                .unwrap();
            for p in [&mut alice, &mut phone] {
                let lines = pull_shown(&mut p.messenger).await;
                assert!(has(&lines, "bob: hello from the laptop"), "{lines:?}");
            }
            assert_no_fork(&[&alice, &phone, &laptop], "g").await;
        })
        .await;
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_roster_renames_no_device_and_each_is_shown_by_its_directory_name() {
    use quicnprotochat_client::message::{Body, ClientMessage, RosterEntry};
    use quicnprotochat_crypto::envelope::{BodyProtection, HybridPublicKey, seal_shared};
    use quicnprotochat_tests::{alice_and_bob_in_g, pull_shown};
    use quicnprotochat_wire::IdentityKey;

    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        // bob is a member; a second device of bob's account joins from outside,
        // says it is alice, and that bob's first device is mallory.
        let (mut alice, bob) = alice_and_bob_in_g(&node).await;
        let gid = alice.messenger.group("g").await.unwrap().group_id;
        let liar = device();
        let c = node.connect().await.unwrap();
        let s = c
            .login("bob", b"pw-bob", &liar.id, None)
            .await
            .unwrap()
            .session;
        liar.publish(&s, 0).await;
        let (info, directory) = s.group_info(&gid).await.unwrap();
        let (group, out) = liar.mls.join_external(&info).unwrap();
        let claim = ClientMessage {
            body: Body::Group,
            group_id: gid.clone(),
            mls: out.commit.clone(),
            sender_name: "alice".into(),
            roster: vec![
                RosterEntry {
                    identity: liar.key().0,
                    username: "alice".into(),
                    hybrid_key: liar.hybrid.signed_public(&liar.id).to_bytes(),
                },
                RosterEntry {
                    identity: bob.messenger.identity_key(),
                    username: "mallory".into(),
                    hybrid_key: directory
                        .iter()
                        .find(|d| d.identity_key.0 == bob.messenger.identity_key())
                        .unwrap()
                        .hybrid_public_key
                        .clone(),
                },
            ],
        };
        let keys: Vec<HybridPublicKey> = directory
            .iter()
            .map(|d| HybridPublicKey::verify(&d.hybrid_public_key, &d.identity_key.0).unwrap())
            .collect();
        let ids: Vec<IdentityKey> = directory.iter().map(|d| d.identity_key).collect();
        let sealed = seal_shared(
            &liar.id,
            &claim.encode().unwrap(),
            0,
            BodyProtection::Wrapped,
            &keys,
        );
        let bodies = CommitBodies {
            commit: sealed.body,
            receipt: b"receipt".to_vec(),
            parts: ids.into_iter().zip(sealed.parts).collect(),
            ..CommitBodies::default()
        };
        s.commit_group(&gid, out.epoch, &group.members(), &out.commit, &bodies)
            .await
            .expect("the account is in the group: the node lets the device in");

        // The node's directory names the new device bob's: that name is shown,
        // and neither claim is.
        let lines = pull_shown(&mut alice.messenger).await;
        let has = |text: &str| lines.iter().any(|l| l.contains(text));
        assert!(
            has("bob joined from a new device"),
            "shown by the directory's name: {lines:?}"
        );
        assert!(!has("alice joined"), "{lines:?}");
        assert!(!has("mallory"), "{lines:?}");
        let members = alice.messenger.group("g").await.unwrap().members;
        let count = |name: &str| members.iter().filter(|m| m.as_str() == name).count();
        assert_eq!(
            (count("alice"), count("bob"), count("mallory")),
            (1, 2, 0),
            "{members:?}"
        );
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_names_only_asked_devices_in_the_group_and_only_to_its_members() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (hana, phone, zed) = (device(), device(), device());
        let (_ch, h) = register(&node, "hana", "pw", &hana).await;
        let (_cp, p) = register(&node, "ivan", "pw", &phone).await;
        let (_cz, z) = register(&node, "zed", "pw", &zed).await;
        hana.publish(&h, 0).await;
        phone.publish(&p, 0).await;
        let (group, _) = hana_adds_ivan(&hana, &h, &phone).await;
        let gid = group.group_id();

        // zed is asked about, but is no member: left out.
        let listed = p
            .group_members(&gid, &[hana.key().0, zed.key().0])
            .await
            .unwrap();
        let named: Vec<(quicnprotochat_wire::IdentityKey, &str)> = listed
            .iter()
            .map(|e| (e.identity_key, e.username.as_str()))
            .collect();
        assert_eq!(named, vec![(hana.key(), "hana")]);
        assert!(listed[0].hybrid_public_key.is_empty(), "names only");
        // An outsider learns nothing, not even of a group it guesses.
        assert_eq!(
            code(z.group_members(&gid, &[hana.key().0]).await),
            Some(ErrorCode::Unauthorized)
        );
        assert_eq!(
            code(z.group_members(b"no such group", &[hana.key().0]).await),
            Some(ErrorCode::Unauthorized)
        );
        // A question is bounded like a group.
        let many: Vec<[u8; 32]> = (0..=4096u32)
            .map(|i| {
                let mut k = [0u8; 32];
                k[..4].copy_from_slice(&i.to_be_bytes());
                k
            })
            .collect();
        assert_eq!(
            code(p.group_members(&gid, &many).await),
            Some(ErrorCode::TooLarge)
        );
    })
    .await;
    node.stop().await;
}
