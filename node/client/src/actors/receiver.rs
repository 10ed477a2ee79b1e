//! The receiver actor: takes envelopes from the own inbox and applies them
//! strictly in seq order, each exactly once: it opens the hybrid seal, routes
//! group traffic to the group's actor (which commits the envelope's effects with
//! the cursor in one transaction) and joins groups from Welcomes itself. The inbox
//! is acked only up to what is durably applied.
//!
//! Fetches run outside its mailbox (the answer comes back as a message), so a
//! long-poll never blocks a catch-up another caller asks for; two fetches that
//! overlap are harmless because nothing at or below the cursor is applied again.
//!
//! Callers either pull (apply what is there, optionally waiting for something
//! first) or follow: the receiver then catches up and has the node push what
//! arrives (`subscribe`), for as long as the follower listens, and tells it
//! after every batch it applied. A node without push (an older one) is
//! long-polled in a loop instead.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use quicnprotochat_crypto::envelope::{
    EnvelopeError, HybridPublicKey, open_sealed_sender, open_shared,
};
use quicnprotochat_crypto::mls::GroupMember;
use quicnprotochat_wire::fanout::Missed;
use quicnprotochat_wire::{Envelope, Inbound};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::group::GroupMsg;
use super::names::confirm_roster;
use super::session::SessionMsg;
use super::supervisor::{SessionSlot, SupervisorMsg};
use super::{Effects, Profile, ask, ask_session, notice, short_hex};
use crate::ClientError;
use crate::message::{Body, ClientMessage};
use crate::messenger::terms::{Line, MessengerError, is_connection_loss};
use crate::mls_store::RedbMlsStorage;

/// Envelopes asked for per fetch.
const FETCH_BATCH: u32 = 256;

/// How long one long-poll of a follow waits (the node caps it anyway).
const FOLLOW_WAIT: Duration = Duration::from_secs(25);
/// Pause before a follow retries after a lost connection.
const FOLLOW_RETRY: Duration = Duration::from_secs(1);
/// Pushed batches waiting for the receiver (the node makes its next call only
/// once the last one is answered, after it was applied).
const PUSHED_WAITING: usize = 1;

type PullReply = RpcReplyPort<Result<Vec<Line>, MessengerError>>;

/// Told after each batch the receiver applied (or why following stopped working).
pub(crate) type Follower = tokio::sync::mpsc::UnboundedSender<Result<(), MessengerError>>;

/// Who a chain of fetches works for.
enum Owner {
    /// A caller's pull: fetch, apply, ack, until the inbox is empty; then answer.
    Caller(PullReply),
    /// The follow loop: long-poll again whenever the inbox is empty.
    Follow,
}

pub(crate) struct PullJob {
    owner: Owner,
    lines: Vec<Line>,
}

pub(crate) enum ReceiverMsg {
    /// Applies everything waiting; with a non-zero `wait`, first waits up to that
    /// long for something to arrive. Answers the lines produced.
    Pull { wait: Duration, reply: PullReply },
    /// Long-poll in a loop, telling `to` after each applied batch, until `to`
    /// is closed (a newer follower replaces an older one).
    Follow { to: Follower },
    /// The follow loop's next fetch (after a pause).
    Resume,
    /// Subscription `subscription` pushed a batch; the answer says how far
    /// the inbox is applied (the node acks through it).
    Pushed {
        subscription: u64,
        batch: Vec<Envelope>,
        applied: crate::rpc::Applied,
    },
    /// Subscription `subscription` could not start or is over.
    PushEnded { subscription: u64, why: ClientError },
    /// A fetch of `job` came back.
    Fetched {
        job: PullJob,
        result: Result<Vec<Envelope>, ClientError>,
    },
}

pub(crate) struct ReceiverArgs {
    pub profile: Arc<Profile>,
    pub session: SessionSlot,
    pub supervisor: ActorRef<SupervisorMsg>,
}

pub(crate) struct ReceiverState {
    profile: Arc<Profile>,
    session: SessionSlot,
    supervisor: ActorRef<SupervisorMsg>,
    /// The MLS view used to join groups (and to commit envelopes that touch no
    /// group): its own overlay, apart from every group actor's.
    joiner: GroupMember<RedbMlsStorage>,
    /// The highest seq applied (durably: it is stored with each envelope).
    cursor: u64,
    follower: Option<Follower>,
    /// Whether the follow loop has a fetch in flight, a subscription, or a
    /// retry pending.
    following: bool,
    /// The live push subscription: its number and the task that forwards it.
    push: Option<(u64, AbortOnDrop)>,
    /// Numbers subscriptions, so that news of an earlier one is told apart.
    subscriptions: u64,
    /// The node answered `subscribe` with UNIMPLEMENTED: long-poll instead.
    push_unsupported: bool,
}

/// Stops a forwarding task when its subscription is dropped; the node then
/// finds its next `deliver` refused and ends the subscription.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Default)]
pub(crate) struct ReceiverActor;

impl ReceiverState {
    fn fetch(&self, myself: &ActorRef<ReceiverMsg>, job: PullJob, wait: Duration) {
        let session = self.session.get();
        let myself = myself.clone();
        let after = self.cursor;
        tokio::spawn(async move {
            let result = ask_session(&session, |reply| SessionMsg::Fetch {
                after,
                limit: FETCH_BATCH,
                wait,
                reply,
            })
            .await;
            let _ = myself.cast(ReceiverMsg::Fetched { job, result });
        });
    }

    /// Starts the follow loop's next fetch unless one is in flight or nobody
    /// listens any more.
    fn follow(&mut self, myself: &ActorRef<ReceiverMsg>, wait: Duration) {
        if self.following {
            return;
        }
        if !self.has_follower() {
            return;
        }
        self.following = true;
        let job = PullJob {
            owner: Owner::Follow,
            lines: Vec::new(),
        };
        self.fetch(myself, job, wait);
    }

    /// Waits for news after a catch-up: a push subscription where the node has
    /// them, a long-poll otherwise.
    fn listen(&mut self, myself: &ActorRef<ReceiverMsg>) {
        if self.push_unsupported {
            return self.follow(myself, FOLLOW_WAIT);
        }
        if !self.has_follower() {
            return;
        }
        self.following = true;
        self.subscriptions += 1;
        let subscription = self.subscriptions;
        let (session, after, myself) = (self.session.get(), self.cursor, myself.clone());
        let task = tokio::spawn(async move {
            let (to, mut pushed) = tokio::sync::mpsc::channel(PUSHED_WAITING);
            let started =
                ask_session(&session, |reply| SessionMsg::Subscribe { after, to, reply }).await;
            let why = match started {
                Err(e) => e,
                Ok(()) => loop {
                    match pushed.recv().await {
                        Some(crate::Pushed::Batch { envelopes, applied }) => {
                            let _ = myself.cast(ReceiverMsg::Pushed {
                                subscription,
                                batch: envelopes,
                                applied,
                            });
                        }
                        Some(crate::Pushed::Ended(why)) => break why,
                        // The receiver went with its connection.
                        None => {
                            break ClientError::Transport("the connection ended".into());
                        }
                    }
                },
            };
            let _ = myself.cast(ReceiverMsg::PushEnded { subscription, why });
        });
        self.push = Some((subscription, AbortOnDrop(task.abort_handle())));
    }

    /// Whether someone still listens to the follow loop (a closed follower
    /// is forgotten).
    fn has_follower(&mut self) -> bool {
        if self.follower.as_ref().is_none_or(|f| f.is_closed()) {
            self.follower = None;
        }
        self.follower.is_some()
    }

    /// Whether `subscription` is the live one.
    fn is_live(&self, subscription: u64) -> bool {
        self.push.as_ref().is_some_and(|(n, _)| *n == subscription)
    }

    /// Following failed with `e`: the follower is told; after a lost
    /// connection the loop starts again after a pause, otherwise it stops.
    fn follow_failed(&mut self, myself: &ActorRef<ReceiverMsg>, e: MessengerError) {
        let lost = is_connection_loss(&e);
        if let Some(f) = &self.follower
            && f.send(Err(e)).is_ok()
            && lost
        {
            // The session actor reconnects on the next request.
            let myself = myself.clone();
            tokio::spawn(async move {
                tokio::time::sleep(FOLLOW_RETRY).await;
                let _ = myself.cast(ReceiverMsg::Resume);
            });
        } else {
            self.following = false;
            self.follower = None;
        }
    }

    /// Applies a fetched batch in seq order, then acks it; whether anything
    /// new was applied.
    async fn apply_batch(
        &mut self,
        envelopes: Vec<Envelope>,
        job: &mut PullJob,
    ) -> Result<bool, MessengerError> {
        let applied = self.apply_all(envelopes, job).await?;
        if applied {
            let up_to = self.cursor;
            ask_session(&self.session.get(), |reply| SessionMsg::Ack {
                up_to,
                reply,
            })
            .await?;
        }
        Ok(applied)
    }

    /// Applies envelopes in seq order, each durably with the cursor; whether
    /// anything new was applied.
    async fn apply_all(
        &mut self,
        mut envelopes: Vec<Envelope>,
        job: &mut PullJob,
    ) -> Result<bool, MessengerError> {
        envelopes.sort_by_key(|e| e.seq);
        let mut applied = false;
        for env in envelopes {
            if env.seq <= self.cursor {
                continue; // a duplicate: already applied
            }
            job.lines.extend(self.apply(&env).await?);
            self.cursor = env.seq;
            applied = true;
        }
        Ok(applied)
    }

    /// Applies one envelope: its effects and the cursor commit together.
    async fn apply(&mut self, env: &Envelope) -> Result<Vec<Line>, MessengerError> {
        let seq = env.seq;
        let mut fx = Effects::default();
        let me = self.profile.me();
        // `None`: a note from the node itself, nothing to open.
        let opened = match env.inbound() {
            Ok(Inbound::Direct(d)) => Some(open_sealed_sender(&me, &self.profile.hybrid, d)),
            Ok(Inbound::Shared { part, body }) => {
                Some(open_shared(&self.profile.hybrid, part, body))
            }
            Ok(Inbound::Missed(missed)) => {
                fx.lines.push(self.missed_notice(seq, &missed)?);
                None
            }
            Err(_) => Some(Err(EnvelopeError::Truncated)),
        };
        match opened {
            None => {}
            Some(Err(e)) => fx.lines.push(notice(
                seq,
                None,
                format!("message {seq} could not be opened: {e}"),
            )),
            Some(Ok(sealed)) => match ClientMessage::decode(&sealed.payload) {
                Err(e) => fx.lines.push(notice(
                    seq,
                    None,
                    format!("message {seq} is malformed: {e}"),
                )),
                Ok(msg) => match msg.body {
                    Body::Welcome => {
                        let mut msg = msg;
                        let session = self.session.get();
                        confirm_roster(&self.profile, &session, &msg.group_id, &mut msg.roster)
                            .await?;
                        self.join(seq, sealed.sender, &msg, &mut fx)?
                    }
                    Body::Group | Body::CommitReceipt { .. } => {
                        let known = self.profile.state.group_name(&msg.group_id)?.is_some();
                        let ours = matches!(msg.body, Body::Group) || sealed.sender == me;
                        if known && ours {
                            let group = self.group(&msg.group_id).await?;
                            return ask(&group, "group actor", |reply| GroupMsg::Apply {
                                seq,
                                sender: sealed.sender,
                                msg,
                                raw: sealed.payload,
                                reply,
                            })
                            .await;
                        }
                        // A receipt of a group already left, or one someone else
                        // sent (only we can confirm our commits): nothing to do.
                        if matches!(msg.body, Body::Group) {
                            fx.lines.push(notice(
                                seq,
                                None,
                                format!(
                                    "a message for a group this profile is not in (from {})",
                                    self.profile.name_of(&sealed.sender)
                                ),
                            ));
                        }
                    }
                },
            },
        }
        let storage = self.joiner.provider().storage_provider();
        if let Err(e) = self.profile.commit_envelope(storage, seq, &fx) {
            storage.rollback();
            return Err(e);
        }
        Ok(fx.lines)
    }

    /// The line that tells of messages the node could not queue for us.
    fn missed_notice(&self, seq: u64, missed: &Missed) -> Result<Line, MessengerError> {
        let mut names = Vec::new();
        for g in &missed.groups {
            names.push(match self.profile.state.group_name(g)? {
                Some(name) => name,
                None => format!("group {}", short_hex(g)),
            });
        }
        let group = (missed.groups.len() == 1).then(|| names[0].clone());
        let whose = if names.is_empty() {
            String::new()
        } else {
            format!(" of {}", names.join(", "))
        };
        Ok(notice(
            seq,
            group.as_deref(),
            format!(
                "you missed {} message(s){whose}: your inbox was full when they were sent",
                missed.count
            ),
        ))
    }

    async fn group(&self, gid: &[u8]) -> Result<ActorRef<GroupMsg>, MessengerError> {
        let gid = gid.to_vec();
        ask(&self.supervisor, "client supervisor", |reply| {
            SupervisorMsg::Group { gid, reply }
        })
        .await
    }

    /// Joins the group a Welcome from `sender` invites us to (nothing kept when
    /// it cannot); the roster's names are confirmed ones.
    fn join(
        &mut self,
        seq: u64,
        sender: [u8; 32],
        msg: &ClientMessage,
        fx: &mut Effects,
    ) -> Result<(), MessengerError> {
        let inviter = match msg.roster.iter().find(|e| e.identity == sender) {
            Some(e) if !e.username.is_empty() => e.username.clone(),
            _ => self.profile.name_of(&sender),
        };
        let group = match self.joiner.join(&msg.mls) {
            Ok(g) => g,
            Err(e) => {
                self.joiner.provider().storage_provider().rollback();
                fx.lines.push(notice(
                    seq,
                    None,
                    format!("an invitation from {} could not be used: {e}", inviter),
                ));
                return Ok(());
            }
        };
        // Already in it (rejoined by external commit while this invitation was
        // on its way): the group as it is here stays.
        if let Some(known) = self.profile.state.group_name(&group.group_id())? {
            self.joiner.provider().storage_provider().rollback();
            fx.lines.push(notice(
                seq,
                Some(&known),
                format!(
                    "an invitation from {} to a group this device is already in was ignored",
                    inviter
                ),
            ));
            return Ok(());
        }
        let members: BTreeSet<Vec<u8>> = group.members().into_iter().collect();
        let me = self.profile.me();
        for e in &msg.roster {
            if members.contains(e.identity.as_slice())
                && e.identity != me
                && HybridPublicKey::verify(&e.hybrid_key, &e.identity).is_ok()
            {
                fx.roster.push(e.clone());
            }
        }
        let wanted = group.name().unwrap_or_else(|| "unnamed".into());
        let name = self
            .profile
            .state
            .free_group_name(&wanted, &group.group_id())?;
        fx.lines.push(Line {
            seq,
            group: Some(name.clone()),
            sender: None,
            text: format!(
                "joined, invited by {} ({} members, epoch {})",
                inviter,
                members.len(),
                group.epoch()
            ),
            epoch: Some(group.epoch()),
        });
        fx.set_group = Some((name, group.group_id()));
        Ok(())
    }
}

impl Actor for ReceiverActor {
    type Msg = ReceiverMsg;
    type State = ReceiverState;
    type Arguments = ReceiverArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ReceiverMsg>,
        args: ReceiverArgs,
    ) -> Result<ReceiverState, ActorProcessingErr> {
        let joiner = args.profile.state.mls_member(&args.profile.identity)?;
        let cursor = args.profile.state.cursor()?;
        Ok(ReceiverState {
            profile: args.profile,
            session: args.session,
            supervisor: args.supervisor,
            joiner,
            cursor,
            follower: None,
            following: false,
            push: None,
            subscriptions: 0,
            push_unsupported: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ReceiverMsg>,
        msg: ReceiverMsg,
        state: &mut ReceiverState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ReceiverMsg::Pull { wait, reply } => {
                let job = PullJob {
                    owner: Owner::Caller(reply),
                    lines: Vec::new(),
                };
                state.fetch(&myself, job, wait);
            }
            ReceiverMsg::Follow { to } => {
                state.follower = Some(to);
                state.follow(&myself, Duration::ZERO);
            }
            ReceiverMsg::Resume => {
                // Catch up first: what came while nobody listened. (A new
                // connection may reach a node that serves push now.)
                state.following = false;
                state.push_unsupported = false;
                state.follow(&myself, Duration::ZERO);
            }
            ReceiverMsg::Pushed {
                subscription,
                batch,
                applied,
            } => {
                if !state.is_live(subscription) {
                    return Ok(());
                }
                if !state.has_follower() {
                    // Nobody listens any more: let the node stop pushing.
                    state.push = None;
                    state.following = false;
                }
                let mut job = PullJob {
                    owner: Owner::Follow,
                    lines: Vec::new(),
                };
                // Acked in the answer: the node deletes through the cursor
                // before it pushes more.
                match state.apply_all(batch, &mut job).await {
                    Ok(true) => {
                        applied.up_to(state.cursor);
                        if let Some(f) = &state.follower {
                            let _ = f.send(Ok(()));
                        }
                    }
                    Ok(false) => applied.up_to(state.cursor),
                    Err(e) if state.is_live(subscription) => {
                        state.push = None;
                        state.follow_failed(&myself, e);
                    }
                    Err(_) => {}
                }
            }
            ReceiverMsg::PushEnded { subscription, why } => {
                if !state.is_live(subscription) {
                    return Ok(());
                }
                state.push = None;
                // A node that could not go on for a moment (its store, an
                // inbox restarting) is tried again, as after a lost connection.
                let why = match why.code() {
                    Some(quicnprotochat_wire::ErrorCode::Unavailable) => {
                        ClientError::Transport(why.to_string())
                    }
                    _ => why,
                };
                if why.code() == Some(quicnprotochat_wire::ErrorCode::Unimplemented) {
                    state.push_unsupported = true;
                    state.following = false;
                    state.follow(&myself, FOLLOW_WAIT);
                } else {
                    state.follow_failed(&myself, why.into());
                }
            }
            ReceiverMsg::Fetched { mut job, result } => {
                // Ok(true): the batch had envelopes, so there may be more.
                let outcome = match result {
                    Err(e) => Err(e.into()),
                    Ok(envelopes) if envelopes.is_empty() => Ok(false),
                    Ok(envelopes) => match state.apply_batch(envelopes, &mut job).await {
                        Ok(applied) => {
                            if let (true, Some(f)) = (applied, &state.follower) {
                                let _ = f.send(Ok(()));
                            }
                            Ok(true)
                        }
                        Err(e) => Err(e),
                    },
                };
                match (job.owner, outcome) {
                    // Something came: there may be more.
                    (owner @ Owner::Caller(_), Ok(true)) => {
                        let job = PullJob {
                            owner,
                            lines: job.lines,
                        };
                        state.fetch(&myself, job, Duration::ZERO)
                    }
                    (Owner::Caller(reply), Ok(false)) => {
                        let _ = reply.send(Ok(job.lines));
                    }
                    (Owner::Caller(reply), Err(e)) => {
                        let _ = reply.send(Err(e));
                    }
                    (Owner::Follow, Ok(true)) => {
                        state.following = false;
                        state.follow(&myself, Duration::ZERO);
                    }
                    (Owner::Follow, Ok(false)) => {
                        state.following = false;
                        state.listen(&myself);
                    }
                    (Owner::Follow, Err(e)) => state.follow_failed(&myself, e),
                }
            }
        }
        Ok(())
    }
}
