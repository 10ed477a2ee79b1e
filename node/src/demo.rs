//! The demos: `demo` runs the whole system in one process (an embedded node on a
//! free port with temporary data, three clients talking through it over QUIC);
//! `demo-group` runs a two-party conversation against a node given by `--server`.
//! Both print what happens, with inbox seqs and group epochs, and check at the end
//! that every member holds the same group state.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use quicnprotochat_crypto::mls::Suite;

use crate::config::ServerConfig;
use crate::server::Server;
use quicnprotochat_client::actors::NodeAddress;
use quicnprotochat_client::commands::{ClientOptions, CommandError, enroll};
use quicnprotochat_client::messenger::{Line, Messenger};
use quicnprotochat_client::{ClientState, NodeConnection};
use quicnprotochat_wire::tls;

/// One demo participant: a profile in a temporary directory, logged in.
struct Participant {
    name: String,
    m: Messenger,
    /// Every line this participant has read.
    seen: Vec<Line>,
    _dir: tempfile::TempDir,
}

fn failed(what: &str, e: impl std::fmt::Display) -> CommandError {
    CommandError::Invalid(format!("demo: {what}: {e}"))
}

impl Participant {
    async fn register(
        addr: SocketAddr,
        cert: &Path,
        name: &str,
        auth_token: Option<&str>,
    ) -> Result<Participant, CommandError> {
        let dir = tempfile::tempdir().map_err(|e| failed("temporary directory", e))?;
        let state = ClientState::open(dir.path())?;
        let pinned = tls::read_pinned_cert(cert).map_err(|e| CommandError::CaCert {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
        let conn = NodeConnection::connect(addr, pinned.clone()).await?;
        let password = hex::encode(rand_bytes());
        enroll(&state, &conn, name, &password, auth_token).await?;
        conn.close().await;
        // From here on the participant is its client actor tree, on a connection
        // of its own that resumes the session enrolment remembered.
        let m = Messenger::start(
            state,
            NodeAddress {
                addr,
                trust: pinned.into(),
                auth_token: auth_token.map(str::to_string),
                reconnect_patience: Duration::from_secs(5),
                endpoint: None,
                connect_within: None,
                fail_fast: None,
            },
        )
        .await?;
        println!("{name:<8} registered (OPAQUE), published KeyPackages and an X-Wing key");
        Ok(Participant {
            name: name.to_string(),
            m,
            seen: Vec::new(),
            _dir: dir,
        })
    }

    /// Applies the inbox and prints what arrived, with seqs and epochs; returns
    /// how many lines arrived.
    async fn catch_up(&mut self) -> Result<usize, CommandError> {
        let lines = self.m.pull(Duration::ZERO).await?;
        let keys: Vec<_> = self.m.unread()?.into_iter().map(|(k, _)| k).collect();
        self.m.mark_shown(&keys)?;
        for l in &lines {
            let epoch = l.epoch.map_or("-".to_string(), |e| e.to_string());
            println!(
                "{:<8} reads seq {:>2} (epoch {epoch}): {}",
                self.name,
                l.seq,
                l.display()
            );
        }
        let n = lines.len();
        self.seen.extend(lines);
        Ok(n)
    }

    /// Catches up; returns everything this participant has read so far.
    async fn read(&mut self) -> Result<&[Line], CommandError> {
        if self.catch_up().await? == 0 {
            println!("{:<8} reads: nothing new", self.name);
        }
        Ok(&self.seen)
    }

    async fn say(&mut self, group: &str, text: &str) -> Result<(), CommandError> {
        // Catch up first, so what arrived meanwhile is shown in order.
        self.catch_up().await?;
        let report = self.m.send(group, text).await?;
        println!(
            "{:<8} says {text:?} (uploaded once for {} device(s), stored at seqs {:?})",
            self.name,
            report.seqs.len(),
            report.seqs
        );
        Ok(())
    }
}

/// Fresh random bytes (passwords and names of throwaway accounts).
fn rand_bytes() -> [u8; 32] {
    quicnprotochat_crypto::fresh_nonce()
}

/// Checks that everyone in `group` holds the same epoch and authenticator.
async fn check_agreement(people: &[&Participant], group: &str) -> Result<String, CommandError> {
    let mut views = Vec::new();
    for p in people {
        views.push(p.m.group(group).await?);
    }
    for (p, v) in people.iter().zip(&views) {
        if v.epoch != views[0].epoch || v.epoch_authenticator != views[0].epoch_authenticator {
            return Err(failed(
                "members disagree",
                format!(
                    "{} is at epoch {} ({}), {} at epoch {} ({})",
                    p.name,
                    v.epoch,
                    hex::encode(&v.epoch_authenticator[..8]),
                    people[0].name,
                    views[0].epoch,
                    hex::encode(&views[0].epoch_authenticator[..8])
                ),
            ));
        }
    }
    Ok(format!(
        "{} agree: epoch {}, epoch authenticator {}…, members {}",
        people
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(" and "),
        views[0].epoch,
        hex::encode(&views[0].epoch_authenticator[..8]),
        views[0].members.join(", ")
    ))
}

fn expect(lines: &[Line], what: &str, who: &str) -> Result<(), CommandError> {
    if lines.iter().any(|l| l.display().contains(what)) {
        Ok(())
    } else {
        Err(failed(
            "missing delivery",
            format!("{who} never saw {what:?}"),
        ))
    }
}

/// `demo`: the embedded node and three clients.
pub async fn demo() -> Result<String, CommandError> {
    let data = tempfile::tempdir().map_err(|e| failed("temporary directory", e))?;
    let server = Server::bind(ServerConfig::ephemeral(data.path()))
        .await
        .map_err(|e| failed("starting the node", e))?;
    let addr = server.local_addr();
    println!("node     listening on {addr} (QUIC + TLS 1.3, data in a temporary directory)");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let cert = data.path().join(tls::CERT_FILE);
    let outcome = three_party(addr, &cert).await;
    let _ = stop.send(());
    let _ = node.await;
    outcome
}

async fn three_party(addr: SocketAddr, cert: &Path) -> Result<String, CommandError> {
    let g = "demo";
    let mut alice = Participant::register(addr, cert, "alice", None).await?;
    let mut bob = Participant::register(addr, cert, "bob", None).await?;
    let mut carol = Participant::register(addr, cert, "carol", None).await?;

    alice.m.create_group(g, Suite::PostQuantum).await?;
    println!("alice    creates group {g:?} (epoch 0)");
    let epoch = alice
        .m
        .invite(g, &["bob".to_string(), "carol".to_string()])
        .await?;
    println!("alice    invites bob and carol: one commit, two Welcomes (now epoch {epoch})");
    expect(bob.read().await?, "joined", "bob")?;
    expect(carol.read().await?, "joined", "carol")?;

    alice
        .say(g, "Hello both: MLS, with X-Wing in its key schedule.")
        .await?;
    bob.say(g, "Hi alice, hi carol!").await?;
    carol.say(g, "Hello from carol.").await?;
    expect(alice.read().await?, "carol: Hello from carol.", "alice")?;
    expect(bob.read().await?, "alice: Hello both", "bob")?;
    expect(carol.read().await?, "bob: Hi alice", "carol")?;

    let epoch = alice.m.remove(g, &["carol".to_string()]).await?;
    println!("alice    removes carol (now epoch {epoch})");
    expect(bob.read().await?, "removed carol", "bob")?;
    expect(carol.read().await?, "you were removed", "carol")?;

    let epoch = bob.m.update(g).await?;
    println!("bob      refreshes his keys (self-update, now epoch {epoch})");
    expect(alice.read().await?, "bob updated their keys", "alice")?;

    alice.say(g, "Just the two of us now.").await?;
    expect(bob.read().await?, "alice: Just the two of us now.", "bob")?;
    let before = carol.seen.len();
    let carol_after = &carol.read().await?[before..];
    if carol_after.iter().any(|l| l.sender.is_some()) {
        return Err(failed(
            "removal",
            "carol still read a message after removal",
        ));
    }
    println!("carol    cannot read anything sent after her removal");
    let agreement = check_agreement(&[&alice, &bob], g).await?;
    Ok(format!("{agreement}\ndemo finished: every check passed"))
}

/// `demo-group`: two throwaway users against the node at `--server`.
pub async fn demo_group(opts: &ClientOptions) -> Result<String, CommandError> {
    use std::net::ToSocketAddrs;
    let addr = opts
        .server
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| CommandError::BadServer(opts.server.clone()))?;
    let tag = hex::encode(&rand_bytes()[..3]);
    let (a, b) = (format!("demo-a-{tag}"), format!("demo-b-{tag}"));
    let token = opts.auth_token.as_deref();
    let mut alice = Participant::register(addr, &opts.ca_cert, &a, token).await?;
    let mut bob = Participant::register(addr, &opts.ca_cert, &b, token).await?;
    let g = format!("demo-{tag}");
    alice.m.create_group(&g, Suite::PostQuantum).await?;
    let epoch = alice.m.invite(&g, std::slice::from_ref(&b)).await?;
    println!("{a} creates {g} and invites {b} (epoch {epoch})");
    expect(bob.read().await?, "joined", &b)?;
    alice.say(&g, "ping").await?;
    expect(bob.read().await?, "ping", &b)?;
    bob.say(&g, "pong").await?;
    expect(alice.read().await?, "pong", &a)?;
    check_agreement(&[&alice, &bob], &g).await
}
