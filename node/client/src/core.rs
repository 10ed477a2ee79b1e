//! The client's group-protocol rules as a pure state machine: no I/O, no MLS
//! library, no clock. The group actor (`actors/group.rs`) is the shell: it
//! loads what is durable (the MLS group's epoch, whether a commit of ours is
//! pending, the messages held for a later epoch), tells the core what happened,
//! and carries out what the core decides. A property test drives the core over
//! random interleavings of commits, answers, receipts and messages.
//!
//! The rules:
//! - **Our commit** is pending from the moment it is made until the node's answer
//!   settles it: accepted → applied; `STALE_EPOCH` or another refusal →
//!   discarded; no answer (the connection broke) → kept, because the node may have
//!   accepted it. A kept commit is applied when its receipt arrives, and
//!   discarded when a full pull of the inbox found no receipt (it was never
//!   accepted: the receipt is stored in the same transaction as the commit).
//! - **A message from a later epoch** is held (durably, at most `max_held` of
//!   them; past that it is dropped with a notice) and retried, in seq order, after
//!   each commit that moves the group forward. A message from an epoch the group
//!   has left too long ago is reported as arriving too late. Nothing is dropped
//!   without a notice.
//! - **An application message** whose envelope sender (who signed the upload) is
//!   not its MLS sender is dropped with a notice.
//! - **A message we send** has text, at most [`MAX_MESSAGE_BYTES`] of it; anything
//!   else is refused before anything is sent.

use std::collections::BTreeMap;

/// The most bytes of text one message carries (about WhatsApp's 65,536
/// characters): far below what the node takes in one payload, whatever the
/// group's suite adds.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Why a text is not sent as a message (nothing was sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageRefusal {
    /// Nothing but white space.
    #[error("an empty message is not sent")]
    Empty,
    /// Longer than [`MAX_MESSAGE_BYTES`].
    #[error("a message of {len} bytes is not sent: at most {max} bytes")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The most allowed.
        max: usize,
    },
}

/// Whether `text` may be sent as a message.
pub fn check_message_text(text: &str) -> Result<(), MessageRefusal> {
    if text.trim().is_empty() {
        return Err(MessageRefusal::Empty);
    }
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(MessageRefusal::TooLong {
            len: text.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    Ok(())
}

/// What the node answered to our commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAnswer {
    /// Accepted: stored for every member, with our receipt.
    Accepted,
    /// Another commit won the epoch.
    Stale,
    /// Refused for another reason (nothing was stored).
    Refused,
    /// No answer: the connection broke; the node may have accepted it.
    Lost,
}

/// What to do with our pending commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingAction {
    /// Apply it: the group moves to the next epoch.
    Confirm,
    /// Throw it away: it was never accepted.
    Discard,
    /// Keep it pending: its fate is not known yet.
    Keep,
    /// Nothing is pending.
    None,
}

/// What processing one group message (in MLS) came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// An application message.
    Application {
        /// Who signed the upload.
        envelope_sender: [u8; 32],
        /// The MLS sender.
        mls_sender: [u8; 32],
    },
    /// A commit applied: the group is at `epoch` now.
    CommitApplied {
        /// The new epoch.
        epoch: u64,
        /// Whether it removed us.
        removed_self: bool,
    },
    /// A proposal kept for the next commit.
    Proposal,
    /// From an epoch the group has not reached.
    NotYet {
        /// Its epoch.
        epoch: u64,
    },
    /// From an epoch the group has left too long ago.
    TooOld {
        /// Its epoch.
        epoch: u64,
    },
    /// Our own message, echoed.
    Own,
    /// MLS refused it.
    Rejected,
}

/// What the shell does with one processed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Show it (an application message, a membership change, a proposal).
    Show,
    /// Show it, and retry the held messages (a commit moved the group).
    ShowAndRelease,
    /// The group is gone for us (we were removed): show it and forget the group.
    Forget,
    /// Hold it durably until its epoch comes.
    Hold {
        /// The epoch it waits for.
        epoch: u64,
    },
    /// Tell the user it was dropped, and why.
    Notice(DropReason),
    /// Nothing to show.
    Nothing,
}

/// Why a message was not shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its envelope and MLS senders differ.
    SenderMismatch,
    /// Too many messages wait for their epoch already.
    TooManyHeld,
    /// It arrived after its epoch was gone.
    TooLate,
    /// MLS refused it.
    Rejected,
    /// Held, but its epoch never came before the group moved past it.
    StillFuture,
}

/// The group-protocol state of one group, as durable storage has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupProtocol {
    epoch: u64,
    pending: bool,
    /// Held messages by seq: the epoch each waits for (`None`: held by an older
    /// version that did not record it; retried after every commit).
    held: BTreeMap<u64, Option<u64>>,
    max_held: usize,
}

impl GroupProtocol {
    /// The state as loaded: the group's epoch, whether a commit of ours is
    /// pending, and the held messages of this group.
    pub fn observe(
        epoch: u64,
        pending: bool,
        held: impl IntoIterator<Item = (u64, Option<u64>)>,
        max_held: usize,
    ) -> GroupProtocol {
        GroupProtocol {
            epoch,
            pending,
            held: held.into_iter().collect(),
            max_held,
        }
    }

    /// The group's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether a commit of ours is pending.
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// We made a commit (durably pending now).
    pub fn committed(&mut self) {
        self.pending = true;
    }

    /// The node's answer to our pending commit.
    pub fn answer(&mut self, answer: NodeAnswer) -> PendingAction {
        if !self.pending {
            return PendingAction::None;
        }
        match answer {
            NodeAnswer::Accepted => self.confirm(),
            NodeAnswer::Stale | NodeAnswer::Refused => self.discard(),
            NodeAnswer::Lost => PendingAction::Keep,
        }
    }

    /// Our receipt for a commit made at `epoch` arrived.
    pub fn receipt(&mut self, epoch: u64) -> PendingAction {
        if self.pending && epoch == self.epoch {
            self.confirm()
        } else {
            PendingAction::None
        }
    }

    /// A full pull of the inbox is done: a pending commit without a receipt was
    /// never accepted.
    pub fn pulled_everything(&mut self) -> PendingAction {
        if self.pending {
            self.discard()
        } else {
            PendingAction::None
        }
    }

    fn confirm(&mut self) -> PendingAction {
        self.pending = false;
        self.epoch += 1;
        PendingAction::Confirm
    }

    fn discard(&mut self) -> PendingAction {
        self.pending = false;
        PendingAction::Discard
    }

    /// What to do with message `seq` once MLS processed it; `retry` when it is a
    /// held message being tried again (it may not be held a second time).
    pub fn processed(&mut self, seq: u64, outcome: &Processed, retry: bool) -> Disposition {
        match *outcome {
            Processed::Application {
                envelope_sender,
                mls_sender,
            } => {
                if envelope_sender == mls_sender {
                    Disposition::Show
                } else {
                    Disposition::Notice(DropReason::SenderMismatch)
                }
            }
            Processed::CommitApplied {
                epoch,
                removed_self,
            } => {
                self.epoch = epoch;
                // Someone else's commit won: ours (if any) is void.
                self.pending = false;
                if removed_self {
                    Disposition::Forget
                } else {
                    Disposition::ShowAndRelease
                }
            }
            Processed::Proposal => Disposition::Show,
            Processed::NotYet { epoch } if retry => {
                if epoch <= self.epoch {
                    Disposition::Notice(DropReason::StillFuture)
                } else {
                    Disposition::Hold { epoch }
                }
            }
            Processed::NotYet { epoch } => {
                if self.held.len() >= self.max_held {
                    Disposition::Notice(DropReason::TooManyHeld)
                } else {
                    self.held.insert(seq, Some(epoch));
                    Disposition::Hold { epoch }
                }
            }
            Processed::TooOld { .. } => Disposition::Notice(DropReason::TooLate),
            Processed::Own => Disposition::Nothing,
            Processed::Rejected => Disposition::Notice(DropReason::Rejected),
        }
    }

    /// The held messages to try now, in seq order: those whose epoch the group
    /// has reached (and those of unknown epoch).
    pub fn releasable(&self) -> Vec<u64> {
        self.held
            .iter()
            .filter(|(_, e)| e.is_none_or(|e| e <= self.epoch))
            .map(|(s, _)| *s)
            .collect()
    }

    /// A held message was tried: it stays held only if it is still from the
    /// future (then `true`).
    pub fn retried(&mut self, seq: u64, disposition: &Disposition) -> bool {
        match disposition {
            Disposition::Hold { epoch } => {
                self.held.insert(seq, Some(*epoch));
                true
            }
            _ => {
                self.held.remove(&seq);
                false
            }
        }
    }

    /// Messages held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_has_text_and_a_bounded_length() {
        assert_eq!(check_message_text(""), Err(MessageRefusal::Empty));
        assert_eq!(check_message_text(" \t\n"), Err(MessageRefusal::Empty));
        assert_eq!(check_message_text("hi"), Ok(()));
        let longest = "é".repeat(MAX_MESSAGE_BYTES / 2);
        assert_eq!(check_message_text(&longest), Ok(()));
        assert_eq!(
            check_message_text(&format!("{longest}x")),
            Err(MessageRefusal::TooLong {
                len: MAX_MESSAGE_BYTES + 1,
                max: MAX_MESSAGE_BYTES
            })
        );
    }
    use proptest::prelude::*;

    /// What happens to a member, in some order.
    #[derive(Debug, Clone)]
    enum Step {
        /// We commit; the node accepts it if no other commit won the epoch,
        /// and its answer reaches us or is lost.
        OurCommit { lost: bool },
        /// Another member's commit is accepted at the node's epoch.
        TheirCommit,
        /// Another member sends a message at the node's current epoch.
        TheirMessage,
        /// The next envelope of the inbox arrives (maybe out of order).
        Deliver { pick: prop::sample::Index },
        /// Everything in the inbox was pulled.
        PullAll,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Envelope {
        Commit { made_at: u64 },
        Message { epoch: u64 },
        Receipt { epoch: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            any::<bool>().prop_map(|lost| Step::OurCommit { lost }),
            Just(Step::TheirCommit),
            Just(Step::TheirMessage),
            any::<prop::sample::Index>().prop_map(|pick| Step::Deliver { pick }),
            Just(Step::PullAll),
        ]
    }

    /// Plays MLS: what processing an envelope at the member's epoch gives.
    fn mls(env: Envelope, epoch: u64) -> Processed {
        match env {
            Envelope::Commit { made_at } if made_at == epoch => Processed::CommitApplied {
                epoch: made_at + 1,
                removed_self: false,
            },
            Envelope::Commit { made_at } if made_at > epoch => Processed::NotYet { epoch: made_at },
            Envelope::Commit { .. } => Processed::Rejected,
            Envelope::Message { epoch: e } if e > epoch => Processed::NotYet { epoch: e },
            Envelope::Message { epoch: e } if e + 2 < epoch => Processed::TooOld { epoch: e },
            Envelope::Message { .. } => Processed::Application {
                envelope_sender: [1; 32],
                mls_sender: [1; 32],
            },
            Envelope::Receipt { .. } => unreachable!("receipts are not MLS"),
        }
    }

    /// The member under test: the core plus what the shell would hold.
    struct Member {
        core: GroupProtocol,
        held: BTreeMap<u64, Envelope>,
        accounted: u32,
        applied_ours: Vec<u64>,
    }

    impl Member {
        /// One envelope arrives and is handled as the group actor does.
        fn deliver(&mut self, seq: u64, env: Envelope) -> Result<(), TestCaseError> {
            match env {
                Envelope::Receipt { epoch } => {
                    if self.core.receipt(epoch) == PendingAction::Confirm {
                        self.applied_ours.push(epoch);
                        self.release()?;
                    }
                }
                _ => {
                    let d = self
                        .core
                        .processed(seq, &mls(env, self.core.epoch()), false);
                    match d {
                        Disposition::Hold { .. } => {
                            self.held.insert(seq, env);
                        }
                        Disposition::ShowAndRelease => self.release()?,
                        _ if matches!(env, Envelope::Message { .. }) => self.accounted += 1,
                        _ => {}
                    }
                }
            }
            Ok(())
        }

        /// Retries held messages whose epoch came, in seq order, until none is
        /// ready.
        fn release(&mut self) -> Result<(), TestCaseError> {
            let mut tried = Vec::new();
            loop {
                let ready: Vec<u64> = self.core.releasable();
                prop_assert!(ready.windows(2).all(|w| w[0] < w[1]), "seq order");
                let Some(&next) = ready.iter().find(|s| !tried.contains(*s)) else {
                    return Ok(());
                };
                tried.push(next);
                let Some(h) = self.held.get(&next).copied() else {
                    return Err(TestCaseError::fail("released a seq never held"));
                };
                let d = self.core.processed(next, &mls(h, self.core.epoch()), true);
                if !self.core.retried(next, &d) {
                    self.held.remove(&next);
                    if matches!(h, Envelope::Message { .. }) {
                        self.accounted += 1;
                    }
                    if d == Disposition::ShowAndRelease {
                        tried.clear();
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Over any interleaving: our commit is applied only if the node
        /// accepted it, never twice; the member never gets ahead of the node and
        /// catches up with it once everything is delivered; every message is
        /// shown, reported or still held, never silently lost; at most
        /// `max_held` are held; held messages are retried in seq order.
        #[test]
        fn the_group_protocol_applies_only_accepted_commits_and_loses_nothing_silently(
            steps in proptest::collection::vec(step(), 1..60),
            max_held in 1usize..6,
        ) {
            let mut m = Member {
                core: GroupProtocol::observe(0, false, [], max_held),
                held: BTreeMap::new(),
                accounted: 0,
                applied_ours: Vec::new(),
            };
            let mut node_epoch = 0u64; // the fence: where the next commit must be made
            let mut inbox: Vec<(u64, Envelope)> = Vec::new(); // undelivered
            let mut next_seq = 1u64;
            let mut accepted_ours: Vec<u64> = Vec::new();
            let mut sent = 0u32;
            for s in steps {
                match s {
                    Step::OurCommit { lost } => {
                        if m.core.pending() {
                            continue; // one attempt at a time, as the actor does
                        }
                        let made_at = m.core.epoch();
                        m.core.committed();
                        let accepted = made_at == node_epoch;
                        if accepted {
                            node_epoch += 1;
                            accepted_ours.push(made_at);
                            inbox.push((next_seq, Envelope::Receipt { epoch: made_at }));
                            next_seq += 1;
                        }
                        let answer = match (lost, accepted) {
                            (true, _) => NodeAnswer::Lost,
                            (false, true) => NodeAnswer::Accepted,
                            (false, false) => NodeAnswer::Stale,
                        };
                        if m.core.answer(answer) == PendingAction::Confirm {
                            m.applied_ours.push(made_at);
                            m.release()?;
                        }
                    }
                    Step::TheirCommit => {
                        inbox.push((next_seq, Envelope::Commit { made_at: node_epoch }));
                        node_epoch += 1;
                        next_seq += 1;
                    }
                    Step::TheirMessage => {
                        inbox.push((next_seq, Envelope::Message { epoch: node_epoch }));
                        next_seq += 1;
                        sent += 1;
                    }
                    Step::Deliver { pick } => {
                        if !inbox.is_empty() {
                            let (seq, env) = inbox.remove(pick.index(inbox.len()));
                            m.deliver(seq, env)?;
                        }
                    }
                    Step::PullAll => {
                        for (seq, env) in std::mem::take(&mut inbox) {
                            m.deliver(seq, env)?;
                        }
                        prop_assert_ne!(m.core.pulled_everything(), PendingAction::Confirm);
                    }
                }
                prop_assert!(m.core.held() <= max_held, "held is bounded");
                prop_assert!(m.core.epoch() <= node_epoch, "never ahead of the node");
            }
            for (seq, env) in std::mem::take(&mut inbox) {
                m.deliver(seq, env)?;
            }
            m.core.pulled_everything();
            for e in &m.applied_ours {
                prop_assert!(accepted_ours.contains(e), "applied a commit the node never accepted");
            }
            let distinct: std::collections::BTreeSet<_> = m.applied_ours.iter().collect();
            prop_assert_eq!(distinct.len(), m.applied_ours.len(), "applied twice");
            let still_held = m.held.values().filter(|e| matches!(e, Envelope::Message { .. })).count() as u32;
            prop_assert_eq!(m.accounted + still_held, sent, "every message shown, reported or still held");
        }
    }
}
