//! The Authentication Service end to end against a real node: OPAQUE accounts,
//! devices, sessions, KeyPackages, sealed sender, rate limits, enumeration.

use std::collections::HashSet;
use std::time::Duration;

use openmls_memory_storage::MemoryStorage;
use quicnprotochat::client::{KeyPackageTarget, NodeConnection, SessionHandle};
use quicnprotochat::config::ServerConfig;
use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::envelope::{HybridKeyPair, open_sealed_sender, seal_sealed_sender};
use quicnprotochat_crypto::mls::{GroupMember, Suite, validate_key_package};
use quicnprotochat_crypto::opaque;
use quicnprotochat_tests::{TestNode, local};
use quicnprotochat_wire::{ErrorCode, IdentityKey};

/// A device: identity, MLS side (for KeyPackages) and hybrid key.
struct Device {
    id: Identity,
    mls: GroupMember<MemoryStorage>,
    hybrid: HybridKeyPair,
}

fn device() -> Device {
    let id = Identity::generate();
    let mls = GroupMember::new(&id, MemoryStorage::default()).unwrap();
    Device {
        hybrid: HybridKeyPair::generate(1),
        mls,
        id,
    }
}

impl Device {
    fn key(&self) -> IdentityKey {
        IdentityKey(self.id.public_key())
    }

    async fn publish(&self, s: &SessionHandle, one_time: usize) {
        let kps: Vec<Vec<u8>> = (0..one_time)
            .map(|_| {
                self.mls
                    .generate_key_package(Suite::Classic, false)
                    .unwrap()
            })
            .collect();
        let lr = self.mls.generate_key_package(Suite::Classic, true).unwrap();
        s.upload_key_packages(&kps, &lr, &self.hybrid.signed_public(&self.id).to_bytes())
            .await
            .unwrap();
    }
}

async fn register(
    node: &TestNode,
    name: &str,
    password: &str,
    d: &Device,
) -> (NodeConnection, SessionHandle) {
    let conn = node.connect().await.unwrap();
    conn.register(name, password.as_bytes(), &d.id, None)
        .await
        .unwrap();
    let logged = conn
        .login(name, password.as_bytes(), &d.id, None)
        .await
        .unwrap();
    (conn, logged.session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_resume_logout() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let alice = device();
        let conn = node.connect().await.unwrap();
        conn.register("alice", b"pw1", &alice.id, None)
            .await
            .unwrap();
        let logged = conn.login("alice", b"pw1", &alice.id, None).await.unwrap();
        let me = logged.session.whoami().await.unwrap();
        assert_eq!(me.username, "alice");
        assert_eq!(me.identity_key, alice.key());
        assert_eq!(me.device_count, 1);
        assert_eq!(me.expires_at_ms, logged.expires_at_ms);
        assert!(logged.expires_at_ms > 0);
        assert_eq!(logged.token.len(), 32);

        // Reconnect and resume with the token.
        conn.close().await;
        let conn = node.connect().await.unwrap();
        let (resumed, expires) = conn.resume(&logged.token, None).await.unwrap();
        assert_eq!(expires, logged.expires_at_ms);
        assert_eq!(resumed.whoami().await.unwrap().username, "alice");

        // Logout ends the session everywhere, and the token with it.
        resumed.logout().await.unwrap();
        let err = resumed.whoami().await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        let err = conn.resume(&logged.token, None).await.err().unwrap();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        let err = conn.resume(&[0u8; 32], None).await.err().unwrap();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
    })
    .await;
    // Accounts and sessions are durable.
    let node = node.restart().await;
    local(async {
        let alice = device();
        let conn = node.connect().await.unwrap();
        // A new device logs in with the account's password.
        let logged = conn.login("alice", b"pw1", &alice.id, None).await.unwrap();
        assert_eq!(logged.session.whoami().await.unwrap().device_count, 2);
        let conn2 = node.connect().await.unwrap();
        let (resumed, _) = conn2.resume(&logged.token, None).await.unwrap();
        assert_eq!(resumed.whoami().await.unwrap().identity_key, alice.key());
    })
    .await;
    let node = node.restart().await;
    local(async {
        // ...and a session token survives a node restart.
        let conn = node.connect().await.unwrap();
        assert!(
            conn.login("alice", b"wrong", &device().id, None)
                .await
                .is_err()
        );
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_unknown_user_and_wrong_key_look_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let alice = device();
        let (_c, _s) = register(&node, "alice", "secret", &alice).await;
        let conn = node.connect().await.unwrap();
        let wrong_pw = conn
            .login("alice", b"Secret", &alice.id, None)
            .await
            .err()
            .unwrap();
        let unknown = conn
            .login("zelda", b"secret", &alice.id, None)
            .await
            .err()
            .unwrap();
        // Right password, but the proof of the identity key does not verify.
        let wrong_key = {
            let c = node.connect().await.unwrap();
            let (state, request) = opaque::client_login_start(b"secret").unwrap();
            let response = c.login_start_raw("alice", &request).await.unwrap();
            let fin = opaque::client_login_finish(state, b"secret", &response, "alice").unwrap();
            c.challenge().await.unwrap();
            c.login_finish_raw(&fin.finalization, &alice.id.public_key(), &[1u8; 64])
                .await
                .unwrap_err()
        };
        for e in [&wrong_pw, &unknown, &wrong_key] {
            assert_eq!(e.code(), Some(ErrorCode::Unauthorized), "{e}");
        }
        assert_eq!(
            wrong_pw.to_string(),
            unknown.to_string(),
            "same answer, same text"
        );
        assert_eq!(
            wrong_pw.to_string(),
            wrong_key.to_string(),
            "same answer, same text"
        );

        // The login answer for an unknown user has the size of a real one.
        let (_, request) = opaque::client_login_start(b"x").unwrap();
        let known = conn.login_start_raw("alice", &request).await.unwrap();
        let unknown = conn.login_start_raw("nobody-here", &request).await.unwrap();
        assert_eq!(known.len(), unknown.len());

        // Registration: clear errors for taken and malformed names.
        let err = conn
            .register("alice", b"x", &device().id, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::AlreadyExists), "{err}");
        let err = conn
            .register("Al", b"x", &device().id, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    })
    .await;
    node.stop().await;
}

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

        let claimer = node.connect().await.unwrap();
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
        let claims = (0..32).map(|_| async {
            let conn = node.connect().await.unwrap();
            let got = conn
                .fetch_key_packages(&KeyPackageTarget::Device(carol.key()))
                .await
                .unwrap();
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
async fn strangers_cannot_create_inboxes_and_removed_devices_stop_receiving() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (phone, laptop) = (device(), device());
        let (_c1, phone_s) = register(&node, "dave", "pw", &phone).await;
        let conn = node.connect().await.unwrap();
        let laptop_login = conn.login("dave", b"pw", &laptop.id, None).await.unwrap();

        let stranger = Identity::generate();
        let err = phone_s
            .enqueue(&IdentityKey(stranger.public_key()), b"hi")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");

        phone_s.enqueue(&laptop.key(), b"one").await.unwrap();
        phone_s.enqueue(&laptop.key(), b"two").await.unwrap();
        assert_eq!(laptop_login.session.fetch(0, 0).await.unwrap().len(), 2);

        phone_s.remove_device(&laptop.key()).await.unwrap();
        let err = phone_s.enqueue(&laptop.key(), b"three").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
        let err = laptop_login.session.fetch(0, 0).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(ErrorCode::Unauthorized),
            "the removed device's session ended: {err}"
        );
        assert_eq!(phone_s.whoami().await.unwrap().device_count, 1);
        // Its key alone no longer opens a session, and its queued messages are
        // gone.
        let c = node.connect().await.unwrap();
        let err = c.authenticate(&laptop.id, None).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        assert!(node.stored(&laptop.key()).is_empty());
        // The last device cannot be removed.
        let err = phone_s.remove_device(&phone.key()).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_with_a_hint_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.rate_limits.enqueue_per_sec_per_session = 5;
    config.rate_limits.logins_per_min_per_address = 4;
    let node = TestNode::start_with(config).await;
    local(async {
        let me = Identity::generate();
        let (_c, s) = node.session(&me).await;
        let target = IdentityKey(me.public_key());
        for _ in 0..5 {
            s.enqueue(&target, b"x").await.unwrap();
        }
        let err = s.enqueue(&target, b"too fast").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::RateLimited), "{err}");
        assert!(err.to_string().contains("retry after"), "{err}");
        assert_eq!(
            s.fetch(0, 0).await.unwrap().len(),
            5,
            "stored messages untouched"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.enqueue(&target, b"after a pause").await.unwrap();

        // Login attempts per address.
        let conn = node.connect().await.unwrap();
        let mut limited = None;
        for _ in 0..6 {
            if let Err(e) = conn.login("nobody", b"x", &me, None).await
                && e.code() == Some(ErrorCode::RateLimited)
            {
                limited = Some(e);
                break;
            }
        }
        let e = limited.expect("the fifth attempt within a minute is refused");
        assert!(e.to_string().contains("retry after"), "{e}");
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_sender_delivers_without_telling_the_node_who_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.sealed_sender = true;
    let node = TestNode::start_with(config).await;
    // The sender has an identity and a name, but never an account on this node.
    let alice = Identity::generate();
    let alice_name = "alice-the-sender";
    let bob = device();
    local(async {
        let (_c, bob_s) = register(&node, "bob", "pw", &bob).await;
        bob.publish(&bob_s, 2).await;
        let access_key = [42u8; 32];
        bob_s
            .set_access_key(&quicnprotochat_crypto::token::TokenHash::of(&access_key).digest())
            .await
            .unwrap();

        // alice fetches bob's published key without logging in...
        let anon = node.connect().await.unwrap();
        let claimed = anon
            .fetch_key_packages(&KeyPackageTarget::Username("bob".into()))
            .await
            .unwrap();
        let bob_key = quicnprotochat_crypto::envelope::HybridPublicKey::verify(
            &claimed[0].hybrid_public_key,
            &claimed[0].identity_key.0,
        )
        .unwrap();
        let payload = format!("hi bob, love {alice_name}").into_bytes();
        let envelope = seal_sealed_sender(&alice, &bob_key, &payload, 1234);
        // ...and delivers with the access key only.
        let err = anon
            .enqueue_sealed(&bob.key(), &envelope, &[41u8; 32])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        let err = anon
            .enqueue_sealed(&IdentityKey([9; 32]), &envelope, &access_key)
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(ErrorCode::Unauthorized),
            "unknown recipient answers alike: {err}"
        );
        assert_eq!(
            anon.enqueue_sealed(&bob.key(), &envelope, &access_key)
                .await
                .unwrap(),
            1
        );

        let got = bob_s.fetch(0, 0).await.unwrap();
        let opened = open_sealed_sender(&bob.id.public_key(), &bob.hybrid, &got[0].data).unwrap();
        assert_eq!(opened.sender, alice.public_key());
        assert_eq!(opened.payload, payload);
    })
    .await;
    node.stop().await;
    let db = std::fs::read(dir.path().join(quicnprotochat::server::DB_FILE)).unwrap();
    let contains = |needle: &[u8]| db.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(&bob.id.public_key()),
        "sanity: the recipient is in the database"
    );
    assert!(
        !contains(&alice.public_key()),
        "the sender's identity key is not in the database"
    );
    assert!(
        !contains(alice_name.as_bytes()),
        "the sender's name is not in the database"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_sender_is_off_unless_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let conn = node.connect().await.unwrap();
        let err = conn
            .enqueue_sealed(&IdentityKey([1; 32]), b"x", b"k")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unimplemented), "{err}");
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_token_guards_registration_login_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.auth_token = Some("let me in".into());
    let node = TestNode::start_with(config).await;
    local(async {
        let d = device();
        let conn = node.connect().await.unwrap();
        let err = conn
            .register("frank", b"pw", &d.id, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        conn.register("frank", b"pw", &d.id, Some("let me in"))
            .await
            .unwrap();
        let err = conn
            .login("frank", b"pw", &d.id, Some("nope"))
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        let logged = conn
            .login("frank", b"pw", &d.id, Some("let me in"))
            .await
            .unwrap();
        let err = conn.resume(&logged.token, None).await.err().unwrap();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        conn.resume(&logged.token, Some("let me in")).await.unwrap();
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_a_valid_session_is_not_a_login_attempt_but_guessing_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.rate_limits.logins_per_min_per_address = 8;
    let node = TestNode::start_with(config).await;
    local(async {
        let d = device();
        let (_conn, _) = register(&node, "rita", "pw", &d).await;
        let conn = node.connect().await.unwrap();
        let logged = conn.login("rita", b"pw", &d.id, None).await.unwrap();
        // Every CLI command reconnects and resumes: far more than the login limit.
        for _ in 0..12 {
            conn.resume(&logged.token, None).await.unwrap();
        }
        let mut codes = Vec::new();
        for _ in 0..10 {
            codes.push(conn.resume(&[7u8; 32], None).await.err().unwrap().code());
        }
        assert_eq!(codes[0], Some(ErrorCode::Unauthorized));
        assert_eq!(
            codes.last().unwrap(),
            &Some(ErrorCode::RateLimited),
            "{codes:?}"
        );
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
                .contains(quicnprotochat_actors::auth::NO_KEY_PACKAGES)
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
async fn once_accounts_exist_only_registered_devices_authenticate_and_guessing_is_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    // Registering and logging in erin takes 3 attempts; 3 are left for guessing.
    config.rate_limits.logins_per_min_per_address = 6;
    let node = TestNode::start_with(config).await;
    local(async {
        // A node without accounts serves bare identities (tests, load runs).
        let early = Identity::generate();
        let conn = node.connect().await.unwrap();
        let early_s = conn
            .authenticate(&early, None)
            .await
            .expect("no accounts yet: a key is enough");
        early_s.fetch(0, 0).await.unwrap();

        let phone = device();
        let (_c, phone_s) = register(&node, "erin", "pw", &phone).await;
        // The registered device may still use its key alone, as often as it
        // likes (successes are not login attempts).
        for _ in 0..5 {
            let c = node.connect().await.unwrap();
            let s = c.authenticate(&phone.id, None).await.unwrap();
            assert_eq!(s.whoami().await.unwrap().username, "erin");
        }
        // A stranger's key gets no session, and guessing is rate-limited.
        let mut codes = Vec::new();
        for _ in 0..5 {
            let c = node.connect().await.unwrap();
            let err = c
                .authenticate(&Identity::generate(), None)
                .await
                .unwrap_err();
            codes.push(err.code());
        }
        assert_eq!(codes[0], Some(ErrorCode::Unauthorized), "{codes:?}");
        assert!(
            codes.contains(&Some(ErrorCode::RateLimited)),
            "failed attempts count against the login limit: {codes:?}"
        );
        // The session a bare key got before accounts existed ends with them.
        let err = early_s.fetch(0, 0).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        phone_s.fetch(0, 0).await.expect("registered devices go on");
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
        let stranger = node.connect().await.unwrap();
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
async fn a_crash_between_removing_a_device_and_purging_its_inbox_loses_the_purge_not_the_promise() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let (phone, laptop) = (device(), device());
    local(async {
        let (_c1, phone_s) = register(&node, "fay", "pw", &phone).await;
        let conn = node.connect().await.unwrap();
        conn.login("fay", b"pw", &laptop.id, None).await.unwrap();
        phone_s.enqueue(&laptop.key(), b"queued").await.unwrap();
        // The removal commits; the node dies before the purge that follows it.
        node.context()
            .auth
            .remove_device(phone.key(), laptop.key())
            .await
            .unwrap();
    })
    .await;
    assert_eq!(
        node.stored(&laptop.key()).len(),
        1,
        "the crash left it behind"
    );
    let node = node.restart().await;
    assert!(
        node.stored(&laptop.key()).is_empty(),
        "a restarted node deletes what no registered device can fetch"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_of_a_group_whose_members_are_all_removed_is_collected() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let (phone, laptop) = (device(), device());
    let group = b"abandoned".to_vec();
    local(async {
        let (_c1, phone_s) = register(&node, "gus", "pw", &phone).await;
        let conn = node.connect().await.unwrap();
        let laptop_s = conn
            .login("gus", b"pw", &laptop.id, None)
            .await
            .unwrap()
            .session;
        // A group of the laptop alone, then the laptop is removed.
        let only_laptop = vec![laptop.key().0.to_vec()];
        laptop_s
            .commit(
                &group,
                0,
                &only_laptop,
                &[],
                &quicnprotochat_tests::mls_commit(&group, 0),
            )
            .await
            .unwrap();
        let err = phone_s
            .commit(
                &group,
                1,
                &[phone.key().0.to_vec()],
                &[],
                &quicnprotochat_tests::mls_commit(&group, 1),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        phone_s.remove_device(&laptop.key()).await.unwrap();
    })
    .await;
    // Collected at the next start: nobody can ever commit to it again.
    let node = node.restart().await;
    local(async {
        let conn = node.connect().await.unwrap();
        let phone_s = conn
            .login("gus", b"pw", &phone.id, None)
            .await
            .unwrap()
            .session;
        phone_s
            .commit(
                &group,
                5,
                &[phone.key().0.to_vec()],
                &[],
                &quicnprotochat_tests::mls_commit(&group, 5),
            )
            .await
            .expect("the group id is free again");
    })
    .await;
    node.stop().await;
}
