//! Devices coming and going, through the built binary against a server process,
//! each step with what the user sees: a removed device leaves the groups
//! working, is removed from them, and reads nothing new; removing one needs the
//! account password; `devices` and `members` tell devices apart.

mod common;

use common::{ServerProcess, User, assert_no_fork, assert_one_line_error};
use quicnprotochat_wire::tls;
use std::path::{Path, PathBuf};

/// The device's identity key, as `whoami` prints it.
fn identity_of(whoami: &str) -> String {
    whoami
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 64)
        .unwrap_or_else(|| panic!("no identity in {whoami:?}"))
        .to_string()
}

/// A server process; alice, and bob's phone (both registered); bob's laptop, a
/// profile with bob's password that has not logged in yet.
struct World {
    server: ServerProcess,
    ca: PathBuf,
    alice: User,
    phone: User,
    laptop: User,
}

impl World {
    fn start(dir: &Path) -> World {
        let data = dir.join("data");
        let ca = data.join(tls::CERT_FILE);
        let server = ServerProcess::start(&data, &[]);
        let (alice, phone) = (User::new(dir, "alice"), User::new(dir, "phone"));
        let laptop = User {
            password: phone.password.clone(),
            ..User::new(dir, "laptop")
        };
        alice.ok(server.addr, &ca, &["register-user", "--username", "alice"]);
        phone.ok(server.addr, &ca, &["register-user", "--username", "bob"]);
        World {
            server,
            ca,
            alice,
            phone,
            laptop,
        }
    }
}

#[test]
fn a_removed_device_leaves_its_groups_working_and_reads_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let World {
        server,
        ca,
        alice,
        phone,
        laptop,
    } = World::start(dir.path());
    let at = server.addr;
    laptop.ok(at, &ca, &["login", "--username", "bob"]);
    for g in ["g", "h"] {
        alice.ok(at, &ca, &["create-group", g]);
        alice.ok(at, &ca, &["invite", "--group", g, "bob"]);
    }
    phone.ok(at, &ca, &["join"]);
    laptop.ok(at, &ca, &["join"]);
    // In h, the laptop is bob's only device.
    phone.ok(at, &ca, &["leave", "--group", "h"]);
    alice.ok(at, &ca, &["recv"]);
    alice.ok(at, &ca, &["send", "--group", "g", "before"]);
    assert!(laptop.ok(at, &ca, &["recv"]).contains("alice: before"));
    let laptop_id = identity_of(&laptop.ok(at, &ca, &["whoami"]));
    let phone_id = identity_of(&phone.ok(at, &ca, &["whoami"]));

    // Each user once, with a device count; each device listed, this one marked.
    let members = alice.ok(at, &ca, &["members", "--group", "g"]);
    assert_eq!(
        members.lines().collect::<Vec<_>>(),
        ["alice", "bob (2 devices)"]
    );
    let devices = phone.ok(at, &ca, &["devices"]);
    assert!(devices.starts_with("2 device(s) of bob"), "{devices}");
    assert!(
        devices.contains(&format!("{phone_id}  (this device)")),
        "{devices}"
    );
    assert!(devices.contains(&laptop_id), "{devices}");

    // Not without the password.
    let wrong = User {
        password: "wrong".into(),
        state: phone.state.clone(),
    };
    let (ok, _, err) = wrong.run(at, &ca, &["remove-device", &laptop_id]);
    assert!(!ok);
    assert_one_line_error(&err, "UNAUTHORIZED: wrong username, password");
    assert!(
        laptop
            .ok(at, &ca, &["recv", "--wait", "0"])
            .contains("no new")
    );

    // With it: the device is gone from the account and from the group.
    let out = phone.ok(at, &ca, &["remove-device", &laptop_id]);
    assert!(out.contains("removed it from g"), "{out}");
    let members = alice.ok(at, &ca, &["members", "--group", "g"]);
    assert_eq!(
        members.lines().collect::<Vec<_>>(),
        ["alice", "bob"],
        "{members}"
    );
    let devices = phone.ok(at, &ca, &["devices"]);
    assert!(devices.starts_with("1 device(s) of bob"), "{devices}");
    assert!(!devices.contains(&laptop_id), "{devices}");

    // The laptop was stolen: the thief registers its profile under a new name,
    // or logs it in to bob's account with a stolen password. Its key is retired:
    // both are refused, so nothing sent from now on reaches it (below).
    let (ok, _, err) = laptop.run(at, &ca, &["register-user", "--username", "mallory"]);
    assert!(!ok);
    assert_one_line_error(&err, "removed from its account");
    let (ok, _, err) = laptop.run(at, &ca, &["login", "--username", "bob"]);
    assert!(!ok);
    assert_one_line_error(&err, "removed from its account");

    // The group keeps working for everyone left...
    let sent = alice.ok(at, &ca, &["send", "--group", "g", "after"]);
    assert!(sent.contains("sent to 1 member device(s)"), "{sent}");
    alice.ok(at, &ca, &["update", "--group", "g"]);
    phone.ok(at, &ca, &["send", "--group", "g", "from the phone"]);
    assert!(phone.ok(at, &ca, &["recv"]).contains("alice: after"));
    assert!(alice.ok(at, &ca, &["recv"]).contains("bob: from the phone"));
    // In h, which none of bob's remaining devices is in, the next sender's
    // client learns from the node that the laptop is gone, and removes it.
    let sent = alice.ok(at, &ca, &["send", "--group", "h", "anyone?"]);
    assert!(sent.contains("not delivered to bob (NOT_FOUND)"), "{sent}");
    assert_eq!(
        alice.ok(at, &ca, &["members", "--group", "h"]).trim(),
        "alice"
    );
    // ...and the removed device reads nothing new: its session ended.
    let (ok, _, err) = laptop.run(at, &ca, &["recv"]);
    assert!(!ok);
    assert_one_line_error(&err, "log in again");
    assert_no_fork(at, &ca, "g", &[&alice, &phone]);
}

#[test]
fn a_new_device_joins_its_users_groups_and_reads_what_is_sent_after() {
    let dir = tempfile::tempdir().unwrap();
    let World {
        server,
        ca,
        alice,
        phone,
        laptop,
    } = World::start(dir.path());
    let at = server.addr;
    alice.ok(at, &ca, &["create-group", "g"]);
    alice.ok(at, &ca, &["invite", "--group", "g", "bob"]);
    phone.ok(at, &ca, &["join"]);
    alice.ok(at, &ca, &["send", "--group", "g", "before"]);

    // bob logs in on a laptop; nobody else does anything but their usual
    // pulls: the phone's adds the laptop to bob's groups.
    laptop.ok(at, &ca, &["login", "--username", "bob"]);
    assert!(phone.ok(at, &ca, &["recv"]).contains("alice: before"));
    let joined = laptop.ok(at, &ca, &["join"]);
    assert!(joined.contains("[g] * joined"), "{joined}");
    let members = alice.ok(at, &ca, &["members", "--group", "g"]);
    assert_eq!(
        members.lines().collect::<Vec<_>>(),
        ["alice", "bob (2 devices)"]
    );

    // It reads what is sent from now on (not what came before it joined).
    alice.ok(at, &ca, &["send", "--group", "g", "after"]);
    let got = laptop.ok(at, &ca, &["recv"]);
    assert!(got.contains("alice: after"), "{got}");
    assert!(!got.contains("before"), "{got}");
    assert!(phone.ok(at, &ca, &["recv"]).contains("alice: after"));
    laptop.ok(at, &ca, &["send", "--group", "g", "from the laptop"]);
    assert!(
        alice
            .ok(at, &ca, &["recv"])
            .contains("bob: from the laptop")
    );
    assert!(
        phone
            .ok(at, &ca, &["recv"])
            .contains("bob: from the laptop")
    );
    assert_no_fork(at, &ca, "g", &[&alice, &phone, &laptop]);
}

#[test]
fn a_profile_lost_and_logged_in_again_rejoins_through_the_users_other_device() {
    let dir = tempfile::tempdir().unwrap();
    let World {
        server,
        ca,
        alice,
        phone,
        laptop,
    } = World::start(dir.path());
    let at = server.addr;
    laptop.ok(at, &ca, &["login", "--username", "bob"]);
    let old_laptop = identity_of(&laptop.ok(at, &ca, &["whoami"]));
    alice.ok(at, &ca, &["create-group", "g"]);
    alice.ok(at, &ca, &["invite", "--group", "g", "bob"]);
    phone.ok(at, &ca, &["join"]);
    laptop.ok(at, &ca, &["join"]);

    // The laptop's profile is wiped; bob logs in again there: a new device.
    std::fs::remove_dir_all(&laptop.state).unwrap();
    laptop.ok(at, &ca, &["login", "--username", "bob"]);
    phone.ok(at, &ca, &["recv"]);
    let joined = laptop.ok(at, &ca, &["join"]);
    assert!(joined.contains("[g] * joined"), "{joined}");
    alice.ok(at, &ca, &["send", "--group", "g", "welcome back"]);
    assert!(
        laptop
            .ok(at, &ca, &["recv"])
            .contains("alice: welcome back")
    );

    // The lost profile's device is still a member until bob removes it.
    let members = alice.ok(at, &ca, &["members", "--group", "g"]);
    assert!(members.contains("bob (3 devices)"), "{members}");
    let out = phone.ok(at, &ca, &["remove-device", &old_laptop]);
    assert!(out.contains("removed it from g"), "{out}");
    let members = alice.ok(at, &ca, &["members", "--group", "g"]);
    assert!(members.contains("bob (2 devices)"), "{members}");
    assert_no_fork(at, &ca, "g", &[&alice, &phone, &laptop]);
}

#[test]
fn a_users_only_profile_deleted_and_logged_in_again_rejoins_by_itself_and_reads_new_messages() {
    let dir = tempfile::tempdir().unwrap();
    let World {
        server,
        ca,
        alice,
        phone,
        ..
    } = World::start(dir.path());
    let at = server.addr;
    alice.ok(at, &ca, &["create-group", "g"]);
    alice.ok(at, &ca, &["invite", "--group", "g", "bob"]);
    phone.ok(at, &ca, &["join"]);
    alice.ok(at, &ca, &["send", "--group", "g", "before"]);
    assert!(phone.ok(at, &ca, &["recv"]).contains("alice: before"));

    // bob's only profile is gone; nobody else of bob's can add him back.
    std::fs::remove_dir_all(&phone.state).unwrap();
    phone.ok(at, &ca, &["login", "--username", "bob"]);
    let got = phone.ok(at, &ca, &["recv"]);
    assert!(
        got.contains("[g] * rejoined: messages sent before this device joined cannot be read here"),
        "{got}"
    );
    assert!(!got.contains("before\n"), "{got}");
    let seen = alice.ok(at, &ca, &["recv"]);
    assert!(seen.contains("bob joined from a new device"), "{seen}");

    alice.ok(at, &ca, &["send", "--group", "g", "after"]);
    assert!(phone.ok(at, &ca, &["recv"]).contains("alice: after"));
    phone.ok(at, &ca, &["send", "--group", "g", "back again"]);
    assert!(alice.ok(at, &ca, &["recv"]).contains("bob: back again"));
    // The lost device stays a member until bob removes it.
    let members = alice.ok(at, &ca, &["members", "--group", "g"]);
    assert!(members.contains("bob (2 devices)"), "{members}");
    assert_no_fork(at, &ca, "g", &[&alice, &phone]);
}

#[test]
fn logging_out_everywhere_sends_every_device_of_the_account_back_to_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let World {
        server,
        ca,
        alice,
        phone,
        laptop,
    } = World::start(dir.path());
    let at = server.addr;
    laptop.ok(at, &ca, &["login", "--username", "bob"]);
    let said = phone.ok(at, &ca, &["logout", "--everywhere"]);
    assert!(said.contains("logged out everywhere"), "{said}");
    // Both of bob's profiles must log in again: this one forgot its token
    // (only its device key speaks for it, as after `logout`), the other's is
    // refused. alice's account is untouched.
    let (ok, out, err) = phone.run(at, &ca, &["whoami"]);
    assert!(ok && out.contains("challenge session"), "{out} {err}");
    let (ok, _, err) = laptop.run(at, &ca, &["whoami"]);
    assert!(!ok, "still logged in: {err}");
    assert!(err.contains("log in"), "{err}");
    alice.ok(at, &ca, &["whoami"]);
    laptop.ok(at, &ca, &["login", "--username", "bob"]);
    laptop.ok(at, &ca, &["whoami"]);
    // A wrong password ends nothing.
    let wrong = User {
        state: laptop.state.clone(),
        password: "not-it".into(),
    };
    let (ok, _, err) = wrong.run(at, &ca, &["logout", "--everywhere"]);
    assert!(!ok);
    assert_one_line_error(&err, "");
    laptop.ok(at, &ca, &["whoami"]);
}

#[test]
fn a_changed_password_logs_in_and_the_old_one_no_longer_does() {
    let dir = tempfile::tempdir().unwrap();
    let World {
        server,
        ca,
        phone,
        laptop,
        ..
    } = World::start(dir.path());
    let at = server.addr;
    let out = phone
        .command(at, &ca, &["change-password"])
        .env("QPC_NEW_PASSWORD", "a-new-password")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("password changed"), "{said}");
    phone.ok(at, &ca, &["whoami"]); // still logged in
    // The old password logs in nowhere; the new one does.
    let (ok, _, err) = laptop.run(at, &ca, &["login", "--username", "bob"]);
    assert!(!ok);
    assert_one_line_error(&err, "");
    let renewed = User {
        state: laptop.state.clone(),
        password: "a-new-password".into(),
    };
    renewed.ok(at, &ca, &["login", "--username", "bob"]);
    // An empty new password is refused before anything is sent.
    let out = phone
        .command(at, &ca, &["change-password"])
        .env("QPC_NEW_PASSWORD", "")
        .env("QPC_PASSWORD", "a-new-password")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_one_line_error(&String::from_utf8_lossy(&out.stderr), "empty new password");
}
