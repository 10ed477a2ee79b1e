//! The CLI's side of the daemon: when the profile has a live daemon, a command
//! is one call to it and prints what the daemon answers; when not, the command
//! opens the profile itself.

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::jsonrpc::{COMMAND_FAILED, MAX_REQUEST_BYTES};
use crate::commands::{ClientOptions, CommandError, KINDS};
use crate::profile_command::ProfileCommand;

/// A connection to a profile's daemon.
pub struct DaemonClient {
    stream: BufReader<UnixStream>,
    /// What was read of a line not yet complete (kept across a cancelled
    /// [`DaemonClient::next`]).
    pending: Vec<u8>,
    next_id: u64,
}

impl DaemonClient {
    /// Connects to the daemon serving the profile in `dir`; `None` when none
    /// does (no socket, or one a dead daemon left).
    pub async fn connect(dir: &std::path::Path) -> Option<DaemonClient> {
        let stream = UnixStream::connect(super::socket_path(dir)).await.ok()?;
        Some(DaemonClient {
            stream: BufReader::new(stream),
            pending: Vec::new(),
            next_id: 1,
        })
    }

    /// Writes a request for `method` without waiting for its answer; its id.
    pub async fn request(&mut self, method: &str, params: Value) -> Result<u64, CommandError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let mut line = request.to_string();
        line.push('\n');
        if line.len() > MAX_REQUEST_BYTES {
            return Err(CommandError::Invalid(
                "the request is too long for the daemon".into(),
            ));
        }
        self.stream
            .get_mut()
            .write_all(line.as_bytes())
            .await
            .map_err(lost)?;
        Ok(id)
    }

    /// The next line the daemon writes: an answer or an event. Cancel-safe
    /// (chat waits on it beside stdin): a part of a line read before a
    /// cancellation stays for the next call.
    pub async fn next(&mut self) -> Result<Value, CommandError> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return serde_json::from_slice(&line).map_err(|e| {
                    CommandError::Invalid(format!("the daemon answered something unreadable: {e}"))
                });
            }
            // Nothing is taken from the reader until it is in `pending`.
            let read = self.stream.fill_buf().await.map_err(lost)?;
            if read.is_empty() {
                return Err(lost(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let n = read.len();
            self.pending.extend_from_slice(read);
            self.stream.consume(n);
        }
    }

    /// Calls `method`; its result, or its error as a command error.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, CommandError> {
        let id = self.request(method, params).await?;
        loop {
            let answer = self.next().await?;
            if let Some(result) = answer_to(&answer, id) {
                return result;
            }
        }
    }

    /// Calls the method a serde-tagged command names (`{"method", "params"}`,
    /// as `ProfileCommand` and `AccountCommand` serialize), with `json` added
    /// to its parameters when given; its result.
    async fn call_command(
        &mut self,
        command: &impl serde::Serialize,
        json: Option<bool>,
    ) -> Result<Value, CommandError> {
        let request = serde_json::to_value(command).expect("a command serializes");
        let method = request["method"].as_str().unwrap_or_default().to_string();
        let mut params = request.get("params").cloned().unwrap_or_else(|| json!({}));
        if let Some(json) = json {
            params["json"] = json!(json);
        }
        self.call(&method, params).await
    }

    /// Runs `command` in the daemon; what the CLI prints (a note goes to
    /// stderr here, as the one-shot command prints it).
    pub async fn run(
        &mut self,
        command: &ProfileCommand,
        json: bool,
    ) -> Result<String, CommandError> {
        let result = self.call_command(command, Some(json)).await?;
        if let Some(note) = result["note"].as_str() {
            eprintln!("note: {note}");
        }
        Ok(result["output"].as_str().unwrap_or_default().to_string())
    }
}

fn lost(e: std::io::Error) -> CommandError {
    CommandError::Invalid(format!("the profile's daemon stopped answering: {e}"))
}

/// What `line` answers to request `id`: `None` when it is something else (an
/// event, another request's answer). An error without an id (the daemon is
/// over its connection cap) answers whatever was asked.
pub(super) fn answer_to(line: &Value, id: u64) -> Option<Result<Value, CommandError>> {
    let unaddressed_error = line.get("error").is_some() && line["id"].is_null();
    if line.get("id") != Some(&json!(id)) && !unaddressed_error {
        return None;
    }
    Some(match line.get("error") {
        Some(error) => Err(error_of(error)),
        None => Ok(line.get("result").cloned().unwrap_or(Value::Null)),
    })
}

/// The command error a daemon's error object stands for.
fn error_of(error: &Value) -> CommandError {
    let message = error["message"]
        .as_str()
        .unwrap_or("the daemon refused")
        .to_string();
    if error["code"] != json!(COMMAND_FAILED) {
        return CommandError::Invalid(format!("the daemon refused the call: {message}"));
    }
    let data = &error["data"];
    let kind = data["kind"]
        .as_str()
        .and_then(|k| KINDS.into_iter().find(|known| *known == k))
        .unwrap_or("invalid");
    CommandError::Daemon {
        message,
        kind,
        refusal: data["refusal"].as_str().map(str::to_string),
    }
}

/// Runs `command` through the profile's daemon when one serves it; otherwise
/// `local`, which opens the profile itself.
pub async fn through_daemon_or(
    opts: &ClientOptions,
    command: ProfileCommand,
    local: impl Future<Output = Result<String, CommandError>>,
) -> Result<String, CommandError> {
    match DaemonClient::connect(&opts.state_dir).await {
        Some(mut daemon) => daemon.run(&command, opts.json).await,
        None => local.await,
    }
}

/// `login` (or, with `register`, `register-user`) through the profile's daemon
/// when one serves it, which then carries on with the new session; otherwise
/// `local`, which signs in on the profile itself. The password goes over the
/// owner-only socket, as it goes to the web app's page.
pub async fn sign_in_through_daemon_or(
    opts: &ClientOptions,
    username: &str,
    password: &str,
    register: bool,
    local: impl Future<Output = Result<String, CommandError>>,
) -> Result<String, CommandError> {
    match DaemonClient::connect(&opts.state_dir).await {
        Some(mut daemon) => {
            let method = if register { "register" } else { "login" };
            let params = json!({"username": username, "password": password});
            let result = daemon.call(method, params).await?;
            Ok(result["message"].as_str().unwrap_or_default().to_string())
        }
        None => local.await,
    }
}

/// An account command (`logout`, `change-password`, `remove-device`,
/// `check-key`) through the profile's daemon when one serves it; otherwise on
/// the profile itself.
pub async fn account_command(
    opts: &ClientOptions,
    command: crate::account_command::AccountCommand,
) -> Result<String, CommandError> {
    match DaemonClient::connect(&opts.state_dir).await {
        Some(mut daemon) => {
            let result = daemon.call_command(&command, None).await?;
            Ok(result["output"].as_str().unwrap_or_default().to_string())
        }
        None => command.run(opts).await,
    }
}

/// Runs `command` through the profile's daemon when one serves it; otherwise
/// on a messenger of its own (`group_commands::run_locally`).
pub async fn run_profile_command(
    opts: &ClientOptions,
    command: ProfileCommand,
) -> Result<String, CommandError> {
    let local = crate::group_commands::run_locally(opts, command.clone());
    through_daemon_or(opts, command, local).await
}

/// `recv` through the profile's daemon when one serves it (which prints what
/// the one-shot `recv` prints), otherwise `local`, which prints as it goes.
pub async fn recv_through_daemon_or(
    opts: &ClientOptions,
    wait: u64,
    local: impl Future<Output = Result<String, CommandError>>,
) -> Result<String, CommandError> {
    let Some(mut daemon) = DaemonClient::connect(&opts.state_dir).await else {
        return local.await;
    };
    let out = daemon
        .run(&ProfileCommand::Recv { wait }, opts.json)
        .await?;
    Ok(match out.is_empty() && !opts.json {
        true => "no new messages".into(),
        false => out,
    })
}
