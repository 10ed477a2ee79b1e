//! `quicnprotochat web`: the binary serving two profiles' UIs against a server
//! process. A scripted conversation between them in headless Chromium
//! (`web-tests/conversation.mjs`), and every refusal of the HTTP API over a
//! plain socket.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{ServerProcess, User, assert_one_line_error};
use quicnprotochat_wire::tls;

/// A `web` child process; killed on drop.
struct WebProcess {
    child: Child,
    url: String,
    addr: SocketAddr,
    token: String,
}

impl WebProcess {
    fn start(user: &User, server: SocketAddr, ca: &Path) -> WebProcess {
        let mut child = user
            .command(server, ca, &["web"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("web starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .strip_prefix("web UI at ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .trim()
            .to_string();
        let (origin, token) = url.split_once("/#token=").expect("a token in the fragment");
        WebProcess {
            child,
            addr: origin.strip_prefix("http://").unwrap().parse().unwrap(),
            token: token.to_string(),
            url,
        }
    }

    /// One request with the token; returns (status, body).
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let auth = format!("Authorization: Bearer {}\r\n", self.token);
        let (status, _, body) = raw(self.addr, method, path, &self.addr.to_string(), &auth, body);
        (status, body)
    }
}

impl Drop for WebProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 request over a fresh socket; returns (status, status line and
/// headers, body).
fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    extra_headers: &str,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let body = body.unwrap_or("");
    let content = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/json\r\n".to_string()
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra_headers}{content}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

fn code_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{body}"));
    v["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_string()
}

/// Where the browser test lives, and whether it can run here.
fn browser_test() -> Option<(PathBuf, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web-tests");
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    let ready = chromium.exists() && dir.join("node_modules/playwright-core").exists();
    if ready {
        return Some((dir, chromium));
    }
    let why = "needs Chromium and web-tests/node_modules: run scripts/install-web-test-deps.sh";
    assert!(
        std::env::var_os("QPC_REQUIRE_CHROMIUM").is_none(),
        "QPC_REQUIRE_CHROMIUM is set but the browser test {why}"
    );
    eprintln!("skipped: the browser test {why}");
    None
}

#[test]
fn two_profiles_hold_a_conversation_through_the_web_ui_in_chromium() {
    let Some((dir, chromium)) = browser_test() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = ServerProcess::start(&data, &[]);
    let ca = data.join(tls::CERT_FILE);
    let alice = WebProcess::start(&User::new(tmp.path(), "alice"), server.addr, &ca);
    let bob = WebProcess::start(&User::new(tmp.path(), "bob"), server.addr, &ca);
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-ui.png");
    let mut script = Command::new("node")
        .arg(dir.join("conversation.mjs"))
        .args([&alice.url, &bob.url])
        .arg(&screenshot)
        .env("CHROMIUM", chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    // The script asks for the node to go away, to see the page say so.
    let mut said = String::new();
    let mut stdin = Some(script.stdin.take().unwrap());
    for line in BufReader::new(script.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line == "STOP_NODE" {
            let _ = server.child.kill();
            let _ = server.child.wait();
            // Answered, and closed: the script has nothing more to read.
            if let Some(mut stdin) = stdin.take() {
                let _ = writeln!(stdin, "stopped");
            }
        }
        said.push_str(&line);
        said.push('\n');
    }
    let out = script.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the browser conversation failed:\n{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(screenshot.exists());
    // What the browser did is in the profiles: the history holds both sides.
    let (status, body) = alice.call("GET", "/api/groups/team/messages", None);
    assert_eq!(status, 200, "{body}");
    let history: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let texts: Vec<&str> = history
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert!(texts.contains(&"hi alice!"), "{texts:?}");
    assert!(texts.contains(&"hello bob, this is alice"), "{texts:?}");
}

#[test]
fn the_cli_and_the_web_ui_share_one_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let ca = data.join(tls::CERT_FILE);
    let at = server.addr;
    let (alice, bob) = (User::new(tmp.path(), "alice"), User::new(tmp.path(), "bob"));
    alice.ok(at, &ca, &["register-user", "--username", "alice"]);
    bob.ok(at, &ca, &["register-user", "--username", "bob"]);
    alice.ok(at, &ca, &["create-group", "g"]);
    alice.ok(at, &ca, &["invite", "--group", "g", "bob"]);
    bob.ok(at, &ca, &["join"]);
    // `web` owns bob's profile; his CLI goes through it.
    let web = WebProcess::start(&bob, at, &ca);
    bob.ok(at, &ca, &["send", "--group", "g", "from the cli"]);
    let (status, body) = web.call("GET", "/api/groups/g/messages", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("from the cli"), "{body}");
    alice.ok(at, &ca, &["send", "--group", "g", "to bob"]);
    let history = bob.ok(at, &ca, &["history", "--group", "g"]);
    assert!(history.contains("alice: to bob"), "{history}");
}

#[test]
fn the_api_refuses_calls_without_the_token_from_other_hosts_and_bad_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let ca = data.join(tls::CERT_FILE);
    let web = WebProcess::start(&User::new(tmp.path(), "carol"), server.addr, &ca);
    let host = web.addr.to_string();

    // The page itself needs no token (it holds no secret) and forbids framing
    // and foreign scripts.
    let (status, head, page) = raw(web.addr, "GET", "/", &host, "", None);
    assert_eq!(status, 200, "{head}");
    assert!(page.contains("quicnprotochat"));
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: deny"), "{head}");

    // No token, a wrong one, or the token in a query other than the event
    // stream's: unauthorized.
    let (status, _, body) = raw(web.addr, "GET", "/api/status", &host, "", None);
    assert_eq!((status, code_of(&body).as_str()), (401, "unauthorized"));
    let wrong = format!("Authorization: Bearer {}\r\n", "0".repeat(64));
    let (status, _, body) = raw(web.addr, "GET", "/api/status", &host, &wrong, None);
    assert_eq!((status, code_of(&body).as_str()), (401, "unauthorized"));
    let in_query = format!("/api/status?token={}", web.token);
    let (status, _, _) = raw(web.addr, "GET", &in_query, &host, "", None);
    assert_eq!(status, 401);

    // A page on another name (DNS rebinding) is turned away, token or not.
    let auth = format!("Authorization: Bearer {}\r\n", web.token);
    let (status, _, body) = raw(
        web.addr,
        "GET",
        "/api/status",
        "evil.example:80",
        &auth,
        None,
    );
    assert_eq!((status, code_of(&body).as_str()), (403, "bad_host"));

    // With the token: the profile, not logged in yet; what needs a login says so.
    let (status, body) = web.call("GET", "/api/status", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"logged_in\":false"), "{body}");
    let (status, body) = web.call("GET", "/api/groups", None);
    assert_eq!((status, code_of(&body).as_str()), (409, "not_logged_in"));

    // Bad requests: typed, and nothing changes.
    let (status, body) = web.call("POST", "/api/register", Some("not json"));
    assert_eq!((status, code_of(&body).as_str()), (400, "invalid"));
    let empty_password = r#"{"username":"carol","password":""}"#;
    let (status, body) = web.call("POST", "/api/register", Some(empty_password));
    assert_eq!((status, code_of(&body).as_str()), (400, "invalid"));
    assert!(body.contains("empty password"), "{body}");
    let no_name = r#"{"username":" ","password":"pw"}"#;
    let (status, body) = web.call("POST", "/api/register", Some(no_name));
    assert_eq!((status, code_of(&body).as_str()), (400, "invalid"));
    assert!(body.contains("empty username"), "{body}");
    let (_, body) = web.call("GET", "/api/status", None);
    assert!(body.contains("\"logged_in\":false"), "{body}");

    // Registered: a group, then refusals about it.
    let carol = r#"{"username":"carol","password":"carol's password"}"#;
    let (status, body) = web.call("POST", "/api/register", Some(carol));
    assert_eq!(status, 200, "{body}");
    let (status, body) = web.call("POST", "/api/groups", Some(r#"{"name":"g"}"#));
    assert_eq!(status, 200, "{body}");
    let (status, body) = web.call("POST", "/api/groups", Some(r#"{"name":"  "}"#));
    assert_eq!((status, code_of(&body).as_str()), (400, "invalid"));
    let (status, body) = web.call("POST", "/api/groups/g/invite", Some(r#"{"usernames":[]}"#));
    assert_eq!((status, code_of(&body).as_str()), (400, "invalid"));
    let (status, body) = web.call("POST", "/api/groups/g/messages", Some(r#"{"text":""}"#));
    assert_eq!((status, code_of(&body).as_str()), (400, "invalid"));
    let (status, body) = web.call("POST", "/api/groups/nope/messages", Some(r#"{"text":"x"}"#));
    assert_eq!((status, code_of(&body).as_str()), (404, "unknown_group"));
    let (status, body) = web.call(
        "POST",
        "/api/groups/g/invite",
        Some(r#"{"usernames":["nobody"]}"#),
    );
    assert!(status >= 400, "{status} {body}");
    let (status, body) = web.call(
        "POST",
        "/api/login",
        Some(r#"{"username":"carol","password":"wrong"}"#),
    );
    assert_eq!(
        (status, code_of(&body).as_str()),
        (422, "refused"),
        "{body}"
    );
    let too_big = format!(r#"{{"text":"{}"}}"#, "x".repeat(300 * 1024));
    let (status, body) = web.call("POST", "/api/groups/g/messages", Some(&too_big));
    assert_eq!((status, code_of(&body).as_str()), (413, "too_large"));
    let long = format!(r#"{{"text":"{}"}}"#, "x".repeat(65 * 1024));
    let (status, body) = web.call("POST", "/api/groups/g/messages", Some(&long));
    assert_eq!(
        (status, code_of(&body).as_str()),
        (400, "invalid"),
        "{body}"
    );
    // The refusals lost nothing: the group and the login are still there.
    let (status, body) = web.call("GET", "/api/groups", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"name\":\"g\""), "{body}");
}

#[test]
fn the_web_ui_listens_on_loopback_addresses_only() {
    let tmp = tempfile::tempdir().unwrap();
    let user = User::new(tmp.path(), "dave");
    let out = user
        .command(
            "127.0.0.1:9".parse().unwrap(),
            &tmp.path().join("none.der"),
            &["web", "--listen", "0.0.0.0:0"],
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_one_line_error(&String::from_utf8_lossy(&out.stderr), "loopback");
}
