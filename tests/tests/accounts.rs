//! The Authentication Service end to end against a real node: OPAQUE accounts,
//! sessions, sealed sender, rate limits, enumeration (KeyPackages and device
//! removal have files of their own).

use std::time::Duration;

use quicnprotochat::config::ServerConfig;
use quicnprotochat_client::KeyPackageTarget;
use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::envelope::{open_sealed_sender, seal_sealed_sender};
use quicnprotochat_crypto::opaque;
use quicnprotochat_tests::accounts::{device, register};
use quicnprotochat_tests::{TestNode, local};
use quicnprotochat_wire::{ErrorCode, IdentityKey};

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
async fn a_token_unused_for_its_idle_time_ends_and_one_in_use_lives_on_also_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    // Each resume moves a token's end 10 s ahead (written at most every 1.25 s).
    config.limits.session_idle = Duration::from_secs(10);
    let node = TestNode::start_with(config).await;
    let (phone, laptop) = (device(), device());
    let (used, unused) = local(async {
        let (_c, _) = register(&node, "jan", "pw", &phone).await;
        let c1 = node.connect().await.unwrap();
        let used = c1.login("jan", b"pw", &phone.id, None).await.unwrap();
        let c2 = node.connect().await.unwrap();
        let unused = c2.login("jan", b"pw", &laptop.id, None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let c3 = node.connect().await.unwrap();
        let (_, moved_to) = c3.resume(&used.token, None).await.unwrap();
        assert!(
            moved_to >= used.expires_at_ms + 2_500,
            "a resume 3 s in moves the end: {moved_to} vs {}",
            used.expires_at_ms
        );
        (used, unused)
    })
    .await;
    // The moved end is durable; the unused token's idle time runs out.
    let node = node.restart().await;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    while now_ms() <= unused.expires_at_ms + 200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    local(async {
        let conn = node.connect().await.unwrap();
        let err = conn.resume(&unused.token, None).await.err().unwrap();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        let (session, _) = conn.resume(&used.token, None).await.unwrap();
        assert_eq!(session.whoami().await.unwrap().username, "jan");
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_password_replaces_the_old_one_and_ends_the_accounts_other_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let (phone, laptop) = (device(), device());
    local(async {
        let (_c1, _) = register(&node, "ida", "old-pw", &phone).await;
        let c1 = node.connect().await.unwrap();
        let phone_login = c1.login("ida", b"old-pw", &phone.id, None).await.unwrap();
        let c2 = node.connect().await.unwrap();
        let laptop_login = c2.login("ida", b"old-pw", &laptop.id, None).await.unwrap();

        // A token alone (stolen, say) cannot set a password.
        let c3 = node.connect().await.unwrap();
        let (resumed, _) = c3.resume(&laptop_login.token, None).await.unwrap();
        let err = resumed
            .change_password("ida", b"mine-now")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        assert!(
            err.to_string().contains("needs the account password"),
            "{err}"
        );

        // A fresh password login can: the other sessions end, this one goes on.
        let ended = phone_login
            .session
            .change_password("ida", b"new-pw")
            .await
            .unwrap();
        assert!(ended >= 2, "the laptop's and the first login's: {ended}");
        assert_eq!(phone_login.session.whoami().await.unwrap().username, "ida");
        let err = laptop_login.session.whoami().await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");

        // A login started with the new password and finished after another
        // change is refused: it proved a record that is gone.
        let thief = node.connect().await.unwrap();
        let (state, request) = opaque::client_login_start(b"new-pw").unwrap();
        let response = thief.login_start_raw("ida", &request).await.unwrap();
        let fin = opaque::client_login_finish(state, b"new-pw", &response, "ida").unwrap();
        let c4 = node.connect().await.unwrap();
        let fresh = c4.login("ida", b"new-pw", &phone.id, None).await.unwrap();
        fresh
            .session
            .change_password("ida", b"newer-pw")
            .await
            .unwrap();
        let signature = thief.prove(&laptop.id).await.unwrap();
        let err = thief
            .login_finish_raw(&fin.finalization, &laptop.id.public_key(), &signature)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");

        // A key-only session cannot set a password either.
        let c5 = node.connect().await.unwrap();
        let by_key = c5.authenticate(&phone.id, None).await.unwrap();
        let err = by_key.change_password("ida", b"mine").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        let err = by_key.logout_everywhere().await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
    })
    .await;
    // Durable: after a restart only the newest password logs in.
    let node = node.restart().await;
    local(async {
        for old in [&b"old-pw"[..], b"new-pw"] {
            let conn = node.connect().await.unwrap();
            let err = conn
                .login("ida", old, &laptop.id, None)
                .await
                .err()
                .unwrap();
            assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        }
        let conn = node.connect().await.unwrap();
        let again = conn
            .login("ida", b"newer-pw", &laptop.id, None)
            .await
            .unwrap();
        assert_eq!(again.session.whoami().await.unwrap().device_count, 2);
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_everywhere_ends_every_session_of_the_account_and_needs_a_fresh_password() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let (phone, laptop, other) = (device(), device(), device());
    let (phone_token, laptop_token) = local(async {
        let (_c, hal) = register(&node, "hal", "pw-hal", &other).await;
        let (_c1, _) = register(&node, "gus", "pw", &phone).await;
        let c1 = node.connect().await.unwrap();
        let phone_login = c1.login("gus", b"pw", &phone.id, None).await.unwrap();
        let c2 = node.connect().await.unwrap();
        let laptop_login = c2.login("gus", b"pw", &laptop.id, None).await.unwrap();

        // A remembered (stolen) token alone cannot lock the owner out.
        let c3 = node.connect().await.unwrap();
        let (resumed, _) = c3.resume(&phone_login.token, None).await.unwrap();
        let err = resumed.logout_everywhere().await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        assert!(
            err.to_string().contains("needs the account password"),
            "{err}"
        );
        laptop_login.session.whoami().await.expect("nothing ended");

        // With the password just now: every session of both devices ends,
        // this one's too, on the connections that hold them.
        let ended = phone_login.session.logout_everywhere().await.unwrap();
        assert!(ended >= 3, "phone (twice) and laptop: {ended}");
        for session in [&phone_login.session, &laptop_login.session, &resumed] {
            let err = session.whoami().await.unwrap_err();
            assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        }
        // Another account is untouched.
        assert_eq!(hal.whoami().await.unwrap().username, "hal");
        (phone_login.token, laptop_login.token)
    })
    .await;
    // Durable: after a restart the old tokens still resume nothing, and the
    // password logs in again.
    let node = node.restart().await;
    local(async {
        let conn = node.connect().await.unwrap();
        for token in [&phone_token, &laptop_token] {
            let err = conn.resume(token, None).await.err().unwrap();
            assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        }
        let again = conn.login("gus", b"pw", &laptop.id, None).await.unwrap();
        assert_eq!(again.session.whoami().await.unwrap().device_count, 2);
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
        let (bob_conn, bob_s) = register(&node, "bob", "pw", &bob).await;
        bob.publish(&bob_s, 2).await;
        let access_key = [42u8; 32];
        bob_s
            .set_access_key(&quicnprotochat_crypto::token::TokenHash::of(&access_key).digest())
            .await
            .unwrap();

        // alice learns bob's published key (the node serves KeyPackages to
        // registered devices only: here bob's own connection reads it for her)
        // and sends without logging in...
        let anon = node.connect().await.unwrap();
        let claimed = bob_conn
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
    let db = node.database_bytes().await;
    node.stop().await;
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
async fn no_operator_token_guess_is_compared_while_its_address_is_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    let token = quicnprotochat::tokens::generate_operator_token();
    config.operator_token = Some(token.clone());
    config.rate_limits.logins_per_min_per_address = 5;
    let node = TestNode::start_with(config).await;
    local(async {
        let conn = node.connect().await.unwrap();
        for i in 0..5 {
            let err = conn.operator(&format!("guess-{i}")).await.err().unwrap();
            assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        }
        // The right token now: the address is limited, so it is not judged
        // (before, it was compared first and accepted).
        let err = conn.operator(&token).await.err().unwrap();
        assert_eq!(err.code(), Some(ErrorCode::RateLimited), "{err}");
    })
    .await;
    node.stop().await;
}
