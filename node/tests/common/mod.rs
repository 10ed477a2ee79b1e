//! What the binary tests share: a server child process and a client runner.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_quicnprotochat");

/// A server child process; killed on drop so a failing test leaves nothing behind.
pub(crate) struct ServerProcess {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
}

impl ServerProcess {
    pub(crate) fn start(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        ServerProcess::start_at(data_dir, "127.0.0.1:0", extra)
    }

    /// Starts a server with more environment variables (test hooks).
    pub(crate) fn start_env(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> ServerProcess {
        ServerProcess::spawn(data_dir, "127.0.0.1:0", extra, env)
    }

    /// Starts a server on a given address (e.g. the one a killed server had).
    pub(crate) fn start_at(data_dir: &Path, listen: &str, extra: &[&str]) -> ServerProcess {
        ServerProcess::spawn(data_dir, listen, extra, &[])
    }

    fn spawn(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> ServerProcess {
        let (child, addr) =
            ServerProcess::spawn_child(data_dir, listen, extra, env, Stdio::inherit());
        ServerProcess { child, addr }
    }

    /// The server's child process (its stderr as given) and its address, once
    /// it listens; for tests that handle the process themselves.
    pub(crate) fn spawn_child(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, String)],
        stderr: Stdio,
    ) -> (Child, SocketAddr) {
        let mut child = Command::new(BIN)
            .args(["server", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("server starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .trim()
            .parse()
            .unwrap();
        (child, addr)
    }

    pub(crate) fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn client(
    args: &[&str],
    server: SocketAddr,
    ca: &Path,
    state: &Path,
) -> (bool, String, String) {
    client_env(args, server, ca, state, "")
}

pub(crate) fn assert_one_line_error(stderr: &str, contains: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line of error, got {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{stderr:?}");
    assert!(
        lines[0].contains(contains),
        "{stderr:?} should mention {contains:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr:?}");
}

pub(crate) fn client_env(
    args: &[&str],
    server: SocketAddr,
    ca: &Path,
    state: &Path,
    password: &str,
) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--server")
        .arg(server.to_string())
        .arg("--ca-cert")
        .arg(ca)
        .arg("--state")
        .arg(state)
        .env("QPC_PASSWORD", password)
        .env_remove("QPC_AUTH_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A user of the CLI: a profile directory, and the server to talk to.
pub(crate) struct User {
    pub(crate) state: PathBuf,
    pub(crate) password: String,
}

impl User {
    pub(crate) fn new(dir: &Path, name: &str) -> User {
        User {
            state: dir.join(name),
            password: format!("pw-{name}"),
        }
    }

    pub(crate) fn run(
        &self,
        server: SocketAddr,
        ca: &Path,
        args: &[&str],
    ) -> (bool, String, String) {
        client_env(args, server, ca, &self.state, &self.password)
    }

    /// Runs a command that must succeed; returns its stdout.
    pub(crate) fn ok(&self, server: SocketAddr, ca: &Path, args: &[&str]) -> String {
        let (ok, out, err) = self.run(server, ca, args);
        assert!(ok, "{args:?} failed: {err}");
        out
    }

    /// This user's line of `groups` for `group` (epoch, members, suite, check).
    pub(crate) fn group_line(&self, server: SocketAddr, ca: &Path, group: &str) -> String {
        let out = self.ok(server, ca, &["groups"]);
        out.lines()
            .find(|l| l.starts_with(&format!("{group}  ")))
            .unwrap_or_else(|| panic!("no group {group} in {out}"))
            .to_string()
    }

    /// The binary with `args`, this user's profile, and the server's address and
    /// certificate; for commands that run alongside the test (chat, recv to kill).
    pub(crate) fn command(&self, server: SocketAddr, ca: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .arg("--server")
            .arg(server.to_string())
            .arg("--ca-cert")
            .arg(ca)
            .arg("--state")
            .arg(&self.state)
            .env("QPC_PASSWORD", &self.password)
            .env_remove("QPC_AUTH_TOKEN");
        c
    }

    /// `chat --group G` with `lines` on stdin, then Ctrl+D; returns stdout.
    pub(crate) fn chat(
        &self,
        server: SocketAddr,
        ca: &Path,
        group: &str,
        lines: &[String],
    ) -> String {
        let out = self.chat_output(server, ca, group, lines);
        assert!(
            out.status.success(),
            "chat failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `chat --group G` with `lines` on stdin, then Ctrl+D; how it ended.
    pub(crate) fn chat_output(
        &self,
        server: SocketAddr,
        ca: &Path,
        group: &str,
        lines: &[String],
    ) -> std::process::Output {
        let mut child = self
            .command(server, ca, &["chat", "--group", group])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            let mut stdin = child.stdin.take().unwrap();
            for l in lines {
                writeln!(stdin, "{l}").unwrap();
            }
        } // dropping stdin is Ctrl+D
        child.wait_with_output().unwrap()
    }
}

/// Every user sees `group` at the same epoch, with the same members, suite and
/// check (the start of the epoch authenticator): one group, no fork. Every
/// end-to-end group test ends with it.
pub(crate) fn assert_no_fork(server: SocketAddr, ca: &Path, group: &str, users: &[&User]) {
    let lines: Vec<String> = users
        .iter()
        .map(|u| u.group_line(server, ca, group))
        .collect();
    assert!(lines[0].contains("  check "), "{lines:?}");
    assert!(lines.iter().all(|l| *l == lines[0]), "a fork: {lines:?}");
}

/// An MLS commit of `gid` at `epoch` as the node sees one: a PrivateMessage whose
/// clear header it checks (the node reads no further; the tests crate's
/// `mls_commit`, which this crate's tests cannot depend on).
pub(crate) fn mls_commit(gid: &[u8], epoch: u64) -> Vec<u8> {
    let mut out = vec![0, 1, 0, 2]; // mls10, mls_private_message
    out.push(gid.len() as u8); // (short vectors: a 1-byte length)
    out.extend_from_slice(gid);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.push(3); // content type: commit
    out.push(0); // authenticated data: empty
    out.push(32); // encrypted sender data
    out.extend_from_slice(&[0x5a; 32]);
    out.push(0x40); // ciphertext: 64 bytes (2-byte length)
    out.push(64);
    out.extend_from_slice(&[0xa5; 64]);
    out
}

/// A line of `recv` (`YYYY-MM-DD HH:MM:SS  `) or `chat` (`HH:MM:SS `) without
/// its time; other lines as they are.
pub(crate) fn untimed(line: &str) -> &str {
    let b = line.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    if b.len() >= 21 && b[4] == b'-' && b[13] == b':' && &line[19..21] == "  " && digits(0..4) {
        return &line[21..];
    }
    if b.len() >= 9 && b[2] == b':' && b[5] == b':' && b[8] == b' ' && digits(0..2) {
        return &line[9..];
    }
    line
}

/// A server process and alice and bob, registered, in group "g".
pub(crate) struct Pair {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) data: PathBuf,
    pub(crate) ca: PathBuf,
    pub(crate) server: ServerProcess,
    pub(crate) alice: User,
    pub(crate) bob: User,
}

impl Pair {
    pub(crate) fn start() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ca = data.join(quicnprotochat_wire::tls::CERT_FILE);
        let server = ServerProcess::start(&data, &[]);
        let at = server.addr;
        let (alice, bob) = (User::new(dir.path(), "alice"), User::new(dir.path(), "bob"));
        alice.ok(at, &ca, &["register-user", "--username", "alice"]);
        bob.ok(at, &ca, &["register-user", "--username", "bob"]);
        alice.ok(at, &ca, &["create-group", "g"]);
        alice.ok(at, &ca, &["invite", "--group", "g", "bob"]);
        bob.ok(at, &ca, &["join"]);
        Pair {
            dir,
            data,
            ca,
            server,
            alice,
            bob,
        }
    }
}
