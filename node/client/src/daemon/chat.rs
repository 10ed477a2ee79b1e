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
    // Events from here on; what came before is read by a `recv`, below. What
    // the daemon says before their answers is shown too.
    let subscribed = daemon.request("subscribe", json!({})).await?;
    let mut reading =
        std::collections::BTreeSet::from([daemon.request("recv", json!({"json": true})).await?]);
    let mut waiting_for_subscribe = true;
    while waiting_for_subscribe {
        let said = daemon.next().await?;
        if let Some(answer) = answer_to(&said, subscribed) {
            answer?;
            waiting_for_subscribe = false;
        } else {
            show(opts, group, &mut daemon, &mut reading, &said).await?;
        }
    }
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    // Sends whose answers have not come yet (bounded: a long piped input
    // waits for answers rather than fill the socket both ways).
    let mut sending = std::collections::BTreeSet::new();
    let mut typing = true;
    loop {
        tokio::select! {
            () = shutdown.requested() => break,
            line = stdin.next_line(), if typing && sending.len() < MAX_SENDING => {
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
                } else {
                    show(opts, group, &mut daemon, &mut reading, &said).await?;
                }
            }
        }
        // Ctrl+D: leave once every line typed has its answer (it is then in
        // the daemon's outbox at least).
        if !typing && sending.is_empty() {
            break;
        }
    }
    if !sending.is_empty() {
        eprintln!(
            "{} line(s) typed had no answer from the daemon yet: `history --group {group}` shows whether they are in its outbox",
            sending.len()
        );
    }
    Ok(String::new())
}

/// Sends in flight at most, before chat reads no more of stdin.
const MAX_SENDING: usize = 16;

/// Shows what the daemon said that is not a send's answer: an event, or the
/// answer to a `recv` (asked at the start, and again after a burst the daemon
/// did not tell line by line).
async fn show(
    opts: &ClientOptions,
    group: &str,
    daemon: &mut DaemonClient,
    reading: &mut std::collections::BTreeSet<u64>,
    said: &Value,
) -> Result<(), CommandError> {
    if let Some(id) = reading
        .iter()
        .copied()
        .find(|id| answer_to(said, *id).is_some())
    {
        reading.remove(&id);
        let result = answer_to(said, id).expect("found above")?;
        for line in result["output"].as_str().unwrap_or_default().lines() {
            match serde_json::from_str::<ShownLine>(line) {
                Ok(l) => print_line(opts, group, &l),
                Err(_) => println!("{line}"),
            }
        }
        return Ok(());
    }
    if said["method"] != "event" {
        return Ok(());
    }
    let event = &said["params"];
    match event["kind"].as_str() {
        // A burst too large to be told line by line stays unread: read it.
        Some("changed") if reading.is_empty() => {
            reading.insert(daemon.request("recv", json!({"json": true})).await?);
        }
        _ => show_event(opts, group, event),
    }
    Ok(())
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
