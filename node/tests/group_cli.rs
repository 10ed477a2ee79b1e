//! Group chat through the built binary, as users run it: a server process and
//! three client profiles driven through the CLI; the server killed with -9 in the
//! middle of a conversation; a client killed in the middle of `recv`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    BIN, Pair, ServerProcess, User, assert_no_fork, assert_one_line_error, client_env, untimed,
};
use quicnprotochat_wire::tls;

/// The lines of an output, each without the time `recv` and `chat` put first.
fn lines_of(out: &str) -> Vec<String> {
    out.lines().map(|l| untimed(l).to_string()).collect()
}

#[test]
fn register_create_invite_join_chat_remove_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let ca = data.join(tls::CERT_FILE);
    let at = server.addr;
    let (alice, bob, carol) = (
        User::new(dir.path(), "alice"),
        User::new(dir.path(), "bob"),
        User::new(dir.path(), "carol"),
    );
    for (u, name) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")] {
        u.ok(at, &ca, &["register-user", "--username", name]);
    }

    // Errors first: one line each, non-zero exit.
    let stranger = User::new(dir.path(), "stranger");
    let (ok, _, err) = stranger.run(at, &ca, &["groups"]);
    assert!(!ok);
    assert_one_line_error(&err, "not logged in");
    let (ok, _, err) = alice.run(at, &ca, &["send", "--group", "nope", "hi"]);
    assert!(!ok);
    assert_one_line_error(&err, "no group named \"nope\"");

    let out = alice.ok(at, &ca, &["create-group", "team"]);
    assert!(out.starts_with("created group team"), "{out}");
    let (ok, _, err) = alice.run(at, &ca, &["invite", "--group", "team", "mallory"]);
    assert!(!ok);
    assert_one_line_error(&err, "unknown user \"mallory\"");
    let out = alice.ok(at, &ca, &["invite", "--group", "team", "bob", "carol"]);
    assert!(out.contains("epoch 1"), "{out}");
    let out = bob.ok(at, &ca, &["join"]);
    assert!(out.contains("[team] * joined, invited by alice"), "{out}");
    carol.ok(at, &ca, &["join"]);
    assert_eq!(bob.ok(at, &ca, &["recv"]).trim(), "no new messages");

    alice.ok(at, &ca, &["send", "--group", "team", "hello", "team"]);
    bob.ok(at, &ca, &["send", "--group", "team", "hi", "alice"]);
    alice.ok(at, &ca, &["send", "--group", "team", "how are you?"]);
    assert_eq!(
        lines_of(&carol.ok(at, &ca, &["recv", "--wait", "5"])),
        vec![
            "[team] alice: hello team",
            "[team] bob: hi alice",
            "[team] alice: how are you?"
        ]
    );
    // bob's own send caught up with alice's first message: recv shows it now.
    assert_eq!(
        lines_of(&bob.ok(at, &ca, &["recv"])),
        vec!["[team] alice: hello team", "[team] alice: how are you?"]
    );
    let groups = alice.ok(at, &ca, &["groups"]);
    assert!(groups.starts_with("team  epoch 1  3 member(s)"), "{groups}");
    assert_eq!(
        lines_of(&carol.ok(at, &ca, &["members", "--group", "team"])),
        vec!["alice", "bob", "carol"]
    );

    // chat: what was waiting shows as [SENDER] TEXT; typed lines are sent.
    carol.ok(at, &ca, &["send", "--group", "team", "carol here"]);
    let out = alice.chat(at, &ca, "team", &["typed in chat".into()]);
    assert!(out.lines().any(|l| untimed(l) == "[bob] hi alice"), "{out}");
    assert!(
        out.lines().any(|l| untimed(l) == "[carol] carol here"),
        "{out}"
    );
    assert!(
        bob.ok(at, &ca, &["recv"])
            .lines()
            .any(|l| untimed(l) == "[team] alice: typed in chat")
    );

    // Removal: carol is told, and reads nothing sent afterwards.
    let out = alice.ok(at, &ca, &["remove", "--group", "team", "carol"]);
    assert!(out.contains("epoch 2"), "{out}");
    let out = carol.ok(at, &ca, &["recv"]);
    assert!(
        out.contains("you were removed from the group by alice"),
        "{out}"
    );
    alice.ok(
        at,
        &ca,
        &["send", "--group", "team", "secret after removal"],
    );
    let out = carol.ok(at, &ca, &["recv"]);
    assert!(!out.contains("secret"), "{out}");
    let (ok, _, err) = carol.run(at, &ca, &["send", "--group", "team", "let me in"]);
    assert!(!ok);
    assert_one_line_error(&err, "no group named");

    // Self-update, then everyone is still in step.
    let out = bob.ok(at, &ca, &["update", "--group", "team"]);
    assert!(out.contains("epoch 3"), "{out}");
    alice.ok(at, &ca, &["send", "--group", "team", "after the update"]);
    let out = bob.ok(at, &ca, &["recv"]);
    assert!(out.contains("[team] alice: after the update"), "{out}");
    let a = alice.ok(at, &ca, &["groups"]);
    assert!(a.starts_with("team  epoch 3  2 member(s)"), "{a}");
    assert_no_fork(at, &ca, "team", &[&alice, &bob]);
}

#[test]
fn kill_dash_nine_server_mid_conversation_loses_no_sent_message() {
    let Pair {
        dir: _dir,
        data,
        ca,
        server,
        alice,
        bob,
    } = Pair::start();
    let at = server.addr;

    // alice sends in a loop while the node is killed under her.
    let sender = {
        let (state, password) = (alice.state.clone(), alice.password.clone());
        let ca = ca.clone();
        std::thread::spawn(move || {
            let alice = User { state, password };
            let mut delivered = Vec::new();
            for i in 0..200 {
                let text = format!("message {i}");
                let (ok, _, _) = alice.run(at, &ca, &["send", "--group", "g", &text]);
                if !ok {
                    break;
                }
                delivered.push(text);
            }
            delivered
        })
    };
    // Kill once bob has read a few messages, however slow the machine is.
    let mut shown: Vec<String> = Vec::new();
    let read = |at: SocketAddr, shown: &mut Vec<String>| {
        for l in bob.ok(at, &ca, &["recv"]).lines() {
            if let Some(text) = untimed(l).strip_prefix("[g] alice: ") {
                shown.push(text.to_string());
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while shown.len() < 3 && Instant::now() < deadline {
        read(at, &mut shown);
    }
    server.signal("-KILL");
    let delivered = sender.join().unwrap();
    drop(server);
    assert!(delivered.len() >= 3);

    let server = ServerProcess::start(&data, &[]);
    let at = server.addr;
    read(at, &mut shown);
    // Every send alice was told went through reaches bob exactly once, in order
    // (a send cut off by the kill may or may not have been stored before it).
    let indices: Vec<usize> = shown
        .iter()
        .map(|t| t.strip_prefix("message ").unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        indices,
        (0..indices.len()).collect::<Vec<_>>(),
        "in order, no gap, no duplicate"
    );
    assert!(
        indices.len() == delivered.len() || indices.len() == delivered.len() + 1,
        "{} acknowledged, {} shown",
        delivered.len(),
        indices.len()
    );
    // The conversation continues.
    alice.ok(at, &ca, &["send", "--group", "g", "after the restart"]);
    let out = bob.ok(at, &ca, &["recv"]);
    assert!(out.contains("[g] alice: after the restart"), "{out}");
    assert_no_fork(at, &ca, "g", &[&alice, &bob]);
}

#[test]
fn a_client_killed_mid_recv_shows_every_message_after_restart() {
    let Pair {
        dir: _dir,
        data: _,
        ca,
        server,
        alice,
        bob,
    } = Pair::start();
    let at = server.addr;
    let sent: Vec<String> = (0..150).map(|i| format!("m{i:03}")).collect();
    alice.chat(at, &ca, "g", &sent);

    // bob's recv is killed -9 three times: early (while applying the inbox), a
    // little later, and right after it printed its first line.
    let mut shown: Vec<String> = Vec::new();
    let kills = [Duration::from_millis(60), Duration::from_millis(250)];
    let mut run_and_kill = |kill_after: Option<Duration>| {
        let mut child = bob
            .command(at, &ca, &["recv"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let pid = child.id().to_string();
        let killer = kill_after.map(|d| {
            let pid = pid.clone();
            std::thread::spawn(move || {
                std::thread::sleep(d);
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            })
        });
        let mut killed_at_first_line = kill_after.is_none();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if killed_at_first_line {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                killed_at_first_line = false;
            }
            // Whatever reached the terminal was shown, also after the kill.
            if let Some(text) = untimed(&line).strip_prefix("[g] alice: ") {
                shown.push(text.to_string());
            }
        }
        let _ = child.wait();
        if let Some(k) = killer {
            k.join().unwrap();
        }
    };
    for k in kills {
        run_and_kill(Some(k));
    }
    run_and_kill(None);
    // Then recv runs to the end, as often as needed.
    loop {
        let out = bob.ok(at, &ca, &["recv"]);
        if out.trim() == "no new messages" {
            break;
        }
        shown.extend(
            out.lines()
                .filter_map(|l| untimed(l).strip_prefix("[g] alice: "))
                .map(str::to_string),
        );
    }

    // Every message shown; none lost. A kill can repeat at most the one line it
    // interrupted (printed, not yet marked shown): never more than one per kill.
    let mut distinct = shown.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct, sent, "every message shown");
    assert!(
        shown.len() - distinct.len() <= 3,
        "{} repeats over 3 kills",
        shown.len() - distinct.len()
    );
    // And in order: first showings are exactly the messages as sent.
    let mut first = Vec::new();
    for s in &shown {
        if !first.contains(s) {
            first.push(s.clone());
        }
    }
    assert_eq!(first, sent, "shown in the order sent");
    assert_no_fork(at, &ca, "g", &[&alice, &bob]);
}

#[test]
fn the_demo_runs_end_to_end_and_checks_itself() {
    let out = Command::new(BIN)
        .arg("demo")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "bob      reads seq  1 (epoch 1): [demo] * joined, invited by alice",
        "[demo] * you were removed from the group by alice",
        "[demo] * bob updated their keys (epoch 3)",
        "alice and bob agree: epoch 3",
        "demo finished: every check passed",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in\n{stdout}"
        );
    }
}

#[test]
fn demo_group_against_a_server_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let ca = data.join(tls::CERT_FILE);
    let (ok, out, err) = client_env(&["demo-group"], server.addr, &ca, dir.path(), "");
    assert!(ok, "{out}\n{err}");
    assert!(out.contains(": ping") && out.contains(": pong"), "{out}");
    assert!(
        out.trim_end()
            .lines()
            .last()
            .unwrap()
            .contains(" agree: epoch 1"),
        "{out}"
    );
}

#[test]
fn chat_reconnects_after_the_server_restarts() {
    let Pair {
        dir: _dir,
        data,
        ca,
        server,
        alice,
        bob,
    } = Pair::start();
    let at = server.addr;

    let mut chat = alice
        .command(at, &ca, &["chat", "--group", "g"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = chat.stdin.take().unwrap();
    let stdout = chat.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |bob: &User, at: SocketAddr, text: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if bob.ok(at, &ca, &["recv", "--wait", "2"]).contains(text) {
                return;
            }
        }
        panic!("bob never got {text:?}");
    };

    writeln!(stdin, "before the crash").unwrap();
    wait_for(&bob, at, "[g] alice: before the crash");

    server.signal("-KILL");
    drop(server);
    let server = ServerProcess::start_at(&data, &at.to_string(), &[]);
    assert_eq!(server.addr, at);
    // Typed while the connection is dead: sent once chat has reconnected.
    writeln!(stdin, "after the restart").unwrap();
    wait_for(&bob, at, "[g] alice: after the restart");
    bob.ok(at, &ca, &["send", "--group", "g", "welcome back"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let welcomed = |l: &String| untimed(l) == "[bob] welcome back";
    while Instant::now() < deadline && !seen.iter().any(welcomed) {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            seen.push(l);
        }
    }
    assert!(seen.iter().any(welcomed), "{seen:?}");
    drop(stdin); // Ctrl+D
    let out = chat.wait_with_output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reconnected to"), "{err}");
    reader.join().unwrap();
    assert_no_fork(at, &ca, "g", &[&alice, &bob]);
}

#[test]
fn a_message_cannot_fake_another_senders_line_or_drive_the_terminal() {
    let p = Pair::start();
    let at = p.server.addr;
    let forged = "hi\n[g] bob: please send me your password\u{1b}[31m";
    p.alice.ok(at, &p.ca, &["send", "--group", "g", forged]);
    let out = p.bob.ok(at, &p.ca, &["recv", "--wait", "5"]);
    assert_eq!(
        lines_of(&out),
        vec!["[g] alice: hi\\n[g] bob: please send me your password\\u{1b}[31m"]
    );
    assert!(!out.contains('\u{1b}'), "{out:?}");
    // chat shows the same text as [SENDER] TEXT, still on one line (bob's
    // typed line makes chat catch up on the inbox before it ends).
    p.alice.ok(at, &p.ca, &["send", "--group", "g", forged]);
    let out = p.bob.chat(at, &p.ca, "g", &["ok".into()]);
    assert!(
        lines_of(&out)
            .contains(&"[alice] hi\\n[g] bob: please send me your password\\u{1b}[31m".into()),
        "{out:?}"
    );
    assert!(!out.contains('\u{1b}'), "{out:?}");
    assert!(
        !out.lines().any(|l| untimed(l).starts_with("[g] bob")),
        "{out:?}"
    );
    assert_no_fork(at, &p.ca, "g", &[&p.alice, &p.bob]);
}

#[test]
fn an_empty_or_over_size_message_is_refused_with_one_line_and_chat_goes_on() {
    let p = Pair::start();
    let at = p.server.addr;
    let (ok, _, err) = p.alice.run(at, &p.ca, &["send", "--group", "g", "  "]);
    assert!(!ok);
    assert_one_line_error(&err, "empty message");
    let long = "x".repeat(quicnprotochat_client::core::MAX_MESSAGE_BYTES + 1);
    let (ok, _, err) = p.alice.run(at, &p.ca, &["send", "--group", "g", &long]);
    assert!(!ok);
    assert_one_line_error(&err, "at most 65536 bytes");
    // In chat, the over-size line is reported and what follows is still sent.
    let lines = ["before".to_string(), long, "after".to_string()];
    let out = p.alice.chat_output(at, &p.ca, "g", &lines);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chat went on: {err}");
    assert!(err.contains("at most 65536 bytes"), "{err}");
    let got = p.bob.ok(at, &p.ca, &["recv", "--wait", "5"]);
    assert_eq!(
        lines_of(&got),
        vec!["[g] alice: before", "[g] alice: after"]
    );
}

#[test]
fn history_shows_what_was_said_received_and_sent_with_its_time() {
    let p = Pair::start();
    let at = p.server.addr;
    p.alice.ok(at, &p.ca, &["send", "--group", "g", "one"]);
    p.bob.ok(at, &p.ca, &["recv", "--wait", "5"]);
    p.bob.ok(at, &p.ca, &["send", "--group", "g", "two"]);
    let said = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| {
                // `YYYY-MM-DD HH:MM:SS  SENDER: TEXT`
                let (time, rest) = l.split_at(19);
                assert!(time.starts_with("20") && time.as_bytes()[10] == b' ', "{l}");
                rest.trim_start().to_string()
            })
            .collect()
    };
    for user in [&p.alice, &p.bob] {
        let out = user.ok(at, &p.ca, &["history", "--group", "g"]);
        assert_eq!(said(&out), vec!["alice: one", "bob: two"], "{out}");
    }
    let out = p
        .bob
        .ok(at, &p.ca, &["history", "--group", "g", "--limit", "1"]);
    assert_eq!(said(&out), vec!["bob: two"]);
    let (ok, _, err) = p.bob.run(at, &p.ca, &["history", "--group", "nope"]);
    assert!(!ok);
    assert_one_line_error(&err, "no group named");
}

/// Each line of `out` as JSON.
fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn recv_shows_each_message_with_its_time() {
    let p = Pair::start();
    let at = p.server.addr;
    p.alice.ok(at, &p.ca, &["send", "--group", "g", "timed"]);
    let out = p.bob.ok(at, &p.ca, &["recv", "--wait", "5"]);
    let line = out
        .lines()
        .find(|l| l.ends_with("[g] alice: timed"))
        .expect(&out);
    // `YYYY-MM-DD HH:MM:SS  [g] alice: timed`, today (UTC).
    let today = quicnprotochat_client::display::utc_time(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    assert_eq!(&line[..10], &today[..10], "{line}");
    assert_eq!(untimed(line), "[g] alice: timed", "{line}");
}

#[test]
fn with_json_every_line_is_an_object_with_stable_fields_and_failures_say_their_kind() {
    let p = Pair::start();
    let at = p.server.addr;
    let sent = p.alice.ok(
        at,
        &p.ca,
        &["send", "--json", "--group", "g", "a \"quoted\"\nline"],
    );
    let sent = json_lines(&sent);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["ok"], true);
    assert!(sent[0]["message"].as_str().unwrap().contains("g"));

    let got = json_lines(&p.bob.ok(at, &p.ca, &["recv", "--json", "--wait", "5"]));
    let m = got
        .iter()
        .find(|v| v["type"] == "message")
        .expect("a message");
    assert_eq!(m["group"], "g");
    assert_eq!(m["sender"], "alice");
    assert_eq!(m["text"], "a \"quoted\"\nline", "the text as sent");
    assert!(m["at_ms"].as_u64().unwrap() > 0);
    assert_eq!(m["time"].as_str().unwrap().len(), 19);
    // Nothing new: no output at all, rather than a sentence.
    assert_eq!(p.bob.ok(at, &p.ca, &["recv", "--json"]).trim(), "");

    let history = json_lines(&p.bob.ok(at, &p.ca, &["history", "--json", "--group", "g"]));
    assert_eq!(history.last().unwrap()["text"], "a \"quoted\"\nline");
    let groups = json_lines(&p.bob.ok(at, &p.ca, &["groups", "--json"]));
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["name"], "g");
    assert_eq!(groups[0]["members"].as_array().unwrap().len(), 2);
    assert!(groups[0]["epoch"].as_u64().is_some());

    // Failures: JSON on stderr, an exit status by kind (README, "Exit status").
    let status = |out: &std::process::Output| out.status.code().unwrap();
    let error_of = |out: &std::process::Output| -> serde_json::Value {
        let err = String::from_utf8_lossy(&out.stderr);
        serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("{err:?}: {e}"))
    };
    let unknown = p
        .bob
        .command(at, &p.ca, &["send", "--json", "--group", "nope", "x"])
        .output()
        .unwrap();
    assert_eq!(status(&unknown), 1);
    assert_eq!(error_of(&unknown)["error"]["kind"], "invalid");
    assert_eq!(error_of(&unknown)["ok"], false);

    let stranger = User::new(p.dir.path(), "stranger");
    let not_logged_in = stranger
        .command(at, &p.ca, &["groups", "--json"])
        .output()
        .unwrap();
    assert_eq!(status(&not_logged_in), 5);
    assert_eq!(error_of(&not_logged_in)["error"]["kind"], "not_logged_in");

    let refused = stranger
        .command(at, &p.ca, &["login", "--json", "--username", "nobody"])
        .output()
        .unwrap();
    assert_eq!(status(&refused), 3, "{:?}", error_of(&refused));
    assert_eq!(error_of(&refused)["error"]["kind"], "refused");
    assert!(error_of(&refused)["error"]["code"].is_string());

    drop(p.server);
    let unreachable = p
        .alice
        .command(at, &p.ca, &["health", "--json"])
        .output()
        .unwrap();
    assert_eq!(status(&unreachable), 4);
    assert_eq!(error_of(&unreachable)["error"]["kind"], "unreachable");
    // Without --json: one line, same status.
    let plain = p.alice.command(at, &p.ca, &["health"]).output().unwrap();
    assert_eq!(status(&plain), 4);
    assert_one_line_error(&String::from_utf8_lossy(&plain.stderr), "cannot reach");
}
