//! Fuzzed Cap'n Proto requests against a real node: every method of `Node` and
//! `Session` called with arbitrary field values (bytes of every length, random
//! and valid-looking keys, any integers, any text). Each call must be answered
//! with a value or a typed refusal (a stable error code), never break the
//! connection, and the node must go on serving. A second target writes framed
//! garbage (valid segment tables around random words) straight onto a stream.
//!
//! Stable Rust: proptest generates the inputs. CI runs `QPC_FUZZ_CASES` (default
//! 400) requests; `scripts/fuzz.sh` runs many more.

use std::time::Duration;

use capnp::capability::Promise;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use quicnprotochat::config::ServerConfig;
use quicnprotochat_client::ClientError;
use quicnprotochat_crypto::Identity;
use quicnprotochat_tests::{TestNode, local};
use quicnprotochat_wire::node_capnp::{node, session};

/// One fuzzed call: which method, and the values its fields are filled from.
#[derive(Debug, Clone)]
struct Call {
    method: u8,
    a: Vec<u8>,
    b: Vec<u8>,
    c: Vec<u8>,
    n: u64,
    m: u32,
    text: String,
    list_len: u8,
}

/// Byte fields: empty, around a key's length, a real-looking key, or anything.
fn field(known_key: [u8; 32]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(known_key.to_vec()),
        any::<[u8; 32]>().prop_map(|k| k.to_vec()),
        proptest::collection::vec(any::<u8>(), 31..=33),
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(any::<u8>(), 1000..5000),
    ]
}

fn call(known_key: [u8; 32]) -> impl Strategy<Value = Call> {
    (
        0u8..24,
        field(known_key),
        field(known_key),
        field(known_key),
        prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>(), 0u64..10],
        any::<u32>(),
        prop_oneof![Just(String::new()), "[a-z]{3,10}", any::<String>()],
        0u8..5,
    )
        .prop_map(|(method, a, b, c, n, m, text, list_len)| Call {
            method,
            a,
            b,
            c,
            n,
            m,
            text,
            list_len,
        })
}

/// What a call came to.
#[derive(Debug)]
enum Outcome {
    Answered,
    Refused,
    /// Not a typed refusal: the connection or the RPC layer failed.
    Broken(String),
}

async fn outcome<T>(p: Promise<T, capnp::Error>) -> Outcome {
    match p.await {
        Ok(_) => Outcome::Answered,
        Err(e) => match ClientError::from(e) {
            ClientError::Refused(_) => Outcome::Refused,
            other => Outcome::Broken(other.to_string()),
        },
    }
}

macro_rules! send {
    ($req:expr) => {
        outcome(Promise::from_future($req.send().promise))
    };
}

async fn node_call(n: &node::Client, c: &Call) -> Outcome {
    match c.method % 12 {
        0 => send!(n.health_request()).await,
        1 => {
            let mut r = n.ping_request();
            r.get().set_nonce(c.n);
            send!(r).await
        }
        2 => send!(n.challenge_request()).await,
        3 => {
            let mut r = n.authenticate_request();
            r.get().set_identity_key(&c.a);
            r.get().set_signature(&c.b);
            r.get().set_auth_token(&c.c);
            send!(r).await
        }
        4 => {
            let mut r = n.register_start_request();
            r.get().set_username(&c.text[..]);
            r.get().set_request(&c.a);
            r.get().set_auth_token(&c.c);
            send!(r).await
        }
        5 => {
            let mut r = n.register_finish_request();
            r.get().set_username(&c.text[..]);
            r.get().set_upload(&c.a);
            r.get().set_identity_key(&c.b);
            r.get().set_signature(&c.c);
            send!(r).await
        }
        6 => {
            let mut r = n.login_start_request();
            r.get().set_username(&c.text[..]);
            r.get().set_request(&c.a);
            r.get().set_auth_token(&c.c);
            send!(r).await
        }
        7 => {
            let mut r = n.login_finish_request();
            r.get().set_finalization(&c.a);
            r.get().set_identity_key(&c.b);
            r.get().set_signature(&c.c);
            send!(r).await
        }
        8 => {
            let mut r = n.resume_request();
            r.get().set_token(&c.a);
            r.get().set_auth_token(&c.c);
            send!(r).await
        }
        9 => {
            let mut r = n.enqueue_sealed_request();
            r.get().set_recipient(&c.a);
            r.get().set_payload(&c.b);
            r.get().set_access_key(&c.c);
            send!(r).await
        }
        10 => {
            let mut r = n.fetch_key_package_request();
            r.get().set_ciphersuite(c.m as u16);
            if c.n.is_multiple_of(2) {
                r.get().init_target().set_username(&c.text[..]);
            } else {
                r.get().init_target().set_identity_key(&c.a);
            }
            send!(r).await
        }
        _ => {
            let mut r = n.peek_key_packages_request();
            r.get().set_ciphersuite(c.m as u16);
            if c.n.is_multiple_of(2) {
                r.get().init_target().set_username(&c.text[..]);
            } else {
                r.get().init_target().set_identity_key(&c.a);
            }
            send!(r).await
        }
    }
}

async fn session_call(s: &session::Client, c: &Call) -> Outcome {
    let len = u32::from(c.list_len);
    match c.method % 13 {
        0 => send!(s.whoami_request()).await,
        1 => {
            let mut r = s.enqueue_request();
            r.get().set_recipient(&c.a);
            r.get().set_payload(&c.b);
            send!(r).await
        }
        2 => {
            let mut r = s.enqueue_batch_request();
            let mut list = r.get().init_deliveries(len);
            for i in 0..len {
                let mut d = list.reborrow().get(i);
                d.set_recipient(if i.is_multiple_of(2) { &c.a } else { &c.c });
                d.set_payload(&c.b);
            }
            send!(r).await
        }
        3 => {
            let mut r = s.fetch_request();
            r.get().set_after(c.n);
            r.get().set_limit(c.m);
            send!(r).await
        }
        4 => {
            let mut r = s.fetch_wait_request();
            r.get().set_after(c.n);
            r.get().set_limit(c.m);
            r.get().set_timeout_ms(c.m % 20);
            send!(r).await
        }
        5 => {
            let mut r = s.ack_request();
            r.get().set_up_to(c.n);
            send!(r).await
        }
        6 => {
            let mut r = s.upload_key_packages_request();
            let mut list = r.get().init_one_time(len);
            for i in 0..len {
                list.set(i, if i.is_multiple_of(2) { &c.a } else { &c.b });
            }
            r.get().set_last_resort(&c.c);
            r.get().set_hybrid_public_key(&c.b);
            send!(r).await
        }
        7 => {
            let mut r = s.commit_request();
            r.get().set_group_id(&c.a);
            r.get().set_epoch(c.n);
            let mut list = r.get().init_deliveries(len);
            for i in 0..len {
                let mut d = list.reborrow().get(i);
                d.set_recipient(&c.b);
                d.set_payload(&c.c);
            }
            let mut members = r.get().init_members(len);
            for i in 0..len {
                members.set(i, if i.is_multiple_of(2) { &c.b } else { &c.a });
            }
            r.get().set_mls_commit(&c.c);
            send!(r).await
        }
        8 => send!(s.logout_request()).await,
        9 => {
            let mut r = s.set_access_key_request();
            r.get().set_access_key_hash(&c.a);
            send!(r).await
        }
        10 => {
            let mut r = s.remove_device_request();
            r.get().set_identity_key(&c.a);
            send!(r).await
        }
        11 => send!(s.devices_request()).await,
        _ => send!(s.key_package_status_request()).await,
    }
}

fn cases() -> u32 {
    std::env::var("QPC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fuzzed_request_gets_an_answer_or_a_typed_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    // Limits would refuse most calls before they reach the code under test.
    config.rate_limits.logins_per_min_per_address = 1_000_000;
    config.rate_limits.claims_per_min_per_requester = 1_000_000;
    config.rate_limits.claims_per_min_per_target = 1_000_000;
    config.rate_limits.claims_per_min_per_device = 1_000_000;
    let node = TestNode::start_with(config).await;
    local(async {
        let me = Identity::generate();
        let (conn, session) = node.session(&me).await;
        let (raw_node, raw_session) = (conn.raw_node(), session.raw_session());
        let mut runner = TestRunner::deterministic();
        let strategy = call(me.public_key());
        let (mut answered, mut refused) = (0, 0);
        for i in 0..cases() {
            let c = strategy.new_tree(&mut runner).unwrap().current();
            let result = if c.method < 12 {
                node_call(&raw_node, &c).await
            } else {
                session_call(&raw_session, &c).await
            };
            match result {
                Outcome::Answered => answered += 1,
                Outcome::Refused => refused += 1,
                Outcome::Broken(why) => panic!("case {i}: {c:?} broke the connection: {why}"),
            }
        }
        assert!(
            answered > 0 && refused > 0,
            "{answered} answered, {refused} refused"
        );
        // The node serves as before, on this connection and a new one.
        conn.ping().await.expect("same connection still served");
        let (_c, other) = node.session(&Identity::generate()).await;
        other.whoami().await.expect("new connections served");
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_garbage_never_takes_the_node_down() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let mut runner = TestRunner::deterministic();
    // A segment table that matches the words after it, so the garbage reaches
    // the message decoder instead of stopping at the framing.
    let frames = (1u32..64, proptest::collection::vec(any::<u64>(), 1..64)).prop_map(
        |(segments_hint, words)| {
            let mut frame = Vec::new();
            let split = (segments_hint as usize % words.len()).max(1);
            let (first, second) = words.split_at(split);
            let parts: Vec<&[u64]> = if second.is_empty() {
                vec![first]
            } else {
                vec![first, second]
            };
            frame.extend_from_slice(&(parts.len() as u32 - 1).to_le_bytes());
            for p in &parts {
                frame.extend_from_slice(&(p.len() as u32).to_le_bytes());
            }
            if parts.len().is_multiple_of(2) {
                frame.extend_from_slice(&0u32.to_le_bytes()); // padding to a word
            }
            for p in &parts {
                for w in *p {
                    frame.extend_from_slice(&w.to_le_bytes());
                }
            }
            frame
        },
    );
    for _ in 0..(cases() / 10).max(8) {
        let frame = frames.new_tree(&mut runner).unwrap().current();
        node.write_raw(&frame, Duration::from_millis(200)).await;
    }
    local(async {
        let (_c, s) = node.session(&Identity::generate()).await;
        s.whoami().await.expect("the node still serves");
    })
    .await;
    node.stop().await;
}
