//! The node's one write path into PostgreSQL, with group commit: the same
//! [`WriteOp`]s and answers as the redb writer (`store/writer.rs`), a batch
//! per transaction, answered only after `COMMIT` returned.
//!
//! Differences from redb, and why:
//! - Seqs come from the database (see the module above): when one differs from
//!   what the inbox actor reserved, another node wrote to that inbox, and the
//!   actor is told to reload instead of being told the seq is durable.
//! - Each transaction first locks the marks of every inbox it writes, in key
//!   order, so writers on several nodes cannot deadlock.
//! - A failed batch does not stop the writer. A statement that fails rolls
//!   the whole transaction back: its ops are answered "not stored" and their
//!   inbox actors reload. A failed `COMMIT` (the connection lost) is answered
//!   "outcome unknown", as on redb, and the actors reload too. Unlike a redb
//!   file after a failed fsync, the database stays consistent and is the
//!   authority every node reloads from, so the next batch may go ahead (on a
//!   new connection).

use std::collections::HashMap;
use std::thread::JoinHandle;

use quicnprotochat_wire::IdentityKey;
use ractor::ActorRef;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::delivery::Appends;
use super::{CHANNEL, News, PgStore, accounts, delivery};
use crate::error::DeliveryError;
use crate::inbox::InboxMsg;
use crate::store::StoreError;
use crate::store::ops::{AccountRefusal, AccountWrite, GroupWrite, after_commit};
use crate::store::writer::{
    Outcome, Reply, SharedWrite, WriteOp, gather, outcome_unknown, refuse, refuse_queued,
};

/// Starts the writer on a thread of its own (with its own runtime, as the redb
/// writer has its own thread), so a slow database never stalls the node's
/// runtime and the node's handle is the same for both backends.
pub(crate) fn start(
    store: PgStore,
    rx: mpsc::Receiver<WriteOp>,
) -> std::io::Result<JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("store-writer-pg".into())
        .spawn(move || runtime.block_on(run(store, rx)))
}

async fn run(store: PgStore, mut rx: mpsc::Receiver<WriteOp>) {
    let mut client: Option<Client> = None;
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        let shutdown = gather(first, &mut rx, &mut batch);
        if !batch.is_empty() {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = match store.connect().await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reach PostgreSQL; refusing this batch");
                        None
                    }
                };
            }
            match client.as_mut() {
                Some(c) => {
                    if let Err(e) = commit_batch(c, store.node_id(), &mut batch).await {
                        tracing::error!(error = %e, "PostgreSQL batch failed");
                    }
                }
                None => {
                    for op in batch.drain(..) {
                        refuse(op, "the database cannot be reached");
                    }
                }
            }
        }
        if let Some(done) = shutdown {
            let _ = done.send(());
            break;
        }
    }
    refuse_queued(&mut rx);
}

/// The inboxes an op writes to (locked in order before anything is written).
fn written_inboxes(op: &WriteOp, out: &mut Vec<[u8; 32]>) {
    match op {
        WriteOp::Append { inbox, .. }
        | WriteOp::AppendMissedMarker { inbox, .. }
        | WriteOp::Ack { inbox, .. } => out.push(inbox.0),
        WriteOp::AppendMany { appends, .. } => out.extend(appends.iter().map(|a| a.inbox.0)),
        WriteOp::AppendShared { bodies, missed, .. } => {
            out.extend(bodies.iter().flat_map(|b| b.refs.iter().map(|r| r.inbox.0)));
            out.extend(missed.iter().map(|(k, _)| k.0));
        }
        _ => {}
    }
}

/// Whether `op` changes what nodes cache of accounts (devices, sessions).
fn changes_accounts(op: &WriteOp) -> bool {
    matches!(
        op,
        WriteOp::Account(
            AccountWrite::Register { .. }
                | AccountWrite::Login { .. }
                | AccountWrite::Logout { .. }
                | AccountWrite::LogoutEverywhere { .. }
                | AccountWrite::ExtendSession { .. }
                | AccountWrite::ChangePassword { .. }
                | AccountWrite::RemoveDevice { .. }
                | AccountWrite::DeleteAccount { .. }
        )
    )
}

/// Tells the other nodes, in the transaction (PostgreSQL delivers a
/// notification only if it commits), which inboxes got messages and whether
/// accounts changed.
async fn notify(
    txn: &tokio_postgres::Transaction<'_>,
    node_id: u64,
    marks: &Marks,
    accounts_changed: bool,
) -> Result<(), StoreError> {
    let mut payloads: Vec<String> = marks
        .stored_inboxes
        .iter()
        .map(|k| News::Inbox(*k).payload(node_id))
        .collect();
    if accounts_changed {
        payloads.push(News::Accounts.payload(node_id));
    }
    if payloads.is_empty() {
        return Ok(());
    }
    txn.execute(
        &format!("SELECT pg_notify('{CHANNEL}', p) FROM unnest($1::TEXT[]) AS p"),
        &[&payloads],
    )
    .await
    .map_err(super::pg)?;
    Ok(())
}

/// What the batch learned about inboxes, told to their actors after the commit.
#[derive(Default)]
struct Marks {
    /// Highest seq stored per inbox, by the seq its actor expected.
    durable: HashMap<IdentityKey, (u64, ActorRef<InboxMsg>)>,
    /// Actors whose reserved seqs the database did not use: reload.
    stale: Vec<ActorRef<InboxMsg>>,
    /// Acks written, to confirm.
    acking: Vec<(ActorRef<InboxMsg>, u64)>,
    /// Inboxes that got messages (for the other nodes' long-polls).
    stored_inboxes: std::collections::BTreeSet<IdentityKey>,
}

impl Marks {
    /// Notes that `inbox`'s actor reserved `reserved` and the database stored `stored`.
    fn stored(
        &mut self,
        inbox: IdentityKey,
        reserved: u64,
        stored: u64,
        notify: ActorRef<InboxMsg>,
    ) {
        self.stored_inboxes.insert(inbox);
        if reserved == stored {
            let e = self.durable.entry(inbox).or_insert((stored, notify));
            e.0 = e.0.max(stored);
        } else {
            self.stale.push(notify);
        }
    }

    /// Every actor this batch touched (to reload after a failure).
    fn all(self) -> impl Iterator<Item = ActorRef<InboxMsg>> {
        self.durable
            .into_values()
            .map(|(_, a)| a)
            .chain(self.stale)
            .chain(self.acking.into_iter().map(|(a, _)| a))
    }
}

/// Applies and commits one batch, then answers every op in it.
async fn commit_batch(
    client: &mut Client,
    node_id: u64,
    batch: &mut Vec<WriteOp>,
) -> Result<(), StoreError> {
    let mut inboxes = Vec::new();
    let mut told_accounts = false;
    for op in batch.iter() {
        written_inboxes(op, &mut inboxes);
        told_accounts |= changes_accounts(op);
    }
    let mut ops = std::mem::take(batch).into_iter();
    let mut outcomes = Vec::new();
    let mut marks = Marks::default();
    let mut depth_change = 0f64;
    metrics::histogram!(crate::telemetry::COMMIT_BATCH_SIZE).record(ops.len() as f64);
    let applied: Result<(), (StoreError, bool)> = async {
        let txn = client
            .transaction()
            .await
            .map_err(|e| (super::pg(e), false))?;
        let mut appends = Appends::lock(&txn, &inboxes)
            .await
            .map_err(|e| (e, false))?;
        for op in ops.by_ref() {
            let mut batch = Applying {
                txn: &txn,
                appends: &mut appends,
                outcomes: &mut outcomes,
                marks: &mut marks,
                depth: &mut depth_change,
            };
            batch.apply(op).await.map_err(|e| (e, false))?;
        }
        appends.flush(&txn).await.map_err(|e| (e, false))?;
        notify(&txn, node_id, &marks, told_accounts)
            .await
            .map_err(|e| (e, false))?;
        let started = std::time::Instant::now();
        txn.commit().await.map_err(|e| (super::pg(e), true))?;
        metrics::histogram!(crate::telemetry::COMMIT_SECONDS)
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }
    .await;
    match applied {
        Ok(()) => {
            for outcome in outcomes {
                outcome.send(None);
            }
            metrics::gauge!(crate::telemetry::QUEUE_DEPTH).increment(depth_change);
            for (_, (seq, notify)) in marks.durable {
                let _ = notify.send_message(InboxMsg::Durable(seq));
            }
            for notify in marks.stale {
                let _ = notify
                    .send_message(InboxMsg::Resync("another node wrote to this inbox".into()));
            }
            for (notify, up_to) in marks.acking {
                let _ = notify.send_message(InboxMsg::AckDurable(up_to));
            }
            Ok(())
        }
        Err((e, at_commit)) => {
            let why = e.to_string();
            let fail = || {
                if at_commit {
                    outcome_unknown(&why)
                } else {
                    DeliveryError::Store(StoreError::Postgres(format!("not stored: {why}")))
                }
            };
            for outcome in outcomes {
                outcome.send(Some(&fail));
            }
            for op in ops {
                refuse(op, &format!("not stored: {why}"));
            }
            for notify in marks.all() {
                let _ = notify.send_message(InboxMsg::Resync(why.clone()));
            }
            Err(e)
        }
    }
}

/// One batch being applied: its transaction, its direct messages, and what
/// to answer and tell after the commit.
struct Applying<'b, 't> {
    txn: &'b tokio_postgres::Transaction<'t>,
    appends: &'b mut Appends,
    outcomes: &'b mut Vec<Outcome>,
    marks: &'b mut Marks,
    depth: &'b mut f64,
}

impl Applying<'_, '_> {
    /// Writes the direct messages taken so far, before SQL of an op's own
    /// reads or writes inboxes.
    async fn flush(&mut self) -> Result<(), StoreError> {
        self.appends.flush(self.txn).await
    }

    /// Refuses a multi-inbox write whose group fence moved: nothing of it is
    /// written, and the actors that reserved its seqs reload.
    fn refuse_moved(
        &mut self,
        notify: impl IntoIterator<Item = ActorRef<InboxMsg>>,
        reply: Reply<Vec<u64>>,
        moved: DeliveryError,
    ) {
        self.marks.stale.extend(notify);
        self.outcomes.push(Outcome::Seqs(reply, Err(moved)));
    }

    /// Applies one op inside the transaction.
    async fn apply(&mut self, op: WriteOp) -> Result<(), StoreError> {
        let txn = self.txn;
        match op {
            WriteOp::Append {
                inbox,
                seq,
                payload,
                notify,
                reply,
            } => {
                let stored = self.appends.push(&inbox, payload)?;
                self.marks.stored(inbox, seq, stored, notify);
                *self.depth += 1.0;
                self.outcomes.push(Outcome::Seq(reply, Ok(stored)));
            }
            WriteOp::AppendMany {
                appends,
                fence,
                reply,
            } => {
                if let Some(moved) = fence_moved(txn, fence.as_ref()).await? {
                    self.refuse_moved(appends.into_iter().map(|a| a.notify), reply, moved);
                    return Ok(());
                }
                let mut seqs = Vec::with_capacity(appends.len());
                for a in appends {
                    let stored = self.appends.push(&a.inbox, a.payload)?;
                    self.marks.stored(a.inbox, a.seq, stored, a.notify);
                    seqs.push(stored);
                }
                if let Some(f) = &fence {
                    delivery::set_group_fence(txn, f).await?;
                }
                *self.depth += seqs.len() as f64;
                self.outcomes.push(Outcome::Seqs(reply, Ok(seqs)));
            }
            WriteOp::AppendShared {
                bodies,
                missed,
                fence,
                reply,
            } => {
                if let Some(moved) = fence_moved(txn, fence.as_ref()).await? {
                    let notify = bodies.into_iter().flat_map(|b| b.refs).map(|r| r.notify);
                    self.refuse_moved(notify, reply, moved);
                    return Ok(());
                }
                self.flush().await?;
                let mut stored_seqs = Vec::new();
                for SharedWrite { body, refs } in bodies.into_iter().filter(|b| !b.refs.is_empty())
                {
                    let recipients: Vec<(&IdentityKey, &[u8])> =
                        refs.iter().map(|r| (&r.inbox, r.part.as_slice())).collect();
                    let seqs = delivery::append_shared(txn, &body, &recipients).await?;
                    *self.depth += seqs.len() as f64;
                    for (r, stored) in refs.into_iter().zip(seqs) {
                        self.marks.stored(r.inbox, r.seq, stored, r.notify);
                        stored_seqs.push(stored);
                    }
                }
                for (inbox, group) in &missed {
                    delivery::record_missed(txn, inbox, group).await?;
                }
                if let Some(f) = &fence {
                    delivery::set_group_fence(txn, f).await?;
                }
                self.appends.reload(txn).await?;
                self.outcomes.push(Outcome::Seqs(reply, Ok(stored_seqs)));
            }
            WriteOp::AppendMissedMarker { inbox, seq, notify } => {
                self.flush().await?;
                let stored = delivery::append_missed_marker(txn, &inbox).await?;
                self.appends.reload(txn).await?;
                *self.depth += 1.0;
                self.marks.stored(inbox, seq, stored, notify);
            }
            WriteOp::Ack {
                inbox,
                up_to,
                reply,
                notify,
            } => {
                self.flush().await?;
                let deleted = delivery::ack(txn, &inbox, up_to).await?;
                *self.depth -= deleted as f64;
                self.marks.acking.push((notify, up_to));
                self.outcomes.push(Outcome::Unit(reply, Ok(())));
            }
            WriteOp::Load { inbox, reply } => {
                self.flush().await?;
                let meta = delivery::load(txn, &inbox).await?;
                self.outcomes.push(Outcome::Meta(reply, Ok(meta)));
            }
            WriteOp::Account(op) => self
                .outcomes
                .push(Outcome::Custom(apply_account(txn, op).await?)),
            WriteOp::Group(op) => self
                .outcomes
                .push(Outcome::Custom(apply_group(txn, op).await?)),
            WriteOp::Custom(apply) => apply(None)(Err(DeliveryError::Store(StoreError::Postgres(
                "a redb transaction hook cannot run on PostgreSQL".into(),
            )))),
            WriteOp::Shutdown { .. } => unreachable!("shutdown is taken out of the batch"),
        }
        Ok(())
    }
}

/// Why a commit's write must not go ahead: another node moved the group's
/// fence since this node's group actor checked it. The fence's row stays
/// locked to the end of the transaction, so it cannot move in between.
async fn fence_moved(
    txn: &tokio_postgres::Transaction<'_>,
    fence: Option<&crate::store::writer::FenceWrite>,
) -> Result<Option<DeliveryError>, StoreError> {
    let Some(f) = fence else {
        return Ok(None);
    };
    let (current, _) = delivery::group_fence(txn, &f.group_id).await?;
    Ok((current != f.expected).then_some(DeliveryError::FenceMoved { current }))
}

type After = crate::store::writer::AfterCommit;

async fn apply_account(
    txn: &tokio_postgres::Transaction<'_>,
    op: AccountWrite,
) -> Result<After, StoreError> {
    Ok(match op {
        AccountWrite::InitSecret { name, value, reply } => {
            after_commit(reply, Ok(accounts::init_secret(txn, name, &value).await?))
        }
        AccountWrite::Register {
            username,
            record,
            device,
            now_ms,
            reply,
        } => after_commit(
            reply,
            Ok(accounts::register(txn, &username, &record, &device, now_ms).await?),
        ),
        AccountWrite::Login {
            username,
            device,
            token_hash,
            expires_at_ms,
            now_ms,
            max_devices,
            record_hash,
            reply,
        } => after_commit(
            reply,
            Ok(accounts::login(
                txn,
                &username,
                &device,
                &token_hash,
                (expires_at_ms, now_ms),
                max_devices,
                &record_hash,
            )
            .await?),
        ),
        AccountWrite::Logout { token_hash, reply } => {
            after_commit(reply, Ok(accounts::logout(txn, &token_hash).await?))
        }
        AccountWrite::ExtendSession {
            token_hash,
            expires_at_ms,
            reply,
        } => after_commit(
            reply,
            Ok(accounts::extend_session(txn, &token_hash, expires_at_ms).await?),
        ),
        AccountWrite::LogoutEverywhere { username, reply } => after_commit(
            reply,
            Ok(accounts::end_account_sessions(txn, &username, None).await?),
        ),
        AccountWrite::ChangePassword {
            username,
            record,
            keep,
            reply,
        } => {
            let result = match accounts::set_password_record(txn, &username, &record).await? {
                false => Ok(Err(AccountRefusal::PasswordChanged)),
                true => Ok(Ok(accounts::end_account_sessions(
                    txn,
                    &username,
                    keep.as_ref(),
                )
                .await?)),
            };
            after_commit(reply, result)
        }
        AccountWrite::RemoveDevice { device, reply, .. } => {
            let now = crate::store::now_ms();
            after_commit(reply, Ok(accounts::remove_device(txn, &device, now).await?))
        }
        AccountWrite::DeleteAccount { username, reply } => {
            let now = crate::store::now_ms();
            after_commit(
                reply,
                Ok(accounts::delete_account(txn, &username, now).await?),
            )
        }
        AccountWrite::Upload { upload, reply } => {
            after_commit(reply, Ok(accounts::store_upload(txn, &upload).await?))
        }
        AccountWrite::Claim {
            suite,
            devices,
            reply,
        } => after_commit(reply, Ok(accounts::claim(txn, suite, &devices).await?)),
        AccountWrite::SetAccessKey {
            device,
            hash,
            reply,
        } => after_commit(
            reply,
            Ok(accounts::set_access_key(txn, &device, &hash).await?),
        ),
    })
}

async fn apply_group(
    txn: &tokio_postgres::Transaction<'_>,
    op: GroupWrite,
) -> Result<After, StoreError> {
    Ok(match op {
        GroupWrite::Fence { group_id, reply } => {
            after_commit(reply, Ok(delivery::group_fence(txn, &group_id).await?))
        }
        GroupWrite::GroupsCreated { device, reply } => {
            after_commit(reply, Ok(delivery::groups_created(txn, &device).await?))
        }
        GroupWrite::GroupInfoBytes {
            device,
            group_id,
            reply,
        } => after_commit(
            reply,
            Ok(delivery::group_info_bytes(txn, &device, &group_id).await?),
        ),
        GroupWrite::CollectDead {
            is_member_alive,
            reply,
        } => after_commit(
            reply,
            Ok(delivery::collect_dead_group_fences(txn, &*is_member_alive).await?),
        ),
    })
}
