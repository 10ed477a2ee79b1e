//! MLS group life cycle through our wrapper, over both ciphersuites: create, invite,
//! join, talk, remove, self-update, leave, races, and the epoch-window outcomes.

use openmls_memory_storage::MemoryStorage;
use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::mls::{
    Group, GroupEvent, GroupMember, MAX_PAST_EPOCHS, MlsError, Suite, validate_key_package,
};

struct Person {
    id: Identity,
    member: GroupMember<MemoryStorage>,
}

fn person() -> Person {
    let id = Identity::generate();
    let member = GroupMember::new(&id, MemoryStorage::default()).unwrap();
    Person { id, member }
}

impl Person {
    fn key(&self) -> Vec<u8> {
        self.id.public_key().to_vec()
    }
}

/// Runs `test` once per ciphersuite.
fn for_each_suite(test: impl Fn(Suite)) {
    for suite in Suite::ALL {
        test(suite);
    }
}

/// alice creates a group and adds the others; everyone joins.
fn group_of(suite: Suite, people: &[&Person]) -> Vec<Group> {
    let alice = people[0];
    let mut alice_group = alice.member.create_group(suite, "the crew").unwrap();
    let kps: Vec<Vec<u8>> = people[1..]
        .iter()
        .map(|p| p.member.generate_key_package(suite, false).unwrap())
        .collect();
    let mut groups = Vec::new();
    if !kps.is_empty() {
        let out = alice_group.add_members(&alice.member, &kps).unwrap();
        alice_group.confirm_commit(&alice.member).unwrap();
        let welcome = out.welcome.unwrap();
        groups.extend(people[1..].iter().map(|p| p.member.join(&welcome).unwrap()));
    }
    groups.insert(0, alice_group);
    groups
}

fn deliver(to: &mut Group, who: &Person, bytes: &[u8]) -> GroupEvent {
    to.process(&who.member, bytes).unwrap()
}

fn assert_same_state(groups: &[&Group]) {
    let first = groups[0];
    for g in &groups[1..] {
        assert_eq!(g.epoch(), first.epoch());
        assert_eq!(
            g.epoch_authenticator(),
            first.epoch_authenticator(),
            "no fork"
        );
        assert_eq!(g.members(), first.members());
    }
}

#[test]
fn invitee_joins_with_the_groups_name_and_everyone_reads_everyone() {
    for_each_suite(|suite| {
        let (alice, bob, carol) = (person(), person(), person());
        let mut g = group_of(suite, &[&alice, &bob, &carol]);
        assert_eq!(g[1].name().as_deref(), Some("the crew"));
        assert_eq!(g[2].suite(), Some(suite));
        assert_eq!(g[0].members(), vec![alice.key(), bob.key(), carol.key()]);
        assert_same_state(&[&g[0], &g[1], &g[2]]);

        let people = [&alice, &bob, &carol];
        for from in 0..3 {
            let text = format!("hello from {from} in {suite:?}");
            let ct = g[from]
                .encrypt(&people[from].member, text.as_bytes())
                .unwrap();
            for to in (0..3).filter(|t| *t != from) {
                match deliver(&mut g[to], people[to], &ct) {
                    GroupEvent::Application {
                        sender, plaintext, ..
                    } => {
                        assert_eq!(sender, people[from].key());
                        assert_eq!(plaintext, text.as_bytes());
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    });
}

#[test]
fn removed_member_cannot_read_what_follows() {
    for_each_suite(|suite| {
        let (alice, bob, carol) = (person(), person(), person());
        let mut g = group_of(suite, &[&alice, &bob, &carol]);
        let out = g[0].remove_members(&alice.member, &[&bob.key()]).unwrap();
        g[0].confirm_commit(&alice.member).unwrap();
        match deliver(&mut g[1], &bob, &out.commit) {
            GroupEvent::CommitApplied { removed_self, .. } => assert!(removed_self),
            other => panic!("{other:?}"),
        }
        assert!(!g[1].is_active());
        match deliver(&mut g[2], &carol, &out.commit) {
            GroupEvent::CommitApplied {
                removed_self,
                members,
                ..
            } => {
                assert!(!removed_self);
                assert_eq!(members, vec![alice.key(), carol.key()]);
            }
            other => panic!("{other:?}"),
        }
        assert_same_state(&[&g[0], &g[2]]);
        let secret = g[0]
            .encrypt(&alice.member, b"bob must not read this")
            .unwrap();
        assert!(matches!(
            g[1].process(&bob.member, &secret),
            Err(MlsError::NotActive)
        ));
        assert!(matches!(
            deliver(&mut g[2], &carol, &secret),
            GroupEvent::Application { .. }
        ));
        assert!(matches!(
            g[1].encrypt(&bob.member, b"x"),
            Err(MlsError::NotActive)
        ));
    });
}

#[test]
fn self_update_and_leave_move_everyone_to_the_same_epoch() {
    for_each_suite(|suite| {
        let (alice, bob, carol) = (person(), person(), person());
        let mut g = group_of(suite, &[&alice, &bob, &carol]);
        let before = g[1].epoch_authenticator();
        let out = g[1].self_update(&bob.member).unwrap();
        assert_eq!(out.epoch, g[1].epoch());
        g[1].confirm_commit(&bob.member).unwrap();
        deliver(&mut g[0], &alice, &out.commit);
        deliver(&mut g[2], &carol, &out.commit);
        assert_same_state(&[&g[0], &g[1], &g[2]]);
        assert_ne!(g[0].epoch_authenticator(), before);

        // carol leaves: her proposal is committed by alice.
        let proposal = g[2].leave(&carol.member).unwrap();
        assert!(matches!(
            deliver(&mut g[0], &alice, &proposal),
            GroupEvent::ProposalStored { .. }
        ));
        assert!(matches!(
            deliver(&mut g[1], &bob, &proposal),
            GroupEvent::ProposalStored { .. }
        ));
        let out = g[0]
            .commit_pending_proposals(&alice.member)
            .unwrap()
            .expect("a commit");
        g[0].confirm_commit(&alice.member).unwrap();
        deliver(&mut g[1], &bob, &out.commit);
        match deliver(&mut g[2], &carol, &out.commit) {
            GroupEvent::CommitApplied { removed_self, .. } => assert!(removed_self),
            other => panic!("{other:?}"),
        }
        assert_same_state(&[&g[0], &g[1]]);
        assert_eq!(g[0].members(), vec![alice.key(), bob.key()]);
    });
}

#[test]
fn concurrent_commits_converge_on_the_one_the_delivery_service_accepted() {
    for_each_suite(|suite| {
        let (alice, bob, carol) = (person(), person(), person());
        let mut g = group_of(suite, &[&alice, &bob, &carol]);
        // Both commit at the same epoch; the delivery service takes alice's.
        let winner = g[0].self_update(&alice.member).unwrap();
        let loser = g[1].self_update(&bob.member).unwrap();
        assert_eq!(winner.epoch, loser.epoch);
        g[0].confirm_commit(&alice.member).unwrap();
        // bob learns of the winner: his pending commit is dropped, state follows alice.
        deliver(&mut g[1], &bob, &winner.commit);
        deliver(&mut g[2], &carol, &winner.commit);
        assert!(!g[1].has_pending_commit());
        assert_same_state(&[&g[0], &g[1], &g[2]]);
        // The loser's commit is now from a past epoch: never applied.
        assert_eq!(
            g[2].process(&carol.member, &loser.commit).unwrap(),
            GroupEvent::TooOld { epoch: loser.epoch }
        );
        // bob retries on the new epoch.
        let retry = g[1].self_update(&bob.member).unwrap();
        g[1].confirm_commit(&bob.member).unwrap();
        deliver(&mut g[0], &alice, &retry.commit);
        deliver(&mut g[2], &carol, &retry.commit);
        assert_same_state(&[&g[0], &g[1], &g[2]]);
    });
}

#[test]
fn future_epoch_is_not_yet_past_epochs_within_the_window_decrypt_older_are_too_old() {
    for_each_suite(|suite| {
        let (alice, bob) = (person(), person());
        let mut g = group_of(suite, &[&alice, &bob]);
        let old_epoch = g[1].epoch();
        let early = g[1]
            .encrypt(&bob.member, b"sent before the commit")
            .unwrap();

        let commit = g[0].self_update(&alice.member).unwrap();
        g[0].confirm_commit(&alice.member).unwrap();
        let from_future = g[0]
            .encrypt(&alice.member, b"sent after the commit")
            .unwrap();

        // bob sees alice's next-epoch message before her commit.
        assert_eq!(
            g[1].process(&bob.member, &from_future).unwrap(),
            GroupEvent::NotYet {
                epoch: old_epoch + 1
            }
        );
        deliver(&mut g[1], &bob, &commit.commit);
        match deliver(&mut g[1], &bob, &from_future) {
            GroupEvent::Application { plaintext, .. } => {
                assert_eq!(plaintext, b"sent after the commit")
            }
            other => panic!("{other:?}"),
        }
        // bob's message from one epoch back still opens for alice.
        match deliver(&mut g[0], &alice, &early) {
            GroupEvent::Application {
                plaintext, epoch, ..
            } => {
                assert_eq!(plaintext, b"sent before the commit");
                assert_eq!(epoch, old_epoch);
            }
            other => panic!("{other:?}"),
        }
        // Beyond the window it is too old.
        let ancient = g[1].encrypt(&bob.member, b"ancient").unwrap();
        let ancient_epoch = g[1].epoch();
        for _ in 0..=MAX_PAST_EPOCHS {
            let c = g[0].self_update(&alice.member).unwrap();
            g[0].confirm_commit(&alice.member).unwrap();
            deliver(&mut g[1], &bob, &c.commit);
        }
        assert_eq!(
            g[0].process(&alice.member, &ancient).unwrap(),
            GroupEvent::TooOld {
                epoch: ancient_epoch
            }
        );
    });
}

#[test]
fn duplicates_and_foreign_messages_are_refused() {
    for_each_suite(|suite| {
        let (alice, bob) = (person(), person());
        let mut g = group_of(suite, &[&alice, &bob]);
        let ct = g[0].encrypt(&alice.member, b"once").unwrap();
        assert!(matches!(
            deliver(&mut g[1], &bob, &ct),
            GroupEvent::Application { .. }
        ));
        assert!(
            matches!(g[1].process(&bob.member, &ct), Err(MlsError::Rejected(_))),
            "replay refused"
        );

        let (eve, _) = (person(), ());
        let mut other = eve.member.create_group(suite, "elsewhere").unwrap();
        let foreign = other.encrypt(&eve.member, b"hi").unwrap();
        assert!(matches!(
            g[1].process(&bob.member, &foreign),
            Err(MlsError::WrongGroup)
        ));
        assert!(matches!(
            g[1].process(&bob.member, b"garbage"),
            Err(MlsError::Malformed(_))
        ));
        let mut flipped = ct.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(g[1].process(&bob.member, &flipped).is_err());
    });
}

#[test]
fn key_packages_validate_and_say_who_and_what() {
    for_each_suite(|suite| {
        let p = person();
        let kp = p.member.generate_key_package(suite, false).unwrap();
        let v = validate_key_package(&kp).unwrap();
        assert_eq!(v.identity_key, p.key());
        assert_eq!(v.suite, suite);
        assert!(!v.last_resort);
        let lr =
            validate_key_package(&p.member.generate_key_package(suite, true).unwrap()).unwrap();
        assert!(lr.last_resort);
        for i in [10, kp.len() / 2, kp.len() - 5] {
            let mut bad = kp.clone();
            bad[i] ^= 0x40;
            assert!(validate_key_package(&bad).is_err(), "flip at {i}");
        }
        assert!(validate_key_package(&kp[..kp.len() - 1]).is_err());
    });
}

#[test]
fn key_packages_travel_as_mls_messages_and_bare_ones_from_before_are_still_read() {
    use openmls::prelude::tls_codec::Deserialize;
    use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn};
    use quicnprotochat_crypto::mls::key_package_message;
    for_each_suite(|suite| {
        let (alice, bob) = (person(), person());
        let framed = bob.member.generate_key_package(suite, false).unwrap();
        // RFC 9420 §6: version mls10, wire format mls_key_package, then the package.
        assert_eq!(&framed[..4], &[0, 1, 0, 5]);
        let message = MlsMessageIn::tls_deserialize_exact(framed.as_slice()).unwrap();
        assert!(matches!(message.extract(), MlsMessageBodyIn::KeyPackage(_)));
        assert_eq!(
            key_package_message(&framed),
            framed,
            "framing is idempotent"
        );

        // A bare package (as sent before the framing) validates, frames to the
        // same message, and can be added.
        let bare = framed[4..].to_vec();
        assert_eq!(
            validate_key_package(&bare).unwrap(),
            validate_key_package(&framed).unwrap()
        );
        assert_eq!(key_package_message(&bare), framed);
        let mut g = alice.member.create_group(suite, "x").unwrap();
        let out = g.add_members(&alice.member, &[bare]).unwrap();
        g.confirm_commit(&alice.member).unwrap();
        let joined = bob.member.join(&out.welcome.unwrap()).unwrap();
        assert_eq!(joined.epoch_authenticator(), g.epoch_authenticator());
        // Any other MLSMessage is not a KeyPackage.
        assert!(validate_key_package(&out.commit).is_err());
    });
}

#[test]
fn a_last_resort_key_package_can_be_used_more_than_once() {
    for_each_suite(|suite| {
        let (alice, carol, bob) = (person(), person(), person());
        let lr = bob.member.generate_key_package(suite, true).unwrap();
        for creator in [&alice, &carol] {
            let mut g = creator.member.create_group(suite, "x").unwrap();
            let out = g
                .add_members(&creator.member, std::slice::from_ref(&lr))
                .unwrap();
            g.confirm_commit(&creator.member).unwrap();
            let joined = bob.member.join(&out.welcome.unwrap()).unwrap();
            assert_eq!(joined.epoch_authenticator(), g.epoch_authenticator());
        }
    });
}

#[test]
fn groups_reload_from_storage() {
    for_each_suite(|suite| {
        let (alice, bob) = (person(), person());
        let g = group_of(suite, &[&alice, &bob]);
        let reloaded = bob
            .member
            .load_group(&g[1].group_id())
            .unwrap()
            .expect("stored");
        assert_eq!(reloaded.epoch_authenticator(), g[1].epoch_authenticator());
        assert_eq!(reloaded.name().as_deref(), Some("the crew"));
    });
}

#[test]
fn a_commits_clear_header_names_its_group_and_epoch_and_nothing_else_passes_as_a_commit() {
    use quicnprotochat_crypto::mls::{CommitHeader, commit_header};
    for_each_suite(|suite| {
        let (alice, bob) = (person(), person());
        let mut groups = group_of(suite, &[&alice, &bob]);
        let gid = groups[0].group_id();
        let epoch = groups[0].epoch();
        let out = groups[0].self_update(&alice.member).unwrap();
        // Commits are PrivateMessages: the header is all the node can read.
        assert_eq!(
            commit_header(&out.commit).unwrap(),
            CommitHeader {
                group_id: gid.clone(),
                epoch,
                external: false,
            }
        );
        groups[0].confirm_commit(&alice.member).unwrap();
        deliver(&mut groups[1], &bob, &out.commit);

        let app = groups[1].encrypt(&bob.member, b"hi").unwrap();
        assert!(matches!(commit_header(&app), Err(MlsError::Malformed(_))));
        let welcome = {
            let carol = person();
            let kp = carol.member.generate_key_package(suite, false).unwrap();
            let out = groups[0].add_members(&alice.member, &[kp]).unwrap();
            out.welcome.unwrap()
        };
        assert!(matches!(
            commit_header(&welcome),
            Err(MlsError::Malformed(_))
        ));
        assert!(matches!(
            commit_header(b"\x00\x01garbage"),
            Err(MlsError::Malformed(_))
        ));
        let mut trailing = out.commit.clone();
        trailing.push(0);
        assert!(matches!(
            commit_header(&trailing),
            Err(MlsError::Malformed(_))
        ));
    });
}

#[test]
fn a_device_that_lost_its_state_rejoins_from_the_published_group_info_and_reads_what_follows() {
    use quicnprotochat_crypto::mls::{commit_header, group_info_header};
    for_each_suite(|suite| {
        let (alice, bob) = (person(), person());
        let mut groups = group_of(suite, &[&alice, &bob]);
        let gid = groups[0].group_id();
        let out = groups[0].self_update(&alice.member).unwrap();
        groups[0].confirm_commit(&alice.member).unwrap();
        deliver(&mut groups[1], &bob, &out.commit);
        // Every commit publishes the GroupInfo of the epoch it leads to.
        let info = out.group_info.expect("a commit publishes its GroupInfo");
        let header = group_info_header(&info).unwrap();
        assert_eq!((header.group_id.as_slice(), header.epoch), (&gid[..], 2));

        // bob's profile is gone; his new device (a new identity) rejoins.
        let bob2 = person();
        let (mut rejoined, join) = bob2.member.join_external(&info).unwrap();
        let header = commit_header(&join.commit).unwrap();
        assert!(header.external, "the node can tell an external commit");
        assert_eq!((header.group_id, header.epoch, join.epoch), (gid, 2, 2));
        assert!(matches!(
            deliver(&mut groups[0], &alice, &join.commit),
            GroupEvent::CommitApplied { .. }
        ));
        assert!(matches!(
            deliver(&mut groups[1], &bob, &join.commit),
            GroupEvent::CommitApplied { .. }
        ));
        assert_same_state(&[&groups[0], &groups[1], &rejoined]);
        assert_eq!(
            rejoined.members().len(),
            3,
            "the lost device stays until removed"
        );

        let hello = groups[0].encrypt(&alice.member, b"welcome back").unwrap();
        assert!(matches!(
            deliver(&mut rejoined, &bob2, &hello),
            GroupEvent::Application { plaintext, .. } if plaintext == b"welcome back"
        ));
        let reply = rejoined.encrypt(&bob2.member, b"thanks").unwrap();
        assert!(matches!(
            deliver(&mut groups[0], &alice, &reply),
            GroupEvent::Application { plaintext, .. } if plaintext == b"thanks"
        ));
        // The rejoin's own GroupInfo lets the next device in too.
        assert!(join.group_info.is_some());
    });
}

#[test]
fn a_device_rejoining_with_its_old_key_replaces_its_old_leaf() {
    for_each_suite(|suite| {
        let (alice, bob) = (person(), person());
        let mut groups = group_of(suite, &[&alice, &bob]);
        let out = groups[0].self_update(&alice.member).unwrap();
        groups[0].confirm_commit(&alice.member).unwrap();
        deliver(&mut groups[1], &bob, &out.commit);
        // Same identity, empty storage: the MLS state is lost, the key is not.
        let fresh = GroupMember::new(&bob.id, MemoryStorage::default()).unwrap();
        let (rejoined, join) = fresh.join_external(&out.group_info.unwrap()).unwrap();
        deliver(&mut groups[0], &alice, &join.commit);
        assert_same_state(&[&groups[0], &rejoined]);
        assert_eq!(groups[0].members(), rejoined.members());
        assert_eq!(
            rejoined.members().len(),
            2,
            "the old leaf went with the same commit"
        );
    });
}

#[test]
fn garbage_is_not_a_group_info() {
    use quicnprotochat_crypto::mls::group_info_header;
    let alice = person();
    assert!(matches!(
        group_info_header(b"nope"),
        Err(MlsError::Malformed(_))
    ));
    assert!(matches!(
        alice.member.join_external(b"nope"),
        Err(MlsError::Malformed(_))
    ));
}
