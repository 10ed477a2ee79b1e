//! A client that sends requests but never reads the replies cannot make the node
//! queue replies without limit: the node stops reading that connection's
//! requests while its replies cannot be written, and answers them all once the
//! client reads again (past the connection's reply budget, RATE_LIMITED). (Its
//! own test binary: it counts answered calls with the process-wide metrics
//! recorder.)

use std::rc::Rc;
use std::time::Duration;

use quicnprotochat::config::ServerConfig;
use quicnprotochat_client::NodeConnection;
use quicnprotochat_client::rpc::ReplyPause;
use quicnprotochat_crypto::Identity;
use quicnprotochat_tests::{TestNode, local};
use quicnprotochat_wire::tls;
use quicnprotochat_wire::{ErrorCode, IdentityKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn fetches_answered(metrics: std::net::SocketAddr) -> f64 {
    let mut s = tokio::net::TcpStream::connect(metrics).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix("qpc_fetches_total "))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_nobody_reads_stop_the_reading_of_requests_not_grow_a_queue() {
    const FETCHES: usize = 120;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let node = TestNode::start_with(config).await;
    let metrics = node.metrics_addr.unwrap();
    local(async {
        // An inbox whose every fetch answers about 1 MiB.
        let me = Identity::generate();
        let (_c, s) = node.session(&me).await;
        for _ in 0..4 {
            s.enqueue(&IdentityKey(me.public_key()), &vec![9u8; 256 * 1024])
                .await
                .unwrap();
        }
        let pinned = tls::read_pinned_cert(&node.cert_path()).unwrap();
        let endpoint = quicnprotochat_client::client_endpoint(node.addr, pinned).unwrap();
        let pause = Rc::new(ReplyPause::default());
        let conn = NodeConnection::connect_with_reply_pause(&endpoint, node.addr, pause.clone())
            .await
            .unwrap();
        let hostile = conn.authenticate(&me, None).await.unwrap();
        let before = fetches_answered(metrics).await;
        pause.pause();
        let spawn_fetches = |n: usize| -> Vec<_> {
            (0..n)
                .map(|_| {
                    let s = hostile.clone();
                    tokio::task::spawn_local(async move { s.fetch(0, 0).await })
                })
                .collect()
        };
        // A first wave fills the client's flow-control window with replies it
        // does not read. (Requests that reach the node together, before any
        // reply is stuck, are read together and answered: the call budget
        // bounds those. Sending all 120 at once made the test depend on
        // whether they arrived in one read.)
        const FIRST_WAVE: usize = 8;
        let mut calls = spawn_fetches(FIRST_WAVE);
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The rest come once the replies are stuck: the node must not read them.
        calls.extend(spawn_fetches(FETCHES - FIRST_WAVE));
        // Let the node answer all it will while nobody reads.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let answered_unread = fetches_answered(metrics).await - before;
        assert!(
            answered_unread < (FETCHES / 2) as f64,
            "{answered_unread} of {FETCHES} 1 MiB replies were built for a client that reads none"
        );
        // The client reads again: every call is answered, with its messages
        // or, where the replies already waiting filled the connection's reply
        // budget, RATE_LIMITED (a fetch is not destructive: nothing is lost).
        pause.resume();
        let mut served = 0;
        for c in calls {
            match c.await.unwrap() {
                Ok(list) => {
                    assert_eq!(list.len(), 4);
                    served += 1;
                }
                Err(e) => {
                    assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{e}");
                }
            }
        }
        assert!(served > 0);
        assert_eq!(fetches_answered(metrics).await - before, served as f64);
        assert_eq!(node.budget().reply_bytes_queued(), 0, "every reply written");
    })
    .await;
    node.stop().await;
}
