//! Every long-running command (`server`, `web`, `chat`, `recv --wait`) stops on
//! SIGINT and on SIGTERM whatever its node's state (up, gone, never reachable),
//! saying so, and a second signal stops it at once (docs/semantics.md,
//! "Stopping"). Real processes, real signals.
//!
//! The time bound asserted here is loose (a loaded machine): the failure it
//! catches is never stopping. Each stop's time is printed; with
//! `--nocapture` this is the measurement in docs/reliability.md ("Stopping").

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{ServerProcess, User};
use quicnprotochat_wire::tls;

/// Far above the promise; a process that ignores its signals never gets here.
const NEVER: Duration = Duration::from_secs(10);
/// What a command may take after starting before a signal is a graceful stop
/// (its handlers are installed first thing, but the process must be running).
const SETTLE: Duration = Duration::from_millis(1200);

#[derive(Clone, Copy, Debug)]
enum NodeState {
    Up,
    /// Killed while the command ran: the command is reconnecting, with back-off.
    Gone,
    /// An address where nothing answers, from the start.
    NeverReachable,
}

const STATES: [NodeState; 3] = [NodeState::Up, NodeState::Gone, NodeState::NeverReachable];

/// A node, alice registered on it, and her group `g`.
struct World {
    _dir: tempfile::TempDir,
    data: PathBuf,
    ca: PathBuf,
    alice: User,
}

impl World {
    fn new() -> (World, ServerProcess) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ca = data.join(tls::CERT_FILE);
        let server = ServerProcess::start(&data, &[]);
        let alice = User::new(dir.path(), "alice");
        alice.ok(server.addr, &ca, &["register-user", "--username", "alice"]);
        alice.ok(server.addr, &ca, &["create-group", "g"]);
        (
            World {
                _dir: dir,
                data,
                ca,
                alice,
            },
            server,
        )
    }

    /// The node for `state`, started again where the last one was killed.
    fn node(&self, state: NodeState, last: &mut Option<ServerProcess>) -> SocketAddr {
        match state {
            NodeState::NeverReachable => nowhere(),
            _ => {
                if last.is_none() {
                    *last = Some(ServerProcess::start(&self.data, &[]));
                }
                last.as_ref().unwrap().addr
            }
        }
    }
}

/// A loopback UDP port nothing listens on.
fn nowhere() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Sends `signal`, waits for the exit; the status, the time it took, stderr.
fn stop(mut child: Child, signal: &str, what: &str) -> (ExitStatus, Duration, String) {
    kill(&child, signal);
    let sent = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if sent.elapsed() > NEVER {
            let _ = child.kill();
            panic!("{what}: still running {NEVER:?} after {signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    eprintln!("{what}: stopped {took:?} after {signal}");
    (status, took, err)
}

/// The process stopped by itself, saying which signal it heard and with a
/// status that is not the signal's default action.
fn assert_stopped_itself(status: ExitStatus, err: &str, signal: &str, what: &str) {
    let name = &signal[1..];
    assert!(
        err.contains(&format!("SIG{name}, stopping")),
        "{what}: no line about the signal in {err:?} ({status})"
    );
    assert!(
        status.code().is_some(),
        "{what}: killed by the signal's default action ({status})"
    );
    assert!(!err.contains("panicked"), "{what}: {err}");
}

/// Runs `start` (which spawns the command against `addr`) in each node state
/// with each signal, and checks each stop.
fn each_state_and_signal(
    world: &World,
    what: &str,
    start: impl Fn(SocketAddr) -> Child,
    graceful: impl Fn(ExitStatus, &str, NodeState),
) {
    let mut server: Option<ServerProcess> = None;
    for state in STATES {
        for signal in ["-INT", "-TERM"] {
            let addr = world.node(state, &mut server);
            let child = start(addr);
            std::thread::sleep(SETTLE);
            if let NodeState::Gone = state {
                server.take(); // killed: the command now reconnects with back-off
                std::thread::sleep(SETTLE);
            }
            let label = format!("{what} ({state:?}, {signal})");
            let (status, _took, err) = stop(child, signal, &label);
            assert_stopped_itself(status, &err, signal, &label);
            graceful(status, &err, state);
        }
    }
}

#[test]
fn chat_stops_on_either_signal_whatever_its_node_does() {
    let (world, server) = World::new();
    drop(server);
    let alice = &world.alice;
    each_state_and_signal(
        &world,
        "chat",
        |addr| {
            alice
                .command(addr, &world.ca, &["chat", "--group", "g"])
                .stdin(Stdio::piped()) // kept open: chat waits for lines
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        },
        |status, err, state| {
            assert!(status.success(), "chat {state:?}: {status} {err}");
        },
    );
    // Nothing of the profile is left locked or broken: the next command runs.
    let server = ServerProcess::start(&world.data, &[]);
    let groups = alice.ok(server.addr, &world.ca, &["groups"]);
    assert!(groups.contains("g  "), "{groups}");
}

#[test]
fn a_line_in_flight_when_chat_stops_is_reported_in_doubt_and_a_second_signal_stops_at_once() {
    let (world, server) = World::new();
    let alice = &world.alice;
    let (chat, stdin) = chat_with_a_line_its_node_cannot_take(alice, server, &world.ca);

    // One signal: the send in flight gets a moment, then the line is said
    // to be in doubt (its send is not cancelled: it could still go out).
    let (status, _, err) = stop(chat, "-INT", "chat with a line unsent");
    assert_stopped_itself(status, &err, "-INT", "chat with a line unsent");
    assert!(status.success(), "{status}: {err}");
    assert!(
        err.contains("1 line typed may or may not have been sent"),
        "{err}"
    );
    drop(stdin);

    // Two signals in a row: the second ends it without the graceful part.
    let server = ServerProcess::start(&world.data, &[]);
    let (chat, _stdin) = chat_with_a_line_its_node_cannot_take(alice, server, &world.ca);
    kill(&chat, "-INT");
    std::thread::sleep(Duration::from_millis(100));
    let (status, _, err) = stop(chat, "-INT", "chat, twice");
    assert!(err.contains("second signal, stopped at once"), "{err}");
    assert_eq!(status.code(), Some(130), "{err}");
}

/// `chat` started with `server` up, which then goes away, and a line typed
/// after: the line waits for a node that is not coming back. Its stdin is
/// returned (kept open: chat goes on waiting for lines).
fn chat_with_a_line_its_node_cannot_take(
    alice: &User,
    server: ServerProcess,
    ca: &Path,
) -> (Child, std::process::ChildStdin) {
    let mut chat = alice
        .command(server.addr, ca, &["chat", "--group", "g"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(SETTLE);
    drop(server);
    let mut stdin = chat.stdin.take().unwrap();
    writeln!(stdin, "typed while the node is gone").unwrap();
    std::thread::sleep(SETTLE);
    (chat, stdin)
}

#[test]
fn recv_wait_stops_on_either_signal_whatever_its_node_does() {
    let (world, server) = World::new();
    drop(server);
    let alice = &world.alice;
    each_state_and_signal(
        &world,
        "recv --wait",
        |addr| {
            alice
                .command(addr, &world.ca, &["recv", "--wait", "60"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        },
        |status, err, state| {
            assert!(status.success(), "recv {state:?}: {status} {err}");
        },
    );
}

#[test]
fn web_stops_on_either_signal_whatever_its_node_does() {
    let (world, server) = World::new();
    drop(server);
    let alice = &world.alice;
    each_state_and_signal(
        &world,
        "web",
        |addr| {
            let mut child = alice
                .command(addr, &world.ca, &["web"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // Its handlers are in place before it prints its address.
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert!(line.starts_with("web UI at "), "{line:?}");
            child
        },
        |status, err, state| {
            assert!(status.success(), "web {state:?}: {status} {err}");
        },
    );
}

#[test]
fn a_server_with_clients_waiting_stops_on_either_signal_and_starts_again() {
    let (world, server) = World::new();
    drop(server);
    for signal in ["-INT", "-TERM"] {
        let (node, addr) =
            ServerProcess::spawn_child(&world.data, "127.0.0.1:0", &[], &[], Stdio::piped());
        // A client long-polling its inbox holds a connection and a call.
        let mut recv = world
            .alice
            .command(addr, &world.ca, &["recv", "--wait", "60"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(SETTLE);
        let what = format!("server ({signal})");
        let (status, _, err) = stop(node, signal, &what);
        assert_stopped_itself(status, &err, signal, &what);
        assert!(status.success(), "{what}: {status} {err}");
        let _ = recv.kill();
        let _ = recv.wait();
    }
    // Its data folder opens again, with alice's account in it.
    let server = ServerProcess::start(&world.data, &[]);
    world.alice.ok(server.addr, &world.ca, &["whoami"]);
}
