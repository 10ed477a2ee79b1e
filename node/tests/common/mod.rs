//! What the binary tests share: a server child process and a client runner.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
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

    /// Starts a server on a given address (e.g. the one a killed server had).
    pub(crate) fn start_at(data_dir: &Path, listen: &str, extra: &[&str]) -> ServerProcess {
        let mut child = Command::new(BIN)
            .args(["server", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
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
        ServerProcess { child, addr }
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
