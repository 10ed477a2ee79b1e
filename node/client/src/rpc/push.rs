//! The client's end of inbox push (`Session.subscribe`): an `InboxReceiver`
//! served on the connection, handing what the node pushes to a channel.

use quicnprotochat_wire::node_capnp::inbox_receiver;
use tokio::sync::mpsc;

use super::*;

/// What a push subscription hands its listener.
#[derive(Debug)]
pub enum Pushed {
    /// The next envelopes of the own inbox, in seq order. The node pushes
    /// nothing more until `applied` is answered; dropping it unanswered ends
    /// the subscription.
    Batch {
        /// The envelopes.
        envelopes: Vec<Envelope>,
        /// Where to say how far the inbox is durably applied (the node acks
        /// through it).
        applied: Applied,
    },
    /// The node ended the subscription, with its reason (nothing more comes).
    Ended(ClientError),
}

/// The answer to one pushed batch.
#[derive(Debug)]
pub struct Applied(tokio::sync::oneshot::Sender<u64>);

impl Applied {
    /// The inbox is durably applied through `seq`: the node deletes through it.
    pub fn up_to(self, seq: u64) {
        let _ = self.0.send(seq);
    }
}

/// Served to the node: each `deliver` is answered once the listener has
/// applied the batch (dropped unanswered, the call fails and the node ends
/// the subscription), so the node pushes
/// what arrives meanwhile in one next call, and a listener that falls behind
/// holds nothing here but the batch it works on.
pub(super) struct InboxReceiver {
    pub(super) to: mpsc::Sender<Pushed>,
}

impl inbox_receiver::Server for InboxReceiver {
    async fn deliver(
        self: capnp::capability::Rc<Self>,
        params: inbox_receiver::DeliverParams,
        mut results: inbox_receiver::DeliverResults,
    ) -> Result<(), capnp::Error> {
        let envelopes = read_envelopes(params.get()?.get_envelopes()?)
            .map_err(|e| capnp::Error::failed(format!("malformed push: {e}")))?;
        let (applied, answer) = tokio::sync::oneshot::channel();
        self.to
            .send(Pushed::Batch {
                envelopes,
                applied: Applied(applied),
            })
            .await
            .map_err(|_| capnp::Error::failed("the client stopped listening".into()))?;
        // Dropped unanswered: the listener let the batch go (it stops
        // listening), so the node must not go on past it.
        let up_to = answer
            .await
            .map_err(|_| capnp::Error::failed("the batch was not applied".into()))?;
        results.get().set_ack_up_to(up_to);
        Ok(())
    }

    async fn ended(
        self: capnp::capability::Rc<Self>,
        params: inbox_receiver::EndedParams,
        _: inbox_receiver::EndedResults,
    ) -> Result<(), capnp::Error> {
        let reason = params.get()?.get_reason()?.to_string().unwrap_or_default();
        let why = match WireError::parse(&reason) {
            Some(w) => ClientError::Refused(w),
            None => ClientError::Protocol(format!("push ended: {reason}")),
        };
        let _ = self.to.send(Pushed::Ended(why)).await;
        Ok(())
    }
}
