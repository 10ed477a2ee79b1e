//! Group actors and their registry: the node side of MLS groups.
//!
//! One [`GroupActor`] per group id owns the group's [`EpochFence`]. It handles one
//! commit at a time: the fence is checked, the commit's deliveries (the commit to
//! every member, Welcomes to new members) and the fence's new position are written
//! in ONE store transaction, and only then is the next commit looked at. So the
//! first commit at an epoch wins, every later one at that epoch is `STALE_EPOCH`,
//! and every member inbox sees accepted commits in the same order.
//!
//! A group actor with nothing to do for a while stops (its fence is on disk);
//! [`crate::registry`] makes sure that drops no message.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quicnprotochat_wire::{ErrorCode, IdentityKey, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use crate::core::epoch::{
    EpochFence, FenceRefusal, check_group_quota, check_reaches_members, keeps_group_info,
};
use crate::core::fanout::{FanoutRefusal, commit_fanout, send_recipients, split_removed};
use crate::core::inbox::{Admission, InboxRefusal};
use crate::error::DeliveryError;
use crate::inbox::{Delivery, InboxRegistry, SharedBody, SharedRecipient};
use crate::registry::{Capacity, Membership, Registry};
use crate::store::StoreWriter;
use crate::store::ops::GroupWrite;
use crate::store::writer::{FenceWrite, WriteOp};

pub use crate::core::commit::MAX_GROUP_ID_LEN;

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
    /// The call names the wrong recipients for this group.
    #[error(transparent)]
    Fanout(#[from] FanoutRefusal),
    /// A typed refusal decided before the fence is asked (today only the
    /// disk's high-water mark, `STORAGE_FULL`): passed on as it is.
    #[error(transparent)]
    Refused(#[from] WireError),
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
            CommitError::Fence(f @ FenceRefusal::Undelivered { .. }) => {
                WireError::new(ErrorCode::BadRequest, f.to_string())
            }
            CommitError::Fence(f @ FenceRefusal::TooManyGroups { .. }) => {
                WireError::new(ErrorCode::QuotaExceeded, f.to_string())
            }
            CommitError::Refused(w) => w,
            CommitError::Delivery(d) => d.into(),
            CommitError::Fanout(f @ FanoutRefusal::NotAMember) => {
                WireError::new(ErrorCode::Unauthorized, f.to_string())
            }
            CommitError::Fanout(f) => WireError::new(ErrorCode::BadRequest, f.to_string()),
        }
    }
}

/// Messages to a group actor.
pub enum GroupMsg {
    /// Offer a commit made at `epoch`; answered with the deliveries' seqs or a refusal.
    Commit {
        /// The epoch the commit was made in.
        epoch: u64,
        /// Who commits (must be a member once the group has a commit).
        committer: IdentityKey,
        /// The members once the commit applies.
        members: BTreeSet<[u8; 32]>,
        /// The commit (and Welcomes, receipt) for each recipient.
        deliveries: Vec<Delivery>,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<Vec<u64>, CommitError>>,
    },
    /// Offer a commit with shared bodies (commitGroup); answered with how many
    /// inboxes got a copy, or a refusal.
    CommitShared {
        /// The commit and its bodies.
        commit: SharedCommit,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<u32, CommitError>>,
    },
    /// The group's members as of its last accepted commit (none before one).
    Members {
        /// Where they go.
        reply: oneshot::Sender<BTreeSet<[u8; 32]>>,
    },
    /// Test and chaos hook: make the actor panic, as a bug would.
    #[doc(hidden)]
    Crash,
    /// Periodic check whether the actor may retire (not counted).
    IdleCheck,
    /// The registry is at capacity: retire now (not counted; the fence is on disk).
    Retire,
}

/// A commit whose bodies are uploaded once (commitGroup): the node derives who
/// gets which from the group's fence.
pub struct SharedCommit {
    /// The epoch the commit was made in.
    pub epoch: u64,
    /// Who commits.
    pub committer: IdentityKey,
    /// The members once the commit applies.
    pub members: BTreeSet<[u8; 32]>,
    /// For every member before the commit but the committer.
    pub commit_body: Vec<u8>,
    /// For every member the commit adds (empty when it adds none).
    pub welcome_body: Vec<u8>,
    /// For the committer.
    pub receipt_body: Vec<u8>,
    /// Per-recipient parts, where the bodies need them.
    pub parts: std::collections::BTreeMap<[u8; 32], Vec<u8>>,
    /// The GroupInfo the commit publishes for the epoch it leads to, if any.
    pub group_info: Option<Vec<u8>>,
    /// `Some` for an external commit: the committer joins from outside, vouched
    /// for by these devices of its account (one must be a member).
    pub joining: Option<BTreeSet<[u8; 32]>>,
}

/// What became of one recipient of a group send.
pub type SendOutcome = (IdentityKey, Result<u64, InboxRefusal>);

/// Finds or spawns the actor of a group. Cheap to clone.
#[derive(Clone)]
pub struct GroupRegistry {
    actors: Registry<Vec<u8>, GroupMsg>,
    inboxes: InboxRegistry,
    writer: StoreWriter,
    settings: GroupSettings,
    directory: Directory,
}

/// Whether an inbox belongs to a registered device (the node's account
/// directory). A group's fences name MLS members; a member whose device was
/// removed stays named until someone commits its removal, and meanwhile the
/// fan-out skips it: nothing new is stored for it, and it fails no delivery.
pub type Directory = Arc<dyn Fn(&IdentityKey) -> bool + Send + Sync>;

/// What every group actor shares.
#[derive(Clone)]
pub struct GroupSettings {
    /// A group actor with no commit for this long stops.
    pub idle_after: Duration,
    /// Group actors alive at once; past it idle ones are asked to retire early.
    pub live_actors: usize,
    /// Groups one device may create (live fences it started).
    pub groups_per_device: u64,
    /// Bytes of kept GroupInfos one device may have published.
    pub group_info_bytes_per_device: u64,
    /// Whether the store's disk has room for a new group.
    pub disk: crate::disk::DiskRoom,
}

impl GroupRegistry {
    /// Starts the registry.
    pub async fn start(
        inboxes: InboxRegistry,
        writer: StoreWriter,
        settings: GroupSettings,
        directory: Directory,
    ) -> Result<GroupRegistry, ractor::SpawnErr> {
        Ok(GroupRegistry {
            actors: Registry::start(
                "group",
                Capacity {
                    live: settings.live_actors,
                    retire: || GroupMsg::Retire,
                },
            )
            .await?,
            inboxes,
            writer,
            settings,
            directory,
        })
    }

    /// How many group actors failed and were replaced.
    pub fn restarts(&self) -> u64 {
        self.actors.restarts()
    }

    /// How many group actors are alive.
    pub async fn live_actors(&self) -> usize {
        self.actors.live_actors().await
    }

    async fn tell(&self, group_id: &[u8], msg: GroupMsg) -> Result<(), DeliveryError> {
        self.actors
            .send(&group_id.to_vec(), msg, GroupActor, |membership| {
                GroupArgs {
                    inboxes: self.inboxes.clone(),
                    writer: self.writer.clone(),
                    membership,
                    settings: self.settings.clone(),
                    directory: self.directory.clone(),
                }
            })
            .await
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
        check_reaches_members(
            &members,
            &committer.0,
            deliveries.iter().map(|d| &d.recipient.0),
        )?;
        let (reply, rx) = oneshot::channel();
        self.tell(
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

    /// Accepts a commit with shared bodies if it is the first at its epoch,
    /// storing them for the recipients the fence names and moving the fence in
    /// one transaction; returns how many inboxes got a copy.
    pub async fn commit_shared(
        &self,
        group_id: &[u8],
        commit: SharedCommit,
    ) -> Result<u32, CommitError> {
        let (reply, rx) = oneshot::channel();
        self.tell(group_id, GroupMsg::CommitShared { commit, reply })
            .await?;
        rx.await.map_err(|_| DeliveryError::Restarting)?
    }

    /// The group's members as of its last accepted commit (none before one).
    pub async fn members(&self, group_id: &[u8]) -> Result<BTreeSet<[u8; 32]>, DeliveryError> {
        let (reply, rx) = oneshot::channel();
        self.tell(group_id, GroupMsg::Members { reply }).await?;
        rx.await.map_err(|_| DeliveryError::Restarting)
    }

    /// Stores `body` once for the group's members (`named`, or all but the
    /// sender), each with its part; every inbox takes or drops its copy on its
    /// own. Returns each recipient's outcome once durable.
    pub async fn send(
        &self,
        group_id: &[u8],
        sender: IdentityKey,
        body: Vec<u8>,
        named: Vec<([u8; 32], Vec<u8>)>,
    ) -> Result<Vec<SendOutcome>, CommitError> {
        let members = self.members(group_id).await?;
        let keys: Vec<[u8; 32]> = named.iter().map(|(k, _)| *k).collect();
        let (recipients, removed) =
            split_removed(send_recipients(&members, &sender.0, &keys)?, |k| {
                (self.directory)(&IdentityKey(*k))
            });
        let mut parts: std::collections::BTreeMap<[u8; 32], Vec<u8>> = named.into_iter().collect();
        let recipients: Vec<SharedRecipient> = recipients
            .into_iter()
            .map(|k| SharedRecipient {
                inbox: IdentityKey(k),
                part: parts.remove(&k).unwrap_or_default(),
                admission: Admission::Droppable,
            })
            .collect();
        let keys: Vec<IdentityKey> = recipients.iter().map(|r| r.inbox).collect();
        let mut outcomes = self
            .inboxes
            .deliver_shared(group_id, vec![SharedBody { body, recipients }], None)
            .await?;
        Ok(keys
            .into_iter()
            .zip(outcomes.pop().unwrap_or_default())
            .chain(
                removed
                    .into_iter()
                    .map(|k| (IdentityKey(k), Err(InboxRefusal::NoDevice))),
            )
            .collect())
    }

    /// Test and chaos hook: makes the group's actor panic.
    #[doc(hidden)]
    pub async fn crash(&self, group_id: &[u8]) -> Result<(), DeliveryError> {
        self.tell(group_id, GroupMsg::Crash).await
    }

    /// Stops every group actor and the supervisor (node shutdown).
    pub async fn stop(&self) {
        self.actors.stop().await;
    }
}

/// What a group actor starts from.
pub struct GroupArgs {
    inboxes: InboxRegistry,
    writer: StoreWriter,
    /// The group (its id) and its place in the registry.
    membership: Membership<Vec<u8>, GroupMsg>,
    settings: GroupSettings,
    directory: Directory,
}

/// A commit creating a group counts against its device's quota: the count is
/// read through the writer, after every earlier write. No group is created on
/// a disk below its high-water mark.
async fn within_group_quota(args: &GroupArgs, committer: &IdentityKey) -> Result<(), CommitError> {
    args.settings.disk.check("a new group")?;
    let device = committer.0;
    let created = args
        .writer
        .request(|reply| WriteOp::Group(GroupWrite::GroupsCreated { device, reply }))
        .await?;
    check_group_quota(created, args.settings.groups_per_device)?;
    Ok(())
}

/// The GroupInfo a commit publishes, if it fits its committer's quota of kept
/// GroupInfo bytes (read through the writer, after every earlier write; the one
/// it replaces in this group, if the committer's, is freed); `None` past it:
/// the commit goes through, its GroupInfo is not kept.
async fn group_info_within_quota(
    args: &GroupArgs,
    committer: &IdentityKey,
    group_info: Option<Vec<u8>>,
) -> Result<Option<Vec<u8>>, CommitError> {
    let Some(info) = group_info else {
        return Ok(None);
    };
    let device = committer.0;
    let group_id = args.membership.key().clone();
    let (total, here) = args
        .writer
        .request(|reply| {
            WriteOp::Group(GroupWrite::GroupInfoBytes {
                device,
                group_id,
                reply,
            })
        })
        .await?;
    let max = args.settings.group_info_bytes_per_device;
    if keeps_group_info(total, here, info.len() as u64, max) {
        return Ok(Some(info));
    }
    metrics::counter!(crate::telemetry::GROUP_INFOS_NOT_KEPT_TOTAL).increment(1);
    tracing::info!(
        kept = total,
        max,
        "a commit's GroupInfo is past its device's quota: the commit goes on without it"
    );
    Ok(None)
}

/// The actor that owns one group's epoch fence.
#[derive(Clone)]
pub struct GroupActor;

/// A group actor's state: its fence, as persisted.
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
        let period = (args.settings.idle_after / 2).max(Duration::from_millis(10));
        myself.send_interval(period, || GroupMsg::IdleCheck);
        // Read through the writer, so a predecessor's in-flight commit is seen.
        let group_id = args.membership.key().clone();
        let (next, members) = args
            .writer
            .request(|reply| WriteOp::Group(GroupWrite::Fence { group_id, reply }))
            .await?;
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
        if !matches!(message, GroupMsg::IdleCheck | GroupMsg::Retire) {
            state.args.membership.taken();
        }
        match message {
            GroupMsg::IdleCheck | GroupMsg::Retire => {
                let idle = matches!(message, GroupMsg::Retire)
                    || state.last_commit.elapsed() >= state.args.settings.idle_after;
                if idle && state.args.membership.try_retire(myself.get_id()).await {
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
                // A commit that creates the group counts against its device's
                // quota (read through the writer, after every earlier write).
                let creator = if state.fence.creates_group() {
                    if let Err(refusal) = within_group_quota(&state.args, &committer).await {
                        let _ = reply.send(Err(refusal));
                        return Ok(());
                    }
                    Some(committer.0)
                } else {
                    None
                };
                let fence = FenceWrite {
                    group_id: state.args.membership.key().clone(),
                    next_epoch: epoch + 1,
                    members: members.iter().copied().collect(),
                    creator,
                    // This call publishes none: the one kept no longer matches.
                    group_info: None,
                    publisher: committer.0,
                    expected: state.fence.next(),
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
                    Err(
                        refused @ (DeliveryError::Refused(_) | DeliveryError::RefusedBy { .. }),
                    ) => {
                        let _ = reply.send(Err(refused.into()));
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
            GroupMsg::Members { reply } => {
                let _ = reply.send(state.fence.members().clone());
            }
            GroupMsg::CommitShared { commit, reply } => {
                state.last_commit = Instant::now();
                let outcome = commit_shared(state, commit).await;
                if let Err(CommitError::Delivery(e)) = &outcome
                    && !matches!(
                        e,
                        DeliveryError::Refused(_) | DeliveryError::RefusedBy { .. }
                    )
                {
                    // Whether the write reached the disk is unknown: restart and
                    // learn the fence from the store.
                    let why = e.to_string();
                    let _ = reply.send(outcome);
                    return Err(format!("commit outcome unknown: {why}").into());
                }
                let _ = reply.send(outcome);
            }
            GroupMsg::Crash => panic!("group actor crash requested"),
        }
        Ok(())
    }
}

/// One commit with shared bodies: the fence decides, the fan-out plan says who
/// gets which body, and bodies, references and the new fence are stored in one
/// transaction. The fence moves only once that is durable.
async fn commit_shared(state: &mut GroupActorState, c: SharedCommit) -> Result<u32, CommitError> {
    let checked = match &c.joining {
        Some(account) => state.fence.check_join(c.epoch, &c.committer.0, account),
        None => state.fence.check(c.epoch, &c.committer.0),
    };
    if let Err(refusal) = checked {
        if matches!(refusal, FenceRefusal::Stale { .. }) {
            metrics::counter!(crate::telemetry::STALE_EPOCH_TOTAL).increment(1);
        }
        return Err(refusal.into());
    }
    let before = state.fence.next().map(|_| state.fence.members());
    let is_device = |k: &[u8; 32]| (state.args.directory)(&IdentityKey(*k));
    let plan = commit_fanout(
        before,
        &c.committer.0,
        &c.members,
        !c.welcome_body.is_empty(),
    )?
    .without_removed(is_device);
    let mut parts = c.parts;
    // Removed devices get nothing: their parts go too.
    parts.retain(|k, _| is_device(k));
    let mut take = |k: &[u8; 32], admission| SharedRecipient {
        inbox: IdentityKey(*k),
        part: parts.remove(k).unwrap_or_default(),
        admission,
    };
    let bodies = vec![
        SharedBody {
            body: c.commit_body,
            recipients: plan.commit_to.iter().map(|(k, a)| take(k, *a)).collect(),
        },
        SharedBody {
            body: c.welcome_body,
            recipients: plan
                .welcome_to
                .iter()
                .map(|k| take(k, Admission::Handshake))
                .collect(),
        },
        SharedBody {
            body: c.receipt_body,
            recipients: vec![take(&c.committer.0, Admission::Handshake)],
        },
    ];
    if !parts.is_empty() {
        return Err(FanoutRefusal::StrayPart.into());
    }
    let creator = if state.fence.creates_group() {
        within_group_quota(&state.args, &c.committer).await?;
        Some(c.committer.0)
    } else {
        None
    };
    let group_info = group_info_within_quota(&state.args, &c.committer, c.group_info).await?;
    let fence = FenceWrite {
        group_id: state.args.membership.key().clone(),
        next_epoch: c.epoch + 1,
        members: c.members.iter().copied().collect(),
        creator,
        group_info,
        publisher: c.committer.0,
        expected: state.fence.next(),
    };
    let next = state.fence.after_accepting(c.epoch, c.members);
    let gid = state.args.membership.key().clone();
    let outcomes = state
        .args
        .inboxes
        .deliver_shared(&gid, bodies, Some(fence))
        .await?;
    state.fence = next;
    Ok(outcomes.iter().flatten().filter(|o| o.is_ok()).count() as u32)
}
