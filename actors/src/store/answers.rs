//! The redb writer's answers, sent from a thread of their own.
//!
//! The writer thread is the node's one serial resource under load: while it
//! wakes the callers of one batch (oneshot replies, inbox actors' `Durable`
//! notes) and frees its payloads, the next batch cannot start. The profile of
//! `loadtest enqueue` put that work at about a tenth of the writer's time
//! (docs/performance.md). Handing it over keeps every promise: a job is sent
//! only after its batch's commit returned, jobs run in the order sent (so an
//! inbox actor still hears of seqs in commit order, and a shutdown is answered
//! after everything before it), and the hand-over is bounded: the writer waits
//! when the answerer is [`BACKLOG`] batches behind.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Batches whose answers may wait for the answerer before the writer waits.
pub(super) const BACKLOG: usize = 2;

type Job = Box<dyn FnOnce() + Send>;

/// Runs answer jobs in order on the `store-answers` thread.
pub(super) struct Answerer {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Answerer {
    /// Starts the thread; if it cannot be started, jobs run on the caller's
    /// thread instead (slower, same order).
    pub(super) fn start() -> Answerer {
        let (tx, rx) = sync_channel::<Job>(BACKLOG);
        match std::thread::Builder::new()
            .name("store-answers".into())
            .spawn(move || {
                for job in rx {
                    // One answer that panics (a reply port's drop, an
                    // after-commit hook) must not take the answers queued
                    // behind it down with the thread.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!("a store answer panicked; the rest are still sent");
                    }
                }
            }) {
            Ok(thread) => Answerer {
                tx: Some(tx),
                thread: Some(thread),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the store's answer thread; answering inline");
                Answerer {
                    tx: None,
                    thread: None,
                }
            }
        }
    }

    /// Runs `job` after every job sent before it.
    pub(super) fn send(&self, job: impl FnOnce() + Send + 'static) {
        let job: Job = Box::new(job);
        let job = match &self.tx {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                // The thread is gone: answer here rather than leave callers
                // waiting.
                Err(returned) => returned.0,
            },
            None => job,
        };
        job();
    }

    /// Waits until every job sent has run.
    pub(super) fn finish(mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn answers_run_in_the_order_sent_and_all_before_finish_returns() {
        let answerer = Answerer::start();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for i in 0..100 {
            let seen = seen.clone();
            answerer.send(move || seen.lock().unwrap().push(i));
        }
        answerer.finish();
        assert_eq!(*seen.lock().unwrap(), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn answers_still_run_after_an_earlier_answer_panicked() {
        let answerer = Answerer::start();
        answerer.send(|| panic!("a reply port's drop panicked"));
        let ran = Arc::new(Mutex::new(false));
        let flag = ran.clone();
        answerer.send(move || *flag.lock().unwrap() = true);
        answerer.finish();
        assert!(*ran.lock().unwrap());
    }
}
