//! The one write path into the node's database, with group commit.
//!
//! A dedicated thread (redb commits block on fsync, which must not stall the async
//! runtime) takes every write that arrived while the previous commit was running,
//! applies them in arrival order in one transaction, commits it durably, and only
//! then answers each caller. So a `seq` is never returned before its fsync, and the
//! cost of one fsync is shared by a whole batch.
//!
//! A failed commit poisons the writer: every later write is refused. Continuing
//! after an fsync failure could acknowledge writes the disk never kept (the
//! PostgreSQL "fsyncgate" lesson), and refusing keeps seqs gap-free on disk.

use std::collections::HashMap;

use quicnprotochat_wire::IdentityKey;
use ractor::ActorRef;
use tokio::sync::{mpsc, oneshot};

use super::answers::Answerer;
use super::crash_point::{self, CrashPoint};
use super::ops::{AccountWrite, GroupWrite};

use super::server::{ServerStore, StoreError, WriteBatch};
use crate::core::inbox::InboxMeta;
use crate::error::DeliveryError;
use crate::inbox::InboxMsg;

/// Where a write's outcome goes.
pub type Reply<T> = oneshot::Sender<Result<T, DeliveryError>>;

/// Most bytes of payload gathered into one transaction.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Most operations gathered into one transaction.
const MAX_BATCH_OPS: usize = 8192;

/// One request to the writer.
pub enum WriteOp {
    /// Store message `seq` of `inbox`; answers the seq once durable, and tells
    /// `notify` (the inbox's actor) which seqs became durable.
    Append {
        /// The inbox it goes to.
        inbox: IdentityKey,
        /// The seq its actor assigned.
        seq: u64,
        /// What to store.
        payload: Vec<u8>,
        /// Told which seqs became durable.
        notify: ActorRef<InboxMsg>,
        /// Answered with the seq once durable.
        reply: Reply<u64>,
    },
    /// Store messages in several inboxes in one transaction, all or none, and
    /// optionally move a group's epoch fence with them (a commit's fan-out).
    /// Answers the seqs, in order, once durable.
    AppendMany {
        /// One message per recipient, seqs reserved by their actors.
        appends: Vec<MultiAppend>,
        /// A group fence to write in the same transaction, if any.
        fence: Option<FenceWrite>,
        /// Answered with the seqs once durable.
        reply: Reply<Vec<u64>>,
    },
    /// Store shared bodies once each, a reference to one for every recipient
    /// (seqs reserved by their actors), the drops counted for full inboxes, and
    /// optionally a group's new fence, all in one transaction, all or none.
    AppendShared {
        /// The bodies and who gets each.
        bodies: Vec<SharedWrite>,
        /// Inboxes that were full, and the group whose message each missed.
        missed: Vec<(IdentityKey, Vec<u8>)>,
        /// A group fence to write in the same transaction, if any.
        fence: Option<FenceWrite>,
        /// Answered once durable with the seqs stored, one per reference in
        /// order (the reserved ones; on a store other nodes write too, the
        /// store's).
        reply: Reply<Vec<u64>>,
    },
    /// Queue the missed-messages marker of `inbox` as `seq` (its actor assigned
    /// it) and clear the count it tells.
    AppendMissedMarker {
        /// The inbox.
        inbox: IdentityKey,
        /// The seq its actor assigned.
        seq: u64,
        /// Told when it is durable.
        notify: ActorRef<InboxMsg>,
    },
    /// Delete messages of `inbox` up to `up_to`; answers once durable.
    Ack {
        /// The inbox.
        inbox: IdentityKey,
        /// Delete everything up to this seq.
        up_to: u64,
        /// Answered once durable.
        reply: Reply<()>,
        /// The inbox's actor, which counted the ack before it was durable: told
        /// to resync from the store if the deletion does not become durable.
        notify: ActorRef<InboxMsg>,
    },
    /// Read the inbox's marks after every earlier write has committed: how a
    /// (re)started inbox actor learns where it stands without racing in-flight
    /// writes of its predecessor.
    Load {
        /// The inbox.
        inbox: IdentityKey,
        /// Answered with its marks.
        reply: Reply<InboxMeta>,
    },
    /// A write of the Authentication Service.
    Account(AccountWrite),
    /// What a group actor asks in write order.
    Group(GroupWrite),
    /// Test hook of the redb store: a closure applied in arrival order inside
    /// the batch's transaction, returning what to do once the commit's fate is
    /// known. It must check every precondition before it writes: a refusal after
    /// a write would still commit that write with the batch. The node itself
    /// writes only through the typed operations; other backends refuse it.
    #[doc(hidden)]
    Custom(CustomWrite),
    /// Finish everything submitted before, then stop.
    Shutdown {
        /// Answered once everything before it is written.
        done: oneshot::Sender<()>,
    },
}

/// One message of a [`WriteOp::AppendMany`].
pub struct MultiAppend {
    /// The inbox it goes to.
    pub inbox: IdentityKey,
    /// The seq its actor reserved.
    pub seq: u64,
    /// What to store.
    pub payload: Vec<u8>,
    /// Told which seqs became durable.
    pub notify: ActorRef<InboxMsg>,
}

/// One shared body of a [`WriteOp::AppendShared`] and its recipients.
pub struct SharedWrite {
    /// Stored once (not at all when it has no recipient).
    pub body: Vec<u8>,
    /// One reference per recipient.
    pub refs: Vec<SharedRef>,
}

/// One recipient of a shared body.
pub struct SharedRef {
    /// The inbox.
    pub inbox: IdentityKey,
    /// The seq its actor reserved.
    pub seq: u64,
    /// The recipient's own part (may be empty).
    pub part: Vec<u8>,
    /// Told which seqs became durable.
    pub notify: ActorRef<InboxMsg>,
}

/// A group's new epoch fence, written with the commit that moves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceWrite {
    /// The group.
    pub group_id: Vec<u8>,
    /// The epoch its next commit must be made at.
    pub next_epoch: u64,
    /// Who may make the next commit.
    pub members: Vec<[u8; 32]>,
    /// Set when this commit creates the group's fence: the device it counts for.
    pub creator: Option<[u8; 32]>,
    /// The GroupInfo the commit published for the epoch it leads to, if any.
    pub group_info: Option<Vec<u8>>,
    /// The committer: its GroupInfo counts against its quota of stored bytes.
    pub publisher: [u8; 32],
    /// The fence the commit was checked against (the epoch the store should
    /// hold as next; `None`: the group has no fence yet). A store that other
    /// nodes write too refuses the write when the stored fence differs.
    pub expected: Option<u64>,
}

/// Called with the commit's outcome once the batch is durable (or failed).
pub type AfterCommit = Box<dyn FnOnce(Result<(), DeliveryError>) + Send>;
/// A custom write: applied to the batch's transaction and answered after the
/// commit, or (given no transaction) refused without being applied.
pub type CustomWrite = Box<dyn FnOnce(Option<&redb::WriteTransaction>) -> AfterCommit + Send>;

/// Why a custom transaction failed: the operation's own refusal, or the store.
#[derive(Debug, thiserror::Error)]
pub enum TransactError<E> {
    #[error(transparent)]
    /// The operation's own refusal (nothing of it was written).
    Refused(E),
    #[error(transparent)]
    /// The store failed.
    Store(DeliveryError),
}

impl From<TransactError<StoreError>> for DeliveryError {
    /// A store-level operation has no refusal of its own: either way the store
    /// failed.
    fn from(e: TransactError<StoreError>) -> Self {
        match e {
            TransactError::Refused(s) => s.into(),
            TransactError::Store(d) => d,
        }
    }
}

impl WriteOp {
    pub(super) fn payload_len(&self) -> usize {
        match self {
            WriteOp::Append { payload, .. } => payload.len(),
            WriteOp::AppendMany { appends, .. } => appends.iter().map(|a| a.payload.len()).sum(),
            WriteOp::AppendShared { bodies, .. } => bodies
                .iter()
                .map(|b| b.body.len() + b.refs.iter().map(|r| r.part.len() + 48).sum::<usize>())
                .sum(),
            _ => 0,
        }
    }
}

/// What to send once the batch's fate is known.
pub(super) enum Outcome {
    Seq(Reply<u64>, Result<u64, DeliveryError>),
    Seqs(Reply<Vec<u64>>, Result<Vec<u64>, DeliveryError>),
    Unit(Reply<()>, Result<(), DeliveryError>),
    Meta(Reply<InboxMeta>, Result<InboxMeta, DeliveryError>),
    Custom(AfterCommit),
}

pub(super) fn poisoned(why: &str) -> DeliveryError {
    DeliveryError::Store(StoreError::Poisoned(why.to_string()))
}

/// What the ops of a batch whose commit failed are told: the batch may be on
/// disk or not (a failed fsync or torn write can come after the commit landed),
/// so the caller must not assume either.
pub(super) fn outcome_unknown(why: &str) -> DeliveryError {
    DeliveryError::Store(StoreError::CommitOutcomeUnknown(why.to_string()))
}

/// How a batch that did not commit failed, for its ops' answers.
pub(super) type Failure<'a> = Option<&'a dyn Fn() -> DeliveryError>;

/// Answers with `value`, unless the batch failed.
fn answer<T>(reply: Reply<T>, value: Result<T, DeliveryError>, failure: Failure<'_>) {
    let _ = reply.send(match failure {
        Some(fail) => Err(fail()),
        None => value,
    });
}

impl Outcome {
    /// Sends the answer: the op's own, or the batch's failure.
    pub(super) fn send(self, failure: Failure<'_>) {
        match self {
            Outcome::Seq(r, v) => answer(r, v, failure),
            Outcome::Seqs(r, v) => answer(r, v, failure),
            Outcome::Unit(r, v) => answer(r, v, failure),
            Outcome::Meta(r, v) => answer(r, v, failure),
            Outcome::Custom(after) => after(match failure {
                Some(fail) => Err(fail()),
                None => Ok(()),
            }),
        }
    }
}

/// Refuses an op without applying it; hands back a shutdown's completion port.
pub(super) fn refuse(op: WriteOp, why: &str) -> Option<oneshot::Sender<()>> {
    match op {
        WriteOp::Append { reply, .. } => answer(reply, Err(poisoned(why)), None),
        WriteOp::AppendMany { reply, .. } => answer(reply, Err(poisoned(why)), None),
        WriteOp::AppendShared { reply, .. } => answer(reply, Err(poisoned(why)), None),
        WriteOp::AppendMissedMarker { notify, .. } => {
            let _ = notify.send_message(InboxMsg::Resync(why.to_string()));
        }
        WriteOp::Ack { reply, notify, .. } => {
            answer(reply, Err(poisoned(why)), None);
            let _ = notify.send_message(InboxMsg::Resync(why.to_string()));
        }
        WriteOp::Load { reply, .. } => answer(reply, Err(poisoned(why)), None),
        WriteOp::Account(op) => op.refuse(poisoned(why)),
        WriteOp::Group(op) => op.refuse(poisoned(why)),
        WriteOp::Custom(apply) => apply(None)(Err(poisoned(why))),
        WriteOp::Shutdown { done } => return Some(done),
    }
    None
}

pub(super) fn run(store: ServerStore, mut rx: mpsc::Receiver<WriteOp>) {
    if let Ok(n) = store.stored_total() {
        metrics::gauge!(crate::telemetry::QUEUE_DEPTH).set(n as f64);
    }
    let answerer = Answerer::start();
    let mut poisoned: Option<String> = None;
    let mut batch: Vec<WriteOp> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let shutdown = gather(first, &mut rx, &mut batch);
        if let Some(why) = &poisoned {
            // Through the answerer, so no refusal overtakes the answers of
            // the batches before it.
            let (ops, why) = (std::mem::take(&mut batch), why.clone());
            answerer.send(move || {
                for op in ops {
                    refuse(op, &why);
                }
            });
        } else if !batch.is_empty()
            && let Err(e) = commit_batch(&store, &mut batch, &answerer)
        {
            tracing::error!(error = %e, "store commit failed; refusing all further writes");
            poisoned = Some(e.to_string());
        }
        if let Some(done) = shutdown {
            answerer.send(move || {
                let _ = done.send(());
            });
            break;
        }
    }
    answerer.finish();
    refuse_queued(&mut rx);
}

/// Fills `batch` with `first` and whatever else is queued, up to the batch
/// limits. A shutdown request ends the batch: what came before it is
/// finished, what came after it is refused; its completion port is returned.
pub(super) fn gather(
    first: WriteOp,
    rx: &mut mpsc::Receiver<WriteOp>,
    batch: &mut Vec<WriteOp>,
) -> Option<oneshot::Sender<()>> {
    batch.clear();
    let mut bytes = first.payload_len();
    batch.push(first);
    while batch.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(op) => {
                bytes += op.payload_len();
                batch.push(op);
            }
            Err(_) => break,
        }
    }
    let pos = batch
        .iter()
        .position(|op| matches!(op, WriteOp::Shutdown { .. }))?;
    for op in batch.drain(pos + 1..) {
        refuse(op, "node is shutting down");
    }
    match batch.pop() {
        Some(WriteOp::Shutdown { done }) => Some(done),
        _ => None,
    }
}

/// Refuses whatever is still queued once the writer stops, so no caller waits
/// forever.
pub(super) fn refuse_queued(rx: &mut mpsc::Receiver<WriteOp>) {
    rx.close();
    while let Ok(op) = rx.try_recv() {
        if let Some(done) = refuse(op, "node is shutting down") {
            let _ = done.send(());
        }
    }
}

/// Applies one multi-inbox write: checks every seq first, so a refusal leaves the
/// transaction untouched.
fn append_many(
    txn: &redb::WriteTransaction,
    writes: &mut WriteBatch<'_>,
    appends: &[MultiAppend],
    fence: Option<&FenceWrite>,
) -> Result<Vec<u64>, StoreError> {
    writes.check_appends(appends.iter().map(|a| (&a.inbox, a.seq)))?;
    for a in appends {
        writes.append(&a.inbox, a.seq, &a.payload)?;
    }
    if let Some(f) = fence {
        super::fences::set_group_fence(
            txn,
            &f.group_id,
            f.next_epoch,
            &f.members,
            f.creator.as_ref(),
            f.group_info.as_deref(),
            &f.publisher,
        )?;
    }
    Ok(appends.iter().map(|a| a.seq).collect())
}

/// Applies one shared write: checks every seq first, so a refusal leaves the
/// transaction untouched.
fn append_shared(
    txn: &redb::WriteTransaction,
    writes: &mut WriteBatch<'_>,
    bodies: &[SharedWrite],
    missed: &[(IdentityKey, Vec<u8>)],
    fence: Option<&FenceWrite>,
) -> Result<(), StoreError> {
    writes.check_appends(
        bodies
            .iter()
            .flat_map(|b| b.refs.iter().map(|r| (&r.inbox, r.seq))),
    )?;
    for b in bodies.iter().filter(|b| !b.refs.is_empty()) {
        let key = writes.put_body(&b.body)?;
        for (k, r) in b.refs.iter().enumerate() {
            writes.append_shared(&r.inbox, r.seq, key, &r.part)?;
            if k == 0 && b.refs.len() > 1 {
                crash_point::reached(CrashPoint::MidFanOut);
            }
        }
    }
    for (inbox, group) in missed {
        writes.record_missed(inbox, group)?;
    }
    if let Some(f) = fence {
        super::fences::set_group_fence(
            txn,
            &f.group_id,
            f.next_epoch,
            &f.members,
            f.creator.as_ref(),
            f.group_info.as_deref(),
            &f.publisher,
        )?;
    }
    Ok(())
}

/// After a multi-message write was applied (or refused): on success, notes the
/// highest seq per inbox to report durable once the batch commits and returns
/// how many messages it added; on a refusal, makes each inbox actor resync from
/// the store (its view and the disk disagree) and returns 0.
fn settle_appends(
    result: Result<(), &StoreError>,
    appended: impl IntoIterator<Item = (IdentityKey, u64, ActorRef<InboxMsg>)>,
    durable: &mut HashMap<IdentityKey, (u64, ActorRef<InboxMsg>)>,
) -> f64 {
    let mut added = 0.0;
    for (inbox, seq, notify) in appended {
        match result {
            Ok(()) => {
                added += 1.0;
                let e = durable.entry(inbox).or_insert((seq, notify));
                e.0 = e.0.max(seq);
            }
            Err(e) => {
                let _ = notify.send_message(InboxMsg::Resync(e.to_string()));
            }
        }
    }
    added
}

/// Applies and commits one batch, then has `answerer` answer every op in it.
fn commit_batch(
    store: &ServerStore,
    batch: &mut Vec<WriteOp>,
    answerer: &Answerer,
) -> Result<(), StoreError> {
    let mut outcomes = Vec::with_capacity(batch.len());
    // Payloads written, freed by the answerer rather than on this thread.
    let mut spent: Vec<Vec<u8>> = Vec::with_capacity(batch.len());
    let mut durable: HashMap<IdentityKey, (u64, ActorRef<InboxMsg>)> = HashMap::new();
    let mut depth_change = 0f64;
    // Inbox actors whose acks this batch carries, and how far: told once the
    // deletions are committed, resynced if the commit fails.
    let mut acking: Vec<(ActorRef<InboxMsg>, u64)> = Vec::new();
    metrics::histogram!(crate::telemetry::COMMIT_BATCH_SIZE).record(batch.len() as f64);
    let result: Result<(), StoreError> = (|| {
        let txn = store.begin_write()?;
        {
            let mut writes = WriteBatch::open(&txn)?;
            for op in batch.drain(..) {
                match op {
                    WriteOp::Append {
                        inbox,
                        seq,
                        payload,
                        notify,
                        reply,
                    } => {
                        let appended = writes.append(&inbox, seq, &payload);
                        spent.push(payload);
                        match appended {
                            Ok(()) => {
                                depth_change += 1.0;
                                durable.insert(inbox, (seq, notify));
                                outcomes.push(Outcome::Seq(reply, Ok(seq)));
                            }
                            Err(e) => {
                                // The inbox actor's view and the disk disagree: make
                                // it restart from the disk.
                                let _ = notify.send_message(InboxMsg::Resync(e.to_string()));
                                outcomes.push(Outcome::Seq(reply, Err(e.into())));
                            }
                        }
                    }
                    WriteOp::AppendMany {
                        appends,
                        fence,
                        reply,
                    } => {
                        let result = append_many(&txn, &mut writes, &appends, fence.as_ref());
                        depth_change += settle_appends(
                            result.as_ref().map(|_| ()),
                            appends.into_iter().map(|a| (a.inbox, a.seq, a.notify)),
                            &mut durable,
                        );
                        outcomes.push(Outcome::Seqs(reply, result.map_err(Into::into)));
                    }
                    WriteOp::AppendShared {
                        bodies,
                        missed,
                        fence,
                        reply,
                    } => {
                        let result =
                            append_shared(&txn, &mut writes, &bodies, &missed, fence.as_ref()).map(
                                |()| {
                                    bodies
                                        .iter()
                                        .flat_map(|b| b.refs.iter().map(|r| r.seq))
                                        .collect::<Vec<u64>>()
                                },
                            );
                        depth_change += settle_appends(
                            result.as_ref().map(|_| ()),
                            bodies
                                .into_iter()
                                .flat_map(|b| b.refs)
                                .map(|r| (r.inbox, r.seq, r.notify)),
                            &mut durable,
                        );
                        outcomes.push(Outcome::Seqs(reply, result.map_err(Into::into)));
                    }
                    WriteOp::AppendMissedMarker { inbox, seq, notify } => {
                        let result = writes.append_missed_marker(&inbox, seq);
                        depth_change += settle_appends(
                            result.as_ref().map(|_| ()),
                            [(inbox, seq, notify)],
                            &mut durable,
                        );
                    }
                    WriteOp::Ack {
                        inbox,
                        up_to,
                        reply,
                        notify,
                    } => {
                        let deleted = writes.ack(&inbox, up_to);
                        match &deleted {
                            Ok(n) => {
                                depth_change -= *n as f64;
                                acking.push((notify, up_to));
                            }
                            Err(e) => {
                                let _ = notify.send_message(InboxMsg::Resync(e.to_string()));
                            }
                        }
                        outcomes.push(Outcome::Unit(
                            reply,
                            deleted.map(|_| ()).map_err(Into::into),
                        ))
                    }
                    WriteOp::Load { inbox, reply } => {
                        let meta = writes.inbox_meta(&inbox).and_then(|mut m| {
                            m.missed = writes.missed(&inbox)?.count;
                            Ok(m)
                        });
                        outcomes.push(Outcome::Meta(reply, meta.map_err(Into::into)))
                    }
                    WriteOp::Account(op) => {
                        outcomes.push(Outcome::Custom(super::auth::apply(&txn, op)))
                    }
                    WriteOp::Group(op) => {
                        outcomes.push(Outcome::Custom(super::fences::apply(&txn, op)))
                    }
                    WriteOp::Custom(apply) => outcomes.push(Outcome::Custom(apply(Some(&txn)))),
                    WriteOp::Shutdown { .. } => unreachable!("shutdown is taken out of the batch"),
                }
            }
            writes.finish()?;
        }
        crash_point::reached(CrashPoint::BeforeCommit);
        let started = std::time::Instant::now();
        txn.commit()?;
        metrics::histogram!(crate::telemetry::COMMIT_SECONDS)
            .record(started.elapsed().as_secs_f64());
        crash_point::reached(CrashPoint::AfterCommitBeforeReplies);
        Ok(())
    })();
    let failure = result.as_ref().err().map(StoreError::to_string);
    answerer.send(move || {
        drop(spent);
        let unknown = failure.clone().map(|why| move || outcome_unknown(&why));
        for outcome in outcomes {
            outcome.send(unknown.as_ref().map(|f| f as &dyn Fn() -> DeliveryError));
        }
        if let Some(why) = &failure {
            for (notify, _) in acking {
                let _ = notify.send_message(InboxMsg::Resync(why.clone()));
            }
        } else {
            metrics::gauge!(crate::telemetry::QUEUE_DEPTH).increment(depth_change);
            for (_, (seq, notify)) in durable {
                let _ = notify.send_message(InboxMsg::Durable(seq));
            }
            for (notify, up_to) in acking {
                let _ = notify.send_message(InboxMsg::AckDurable(up_to));
            }
        }
    });
    result
}
