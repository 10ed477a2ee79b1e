//! Two node processes on one PostgreSQL database, driven through the CLI: users
//! of a node killed with SIGKILL carry on through the other, and nothing the
//! killed node acknowledged is lost.
//!
//! Needs PostgreSQL: `QPC_TEST_STORE` (see `scripts/start-postgres.sh`).
//! Without it the test says why and passes, unless `QPC_REQUIRE_POSTGRES` is
//! set (as CI sets it).

mod common;

use common::{ServerProcess, User, assert_no_fork, untimed};

/// A fresh database on the server of `QPC_TEST_STORE`, or `None` without one.
fn fresh_database(name: &str) -> Option<String> {
    let Some(url) = std::env::var("QPC_TEST_STORE")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        if std::env::var_os("QPC_REQUIRE_POSTGRES").is_some() {
            panic!("QPC_REQUIRE_POSTGRES is set but QPC_TEST_STORE is not");
        }
        eprintln!("skipped: set QPC_TEST_STORE to a PostgreSQL URL to run the multi-node tests");
        return None;
    };
    let name = format!("{name}_{}", std::process::id());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("PostgreSQL reachable");
            tokio::spawn(connection);
            for sql in [
                format!("DROP DATABASE IF EXISTS {name}"),
                format!("CREATE DATABASE {name}"),
            ] {
                client
                    .batch_execute(&sql)
                    .await
                    .expect("test database created");
            }
        });
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    Some(format!("{base}/{name}"))
}

/// A node on `store` with the certificate `cert` and its `key`.
fn on_postgres(
    data_dir: &std::path::Path,
    store: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> ServerProcess {
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    ServerProcess::start(
        data_dir,
        &["--store", store, "--tls-cert", cert, "--tls-key", key],
    )
}

#[test]
fn users_of_a_node_killed_with_sigkill_carry_on_through_another_and_lose_nothing() {
    let Some(store) = fresh_database("cli_failover") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let node_a = ServerProcess::start(&a_dir, &["--store", &store]);
    // The deployment's nodes share one certificate, which clients pin.
    let ca = a_dir.join("server-cert.der");
    let key = a_dir.join("server-key.der");
    let node_b = on_postgres(&b_dir, &store, &ca, &key);
    let (a, b) = (node_a.addr, node_b.addr);
    let alice = User::new(dir.path(), "alice");
    let bob = User::new(dir.path(), "bob");
    // Accounts made through A, the group joined through B.
    alice.ok(a, &ca, &["register-user", "--username", "alice"]);
    bob.ok(a, &ca, &["register-user", "--username", "bob"]);
    alice.ok(a, &ca, &["create-group", "g"]);
    alice.ok(a, &ca, &["invite", "--group", "g", "bob"]);
    bob.ok(b, &ca, &["join"]);
    // Each send returns once node A acknowledged it.
    for k in 0..5 {
        alice.ok(a, &ca, &["send", "--group", "g", &format!("m{k}")]);
    }
    node_a.signal("-9");
    drop(node_a);
    let got = bob.ok(b, &ca, &["recv"]);
    let lines: Vec<&str> = got.lines().map(untimed).collect();
    for k in 0..5 {
        let want = format!("[g] alice: m{k}");
        assert!(lines.contains(&want.as_str()), "{want} missing in {got}");
    }
    // Alice carries on through B.
    alice.ok(b, &ca, &["send", "--group", "g", "after the kill"]);
    assert!(
        bob.ok(b, &ca, &["recv"]).contains("alice: after the kill"),
        "alice's message through B reached bob"
    );
    alice.ok(b, &ca, &["recv"]);
    assert_no_fork(b, &ca, "g", &[&alice, &bob]);
}

#[test]
fn a_redb_node_moves_to_postgres_with_its_accounts_groups_and_queued_messages() {
    let Some(store) = fresh_database("cli_copy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let old = ServerProcess::start(&a_dir, &[]);
    let ca = a_dir.join("server-cert.der");
    let key = a_dir.join("server-key.der");
    let alice = User::new(dir.path(), "alice");
    let bob = User::new(dir.path(), "bob");
    alice.ok(old.addr, &ca, &["register-user", "--username", "alice"]);
    bob.ok(old.addr, &ca, &["register-user", "--username", "bob"]);
    alice.ok(old.addr, &ca, &["create-group", "g"]);
    alice.ok(old.addr, &ca, &["invite", "--group", "g", "bob"]);
    bob.ok(old.addr, &ca, &["join"]);
    for k in 0..3 {
        alice.ok(
            old.addr,
            &ca,
            &["send", "--group", "g", &format!("queued {k}")],
        );
    }
    old.signal("-TERM");
    drop(old);

    let copy = |url: &str| {
        std::process::Command::new(common::BIN)
            .args(["admin", "--data-dir"])
            .arg(&a_dir)
            .args(["copy-to-postgres", url])
            .output()
            .unwrap()
    };
    let out = copy(&store);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("2 accounts") && said.contains("1 groups"),
        "{said}"
    );
    // A second copy into the now used database is refused and changes nothing.
    let again = copy(&store);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds node data"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let new = on_postgres(&b_dir, &store, &ca, &key);
    let got = bob.ok(new.addr, &ca, &["recv"]);
    for k in 0..3 {
        assert!(got.contains(&format!("alice: queued {k}")), "{got}");
    }
    alice.ok(new.addr, &ca, &["send", "--group", "g", "on postgres"]);
    assert!(
        bob.ok(new.addr, &ca, &["recv"])
            .contains("alice: on postgres")
    );
    alice.ok(new.addr, &ca, &["recv"]);
    assert_no_fork(new.addr, &ca, "g", &[&alice, &bob]);
}
