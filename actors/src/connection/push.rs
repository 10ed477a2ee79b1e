//! Inbox push (`Session.subscribe`): the node calls the client's
//! `InboxReceiver` with what arrives, instead of answering long-polls.
//!
//! One task per subscription, on the connection's thread (capnp-rpc is
//! `!Send`). It makes one `deliver` call at a time: what arrives while a call
//! is in flight waits in the store and goes in the next call, so a slow client
//! holds at most one batch of the node's memory (a fetch's limits), counted
//! against the connection's reply budget until the stream writes it. The
//! cursor is the subscription's own: pushing deletes nothing. The client acks
//! what it applied in its answer to `deliver` (or with `ack`): a client that
//! answers once it applied a batch costs one round trip per batch where a
//! long-poll costs two (the ack, then the next poll).

use std::sync::Arc;
use std::time::Duration;

use quicnprotochat_wire::node_capnp::inbox_receiver;
use quicnprotochat_wire::{Envelope, WireError};

use super::NodeContext;
use super::session_service::{
    SessionTerms, read_inbox, reply_bytes, session_ended, write_envelopes,
};
use crate::core::budget::{ConnectionBudget, OverBudget};

/// How long one wait for news lasts before the task checks that its session
/// still stands.
const NEWS_WAIT: Duration = Duration::from_secs(30);
/// Pause before trying again when the node's reply budget is full.
const BUDGET_RETRY: Duration = Duration::from_millis(100);
/// How often a subscription looks whether its connection is gone.
const CLOSED_CHECK: Duration = Duration::from_secs(1);

/// A running subscription; dropping it stops the push (a newer subscription
/// replaced it, or its session is gone with the connection).
pub(super) struct Subscription(tokio::task::AbortHandle);

impl Drop for Subscription {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Subscription {
    /// Starts pushing `terms.identity`'s inbox after `after` to `receiver`.
    pub(super) fn start(
        ctx: Arc<NodeContext>,
        budget: ConnectionBudget,
        terms: SessionTerms,
        receiver: inbox_receiver::Client,
        after: u64,
    ) -> Subscription {
        let task = tokio::task::spawn_local(async move {
            let push = Push {
                ctx,
                budget,
                terms,
                receiver,
            };
            // The task holds the receiver, whose connection holds the
            // session that would stop the task: it watches the connection
            // itself, so that a connection closed without a clean disconnect
            // (its replies went unread) frees it too.
            let closed = async {
                while !push.budget.is_closed() {
                    tokio::time::sleep(CLOSED_CHECK).await;
                }
            };
            tokio::select! {
                ended = push.run(after) => {
                    if let Some(reason) = ended {
                        push.end(reason).await;
                    }
                }
                () = closed => {}
            }
        });
        Subscription(task.abort_handle())
    }
}

struct Push {
    ctx: Arc<NodeContext>,
    budget: ConnectionBudget,
    terms: SessionTerms,
    receiver: inbox_receiver::Client,
}

impl Push {
    /// Pushes until something ends it: `Some(reason)` to tell the client,
    /// `None` when the client itself is gone or refused a delivery.
    async fn run(&self, mut after: u64) -> Option<WireError> {
        let inbox = self.terms.identity;
        loop {
            if self.terms.ended(&self.ctx) {
                return Some(session_ended());
            }
            let list = match read_inbox(&self.ctx, inbox, after, 0).await {
                Ok(list) => list,
                Err(e) => return Some(e),
            };
            let Some(last) = list.last().map(|e| e.seq) else {
                if let Err(e) = self.ctx.registry.wait(inbox, after, NEWS_WAIT).await {
                    return Some(WireError::from(e));
                }
                continue;
            };
            // The node may be holding as much as it may: the batch goes once
            // the streams have taken what they hold.
            loop {
                match self.budget.reserve_reply(reply_bytes(&list)) {
                    Ok(()) => break,
                    Err(OverBudget::Closed) => return None,
                    Err(_) => tokio::time::sleep(BUDGET_RETRY).await,
                }
            }
            // `None`: the client is gone or refused the batch; nothing to tell.
            let ack_up_to = self.deliver(list).await?;
            after = last;
            if ack_up_to > 0 {
                if let Err(e) = self.ctx.registry.ack(inbox, ack_up_to).await {
                    return Some(WireError::from(e));
                }
                metrics::counter!(crate::telemetry::ACKS_TOTAL).increment(1);
            }
        }
    }

    /// One `deliver` call: how far the client acked in its answer, `None`
    /// when it did not take the batch.
    async fn deliver(&self, list: Vec<Envelope>) -> Option<u64> {
        let mut req = self.receiver.deliver_request();
        write_envelopes(&list, req.get().init_envelopes(list.len() as u32));
        // Only the request's copy lives on while the client works on it.
        drop(list);
        metrics::counter!(crate::telemetry::PUSHES_TOTAL).increment(1);
        let answer = req
            .send()
            .promise
            .await
            .and_then(|r| Ok(r.get()?.get_ack_up_to()));
        match answer {
            Ok(up_to) => Some(up_to),
            Err(e) => {
                tracing::debug!(error = %e, "push subscription ended by its receiver");
                None
            }
        }
    }

    /// Tells the client why its subscription is over.
    async fn end(&self, reason: WireError) {
        let mut req = self.receiver.ended_request();
        req.get().set_reason(reason.to_string());
        let _ = req.send().promise.await;
    }
}
