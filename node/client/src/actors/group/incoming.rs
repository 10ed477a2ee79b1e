//! Incoming envelopes of the group: MLS processing, what the client core decides
//! about each (show, hold for a later epoch, release, report), and the lines shown.

use super::*;
use crate::app_content::AppContent;
use crate::state::history::{Delivery, HistoryEntry};

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
    /// Confirms the names a commit's roster claims against the node's
    /// directory before the commit is applied ([`crate::actors::names`]).
    /// Returns whether `msg` changed.
    pub(super) async fn confirm_names(
        &self,
        msg: &mut ClientMessage,
    ) -> Result<bool, MessengerError> {
        if msg.roster.is_empty() {
            return Ok(false);
        }
        let gid = self.gid.clone();
        crate::actors::names::confirm_roster(
            &self.profile,
            &self.session.get(),
            &gid,
            &mut msg.roster,
        )
        .await
    }

    /// Applies an incoming envelope of this group; commits it with the cursor.
    pub(super) fn apply(
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
        if !retry {
            // A replay of a message processed before (its sender's retry stored
            // twice, or a repeat by the node or the network) is ignored: it was
            // shown or reported once already.
            let digest = quicnprotochat_crypto::digest(&msg.mls);
            if self.profile.state.was_processed(&digest)? {
                tracing::debug!(seq, "ignored a replayed group message");
                return Ok(false);
            }
            fx.processed = Some(digest);
        }
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
                let text = match crate::app_content::decode(&plaintext) {
                    AppContent::Text { id, text } => {
                        // A message sent again (its answer was lost) has a new
                        // ciphertext but the same id: shown once.
                        let key = crate::app_content::seen_key(&self.gid, &sender, id);
                        if self.profile.state.was_processed(&key)? {
                            tracing::debug!(seq, "ignored a message sent again");
                            return Ok(false);
                        }
                        fx.message_id = Some(key);
                        text
                    }
                    AppContent::Legacy(text) => text,
                    AppContent::Unknown(version) => format!(
                        "[a message in format {version}, which this version cannot show: update to read it]"
                    ),
                };
                fx.history.push((
                    self.gid.clone(),
                    HistoryEntry {
                        at_ms: crate::actors::now_ms(),
                        sender: p.name_of(&sender),
                        text: text.clone(),
                        delivery: Delivery::Done,
                    },
                ));
                fx.lines.push(Line {
                    seq,
                    group: Some(name.to_string()),
                    sender: Some(p.name_of(&sender)),
                    text,
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
            Some(e) if !e.username.is_empty() => e.username.clone(),
            _ => p.name_of(id),
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
            // An external commit: the committer brought itself in.
            let joined = added.len() == 1 && added[0].as_slice() == committer;
            let added = if joined { Vec::new() } else { added };
            let mut parts = Vec::new();
            if joined {
                parts.push("joined from a new device".to_string());
            }
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
            // Counted as released before it is applied: a held commit that applies
            // releases held messages in turn, and must not meet itself among them
            // (it would be processed twice, the second time as "too late").
            let mut probe = Effects {
                release: fx.release.iter().copied().chain([held_seq]).collect(),
                ..Effects::default()
            };
            let stays =
                self.apply_group_message(seq, &name, sender, &msg, &bytes[32..], &mut probe, true)?;
            if !stays {
                fx.release = probe.release;
                fx.lines.extend(probe.lines);
                fx.history.extend(probe.history);
                fx.roster.extend(probe.roster);
                if probe.forget_group.is_some() {
                    fx.forget_group = probe.forget_group;
                    break;
                }
            }
        }
        Ok(())
    }
}
