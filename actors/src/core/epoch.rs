//! The epoch fence of one MLS group: the rule that keeps a group from forking.
//!
//! A commit is made *at* an epoch (the epoch its author was in) and moves the group
//! to the next one. The first commit the node accepts at epoch E wins; any later
//! commit at E is stale, because its author has not yet seen the winner. Commits
//! from an epoch the node has never reached are refused too: nobody can be there
//! without a commit the node accepted. Once a group has a commit, only the members
//! it named may commit again, so a stranger who learns a group id cannot take its
//! epochs (and with them the group) away from its members.
//!
//! One exception lets a device in from outside: an external commit (a device
//! that lost its state, or a new one, joining from the group's GroupInfo) may
//! come from a device not named yet, if another device of its account is named.
//! The group's members accepted that account; its devices are its to manage.

use std::collections::BTreeSet;

/// What the node knows of one group's history.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EpochFence {
    /// The epoch the next accepted commit must be made at; `None` for a group no
    /// commit was accepted for yet (its creator may start at any epoch).
    next: Option<u64>,
    /// Who may commit next: the members the last accepted commit named.
    members: BTreeSet<[u8; 32]>,
}

/// Why a commit was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FenceRefusal {
    /// Another commit already moved the group past this epoch: process it, rebuild
    /// the commit and try again.
    #[error("epoch {epoch} is stale: the group is at epoch {current}")]
    Stale {
        /// The epoch the commit was made in.
        epoch: u64,
        /// The epoch the group is in.
        current: u64,
    },
    /// The commit claims an epoch the group never reached.
    #[error("epoch {epoch} is ahead of the group, which is at epoch {current}")]
    Ahead {
        /// The epoch the commit claims.
        epoch: u64,
        /// The epoch the group is in.
        current: u64,
    },
    /// The caller is not among the group's members.
    #[error("not a member of this group")]
    NotAMember,
    /// The commit names members it is not delivered to. A commit is the group's
    /// history: a member that never receives it cannot follow the group, and a
    /// commit delivered to nobody would only write a fence (disk) for free.
    #[error("{missing} member(s) named by the commit get no delivery of it")]
    Undelivered {
        /// How many named members get nothing.
        missing: usize,
    },
    /// The committer created as many groups as one device may have.
    #[error("this device created {max} groups, the most one device may have")]
    TooManyGroups {
        /// The quota.
        max: u64,
    },
}

/// Whether the GroupInfo of `new_bytes` a commit publishes is kept, its
/// committer's kept GroupInfos taking `total` bytes of which `here` in this
/// group's (which the new one replaces), at most `max` being allowed: yes within
/// the quota, and yes for one that does not grow the total. A GroupInfo not
/// kept does not refuse its commit (a removal must never wait on a quota); the
/// group is then not rejoinable until a later commit publishes one that fits.
pub fn keeps_group_info(total: u64, here: u64, new_bytes: u64, max: u64) -> bool {
    let would = total.saturating_sub(here).saturating_add(new_bytes);
    would <= max || new_bytes <= here
}

/// Whether a device that created `created` groups may create another, at most
/// `max` being allowed.
pub fn check_group_quota(created: u64, max: u64) -> Result<(), FenceRefusal> {
    if created >= max {
        return Err(FenceRefusal::TooManyGroups { max });
    }
    Ok(())
}

/// Whether a commit leaving the group with `members` reaches each of them
/// (the committer aside) among `recipients`. Recipients beyond the members
/// (a removed member learning of its removal) are allowed.
pub fn check_reaches_members<'a>(
    members: &BTreeSet<[u8; 32]>,
    committer: &[u8; 32],
    recipients: impl IntoIterator<Item = &'a [u8; 32]>,
) -> Result<(), FenceRefusal> {
    let reached: BTreeSet<&[u8; 32]> = recipients.into_iter().collect();
    let missing = members
        .iter()
        .filter(|m| *m != committer && !reached.contains(m))
        .count();
    if missing > 0 {
        return Err(FenceRefusal::Undelivered { missing });
    }
    Ok(())
}

/// Whether `device`, or another device of its account (`account_devices`), is
/// among `members`: who may read a group's GroupInfo and join it from outside.
pub fn account_in_group(
    members: &BTreeSet<[u8; 32]>,
    device: &[u8; 32],
    account_devices: &BTreeSet<[u8; 32]>,
) -> bool {
    members.contains(device) || account_devices.iter().any(|d| members.contains(d))
}

impl EpochFence {
    /// The fence as persisted: the epoch the next commit must be made at, and
    /// who may make it.
    pub fn recovered(next: Option<u64>, members: BTreeSet<[u8; 32]>) -> EpochFence {
        EpochFence { next, members }
    }

    /// The epoch the next commit must be made at, if any commit was accepted.
    pub fn next(&self) -> Option<u64> {
        self.next
    }

    /// Whether the next accepted commit creates the group (writes its first
    /// fence), and so counts against its device's group quota.
    pub fn creates_group(&self) -> bool {
        self.next.is_none()
    }

    /// Whether `committer`'s commit made at `epoch` may be accepted. Changes
    /// nothing. Membership is checked first: a stranger learns nothing of the epoch.
    pub fn check(&self, epoch: u64, committer: &[u8; 32]) -> Result<(), FenceRefusal> {
        if self.next.is_some() && !self.members.contains(committer) {
            return Err(FenceRefusal::NotAMember);
        }
        self.check_epoch(epoch)
    }

    fn check_epoch(&self, epoch: u64) -> Result<(), FenceRefusal> {
        match self.next {
            None => Ok(()),
            Some(current) if epoch < current => Err(FenceRefusal::Stale { epoch, current }),
            Some(current) if epoch > current => Err(FenceRefusal::Ahead { epoch, current }),
            Some(_) => Ok(()),
        }
    }

    /// Whether an external commit made at `epoch` by `committer`, whose account's
    /// devices are `account_devices`, may be accepted: a group with a commit, a
    /// device of the account among its members, and the right epoch. Changes
    /// nothing.
    pub fn check_join(
        &self,
        epoch: u64,
        committer: &[u8; 32],
        account_devices: &BTreeSet<[u8; 32]>,
    ) -> Result<(), FenceRefusal> {
        if self.next.is_none() || !account_in_group(&self.members, committer, account_devices) {
            return Err(FenceRefusal::NotAMember);
        }
        self.check_epoch(epoch)
    }

    /// The fence after accepting a commit made at `epoch` (which `check` allowed)
    /// that leaves the group with `members`: what must be written in the same
    /// transaction as the commit's deliveries.
    pub fn after_accepting(&self, epoch: u64, members: BTreeSet<[u8; 32]>) -> EpochFence {
        EpochFence {
            next: Some(epoch + 1),
            members,
        }
    }

    /// Who may make the next commit.
    pub fn members(&self) -> &BTreeSet<[u8; 32]> {
        &self.members
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 32] = [1; 32];
    const B: [u8; 32] = [2; 32];
    const STRANGER: [u8; 32] = [9; 32];

    fn both() -> BTreeSet<[u8; 32]> {
        [A, B].into_iter().collect()
    }

    #[test]
    fn first_commit_per_epoch_wins_and_the_rest_are_stale() {
        let fence = EpochFence::default();
        assert_eq!(fence.check(0, &A), Ok(()));
        let fence = fence.after_accepting(0, both());
        assert_eq!(
            fence.check(0, &B),
            Err(FenceRefusal::Stale {
                epoch: 0,
                current: 1
            })
        );
        assert_eq!(fence.check(1, &B), Ok(()));
        assert_eq!(
            fence.check(2, &A),
            Err(FenceRefusal::Ahead {
                epoch: 2,
                current: 1
            })
        );
    }

    #[test]
    fn a_group_first_seen_late_starts_where_its_creator_is() {
        let fence = EpochFence::default();
        assert_eq!(fence.check(7, &A), Ok(()));
        assert_eq!(fence.after_accepting(7, both()).next(), Some(8));
    }

    #[test]
    fn only_a_group_s_first_commit_creates_it_and_creation_has_a_quota() {
        let fresh = EpochFence::default();
        assert!(fresh.creates_group());
        assert!(!fresh.after_accepting(0, both()).creates_group());
        assert_eq!(check_group_quota(1, 2), Ok(()));
        assert_eq!(
            check_group_quota(2, 2),
            Err(FenceRefusal::TooManyGroups { max: 2 })
        );
    }

    #[test]
    fn a_device_keeps_at_most_its_quota_of_group_info_bytes_and_a_replacement_counts_once() {
        assert!(keeps_group_info(0, 0, 100, 100));
        // Replacing its own 60 bytes here with 100: 40 + 100 fits in 140.
        assert!(keeps_group_info(100, 60, 100, 140));
        assert!(!keeps_group_info(100, 0, 100, 150));
        // Over the quota already (a lowered setting), a smaller one still goes.
        assert!(keeps_group_info(500, 80, 60, 100));
        assert!(!keeps_group_info(500, 80, 90, 100));
    }

    #[test]
    fn a_commit_must_reach_every_member_but_its_committer() {
        assert_eq!(check_reaches_members(&both(), &A, [&B]), Ok(()));
        assert_eq!(check_reaches_members(&both(), &A, [&B, &STRANGER]), Ok(()));
        assert_eq!(
            check_reaches_members(&both(), &A, [&STRANGER]),
            Err(FenceRefusal::Undelivered { missing: 1 })
        );
        assert_eq!(
            check_reaches_members(&both(), &STRANGER, []),
            Err(FenceRefusal::Undelivered { missing: 2 })
        );
        let alone = [A].into_iter().collect();
        assert_eq!(check_reaches_members(&alone, &A, []), Ok(()));
    }

    #[test]
    fn a_device_joins_from_outside_only_if_its_account_is_in_the_group() {
        const A2: [u8; 32] = [3; 32];
        let account_of_a: BTreeSet<[u8; 32]> = [A, A2].into_iter().collect();
        let strangers: BTreeSet<[u8; 32]> = [STRANGER].into_iter().collect();
        assert_eq!(
            EpochFence::default().check_join(0, &A2, &account_of_a),
            Err(FenceRefusal::NotAMember),
            "no group to join before its first commit"
        );
        let fence = EpochFence::default().after_accepting(0, both());
        assert_eq!(fence.check_join(1, &A2, &account_of_a), Ok(()));
        assert_eq!(
            fence.check_join(1, &STRANGER, &strangers),
            Err(FenceRefusal::NotAMember)
        );
        assert_eq!(
            fence.check_join(0, &A2, &account_of_a),
            Err(FenceRefusal::Stale {
                epoch: 0,
                current: 1
            })
        );
        // A member rejoining with its own key (its state lost) needs no account.
        assert_eq!(fence.check_join(1, &B, &BTreeSet::new()), Ok(()));
        // Once in, the joined device is a member like any other.
        let fence = fence.after_accepting(1, [A, B, A2].into_iter().collect());
        assert_eq!(fence.check(2, &A2), Ok(()));
    }

    #[test]
    fn only_named_members_commit_and_a_removed_one_no_longer_can() {
        let fence = EpochFence::default().after_accepting(0, both());
        assert_eq!(fence.check(1, &STRANGER), Err(FenceRefusal::NotAMember));
        assert_eq!(fence.check(0, &STRANGER), Err(FenceRefusal::NotAMember));
        let fence = fence.after_accepting(1, [A].into_iter().collect());
        assert_eq!(fence.check(2, &B), Err(FenceRefusal::NotAMember));
        assert_eq!(fence.check(2, &A), Ok(()));
    }
}
