//! `quicnprotochat daemon` through the built binary: one process owns a profile
//! and the CLI's commands go through it; a second owner is refused with the
//! first one's pid; its socket speaks JSON-RPC 2.0 to any client (here a plain
//! Unix socket, none of our client code), malformed requests included.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{ServerProcess, User, assert_one_line_error, untimed};
use serde_json::{Value, json};

/// The binary tests' pair (a server, alice and bob in group "g") with what
/// these tests do with it.
type World = common::Pair;

impl World {
    fn ok(&self, user: &User, args: &[&str]) -> String {
        user.ok(self.server.addr, &self.ca, args)
    }

    fn run(&self, user: &User, args: &[&str]) -> (bool, String, String) {
        user.run(self.server.addr, &self.ca, args)
    }

    /// `daemon` for `user`, once it said where it serves.
    fn daemon(&self, user: &User, extra: &[&str]) -> Daemon {
        let mut args = vec!["daemon"];
        args.extend_from_slice(extra);
        let mut child = user
            .command(self.server.addr, &self.ca, &args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("daemon starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("daemon serving ") && line.contains(&format!("(pid {})", child.id())),
            "{line:?}"
        );
        let socket = user.state.join("daemon.sock");
        Daemon {
            child,
            socket,
            _stdout: stdout,
        }
    }
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain JSON-RPC client on the daemon's socket.
struct Rpc {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Rpc {
    fn connect(socket: &Path) -> Rpc {
        let writer = UnixStream::connect(socket).expect("the daemon's socket answers");
        writer
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Rpc {
            reader: BufReader::new(writer.try_clone().unwrap()),
            writer,
        }
    }

    fn send_line(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\n").unwrap();
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a line in time");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// The next response (events in between are skipped).
    fn response(&mut self) -> Value {
        loop {
            let v = self.read();
            if v.get("method").is_none() {
                return v;
            }
        }
    }

    fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send_line(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string(),
        );
        let v = self.response();
        assert_eq!(v["id"], json!(id), "{v}");
        v
    }
}

fn error_code(v: &Value) -> i64 {
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error: {v}"))
}

#[test]
fn the_cli_goes_through_a_running_daemon_on_the_same_profile() {
    let w = World::start();
    let daemon = w.daemon(&w.bob, &[]);
    assert!(daemon.socket.exists());
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is the owner's only");

    // Before: nothing new; whoami and groups answer from the daemon.
    assert_eq!(w.ok(&w.bob, &["recv"]).trim(), "no new messages");
    assert!(w.ok(&w.bob, &["whoami"]).starts_with("bob (identity "));
    assert!(
        w.ok(&w.bob, &["groups"])
            .starts_with("g  epoch 1  2 member(s)")
    );

    // A recv that waits before anything is sent gets it when it comes.
    let waiting = w
        .bob
        .command(w.server.addr, &w.ca, &["recv", "--wait", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    w.ok(&w.alice, &["send", "--group", "g", "hello", "bob"]);
    let out = waiting.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        got.lines().map(untimed).collect::<Vec<_>>(),
        vec!["[g] alice: hello bob"]
    );
    // Shown once: the next recv has nothing.
    assert_eq!(w.ok(&w.bob, &["recv"]).trim(), "no new messages");

    let sent = w.ok(&w.bob, &["send", "--group", "g", "hi", "alice"]);
    assert!(
        sent.starts_with("sent to 1 member device(s) of g"),
        "{sent}"
    );
    let got = w.ok(&w.alice, &["recv", "--wait", "10"]);
    assert_eq!(
        got.lines().map(untimed).collect::<Vec<_>>(),
        vec!["[g] bob: hi alice"]
    );

    let history = w.ok(&w.bob, &["history", "--group", "g"]);
    let texts: Vec<&str> = history.lines().map(untimed).collect();
    assert_eq!(
        texts,
        vec!["alice: hello bob", "bob: hi alice"],
        "{history}"
    );
    let members = w.ok(&w.bob, &["members", "--group", "g"]);
    assert_eq!(members.lines().collect::<Vec<_>>(), vec!["alice", "bob"]);

    // --json and failures keep the CLI's shapes and exit codes.
    let json_history = w.ok(&w.bob, &["history", "--group", "g", "--json"]);
    let first: Value = serde_json::from_str(json_history.lines().next().unwrap()).unwrap();
    assert_eq!(first["text"], "hello bob");
    let (ok, _, err) = w.run(&w.bob, &["send", "--group", "nope", "x"]);
    assert!(!ok);
    assert_one_line_error(&err, "no group named \"nope\"");

    // Account commands run in the daemon too (it lets go of the profile
    // meanwhile, and carries on after).
    let keys = w.ok(&w.bob, &["check-key"]);
    assert!(keys.contains("one-time KeyPackages left"), "{keys}");
    let alice_keys = w.ok(&w.bob, &["check-key", "--username", "alice"]);
    assert!(!alice_keys.is_empty());
    assert!(w.ok(&w.bob, &["groups"]).starts_with("g  epoch 1"));
    assert!(daemon.socket.exists());
}

#[test]
fn login_logout_refresh_keypackage_and_chat_go_through_a_running_daemon() {
    let w = World::start();
    let daemon = w.daemon(&w.bob, &[]);

    // KeyPackages published by the daemon, with the one-shot command's text.
    let said = w.ok(&w.bob, &["refresh-keypackage", "--count", "5"]);
    assert!(
        said.starts_with("uploaded 5 KeyPackages and a new last-resort one; "),
        "{said}"
    );
    let (ok, _, err) = w.run(&w.bob, &["refresh-keypackage", "--count", "100000"]);
    assert!(!ok);
    assert_one_line_error(&err, "at most 1000");

    // A wrong password through the daemon exits as alone: refused (3).
    let wrong = w
        .bob
        .command(w.server.addr, &w.ca, &["login", "--username", "bob"])
        .env("QPC_PASSWORD", "not-the-password")
        .output()
        .unwrap();
    assert_eq!(
        wrong.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );

    // A login on the daemon's profile: the daemon signs in again and carries on.
    let said = w.ok(&w.bob, &["login", "--username", "bob"]);
    assert!(
        said.starts_with("logged in as bob; session expires "),
        "{said}"
    );
    assert!(w.ok(&w.bob, &["whoami"]).starts_with("bob (identity "));

    // chat: what arrives is printed as chat prints it, typed lines are sent,
    // Ctrl+D ends it once they are taken.
    let mut chat = w
        .bob
        .command(w.server.addr, &w.ca, &["chat", "--group", "g"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut typed = chat.stdin.take().unwrap();
    let mut shown = BufReader::new(chat.stdout.take().unwrap());
    // Until alice's message shows, chat is up and listening.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    while !line.contains("[alice] hello chat") {
        assert!(
            Instant::now() < deadline,
            "chat never showed alice's message"
        );
        w.ok(&w.alice, &["send", "--group", "g", "hello", "chat"]);
        line.clear();
        // Each send is shown (or chat is not subscribed yet and recv shows
        // it at the start): read until one comes.
        shown.read_line(&mut line).unwrap();
    }
    assert!(
        line.trim_end().ends_with("[alice] hello chat"),
        "chat's format, HH:MM:SS [SENDER] TEXT: {line:?}"
    );
    typed.write_all(b"hi from chat\n").unwrap();
    drop(typed);
    let out = chat.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = w.ok(&w.alice, &["recv", "--wait", "10"]);
    assert!(
        got.lines()
            .map(untimed)
            .any(|l| l == "[g] bob: hi from chat"),
        "{got}"
    );
    // A logout through the daemon signs it out; a login signs it in again.
    assert_eq!(w.ok(&w.bob, &["logout"]).trim(), "logged out");
    let (ok, _, err) = w.run(&w.bob, &["groups"]);
    assert!(!ok);
    assert!(err.contains("not logged in"), "{err}");
    w.ok(&w.bob, &["login", "--username", "bob"]);
    assert!(w.ok(&w.bob, &["groups"]).starts_with("g  epoch 1"));
    // The daemon served all of it: it still runs.
    assert!(daemon.socket.exists());
}

#[test]
fn a_second_daemon_on_a_profile_is_refused_with_the_first_ones_pid() {
    let w = World::start();
    let first = w.daemon(&w.bob, &[]);
    let (ok, out, err) = w.run(&w.bob, &["daemon"]);
    assert!(!ok, "{out}");
    assert_one_line_error(&err, &format!("in use by pid {}", first.child.id()));
    // `web` is a daemon too.
    let (ok, _, err) = w.run(&w.bob, &["web"]);
    assert!(!ok);
    assert_one_line_error(&err, &format!("in use by pid {}", first.child.id()));
    // The first still serves.
    assert!(w.ok(&w.bob, &["groups"]).starts_with("g  epoch 1"));
}

#[test]
fn a_socket_left_by_a_killed_daemon_is_cleaned_up_and_commands_run_without_it() {
    let w = World::start();
    let mut daemon = w.daemon(&w.bob, &[]);
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    assert!(daemon.socket.exists(), "kill -9 leaves the socket file");
    // Nobody answers on it: the command opens the profile itself.
    assert!(w.ok(&w.bob, &["groups"]).starts_with("g  epoch 1"));
    // A new daemon replaces the stale socket.
    let mut again = w.daemon(&w.bob, &[]);
    assert!(w.ok(&w.bob, &["groups"]).starts_with("g  epoch 1"));
    // Stopped by a signal, it exits 0 and takes its socket with it.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &again.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(again.child.wait().unwrap().success());
    assert!(!again.socket.exists(), "a stopped daemon leaves no socket");
}

#[test]
fn a_plain_json_rpc_client_is_answered_and_malformed_requests_get_standard_errors() {
    let w = World::start();
    let daemon = w.daemon(&w.bob, &[]);
    let mut rpc = Rpc::connect(&daemon.socket);

    // Malformed input: the standard codes, and the daemon keeps serving.
    rpc.send_line("{this is not json");
    let v = rpc.response();
    assert_eq!(error_code(&v), -32700, "{v}");
    assert_eq!(v["id"], Value::Null);
    rpc.send_line(r#"[{"jsonrpc":"2.0","id":1,"method":"groups"}]"#);
    assert_eq!(error_code(&rpc.response()), -32600);
    rpc.send_line(r#"{"jsonrpc":"1.0","id":2,"method":"groups"}"#);
    assert_eq!(error_code(&rpc.response()), -32600);
    let v = rpc.call(3, "no-such-method", json!({}));
    assert_eq!(error_code(&v), -32601, "{v}");
    let v = rpc.call(4, "history", json!({"limit": 3}));
    assert_eq!(error_code(&v), -32602, "{v}");
    let v = rpc.call(5, "history", json!({"group": "g", "colour": "red"}));
    assert_eq!(error_code(&v), -32602, "{v}");
    // A notification gets no answer, not even an error: the next line read
    // is the next call's (`call` checks the id).
    rpc.send_line(r#"{"jsonrpc":"2.0","method":"no-such-method"}"#);
    rpc.send_line(r#"{"jsonrpc":"2.0","method":"history","params":{}}"#);

    // Well-formed calls.
    let v = rpc.call(6, "status", json!({}));
    assert_eq!(v["result"]["pid"], json!(daemon.child.id()), "{v}");
    assert_eq!(v["result"]["username"], "bob");
    let v = rpc.call(7, "groups", json!({"json": true}));
    assert_eq!(v["result"]["values"][0]["name"], "g", "{v}");
    let v = rpc.call(8, "send", json!({"group": "nope", "message": "x"}));
    assert_eq!(error_code(&v), -32000, "{v}");
    assert_eq!(v["error"]["data"]["exit"], 1, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no group named")
    );

    // Subscribed: a message alice sends arrives as an event, pushed.
    let v = rpc.call(9, "subscribe", json!({}));
    assert_eq!(v["result"]["subscribed"], true);
    w.ok(&w.alice, &["send", "--group", "g", "pushed"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no message event");
        let v = rpc.read();
        if v["method"] == "event" && v["params"]["kind"] == "message" {
            assert_eq!(v["params"]["line"]["sender"], "alice", "{v}");
            assert_eq!(v["params"]["line"]["text"], "pushed", "{v}");
            break;
        }
    }
    // Told to a subscriber, the message is shown: recv has nothing more.
    assert_eq!(w.ok(&w.bob, &["recv"]).trim(), "no new messages");

    // A request larger than the limit is refused and its connection closed;
    // other connections are served.
    let mut big = Rpc::connect(&daemon.socket);
    // (The daemon stops reading past the limit: the rest of the write may
    // find the connection closed.)
    let _ = big.writer.write_all("x".repeat(600 * 1024).as_bytes());
    assert_eq!(error_code(&big.response()), -32600);
    let v = Rpc::connect(&daemon.socket).call(10, "whoami", json!({}));
    assert!(
        v["result"]["output"]
            .as_str()
            .unwrap()
            .starts_with("bob (identity "),
        "{v}"
    );
}

#[test]
fn with_the_node_down_reads_answer_from_the_profile_with_and_without_a_daemon() {
    let mut w = World::start();
    w.ok(&w.alice, &["send", "--group", "g", "before the outage"]);
    assert!(
        w.ok(&w.bob, &["recv", "--wait", "10"])
            .contains("before the outage")
    );
    let _ = w.server.child.kill();
    let _ = w.server.child.wait();

    // Without a daemon: the one-shot commands answer from the profile and
    // say on stderr that the node was not asked.
    for (args, expect) in [
        (vec!["history", "--group", "g"], "alice: before the outage"),
        (vec!["groups"], "g  epoch 1  2 member(s)"),
        (vec!["members", "--group", "g"], "alice"),
        (vec!["whoami"], "bob (identity "),
        (vec!["devices"], "1 device(s) of bob:"),
    ] {
        let (ok, out, err) = w.run(&w.bob, &args);
        assert!(ok, "{args:?}: {err}");
        assert!(out.contains(expect), "{args:?}: {out}");
        assert!(
            err.contains("note: the node is unreachable"),
            "{args:?}: {err}"
        );
    }
    // A send without a daemon fails with the unreachable status, and the
    // message waits in the outbox.
    let (ok, _, err) = w.run(&w.bob, &["send", "--group", "g", "queued by the cli"]);
    assert!(!ok);
    assert_one_line_error(&err, "waits in this profile's outbox");

    // With a daemon started while the node is down: the same answers, and
    // its status says it is not connected.
    let daemon = w.daemon(&w.bob, &[]);
    let (ok, out, err) = w.run(&w.bob, &["history", "--group", "g"]);
    assert!(ok, "{err}");
    assert!(out.contains("alice: before the outage"), "{out}");
    assert!(w.ok(&w.bob, &["groups"]).starts_with("g  epoch 1"));
    let v = Rpc::connect(&daemon.socket).call(1, "status", json!({}));
    let state = v["result"]["connection"].as_str().unwrap().to_string();
    assert!(
        state == "connecting" || state == "reconnecting",
        "a daemon without its node says so: {v}"
    );
    // Under the daemon a send is queued: it says so and exits 0.
    let out = w.ok(&w.bob, &["send", "--group", "g", "queued by the daemon"]);
    assert!(out.starts_with("queued for g"), "{out}");
    let history = w.ok(&w.bob, &["history", "--group", "g"]);
    let pending: Vec<&str> = history
        .lines()
        .filter(|l| l.ends_with("(pending: not sent yet)"))
        .map(untimed)
        .collect();
    assert_eq!(
        pending,
        vec![
            "bob: queued by the cli  (pending: not sent yet)",
            "bob: queued by the daemon  (pending: not sent yet)"
        ],
        "{history}"
    );
    let json = w.ok(&w.bob, &["history", "--group", "g", "--json"]);
    let last: Value = serde_json::from_str(json.lines().last().unwrap()).unwrap();
    assert_eq!(last["delivery"], "pending", "{json}");

    // The node comes back: the daemon sends both, in order, once.
    let server = ServerProcess::start_at(&w.data, &w.server.addr.to_string(), &[]);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < 2 && Instant::now() < deadline {
        let out = w.ok(&w.alice, &["recv", "--wait", "5"]);
        got.extend(
            out.lines()
                .filter(|l| !l.contains("no new messages"))
                .map(|l| untimed(l).to_string()),
        );
    }
    assert_eq!(
        got,
        vec![
            "[g] bob: queued by the cli",
            "[g] bob: queued by the daemon"
        ]
    );
    let history = w.ok(&w.bob, &["history", "--group", "g"]);
    assert!(!history.contains("pending"), "{history}");
    drop(daemon);
    drop(server);
}
