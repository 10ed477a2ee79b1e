//! Who gets a group's shared bodies: the rules of `sendGroup` and `commitGroup`,
//! decided from the group's fence (its members as of the last accepted commit),
//! without I/O.

use std::collections::BTreeSet;

use super::inbox::Admission;

/// Why a group send or commit names the wrong recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FanoutRefusal {
    /// The sender is not a member of the group (or the group has no commit yet).
    #[error("not a member of this group")]
    NotAMember,
    /// A recipient named is not a member of the group (or is the sender).
    #[error("recipient {index} is not another member of this group")]
    NotARecipient {
        /// Its place in the list.
        index: usize,
    },
    /// A recipient is named twice.
    #[error("recipient {index} is named twice")]
    Duplicate {
        /// Its second place in the list.
        index: usize,
    },
    /// The commit adds members but carries no Welcome for them.
    #[error("the commit adds {added} member(s) but carries no Welcome")]
    NoWelcome {
        /// How many it adds.
        added: usize,
    },
    /// A part is given for someone who gets nothing.
    #[error("a part is given for an identity that gets no body")]
    StrayPart,
}

/// The recipients of one application message (or proposal) to the group:
/// `named` if given (each must be another member), else every member but the
/// sender.
pub fn send_recipients(
    members: &BTreeSet<[u8; 32]>,
    sender: &[u8; 32],
    named: &[[u8; 32]],
) -> Result<Vec<[u8; 32]>, FanoutRefusal> {
    if !members.contains(sender) {
        return Err(FanoutRefusal::NotAMember);
    }
    if named.is_empty() {
        return Ok(members.iter().filter(|m| *m != sender).copied().collect());
    }
    let mut seen = BTreeSet::new();
    for (index, r) in named.iter().enumerate() {
        if r == sender || !members.contains(r) {
            return Err(FanoutRefusal::NotARecipient { index });
        }
        if !seen.insert(r) {
            return Err(FanoutRefusal::Duplicate { index });
        }
    }
    Ok(named.to_vec())
}

/// Who gets what of one accepted commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitFanout {
    /// The commit: every member before it but the committer. Remaining members
    /// must get it (the group's history); removed ones get it if their inbox
    /// has room, else a missed-messages marker.
    pub commit_to: Vec<([u8; 32], Admission)>,
    /// The Welcome: every member the commit adds.
    pub welcome_to: Vec<[u8; 32]>,
}

/// Plans the fan-out of a commit by `committer` that leaves the group with
/// `after`, the group having `before` (`None`: no commit yet, so the committer
/// alone).
pub fn commit_fanout(
    before: Option<&BTreeSet<[u8; 32]>>,
    committer: &[u8; 32],
    after: &BTreeSet<[u8; 32]>,
    has_welcome: bool,
) -> Result<CommitFanout, FanoutRefusal> {
    let alone = BTreeSet::from([*committer]);
    let before = before.filter(|b| !b.is_empty()).unwrap_or(&alone);
    let commit_to = before
        .iter()
        .filter(|m| *m != committer)
        .map(|m| {
            let admission = if after.contains(m) {
                Admission::Handshake
            } else {
                Admission::Droppable
            };
            (*m, admission)
        })
        .collect();
    let welcome_to: Vec<[u8; 32]> = after
        .iter()
        .filter(|m| !before.contains(*m) && *m != committer)
        .copied()
        .collect();
    if !welcome_to.is_empty() && !has_welcome {
        return Err(FanoutRefusal::NoWelcome {
            added: welcome_to.len(),
        });
    }
    Ok(CommitFanout {
        commit_to,
        welcome_to,
    })
}

impl CommitFanout {
    /// The plan without the members whose device was removed from its account
    /// (`is_device` false): a group names them until someone commits their
    /// removal, and meanwhile they get nothing and fail nothing.
    pub fn without_removed(mut self, is_device: impl Fn(&[u8; 32]) -> bool) -> CommitFanout {
        self.commit_to.retain(|(k, _)| is_device(k));
        self.welcome_to.retain(|k| is_device(k));
        self
    }
}

/// Recipients split into devices that exist and devices removed from their
/// account (which the sender is told about, and which get nothing).
pub fn split_removed(
    recipients: Vec<[u8; 32]>,
    is_device: impl Fn(&[u8; 32]) -> bool,
) -> (Vec<[u8; 32]>, Vec<[u8; 32]>) {
    recipients.into_iter().partition(|k| is_device(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn k(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn removed_devices_get_no_copy_of_a_send_or_a_commit() {
        let removed = |m: &[u8; 32]| *m != k(3);
        assert_eq!(
            split_removed(vec![k(2), k(3), k(4)], removed),
            (vec![k(2), k(4)], vec![k(3)])
        );
        let before = BTreeSet::from([k(1), k(2), k(3)]);
        let after = BTreeSet::from([k(1), k(2), k(3), k(4), k(5)]);
        let plan = commit_fanout(Some(&before), &k(1), &after, true)
            .unwrap()
            .without_removed(|m| *m != k(3) && *m != k(5));
        assert_eq!(plan.commit_to, vec![(k(2), Admission::Handshake)]);
        assert_eq!(plan.welcome_to, vec![k(4)]);
    }

    #[test]
    fn only_members_send_and_only_to_other_members() {
        let members = BTreeSet::from([k(1), k(2), k(3)]);
        assert_eq!(send_recipients(&members, &k(1), &[]), Ok(vec![k(2), k(3)]));
        assert_eq!(
            send_recipients(&members, &k(9), &[]),
            Err(FanoutRefusal::NotAMember)
        );
        assert_eq!(
            send_recipients(&members, &k(1), &[k(2), k(9)]),
            Err(FanoutRefusal::NotARecipient { index: 1 })
        );
        assert_eq!(
            send_recipients(&members, &k(1), &[k(1)]),
            Err(FanoutRefusal::NotARecipient { index: 0 })
        );
        assert_eq!(
            send_recipients(&members, &k(1), &[k(2), k(2)]),
            Err(FanoutRefusal::Duplicate { index: 1 })
        );
    }

    #[test]
    fn a_commit_that_adds_needs_a_welcome() {
        let after = BTreeSet::from([k(1), k(2)]);
        assert_eq!(
            commit_fanout(None, &k(1), &after, false),
            Err(FanoutRefusal::NoWelcome { added: 1 })
        );
    }

    proptest! {
        /// Every remaining member but the committer gets the commit as history,
        /// every removed one as droppable, every added one the Welcome, and
        /// nobody gets two bodies.
        #[test]
        fn commit_fanout_reaches_everyone_once(before in proptest::collection::btree_set(0u8..8, 1..6), after in proptest::collection::btree_set(0u8..8, 1..6), pick in any::<prop::sample::Index>()) {
            let before: BTreeSet<[u8; 32]> = before.into_iter().map(k).collect();
            let after: BTreeSet<[u8; 32]> = after.into_iter().map(k).collect();
            let committer = *pick.get(&before.iter().copied().collect::<Vec<_>>());
            let plan = commit_fanout(Some(&before), &committer, &after, true).unwrap();
            let mut reached = BTreeSet::new();
            for (m, admission) in &plan.commit_to {
                prop_assert!(reached.insert(*m));
                prop_assert_eq!(*admission == Admission::Handshake, after.contains(m));
            }
            for m in &plan.welcome_to {
                prop_assert!(reached.insert(*m));
                prop_assert!(!before.contains(m));
            }
            prop_assert!(!reached.contains(&committer));
            for m in after.iter().filter(|m| **m != committer) {
                prop_assert!(reached.contains(m), "a remaining or added member got nothing");
            }
        }
    }
}
