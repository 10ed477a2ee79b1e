//! The group commands of the CLI: each opens the profile's messenger on a fresh
//! connection, does one thing, and says what happened in one line (or, for `recv`
//! and `chat`, one line per message).

use std::io::Write;
use std::time::Duration;

use quicnprotochat_crypto::mls::Suite;

use crate::client::commands::{
    ClientOptions, CommandError, LoggedInProfile, logged_in, open_session,
};
use crate::client::messenger::{Messenger, MessengerError};
use crate::client::rpc::NodeConnection;

impl From<MessengerError> for CommandError {
    fn from(e: MessengerError) -> Self {
        match e {
            MessengerError::Client(c) => CommandError::Client(c),
            MessengerError::State(s) => CommandError::State(s),
            other => CommandError::Invalid(other.to_string()),
        }
    }
}

/// The profile's messenger, logged in, on a fresh connection (kept alive beside
/// it: dropping the connection ends the session).
async fn messenger(opts: &ClientOptions) -> Result<(Messenger, NodeConnection), CommandError> {
    let LoggedInProfile {
        state,
        conn,
        session,
        login,
        ..
    } = logged_in(opts).await?;
    let m = Messenger::open(state, session, conn.key_directory(), &login.username)?;
    Ok((m, conn))
}

/// `create-group NAME [--pq]`.
pub async fn create_group(
    opts: &ClientOptions,
    name: &str,
    post_quantum: bool,
) -> Result<String, CommandError> {
    let (mut m, conn) = messenger(opts).await?;
    let suite = if post_quantum {
        Suite::PostQuantum
    } else {
        Suite::Classic
    };
    m.create_group(name, suite)?;
    conn.close().await;
    Ok(format!("created group {name} ({suite:?} ciphersuite)"))
}

/// `invite --group NAME USERNAME...`.
pub async fn invite(
    opts: &ClientOptions,
    group: &str,
    users: &[String],
) -> Result<String, CommandError> {
    let (mut m, conn) = messenger(opts).await?;
    let epoch = m.invite(group, users).await?;
    conn.close().await;
    Ok(format!(
        "invited {} to {group}; the group is at epoch {epoch}",
        users.join(", ")
    ))
}

/// `join`: applies pending Welcomes (and everything else waiting) and names the
/// groups joined; other lines stay for `recv`.
pub async fn join(opts: &ClientOptions) -> Result<String, CommandError> {
    let (mut m, conn) = messenger(opts).await?;
    m.pull(Duration::ZERO).await?;
    let joined: Vec<_> = m
        .unread()?
        .into_iter()
        .filter(|(_, l)| l.contains("* joined, invited by"))
        .collect();
    let keys: Vec<_> = joined.iter().map(|(k, _)| *k).collect();
    m.mark_shown(&keys)?;
    conn.close().await;
    if joined.is_empty() {
        return Ok("no pending invitations".into());
    }
    Ok(joined
        .into_iter()
        .map(|(_, l)| l)
        .collect::<Vec<_>>()
        .join("\n"))
}

/// `send --group NAME MESSAGE...`.
pub async fn send(opts: &ClientOptions, group: &str, text: &str) -> Result<String, CommandError> {
    let (mut m, conn) = messenger(opts).await?;
    let seqs = m.send(group, text).await?;
    conn.close().await;
    Ok(format!(
        "sent to {} member device(s) of {group}",
        seqs.len()
    ))
}

/// Prints every line not shown yet, marking each shown right after printing it:
/// a crash can repeat at most the line being printed, never lose one.
fn show_unread(m: &Messenger, format: impl Fn(&str) -> String) -> Result<usize, CommandError> {
    let mut out = std::io::stdout().lock();
    let unread = m.unread()?;
    for (key, line) in &unread {
        writeln!(out, "{}", format(line))
            .and_then(|_| out.flush())
            .map_err(|e| CommandError::Invalid(format!("cannot write to stdout: {e}")))?;
        m.mark_shown(&[*key])?;
    }
    Ok(unread.len())
}

/// `recv [--wait SECS]`: applies the inbox and prints each message as
/// `[GROUP] SENDER: TEXT`; with `--wait`, first waits that long for something.
pub async fn recv(opts: &ClientOptions, wait: Duration) -> Result<String, CommandError> {
    let (mut m, conn) = messenger(opts).await?;
    // Lines from earlier runs first (e.g. ones that arrived while sending).
    let mut shown = show_unread(&m, str::to_string)?;
    m.pull(if shown > 0 { Duration::ZERO } else { wait })
        .await?;
    shown += show_unread(&m, str::to_string)?;
    conn.close().await;
    Ok(if shown == 0 {
        "no new messages".into()
    } else {
        String::new()
    })
}

/// `remove --group NAME USERNAME`.
pub async fn remove(opts: &ClientOptions, group: &str, user: &str) -> Result<String, CommandError> {
    let (mut m, conn) = messenger(opts).await?;
    let epoch = m.remove(group, &[user.to_string()]).await?;
    conn.close().await;
    Ok(format!(
        "removed {user} from {group}; the group is at epoch {epoch}"
    ))
}

/// `leave --group NAME`.
pub async fn leave(opts: &ClientOptions, group: &str) -> Result<String, CommandError> {
    let (mut m, conn) = messenger(opts).await?;
    m.leave(group).await?;
    conn.close().await;
    Ok(format!(
        "left {group}; a remaining member's client removes this device"
    ))
}

/// `update --group NAME`.
pub async fn update(opts: &ClientOptions, group: &str) -> Result<String, CommandError> {
    let (mut m, conn) = messenger(opts).await?;
    let epoch = m.update(group).await?;
    conn.close().await;
    Ok(format!(
        "refreshed this device's keys in {group}; the group is at epoch {epoch}"
    ))
}

/// `groups`: one line per group with epoch and member count.
pub async fn groups(opts: &ClientOptions) -> Result<String, CommandError> {
    let (mut m, conn) = messenger(opts).await?;
    m.pull(Duration::ZERO).await?;
    let groups = m.groups()?;
    conn.close().await;
    if groups.is_empty() {
        return Ok("no groups".into());
    }
    Ok(groups
        .iter()
        .map(|g| {
            format!(
                "{}  epoch {}  {} member(s)  {:?}",
                g.name,
                g.epoch,
                g.members.len(),
                g.suite.unwrap_or(Suite::Classic)
            )
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// `members --group NAME`.
pub async fn members(opts: &ClientOptions, group: &str) -> Result<String, CommandError> {
    let (mut m, conn) = messenger(opts).await?;
    m.pull(Duration::ZERO).await?;
    let g = m.group(group)?;
    conn.close().await;
    Ok(g.members.join("\n"))
}

/// `chat --group NAME`: stdin lines are sent; incoming messages appear as
/// `[SENDER] TEXT` (other groups' as `[GROUP] SENDER: TEXT`); Ctrl+D ends it. A
/// lost connection is re-established with backoff, and a line typed meanwhile is
/// sent once it is back.
pub async fn chat(opts: &ClientOptions, group: &str) -> Result<String, CommandError> {
    use tokio::io::AsyncBufReadExt;
    let (mut m, mut conn) = messenger(opts).await?;
    m.group(group)?; // an unknown group is an error before anything else
    let prefix = format!("[{group}] ");
    let format = |line: &str| match line.strip_prefix(&prefix) {
        Some(rest) if !rest.starts_with("* ") => match rest.split_once(": ") {
            Some((sender, text)) => format!("[{sender}] {text}"),
            None => line.to_string(),
        },
        _ => line.to_string(),
    };
    show_unread(&m, format)?;
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        // What this turn did, and a typed line it could not send.
        let step: Result<(), (MessengerError, Option<String>)> = tokio::select! {
            line = stdin.next_line() => {
                match line.map_err(|e| CommandError::Invalid(format!("cannot read stdin: {e}")))? {
                    None => break,
                    Some(text) if text.trim().is_empty() => Ok(()),
                    Some(text) => match m.send(group, &text).await {
                        Ok(_) => Ok(()),
                        Err(e) => Err((e, Some(text))),
                    },
                }
            }
            pulled = m.pull(Duration::from_secs(10)) => pulled.map(|_| ()).map_err(|e| (e, None)),
        };
        match step {
            Ok(()) => {}
            Err((e, unsent)) if Messenger::is_connection_loss(&e) => {
                conn = reconnect(opts, &mut m).await?;
                if let Some(text) = unsent {
                    m.send(group, &text).await?;
                }
            }
            Err((e, _)) => return Err(e.into()),
        }
        show_unread(&m, format)?;
    }
    conn.close().await;
    Ok(String::new())
}

/// Connects and resumes the profile's session again, waiting longer after each
/// failed try (up to 30 s); gives up only on a refusal (e.g. the session ended).
async fn reconnect(
    opts: &ClientOptions,
    m: &mut Messenger,
) -> Result<NodeConnection, CommandError> {
    let mut delay = Duration::from_millis(250);
    loop {
        eprintln!(
            "connection to {} lost; reconnecting in {} ms",
            opts.server,
            delay.as_millis()
        );
        tokio::time::sleep(delay).await;
        let attempt = async {
            let identity = m.state().identity()?;
            let conn = opts.connect().await?;
            let (session, _) = open_session(opts, &conn, m.state(), &identity).await?;
            Ok::<_, CommandError>((conn, session))
        };
        match attempt.await {
            Ok((conn, session)) => {
                m.reconnected(session, conn.key_directory());
                eprintln!("reconnected to {}", opts.server);
                return Ok(conn);
            }
            Err(CommandError::Client(
                crate::client::ClientError::Transport(_)
                | crate::client::ClientError::Unreachable { .. },
            )) => delay = (delay * 2).min(Duration::from_secs(30)),
            Err(e) => return Err(e),
        }
    }
}
