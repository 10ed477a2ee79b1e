//! JSON-RPC 2.0 as the daemon speaks it: one request per line, one response per
//! line, notifications for events. Pure: text in, values out; the socket glue
//! is `super::socket`.
//!
//! What is refused, with the standard codes: a line that is not JSON
//! (`-32700`), JSON that is not a request (`-32600`, batches included: they are
//! not supported), an unknown method (`-32601`), parameters the method does not
//! take (`-32602`). A command that fails answers `-32000` with the CLI's
//! message, and in `data` its kind and exit status.

use serde_json::{Value, json};

use crate::commands::CommandError;
use crate::profile_command::{METHODS, ProfileCommand};

/// Longest request line accepted (a message is at most 64 KiB of text; JSON
/// escapes can make that six times longer).
pub const MAX_REQUEST_BYTES: usize = 512 * 1024;

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// A command failed (application error; `data` says how).
pub const COMMAND_FAILED: i64 = -32000;
/// The daemon is over its connection cap (the connection is closed).
pub const UNAVAILABLE: i64 = -32001;

/// What a request asks for.
#[derive(Clone, PartialEq, Eq)]
pub enum Method {
    /// A client command, with `--json` or not.
    Command {
        /// The command.
        command: ProfileCommand,
        /// Format as `--json` does.
        json: bool,
    },
    /// Events from now on, as `event` notifications.
    Subscribe,
    /// The daemon itself: pid, profile, login, connection.
    Status,
    /// A command for the account (the daemon lets go of the profile while
    /// it runs).
    Account(crate::account_command::AccountCommand),
    /// Log this profile in (or register it, then log in).
    Login {
        /// The account.
        username: String,
        /// Its password.
        password: String,
        /// Create the account first.
        register: bool,
    },
}

// Written by hand: a login's password never reaches a log or a test failure.
impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Command { command, json } => f
                .debug_struct("Command")
                .field("command", command)
                .field("json", json)
                .finish(),
            Method::Subscribe => f.write_str("Subscribe"),
            Method::Status => f.write_str("Status"),
            Method::Account(command) => f.debug_tuple("Account").field(command).finish(),
            Method::Login {
                username, register, ..
            } => f
                .debug_struct("Login")
                .field("username", username)
                .field("register", register)
                .finish_non_exhaustive(),
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Its id; `None` for a notification (no response is sent).
    pub id: Option<Value>,
    /// What it asks.
    pub method: Method,
}

/// A refusal before anything ran: code, message, and the id when one was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The request's id (`null` when it could not be read).
    pub id: Value,
    /// The request was a well-formed notification (no `id`): JSON-RPC sends
    /// nothing back, not even an error.
    pub notification: bool,
    /// A standard code.
    pub code: i64,
    /// Why, for people.
    pub message: String,
}

/// Parses one request line.
pub fn parse(line: &[u8]) -> Result<Request, Refusal> {
    let refuse = |id: Value, code, message: String| Refusal {
        id,
        code,
        message,
        notification: false,
    };
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| refuse(Value::Null, PARSE_ERROR, format!("parse error: {e}")))?;
    let Value::Object(mut object) = value else {
        let why = if value.is_array() {
            "batch requests are not supported: send one request per line"
        } else {
            "a request is a JSON object"
        };
        return Err(refuse(Value::Null, INVALID_REQUEST, why.into()));
    };
    let id = match object.remove("id") {
        None => None,
        Some(id @ (Value::Null | Value::Number(_) | Value::String(_))) => Some(id),
        Some(_) => {
            return Err(refuse(
                Value::Null,
                INVALID_REQUEST,
                "id must be a string, a number or null".into(),
            ));
        }
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    if object.remove("jsonrpc") != Some(json!("2.0")) {
        return Err(refuse(
            reply_id,
            INVALID_REQUEST,
            r#"jsonrpc must be "2.0""#.into(),
        ));
    }
    let Some(Value::String(method)) = object.remove("method") else {
        return Err(refuse(
            reply_id,
            INVALID_REQUEST,
            "method must be a string".into(),
        ));
    };
    let params = match object.remove("params") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(p)) => p,
        Some(Value::Array(a)) if a.is_empty() => serde_json::Map::new(),
        Some(_) => {
            return Err(refuse(
                reply_id,
                INVALID_PARAMS,
                "params must be an object of named parameters".into(),
            ));
        }
    };
    if let Some(extra) = object.keys().next() {
        return Err(refuse(
            reply_id,
            INVALID_REQUEST,
            format!("unknown member {extra:?}"),
        ));
    }
    let method = method_of(&method, params).map_err(|(code, message)| Refusal {
        id: reply_id,
        code,
        message,
        notification: id.is_none(),
    })?;
    Ok(Request { id, method })
}

fn method_of(
    name: &str,
    mut params: serde_json::Map<String, Value>,
) -> Result<Method, (i64, String)> {
    let invalid = |e: serde_json::Error| (INVALID_PARAMS, format!("{name}: {e}"));
    let no_params = |params: &serde_json::Map<String, Value>| match params.keys().next() {
        Some(k) => Err((INVALID_PARAMS, format!("{name} takes no parameter {k:?}"))),
        None => Ok(()),
    };
    match name {
        "subscribe" => no_params(&params).map(|()| Method::Subscribe),
        "status" => no_params(&params).map(|()| Method::Status),
        "login" | "register" => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Credentials {
                username: String,
                password: String,
            }
            let c: Credentials = serde_json::from_value(Value::Object(params)).map_err(invalid)?;
            Ok(Method::Login {
                username: c.username,
                password: c.password,
                register: name == "register",
            })
        }
        name if crate::account_command::ACCOUNT_METHODS.contains(&name) => {
            // Taken as by every command method; their output is one text.
            params.remove("json");
            let command = serde_json::from_value(json!({"method": name, "params": params}))
                .map_err(invalid)?;
            Ok(Method::Account(command))
        }
        name if METHODS.contains(&name) => {
            let json = match params.remove("json") {
                None => false,
                Some(Value::Bool(b)) => b,
                Some(_) => return Err((INVALID_PARAMS, format!("{name}: json must be a boolean"))),
            };
            let command = serde_json::from_value(json!({"method": name, "params": params}))
                .map_err(invalid)?;
            Ok(Method::Command { command, json })
        }
        _ => Err((
            METHOD_NOT_FOUND,
            format!("no method {name:?} (see docs/daemon.md)"),
        )),
    }
}

/// The response line of a success.
pub fn result(id: &Value, result: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string()
}

/// The response line of a refusal.
pub fn refusal(r: &Refusal) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": r.id,
        "error": {"code": r.code, "message": r.message},
    })
    .to_string()
}

/// The response line of a failed command: the CLI's message, and in `data`
/// the kind, the exit status, the node's refusal code if it refused.
pub fn command_failed(id: &Value, e: &CommandError) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": COMMAND_FAILED,
            "message": e.to_string(),
            "data": {"kind": e.kind(), "exit": e.exit_code(), "refusal": e.refusal_code()},
        },
    })
    .to_string()
}

/// An `event` notification.
pub fn event(params: Value) -> String {
    json!({"jsonrpc": "2.0", "method": "event", "params": params}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> i64 {
        parse(line.as_bytes()).expect_err(line).code
    }

    #[test]
    fn a_login_password_never_shows_in_debug_output() {
        let r = parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"login","params":{"username":"bob","password":"pw-secret"}}"#,
        )
        .unwrap();
        let shown = format!("{r:?}");
        assert!(
            shown.contains("bob") && !shown.contains("secret"),
            "{shown}"
        );
    }

    #[test]
    fn each_malformed_request_gets_its_standard_code() {
        assert_eq!(code("{not json"), PARSE_ERROR);
        assert_eq!(code(""), PARSE_ERROR);
        assert_eq!(code("[1,2]"), INVALID_REQUEST);
        assert_eq!(code("7"), INVALID_REQUEST);
        assert_eq!(code(r#"{"id":1,"method":"groups"}"#), INVALID_REQUEST);
        assert_eq!(
            code(r#"{"jsonrpc":"1.0","id":1,"method":"groups"}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":5}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":{},"method":"groups"}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#),
            METHOD_NOT_FOUND
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"history","params":{}}"#),
            INVALID_PARAMS
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"history","params":["g"]}"#),
            INVALID_PARAMS
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"x":1}}"#),
            INVALID_PARAMS
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"groups","params":{"json":"yes"}}"#),
            INVALID_PARAMS
        );
    }

    #[test]
    fn a_notification_for_an_unknown_method_is_marked_to_get_no_answer() {
        let r = parse(br#"{"jsonrpc":"2.0","method":"nope"}"#).unwrap_err();
        assert!(r.notification);
        let r = parse(br#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#).unwrap_err();
        assert!(!r.notification);
        // Not even a request: answered (with a null id), as the spec says.
        assert!(!parse(b"{oops").unwrap_err().notification);
    }

    #[test]
    fn a_refusal_carries_the_requests_id_when_it_could_be_read() {
        let r = parse(br#"{"jsonrpc":"2.0","id":"a7","method":"nope"}"#).unwrap_err();
        assert_eq!(r.id, json!("a7"));
        let r = parse(b"{oops").unwrap_err();
        assert_eq!(r.id, Value::Null);
    }

    #[test]
    fn a_request_names_its_command_and_a_notification_has_no_id() {
        let r = parse(br#"{"jsonrpc":"2.0","id":3,"method":"history","params":{"group":"g","limit":5,"json":true}}"#)
            .unwrap();
        assert_eq!(r.id, Some(json!(3)));
        assert_eq!(
            r.method,
            Method::Command {
                command: ProfileCommand::History {
                    group: "g".into(),
                    limit: 5
                },
                json: true
            }
        );
        let r = parse(br#"{"jsonrpc":"2.0","method":"subscribe"}"#).unwrap();
        assert_eq!(r.id, None);
        assert_eq!(r.method, Method::Subscribe);
    }
}
