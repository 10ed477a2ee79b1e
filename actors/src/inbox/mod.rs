//! Inbox actors and their registry.
//!
//! One [`InboxActor`] per active inbox owns its [`InboxState`](crate::core::inbox::InboxState): it assigns seqs,
//! enforces limits and holds long-poll waiters, but never waits for the disk: it
//! hands each write and the caller's reply port to the [`StoreWriter`] and goes on.
//!
//! The [`InboxRegistry`] finds or spawns the actor for an inbox (see
//! [`crate::registry`]: at most one live actor per inbox, idle ones retire without
//! dropping a message); a successor loads its marks through the writer, after every
//! write of its predecessor has committed.

use std::time::Duration;

use quicnprotochat_wire::IdentityKey;
use ractor::ActorRef;
use tokio::sync::oneshot;

use crate::core::inbox::{Admission, InboxLimits, InboxRefusal};
use crate::error::DeliveryError;
use crate::registry::{Capacity, Registry};
use crate::store::StoreWriter;
use crate::store::writer::{FenceWrite, MultiAppend, SharedRef, SharedWrite, WriteOp};

mod actor;
pub use actor::{InboxActor, InboxActorState, InboxArgs};

/// Messages to an inbox actor.
pub enum InboxMsg {
    /// A request from a caller, counted by the registry.
    Request(InboxRequest),
    /// Every seq up to this one is committed (from the writer).
    Durable(u64),
    /// Every ack up to this seq is committed (from the writer).
    AckDurable(u64),
    /// The writer found this actor's view inconsistent with the disk: restart.
    Resync(String),
    /// Another node wrote to this inbox (a shared store): reload the marks
    /// from the store, after every write this actor submitted, and wake the
    /// long-polls the new messages satisfy.
    Reload,
    /// Periodic check whether the actor may retire.
    IdleCheck,
    /// The registry is at capacity: retire now unless something is held that
    /// only memory has (a long-poll waiter).
    Retire,
}

/// What callers ask of an inbox.
pub enum InboxRequest {
    /// Store a message; answered with its seq once durable.
    Enqueue {
        /// What to store.
        payload: Vec<u8>,
        /// Answered with the seq once durable.
        reply: oneshot::Sender<Result<u64, DeliveryError>>,
    },
    /// Admit `lens.len()` messages for a write that spans several inboxes. On
    /// success the actor answers a [`Reservation`] and then processes nothing else
    /// until the coordinator says whether the write went to the store, so the
    /// reserved seqs are the next ones the store sees for this inbox (or are
    /// taken back without a gap).
    Reserve {
        /// The payload lengths of the messages to admit.
        lens: Vec<usize>,
        /// What kind of message they are (how full the inbox may get).
        admission: Admission,
        /// Answered with the reservation.
        reply: oneshot::Sender<Result<Reservation, DeliveryError>>,
    },
    /// Delete up to `up_to`; answered once durable.
    Ack {
        /// Delete everything up to this seq.
        up_to: u64,
        /// Answered once the deletion is durable.
        reply: oneshot::Sender<Result<(), DeliveryError>>,
    },
    /// Answered (with `Ok`) as soon as a durable, unacknowledged message with
    /// seq > `after` exists. The caller drops the receiver when it stops waiting.
    /// Refused at once when the inbox has as many waiters as it may hold.
    Wait {
        /// Wake for a durable message after this seq.
        after: u64,
        /// Answered when one exists, or refused over the waiter cap.
        reply: oneshot::Sender<Result<(), DeliveryError>>,
    },
    /// Delete everything queued (the device was removed); answered once durable.
    Purge {
        /// Answered once the deletion is durable.
        reply: oneshot::Sender<Result<(), DeliveryError>>,
    },
    /// Test and chaos hook: make the actor panic, as a bug would.
    #[doc(hidden)]
    Crash,
}

/// Seqs an inbox actor set aside for a multi-inbox write.
pub struct Reservation {
    /// The first of the reserved seqs (the rest follow it), or, for droppable
    /// messages, why the inbox did not take them: if the write goes ahead they
    /// are counted as missed.
    pub first: Result<u64, InboxRefusal>,
    notify: ActorRef<InboxMsg>,
    /// Sent once the write was handed to the store writer (the seqs are used);
    /// dropped unsent when the write is abandoned (the seqs are taken back).
    submitted: oneshot::Sender<()>,
}

/// One message of a multi-inbox write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The inbox it goes to.
    pub recipient: IdentityKey,
    /// What it says (opaque to the node).
    pub payload: Vec<u8>,
}

/// A body many inboxes share, and who gets it.
pub struct SharedBody {
    /// Stored once.
    pub body: Vec<u8>,
    /// Its recipients (distinct inboxes).
    pub recipients: Vec<SharedRecipient>,
}

/// One recipient of a [`SharedBody`].
pub struct SharedRecipient {
    /// The inbox.
    pub inbox: IdentityKey,
    /// The recipient's own part of the envelope (may be empty).
    pub part: Vec<u8>,
    /// How full the inbox may be to take it.
    pub admission: Admission,
}

/// Settings every inbox actor shares.
#[derive(Debug, Clone, Copy)]
pub struct InboxSettings {
    /// Queue depth and payload limits.
    pub limits: InboxLimits,
    /// An actor with no waiters and no request for this long stops (its state is on
    /// disk), so a million idle inboxes cost disk, not memory.
    pub idle_after: Duration,
    /// Long-poll waiters one inbox holds at once.
    pub long_polls: usize,
    /// Inbox actors alive at once; past it, idle ones are asked to retire early.
    pub live_actors: usize,
}

/// Finds or spawns the actor of an inbox. Cheap to clone.
#[derive(Clone)]
pub struct InboxRegistry {
    actors: Registry<IdentityKey, InboxMsg>,
    writer: StoreWriter,
    settings: InboxSettings,
    /// Held by the one multi-inbox write whose reservations are being made.
    /// A reserving actor waits for its coordinator; with one coordinator
    /// reserving at a time, no two can wait on each other, so its reservations
    /// may all be asked at once.
    reserving: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl InboxRegistry {
    /// Starts the registry and its supervisor.
    pub async fn start(
        writer: StoreWriter,
        settings: InboxSettings,
    ) -> Result<InboxRegistry, ractor::SpawnErr> {
        Ok(InboxRegistry {
            actors: Registry::start(
                "inbox",
                Capacity {
                    live: settings.live_actors,
                    retire: || InboxMsg::Retire,
                },
            )
            .await?,
            writer,
            settings,
            reserving: Default::default(),
        })
    }

    /// How many inbox actors failed and were replaced.
    pub fn restarts(&self) -> u64 {
        self.actors.restarts()
    }

    /// How many inbox actors stopped for being idle.
    pub fn retirements(&self) -> u64 {
        self.actors.retirements()
    }

    /// How many inbox actors are alive.
    pub async fn live_actors(&self) -> usize {
        self.actors.live_actors().await
    }

    /// Delivers `request` to the inbox's actor, spawning it if needed.
    pub async fn send(
        &self,
        inbox: IdentityKey,
        request: InboxRequest,
    ) -> Result<(), DeliveryError> {
        self.actors
            .send(
                &inbox,
                InboxMsg::Request(request),
                InboxActor,
                |membership| InboxArgs {
                    writer: self.writer.clone(),
                    settings: self.settings,
                    membership,
                },
            )
            .await
    }

    /// Stores a message in `inbox`; returns its seq once durable.
    pub async fn enqueue(
        &self,
        inbox: IdentityKey,
        payload: Vec<u8>,
    ) -> Result<u64, DeliveryError> {
        let (reply, rx) = oneshot::channel();
        self.send(inbox, InboxRequest::Enqueue { payload, reply })
            .await?;
        rx.await.map_err(|_| DeliveryError::Restarting)?
    }

    /// Asks every inbox for its reservation at once (under the reservation lock,
    /// which the caller holds until the write is submitted).
    async fn reserve_all(
        &self,
        wanted: Vec<(IdentityKey, Vec<usize>, Admission)>,
    ) -> Vec<Result<Reservation, DeliveryError>> {
        futures::future::join_all(
            wanted
                .into_iter()
                .map(|(inbox, lens, admission)| async move {
                    let (reply, rx) = oneshot::channel();
                    self.send(
                        inbox,
                        InboxRequest::Reserve {
                            lens,
                            admission,
                            reply,
                        },
                    )
                    .await?;
                    match rx.await.unwrap_or(Err(DeliveryError::Restarting)) {
                        Err(DeliveryError::Refused(refusal)) => {
                            Err(DeliveryError::RefusedBy { inbox, refusal })
                        }
                        other => other,
                    }
                }),
        )
        .await
    }

    /// Queues a write over reserved seqs, then frees the reservation lock and
    /// tells each reserving actor its seqs are used (the write is ahead of
    /// anything they queue next); returns the write's outcome once durable.
    async fn submit_reserved<T>(
        &self,
        op: impl FnOnce(crate::store::writer::Reply<T>) -> WriteOp,
        lock: tokio::sync::MutexGuard<'_, ()>,
        submitted: Vec<oneshot::Sender<()>>,
    ) -> Result<T, DeliveryError> {
        let (reply, rx) = oneshot::channel();
        self.writer.submit(op(reply)).await;
        drop(lock);
        for s in submitted {
            let _ = s.send(());
        }
        rx.await.map_err(|_| DeliveryError::Restarting)?
    }

    /// Stores every delivery in one store transaction, all or none, with the
    /// group's new epoch fence if given; returns the seqs in the deliveries' order
    /// once durable. A refusal by any inbox (full, too large) stores nothing.
    pub async fn enqueue_many(
        &self,
        deliveries: Vec<Delivery>,
        fence: Option<FenceWrite>,
    ) -> Result<Vec<u64>, DeliveryError> {
        let mut by_inbox: std::collections::BTreeMap<IdentityKey, Vec<usize>> = Default::default();
        for (i, d) in deliveries.iter().enumerate() {
            by_inbox.entry(d.recipient).or_default().push(i);
        }
        let wanted = by_inbox
            .iter()
            .map(|(inbox, indices)| {
                let lens = indices
                    .iter()
                    .map(|&i| deliveries[i].payload.len())
                    .collect();
                (*inbox, lens, Admission::Regular)
            })
            .collect();
        let lock = self.reserving.lock().await;
        let mut reservations = Vec::with_capacity(by_inbox.len());
        for r in self.reserve_all(wanted).await {
            // Dropping the reservations made so far abandons them.
            let r = r?;
            let first = r.first.clone().map_err(DeliveryError::Refused)?;
            reservations.push((first, r));
            // (Regular admissions never answer a drop: a refusal is an `Err`.)
        }
        let mut seqs = vec![0u64; deliveries.len()];
        // Which delivery each append is, to put the stored seqs in place.
        let mut order = Vec::with_capacity(deliveries.len());
        let mut appends = Vec::with_capacity(deliveries.len());
        let mut payloads: Vec<Option<Vec<u8>>> =
            deliveries.into_iter().map(|d| Some(d.payload)).collect();
        let mut submitted = Vec::with_capacity(reservations.len());
        for ((inbox, indices), (first, r)) in by_inbox.iter().zip(reservations) {
            for (k, &i) in indices.iter().enumerate() {
                let seq = first + k as u64;
                order.push(i);
                appends.push(MultiAppend {
                    inbox: *inbox,
                    seq,
                    payload: payloads[i].take().unwrap_or_default(),
                    notify: r.notify.clone(),
                });
            }
            submitted.push(r.submitted);
        }
        let stored = self
            .submit_reserved(
                |reply| WriteOp::AppendMany {
                    appends,
                    fence,
                    reply,
                },
                lock,
                submitted,
            )
            .await?;
        // The store's seqs: the reserved ones, unless another node sharing
        // the store wrote to an inbox first.
        for (i, seq) in order.into_iter().zip(stored) {
            seqs[i] = seq;
        }
        Ok(seqs)
    }

    /// Stores each shared body once and gives every recipient inbox its own
    /// seq pointing at it, in one store transaction with the group's new fence
    /// if given. An inbox refuses for itself alone: a droppable message it
    /// cannot take is counted as missed for it (in the same transaction); a
    /// refusal of any other kind stores nothing (`Err`). Returns, per body and
    /// recipient, the seq or the inbox's refusal, once durable.
    pub async fn deliver_shared(
        &self,
        group_id: &[u8],
        bodies: Vec<SharedBody>,
        fence: Option<FenceWrite>,
    ) -> Result<Vec<Vec<Result<u64, InboxRefusal>>>, DeliveryError> {
        let wanted = bodies
            .iter()
            .flat_map(|b| {
                b.recipients
                    .iter()
                    .map(|r| (r.inbox, vec![b.body.len()], r.admission))
            })
            .collect();
        let lock = self.reserving.lock().await;
        let answers = self.reserve_all(wanted).await;
        let mut answers = answers.into_iter();
        let mut outcomes = Vec::with_capacity(bodies.len());
        let mut writes = Vec::with_capacity(bodies.len());
        let mut missed = Vec::new();
        let mut submitted = Vec::new();
        for b in bodies {
            let mut body_outcomes = Vec::with_capacity(b.recipients.len());
            let mut refs = Vec::with_capacity(b.recipients.len());
            for r in b.recipients {
                // Any failure abandons every reservation (they are dropped).
                let reservation = answers.next().unwrap_or(Err(DeliveryError::Restarting))?;
                match reservation.first.clone() {
                    Ok(seq) => refs.push(SharedRef {
                        inbox: r.inbox,
                        seq,
                        part: r.part,
                        notify: reservation.notify.clone(),
                    }),
                    Err(_) => missed.push((r.inbox, group_id.to_vec())),
                }
                body_outcomes.push(reservation.first.clone());
                submitted.push(reservation.submitted);
            }
            outcomes.push(body_outcomes);
            writes.push(SharedWrite { body: b.body, refs });
        }
        let stored = self
            .submit_reserved(
                |reply| WriteOp::AppendShared {
                    bodies: writes,
                    missed,
                    fence,
                    reply,
                },
                lock,
                submitted,
            )
            .await?;
        // The store's seqs, in reference order: the reserved ones, unless
        // another node sharing the store wrote to an inbox first.
        let mut stored = stored.into_iter();
        for seq in outcomes.iter_mut().flatten().flatten() {
            *seq = stored.next().unwrap_or(*seq);
        }
        Ok(outcomes)
    }

    /// Acknowledges (deletes) messages of `inbox` up to `up_to`, durably.
    pub async fn ack(&self, inbox: IdentityKey, up_to: u64) -> Result<(), DeliveryError> {
        let (reply, rx) = oneshot::channel();
        self.send(inbox, InboxRequest::Ack { up_to, reply }).await?;
        rx.await.map_err(|_| DeliveryError::Restarting)?
    }

    /// Waits until `inbox` has a durable message after `after`, or `timeout` passes.
    /// Returns whether something arrived.
    pub async fn wait(
        &self,
        inbox: IdentityKey,
        after: u64,
        timeout: Duration,
    ) -> Result<bool, DeliveryError> {
        let (reply, rx) = oneshot::channel();
        self.send(inbox, InboxRequest::Wait { after, reply })
            .await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(true),
            Ok(Ok(Err(refused))) => Err(refused),
            Ok(Err(_)) => Err(DeliveryError::Restarting),
            Err(_) => Ok(false),
        }
    }

    /// Deletes every queued message of `inbox`, durably.
    pub async fn purge(&self, inbox: IdentityKey) -> Result<(), DeliveryError> {
        let (reply, rx) = oneshot::channel();
        self.send(inbox, InboxRequest::Purge { reply }).await?;
        rx.await.map_err(|_| DeliveryError::Restarting)?
    }

    /// Tells the inbox's actor, if one is alive, that another node wrote to
    /// the inbox (see [`InboxMsg::Reload`]).
    pub async fn reload(&self, inbox: IdentityKey) -> bool {
        self.actors.send_if_live(&inbox, InboxMsg::Reload).await
    }

    /// Test and chaos hook: makes the inbox's actor panic.
    #[doc(hidden)]
    pub async fn crash(&self, inbox: IdentityKey) -> Result<(), DeliveryError> {
        self.send(inbox, InboxRequest::Crash).await
    }

    /// Stops every inbox actor and the supervisor (node shutdown).
    pub async fn stop(&self) {
        self.actors.stop().await;
    }
}
