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

use quicnprotochat_actors::auth::NO_KEY_PACKAGES;
use quicnprotochat_crypto::envelope::HybridPublicKey;
use quicnprotochat_crypto::mls::{
    CommitOutput, Group, GroupEvent, GroupMember, validate_key_package,
};
use quicnprotochat_wire::{ErrorCode, IdentityKey};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::session::SessionMsg;
use super::supervisor::SessionSlot;
use super::{Effects, Profile, ask_session, notice, short_hex};
use crate::client::core::{
    Disposition, DropReason, GroupProtocol, NodeAnswer, PendingAction, Processed,
};
use crate::client::message::{Body, ClientMessage, RosterEntry};
use crate::client::messenger::{
    CrashPoint, GroupSummary, Line, MAX_COMMIT_BYTES, MAX_HELD, MAX_PROPOSAL_ATTEMPTS,
    MessengerError, SendReport,
};
use crate::client::mls_store::RedbMlsStorage;
use crate::client::rpc::CommitBodies;
use crate::client::{ClientError, KeyPackageTarget};

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
    Send {
        text: String,
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

/// A held message: the sealed sender's identity, then the client message.
fn encode_held(sender: &[u8; 32], msg: &[u8]) -> Vec<u8> {
    let mut out = sender.to_vec();
    out.extend_from_slice(msg);
    out
}

fn decode_held(bytes: &[u8]) -> Option<([u8; 32], ClientMessage)> {
    let sender: [u8; 32] = bytes.get(..32)?.try_into().ok()?;
    Some((sender, ClientMessage::decode(&bytes[32..]).ok()?))
}

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
        f: impl FnOnce(&crate::client::state::ClientTxn<'_>) -> Result<(), redb::Error>,
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

    async fn send(&mut self, text: &str) -> Result<SendReport, MessengerError> {
        let mut group = self.load()?;
        let ciphertext = group.encrypt(&self.member, text.as_bytes())?;
        // The ratchet moved: persist that before anything leaves, so a crash can
        // never make us reuse a message key.
        self.save(|_| Ok(()))?;
        self.send_to_group(&group, ciphertext).await
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
            Ok(report) if !report.seqs.is_empty() || report.undelivered.is_empty() => None,
            Ok(report) => Some(report.summary(&self.name()?)),
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
        let name = self.name()?;
        let gid = self.gid.clone();
        let mut group = self.load()?;
        let mut failures = 0;
        self.save(|t| {
            failures = t.proposal_failed(&gid)?;
            Ok(())
        })?;
        if failures < MAX_PROPOSAL_ATTEMPTS {
            return Ok(());
        }
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
            t.add_local_line(&line.display())
        })
    }

    async fn prepare_invite(
        &mut self,
        targets: Vec<(String, KeyPackageTarget)>,
    ) -> Result<(Vec<Vec<u8>>, Vec<RosterEntry>), MessengerError> {
        let group = self.load()?;
        let group_name = self.name()?;
        let suite = group
            .suite()
            .unwrap_or(quicnprotochat_crypto::mls::Suite::Classic);
        let present: BTreeSet<Vec<u8>> = group.members().into_iter().collect();
        let mut key_packages = Vec::new();
        let mut added = Vec::new();
        for (user, target) in targets {
            let user = &user;
            let claimed =
                match ask_session(&self.session.get(), |reply| SessionMsg::FetchKeyPackages {
                    target,
                    suite,
                    reply,
                })
                .await
                {
                    Err(ClientError::Refused(w)) if w.code == ErrorCode::NotFound => {
                        return Err(if w.detail == NO_KEY_PACKAGES {
                            MessengerError::WrongSuite {
                                user: user.clone(),
                                suite,
                            }
                        } else {
                            MessengerError::UnknownUser(user.clone())
                        });
                    }
                    other => other?,
                };
            let mut fresh = 0;
            for c in claimed {
                if present.contains(c.identity_key.0.as_slice()) {
                    continue;
                }
                let bad = |reason: String| MessengerError::BadKeys {
                    user: user.clone(),
                    reason,
                };
                HybridPublicKey::verify(&c.hybrid_public_key, &c.identity_key.0)
                    .map_err(|e| bad(e.to_string()))?;
                let kp = validate_key_package(&c.key_package).map_err(|e| bad(e.to_string()))?;
                if kp.identity_key != c.identity_key.0 {
                    return Err(bad("KeyPackage of another device".into()));
                }
                if kp.suite != suite {
                    return Err(MessengerError::WrongSuite {
                        user: user.clone(),
                        suite,
                    });
                }
                key_packages.push(c.key_package);
                added.push(RosterEntry {
                    identity: c.identity_key.0,
                    username: user.clone(),
                    hybrid_key: c.hybrid_public_key,
                });
                fresh += 1;
            }
            if fresh == 0 {
                return Err(MessengerError::AlreadyMember {
                    user: user.clone(),
                    group: group_name.clone(),
                });
            }
        }
        Ok((key_packages, added))
    }

    /// One attempt at committing `change` through the node's epoch fence.
    async fn commit(
        &mut self,
        change: &Change,
        crash_at: Option<CrashPoint>,
    ) -> Result<CommitOutcome, MessengerError> {
        let mut group = self.load()?;
        let before = self.profile.others(&group);
        let (out, added): (CommitOutput, &[RosterEntry]) = match change {
            Change::Add {
                key_packages,
                added,
            } => (group.add_members(&self.member, key_packages)?, added),
            Change::RemoveUsers(users) => {
                let mut gone = Vec::new();
                for user in users {
                    let devices: Vec<Vec<u8>> = group
                        .members()
                        .into_iter()
                        .filter(|m| self.profile.name_of(m) == *user)
                        .collect();
                    if devices.is_empty() {
                        return Err(MessengerError::NotAMember {
                            user: user.clone(),
                            group: self.name()?,
                        });
                    }
                    gone.extend(devices);
                }
                let ids: Vec<&[u8]> = gone.iter().map(|i| i.as_slice()).collect();
                (group.remove_members(&self.member, &ids)?, &[])
            }
            Change::RemoveDevices(devices) => {
                let present = group.members();
                let ids: Vec<&[u8]> = devices
                    .iter()
                    .map(|d| d.as_slice())
                    .filter(|d| present.iter().any(|m| m.as_slice() == *d))
                    .collect();
                if ids.is_empty() {
                    return Ok(CommitOutcome::Nothing);
                }
                (group.remove_members(&self.member, &ids)?, &[])
            }
            Change::Update => (group.self_update(&self.member)?, &[]),
            Change::PendingProposals => match group.commit_pending_proposals(&self.member)? {
                Some(out) => (out, &[]),
                None => return Ok(CommitOutcome::Nothing),
            },
        };
        // The pending commit is durable before it leaves: if we crash once the
        // node accepted it, the receipt in our inbox lets us apply it.
        self.save(|_| Ok(()))?;
        let bodies = self.commit_bodies(&group, &before, &out, added)?;
        let bytes: usize = bodies.commit.len()
            + bodies.welcome.len()
            + bodies.receipt.len()
            + bodies
                .parts
                .iter()
                .map(|(_, p)| p.len() + 48)
                .sum::<usize>();
        if bytes > MAX_COMMIT_BYTES {
            group.discard_commit(&self.member)?;
            self.save(|_| Ok(()))?;
            return Err(MessengerError::CommitTooLarge { bytes });
        }
        if crash_at == Some(CrashPoint::BeforeSending) {
            return Ok(CommitOutcome::Interrupted);
        }
        let members = group.members_after_pending_commit().unwrap_or_default();
        let group_id = self.gid.clone();
        let epoch = out.epoch;
        let mls_commit = out.commit.clone();
        let answer = ask_session(&self.session.get(), |reply| SessionMsg::CommitGroup {
            group_id,
            epoch,
            members,
            mls_commit,
            bodies,
            reply,
        })
        .await;
        if answer.is_ok() && crash_at == Some(CrashPoint::AfterAcceptance) {
            return Ok(CommitOutcome::Interrupted);
        }
        let mut protocol = self.protocol(&group)?;
        let node_answer = match &answer {
            Ok(_) => NodeAnswer::Accepted,
            Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => NodeAnswer::Stale,
            Err(ClientError::Refused(_)) => NodeAnswer::Refused,
            Err(_) => NodeAnswer::Lost,
        };
        match protocol.answer(node_answer) {
            PendingAction::Confirm => {
                group.confirm_commit(&self.member)?;
                let epoch = group.epoch();
                let gid = self.gid.clone();
                self.save(|t| {
                    for e in added {
                        t.put_roster(e)?;
                    }
                    if matches!(change, Change::PendingProposals) {
                        t.proposals_settled(&gid)?;
                    }
                    Ok(())
                })?;
                Ok(CommitOutcome::Applied(epoch))
            }
            PendingAction::Discard => {
                group.discard_commit(&self.member)?;
                self.save(|_| Ok(()))?;
                match answer {
                    Err(e) if node_answer == NodeAnswer::Refused => Err(e.into()),
                    _ => Ok(CommitOutcome::Stale),
                }
            }
            // The node may have accepted it before the connection broke: keep it
            // pending; the next pull applies it from its receipt, or discards it
            // when there is none.
            PendingAction::Keep | PendingAction::None => match answer {
                Err(e) => Err(e.into()),
                Ok(_) => Ok(CommitOutcome::Nothing),
            },
        }
    }

    /// The commit's bodies: the commit for every other member before it
    /// (removed ones included, so they learn it), a Welcome for added devices,
    /// our own receipt; each uploaded once, with per-recipient parts where the
    /// group's suite needs them.
    fn commit_bodies(
        &self,
        group: &Group,
        before: &[Vec<u8>],
        out: &CommitOutput,
        added: &[RosterEntry],
    ) -> Result<CommitBodies, MessengerError> {
        let p = &self.profile;
        let mut bodies = CommitBodies::default();
        let mut commit = p.group_message(Body::Group, &self.gid, out.commit.clone());
        commit.roster = added.to_vec();
        if !before.is_empty() {
            let (body, parts) = p.seal_for_group(group, before, &commit.encode()?)?;
            bodies.commit = body;
            bodies.parts.extend(parts);
        }
        if let Some(welcome) = &out.welcome
            && !added.is_empty()
        {
            let mut roster: Vec<RosterEntry> = before
                .iter()
                .filter_map(|m| p.state.roster_entry(m).ok().flatten())
                .collect();
            roster.push(p.my_entry());
            roster.extend(added.iter().cloned());
            let mut msg = p.group_message(Body::Welcome, &self.gid, welcome.clone());
            msg.roster = roster;
            let mut keys = Vec::with_capacity(added.len());
            for a in added {
                keys.push(
                    HybridPublicKey::verify(&a.hybrid_key, &a.identity).map_err(|e| {
                        MessengerError::BadKeys {
                            user: a.username.clone(),
                            reason: e.to_string(),
                        }
                    })?,
                );
            }
            let ids: Vec<IdentityKey> = added.iter().map(|a| IdentityKey(a.identity)).collect();
            let (body, parts) = p.seal_shared_to(group, &ids, &keys, &msg.encode()?);
            bodies.welcome = body;
            bodies.parts.extend(parts);
        }
        let receipt = p
            .group_message(
                Body::CommitReceipt { epoch: out.epoch },
                &self.gid,
                Vec::new(),
            )
            .encode()?;
        let me = p.me();
        let (body, parts) = p.seal_for_group(group, &[me.to_vec()], &receipt)?;
        bodies.receipt = body;
        bodies.parts.extend(parts);
        Ok(bodies)
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
            self.save(|t| t.add_local_line(&line.display()))?;
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

    /// Applies an incoming envelope of this group; commits it with the cursor.
    fn apply(
        &mut self,
        seq: u64,
        sender: [u8; 32],
        msg: &ClientMessage,
        raw: &[u8],
    ) -> Result<Effects, MessengerError> {
        let mut fx = Effects::default();
        let name = self.name()?;
        match msg.body {
            Body::CommitReceipt { epoch } => {
                let mut group = self.load()?;
                if self.protocol(&group)?.receipt(epoch) == PendingAction::Confirm {
                    group.confirm_commit(&self.member)?;
                    fx.lines.push(Line {
                        seq,
                        group: Some(name),
                        sender: None,
                        text: format!("your change was applied (epoch {})", group.epoch()),
                        epoch: Some(group.epoch()),
                    });
                    self.release_held(seq, &mut fx)?;
                }
            }
            Body::Group => {
                self.apply_group_message(seq, &name, sender, msg, raw, &mut fx, false)?;
            }
            Body::Welcome => {} // the receiver joins groups
        }
        self.profile.commit_envelope(self.storage(), seq, &fx)?;
        Ok(fx)
    }

    /// Processes one group message in MLS and carries out what the group
    /// protocol (`client::core`) decides: show, hold, report, release, forget.
    /// `retry`: a held message tried again (it may not be held twice; returns
    /// whether it is to stay held).
    #[allow(clippy::too_many_arguments)]
    fn apply_group_message(
        &mut self,
        seq: u64,
        name: &str,
        sender: [u8; 32],
        msg: &ClientMessage,
        raw: &[u8],
        fx: &mut Effects,
        retry: bool,
    ) -> Result<bool, MessengerError> {
        let mut group = self.load()?;
        let mut protocol = self.protocol(&group)?;
        let before: BTreeSet<Vec<u8>> = group.members().into_iter().collect();
        let checkpoint = self.storage().checkpoint();
        let (event, error) = match group.process(&self.member, &msg.mls) {
            Ok(e) => (Some(e), None),
            Err(e) => {
                // Whatever OpenMLS wrote before refusing is not kept.
                self.storage().restore(checkpoint);
                (None, Some(e))
            }
        };
        let processed = match &event {
            None => Processed::Rejected,
            Some(GroupEvent::Application { sender: s, .. }) => Processed::Application {
                envelope_sender: sender,
                mls_sender: s.as_slice().try_into().unwrap_or([0; 32]),
            },
            Some(GroupEvent::CommitApplied {
                epoch,
                removed_self,
                ..
            }) => Processed::CommitApplied {
                epoch: *epoch,
                removed_self: *removed_self,
            },
            Some(GroupEvent::ProposalStored { .. }) => Processed::Proposal,
            Some(GroupEvent::NotYet { epoch }) => Processed::NotYet { epoch: *epoch },
            Some(GroupEvent::TooOld { epoch }) => Processed::TooOld { epoch: *epoch },
            Some(GroupEvent::Own { .. }) => Processed::Own,
        };
        let disposition = protocol.processed(seq, &processed, retry);
        let p = self.profile.clone();
        let from = p.name_of(&sender);
        match (disposition, event) {
            (Disposition::Hold { .. }, _) if retry => return Ok(true),
            (Disposition::Hold { .. }, _) => fx.hold = Some(encode_held(&sender, raw)),
            (Disposition::Notice(reason), event) => {
                let text = match (reason, event) {
                    (DropReason::Rejected, _) => format!(
                        "a message from {from} was rejected: {}",
                        error.map(|e| e.to_string()).unwrap_or_default()
                    ),
                    (DropReason::SenderMismatch, _) => {
                        "a message whose envelope and MLS senders differ was dropped".into()
                    }
                    (DropReason::TooManyHeld, Some(GroupEvent::NotYet { epoch })) => format!(
                        "a message from epoch {epoch} was dropped: too many messages waiting for their epoch"
                    ),
                    (DropReason::TooLate, Some(GroupEvent::TooOld { epoch })) => {
                        format!("a message from {from} (epoch {epoch}) arrived too late to be read")
                    }
                    (DropReason::StillFuture, _) => {
                        format!(
                            "a held message from {from} never reached its epoch and was dropped"
                        )
                    }
                    (reason, _) => format!("a message from {from} was dropped ({reason:?})"),
                };
                fx.lines.push(notice(seq, Some(name), text));
            }
            (
                Disposition::Show,
                Some(GroupEvent::Application {
                    sender,
                    epoch,
                    plaintext,
                }),
            ) => {
                fx.lines.push(Line {
                    seq,
                    group: Some(name.to_string()),
                    sender: Some(p.name_of(&sender)),
                    text: String::from_utf8_lossy(&plaintext).into_owned(),
                    epoch: Some(epoch),
                });
            }
            (Disposition::Show, Some(GroupEvent::ProposalStored { sender })) => {
                fx.lines.push(notice(
                    seq,
                    Some(name),
                    format!("{} asked to leave", p.name_of(&sender)),
                ));
            }
            (
                d @ (Disposition::ShowAndRelease | Disposition::Forget),
                Some(GroupEvent::CommitApplied {
                    sender: committer,
                    epoch,
                    members,
                    ..
                }),
            ) => {
                let after: BTreeSet<Vec<u8>> = members.into_iter().collect();
                let forget = d == Disposition::Forget;
                let line = self.commit_line(
                    seq, name, msg, &committer, epoch, &before, &after, fx, forget,
                );
                fx.lines.push(line);
                if d == Disposition::Forget {
                    fx.forget_group = Some(msg.group_id.clone());
                } else {
                    self.release_held(seq, fx)?;
                }
            }
            _ => {}
        }
        Ok(false)
    }

    /// The line that tells of an applied commit; learns the roster entries of
    /// new members it carries (stored with the envelope's other effects).
    #[allow(clippy::too_many_arguments)]
    fn commit_line(
        &self,
        seq: u64,
        name: &str,
        msg: &ClientMessage,
        committer: &[u8],
        epoch: u64,
        before: &BTreeSet<Vec<u8>>,
        after: &BTreeSet<Vec<u8>>,
        fx: &mut Effects,
        removed_self: bool,
    ) -> Line {
        let p = &self.profile;
        let learned: Vec<RosterEntry> = msg
            .roster
            .iter()
            .filter(|e| {
                after.contains(e.identity.as_slice())
                    && HybridPublicKey::verify(&e.hybrid_key, &e.identity).is_ok()
            })
            .cloned()
            .collect();
        let name_for = |id: &[u8]| match learned.iter().find(|e| e.identity == id) {
            Some(e) => e.username.clone(),
            None => p.name_of(id),
        };
        let who = name_for(committer);
        let text = if removed_self {
            format!("you were removed from the group by {who}")
        } else {
            let names = |set: Vec<&Vec<u8>>| {
                set.iter()
                    .map(|m| name_for(m))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let added: Vec<&Vec<u8>> = after.difference(before).collect();
            let removed: Vec<&Vec<u8>> = before.difference(after).collect();
            let mut parts = Vec::new();
            if !added.is_empty() {
                parts.push(format!("added {}", names(added)));
            }
            if !removed.is_empty() {
                parts.push(format!("removed {}", names(removed)));
            }
            if parts.is_empty() {
                parts.push("updated their keys".into());
            }
            format!("{who} {} (epoch {epoch})", parts.join(", "))
        };
        fx.roster.extend(learned);
        Line {
            seq,
            group: Some(name.to_string()),
            sender: None,
            text,
            epoch: Some(epoch),
        }
    }

    /// Retries, in seq order, the messages of this group that waited for a later
    /// epoch (the ones the group protocol says may be ready).
    fn release_held(&mut self, seq: u64, fx: &mut Effects) -> Result<(), MessengerError> {
        let name = self.name()?;
        let group = self.load()?;
        let ready = self.protocol(&group)?.releasable();
        let held: std::collections::BTreeMap<u64, Vec<u8>> =
            self.profile.state.held()?.into_iter().collect();
        for held_seq in ready {
            if fx.release.contains(&held_seq) {
                continue;
            }
            let Some(bytes) = held.get(&held_seq) else {
                continue;
            };
            let Some((sender, msg)) = decode_held(bytes) else {
                fx.release.push(held_seq);
                continue;
            };
            if msg.group_id != self.gid {
                continue;
            }
            let mut probe = Effects::default();
            let stays =
                self.apply_group_message(seq, &name, sender, &msg, &bytes[32..], &mut probe, true)?;
            if !stays {
                fx.release.push(held_seq);
                fx.lines.extend(probe.lines);
                fx.roster.extend(probe.roster);
                fx.release.extend(probe.release);
                if probe.forget_group.is_some() {
                    fx.forget_group = probe.forget_group;
                    break;
                }
            }
        }
        Ok(())
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
                msg,
                raw,
                reply,
            } => {
                let r = state.apply(seq, sender, &msg, &raw);
                let r = settle(state, r).map(|fx| {
                    forgotten = fx.forget_group.is_some();
                    fx.lines
                });
                let _ = reply.send(r);
            }
            GroupMsg::Send { text, reply } => {
                let r = state.send(&text).await;
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
