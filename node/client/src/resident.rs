//! The resident client: one local task that owns the profile's messenger (the
//! client's actor tree, which lives on a `LocalSet`) and takes calls one at a
//! time, as the CLI's `chat` loop does: the web UI's handlers and the daemon's
//! socket (`crate::daemon`) share it. Between calls it follows the inbox and
//! tells its listeners what changed.
//!
//! A line (message or notice) counts as shown once it was told to a listener
//! (a page's event stream, a socket subscriber); with nobody listening it stays
//! unread for the next `recv`.

use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::ClientState;
use crate::actors::session::ConnectionEvent;
use crate::commands::{self, ClientOptions, CommandError};
use crate::group_commands::resident_messenger;
use crate::messenger::Messenger;
use crate::profile_command::{Answer, ProfileCommand};
use crate::state::lines::ShownLine;
use crate::web::views::{GroupView, MessageView, SentView, StatusView, WebError};

/// Calls waiting for the agent; a handler waits for room beyond this.
const CALL_QUEUE: usize = 64;
/// Events kept for a page that reads slowly; one that falls further behind
/// reloads everything (it is told it lagged).
const EVENT_BUFFER: usize = 64;
/// The most messages one history call returns.
pub use crate::profile_command::MAX_HISTORY_LIMIT;

type Reply<T> = oneshot::Sender<Result<T, WebError>>;

/// How often a resident client checks that it has KeyPackages left at the node.
const KEY_PACKAGE_CHECK: Duration = Duration::from_secs(15 * 60);

/// What a login or registration did.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The profile's state after it.
    pub status: StatusView,
    /// What the CLI's `login` or `register-user` prints.
    pub message: String,
}

/// What a handler asks of the agent.
pub enum Call {
    /// The profile's state.
    Status(Reply<StatusView>),
    /// Create the account with this profile's identity, then log in.
    Register {
        /// The account's name.
        username: String,
        /// Its password.
        password: String,
        /// The answer.
        reply: Reply<SignedIn>,
    },
    /// Log this profile's device in.
    Login {
        /// The account's name.
        username: String,
        /// Its password.
        password: String,
        /// The answer.
        reply: Reply<SignedIn>,
    },
    /// Every group.
    Groups(Reply<Vec<GroupView>>),
    /// The newest `limit` messages of a group.
    History {
        /// The group's name.
        group: String,
        /// How many.
        limit: usize,
        /// The answer.
        reply: Reply<Vec<MessageView>>,
    },
    /// Send a message.
    Send {
        /// The group's name.
        group: String,
        /// The message.
        text: String,
        /// The answer.
        reply: Reply<SentView>,
    },
    /// Create a group (post-quantum suite).
    Create {
        /// The group's name.
        name: String,
        /// The answer.
        reply: Reply<GroupView>,
    },
    /// Add every device of each user to a group.
    Invite {
        /// The group's name.
        group: String,
        /// Who.
        usernames: Vec<String>,
        /// The answer.
        reply: Reply<GroupView>,
    },
    /// The account's devices, hex identity keys.
    Devices(Reply<Vec<String>>),
    /// These lines reached their reader: shown.
    MarkShown(Vec<crate::state::lines::LineKey>),
    /// A command for the account, run while the resident lets go of the
    /// profile.
    Account {
        /// The command.
        command: crate::account_command::AccountCommand,
        /// What the CLI prints, or why not.
        reply: oneshot::Sender<Result<String, CommandError>>,
    },
    /// A CLI command, answered with what the CLI prints.
    Command {
        /// The command.
        command: ProfileCommand,
        /// As with `--json`.
        json: bool,
        /// The answer, or why not.
        reply: oneshot::Sender<Result<Answer, CommandError>>,
    },
}

/// What listeners are told as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Messages or groups changed: read them again.
    Changed,
    /// A line: a message someone sent, or a notice about a group (someone
    /// joined, left, was removed).
    Line(ShownLine),
    /// The connection to the node changed.
    Connection(Link),
}

/// The resident client's connection to the node, as it last heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// No login: nothing to connect.
    SignedOut,
    /// Started; the first attempt has not answered yet.
    Connecting,
    /// Connected and resumed.
    Connected,
    /// Lost; the next attempt is due then.
    Reconnecting {
        /// When the next attempt is due.
        next_try: std::time::Instant,
    },
}

impl Link {
    /// One word for pages and scripts: `signed_out`, `connecting`,
    /// `connected`, `reconnecting`.
    pub fn state(&self) -> &'static str {
        match self {
            Link::SignedOut => "signed_out",
            Link::Connecting => "connecting",
            Link::Connected => "connected",
            Link::Reconnecting { .. } => "reconnecting",
        }
    }

    /// Milliseconds until the next attempt, while reconnecting.
    pub fn next_try_ms(&self) -> Option<u64> {
        match self {
            Link::Reconnecting { next_try } => Some(
                next_try
                    .saturating_duration_since(std::time::Instant::now())
                    .as_millis() as u64,
            ),
            _ => None,
        }
    }
}

/// The handles on a running resident client; cloned by each front (web,
/// socket).
#[derive(Clone)]
pub struct Handles {
    /// Its call queue.
    pub calls: mpsc::Sender<Call>,
    /// What it tells listeners.
    pub events: broadcast::Sender<Event>,
    /// Counts the times something arrived (or was sent), listened to or not:
    /// what a waiting `recv` watches without counting as a listener.
    pub arrivals: watch::Receiver<u64>,
    /// Turns true once it is stopping (event streams end with it).
    pub stopping: watch::Receiver<bool>,
}

/// Starts the resident client for the profile in `opts` on the current
/// `LocalSet`. It runs until every call sender is gone or `stop` fires, then
/// closes the profile. Returns its handles and its task.
pub fn start(
    opts: ClientOptions,
    stop: oneshot::Receiver<()>,
) -> (Handles, tokio::task::JoinHandle<()>) {
    let (calls_tx, calls) = mpsc::channel(CALL_QUEUE);
    let (events, _) = broadcast::channel(EVENT_BUFFER);
    let (stopping_tx, stopping) = watch::channel(false);
    let (changes, arrivals) = watch::channel(0);
    let agent = Agent {
        opts,
        messenger: None,
        arrivals: None,
        connection: None,
        events: events.clone(),
        changes,
        link: Link::SignedOut,
    };
    let task = tokio::task::spawn_local(agent.run(calls, stop, stopping_tx));
    let handles = Handles {
        calls: calls_tx,
        events,
        arrivals,
        stopping,
    };
    (handles, task)
}

struct Agent {
    opts: ClientOptions,
    messenger: Option<Messenger>,
    arrivals: Option<mpsc::UnboundedReceiver<Result<(), crate::messenger::MessengerError>>>,
    connection: Option<broadcast::Receiver<ConnectionEvent>>,
    events: broadcast::Sender<Event>,
    changes: watch::Sender<u64>,
    link: Link,
}

impl Agent {
    async fn run(
        mut self,
        mut calls: mpsc::Receiver<Call>,
        mut stop: oneshot::Receiver<()>,
        stopping: watch::Sender<bool>,
    ) {
        // A profile that is logged in already starts its messenger at once.
        if let Err(e) = self.resume().await {
            tracing::warn!(error = %e.message, "the web UI could not resume the profile's login");
        }
        let mut top_up = tokio::time::interval(KEY_PACKAGE_CHECK);
        top_up.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        top_up.reset();
        loop {
            tokio::select! {
                call = calls.recv() => match call {
                    Some(call) => self.handle(call).await,
                    None => break,
                },
                _ = &mut stop => break,
                _ = top_up.tick() => self.top_up_key_packages().await,
                arrived = next(&mut self.arrivals) => self.on_arrival(arrived).await,
                event = next_event(&mut self.connection) => self.on_connection(event).await,
            }
        }
        let _ = stopping.send(true);
        if let Some(m) = self.messenger.take() {
            m.close().await;
        }
    }

    /// Starts the messenger when the profile holds a login.
    async fn resume(&mut self) -> Result<(), WebError> {
        let state =
            ClientState::open(&self.opts.state_dir).map_err(commands::CommandError::from)?;
        let logged_in = state
            .saved_login()
            .map_err(commands::CommandError::from)?
            .is_some_and(|l| !l.token.is_empty());
        drop(state);
        if logged_in {
            self.start_messenger().await?;
        }
        Ok(())
    }

    /// Starts the messenger from the profile; it connects as its follow loop
    /// first fetches (the calls meanwhile answer from the profile).
    async fn start_messenger(&mut self) -> Result<(), WebError> {
        let m = resident_messenger(&self.opts).await?;
        self.connection = Some(m.connection_events());
        self.arrivals = Some(m.follow().await?);
        self.messenger = Some(m);
        self.set_link(Link::Connecting);
        Ok(())
    }

    fn set_link(&mut self, link: Link) {
        if self.link != link {
            self.link = link;
            let _ = self.events.send(Event::Connection(link));
        }
    }

    fn messenger(&mut self) -> Result<&mut Messenger, WebError> {
        self.messenger.as_mut().ok_or_else(WebError::not_logged_in)
    }

    async fn handle(&mut self, call: Call) {
        match call {
            Call::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Call::Register {
                username,
                password,
                reply,
            } => {
                let r = self.log_in(&username, &password, true).await;
                let _ = reply.send(r);
            }
            Call::Login {
                username,
                password,
                reply,
            } => {
                let r = self.log_in(&username, &password, false).await;
                let _ = reply.send(r);
            }
            Call::Groups(reply) => {
                let r = self.groups().await;
                let _ = reply.send(r);
            }
            Call::History {
                group,
                limit,
                reply,
            } => {
                let r = self.messenger().and_then(|m| {
                    Ok(m.history(&group, limit.min(MAX_HISTORY_LIMIT))?
                        .iter()
                        .map(MessageView::from)
                        .collect())
                });
                let _ = reply.send(r);
            }
            Call::Send { group, text, reply } => {
                let r = self.send(&group, &text).await;
                let _ = reply.send(r);
            }
            Call::Create { name, reply } => {
                let r = self.create(&name).await;
                let _ = reply.send(r);
            }
            Call::Invite {
                group,
                usernames,
                reply,
            } => {
                let r = self.invite(&group, &usernames).await;
                let _ = reply.send(r);
            }
            Call::Devices(reply) => {
                let r = self.devices().await;
                let _ = reply.send(r);
            }
            Call::MarkShown(keys) => {
                if let Some(m) = &self.messenger
                    && let Err(e) = m.mark_shown(&keys)
                {
                    tracing::warn!(error = %e, "cannot mark lines shown");
                }
            }
            Call::Account { command, reply } => {
                let r = self.account(command).await;
                let _ = reply.send(r);
            }
            Call::Command {
                command,
                json,
                reply,
            } => {
                let r = self.command(&command, json).await;
                if command.changes_groups() {
                    self.after_change().await;
                }
                let _ = reply.send(r);
            }
        }
    }

    /// A CLI command on the resident messenger. Without a login only `whoami`
    /// answers (with the device's identity, from the profile).
    async fn command(
        &mut self,
        command: &ProfileCommand,
        json: bool,
    ) -> Result<Answer, CommandError> {
        match (&mut self.messenger, command) {
            (Some(m), command) => {
                if self.link != Link::Connected
                    && let Some(answer) = command.answer_from_profile(m)
                {
                    return answer;
                }
                let mut answer = command.run_on(m, json).await?;
                if command.only_reads() && answer.note.is_none() && self.link != Link::Connected {
                    answer.note = Some(crate::profile_command::UNREFRESHED.into());
                }
                Ok(answer)
            }
            (None, ProfileCommand::Whoami) => {
                let state = ClientState::open(&self.opts.state_dir)?;
                Ok(Answer::plain(format!(
                    "identity {}",
                    hex::encode(state.identity()?.public_key())
                )))
            }
            (None, _) => Err(CommandError::NotLoggedIn),
        }
    }

    fn status(&self) -> Result<StatusView, WebError> {
        let (logged_in, username, identity) = match &self.messenger {
            Some(m) => (true, Some(m.username().to_string()), m.identity_key()),
            None => {
                let state = ClientState::open(&self.opts.state_dir)
                    .map_err(commands::CommandError::from)?;
                let identity = state.identity().map_err(commands::CommandError::from)?;
                (false, None, identity.public_key())
            }
        };
        Ok(StatusView {
            logged_in,
            username,
            identity: hex::encode(identity),
            server: self.opts.server.clone(),
            connection: self.link.state(),
            next_try_ms: self.link.next_try_ms(),
        })
    }

    async fn log_in(
        &mut self,
        username: &str,
        password: &str,
        register: bool,
    ) -> Result<SignedIn, WebError> {
        if username.trim().is_empty() {
            return Err(WebError::invalid("empty username"));
        }
        if password.is_empty() {
            return Err(WebError::invalid("empty password"));
        }
        self.release_profile().await;
        let done = if register {
            commands::register_user(&self.opts, username, password).await
        } else {
            commands::login(&self.opts, username, password).await
        };
        let message = match done {
            Ok(message) => message,
            Err(e) => {
                // A refused login leaves the profile's earlier login as it was.
                self.carry_on().await;
                return Err(e.into());
            }
        };
        if let Err(e) = self.start_messenger().await {
            self.set_link(Link::SignedOut);
            return Err(e);
        }
        Ok(SignedIn {
            status: self.status()?,
            message,
        })
    }

    /// Runs an account command on the profile (the messenger lets go of it
    /// meanwhile), then carries on with whatever login the profile holds.
    async fn account(
        &mut self,
        command: crate::account_command::AccountCommand,
    ) -> Result<String, CommandError> {
        self.release_profile().await;
        let done = command.run(&self.opts).await;
        self.carry_on().await;
        let _ = self.events.send(Event::Changed);
        done
    }

    /// The profile is one file: the running messenger lets go of it before a
    /// one-shot command opens it.
    async fn release_profile(&mut self) {
        if let Some(m) = self.messenger.take() {
            self.arrivals = None;
            self.connection = None;
            m.close().await;
        }
    }

    /// After a one-shot command: carries on with whatever login the profile
    /// holds (signed out when none).
    async fn carry_on(&mut self) {
        if let Err(e) = self.resume().await {
            tracing::warn!(error = %e.message, "cannot resume the profile's login");
        }
        if self.messenger.is_none() {
            self.set_link(Link::SignedOut);
        }
    }

    async fn groups(&mut self) -> Result<Vec<GroupView>, WebError> {
        let m = self.messenger()?;
        Ok(m.groups().await?.into_iter().map(GroupView::from).collect())
    }

    /// Sends a message; with the node away it is queued (the outbox sends it
    /// when the node is back).
    async fn send(&mut self, group: &str, text: &str) -> Result<SentView, WebError> {
        let m = self.messenger()?;
        let sent = match m.send(group, text).await {
            Ok(report) => SentView {
                delivered: report.seqs.len(),
                undelivered: report
                    .undelivered
                    .iter()
                    .map(|(who, why)| format!("{who}: {why}"))
                    .collect(),
                queued: false,
            },
            Err(e) if Messenger::is_connection_loss(&e) => SentView {
                delivered: 0,
                undelivered: Vec::new(),
                queued: true,
            },
            Err(e) => return Err(e.into()),
        };
        self.after_change().await;
        Ok(sent)
    }

    async fn create(&mut self, name: &str) -> Result<GroupView, WebError> {
        if name.trim().is_empty() {
            return Err(WebError::invalid("empty group name"));
        }
        let m = self.messenger()?;
        m.create_group(name, quicnprotochat_crypto::mls::Suite::PostQuantum)
            .await?;
        let g = m.group(name).await?;
        self.after_change().await;
        Ok(g.into())
    }

    async fn invite(&mut self, group: &str, usernames: &[String]) -> Result<GroupView, WebError> {
        if usernames.is_empty() || usernames.iter().any(|u| u.trim().is_empty()) {
            return Err(WebError::invalid("name at least one user to invite"));
        }
        let m = self.messenger()?;
        m.invite(group, usernames).await?;
        let g = m.group(group).await?;
        self.after_change().await;
        Ok(g.into())
    }

    /// The account's devices (with the node away, as the profile last saw
    /// them).
    async fn devices(&mut self) -> Result<Vec<String>, WebError> {
        let m = self.messenger()?;
        let answer = ProfileCommand::Devices.run_on(m, false).await?;
        // `devices`' lines: a heading, then one device (hex) per line.
        Ok(answer
            .text
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    /// Something arrived (or following failed): apply it, tell the pages.
    async fn on_arrival(&mut self, arrived: Option<Result<(), crate::messenger::MessengerError>>) {
        if self.messenger.is_none() {
            return;
        }
        match arrived {
            // The receiver restarted: follow the new one.
            None => {
                let m = self.messenger.as_mut().expect("checked above");
                match m.follow().await {
                    Ok(a) => self.arrivals = Some(a),
                    Err(e) => {
                        self.arrivals = None;
                        tracing::warn!(error = %e, "cannot follow the inbox");
                    }
                }
            }
            Some(Err(e)) if Messenger::is_connection_loss(&e) => {
                tracing::info!(error = %e, "fetching the inbox failed; retrying");
            }
            // Not the network (the session ended, the profile failed): the
            // follow loop stops, and is not restarted in a loop; a login (or
            // a restart) starts it again.
            Some(Err(e)) => {
                tracing::warn!(error = %e, "following the inbox stopped");
                self.arrivals = None;
            }
            Some(Ok(())) => {
                // A fetch went through: the node is there.
                self.set_link(Link::Connected);
                // What a waiting `recv` watches: something arrived.
                self.changes.send_modify(|n| *n += 1);
                let m = self.messenger.as_mut().expect("checked above");
                if let Err(e) = m.pull(Duration::ZERO).await {
                    tracing::info!(error = %e, "applying the inbox failed");
                }
                self.flush_outbox().await;
                self.after_change().await;
            }
        }
    }

    /// Tells the listeners what changed: each new line, then `Changed`. Told,
    /// the lines are marked shown; with no listener they stay unread.
    async fn after_change(&mut self) {
        let Some(m) = self.messenger.as_ref() else {
            return;
        };
        if self.events.receiver_count() == 0 {
            // Nobody to tell: the lines stay unread, for the next `recv`.
            return;
        }
        match m.unread() {
            // More than the event buffer holds: a listener would lag and miss
            // them, so they stay unread (for `recv`) and listeners are told to
            // read the history again.
            Ok(lines) if lines.len() > EVENT_BUFFER / 2 => {}
            Ok(lines) => {
                for (_, line) in &lines {
                    let _ = self.events.send(Event::Line(line.clone()));
                }
                let keys: Vec<_> = lines.iter().map(|(k, _)| *k).collect();
                if let Err(e) = m.mark_shown(&keys) {
                    tracing::warn!(error = %e, "cannot mark lines shown");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read new lines"),
        }
        let _ = self.events.send(Event::Changed);
    }

    async fn on_connection(&mut self, event: Option<ConnectionEvent>) {
        let link = match event {
            Some(ConnectionEvent::Lost) => Link::Reconnecting {
                next_try: std::time::Instant::now(),
            },
            Some(ConnectionEvent::Retrying { delay }) => Link::Reconnecting {
                next_try: std::time::Instant::now() + delay,
            },
            Some(ConnectionEvent::Reconnected) => Link::Connected,
            None => return,
        };
        self.set_link(link);
        if link == Link::Connected {
            self.flush_outbox().await;
            self.top_up_key_packages().await;
        }
    }

    /// Publishes KeyPackages when others claimed most of them: on every
    /// connection and every [`KEY_PACKAGE_CHECK`] (one-shot commands do it on
    /// login and `whoami`).
    async fn top_up_key_packages(&mut self) {
        let Some(m) = self.messenger.as_ref() else {
            return;
        };
        if self.link != Link::Connected {
            return;
        }
        match m.refill_key_packages().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(published = n, "KeyPackages topped up"),
            Err(e) => tracing::warn!(error = %e, "cannot top up the KeyPackages"),
        }
    }

    /// Sends what waits in the outbox (queued while the node was away), in
    /// order; what still cannot go waits for the next connection.
    async fn flush_outbox(&mut self) {
        let Some(m) = self.messenger.as_mut() else {
            return;
        };
        match m.flush_outbox().await {
            Ok(0) => {}
            Ok(sent) => {
                tracing::info!(sent, "sent what waited in the outbox");
                self.after_change().await;
            }
            Err(e) => tracing::info!(error = %e, "the outbox waits for the node"),
        }
    }
}

/// The next notice of `arrivals`, or never when there is none to follow.
async fn next(
    arrivals: &mut Option<mpsc::UnboundedReceiver<Result<(), crate::messenger::MessengerError>>>,
) -> Option<Result<(), crate::messenger::MessengerError>> {
    match arrivals {
        Some(a) => a.recv().await,
        None => std::future::pending().await,
    }
}

/// The next connection event (`None` after a lag), or never without a messenger.
async fn next_event(
    events: &mut Option<broadcast::Receiver<ConnectionEvent>>,
) -> Option<ConnectionEvent> {
    match events {
        Some(e) => match e.recv().await {
            Ok(ev) => Some(ev),
            Err(broadcast::error::RecvError::Lagged(_)) => None,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
