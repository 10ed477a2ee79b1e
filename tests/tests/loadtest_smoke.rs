//! Every load-test scenario runs for a moment at small sizes, so the harness cannot
//! rot. These assert that the scenarios work, never how fast (that is for
//! `loadtest` itself and docs/performance.md).

use std::time::Duration;

use quicnprotochat_tests::load::{self, DeliverParams, EnqueueParams, GroupParams, Target};

fn small() -> EnqueueParams {
    EnqueueParams {
        connections: 2,
        in_flight: 4,
        inboxes: 10,
        payload: 256,
        duration: Duration::from_millis(500),
    }
}

#[test]
fn enqueue_scenario_runs() {
    let target = Target::in_process(None).unwrap();
    let r = load::enqueue(&target, &small(), false).unwrap();
    assert!(r.get("messages").unwrap() > 0.0, "{}", r.table());
    assert_eq!(r.errors, 0, "{}", r.table());
    assert!(r.get("node_cpu_us_per_message").is_some());
    assert!(
        serde_json::to_string(&r)
            .unwrap()
            .contains("\"scenario\":\"enqueue\"")
    );
}

/// `bench-vs-redis.sh` drives a node in another process and reads its CPU time
/// through `--node-pid`: against an external node with a pid, the CPU figure is
/// reported (here the "external" node is this process's own, reached by address).
#[test]
fn an_external_node_with_a_pid_gets_its_cpu_time_reported() {
    let node = Target::in_process(None).unwrap();
    let external = Target::external(node.addr, node.ca_cert.clone());
    let without_pid = load::enqueue(&external, &small(), false).unwrap();
    assert_eq!(without_pid.errors, 0, "{}", without_pid.table());
    assert!(without_pid.get("node_cpu_us_per_message").is_none());
    let with_pid = external.with_pid(Some(std::process::id()));
    let r = load::enqueue(&with_pid, &small(), false).unwrap();
    assert_eq!(r.errors, 0, "{}", r.table());
    assert!(
        r.get("node_cpu_us_per_message").unwrap() > 0.0,
        "{}",
        r.table()
    );
}

#[test]
fn the_disk_scenario_times_each_sync() {
    let dir = tempfile::tempdir().unwrap();
    let r = load::disk(dir.path(), 20).unwrap();
    assert_eq!(r.latency.as_ref().unwrap().count, 20);
    assert!(r.get("syncs_per_s").unwrap() > 0.0);
}

#[test]
fn store_scenario_runs_with_one_phase_commit() {
    let options = quicnprotochat_actors::store::StoreOptions {
        two_phase_commit: false,
        ..Default::default()
    };
    let r = load::store(&small(), None, options, false).unwrap();
    assert!(r.get("messages").unwrap() > 0.0, "{}", r.table());
    assert!(r.table().contains("one-phase"), "{}", r.table());
}

#[test]
fn store_scenario_runs() {
    let r = load::store(&small(), None, Default::default(), false).unwrap();
    assert!(r.get("messages").unwrap() > 0.0, "{}", r.table());
}

/// The same on PostgreSQL, when the suites run there (`QPC_TEST_STORE`).
#[test]
fn store_scenario_runs_on_postgres() {
    let Some(url) = quicnprotochat_tests::test_store_url() else {
        eprintln!("skipped: QPC_TEST_STORE unset");
        return;
    };
    let db = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(quicnprotochat_tests::create_test_database(
            &url,
            &format!("qpc_load_smoke_{}", std::process::id()),
        ));
    let r = load::store(&small(), Some(&db), Default::default(), false).unwrap();
    assert!(r.get("messages").unwrap() > 0.0, "{}", r.table());
}

fn deliver_everything_offered(push: bool) {
    let target = Target::in_process(None).unwrap();
    let r = load::deliver(
        &target,
        &DeliverParams {
            rate: 100,
            receivers: 2,
            push,
            payload: 64,
            duration: Duration::from_millis(500),
        },
        false,
    )
    .unwrap();
    assert!(r.get("offered").unwrap() > 0.0);
    assert_eq!(r.get("offered"), r.get("delivered"), "{}", r.table());
    assert_eq!(r.errors, 0);
}

#[test]
fn deliver_scenario_delivers_everything_offered() {
    deliver_everything_offered(false);
}

#[test]
fn deliver_scenario_with_push_delivers_everything_offered() {
    deliver_everything_offered(true);
}

#[test]
fn connections_scenario_runs() {
    let target = Target::in_process(None).unwrap();
    let r = load::connections(&target, 8, false).unwrap();
    assert_eq!(r.errors, 0, "{}", r.table());
    assert!(r.get("handshakes_per_s").unwrap() > 0.0);
}

#[test]
fn inboxes_scenario_fills_restarts_and_answers() {
    let mut target = Target::in_process(None).unwrap();
    let r = load::inboxes(&mut target, 200, false).unwrap();
    assert_eq!(r.errors, 0, "{}", r.table());
    assert!(
        r.get("restart_to_first_answer_ms").is_some(),
        "{}",
        r.table()
    );
}

#[test]
fn groups_scenario_builds_a_group_and_compares_with_openmls() {
    let target = Target::in_process(None).unwrap();
    let r = load::groups(
        &target,
        &GroupParams {
            members: 4,
            messages: 3,
            ..GroupParams::default()
        },
        false,
    )
    .unwrap();
    assert_eq!(r.errors, 0, "{}", r.table());
    assert_eq!(r.latency.as_ref().unwrap().count, 3, "{}", r.table());
    assert!(r.get("member_decrypts_per_s").unwrap() > 0.0);
    assert!(r.get("add_member_ratio_to_openmls").unwrap() > 0.0);
    assert!(r.get("build_group_s").is_some());
    // One upload and one stored copy: a 1 KiB message and its framing, not
    // one per member.
    let upload = r.get("upload_bytes_per_message").unwrap();
    assert!((1024.0..4096.0).contains(&upload), "{}", r.table());
    let stored = r.get("node_bytes_per_message").unwrap();
    assert!(
        (1024.0..4096.0 + 3.0 * 48.0).contains(&stored),
        "{}",
        r.table()
    );
}

#[test]
fn stall_scenario_pings_beside_each_storm() {
    let target = Target::in_process(None).unwrap();
    for storm in [
        load::Storm::None,
        load::Storm::Flood { connections: 1 },
        load::Storm::LongPolls { pollers: 30 },
    ] {
        let r = load::stall(&target, storm, std::time::Duration::from_millis(500), false).unwrap();
        let pings = r.latency.as_ref().expect("pings measured").count;
        assert!(pings > 0, "{storm:?}: no ping answered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_failed_calls_exits_non_zero_with_the_first_reason() {
    // A node whose payload limit every enqueue of the run is over.
    let dir = tempfile::tempdir().unwrap();
    let mut config = quicnprotochat::config::ServerConfig::ephemeral(dir.path());
    config.max_payload = 1000;
    let node = quicnprotochat_tests::TestNode::start_with(config).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("--server")
        .arg(node.addr.to_string())
        .arg("--ca-cert")
        .arg(node.cert_path())
        .args(["--duration", "1", "enqueue", "--connections", "1"])
        .args(["--in-flight", "2", "--payload", "2000"])
        .output()
        .await
        .unwrap();
    node.stop().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("calls failed; the first: "),
        "{stderr}"
    );
    assert!(last.contains("TOO_LARGE"), "{stderr}");
    assert!(
        stdout.contains("first error"),
        "the table says it too: {stdout}"
    );
}
