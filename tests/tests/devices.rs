//! Devices leaving an account end to end against a real node: what a removed
//! device had stops and is deleted, also across a crash; a removed device still
//! named by a group fails no fan-out and gets nothing; removing a device needs
//! the password; groups left without registered members are collected.

use quicnprotochat_client::{CommitBodies, NodeConnection, SessionHandle};
use quicnprotochat_crypto::Identity;
use quicnprotochat_tests::accounts::{Device, device, register};
use quicnprotochat_tests::{TestNode, local, mls_commit};
use quicnprotochat_wire::{ErrorCode, IdentityKey};

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
        assert!(node.stored(&laptop.key()).await.is_empty());
        // The last device cannot be removed.
        let err = phone_s.remove_device(&phone.key()).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
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
        node.stored(&laptop.key()).await.len(),
        1,
        "the crash left it behind"
    );
    let node = node.restart().await;
    assert!(
        node.stored(&laptop.key()).await.is_empty(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_device_needs_a_fresh_password_login_not_a_token_or_a_device_key() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (phone, laptop) = (device(), device());
        let (_c1, _) = register(&node, "gus", "pw", &phone).await;
        let conn = node.connect().await.unwrap();
        let phone_login = conn.login("gus", b"pw", &phone.id, None).await.unwrap();
        let c2 = node.connect().await.unwrap();
        c2.login("gus", b"pw", &laptop.id, None).await.unwrap();

        // A remembered token (stolen, say) or the device key alone: refused,
        // and nothing changes.
        let c3 = node.connect().await.unwrap();
        let (resumed, _) = c3.resume(&phone_login.token, None).await.unwrap();
        let c4 = node.connect().await.unwrap();
        let by_key = c4.authenticate(&phone.id, None).await.unwrap();
        for session in [&resumed, &by_key] {
            let err = session.remove_device(&laptop.key()).await.unwrap_err();
            assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
            assert!(
                err.to_string().contains("needs the account password"),
                "{err}"
            );
        }
        assert_eq!(resumed.whoami().await.unwrap().device_count, 2);
        // The password, just now: done.
        phone_login
            .session
            .remove_device(&laptop.key())
            .await
            .unwrap();
        assert_eq!(resumed.whoami().await.unwrap().device_count, 1);
    })
    .await;
    node.stop().await;
}

/// hana, and ivan with a phone and a `laptop`, in a group `gid` that hana
/// created (commit at epoch 0).
struct GroupWithALaptop {
    /// hana's session.
    a: SessionHandle,
    /// ivan's phone's session.
    p: SessionHandle,
    phone: Device,
    /// The three devices' keys, as a commit names them.
    everyone: Vec<Vec<u8>>,
    bodies: CommitBodies,
    _connections: Vec<NodeConnection>,
}

async fn group_with_a_laptop(node: &TestNode, gid: &[u8], laptop: &Device) -> GroupWithALaptop {
    let (alice, phone) = (device(), device());
    let (ca, a) = register(node, "hana", "pw", &alice).await;
    let (cp, p) = register(node, "ivan", "pw", &phone).await;
    let c = node.connect().await.unwrap();
    c.login("ivan", b"pw", &laptop.id, None).await.unwrap();
    let everyone: Vec<Vec<u8>> = [&alice, &phone, laptop]
        .iter()
        .map(|d| d.key().0.to_vec())
        .collect();
    let bodies = CommitBodies {
        commit: b"commit".to_vec(),
        welcome: b"welcome".to_vec(),
        receipt: b"receipt".to_vec(),
        ..CommitBodies::default()
    };
    a.commit_group(gid, 0, &everyone, &mls_commit(gid, 0), &bodies)
        .await
        .unwrap();
    GroupWithALaptop {
        a,
        p,
        phone,
        everyone,
        bodies,
        _connections: vec![ca, cp, c],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_still_in_a_group_fails_no_fan_out_and_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let laptop = device();
        let gid = b"with-a-laptop".to_vec();
        let GroupWithALaptop {
            a,
            p,
            phone,
            everyone,
            bodies,
            ..
        } = group_with_a_laptop(&node, &gid, &laptop).await;
        // The laptop leaves the account; nobody has committed its removal yet.
        p.remove_device(&laptop.key()).await.unwrap();
        assert!(node.stored(&laptop.key()).await.is_empty());

        // A send reaches the phone and names the laptop gone; a commit is
        // delivered to the phone (and the committer's receipt) only.
        let outcomes = a.send_group(&gid, b"hi", &[]).await.unwrap();
        let by: std::collections::BTreeMap<_, _> = outcomes
            .into_iter()
            .map(|o| (o.recipient, o.outcome))
            .collect();
        assert!(by[&phone.key()].is_ok());
        let gone = by[&laptop.key()].as_ref().unwrap_err();
        assert_eq!(gone.code, ErrorCode::NotFound, "{gone}");
        assert!(gone.detail.contains("removed"), "{gone}");
        let delivered = a
            .commit_group(&gid, 1, &everyone, &mls_commit(&gid, 1), &bodies)
            .await
            .unwrap();
        assert_eq!(delivered, 2, "phone and the committer's receipt");
        assert!(
            node.stored(&laptop.key()).await.is_empty(),
            "nothing is stored for a removed device"
        );
        assert_eq!(
            node.stored(&phone.key()).await.len(),
            3,
            "Welcome, hi, commit"
        );
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_devices_key_never_registers_or_logs_in_again_and_gets_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let gid = b"the-stolen-laptop".to_vec();
    let laptop = device();
    // What a send to the group tells of the laptop.
    async fn laptop_outcome(
        a: &quicnprotochat_client::SessionHandle,
        gid: &[u8],
        laptop: &IdentityKey,
    ) -> Result<u64, ErrorCode> {
        let outcomes = a.send_group(gid, b"secret", &[]).await.unwrap();
        let o = outcomes
            .into_iter()
            .find(|o| o.recipient == *laptop)
            .unwrap();
        o.outcome.map_err(|e| e.code)
    }
    local(async {
        let GroupWithALaptop { a, p, .. } = group_with_a_laptop(&node, &gid, &laptop).await;
        assert!(laptop_outcome(&a, &gid, &laptop.key()).await.is_ok());

        // The laptop is stolen; the phone removes it. Nobody has committed its
        // MLS removal yet, so the group still names it.
        p.remove_device(&laptop.key()).await.unwrap();
        assert_eq!(
            laptop_outcome(&a, &gid, &laptop.key()).await,
            Err(ErrorCode::NotFound)
        );

        // The thief re-registers the stolen key under a new name: refused, and
        // no account is left behind.
        let thief = node.connect().await.unwrap();
        let err = thief
            .register("mallory", b"pw-m", &laptop.id, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        assert!(
            err.to_string().contains("removed from its account"),
            "{err}"
        );
        let err = thief
            .login("mallory", b"pw-m", &laptop.id, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        // Nor can it log in to its old account with a stolen password.
        let err = thief
            .login("ivan", b"pw", &laptop.id, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
        assert!(
            err.to_string().contains("removed from its account"),
            "{err}"
        );

        // So the group's sends still skip it, and nothing is stored for it.
        assert_eq!(
            laptop_outcome(&a, &gid, &laptop.key()).await,
            Err(ErrorCode::NotFound)
        );
        assert!(node.stored(&laptop.key()).await.is_empty());
    })
    .await;

    // After a restart the key is still retired.
    let node = node.restart().await;
    local(async {
        let err = node
            .connect()
            .await
            .unwrap()
            .register("mallory2", b"pw-m", &laptop.id, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_has_at_most_its_quota_of_devices_and_a_removal_frees_a_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quicnprotochat::config::ServerConfig::ephemeral(dir.path());
    config.limits.devices_per_account = 2;
    let node = TestNode::start_with(config).await;
    local(async {
        let (phone, laptop, tablet) = (device(), device(), device());
        let (_cp, p) = register(&node, "june", "pw", &phone).await;
        let c = node.connect().await.unwrap();
        c.login("june", b"pw", &laptop.id, None).await.unwrap();
        let err = c
            .login("june", b"pw", &tablet.id, None)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Some(ErrorCode::QuotaExceeded), "{err}");
        assert!(err.to_string().contains("at most 2 devices"), "{err}");
        // Devices already in the account still log in.
        c.login("june", b"pw", &laptop.id, None).await.unwrap();
        assert_eq!(p.whoami().await.unwrap().device_count, 2);
        p.remove_device(&laptop.key()).await.unwrap();
        c.login("june", b"pw", &tablet.id, None).await.unwrap();
        assert_eq!(p.whoami().await.unwrap().device_count, 2);
    })
    .await;
    node.stop().await;
}
