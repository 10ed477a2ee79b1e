//! The CLI's one-shot way to run profile commands: a messenger of its own for
//! one [`ProfileCommand`] (`run_locally`), the messengers a read, a resident
//! client or a command opens, and the commands that print as they go (`recv`,
//! `chat`) or need a password (`remove-device`).

use std::io::Write;
use std::time::Duration;

use crate::ClientState;
use crate::actors::session::ConnectionEvent;
use crate::commands::{ClientOptions, CommandError, parse_identity, password_session};
use crate::messenger::{Messenger, MessengerError};
use crate::output;
use crate::profile_command::{ProfileCommand, recv_line};
use crate::shutdown::{FINISHING, Shutdown};
use crate::state::lines::ShownLine;

impl From<MessengerError> for CommandError {
    fn from(e: MessengerError) -> Self {
        match e {
            MessengerError::Client(c) => CommandError::Client(c),
            MessengerError::State(s) => CommandError::State(s),
            other => CommandError::Invalid(other.to_string()),
        }
    }
}

/// How long a one-shot command waits for a lost connection to come back.
const COMMAND_PATIENCE: Duration = Duration::from_secs(5);
/// How long `chat` (and the web UI) keep trying to get a lost connection back.
pub(crate) const LONG_PATIENCE: Duration = Duration::from_secs(24 * 3600);

/// The profile's messenger (its actor tree), connected and resumed.
pub(crate) async fn messenger_with(
    opts: &ClientOptions,
    patience: Duration,
) -> Result<Messenger, CommandError> {
    let state = ClientState::open(&opts.state_dir)?;
    if state.saved_login()?.is_none_or(|l| l.token.is_empty()) {
        return Err(CommandError::NotLoggedIn);
    }
    let address = opts.node_address(patience)?;
    Ok(Messenger::start(state, address).await?)
}

async fn messenger(opts: &ClientOptions) -> Result<Messenger, CommandError> {
    messenger_with(opts, COMMAND_PATIENCE).await
}

/// How long a read waits for the node before it answers from the profile (a
/// QUIC + TLS handshake and a resume take a few round trips: tens of ms to a
/// node across a continent).
pub const READ_CONNECT_WITHIN: Duration = Duration::from_millis(300);
/// How long a resident client's connection attempt may take.
pub const RESIDENT_CONNECT_WITHIN: Duration = Duration::from_secs(2);
/// A resident client's first wait between attempts (doubling up to 30 s).
const RESIDENT_FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// A read tries the node once: its wait after a failure outlasts it.
const READ_NO_RETRY: Duration = Duration::from_secs(3600);

/// The profile's messenger for a read: it starts whether or not the node
/// answers within [`READ_CONNECT_WITHIN`].
async fn reading_messenger(opts: &ClientOptions) -> Result<Messenger, CommandError> {
    started_fail_fast(opts, READ_CONNECT_WITHIN, READ_NO_RETRY).await
}

/// The messenger of a resident client: it starts from the profile whether or
/// not the node answers, and its calls fail fast while the node is away (its
/// follow loop keeps trying, backing off).
pub(crate) async fn resident_messenger(opts: &ClientOptions) -> Result<Messenger, CommandError> {
    started_fail_fast(opts, RESIDENT_CONNECT_WITHIN, RESIDENT_FIRST_BACKOFF).await
}

async fn started_fail_fast(
    opts: &ClientOptions,
    connect_within: Duration,
    first_backoff: Duration,
) -> Result<Messenger, CommandError> {
    let state = ClientState::open(&opts.state_dir)?;
    if state.saved_login()?.is_none_or(|l| l.token.is_empty()) {
        return Err(CommandError::NotLoggedIn);
    }
    let mut address = opts.node_address(Duration::ZERO)?;
    address.connect_within = Some(connect_within);
    address.fail_fast = Some(first_backoff);
    Ok(Messenger::start(state, address).await?)
}

/// `work`, unless a stop is asked first: then `None`, and `work` is dropped
/// where it waits (a connection attempt, a long-poll; what it had stored is
/// in the crash-safe profile).
async fn unless_stopped<T>(shutdown: &Shutdown, work: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        out = work => Some(out),
        () = shutdown.requested() => None,
    }
}

/// `work` to its end; once a stop is asked, for at most [`FINISHING`] more
/// (`None`: cut off, its outcome unknown). For work that must not simply be
/// dropped: a send goes on in its group actor, so a dropped one may still go
/// out.
async fn finish_within<T>(shutdown: &Shutdown, work: impl Future<Output = T>) -> Option<T> {
    let mut work = std::pin::pin!(work);
    tokio::select! {
        out = &mut work => return Some(out),
        () = shutdown.requested() => {}
    }
    tokio::time::timeout(FINISHING, work).await.ok()
}

/// Closes the messenger; after a stop, within [`FINISHING`] (its actors may
/// be waiting on a node that is gone), saying so if it did not finish.
async fn close_messenger(m: Messenger, shutdown: &Shutdown) {
    if !shutdown.is_requested() {
        return m.close().await;
    }
    if tokio::time::timeout(FINISHING, m.close()).await.is_err() {
        eprintln!(
            "stopped before the profile's actors finished (what they stored is kept; the rest comes again from the node)"
        );
    }
}

/// Runs `command` on a messenger of its own, then closes it. A read does not
/// wait for a node that is down: it answers from the profile, and says so on
/// stderr.
pub async fn run_locally(
    opts: &ClientOptions,
    command: ProfileCommand,
) -> Result<String, CommandError> {
    let mut m = match command.only_reads() {
        true => reading_messenger(opts).await?,
        false => match (messenger(opts).await, &command) {
            // The node is down: the message waits in the outbox all the same.
            (Err(CommandError::Client(e)), ProfileCommand::Send { group, message })
                if crate::actors::session::is_connection_loss(&e) =>
            {
                let state = ClientState::open(&opts.state_dir)?;
                Messenger::queue(&state, group, message)?;
                return Err(CommandError::Queued(e.to_string()));
            }
            (m, _) => m?,
        },
    };
    let out = command.run_on(&mut m, opts.json).await;
    m.close().await;
    let answer = out?;
    if let Some(note) = &answer.note {
        eprintln!("note: {note}");
    }
    Ok(answer.text)
}

/// Prints every line not shown yet, marking each shown right after printing it:
/// a crash can repeat at most the line being printed, never lose one.
fn show_unread(
    m: &Messenger,
    format: impl Fn(&ShownLine) -> String,
) -> Result<usize, CommandError> {
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
/// `YYYY-MM-DD HH:MM:SS  [GROUP] SENDER: TEXT` (UTC); with `--wait`, first waits
/// that long for something.
pub async fn recv(
    opts: &ClientOptions,
    wait: Duration,
    shutdown: &Shutdown,
) -> Result<String, CommandError> {
    let Some(m) = unless_stopped(shutdown, messenger(opts)).await else {
        return Ok(String::new());
    };
    let mut m = m?;
    let format = |l: &ShownLine| recv_line(l, opts.json);
    // Lines from earlier runs first (e.g. ones that arrived while sending).
    let mut shown = show_unread(&m, format)?;
    let wait = if shown > 0 { Duration::ZERO } else { wait };
    if let Some(pulled) = unless_stopped(shutdown, m.pull(wait)).await {
        pulled?;
    }
    shown += show_unread(&m, format)?;
    close_messenger(m, shutdown).await;
    Ok(if shown == 0 && !opts.json && !shutdown.is_requested() {
        "no new messages".into()
    } else {
        String::new()
    })
}

/// `remove-device ID`: removes another device of this account (the account
/// password again: a fresh OPAQUE login), ending its sessions at the node, then
/// removes it from every group this device shares with it.
pub async fn remove_device(
    opts: &ClientOptions,
    device_hex: &str,
    password: &str,
) -> Result<String, CommandError> {
    let device = parse_identity(device_hex)?;
    {
        let (conn, session) = password_session(opts, password).await?;
        session.remove_device(&device).await?;
        conn.close().await;
    }
    let mut m = messenger(opts).await?;
    let groups = m.remove_device_from_groups(device.0).await?;
    m.close().await;
    let mut out = format!("removed device {}", device.to_hex());
    if !groups.is_empty() {
        out.push_str(&format!("; removed it from {}", groups.join(", ")));
    }
    Ok(out)
}

/// `chat --group NAME`: stdin lines are sent; incoming messages appear as
/// `HH:MM:SS [SENDER] TEXT` (other groups' as `HH:MM:SS [GROUP] SENDER: TEXT`) as the receiver,
/// following the inbox, applies them; Ctrl+D (or SIGINT/SIGTERM) ends it. A lost
/// connection is re-established by the session actor, with backoff; a line typed
/// meanwhile is sent once it is back. At the end, what is typed and unsent is sent
/// if the connection allows (after a signal, within [`FINISHING`]), and counted if
/// not.
pub async fn chat(
    opts: &ClientOptions,
    group: &str,
    shutdown: &Shutdown,
) -> Result<String, CommandError> {
    use tokio::io::AsyncBufReadExt;
    let start = async {
        let m = messenger_with(opts, LONG_PATIENCE).await?;
        m.group(group).await?; // an unknown group is an error before anything else
        let arrivals = m.follow().await?;
        Ok::<_, CommandError>((m, arrivals))
    };
    let Some(started) = unless_stopped(shutdown, start).await else {
        return Ok(String::new());
    };
    let (mut m, mut arrivals) = started?;
    let format = |l: &ShownLine| match opts.json {
        true => output::line_json(l),
        false => output::chat_text(l, group),
    };
    show_unread(&m, format)?;
    let mut events = m.connection_events();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    // Lines typed but not yet delivered (the connection was down), oldest first.
    let mut unsent: std::collections::VecDeque<String> = Default::default();
    // A line whose send was cut off by a stop: it may have gone out.
    let mut in_doubt = false;
    'chat: loop {
        while let Some(text) = unsent.front() {
            let Some(sent) = finish_within(shutdown, m.send(group, text)).await else {
                unsent.pop_front();
                in_doubt = true;
                break 'chat;
            };
            match sent {
                Ok(_) => {
                    unsent.pop_front();
                }
                Err(e) if Messenger::is_connection_loss(&e) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Sending caught up on the inbox: show what came.
        show_unread(&m, format)?;
        let step: Result<(), MessengerError> = tokio::select! {
            () = shutdown.requested() => break 'chat,
            line = stdin.next_line() => {
                match line.map_err(|e| CommandError::Invalid(format!("cannot read stdin: {e}")))? {
                    None => break 'chat,
                    Some(text) if text.trim().is_empty() => Ok(()),
                    Some(text) => {
                        // A line that cannot be a message is reported, and chat
                        // goes on with the next one.
                        match crate::core::check_message_text(&text) {
                            Ok(()) => unsent.push_back(text),
                            Err(refusal) => eprintln!("error: {refusal}"),
                        }
                        Ok(())
                    }
                }
            }
            arrived = arrivals.recv() => match arrived {
                // Something was applied: settle what a full pull settles.
                // (A stop drops it: pulling again later loses nothing.)
                Some(Ok(())) => unless_stopped(shutdown, m.pull(Duration::ZERO))
                    .await
                    .map_or(Ok(()), |pulled| pulled.map(|_| ())),
                Some(Err(e)) => Err(e),
                // The receiver restarted: follow the new one.
                None => match unless_stopped(shutdown, m.follow()).await {
                    Some(followed) => {
                        arrivals = followed?;
                        Ok(())
                    }
                    None => break 'chat,
                },
            },
            event = events.recv() => {
                match event {
                    Ok(ConnectionEvent::Lost) => eprintln!("connection to {} lost", opts.server),
                    Ok(ConnectionEvent::Retrying { delay }) => eprintln!(
                        "cannot reach {}; retrying in {} ms",
                        opts.server,
                        delay.as_millis()
                    ),
                    Ok(ConnectionEvent::Reconnected) => eprintln!("reconnected to {}", opts.server),
                    Err(_) => {} // lagged: later events still come
                }
                Ok(())
            }
        };
        match step {
            Ok(()) => {}
            // The next request waits for the session actor to reconnect.
            Err(e) if Messenger::is_connection_loss(&e) => {}
            Err(e) => return Err(e.into()),
        }
        show_unread(&m, format)?;
    }
    // What is typed is sent before leaving, if the connection allows; after a
    // signal, within one finishing step (unless a send already took it).
    if !in_doubt {
        let flush = async {
            while let Some(text) = unsent.front() {
                match m.send(group, text).await {
                    Ok(_) => {
                        unsent.pop_front();
                    }
                    Err(e) if Messenger::is_connection_loss(&e) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        };
        let flushed = match shutdown.is_requested() {
            true => tokio::time::timeout(FINISHING, flush).await.ok(),
            false => Some(flush.await),
        };
        match flushed {
            Some(flushed) => flushed?,
            // Cut off in the middle of the first line's send.
            None => in_doubt = unsent.pop_front().is_some(),
        }
    }
    show_unread(&m, format)?;
    if in_doubt {
        eprintln!("1 line typed may or may not have been sent (the node did not answer in time)");
    }
    if !unsent.is_empty() {
        eprintln!(
            "{} line(s) typed were not sent (the node did not take them)",
            unsent.len()
        );
    }
    close_messenger(m, shutdown).await;
    Ok(String::new())
}
