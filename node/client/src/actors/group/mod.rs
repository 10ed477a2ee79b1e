//! A group actor: owns one MLS group of the profile. Every epoch transition of the
//! group goes through its mailbox, one at a time: incoming messages (in the seq
//! order the receiver hands them over), our own commits, application messages.
//!
//! A message from a later epoch is held, durably, until the commit that gets
//! there; our own commits are made pending, offered to the node's epoch fence and
//! confirmed or discarded by its answer (`STALE_EPOCH`: the caller catches up on
//! the inbox through the receiver and asks again, so this actor never waits on the
//! receiver, which may be waiting on it).

use std::collections::BTreeSet;
use std::sync::Arc;

use quicnprotochat_crypto::envelope::HybridPublicKey;
use quicnprotochat_crypto::mls::{
    CommitOutput, Group, GroupEvent, GroupMember, validate_key_package,
};
use quicnprotochat_wire::error::NO_KEY_PACKAGES;
use quicnprotochat_wire::{ErrorCode, IdentityKey};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::session::SessionMsg;
use super::supervisor::SessionSlot;
use super::{Effects, Profile, ask_session, notice, short_hex};
use crate::core::{Disposition, DropReason, GroupProtocol, NodeAnswer, PendingAction, Processed};
use crate::message::{Body, ClientMessage, RosterEntry};
use crate::messenger::terms::{
    CrashPoint, GroupSummary, Line, MAX_COMMIT_BYTES, MAX_HELD, MAX_PROPOSAL_ATTEMPTS,
    MessengerError, SendReport,
};
use crate::mls_store::RedbMlsStorage;
use crate::rpc::CommitBodies;
use crate::{ClientError, KeyPackageTarget};

pub(crate) mod commit;
mod incoming;

/// The kinds of commit a member makes.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Add {
        key_packages: Vec<Vec<u8>>,
        added: Vec<RosterEntry>,
    },
    /// Every device of these users.
    RemoveUsers(Vec<String>),
    /// These devices (identity keys), where they are members; nothing if none is.
    RemoveDevices(Vec<[u8; 32]>),
    Update,
    PendingProposals,
}

/// How one commit attempt ended.
#[derive(Debug)]
pub(crate) enum CommitOutcome {
    /// Accepted and applied: the group's new epoch.
    Applied(u64),
    /// There was nothing to commit.
    Nothing,
    /// Another commit won the epoch: catch up on the inbox, then ask again.
    Stale,
    /// A test crash point stopped it.
    Interrupted,
}

type Reply<T> = RpcReplyPort<Result<T, MessengerError>>;

pub(crate) enum GroupMsg {
    /// Applies one incoming envelope of this group (a group message or our commit
    /// receipt) and commits it with the cursor at `seq`.
    Apply {
        seq: u64,
        sender: [u8; 32],
        msg: ClientMessage,
        raw: Vec<u8>,
        reply: Reply<Vec<Line>>,
    },
    /// Encrypts `text` for the group and delivers it to every other member device.
    /// Sends the outbox's message at `place`; on its way out (taken by at
    /// least one inbox) it leaves the outbox for the history, in one
    /// transaction; refused by every inbox, it stays, failed.
    Send {
        place: u64,
        id: crate::app_content::MessageId,
        text: String,
        /// Test hook: after the upload, answer as if the connection dropped.
        lose_answer: bool,
        reply: Reply<SendReport>,
    },
    /// Claims and verifies KeyPackages of these users for this group's suite.
    PrepareInvite {
        /// Whose packages (a user, or one device of a user), named by the user.
        targets: Vec<(String, KeyPackageTarget)>,
        reply: Reply<(Vec<Vec<u8>>, Vec<RosterEntry>)>,
    },
    /// One commit attempt of `change`.
    Commit {
        change: Change,
        crash_at: Option<CrashPoint>,
        reply: Reply<CommitOutcome>,
    },
    /// Proposes our removal to the others and forgets the group here.
    Leave {
        crash_at: Option<CrashPoint>,
        reply: Reply<()>,
    },
    /// After a full pull: discards a pending commit that got no receipt (it was
    /// never accepted), withdraws our own unsent leave; answers whether
    /// proposals wait to be committed.
    Sweep {
        reply: Reply<bool>,
    },
    /// Committing the waiting proposals failed, not for a lost connection.
    ProposalsFailed {
        why: String,
        reply: Reply<()>,
    },
    Summary {
        reply: Reply<GroupSummary>,
    },
    /// Test hook: fail, as a bug in the actor would.
    #[doc(hidden)]
    Crash,
}

pub(crate) struct GroupArgs {
    pub profile: Arc<Profile>,
    pub session: SessionSlot,
    pub group_id: Vec<u8>,
}

pub(crate) struct GroupState {
    profile: Arc<Profile>,
    session: SessionSlot,
    gid: Vec<u8>,
    /// This actor's own view of the OpenMLS storage.
    member: GroupMember<RedbMlsStorage>,
}

#[derive(Default)]
pub(crate) struct GroupActor;

impl GroupState {
    fn storage(&self) -> &RedbMlsStorage {
        self.member.provider().storage_provider()
    }

    fn load(&self) -> Result<Group, MessengerError> {
        self.member
            .load_group(&self.gid)?
            .ok_or_else(|| MessengerError::UnknownGroup(short_hex(&self.gid)))
    }

    fn name(&self) -> Result<String, MessengerError> {
        self.profile
            .state
            .group_name(&self.gid)?
            .ok_or_else(|| MessengerError::UnknownGroup(short_hex(&self.gid)))
    }

    /// Commits this actor's MLS writes (and `f`'s) in one transaction.
    fn save(
        &self,
        f: impl FnOnce(&crate::state::groups::ClientTxn<'_>) -> Result<(), redb::Error>,
    ) -> Result<(), MessengerError> {
        Ok(self.profile.state.transact(self.storage(), f)?)
    }

    /// Sends `mls` (a group message) to every other member device in one upload.
    async fn send_to_group(
        &self,
        group: &Group,
        mls: Vec<u8>,
    ) -> Result<SendReport, MessengerError> {
        let others = self.profile.others(group);
        if others.is_empty() {
            return Ok(SendReport::default());
        }
        let msg = self
            .profile
            .group_message(Body::Group, &self.gid, mls)
            .encode()?;
        let (body, parts) = self.profile.seal_for_group(group, &others, &msg)?;
        let upload_bytes =
            self.gid.len() + body.len() + parts.iter().map(|(_, p)| 32 + p.len()).sum::<usize>();
        let group_id = self.gid.clone();
        let outcomes = ask_session(&self.session.get(), |reply| SessionMsg::SendGroup {
            group_id,
            body,
            recipients: parts,
            reply,
        })
        .await?;
        let mut report = SendReport {
            upload_bytes,
            ..SendReport::default()
        };
        for o in outcomes {
            match o.outcome {
                Ok(seq) => report.seqs.push(seq),
                Err(why) => {
                    if why.code == ErrorCode::NotFound {
                        report.gone.push(o.recipient.0);
                    }
                    report
                        .undelivered
                        .push((self.profile.name_of(&o.recipient.0), why));
                }
            }
        }
        Ok(report)
    }

    async fn send(
        &mut self,
        place: u64,
        id: crate::app_content::MessageId,
        text: &str,
        lose_answer: bool,
    ) -> Result<SendReport, MessengerError> {
        let mut group = self.load()?;
        let plaintext = crate::app_content::encode_text(id, text);
        let ciphertext = group.encrypt(&self.member, &plaintext)?;
        // The ratchet moved: persist that before anything leaves, so a crash can
        // never make us reuse a message key.
        self.save(|_| Ok(()))?;
        let report = self.send_to_group(&group, ciphertext).await?;
        if lose_answer {
            return Err(MessengerError::Client(crate::ClientError::Transport(
                "the answer was lost (test hook)".into(),
            )));
        }
        if report.reached_nobody() {
            let why = report.summary(&self.name()?);
            self.profile.state.write(|t| t.send_failed(place, &why))?;
        } else {
            let entry = crate::state::history::HistoryEntry {
                at_ms: crate::actors::now_ms(),
                sender: self.profile.username.clone(),
                text: text.to_string(),
                delivery: crate::state::history::Delivery::Done,
            };
            self.profile.state.write(|t| {
                t.add_history(&self.gid, &entry)?;
                t.sent(place)
            })?;
        }
        Ok(report)
    }

    async fn leave(&mut self, crash_at: Option<CrashPoint>) -> Result<(), MessengerError> {
        let mut group = self.load()?;
        let proposal = group.leave(&self.member)?;
        // Saved before it leaves (it used a handshake key); taken back if it
        // reached nobody, or every later commit of ours would carry our own
        // removal, which MLS refuses. (After a crash here, `sweep` takes it back.)
        self.save(|_| Ok(()))?;
        if crash_at == Some(CrashPoint::BeforeSending) {
            return Ok(());
        }
        let why = match self.send_to_group(&group, proposal).await {
            Ok(report) if report.reached_nobody() => Some(report.summary(&self.name()?)),
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = why {
            group.withdraw_own_proposals(&self.member)?;
            self.save(|_| Ok(()))?;
            return Err(MessengerError::LeaveNotSent(why));
        }
        let gid = self.gid.clone();
        self.save(|t| t.forget_group(&gid))
    }

    /// Committing the waiting proposals failed (`why`): counted; after
    /// [`MAX_PROPOSAL_ATTEMPTS`] failures in a row they are dropped, with a line.
    fn proposals_failed(&mut self, why: &str) -> Result<(), MessengerError> {
        let gid = self.gid.clone();
        let mut failures = 0;
        self.save(|t| {
            failures = t.proposal_failed(&gid)?;
            Ok(())
        })?;
        if failures < MAX_PROPOSAL_ATTEMPTS {
            return Ok(());
        }
        let name = self.name()?;
        let mut group = self.load()?;
        group.clear_proposals(&self.member)?;
        let line = notice(
            0,
            Some(&name),
            format!(
                "gave up committing a requested change (a leave) after {failures} failed attempts: {why}; who asked to leave stays a member until removed (`remove`)"
            ),
        );
        self.save(|t| {
            t.proposals_settled(&gid)?;
            t.add_local_line(&line)
        })
    }

    fn sweep(&mut self) -> Result<bool, MessengerError> {
        let mut g = self.load()?;
        if self.protocol(&g)?.pulled_everything() == PendingAction::Discard {
            g.discard_commit(&self.member)?;
            self.save(|_| Ok(()))?;
        }
        // Our own leave, saved but never sent (we died in between): only others
        // can commit it, and left here it would fail every commit of ours.
        if !g.has_pending_commit() && g.withdraw_own_proposals(&self.member)? > 0 {
            let line = notice(
                0,
                Some(&self.name()?),
                "your leave did not reach the group; you are still a member (run `leave` again)"
                    .into(),
            );
            self.save(|t| t.add_local_line(&line))?;
        }
        Ok(g.has_pending_proposals())
    }

    /// The group-protocol state as stored: the group's epoch, our pending
    /// commit, the held messages (of every group: they share one bound).
    fn protocol(&self, group: &Group) -> Result<GroupProtocol, MessengerError> {
        let held = self.profile.state.held_seqs()?;
        Ok(GroupProtocol::observe(
            group.epoch(),
            group.has_pending_commit(),
            held.into_iter().map(|seq| (seq, None)),
            MAX_HELD,
        ))
    }

    fn summary(&self) -> Result<GroupSummary, MessengerError> {
        let group = self.load()?;
        Ok(GroupSummary {
            name: self.name()?,
            epoch: group.epoch(),
            members: group
                .members()
                .iter()
                .map(|m| self.profile.name_of(m))
                .collect(),
            suite: group.suite(),
            epoch_authenticator: group.epoch_authenticator(),
            group_id: self.gid.clone(),
        })
    }
}

impl Actor for GroupActor {
    type Msg = GroupMsg;
    type State = GroupState;
    type Arguments = GroupArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<GroupMsg>,
        args: GroupArgs,
    ) -> Result<GroupState, ActorProcessingErr> {
        let member = args.profile.state.mls_member(&args.profile.identity)?;
        Ok(GroupState {
            profile: args.profile,
            session: args.session,
            gid: args.group_id,
            member,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<GroupMsg>,
        msg: GroupMsg,
        state: &mut GroupState,
    ) -> Result<(), ActorProcessingErr> {
        // Every operation either commits what it wrote or leaves nothing behind.
        fn settle<T>(
            state: &GroupState,
            r: Result<T, MessengerError>,
        ) -> Result<T, MessengerError> {
            if r.is_err() {
                state.storage().rollback();
            }
            r
        }
        let mut forgotten = false;
        match msg {
            GroupMsg::Apply {
                seq,
                sender,
                mut msg,
                mut raw,
                reply,
            } => {
                let r = match state.confirm_names(&mut msg).await {
                    Ok(true) => msg
                        .encode()
                        .map(|re| raw = re)
                        .map_err(MessengerError::from),
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                };
                let r = r.and_then(|()| state.apply(seq, sender, &msg, &raw));
                let r = settle(state, r).map(|fx| {
                    forgotten = fx.forget_group.is_some();
                    fx.lines
                });
                let _ = reply.send(r);
            }
            GroupMsg::Send {
                place,
                id,
                text,
                lose_answer,
                reply,
            } => {
                let r = state.send(place, id, &text, lose_answer).await;
                let _ = reply.send(settle(state, r));
            }
            GroupMsg::PrepareInvite { targets, reply } => {
                let r = state.prepare_invite(targets).await;
                let _ = reply.send(settle(state, r));
            }
            GroupMsg::Commit {
                change,
                crash_at,
                reply,
            } => {
                let r = state.commit(&change, crash_at).await;
                let _ = reply.send(settle(state, r));
            }
            GroupMsg::Leave { crash_at, reply } => {
                let r = state.leave(crash_at).await;
                forgotten = r.is_ok();
                let _ = reply.send(settle(state, r));
            }
            GroupMsg::Sweep { reply } => {
                let r = state.sweep();
                let _ = reply.send(settle(state, r));
            }
            GroupMsg::ProposalsFailed { why, reply } => {
                let r = state.proposals_failed(&why);
                let _ = reply.send(settle(state, r));
            }
            GroupMsg::Summary { reply } => {
                let _ = reply.send(state.summary());
            }
            GroupMsg::Crash => return Err("test hook: group actor crash".into()),
        }
        if forgotten {
            // The profile no longer has this group: nothing more for this actor.
            myself.stop(Some("group forgotten".into()));
        }
        Ok(())
    }
}
