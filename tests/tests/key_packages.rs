//! KeyPackages end to end against a real node: one-time packages served once,
//! last-resort ones after, per ciphersuite, and looking without consuming.

use std::collections::HashSet;

use quicnprotochat_client::KeyPackageTarget;
use quicnprotochat_crypto::mls::{Suite, validate_key_package};
use quicnprotochat_tests::accounts::{claimer, claimers, device, register};
use quicnprotochat_tests::{TestNode, local};
use quicnprotochat_wire::ErrorCode;
use redb::ReadableTable;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_one_time_then_last_resort_and_two_devices() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (phone, laptop) = (device(), device());
        let (_c1, phone_s) = register(&node, "bob", "pw", &phone).await;
        phone.publish(&phone_s, 3).await;
        let conn = node.connect().await.unwrap();
        let laptop_s = conn
            .login("bob", b"pw", &laptop.id, None)
            .await
            .unwrap()
            .session;
        laptop.publish(&laptop_s, 1).await;
        assert_eq!(laptop_s.whoami().await.unwrap().device_count, 2);

        let claimer = claimer(&node).await;
        let mut seen = HashSet::new();
        let mut last_resort_seen = 0;
        for round in 0..5 {
            let claimed = claimer
                .fetch_key_packages(&KeyPackageTarget::Username("bob".into()))
                .await
                .unwrap();
            assert_eq!(claimed.len(), 2, "one per device");
            for c in claimed {
                let v = validate_key_package(&c.key_package).unwrap();
                assert_eq!(v.identity_key, c.identity_key.0.to_vec());
                assert_eq!(v.last_resort, c.last_resort);
                quicnprotochat_crypto::envelope::HybridPublicKey::verify(
                    &c.hybrid_public_key,
                    &c.identity_key.0,
                )
                .unwrap();
                if c.last_resort {
                    last_resort_seen += 1;
                } else {
                    assert!(
                        seen.insert(c.key_package.clone()),
                        "round {round}: one-time package served twice"
                    );
                }
            }
        }
        assert_eq!(seen.len(), 4, "3 + 1 one-time packages, each once");
        assert_eq!(last_resort_seen, 6);
        assert_eq!(phone_s.key_package_status().await.unwrap(), (0, 2));
        assert_eq!(laptop_s.key_package_status().await.unwrap(), (0, 4));

        // Claiming one device by key.
        let one = claimer
            .fetch_key_packages(&KeyPackageTarget::Device(phone.key()))
            .await
            .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].identity_key, phone.key());
        let err = claimer
            .fetch_key_packages(&KeyPackageTarget::Username("nobody".into()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");

        // Uploads are validated: someone else's packages, tampered ones.
        let other = device();
        let foreign = other
            .mls
            .generate_key_package(Suite::Classic, false)
            .unwrap();
        let err = phone_s
            .upload_key_packages(&[foreign], &[], &[])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
        let mut tampered = phone
            .mls
            .generate_key_package(Suite::Classic, false)
            .unwrap();
        let n = tampered.len();
        tampered[n - 10] ^= 1;
        let err = phone_s
            .upload_key_packages(&[tampered], &[], &[])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
        let err = phone_s
            .upload_key_packages(&[], &[], &other.hybrid.signed_public(&other.id).to_bytes())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_package_is_never_served_twice_to_32_concurrent_claimers() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let carol = device();
        let (_c, s) = register(&node, "carol", "pw", &carol).await;
        carol.publish(&s, 20).await;
        let conns = claimers(&node, 32).await;
        let target = &KeyPackageTarget::Device(carol.key());
        let claims = conns.into_iter().map(|conn| async move {
            let got = conn.fetch_key_packages(target).await.unwrap();
            conn.close().await;
            got.into_iter().next().unwrap()
        });
        let claimed = futures::future::join_all(claims).await;
        let one_time: Vec<_> = claimed.iter().filter(|c| !c.last_resort).collect();
        let distinct: HashSet<_> = one_time.iter().map(|c| c.key_package.clone()).collect();
        assert_eq!(one_time.len(), 20);
        assert_eq!(distinct.len(), 20, "no one-time package served twice");
        assert_eq!(
            claimed.len() - one_time.len(),
            12,
            "the rest got the last-resort package"
        );
        assert_eq!(s.key_package_status().await.unwrap(), (0, 12));
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_are_kept_and_claimed_per_ciphersuite() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let d = device();
        let (conn, s) = register(&node, "quinn", "pw", &d).await;
        d.publish(&s, 1).await;
        let directory = conn.key_directory();
        let target = KeyPackageTarget::Username("quinn".into());
        // Nothing post-quantum yet: a clear NOT_FOUND, not a classic package.
        let err = directory
            .fetch_key_packages(&target, Suite::PostQuantum)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
        assert!(
            err.to_string()
                .contains(quicnprotochat_wire::error::NO_KEY_PACKAGES)
        );

        // One upload is one suite.
        let classic = d.mls.generate_key_package(Suite::Classic, false).unwrap();
        let pq = d
            .mls
            .generate_key_package(Suite::PostQuantum, false)
            .unwrap();
        let pq_last = d
            .mls
            .generate_key_package(Suite::PostQuantum, true)
            .unwrap();
        let err = s
            .upload_key_packages(&[classic, pq.clone()], &[], &[])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
        s.upload_key_packages(std::slice::from_ref(&pq), &pq_last, &[])
            .await
            .unwrap();

        let claimed = directory
            .fetch_key_packages(&target, Suite::PostQuantum)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].key_package, pq);
        assert!(!claimed[0].last_resort);
        let v = validate_key_package(&claimed[0].key_package).unwrap();
        assert_eq!(v.suite, Suite::PostQuantum);
        // Then the post-quantum last-resort one; the classic packages are untouched.
        let again = directory
            .fetch_key_packages(&target, Suite::PostQuantum)
            .await
            .unwrap();
        assert!(again[0].last_resort && again[0].key_package == pq_last);
        assert_eq!(s.key_package_status().await.unwrap(), (1, 0));
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looking_at_someones_keys_consumes_none_of_their_packages() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let bob = device();
        let (_c, bob_s) = register(&node, "bob", "pw", &bob).await;
        bob.publish(&bob_s, 2).await;
        let stranger = claimer(&node).await;
        for _ in 0..5 {
            let seen = stranger
                .peek_key_packages(&KeyPackageTarget::Username("bob".into()))
                .await
                .unwrap();
            assert_eq!(seen.len(), 1);
            assert!(seen[0].last_resort);
            assert_eq!(seen[0].identity_key, bob.key());
            assert!(
                validate_key_package(&seen[0].key_package)
                    .unwrap()
                    .last_resort
            );
            quicnprotochat_crypto::envelope::HybridPublicKey::verify(
                &seen[0].hybrid_public_key,
                &bob.key().0,
            )
            .unwrap();
        }
        assert_eq!(
            bob_s.key_package_status().await.unwrap(),
            (2, 0),
            "no one-time package used, the last-resort one not counted as served"
        );
        let err = stranger
            .peek_key_packages(&KeyPackageTarget::Username("nobody".into()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_are_served_as_mls_messages_even_when_uploaded_bare_or_stored_before() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let (phone, laptop) = (device(), device());
    let is_message = |kp: &[u8]| kp.starts_with(&[0, 1, 0, 5]);
    local(async {
        let (_c, phone_s) = register(&node, "bob", "pw", &phone).await;
        phone.publish(&phone_s, 1).await;
        // An older client uploads bare packages: kept framed.
        let conn = node.connect().await.unwrap();
        let laptop_s = conn
            .login("bob", b"pw", &laptop.id, None)
            .await
            .unwrap()
            .session;
        let bare = |last_resort| {
            laptop
                .mls
                .generate_key_package(Suite::Classic, last_resort)
                .unwrap()[4..]
                .to_vec()
        };
        laptop_s
            .upload_key_packages(
                &[bare(false)],
                &bare(true),
                &laptop.hybrid.signed_public(&laptop.id).to_bytes(),
            )
            .await
            .unwrap();
        let claimer = claimer(&node).await;
        let claimed = claimer
            .fetch_key_packages(&KeyPackageTarget::Username("bob".into()))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2);
        assert!(claimed.iter().all(|c| is_message(&c.key_package)));
    })
    .await;
    // A file from before the framing (schema 3) holds bare packages: framed on
    // open. (A redb upgrade: PostgreSQL databases began with framed packages.)
    node.stop().await;
    if quicnprotochat_tests::test_store_url().is_some() {
        return;
    }
    {
        let db = redb::Database::open(dir.path().join("node.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn
                .open_table(redb::TableDefinition::<&[u8; 32], &[u8]>::new(
                    "last_resort",
                ))
                .unwrap();
            let stored: Vec<([u8; 32], Vec<u8>)> = t
                .iter()
                .unwrap()
                .map(|e| {
                    let (k, v) = e.unwrap();
                    (*k.value(), v.value().to_vec())
                })
                .collect();
            for (device, kp) in stored {
                assert!(is_message(&kp));
                t.insert(&device, &kp[4..]).unwrap();
            }
            txn.open_table(redb::TableDefinition::<&str, u64>::new("meta"))
                .unwrap()
                .insert("schema_version", 3)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let node = TestNode::start(dir.path()).await;
    local(async {
        let claimer = claimer(&node).await;
        let claimed = claimer
            .fetch_key_packages(&KeyPackageTarget::Username("bob".into()))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2, "both devices' last-resort packages");
        for c in claimed {
            assert!(c.last_resort);
            assert!(is_message(&c.key_package), "framed on open");
            assert_eq!(
                validate_key_package(&c.key_package).unwrap().identity_key,
                c.identity_key.0.to_vec()
            );
        }
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_gets_no_key_packages_and_one_requester_takes_only_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quicnprotochat::config::ServerConfig::ephemeral(dir.path());
    config.rate_limits.claims_per_min_per_target = 3;
    config.rate_limits.claims_per_min_per_device = 5;
    let node = TestNode::start_with(config).await;
    local(async {
        let bob = device();
        let (_c, bob_s) = register(&node, "bob", "pw", &bob).await;
        bob.publish(&bob_s, 20).await;

        // No session on the connection: nothing, for claims and looks alike.
        let stranger = node.connect().await.unwrap();
        let by_name = KeyPackageTarget::Username("bob".into());
        let by_key = KeyPackageTarget::Device(bob.key());
        for t in [&by_name, &by_key] {
            let err = stranger.fetch_key_packages(t).await.unwrap_err();
            assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
            let err = stranger.peek_key_packages(t).await.unwrap_err();
            assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        }
        assert_eq!(bob_s.key_package_status().await.unwrap(), (20, 0));

        // A registered requester takes its share of bob's device, whichever
        // form of the target it names: the name and the key count as one.
        let first = claimer(&node).await;
        first.fetch_key_packages(&by_name).await.unwrap();
        first.fetch_key_packages(&by_key).await.unwrap();
        first.fetch_key_packages(&by_name).await.unwrap();
        for t in [&by_name, &by_key] {
            let err = first.fetch_key_packages(t).await.unwrap_err();
            assert_eq!(err.code(), Some(ErrorCode::RateLimited), "{err}");
        }
        // Another requester has a share of its own, up to the cap on bob's
        // device across all requesters (5 a minute); past it, everyone still
        // gets bob's last-resort package: he stays addable.
        let second = claimer(&node).await;
        for _ in 0..2 {
            let got = second.fetch_key_packages(&by_key).await.unwrap();
            assert!(!got[0].last_resort);
        }
        let got = second.fetch_key_packages(&by_name).await.unwrap();
        assert!(got[0].last_resort, "one-time packages are spared");
        assert_eq!(
            bob_s.key_package_status().await.unwrap(),
            (15, 0),
            "5 one-time packages taken, no more"
        );
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_claim_target_is_refused_before_any_limiter_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quicnprotochat::config::ServerConfig::ephemeral(dir.path());
    config.rate_limits.claims_per_min_per_requester = 5;
    let node = TestNode::start_with(config).await;
    local(async {
        let bob = device();
        let (_c, bob_s) = register(&node, "bob", "pw", &bob).await;
        bob.publish(&bob_s, 2).await;
        let requester = claimer(&node).await;
        let huge = "x".repeat(256 * 1024);
        for _ in 0..20 {
            let err = requester
                .fetch_key_packages(&KeyPackageTarget::Username(huge.clone()))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
        }
        // None of the 20 was counted (nor kept): the requester's budget of 5
        // is whole.
        for _ in 0..5 {
            requester
                .fetch_key_packages(&KeyPackageTarget::Device(bob.key()))
                .await
                .unwrap();
        }
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_client_tops_up_its_key_packages_once_others_claimed_most() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quicnprotochat::config::ServerConfig::ephemeral(dir.path());
    config.rate_limits.claims_per_min_per_requester = 10_000;
    config.rate_limits.claims_per_min_per_target = 10_000;
    config.rate_limits.claims_per_min_per_device = 10_000;
    let node = TestNode::start_with(config).await;
    local(async {
        let bob = node.person("bob").await;
        let by_name = KeyPackageTarget::Username("bob".into());
        let claimer = claimer(&node).await;
        let claimed = quicnprotochat_client::commands::DEFAULT_KEY_PACKAGES - 5;
        for _ in 0..claimed {
            assert!(!claimer.fetch_key_packages(&by_name).await.unwrap()[0].last_resort);
        }
        // Five left: below the threshold, so the client publishes what was
        // claimed; then it has enough, and publishes nothing.
        assert_eq!(bob.messenger.refill_key_packages().await.unwrap(), claimed);
        assert_eq!(bob.messenger.refill_key_packages().await.unwrap(), 0);
        // What it published serves (and opens: its secrets are in the profile).
        for _ in 0..10 {
            assert!(!claimer.fetch_key_packages(&by_name).await.unwrap()[0].last_resort);
        }
    })
    .await;
    node.stop().await;
}
