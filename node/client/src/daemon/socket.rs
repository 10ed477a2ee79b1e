//! The daemon's socket: accepts local connections (a bounded number) and
//! serves each one's requests in order, forwarding them to the resident client
//! and, once it subscribed, its events.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, broadcast, oneshot};

use super::jsonrpc::{self, Method, Refusal};
use crate::commands::CommandError;
use crate::output;
use crate::profile_command::{Answer, ProfileCommand};
use crate::resident::{Call, Event, Handles};
use crate::state::lines::LineKey;
use crate::web::views::WebError;

/// Connections served at once; one more is told so and closed.
pub const MAX_CONNECTIONS: usize = 32;
/// The longest a `recv` waits for something to arrive, whatever it asks.
pub const MAX_RECV_WAIT: Duration = Duration::from_secs(3600);

/// Serves `listener` until `signalled` turns true (connections in progress end
/// when the resident client stops).
pub(crate) async fn serve(
    listener: UnixListener,
    resident: Handles,
    mut signalled: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "the daemon's socket failed to accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = signalled.wait_for(|s| *s) => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::task::spawn_local(refuse_over_cap(stream));
            continue;
        };
        let resident = resident.clone();
        tokio::task::spawn_local(async move {
            Connection::new(stream, resident).serve().await;
            drop(slot);
        });
    }
}

async fn refuse_over_cap(mut stream: UnixStream) {
    let line = jsonrpc::refusal(&Refusal {
        id: Value::Null,
        code: jsonrpc::UNAVAILABLE,
        message: format!("the daemon serves {MAX_CONNECTIONS} connections at most; try again"),
        notification: false,
    });
    let _ = stream.write_all(format!("{line}\n").as_bytes()).await;
}

struct Connection {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    /// The line being read: kept across reads, which an event may interrupt.
    pending: Vec<u8>,
    writer: tokio::net::unix::OwnedWriteHalf,
    resident: Handles,
    events: Option<broadcast::Receiver<Event>>,
}

/// What came first: a line read, or an event for a subscriber.
enum Next {
    Read(Read),
    Event(Result<Event, broadcast::error::RecvError>),
    Stopping,
}

/// What reading one line gave.
enum Read {
    Line(Vec<u8>),
    TooLong,
    Closed,
}

impl Connection {
    fn new(stream: UnixStream, resident: Handles) -> Connection {
        let (read, writer) = stream.into_split();
        Connection {
            reader: BufReader::new(read),
            pending: Vec::new(),
            writer,
            resident,
            events: None,
        }
    }

    async fn serve(mut self) {
        let mut stopping = self.resident.stopping.clone();
        loop {
            let next = tokio::select! {
                read = read_line(&mut self.reader, &mut self.pending) => Next::Read(read),
                event = next_event(&mut self.events) => Next::Event(event),
                _ = stopping.wait_for(|s| *s) => Next::Stopping,
            };
            let read = match next {
                Next::Read(read) => read,
                Next::Event(event) => {
                    if self.tell(event).await.is_err() {
                        return;
                    }
                    continue;
                }
                Next::Stopping => return,
            };
            let line = match read {
                Read::Line(line) => line,
                Read::Closed => return,
                Read::TooLong => {
                    // The rest of the line cannot be told from the next
                    // request: say why, then close.
                    let _ = self
                        .write(&jsonrpc::refusal(&Refusal {
                            id: Value::Null,
                            code: jsonrpc::INVALID_REQUEST,
                            message: format!(
                                "request longer than {} bytes",
                                jsonrpc::MAX_REQUEST_BYTES
                            ),
                            notification: false,
                        }))
                        .await;
                    return;
                }
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let (answer, shown) = match jsonrpc::parse(&line) {
                // A notification is answered with nothing, even an error.
                Err(refusal) if refusal.notification => (None, Vec::new()),
                Err(refusal) => (Some(jsonrpc::refusal(&refusal)), Vec::new()),
                Ok(request) => {
                    let id = request.id.clone();
                    let answer = self.answer(request.method).await;
                    match (id, answer) {
                        (None, _) => (None, Vec::new()),
                        (Some(id), Ok((value, shown))) => {
                            (Some(jsonrpc::result(&id, value)), shown)
                        }
                        (Some(id), Err(e)) => (Some(jsonrpc::command_failed(&id, &e)), Vec::new()),
                    }
                }
            };
            if let Some(line) = answer {
                if self.write(&line).await.is_err() {
                    return;
                }
                // Written: the lines it shows reached their reader.
                if !shown.is_empty() {
                    let _ = self.resident.calls.send(Call::MarkShown(shown)).await;
                }
            }
        }
    }

    /// What a request answers, and the lines it shows (marked shown once the
    /// answer is written).
    async fn answer(&mut self, method: Method) -> Result<(Value, Vec<LineKey>), CommandError> {
        let value = match method {
            Method::Command { command, json } => return self.run(command, json).await,
            other => self.answer_other(other).await?,
        };
        Ok((value, Vec::new()))
    }

    async fn answer_other(&mut self, method: Method) -> Result<Value, CommandError> {
        match method {
            Method::Command { .. } => unreachable!("answered by `run`"),
            Method::Account(command) => {
                let (reply, answer) = oneshot::channel();
                self.resident
                    .calls
                    .send(Call::Account { command, reply })
                    .await
                    .map_err(|_| stopped())?;
                let output = answer.await.map_err(|_| stopped())??;
                Ok(json!({"output": output, "note": null}))
            }
            Method::Subscribe => {
                self.events = Some(self.resident.events.subscribe());
                Ok(json!({"subscribed": true}))
            }
            Method::Status => {
                let status = self.ask(Call::Status).await?;
                let mut value = serde_json::to_value(status).unwrap_or(Value::Null);
                value["pid"] = json!(std::process::id());
                Ok(value)
            }
            Method::Login {
                username,
                password,
                register,
            } => {
                let signed_in = self
                    .ask(|reply| match register {
                        true => Call::Register {
                            username,
                            password,
                            reply,
                        },
                        false => Call::Login {
                            username,
                            password,
                            reply,
                        },
                    })
                    .await?;
                let mut value = serde_json::to_value(signed_in.status).unwrap_or(Value::Null);
                value["message"] = json!(signed_in.message);
                Ok(value)
            }
        }
    }

    /// A command; `recv` with a `wait` waits (until something arrives or the
    /// time is up, or the caller hangs up) when nothing is there yet.
    async fn run(
        &mut self,
        command: ProfileCommand,
        json: bool,
    ) -> Result<(Value, Vec<LineKey>), CommandError> {
        let wait = match &command {
            ProfileCommand::Recv { wait } => Duration::from_secs(*wait).min(MAX_RECV_WAIT),
            _ => Duration::ZERO,
        };
        let deadline = tokio::time::Instant::now() + wait;
        // Watched before the first look: an arrival between the two is not
        // missed.
        let mut arrivals = self.resident.arrivals.clone();
        arrivals.borrow_and_update();
        loop {
            let answer = self.command(command.clone(), json).await?;
            if !answer.text.is_empty() || tokio::time::Instant::now() >= deadline {
                let shown = answer.shown.clone();
                return Ok((command_result(answer, json), shown));
            }
            // The caller may hang up meanwhile: its slot is freed at once.
            let hung_up = async {
                match self.reader.fill_buf().await {
                    Ok([]) | Err(_) => {}
                    // A request sent ahead: read after this one.
                    Ok(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = arrivals.changed() => if changed.is_err() {
                    return Err(stopped());
                },
                () = tokio::time::sleep_until(deadline) => {}
                () = hung_up => return Err(CommandError::Invalid("the caller hung up".into())),
            }
        }
    }

    async fn command(&self, command: ProfileCommand, json: bool) -> Result<Answer, CommandError> {
        let (reply, answer) = oneshot::channel();
        let call = Call::Command {
            command,
            json,
            reply,
        };
        self.resident
            .calls
            .send(call)
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn ask<T>(
        &self,
        build: impl FnOnce(oneshot::Sender<Result<T, WebError>>) -> Call,
    ) -> Result<T, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.resident
            .calls
            .send(build(reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?.map_err(from_web_error)
    }

    /// Tells a subscriber one event (a lag: that it missed some).
    async fn tell(
        &mut self,
        event: Result<Event, broadcast::error::RecvError>,
    ) -> std::io::Result<()> {
        let params = match event {
            Ok(Event::Changed) => json!({"kind": "changed"}),
            Ok(Event::Line(line)) => {
                let mut v: Value =
                    serde_json::from_str(&output::line_json(&line)).unwrap_or(Value::Null);
                let kind = v.get("type").cloned().unwrap_or(json!("line"));
                if let Some(o) = v.as_object_mut() {
                    o.remove("type");
                }
                json!({"kind": kind, "line": v})
            }
            Ok(Event::Connection(link)) => json!({
                "kind": "connection",
                "state": link.state(),
                "next_try_ms": link.next_try_ms(),
            }),
            Err(broadcast::error::RecvError::Lagged(n)) => json!({"kind": "lagged", "missed": n}),
            Err(broadcast::error::RecvError::Closed) => {
                self.events = None;
                return Ok(());
            }
        };
        self.write(&jsonrpc::event(params)).await
    }

    async fn write(&mut self, line: &str) -> std::io::Result<()> {
        self.writer.write_all(line.as_bytes()).await?;
        self.writer.write_all(b"\n").await
    }
}

/// A command's result: what the CLI prints (`output`), the note it prints on
/// stderr if any (`note`), and with `json` each printed line as a value.
fn command_result(answer: Answer, json: bool) -> Value {
    let mut result = json!({"output": answer.text, "note": answer.note});
    if json {
        let values: Vec<Value> = answer
            .text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        result["values"] = json!(values);
    }
    result
}

fn stopped() -> CommandError {
    CommandError::Invalid("the daemon is stopping".into())
}

fn from_web_error(e: WebError) -> CommandError {
    // The kinds that set the CLI's exit status (a refused password exits 3, an
    // unreachable node 4, as alone).
    let kind = match e.code {
        "not_logged_in" => return CommandError::NotLoggedIn,
        "refused" | "unauthorized" => "refused",
        "unreachable" => "unreachable",
        "profile" => "profile",
        _ => return CommandError::Invalid(e.message),
    };
    CommandError::Daemon {
        message: e.message,
        kind,
        refusal: None,
    }
}

/// One line of at most [`jsonrpc::MAX_REQUEST_BYTES`], without its newline.
/// Cancel-safe: what was read of a line stays in `pending` for the next call.
async fn read_line<R: AsyncRead + Unpin>(reader: &mut BufReader<R>, pending: &mut Vec<u8>) -> Read {
    let room = (jsonrpc::MAX_REQUEST_BYTES + 1).saturating_sub(pending.len()) as u64;
    let read = (&mut *reader).take(room).read_until(b'\n', pending).await;
    match read {
        Err(_) => Read::Closed,
        Ok(0) if pending.is_empty() => Read::Closed,
        _ if pending.last() == Some(&b'\n') => {
            pending.pop();
            Read::Line(std::mem::take(pending))
        }
        _ if pending.len() > jsonrpc::MAX_REQUEST_BYTES => Read::TooLong,
        // The last line, without a newline.
        Ok(0) => Read::Line(std::mem::take(pending)),
        Ok(_) => Box::pin(read_line(reader, pending)).await,
    }
}

/// The next event of a subscribed connection; never without a subscription.
async fn next_event(
    events: &mut Option<broadcast::Receiver<Event>>,
) -> Result<Event, broadcast::error::RecvError> {
    match events {
        Some(e) => e.recv().await,
        None => std::future::pending().await,
    }
}
