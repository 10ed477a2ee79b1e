//! The client's end of inbox push (`Session.subscribe`): an `InboxReceiver`
//! served on the connection, handing what the node pushes to a channel.

use quicnprotochat_wire::node_capnp::inbox_receiver;
use tokio::sync::mpsc;

use super::*;

/// What a push subscription hands its listener.
#[derive(Debug)]
pub enum Pushed {
    /// The next envelopes of the own inbox, in seq order (ack them as fetched ones).
    Batch(Vec<Envelope>),
    /// The node ended the subscription, with its reason (nothing more comes).
    Ended(ClientError),
}

/// Served to the node: each `deliver` is answered once the batch is in the
/// channel, so a listener that falls behind slows the node's next call down
/// instead of piling batches up here (the channel bounds what waits).
pub(super) struct InboxReceiver {
    pub(super) to: mpsc::Sender<Pushed>,
}

impl inbox_receiver::Server for InboxReceiver {
    async fn deliver(
        self: capnp::capability::Rc<Self>,
        params: inbox_receiver::DeliverParams,
        _: inbox_receiver::DeliverResults,
    ) -> Result<(), capnp::Error> {
        let list = read_envelopes(params.get()?.get_envelopes()?)
            .map_err(|e| capnp::Error::failed(format!("malformed push: {e}")))?;
        self.to
            .send(Pushed::Batch(list))
            .await
            .map_err(|_| capnp::Error::failed("the client stopped listening".into()))
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
