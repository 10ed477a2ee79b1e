//! `chat` through the profile's daemon: what the daemon's events show, printed
//! as the one-shot `chat` prints it; each typed line one `send` to the daemon
//! (whose outbox keeps it while the node is away, so nothing typed is lost when
//! chat ends).

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use super::client::{DaemonClient, answer_to};
use crate::commands::{ClientOptions, CommandError};
use crate::output;
use crate::shutdown::Shutdown;
use crate::state::lines::ShownLine;

/// Chats in `group` through `daemon` until stdin ends or a stop is asked for.
pub async fn chat(
    opts: &ClientOptions,
    group: &str,
    shutdown: &Shutdown,
    mut daemon: DaemonClient,
) -> Result<String, CommandError> {
    // An unknown group is an error before anything else.
    daemon
        .call("members", json!({"group": group, "json": true}))
        .await?;
    // Events from here on; what came before is read once, below.
    daemon.call("subscribe", json!({})).await?;
    let unread = daemon.call("recv", json!({"json": true})).await?;
    for line in unread["output"].as_str().unwrap_or_default().lines() {
        match serde_json::from_str::<ShownLine>(line) {
            Ok(l) => print_line(opts, group, &l),
            Err(_) => println!("{line}"),
        }
    }
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    // Sends whose answers have not come yet.
    let mut sending = std::collections::BTreeSet::new();
    let mut typing = true;
    loop {
        tokio::select! {
            () = shutdown.requested() => break,
            line = stdin.next_line(), if typing => {
                match line.map_err(|e| CommandError::Invalid(format!("cannot read stdin: {e}")))? {
                    None => typing = false,
                    Some(text) if text.trim().is_empty() => {}
                    Some(text) => match crate::core::check_message_text(&text) {
                        Ok(()) => {
                            let params = json!({"group": group, "message": text, "json": false});
                            sending.insert(daemon.request("send", params).await?);
                        }
                        Err(refusal) => eprintln!("error: {refusal}"),
                    },
                }
            }
            said = daemon.next() => {
                let said = said?;
                if let Some(id) = sending.iter().copied().find(|id| answer_to(&said, *id).is_some()) {
                    sending.remove(&id);
                    match answer_to(&said, id).expect("found above") {
                        Ok(result) => {
                            if let Some(note) = result["note"].as_str() {
                                eprintln!("note: {note}");
                            }
                        }
                        Err(e) => eprintln!("error: {e}"),
                    }
                } else if said["method"] == "event" {
                    show_event(opts, group, &said["params"]);
                }
            }
        }
        // Ctrl+D: leave once every line typed has its answer (it is then in
        // the daemon's outbox at least).
        if !typing && sending.is_empty() {
            break;
        }
    }
    Ok(String::new())
}

fn print_line(opts: &ClientOptions, group: &str, line: &ShownLine) {
    match opts.json {
        true => println!("{}", output::line_json(line)),
        false => println!("{}", output::chat_text(line, group)),
    }
}

/// Prints a daemon event as chat shows it.
fn show_event(opts: &ClientOptions, group: &str, event: &Value) {
    match event["kind"].as_str() {
        Some("message" | "notice") => {
            if let Ok(line) = serde_json::from_value::<ShownLine>(event["line"].clone()) {
                print_line(opts, group, &line);
            }
        }
        Some("connection") => match event["state"].as_str() {
            Some("connected") => eprintln!("connected to {}", opts.server),
            Some("reconnecting") => eprintln!(
                "cannot reach {}; retrying in {} ms",
                opts.server,
                event["next_try_ms"].as_u64().unwrap_or(0)
            ),
            Some(other) => eprintln!("{other}"),
            None => {}
        },
        Some("lagged") => eprintln!(
            "missed {} event(s): `history {group}` shows everything",
            event["missed"].as_u64().unwrap_or(0)
        ),
        _ => {}
    }
}
