//! The actor that owns one inbox: it admits messages by the rules of its
//! [`InboxState`], hands their writes to the store writer without waiting for
//! the disk, holds long-poll waiters and wakes them as writes become durable,
//! and reloads from the store when the writer (or another node) says its view
//! is behind.

use std::time::{Duration, Instant};

use quicnprotochat_wire::IdentityKey;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use super::{InboxMsg, InboxRequest, InboxSettings, Reservation};
use crate::core::inbox::{AckPlan, InboxRefusal, InboxState};
use crate::error::DeliveryError;
use crate::registry::Membership;
use crate::store::StoreError;
use crate::store::StoreWriter;
use crate::store::writer::WriteOp;

/// What an inbox actor starts from.
pub struct InboxArgs {
    pub(super) writer: StoreWriter,
    pub(super) settings: InboxSettings,
    /// The inbox (its key) and its place in the registry.
    pub(super) membership: Membership<IdentityKey, InboxMsg>,
}

impl InboxArgs {
    fn inbox(&self) -> IdentityKey {
        *self.membership.key()
    }
}

/// The actor that owns one inbox's state.
#[derive(Clone)]
pub struct InboxActor;

/// An inbox actor's state: its marks and long-poll waiters.
pub struct InboxActorState {
    args: InboxArgs,
    /// `None` until the marks are loaded in `post_start`.
    inbox: Option<InboxState>,
    waiters: Vec<Waiter>,
    last_request: Instant,
}

impl Actor for InboxActor {
    type Msg = InboxMsg;
    type State = InboxActorState;
    type Arguments = InboxArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let period = (args.settings.idle_after / 2).max(Duration::from_millis(10));
        myself.send_interval(period, || InboxMsg::IdleCheck);
        Ok(InboxActorState {
            args,
            inbox: None,
            waiters: Vec::new(),
            last_request: Instant::now(),
        })
    }

    async fn post_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Requests wait in the mailbox until this load is done. Loading through the
        // writer orders it after every write a predecessor actor submitted.
        let meta = state.args.writer.load(state.args.inbox()).await?;
        state.inbox = Some(InboxState::recovered(meta));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let InboxMsg::Reload = message {
            reload(state).await?;
            return Ok(());
        }
        let inbox = state
            .inbox
            .as_mut()
            .ok_or_else(|| StoreError::Corrupt("inbox used before load".into()))?;
        match message {
            InboxMsg::Request(request) => {
                state.args.membership.taken();
                state.last_request = Instant::now();
                match request {
                    InboxRequest::Enqueue { payload, reply } => {
                        match inbox.admit(payload.len(), state.args.settings.limits) {
                            Ok(seq) => {
                                state
                                    .args
                                    .writer
                                    .submit(WriteOp::Append {
                                        inbox: state.args.inbox(),
                                        seq,
                                        payload,
                                        notify: myself,
                                        reply,
                                    })
                                    .await
                            }
                            Err(refusal) => {
                                let _ = reply.send(Err(refusal.into()));
                            }
                        }
                    }
                    InboxRequest::Reserve {
                        lens,
                        admission,
                        reply,
                    } => match inbox.reserve(lens, state.args.settings.limits, admission) {
                        Err(refusal) => {
                            let _ = reply.send(Err(refusal.into()));
                        }
                        Ok(reserved) => {
                            let (submitted, decision) = oneshot::channel();
                            let reservation = Reservation {
                                first: reserved.first(),
                                notify: myself.clone(),
                                submitted,
                            };
                            let used =
                                reply.send(Ok(reservation)).is_ok() && decision.await.is_ok();
                            inbox.settle(reserved, used);
                        }
                    },
                    InboxRequest::Purge { reply } => {
                        let everything = inbox.assigned();
                        ack(&state.args, &myself, inbox, everything, reply).await;
                    }
                    InboxRequest::Ack { up_to, reply } => {
                        // On a shared store another node may have stored (and
                        // served) seqs this actor has not heard of yet.
                        let inbox = if up_to > inbox.assigned() && state.args.writer.is_shared() {
                            reload(state).await?;
                            state.inbox.as_mut().expect("reloaded")
                        } else {
                            inbox
                        };
                        ack(&state.args, &myself, inbox, up_to, reply).await;
                        if let Some(seq) = inbox.missed_marker_due(state.args.settings.limits) {
                            state
                                .args
                                .writer
                                .submit(WriteOp::AppendMissedMarker {
                                    inbox: state.args.inbox(),
                                    seq,
                                    notify: myself.clone(),
                                })
                                .await;
                        }
                    }
                    InboxRequest::Wait { after, reply } => {
                        if inbox.has_durable_after(after) {
                            let _ = reply.send(Ok(()));
                        } else {
                            state.waiters.retain(|(_, w)| !w.is_closed());
                            let max = state.args.settings.long_polls;
                            if state.waiters.len() >= max {
                                let _ =
                                    reply.send(Err(InboxRefusal::TooManyWaiters { max }.into()));
                            } else {
                                state.waiters.push((after, reply));
                            }
                        }
                    }
                    InboxRequest::Crash => panic!("inbox actor crash requested"),
                }
            }
            InboxMsg::Durable(seq) => {
                inbox.mark_durable(seq);
                wake_ready(&mut state.waiters, inbox);
            }
            InboxMsg::AckDurable(up_to) => inbox.mark_ack_durable(up_to),
            InboxMsg::Reload => unreachable!("handled above"),
            InboxMsg::Resync(why) => {
                return Err(format!("inbox state out of step with the store: {why}").into());
            }
            InboxMsg::IdleCheck | InboxMsg::Retire => {
                state.waiters.retain(|(_, w)| !w.is_closed());
                let idle = matches!(message, InboxMsg::Retire)
                    || state.last_request.elapsed() >= state.args.settings.idle_after;
                if state.waiters.is_empty()
                    && idle
                    && state.args.membership.try_retire(myself.get_id()).await
                {
                    myself.stop(Some("idle".into()));
                }
            }
        }
        Ok(())
    }
}

/// Reloads the inbox's marks through the writer (after every write this actor
/// submitted) and wakes the waiters the store's messages satisfy.
async fn reload(state: &mut InboxActorState) -> Result<(), StoreError> {
    let meta = state.args.writer.load(state.args.inbox()).await?;
    let inbox = state.inbox.insert(InboxState::recovered(meta));
    wake_ready(&mut state.waiters, inbox);
    Ok(())
}

/// Applies an ack to the state and hands the deletion to the writer (which
/// answers once it is durable), or answers at once when there is nothing to do.
async fn ack(
    args: &InboxArgs,
    myself: &ActorRef<InboxMsg>,
    inbox: &mut InboxState,
    up_to: u64,
    reply: oneshot::Sender<Result<(), DeliveryError>>,
) {
    // The state counts an ack at once; if its deletion does not become durable
    // the writer makes this actor start again from the store.
    let to = match inbox.ack(up_to) {
        Ok(AckPlan::Delete(range)) => range.to,
        // Deleting nothing more, this write commits no sooner than the one in
        // flight: the answer then promises what it says.
        Ok(AckPlan::AfterInFlight) => up_to,
        Ok(AckPlan::Done) => {
            let _ = reply.send(Ok(()));
            return;
        }
        Err(refusal) => {
            let _ = reply.send(Err(refusal.into()));
            return;
        }
    };
    args.writer
        .submit(WriteOp::Ack {
            inbox: args.inbox(),
            up_to: to,
            reply,
            notify: myself.clone(),
        })
        .await
}

type Waiter = (u64, oneshot::Sender<Result<(), DeliveryError>>);

fn wake_ready(waiters: &mut Vec<Waiter>, inbox: &InboxState) {
    let mut i = 0;
    while i < waiters.len() {
        if inbox.has_durable_after(waiters[i].0) {
            let (_, w) = waiters.swap_remove(i);
            let _ = w.send(Ok(()));
        } else {
            i += 1;
        }
    }
}
