//! The node's Prometheus endpoint serves every metric the operator relies on, and
//! they move with traffic.

use quicnprotochat::config::ServerConfig;
use quicnprotochat_crypto::Identity;
use quicnprotochat_tests::scrape::{get, labelled, scrape, value};
use quicnprotochat_tests::{TestNode, local};
use quicnprotochat_wire::IdentityKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_serves_the_node_s_dials() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral(dir.path());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.rate_limits.enqueue_per_sec_per_session = 3;
    let node = TestNode::start_with(config).await;
    let metrics = node.metrics_addr.expect("metrics endpoint bound");
    let before = scrape(metrics).await;
    for name in [
        "qpc_connections_total",
        "qpc_connections_open",
        "qpc_enqueues_total",
        "qpc_fetches_total",
        "qpc_acks_total",
        "qpc_actor_restarts_total",
        "qpc_rate_limited_total",
        "qpc_stale_epoch_total",
    ] {
        assert!(
            before.contains(&format!("# TYPE {name} ")),
            "{name} not described:\n{before}"
        );
    }
    local(async {
        let me = Identity::generate();
        let (_c, s) = node.session(&me).await;
        for _ in 0..3 {
            s.enqueue(&IdentityKey(me.public_key()), b"m")
                .await
                .unwrap();
        }
        assert!(
            s.enqueue(&IdentityKey(me.public_key()), b"over")
                .await
                .is_err()
        );
        s.fetch(0, 0).await.unwrap();
        s.ack(2).await.unwrap();
        // A wrong password and a bare key refused once accounts exist.
        let conn = node.connect().await.unwrap();
        conn.register("mia", b"right", &Identity::generate(), None)
            .await
            .unwrap();
        let guess = node.connect().await.unwrap();
        assert!(
            guess
                .login("mia", b"wrong", &Identity::generate(), None)
                .await
                .is_err()
        );
        assert!(
            guess
                .authenticate(&Identity::generate(), None)
                .await
                .is_err()
        );
    })
    .await;
    let after = scrape(metrics).await;
    // Health has its own path; other paths are not metrics.
    let health = get(metrics, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
    for path in ["/", "/favicon.ico", "/metrics/x"] {
        let other = get(metrics, path).await;
        assert!(
            other.starts_with("HTTP/1.1 404 Not Found"),
            "{path}: {other}"
        );
        assert!(!other.contains("qpc_"), "{path}: {other}");
    }
    // Other tests in this process may share the recorder: compare differences.
    assert!(value(&after, "qpc_enqueues_total") - value(&before, "qpc_enqueues_total") >= 3.0);
    assert!(value(&after, "qpc_fetches_total") - value(&before, "qpc_fetches_total") >= 1.0);
    assert!(value(&after, "qpc_acks_total") - value(&before, "qpc_acks_total") >= 1.0);
    assert!(
        value(&after, "qpc_rate_limited_total") - value(&before, "qpc_rate_limited_total") >= 1.0
    );
    assert!(
        value(&after, "qpc_connections_total") - value(&before, "qpc_connections_total") >= 1.0
    );
    // Refusals are counted by code, failed logins by call.
    for (sample, at_least) in [
        ("qpc_refusals_total{code=\"RATE_LIMITED\"}", 1.0),
        ("qpc_refusals_total{code=\"UNAUTHORIZED\"}", 2.0),
        ("qpc_logins_failed_total{call=\"login\"}", 1.0),
        ("qpc_logins_failed_total{call=\"authenticate\"}", 1.0),
    ] {
        assert!(
            labelled(&after, sample) - labelled(&before, sample) >= at_least,
            "{sample}:\n{after}"
        );
    }
    assert!(
        after.contains("qpc_commit_seconds_bucket{le=\"0.001\"}"),
        "{after}"
    );
    assert!(after.contains("qpc_commit_batch_size_bucket"), "{after}");
    assert!(after.contains("qpc_queue_depth "), "{after}");
    node.stop().await;
}
