//! How a long-running command (`server`, `web`, `chat`, `recv --wait`) stops on
//! SIGINT or SIGTERM, whatever the node's state: the first signal asks for a
//! graceful stop and starts a deadline; when the deadline passes, or a second
//! signal comes, the process exits at once. The deadline is kept by the signal
//! task itself, so no work stuck on the network (a call to a node that is gone,
//! a connection attempt in back-off) can hold the process: what a command does
//! gracefully, it does within [`DEADLINE`] or not at all.
//!
//! Exiting without the graceful end loses nothing acknowledged: the node's and
//! the profile's stores are crash-safe, and what they had not committed was
//! never acknowledged.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// How long graceful work may take after the first signal before the process
/// exits anyway. The promise is "stopped within 2 s" (docs/semantics.md); the
/// rest is for the exit itself on a loaded machine.
pub const DEADLINE: Duration = Duration::from_millis(1500);

/// The exit status of a process that SIGINT stopped before its work ended
/// (128 + the signal's number, the shell's convention).
pub const INTERRUPTED_STATUS: i32 = 130;
/// The same for SIGTERM.
pub const TERMINATED_STATUS: i32 = 143;

/// What a command hears of the stop signals: whether (and when) a graceful
/// stop was asked.
#[derive(Clone, Debug)]
pub struct Shutdown {
    asked: watch::Receiver<bool>,
}

impl Shutdown {
    /// Installs the SIGINT and SIGTERM handlers now: from here on a signal is
    /// a graceful stop, not the default action that kills without a word (so
    /// call it before saying "ready"). `what` names the command in the lines
    /// the stop prints. Must be called inside a tokio runtime.
    ///
    /// First signal: says so on stderr and asks for the stop. Then, a second
    /// signal or the end of [`DEADLINE`] ends the process with
    /// [`INTERRUPTED_STATUS`] or [`TERMINATED_STATUS`] (by the first signal),
    /// saying which.
    pub fn on_signals(what: &'static str) -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let (ask, asked) = watch::channel(false);
        tokio::spawn(async move {
            let (first, status) = tokio::select! {
                _ = int.recv() => ("SIGINT", INTERRUPTED_STATUS),
                _ = term.recv() => ("SIGTERM", TERMINATED_STATUS),
            };
            eprintln!("{what}: {first}, stopping (a second signal stops at once)");
            let _ = ask.send(true);
            tokio::select! {
                _ = int.recv() => {
                    eprintln!("{what}: second signal, stopped at once");
                }
                _ = term.recv() => {
                    eprintln!("{what}: second signal, stopped at once");
                }
                () = tokio::time::sleep(DEADLINE) => {
                    eprintln!(
                        "{what}: stopped without finishing the work in flight (it did not end within {} ms of the signal)",
                        DEADLINE.as_millis()
                    );
                }
            }
            std::process::exit(status);
        });
        Ok(Shutdown { asked })
    }

    /// A stop that is asked by hand (`true` on the sender); for embedding a
    /// command (tests, the demo). Dropping the sender unasked means "never".
    pub fn manual() -> (watch::Sender<bool>, Shutdown) {
        let (ask, asked) = watch::channel(false);
        (ask, Shutdown { asked })
    }

    /// Completes once a stop was asked (at once if it already was); never, if
    /// nobody can ask any more.
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut asked = self.asked.clone();
        async move {
            if asked.wait_for(|a| *a).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Whether a stop was asked.
    pub fn is_requested(&self) -> bool {
        *self.asked.borrow()
    }
}

/// How long one step of a command's graceful end (a last send, closing the
/// profile) may take after the signal. A command takes at most two, so it ends
/// within [`DEADLINE`] and says itself what it abandoned.
pub const FINISHING: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_asked_before_or_after_waiting_is_heard() {
        let (ask, shutdown) = Shutdown::manual();
        let waiting = tokio::spawn(shutdown.requested());
        assert!(!shutdown.is_requested());
        ask.send(true).unwrap();
        waiting.await.unwrap();
        assert!(shutdown.is_requested());
        // Asked already: completes at once.
        shutdown.requested().await;
    }

    #[tokio::test]
    async fn a_stop_nobody_can_ask_never_completes() {
        let (ask, shutdown) = Shutdown::manual();
        drop(ask);
        let never = tokio::time::timeout(Duration::from_millis(200), shutdown.requested()).await;
        assert!(never.is_err());
        assert!(!shutdown.is_requested());
    }
}
