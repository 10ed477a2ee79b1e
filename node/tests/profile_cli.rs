//! No operation bricks a profile, through the built binary against a server
//! process: a `leave` the node could not take (stopped, or every member's inbox
//! full) changes nothing, and every other command keeps working.

mod common;

use common::{ServerProcess, User, assert_no_fork, assert_one_line_error};
use quicnprotochat_wire::tls;

#[test]
fn a_refused_leave_leaves_every_other_command_working() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ca = data.join(tls::CERT_FILE);
    let limit = ["--queue-limit", "3"];
    let server = ServerProcess::start(&data, &limit);
    let at = server.addr;
    let (alice, bob) = (User::new(dir.path(), "alice"), User::new(dir.path(), "bob"));
    alice.ok(at, &ca, &["register-user", "--username", "alice"]);
    bob.ok(at, &ca, &["register-user", "--username", "bob"]);
    for g in ["g", "h"] {
        alice.ok(at, &ca, &["create-group", g]);
        alice.ok(at, &ca, &["invite", "--group", g, "bob"]);
    }
    bob.ok(at, &ca, &["join"]);

    // The node stopped: the leave fails before anything changes.
    drop(server);
    let (ok, _, err) = bob.run(at, &ca, &["leave", "--group", "g"]);
    assert!(!ok);
    assert_one_line_error(&err, "cannot reach the server");
    let _server = ServerProcess::start_at(&data, &at.to_string(), &limit);

    // The node refuses it: alice's inbox is full, so the leave would reach
    // nobody. It is taken back, and said so.
    alice.ok(at, &ca, &["recv"]);
    for i in 0..3 {
        bob.ok(at, &ca, &["send", "--group", "g", &format!("m{i}")]);
    }
    let (ok, _, err) = bob.run(at, &ca, &["leave", "--group", "g"]);
    assert!(!ok);
    assert_one_line_error(&err, "the leave did not reach the group");
    assert!(err.contains("alice (QUEUE_FULL)"), "{err}");
    assert!(err.contains("you are still a member"), "{err}");

    // Every other command works, in both groups.
    let groups = bob.ok(at, &ca, &["groups"]);
    assert!(groups.contains('g') && groups.contains('h'), "{groups}");
    let got = alice.ok(at, &ca, &["recv"]);
    for i in 0..3 {
        assert!(got.contains(&format!("bob: m{i}")), "{got}");
    }
    bob.ok(at, &ca, &["send", "--group", "h", "still here"]);
    bob.ok(at, &ca, &["update", "--group", "g"]);
    let got = alice.ok(at, &ca, &["recv"]);
    assert!(got.contains("[h] bob: still here"), "{got}");
    bob.ok(at, &ca, &["recv"]);

    // Asked again, the leave goes through: alice's client commits it.
    bob.ok(at, &ca, &["leave", "--group", "g"]);
    let got = alice.ok(at, &ca, &["recv"]);
    assert!(got.contains("bob asked to leave"), "{got}");
    assert_eq!(
        alice.ok(at, &ca, &["members", "--group", "g"]).trim(),
        "alice"
    );
    let groups = bob.ok(at, &ca, &["groups"]);
    assert!(!groups.contains("g "), "{groups}");
    assert_no_fork(at, &ca, "h", &[&alice, &bob]);
}
