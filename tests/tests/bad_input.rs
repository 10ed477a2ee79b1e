//! Bad input gets a clear, typed error and loses nothing: full queues, oversized
//! payloads, wrong tokens and signatures, garbage on the wire.

use std::time::Duration;

use quicnprotochat::config::ServerConfig;
use quicnprotochat_crypto::{Identity, auth_transcript};
use quicnprotochat_tests::{TestNode, local};
use quicnprotochat_wire::node_capnp::session;
use quicnprotochat_wire::{ErrorCode, IdentityKey};

fn key(id: &Identity) -> IdentityKey {
    IdentityKey(id.public_key())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_refused_typed_and_keeps_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.queue_limit = 3;
    let node = TestNode::start_with(config).await;
    local(async {
        let bob = Identity::generate();
        let (_c, alice) = node.session(&Identity::generate()).await;
        for i in 1..=3u64 {
            assert_eq!(alice.enqueue(&key(&bob), &[i as u8]).await.unwrap(), i);
        }
        let full = alice
            .enqueue(&key(&bob), b"one too many")
            .await
            .unwrap_err();
        assert_eq!(full.code(), Some(ErrorCode::QueueFull), "{full}");

        let (_c2, bob_s) = node.session(&bob).await;
        let stored = bob_s.fetch(0, 0).await.unwrap();
        assert_eq!(
            stored.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
            vec![vec![1], vec![2], vec![3]]
        );
        // Acking makes room; the refused message did not consume a seq.
        bob_s.ack(1).await.unwrap();
        assert_eq!(alice.enqueue(&key(&bob), b"now fits").await.unwrap(), 4);
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payload_is_too_large_and_bad_recipient_is_bad_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.max_payload = 100;
    let node = TestNode::start_with(config).await;
    local(async {
        let bob = Identity::generate();
        let (_c, alice) = node.session(&Identity::generate()).await;
        assert_eq!(alice.enqueue(&key(&bob), &[7u8; 100]).await.unwrap(), 1);
        let big = alice.enqueue(&key(&bob), &[7u8; 101]).await.unwrap_err();
        assert_eq!(big.code(), Some(ErrorCode::TooLarge), "{big}");
        // Far beyond the node's read limits: still a typed refusal, not a crash.
        let huge = alice
            .enqueue(&key(&bob), &vec![0u8; 12 * 1024 * 1024])
            .await
            .unwrap_err();
        assert_eq!(huge.code(), Some(ErrorCode::TooLarge), "{huge}");
        // That refusal cost the connection; the node serves new ones.
        let (_c3, alice2) = node.session(&Identity::generate()).await;
        assert_eq!(
            alice2.enqueue(&key(&bob), b"fine").await.unwrap(),
            2,
            "refusals used no seq"
        );

        // A recipient that is not a 32-byte identity key.
        for bad_len in [0usize, 31, 33] {
            let bad = alice2
                .enqueue_raw(&vec![1u8; bad_len], b"x")
                .await
                .unwrap_err();
            assert_eq!(bad.code(), Some(ErrorCode::BadRequest), "{bad}");
        }
        let (_c4, bob_s) = node.session(&bob).await;
        assert_eq!(
            bob_s.fetch(0, 0).await.unwrap().len(),
            2,
            "exactly the accepted ones stored"
        );
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_admission_token_is_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.auth_token = Some("correct horse".into());
    let node = TestNode::start_with(config).await;
    local(async {
        let me = Identity::generate();
        for token in [None, Some("wrong horse"), Some("correct hors"), Some("")] {
            let conn = node.connect().await.unwrap();
            let err = conn.authenticate(&me, token).await.expect_err("refused");
            assert_eq!(
                err.code(),
                Some(ErrorCode::Unauthorized),
                "{token:?}: {err}"
            );
            conn.close().await;
        }
        let conn = node.connect().await.unwrap();
        let s = conn.authenticate(&me, Some("correct horse")).await.unwrap();
        assert_eq!(s.whoami().await.unwrap().identity_key, key(&me));
        // Health stays open: a liveness probe needs no token.
        assert_eq!(conn.health().await.unwrap().status, "ok");
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_replayed_or_foreign_signatures_are_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let me = Identity::generate();
        let pk = me.public_key();

        // No challenge asked for.
        let conn = node.connect().await.unwrap();
        let err = conn
            .authenticate_raw(&pk, &[0u8; 64], b"")
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");

        // Garbage signature.
        let _ = conn.challenge().await.unwrap();
        let err = conn
            .authenticate_raw(&pk, &[0u8; 64], b"")
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");

        // A correct signature is single use: the nonce is consumed.
        let nonce: [u8; 32] = conn.challenge().await.unwrap().try_into().unwrap();
        let sig = me.sign(&auth_transcript(&nonce, &pk, &conn.channel_binding()));
        conn.authenticate_raw(&pk, &sig, b"").await.unwrap();
        let err = conn.authenticate_raw(&pk, &sig, b"").await.err().unwrap();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "replay: {err}");

        // Signed by someone else for my key.
        let nonce: [u8; 32] = conn.challenge().await.unwrap().try_into().unwrap();
        let mallory = Identity::generate();
        let sig = mallory.sign(&auth_transcript(&nonce, &pk, &conn.channel_binding()));
        let err = conn.authenticate_raw(&pk, &sig, b"").await.err().unwrap();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");

        // A signature made for another connection's channel binding (a relay).
        let other = node.connect().await.unwrap();
        let nonce: [u8; 32] = conn.challenge().await.unwrap().try_into().unwrap();
        assert_ne!(other.channel_binding(), conn.channel_binding());
        let sig = me.sign(&auth_transcript(&nonce, &pk, &other.channel_binding()));
        let err = conn.authenticate_raw(&pk, &sig, b"").await.err().unwrap();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");

        // Malformed key.
        let _ = conn.challenge().await.unwrap();
        let err = conn
            .authenticate_raw(&pk[..31], &sig, b"")
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_and_acks_only_its_own_inbox() {
    // By construction: the inbox-scoped calls have no parameter naming an inbox.
    use capnp::introspect::{Introspect, TypeVariant};
    for (name, ty) in [
        ("fetch", session::fetch_params::Owned::introspect()),
        ("fetchWait", session::fetch_wait_params::Owned::introspect()),
        ("ack", session::ack_params::Owned::introspect()),
    ] {
        let TypeVariant::Struct(raw) = ty.which() else {
            panic!("struct")
        };
        let fields: Vec<String> = capnp::schema::StructSchema::new(raw)
            .get_fields()
            .unwrap()
            .iter()
            .map(|f| f.get_proto().get_name().unwrap().to_string().unwrap())
            .collect();
        for f in &fields {
            assert!(
                ["after", "limit", "timeoutMs", "upTo"].contains(&f.as_str()),
                "{name} has a field {f} that could name another inbox"
            );
        }
    }

    // And in behaviour: two identities see only their own messages.
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let (alice, bob) = (Identity::generate(), Identity::generate());
        let (_ca, a) = node.session(&alice).await;
        let (_cb, b) = node.session(&bob).await;
        a.enqueue(&key(&bob), b"for bob").await.unwrap();
        b.enqueue(&key(&alice), b"for alice 1").await.unwrap();
        b.enqueue(&key(&alice), b"for alice 2").await.unwrap();
        assert_eq!(b.fetch(0, 0).await.unwrap()[0].data, b"for bob");
        assert_eq!(b.fetch(0, 0).await.unwrap().len(), 1);
        // Bob acking "up to 2" is about bob's inbox (which has only seq 1).
        assert_eq!(
            b.ack(2).await.unwrap_err().code(),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            a.fetch(0, 0).await.unwrap().len(),
            2,
            "alice's inbox untouched"
        );
        assert_eq!(a.whoami().await.unwrap().identity_key, key(&alice));
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_stream_closes_that_connection_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let bob = Identity::generate();
    local(async {
        let (_c, s) = node.session(&Identity::generate()).await;
        s.enqueue(&key(&bob), b"before").await.unwrap();
    })
    .await;

    // Random bytes.
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    assert!(
        node.write_raw(&garbage, Duration::from_secs(5)).await,
        "garbage closes the connection"
    );
    // A frame header announcing a 2 GiB segment: refused without allocating it.
    let mut huge = Vec::new();
    huge.extend_from_slice(&0u32.to_le_bytes()); // one segment
    huge.extend_from_slice(&0x0FFF_FFFFu32.to_le_bytes()); // of 2^28 words
    huge.extend_from_slice(&[0u8; 64]);
    assert!(
        node.write_raw(&huge, Duration::from_secs(5)).await,
        "oversized frame closes the connection"
    );
    // Deep garbage structure: 1 segment of 8 words pointing at itself.
    let mut looped = Vec::new();
    looped.extend_from_slice(&0u32.to_le_bytes());
    looped.extend_from_slice(&8u32.to_le_bytes());
    for _ in 0..8 {
        looped.extend_from_slice(&0xFFFF_FFFC_0000_0000u64.to_le_bytes());
    }
    assert!(
        node.write_raw(&looped, Duration::from_secs(5)).await,
        "malformed message closes the connection"
    );

    local(async {
        let (_c, s) = node.session(&bob).await;
        let stored = s.fetch(0, 0).await.unwrap();
        assert_eq!(stored.len(), 1, "nothing lost");
        assert_eq!(stored[0].data, b"before");
        let (_c2, other) = node.session(&Identity::generate()).await;
        assert_eq!(other.enqueue(&key(&bob), b"after").await.unwrap(), 2);
    })
    .await;
    node.stop().await;
}
