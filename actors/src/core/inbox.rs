//! The rules of one inbox: seq assignment, queue depth, acknowledgement.
//!
//! `seq` starts at 1 and grows by exactly one per accepted message. The state knows
//! three marks, always `acked <= durable <= assigned`:
//! - `assigned`: the highest seq handed out (its write may still be in flight);
//! - `durable`: the highest seq known to be committed to disk (wakes long-polls);
//! - `acked`: everything up to here has been deleted by the owner's ack.
//!
//! Apart from these, `ack_durable <= acked` marks how far those deletions are known
//! committed: an ack repeated while the first is still being written is answered
//! only once a write behind it commits, never "done" for a deletion that a crash
//! could still undo.
//!
//! How much an inbox takes depends on what is offered ([`Admission`]): ordinary
//! messages up to the queue limit; a group's commits (its history, which every
//! remaining member must get) up to twice that; a group's application messages
//! up to the limit, and past it they are dropped for this inbox only, counted,
//! and told to the owner by a missed-messages marker queued after its next ack.

/// Limits one inbox enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxLimits {
    /// Most unacknowledged messages the inbox may hold.
    pub queue_limit: u64,
    /// Largest payload accepted, in bytes.
    pub max_payload: usize,
}

/// What is persisted of an inbox besides its messages. Written in the same store
/// transaction as the messages it describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InboxMeta {
    /// Highest seq ever stored (0 when none).
    pub last_seq: u64,
    /// Highest seq acknowledged (and deleted); 0 when none.
    pub acked: u64,
    /// Messages dropped while the inbox was full, not yet told by a marker.
    pub missed: u64,
}

/// What kind of message is offered to an inbox, which decides how full it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A message for this inbox: refused at the queue limit, nothing stored.
    Regular,
    /// A group's application message: refused at the queue limit for this inbox
    /// only; the drop is counted for the missed-messages marker.
    Droppable,
    /// A group's commit, Welcome or commit receipt: the group's history, which
    /// may exceed the queue limit by as much again.
    Handshake,
}

impl InboxLimits {
    /// Most unacknowledged messages the inbox holds when offered `admission`.
    pub fn ceiling(self, admission: Admission) -> u64 {
        match admission {
            Admission::Handshake => self.queue_limit.saturating_mul(2),
            Admission::Regular | Admission::Droppable => self.queue_limit,
        }
    }
}

/// Why the inbox refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboxRefusal {
    #[error("inbox holds {depth} unacknowledged messages, the limit is {limit}")]
    /// The inbox holds as many messages as it may.
    QueueFull {
        /// Unacknowledged messages now.
        depth: u64,
        /// The limit.
        limit: u64,
    },
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    /// The payload is larger than the node stores.
    TooLarge {
        /// The payload's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    #[error("cannot ack up to seq {up_to}: the highest seq of this inbox is {highest}")]
    /// An ack names a seq the inbox never handed out.
    AckBeyondEnd {
        /// The seq acked.
        up_to: u64,
        /// The highest seq handed out.
        highest: u64,
    },
    #[error("no device owns this inbox any more (removed from its account)")]
    /// The inbox's device was removed: a group's fan-out skips it.
    NoDevice,
    #[error("this inbox already has {max} long-polls waiting; retry when one returns")]
    /// As many long-polls wait on the inbox as it holds.
    TooManyWaiters {
        /// The cap.
        max: usize,
    },
}

/// What [`InboxState::reserve`] set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// These seqs.
    Run(std::ops::RangeInclusive<u64>),
    /// Nothing: the inbox is full and the messages are droppable.
    Dropped {
        /// Why the inbox did not take them.
        refusal: InboxRefusal,
        /// How many they are.
        count: u64,
    },
}

impl Reserved {
    /// The first reserved seq, or why the messages were dropped.
    pub fn first(&self) -> Result<u64, InboxRefusal> {
        match self {
            Reserved::Run(run) => Ok(*run.start()),
            Reserved::Dropped { refusal, .. } => Err(refusal.clone()),
        }
    }
}

/// A range of seqs `from..=to` to delete, decided by an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckRange {
    /// First seq to delete.
    pub from: u64,
    /// Last seq to delete.
    pub to: u64,
}

/// The state machine of one inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxState {
    assigned: u64,
    durable: u64,
    acked: u64,
    ack_durable: u64,
    missed: u64,
}

/// What an accepted ack needs done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPlan {
    /// Delete this range, and answer once that is committed.
    Delete(AckRange),
    /// Already deleted and committed: answer at once.
    Done,
    /// Already counted, but its deletion is still being committed: answer once a
    /// write queued behind it commits.
    AfterInFlight,
}

impl InboxState {
    /// The state after (re)loading from the store: everything stored is durable.
    pub fn recovered(meta: InboxMeta) -> InboxState {
        debug_assert!(meta.acked <= meta.last_seq);
        InboxState {
            assigned: meta.last_seq,
            durable: meta.last_seq,
            acked: meta.acked.min(meta.last_seq),
            ack_durable: meta.acked.min(meta.last_seq),
            missed: meta.missed,
        }
    }

    /// Accepts a message of `len` bytes and assigns its seq, or refuses it. A refused
    /// message changes nothing.
    pub fn admit(&mut self, len: usize, limits: InboxLimits) -> Result<u64, InboxRefusal> {
        if len > limits.max_payload {
            return Err(InboxRefusal::TooLarge {
                len,
                max: limits.max_payload,
            });
        }
        let depth = self.depth();
        if depth >= limits.queue_limit {
            return Err(InboxRefusal::QueueFull {
                depth,
                limit: limits.queue_limit,
            });
        }
        self.assigned += 1;
        Ok(self.assigned)
    }

    /// Admits `count` messages at once, all or none (a batch of deliveries to the
    /// same inbox must not half-succeed). Returns the first seq of the run.
    pub fn admit_many(
        &mut self,
        lens: impl IntoIterator<Item = usize>,
        limits: InboxLimits,
        admission: Admission,
    ) -> Result<std::ops::RangeInclusive<u64>, InboxRefusal> {
        let mut count = 0u64;
        for len in lens {
            if len > limits.max_payload {
                return Err(InboxRefusal::TooLarge {
                    len,
                    max: limits.max_payload,
                });
            }
            count += 1;
        }
        let depth = self.depth();
        let limit = limits.ceiling(admission);
        if depth + count > limit {
            return Err(InboxRefusal::QueueFull { depth, limit });
        }
        let first = self.assigned + 1;
        self.assigned += count;
        Ok(first..=self.assigned)
    }

    /// Takes back the run `seqs` that `admit_many` just handed out, when the
    /// multi-inbox write it was for is abandoned. Only the latest run can be taken
    /// back (nothing was admitted after it), so no gap appears.
    pub fn release(&mut self, seqs: std::ops::RangeInclusive<u64>) {
        debug_assert_eq!(
            *seqs.end(),
            self.assigned,
            "only the latest run is released"
        );
        if *seqs.end() == self.assigned && *seqs.start() > self.durable {
            self.assigned = seqs.start() - 1;
        }
    }

    /// Reserves seqs for `lens.len()` messages of a multi-inbox write. A
    /// droppable message the full inbox cannot take is not a refusal but a
    /// reserved drop: the write goes ahead without it and, if it is stored, the
    /// drop is counted ([`InboxState::settle`]). Any other refusal is an `Err`.
    pub fn reserve(
        &mut self,
        lens: impl IntoIterator<Item = usize>,
        limits: InboxLimits,
        admission: Admission,
    ) -> Result<Reserved, InboxRefusal> {
        let lens: Vec<usize> = lens.into_iter().collect();
        let count = lens.len() as u64;
        match self.admit_many(lens, limits, admission) {
            Ok(run) => Ok(Reserved::Run(run)),
            Err(full @ InboxRefusal::QueueFull { .. }) if admission == Admission::Droppable => {
                Ok(Reserved::Dropped {
                    refusal: full,
                    count,
                })
            }
            Err(refusal) => Err(refusal),
        }
    }

    /// The multi-inbox write a reservation was for was stored (`used`) or
    /// abandoned: an abandoned run is taken back, a stored drop is counted.
    pub fn settle(&mut self, reserved: Reserved, used: bool) {
        match (reserved, used) {
            (Reserved::Run(run), false) => self.release(run),
            (Reserved::Dropped { count, .. }, true) => self.note_missed(count),
            _ => {}
        }
    }

    /// Counts `count` messages dropped for this inbox (stored with the write that
    /// dropped them), to be told by the next marker.
    pub fn note_missed(&mut self, count: u64) {
        self.missed = self.missed.saturating_add(count);
    }

    /// Messages dropped and not yet told.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// After an ack made room: the seq of the missed-messages marker to queue
    /// now, if drops wait to be told. The marker takes a place like any message.
    pub fn missed_marker_due(&mut self, limits: InboxLimits) -> Option<u64> {
        if self.missed == 0 || self.depth() >= limits.queue_limit {
            return None;
        }
        self.missed = 0;
        self.assigned += 1;
        Some(self.assigned)
    }

    /// Records that every seq up to `seq` is committed. Monotone: an older report
    /// changes nothing.
    pub fn mark_durable(&mut self, seq: u64) {
        debug_assert!(seq <= self.assigned, "durable beyond assigned");
        self.durable = self.durable.max(seq.min(self.assigned));
    }

    /// Acknowledges every seq up to `up_to`: the range to delete, or how to answer
    /// an ack of what was already acknowledged (acks are idempotent).
    pub fn ack(&mut self, up_to: u64) -> Result<AckPlan, InboxRefusal> {
        if up_to > self.assigned {
            return Err(InboxRefusal::AckBeyondEnd {
                up_to,
                highest: self.assigned,
            });
        }
        if up_to <= self.ack_durable {
            return Ok(AckPlan::Done);
        }
        if up_to <= self.acked {
            return Ok(AckPlan::AfterInFlight);
        }
        let range = AckRange {
            from: self.acked + 1,
            to: up_to,
        };
        self.acked = up_to;
        Ok(AckPlan::Delete(range))
    }

    /// Notes that the deletions up to `up_to` are committed.
    pub fn mark_ack_durable(&mut self, up_to: u64) {
        self.ack_durable = self.ack_durable.max(up_to.min(self.acked));
    }

    /// Unacknowledged messages, including those whose write is in flight.
    pub fn depth(&self) -> u64 {
        self.assigned - self.acked
    }

    /// Whether a long-poll for messages after `after` can be answered now.
    pub fn has_durable_after(&self, after: u64) -> bool {
        self.durable > after.max(self.acked)
    }

    /// The highest seq handed out (possibly not yet durable).
    pub fn assigned(&self) -> u64 {
        self.assigned
    }

    /// The highest seq known durable.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// The highest seq acknowledged (deleted).
    pub fn acked(&self) -> u64 {
        self.acked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: InboxLimits = InboxLimits {
        queue_limit: 3,
        max_payload: 10,
    };

    #[test]
    fn seqs_start_at_one_and_refusals_change_nothing() {
        let mut s = InboxState::recovered(InboxMeta::default());
        assert_eq!(s.admit(1, LIMITS), Ok(1));
        assert_eq!(
            s.admit(11, LIMITS),
            Err(InboxRefusal::TooLarge { len: 11, max: 10 })
        );
        assert_eq!(s.admit(10, LIMITS), Ok(2));
        assert_eq!(s.admit(0, LIMITS), Ok(3));
        assert_eq!(
            s.admit(0, LIMITS),
            Err(InboxRefusal::QueueFull { depth: 3, limit: 3 })
        );
        assert_eq!(s.ack(2), Ok(AckPlan::Delete(AckRange { from: 1, to: 2 })));
        assert_eq!(s.admit(0, LIMITS), Ok(4));
    }

    #[test]
    fn ack_is_idempotent_and_bounded() {
        let mut s = InboxState::recovered(InboxMeta {
            last_seq: 5,
            acked: 2,
            missed: 0,
        });
        assert_eq!(s.ack(1), Ok(AckPlan::Done));
        assert_eq!(
            s.ack(6),
            Err(InboxRefusal::AckBeyondEnd {
                up_to: 6,
                highest: 5
            })
        );
        assert_eq!(s.ack(5), Ok(AckPlan::Delete(AckRange { from: 3, to: 5 })));
        s.mark_ack_durable(5);
        assert_eq!(s.ack(5), Ok(AckPlan::Done));
        assert_eq!(s.depth(), 0);
    }

    #[test]
    fn an_ack_repeated_while_the_first_is_being_written_waits_for_it() {
        let mut s = InboxState::recovered(InboxMeta {
            last_seq: 6,
            acked: 1,
            missed: 0,
        });
        assert_eq!(s.ack(4), Ok(AckPlan::Delete(AckRange { from: 2, to: 4 })));
        assert_eq!(s.ack(4), Ok(AckPlan::AfterInFlight));
        assert_eq!(s.ack(3), Ok(AckPlan::AfterInFlight));
        assert_eq!(s.ack(1), Ok(AckPlan::Done), "committed before");
        s.mark_ack_durable(3);
        assert_eq!(s.ack(3), Ok(AckPlan::Done));
        assert_eq!(s.ack(4), Ok(AckPlan::AfterInFlight));
        s.mark_ack_durable(9);
        assert_eq!(s.ack(4), Ok(AckPlan::Done), "never beyond what was acked");
        assert_eq!(s.ack(5), Ok(AckPlan::Delete(AckRange { from: 5, to: 5 })));
    }

    #[test]
    fn long_poll_wakes_only_for_durable_unacked_messages() {
        let mut s = InboxState::recovered(InboxMeta::default());
        s.admit(1, LIMITS).unwrap();
        assert!(!s.has_durable_after(0), "in-flight write must not wake");
        s.mark_durable(1);
        assert!(s.has_durable_after(0));
        assert!(!s.has_durable_after(1));
        s.ack(1).unwrap();
        assert!(!s.has_durable_after(0), "acked messages are gone");
    }

    #[test]
    fn batch_admission_is_all_or_nothing() {
        let mut s = InboxState::recovered(InboxMeta::default());
        assert_eq!(s.admit_many([1, 2], LIMITS, Admission::Regular), Ok(1..=2));
        assert!(matches!(
            s.admit_many([1, 1], LIMITS, Admission::Regular),
            Err(InboxRefusal::QueueFull { .. })
        ));
        assert!(matches!(
            s.admit_many([1, 99], LIMITS, Admission::Regular),
            Err(InboxRefusal::TooLarge { .. })
        ));
        assert_eq!(s.assigned(), 2);
    }

    #[test]
    fn a_released_run_is_handed_out_again() {
        let mut s = InboxState::recovered(InboxMeta::default());
        assert_eq!(s.admit(1, LIMITS), Ok(1));
        let run = s.admit_many([1, 1], LIMITS, Admission::Regular).unwrap();
        assert_eq!(run, 2..=3);
        s.release(run);
        assert_eq!(s.depth(), 1);
        assert_eq!(s.admit(1, LIMITS), Ok(2));
    }

    #[test]
    fn commits_may_exceed_the_queue_limit_by_as_much_again() {
        let mut s = InboxState::recovered(InboxMeta::default());
        assert_eq!(
            s.admit_many([1, 1, 1], LIMITS, Admission::Regular),
            Ok(1..=3)
        );
        assert!(matches!(
            s.admit_many([1], LIMITS, Admission::Droppable),
            Err(InboxRefusal::QueueFull { limit: 3, .. })
        ));
        assert_eq!(
            s.admit_many([1, 1, 1], LIMITS, Admission::Handshake),
            Ok(4..=6)
        );
        assert!(matches!(
            s.admit_many([1], LIMITS, Admission::Handshake),
            Err(InboxRefusal::QueueFull { limit: 6, .. })
        ));
    }

    #[test]
    fn drops_are_told_by_one_marker_once_an_ack_makes_room() {
        let mut s = InboxState::recovered(InboxMeta::default());
        s.admit_many([1, 1, 1], LIMITS, Admission::Regular).unwrap();
        assert!(
            s.reserve([1], LIMITS, Admission::Regular).is_err(),
            "only droppable messages are dropped"
        );
        let abandoned = s.reserve([1], LIMITS, Admission::Droppable).unwrap();
        s.settle(abandoned, false);
        assert_eq!(s.missed(), 0, "an abandoned write drops nothing");
        let dropped = s.reserve([1, 1], LIMITS, Admission::Droppable).unwrap();
        assert!(matches!(dropped, Reserved::Dropped { count: 2, .. }));
        s.settle(dropped, true);
        assert_eq!(s.missed_marker_due(LIMITS), None, "no room yet");
        s.ack(1).unwrap();
        assert_eq!(s.missed_marker_due(LIMITS), Some(4));
        assert_eq!(s.missed(), 0);
        assert_eq!(s.missed_marker_due(LIMITS), None, "told once");
        assert_eq!(s.depth(), 3);
    }
}
