//! Group actors and their registry: the node side of MLS groups.
//!
//! One [`GroupActor`] per group id owns the group's [`EpochFence`]. It handles one
//! commit at a time: the fence is checked, the commit's deliveries (the commit to
//! every member, Welcomes to new members) and the fence's new position are written
//! in ONE store transaction, and only then is the next commit looked at. So the
//! first commit at an epoch wins, every later one at that epoch is `STALE_EPOCH`,
//! and every member inbox sees accepted commits in the same order.
//!
//! A group actor with nothing to do for a while stops (its fence is on disk), by
//! the inbox registry's rule: every message is sent under the registry's lock and
//! counted, and an actor retires only under that lock with no counted message
//! unprocessed, so nothing sent to it is dropped.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quicnprotochat_wire::{ErrorCode, IdentityKey, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{Mutex, oneshot};

use crate::core::epoch::{EpochFence, FenceRefusal};
use crate::error::DeliveryError;
use crate::inbox::{Delivery, InboxRegistry};
use crate::store::server::group_fence;
use crate::store::writer::{FenceWrite, StoreWriter, TransactError};

/// Longest group id the node keeps (MLS group ids are usually 16–32 bytes).
pub const MAX_GROUP_ID_LEN: usize = 256;

/// Why a commit was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The epoch fence refused it: the caller's view of the group is behind (or
    /// invented).
    #[error(transparent)]
    Fence(#[from] FenceRefusal),
    /// Storing the deliveries failed or was refused; nothing was stored and the
    /// fence did not move.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
}

impl From<CommitError> for WireError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Fence(f @ FenceRefusal::Stale { .. }) => {
                WireError::new(ErrorCode::StaleEpoch, f.to_string())
            }
            CommitError::Fence(f @ FenceRefusal::Ahead { .. }) => {
                WireError::new(ErrorCode::BadRequest, f.to_string())
            }
            CommitError::Fence(f @ FenceRefusal::NotAMember) => {
                WireError::new(ErrorCode::Unauthorized, f.to_string())
            }
            CommitError::Delivery(d) => d.into(),
        }
    }
}

/// Messages to a group actor.
pub enum GroupMsg {
    Commit {
        epoch: u64,
        committer: IdentityKey,
        /// The members once the commit applies.
        members: BTreeSet<[u8; 32]>,
        deliveries: Vec<Delivery>,
        reply: oneshot::Sender<Result<Vec<u64>, CommitError>>,
    },
    /// Test and chaos hook: make the actor panic, as a bug would.
    #[doc(hidden)]
    Crash,
    /// Periodic check whether the actor may retire (not counted).
    IdleCheck,
}

struct Entry {
    actor: ActorRef<GroupMsg>,
    /// Messages sent to the actor and not yet taken up by it.
    pending: Arc<AtomicU64>,
}

type ActorMap = Arc<Mutex<HashMap<Vec<u8>, Entry>>>;

/// Finds or spawns the actor of a group. Cheap to clone.
#[derive(Clone)]
pub struct GroupRegistry {
    actors: ActorMap,
    inboxes: InboxRegistry,
    writer: StoreWriter,
    supervisor: ActorRef<()>,
    restarts: Arc<AtomicU64>,
    idle_after: Duration,
}

struct GroupSupervisor;

impl Actor for GroupSupervisor {
    type Msg = ();
    type State = (ActorMap, Arc<AtomicU64>);
    type Arguments = (ActorMap, Arc<AtomicU64>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        (actors, restarts): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A failed group actor is forgotten; the next commit for the group spawns a
        // fresh one, which reloads the fence through the writer (after every write
        // its predecessor submitted).
        if let SupervisionEvent::ActorFailed(cell, reason) = event {
            tracing::warn!(actor = %cell.get_id(), %reason, "group actor failed; it restarts from the store on next use");
            restarts.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::telemetry::ACTOR_RESTARTS_TOTAL).increment(1);
            actors
                .lock()
                .await
                .retain(|_, e| e.actor.get_id() != cell.get_id());
        }
        Ok(())
    }
}

impl GroupRegistry {
    /// Starts the registry; group actors idle for `idle_after` stop.
    pub async fn start(
        inboxes: InboxRegistry,
        writer: StoreWriter,
        idle_after: Duration,
    ) -> Result<GroupRegistry, ractor::SpawnErr> {
        let actors: ActorMap = Arc::default();
        let restarts = Arc::new(AtomicU64::new(0));
        let (supervisor, _) =
            Actor::spawn(None, GroupSupervisor, (actors.clone(), restarts.clone())).await?;
        Ok(GroupRegistry {
            actors,
            inboxes,
            writer,
            supervisor,
            restarts,
            idle_after,
        })
    }

    /// How many group actors are alive.
    pub async fn live_actors(&self) -> usize {
        self.actors.lock().await.len()
    }

    /// Forgets the actor `id` of `group_id` if nothing sent to it is unprocessed;
    /// the caller (that actor) then stops.
    async fn try_retire(actors: &ActorMap, group_id: &[u8], id: ractor::ActorId) -> bool {
        let mut actors = actors.lock().await;
        match actors.get(group_id) {
            Some(e) if e.actor.get_id() == id && e.pending.load(Ordering::Acquire) == 0 => {
                actors.remove(group_id);
                true
            }
            _ => false,
        }
    }

    /// How many group actors failed and were replaced.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    async fn send(&self, group_id: &[u8], msg: GroupMsg) -> Result<(), DeliveryError> {
        let mut actors = self.actors.lock().await;
        let mut msg = msg;
        for _ in 0..2 {
            let entry = match actors.get(group_id) {
                Some(e) => e,
                None => {
                    let pending = Arc::new(AtomicU64::new(0));
                    let args = GroupArgs {
                        group_id: group_id.to_vec(),
                        inboxes: self.inboxes.clone(),
                        writer: self.writer.clone(),
                        actors: Arc::downgrade(&self.actors),
                        pending: pending.clone(),
                        idle_after: self.idle_after,
                    };
                    let (actor, _) =
                        Actor::spawn_linked(None, GroupActor, args, self.supervisor.get_cell())
                            .await
                            .map_err(|_| DeliveryError::Restarting)?;
                    actors
                        .entry(group_id.to_vec())
                        .or_insert(Entry { actor, pending })
                }
            };
            entry.pending.fetch_add(1, Ordering::AcqRel);
            match entry.actor.send_message(msg) {
                Ok(()) => return Ok(()),
                Err(ractor::MessagingErr::SendErr(m)) => {
                    entry.pending.fetch_sub(1, Ordering::AcqRel);
                    actors.remove(group_id);
                    msg = m;
                }
                Err(_) => return Err(DeliveryError::Restarting),
            }
        }
        Err(DeliveryError::Restarting)
    }

    /// Accepts the commit made at `epoch` if it is the first at that epoch, storing
    /// its deliveries and moving the fence in one transaction; returns the seqs.
    pub async fn commit(
        &self,
        group_id: &[u8],
        epoch: u64,
        committer: IdentityKey,
        members: BTreeSet<[u8; 32]>,
        deliveries: Vec<Delivery>,
    ) -> Result<Vec<u64>, CommitError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            group_id,
            GroupMsg::Commit {
                epoch,
                committer,
                members,
                deliveries,
                reply,
            },
        )
        .await?;
        rx.await.map_err(|_| DeliveryError::Restarting)?
    }

    /// Test and chaos hook: makes the group's actor panic.
    #[doc(hidden)]
    pub async fn crash(&self, group_id: &[u8]) -> Result<(), DeliveryError> {
        self.send(group_id, GroupMsg::Crash).await
    }

    /// Stops every group actor and the supervisor (node shutdown).
    pub async fn stop(&self) {
        for (_, e) in self.actors.lock().await.drain() {
            e.actor.stop(Some("node shutdown".into()));
        }
        self.supervisor.stop(Some("node shutdown".into()));
    }
}

pub struct GroupArgs {
    group_id: Vec<u8>,
    inboxes: InboxRegistry,
    writer: StoreWriter,
    actors: std::sync::Weak<Mutex<HashMap<Vec<u8>, Entry>>>,
    pending: Arc<AtomicU64>,
    idle_after: Duration,
}

/// The actor that owns one group's epoch fence.
pub struct GroupActor;

pub struct GroupActorState {
    args: GroupArgs,
    fence: EpochFence,
    last_commit: Instant,
}

impl Actor for GroupActor {
    type Msg = GroupMsg;
    type State = GroupActorState;
    type Arguments = GroupArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let period = (args.idle_after / 2).max(Duration::from_millis(10));
        myself.send_interval(period, || GroupMsg::IdleCheck);
        // Read through the writer, so a predecessor's in-flight commit is seen.
        let gid = args.group_id.clone();
        let (next, members) = args
            .writer
            .transact(move |txn| group_fence(txn, &gid).map_err(|e| e.to_string()))
            .await
            .map_err(|e| match e {
                TransactError::Refused(why) => why,
                TransactError::Store(e) => e.to_string(),
            })?;
        Ok(GroupActorState {
            args,
            fence: EpochFence::recovered(next, members.into_iter().collect()),
            last_commit: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, GroupMsg::IdleCheck) {
            state.args.pending.fetch_sub(1, Ordering::AcqRel);
        }
        match message {
            GroupMsg::IdleCheck => {
                if state.last_commit.elapsed() >= state.args.idle_after
                    && let Some(actors) = state.args.actors.upgrade()
                    && GroupRegistry::try_retire(&actors, &state.args.group_id, myself.get_id())
                        .await
                {
                    myself.stop(Some("idle".into()));
                }
            }
            GroupMsg::Commit {
                epoch,
                committer,
                members,
                deliveries,
                reply,
            } => {
                state.last_commit = Instant::now();
                if let Err(refusal) = state.fence.check(epoch, &committer.0) {
                    if matches!(refusal, FenceRefusal::Stale { .. }) {
                        metrics::counter!(crate::telemetry::STALE_EPOCH_TOTAL).increment(1);
                    }
                    let _ = reply.send(Err(refusal.into()));
                    return Ok(());
                }
                let fence = FenceWrite {
                    group_id: state.args.group_id.clone(),
                    next_epoch: epoch + 1,
                    members: members.iter().copied().collect(),
                };
                let next = state.fence.after_accepting(epoch, members);
                match state
                    .args
                    .inboxes
                    .enqueue_many(deliveries, Some(fence))
                    .await
                {
                    Ok(seqs) => {
                        state.fence = next;
                        let _ = reply.send(Ok(seqs));
                    }
                    Err(DeliveryError::Refused(r)) => {
                        let _ = reply.send(Err(DeliveryError::Refused(r).into()));
                    }
                    Err(other) => {
                        // Whether the write reached the disk is unknown: restart and
                        // learn the fence from the store.
                        let why = other.to_string();
                        let _ = reply.send(Err(other.into()));
                        return Err(format!("commit outcome unknown: {why}").into());
                    }
                }
            }
            GroupMsg::Crash => panic!("group actor crash requested"),
        }
        Ok(())
    }
}
