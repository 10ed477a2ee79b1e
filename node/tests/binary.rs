//! The built `quicnprotochat` binary as a user runs it: a server child process and
//! client commands against it, error lines for unreachable servers and wrong
//! certificates, graceful SIGTERM, and kill -9 without losing acknowledged messages.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{BIN, ServerProcess, assert_one_line_error, client, client_env};

use quicnprotochat_client::NodeConnection;
use quicnprotochat_crypto::Identity;
use quicnprotochat_wire::IdentityKey;
use quicnprotochat_wire::tls;

#[test]
fn health_ping_whoami_against_a_server_process_then_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let ca = data.join(tls::CERT_FILE);
    let state = dir.path().join("alice");

    let (ok, out, err) = client(&["health"], server.addr, &ca, &state);
    assert!(ok, "{err}");
    assert!(out.starts_with("ok (version "), "{out}");
    let (ok, out, err) = client(&["ping"], server.addr, &ca, &state);
    assert!(ok && out.starts_with("pong"), "{out} {err}");

    let (ok, first, err) = client(&["whoami"], server.addr, &ca, &state);
    assert!(ok, "{err}");
    let hex = first
        .trim()
        .strip_prefix("identity ")
        .expect("identity line");
    assert_eq!(hex.len(), 64);
    let (_, again, _) = client(&["whoami"], server.addr, &ca, &state);
    assert_eq!(first, again, "the profile keeps its identity");

    // Key file is private to the owner.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join(tls::KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "key file mode {mode:o}");

    server.signal("-TERM");
    let mut server = server;
    let status = server.child.wait().unwrap();
    assert!(status.success(), "graceful exit on SIGTERM: {status}");
}

#[test]
fn unreachable_server_and_wrong_certificate_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let state = dir.path().join("state");

    // A certificate that is not the server's: another node's.
    let other = tempfile::tempdir().unwrap();
    let other_server = ServerProcess::start(other.path(), &[]);
    let (ok, _, err) = client(
        &["health"],
        server.addr,
        &other.path().join(tls::CERT_FILE),
        &state,
    );
    assert!(!ok);
    assert_one_line_error(&err, "certificate this client trusts");
    drop(other_server);

    let (ok, _, err) = client(
        &["health"],
        server.addr,
        &dir.path().join("missing.der"),
        &state,
    );
    assert!(!ok);
    assert_one_line_error(&err, "server certificate");

    // Nobody listens: take a port and let it go.
    let free = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (ok, _, err) = client(&["health"], free, &data.join(tls::CERT_FILE), &state);
    assert!(!ok);
    assert_one_line_error(&err, "cannot reach the server");
}

#[test]
fn wrong_admission_token_is_a_one_line_unauthorized_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &["--auth-token", "sesame"]);
    let ca = data.join(tls::CERT_FILE);
    let (ok, _, err) = client(
        &["whoami", "--auth-token", "open up"],
        server.addr,
        &ca,
        &dir.path().join("s"),
    );
    assert!(!ok);
    assert_one_line_error(&err, "UNAUTHORIZED");
    let (ok, out, err) = client(
        &["whoami", "--auth-token", "sesame"],
        server.addr,
        &ca,
        &dir.path().join("s"),
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("identity "));
}

#[test]
fn help_versions_completions_and_the_manual_come_from_the_binary() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::BIN)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let version = format!("quicnprotochat {}", env!("CARGO_PKG_VERSION"));
    assert_eq!(run(&["--version"]).trim(), version);
    assert_eq!(
        run(&["send", "--version"]).trim(),
        version.replace(' ', "-send ")
    );
    let server_help = run(&["server", "--help"]);
    assert!(server_help.contains("--listen") && !server_help.contains("--ca-cert"));
    assert!(run(&["completions", "bash"]).contains("_quicnprotochat()"));
    assert!(run(&["completions", "zsh"]).contains("#compdef quicnprotochat"));
    let man = run(&["man"]);
    assert!(
        man.contains(".TH quicnprotochat 1") && man.contains("register\\-user"),
        "{man}"
    );
}

#[test]
fn a_node_that_cannot_listen_says_so_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(common::BIN)
        .args(["server", "--listen", &addr, "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_one_line_error(&String::from_utf8_lossy(&out.stderr), "cannot listen on");
    assert!(
        !data.exists(),
        "no data folder, no key, before the listener is bound"
    );
}

#[test]
fn an_empty_password_is_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let ca = data.join(tls::CERT_FILE);
    let (ok, _, err) = client_env(
        &["register-user", "--username", "nobody"],
        server.addr,
        &ca,
        &dir.path().join("s"),
        "",
    );
    assert!(!ok);
    assert_one_line_error(&err, "empty password");
}

#[test]
fn kill_dash_nine_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let bob = Identity::generate();
    let bob_key = IdentityKey(bob.public_key());

    let mut acknowledged: Vec<(u64, Vec<u8>)> = Vec::new();
    for round in 0..3u8 {
        let server = ServerProcess::start(&data, &[]);
        let pinned = tls::read_pinned_cert(&data.join(tls::CERT_FILE)).unwrap();
        let local = tokio::task::LocalSet::new();
        // Enqueue from several connections while the node is killed mid-stream:
        // whatever was answered with a seq must be there after the restart.
        let got: Vec<(u64, Vec<u8>)> = local.block_on(&runtime, async {
            let acked_so_far = std::rc::Rc::new(std::cell::Cell::new(0usize));
            let mut senders = Vec::new();
            for s in 0..4u8 {
                let pinned = pinned.clone();
                let addr = server.addr;
                let acked_so_far = acked_so_far.clone();
                senders.push(tokio::task::spawn_local(async move {
                    let conn = NodeConnection::connect(addr, pinned).await.unwrap();
                    let session = conn
                        .authenticate(&Identity::generate(), None)
                        .await
                        .unwrap();
                    let mut acked = Vec::new();
                    for i in 0..1000u32 {
                        let payload = format!("round {round} sender {s} msg {i}").into_bytes();
                        match session.enqueue(&bob_key, &payload).await {
                            Ok(seq) => {
                                acked.push((seq, payload));
                                acked_so_far.set(acked_so_far.get() + 1);
                            }
                            Err(_) => break,
                        }
                    }
                    acked
                }));
            }
            // Kill once traffic is flowing (however slow the machine is), at a
            // point that differs from round to round.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while acked_so_far.get() < 50 * (round as usize + 1)
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            server.signal("-KILL");
            let mut all = Vec::new();
            for s in senders {
                all.extend(s.await.unwrap());
            }
            all
        });
        assert!(
            !got.is_empty(),
            "round {round}: some enqueues were acknowledged"
        );
        acknowledged.extend(got);
        drop(server);
    }

    let server = ServerProcess::start(&data, &[]);
    let pinned = tls::read_pinned_cert(&data.join(tls::CERT_FILE)).unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let conn = NodeConnection::connect(server.addr, pinned).await.unwrap();
        let session = conn.authenticate(&bob, None).await.unwrap();
        let mut stored = Vec::new();
        let mut after = 0;
        loop {
            let page = session.fetch(after, 0).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
            stored.extend(page);
        }
        // Seqs on disk are exactly 1..=n: no gap, no reuse, in order.
        let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>());
        for (seq, payload) in &acknowledged {
            let env = &stored[(*seq - 1) as usize];
            assert_eq!(&env.data, payload, "acknowledged seq {seq} lost or changed");
        }
    });
}

/// Group sends (one shared body, a reference per member inbox) beside direct
/// enqueues into the same inboxes, with the node killed mid-stream three times:
/// every seq answered is there after the restart with its body, each inbox's
/// seqs are exactly 1..=n, and bodies read the same for every recipient.
#[test]
fn kill_dash_nine_loses_no_acknowledged_group_message() {
    use quicnprotochat_client::CommitBodies;
    use quicnprotochat_wire::Inbound;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sender = Identity::generate();
    let members: Vec<Identity> = (0..3).map(|_| Identity::generate()).collect();
    let gid = b"kill-group".to_vec();
    // (recipient, seq, what it must read)
    let mut acknowledged: Vec<(IdentityKey, u64, Vec<u8>)> = Vec::new();
    for round in 0..3u8 {
        let server = ServerProcess::start(&data, &[]);
        let pinned = tls::read_pinned_cert(&data.join(tls::CERT_FILE)).unwrap();
        let local = tokio::task::LocalSet::new();
        let got = local.block_on(&runtime, async {
            let conn = NodeConnection::connect(server.addr, pinned.clone())
                .await
                .unwrap();
            let s = conn.authenticate(&sender, None).await.unwrap();
            let mut acked = Vec::new();
            if round == 0 {
                let mut all = vec![sender.public_key().to_vec()];
                all.extend(members.iter().map(|m| m.public_key().to_vec()));
                let bodies = CommitBodies {
                    welcome: b"welcome".to_vec(),
                    receipt: b"receipt".to_vec(),
                    ..CommitBodies::default()
                };
                s.commit_group(&gid, 0, &all, &common::mls_commit(&gid, 0), &bodies)
                    .await
                    .unwrap();
            }
            let counter = std::rc::Rc::new(std::cell::Cell::new(0usize));
            // A direct sender into the first member's inbox, beside the group.
            let direct = {
                let (addr, pinned, to) = (
                    server.addr,
                    pinned.clone(),
                    IdentityKey(members[0].public_key()),
                );
                let counter = counter.clone();
                tokio::task::spawn_local(async move {
                    let conn = NodeConnection::connect(addr, pinned).await.unwrap();
                    let d = conn
                        .authenticate(&Identity::generate(), None)
                        .await
                        .unwrap();
                    let mut acked = Vec::new();
                    for i in 0..1000u32 {
                        let payload = format!("direct {round} {i}").into_bytes();
                        match d.enqueue(&to, &payload).await {
                            Ok(seq) => {
                                acked.push((to, seq, payload));
                                counter.set(counter.get() + 1);
                            }
                            Err(_) => break,
                        }
                    }
                    acked
                })
            };
            let group = {
                let counter = counter.clone();
                let gid = gid.clone();
                tokio::task::spawn_local(async move {
                    let mut acked = Vec::new();
                    for i in 0..1000u32 {
                        let body = format!("group {round} {i}").into_bytes();
                        match s.send_group(&gid, &body, &[]).await {
                            Ok(outcomes) => {
                                for o in outcomes {
                                    acked.push((o.recipient, o.outcome.unwrap(), body.clone()));
                                }
                                counter.set(counter.get() + 1);
                            }
                            Err(_) => break,
                        }
                    }
                    acked
                })
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while counter.get() < 40 * (round as usize + 1) && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            server.signal("-KILL");
            acked.extend(direct.await.unwrap());
            acked.extend(group.await.unwrap());
            acked
        });
        assert!(got.len() > 10, "round {round}: traffic was acknowledged");
        acknowledged.extend(got);
        drop(server);
    }

    let server = ServerProcess::start(&data, &[]);
    let pinned = tls::read_pinned_cert(&data.join(tls::CERT_FILE)).unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        for m in &members {
            let conn = NodeConnection::connect(server.addr, pinned.clone())
                .await
                .unwrap();
            let session = conn.authenticate(m, None).await.unwrap();
            let mut stored = Vec::new();
            let mut after = 0;
            loop {
                let page = session.fetch(after, 0).await.unwrap();
                let Some(last) = page.last() else { break };
                after = last.seq;
                stored.extend(page);
            }
            let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
            assert_eq!(
                seqs,
                (1..=stored.len() as u64).collect::<Vec<_>>(),
                "gap-free"
            );
            let me = IdentityKey(m.public_key());
            for (_, seq, body) in acknowledged.iter().filter(|(to, _, _)| *to == me) {
                let read = match stored[(*seq - 1) as usize].inbound().unwrap() {
                    Inbound::Direct(d) => d.to_vec(),
                    Inbound::Shared { body, .. } => body.to_vec(),
                    Inbound::Missed(_) => panic!("no inbox was full"),
                };
                assert_eq!(&read, body, "acknowledged seq {seq} lost or changed");
            }
        }
    });
}

#[test]
fn account_commands_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let ca = data.join(tls::CERT_FILE);
    let (phone, laptop) = (dir.path().join("phone"), dir.path().join("laptop"));
    let run = |args: &[&str], state: &Path, pw: &str| client_env(args, server.addr, &ca, state, pw);

    let (ok, out, err) = run(&["register-user", "--username", "erin"], &phone, "s3cret");
    assert!(ok, "{err}");
    assert!(out.starts_with("registered erin (identity "), "{out}");
    let (ok, out, err) = run(&["whoami"], &phone, "");
    assert!(ok, "{err}");
    assert!(
        out.starts_with("erin (identity ") && out.contains("1 device(s)"),
        "{out}"
    );
    let (ok, out, _) = run(&["check-key"], &phone, "");
    assert!(
        ok && out.starts_with("100 one-time KeyPackages left"),
        "{out}"
    );

    let (ok, _, err) = run(&["login", "--username", "erin"], &laptop, "wrong");
    assert!(!ok);
    assert_one_line_error(&err, "UNAUTHORIZED");
    let (ok, out, err) = run(&["login", "--username", "erin"], &laptop, "s3cret");
    assert!(ok, "{err}");
    assert!(out.starts_with("logged in as erin"), "{out}");
    let (_, out, _) = run(&["whoami"], &laptop, "");
    assert!(out.contains("2 device(s)"), "{out}");

    let (ok, out, err) = run(&["check-key", "--username", "erin"], &laptop, "");
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.ends_with("valid")).count(),
        2,
        "{out}"
    );
    let (ok, out, err) = run(&["refresh-keypackage", "--count", "5"], &phone, "");
    assert!(ok, "{err}");
    // 100 + 5: checking erin's keys above consumed none of them.
    assert!(out.contains("105 one-time packages published"), "{out}");

    let (ok, _, err) = run(
        &["register-user", "--username", "erin"],
        &dir.path().join("x"),
        "pw",
    );
    assert!(!ok);
    assert_one_line_error(&err, "ALREADY_EXISTS");
    let (ok, out, _) = run(&["logout"], &laptop, "");
    assert!(ok && out.starts_with("logged out"));
    // Logged out, the profile still proves its identity, but holds no session.
    let (ok, out, _) = run(&["whoami"], &laptop, "");
    assert!(ok && out.contains("session expires none"), "{out}");
    let (ok, _, err) = run(&["refresh-keypackage"], &laptop, "");
    assert!(!ok);
    assert_one_line_error(&err, "not logged in");
}

#[test]
fn an_operator_lists_and_deletes_accounts_of_a_stopped_node() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let admin = |args: &[&str]| {
        let out = std::process::Command::new(common::BIN)
            .arg("admin")
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = admin(&["accounts"]);
    assert!(!ok);
    assert_one_line_error(&err, "no node database at");
    assert!(!data.exists(), "looking created nothing");

    let server = ServerProcess::start(&data, &[]);
    let ca = data.join(tls::CERT_FILE);
    let run =
        |args: &[&str], who: &str| client_env(args, server.addr, &ca, &dir.path().join(who), "pw");
    assert!(run(&["register-user", "--username", "erin"], "erin").0);
    assert!(run(&["register-user", "--username", "finn"], "finn").0);
    let (ok, _, err) = admin(&["accounts"]);
    assert!(!ok);
    assert_one_line_error(&err, "in use: stop the node first");
    server.signal("-TERM");
    drop(server);

    let (ok, out, err) = admin(&["accounts"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("erin  1 device(s)  ") && lines[1].starts_with("finn  "));
    let (ok, out, err) = admin(&["delete-account", "erin"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "deleted account erin and its 1 device(s)");
    let (ok, _, err) = admin(&["delete-account", "erin"]);
    assert!(!ok);
    assert_one_line_error(&err, "no account named \"erin\"");
    let (_, out, _) = admin(&["accounts"]);
    assert!(
        out.starts_with("finn  ") && out.lines().count() == 1,
        "{out}"
    );

    // Restarted, the node knows erin no more: her device cannot log in, and the
    // name can be taken again.
    let server = ServerProcess::start(&data, &[]);
    let run =
        |args: &[&str], who: &str| client_env(args, server.addr, &ca, &dir.path().join(who), "pw");
    let (ok, _, err) = run(&["login", "--username", "erin"], "erin-again");
    assert!(!ok, "{err}");
    let (ok, _, err) = run(&["register-user", "--username", "erin"], "erin-new");
    assert!(ok, "{err}");
    assert!(run(&["whoami"], "finn").0);
}

#[test]
fn an_operator_lists_and_deletes_accounts_on_a_running_node_with_the_operator_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = "operator-token-for-this-test";
    let server = ServerProcess::start_env(&data, &[], &[("QPC_OPERATOR_TOKEN", token.to_string())]);
    let ca = data.join(tls::CERT_FILE);
    let at = server.addr.to_string();
    let run =
        |args: &[&str], who: &str| client_env(args, server.addr, &ca, &dir.path().join(who), "pw");
    assert!(run(&["register-user", "--username", "gus"], "gus").0);
    assert!(run(&["register-user", "--username", "hal"], "hal").0);
    let admin = |args: &[&str], token: Option<&str>| {
        let mut c = Command::new(BIN);
        c.arg("admin")
            .args(["--server", &at, "--ca-cert"])
            .arg(&ca)
            .args(args)
            .env_remove("QPC_OPERATOR_TOKEN");
        if let Some(t) = token {
            c.env("QPC_OPERATOR_TOKEN", t);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = admin(&["accounts"], Some(token));
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("gus  1 device(s)  ") && lines[1].starts_with("hal  "),
        "{out}"
    );

    // Refused: no token, a wrong one (guesses count against the login limit).
    let (code, _, err) = admin(&["accounts"], None);
    assert_eq!(code, Some(1));
    assert_one_line_error(&err, "needs the node's operator token");
    let (code, _, err) = admin(&["accounts"], Some("not-the-operator-token"));
    assert_eq!(code, Some(3));
    assert_one_line_error(&err, "wrong operator token");
    let (code, _, err) = admin(&["delete-account", "nobody"], Some(token));
    assert_eq!(code, Some(3));
    assert_one_line_error(&err, "no such account");

    // Deleted on the running node: hal's session ends at once, the name is free.
    let (code, out, err) = admin(&["delete-account", "hal"], Some(token));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "deleted account hal and its 1 device(s)");
    let (ok, _, err) = run(&["whoami"], "hal");
    assert!(!ok);
    assert_one_line_error(&err, "session of hal has ended");
    let (ok, _, err) = run(&["login", "--username", "hal"], "hal");
    assert!(!ok, "{err}");
    assert!(run(&["register-user", "--username", "hal"], "hal-new").0);
    assert!(run(&["whoami"], "gus").0, "gus is untouched");

    // A node without an operator token has no operator capability.
    drop(server);
    let other = ServerProcess::start(&dir.path().join("other"), &[]);
    let out = Command::new(BIN)
        .args(["admin", "--server", &other.addr.to_string(), "--ca-cert"])
        .arg(dir.path().join("other").join(tls::CERT_FILE))
        .arg("accounts")
        .env("QPC_OPERATOR_TOKEN", token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_one_line_error(&String::from_utf8_lossy(&out.stderr), "no operator token");
}

/// `scripts/size-check.sh` on a stand-in binary of `size` bytes against
/// `baseline`: (passed, stderr).
fn size_check(dir: &std::path::Path, size: usize, baseline: &str) -> (bool, String) {
    let binary = dir.join("binary");
    std::fs::write(&binary, vec![b'x'; size]).unwrap();
    let base = dir.join("baseline.txt");
    std::fs::write(&base, baseline).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/size-check.sh");
    let out = std::process::Command::new(script)
        .env("QPC_SIZE_BINARY", &binary)
        .env("QPC_SIZE_BASELINE", &base)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_size_check_fails_when_the_binary_grows_more_than_ten_percent() {
    let dir = tempfile::tempdir().unwrap();
    let baseline = "1000\n# a comment\n";
    assert!(size_check(dir.path(), 1000, baseline).0);
    assert!(size_check(dir.path(), 1100, baseline).0, "10 % is allowed");
    assert!(size_check(dir.path(), 500, baseline).0, "shrinking is fine");
    let (passed, err) = size_check(dir.path(), 1101, baseline);
    assert!(!passed);
    assert!(err.contains("grew") && err.contains("--record"), "{err}");
    let (passed, err) = size_check(dir.path(), 1000, "# no number\n");
    assert!(!passed);
    assert!(err.contains("no baseline"), "{err}");
}

#[test]
fn the_recorded_size_baseline_is_a_number() {
    let baseline = include_str!("../../packaging/binary-size.txt");
    let first = baseline.lines().next().unwrap();
    assert!(first.parse::<u64>().unwrap() > 1_000_000, "{first}");
}
