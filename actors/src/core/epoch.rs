//! The epoch fence of one MLS group: the rule that keeps a group from forking.
//!
//! A commit is made *at* an epoch (the epoch its author was in) and moves the group
//! to the next one. The first commit the node accepts at epoch E wins; any later
//! commit at E is stale, because its author has not yet seen the winner. Commits
//! from an epoch the node has never reached are refused too: nobody can be there
//! without a commit the node accepted.

/// What the node knows of one group's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EpochFence {
    /// The epoch the next accepted commit must be made at; `None` for a group no
    /// commit was accepted for yet (its creator may start at any epoch).
    next: Option<u64>,
}

/// Why a commit was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FenceRefusal {
    /// Another commit already moved the group past this epoch: process it, rebuild
    /// the commit and try again.
    #[error("epoch {epoch} is stale: the group is at epoch {current}")]
    Stale { epoch: u64, current: u64 },
    /// The commit claims an epoch the group never reached.
    #[error("epoch {epoch} is ahead of the group, which is at epoch {current}")]
    Ahead { epoch: u64, current: u64 },
}

impl EpochFence {
    /// The fence as persisted: the epoch the next commit must be made at.
    pub fn recovered(next: Option<u64>) -> EpochFence {
        EpochFence { next }
    }

    /// The epoch the next commit must be made at, if any commit was accepted.
    pub fn next(&self) -> Option<u64> {
        self.next
    }

    /// Whether a commit made at `epoch` may be accepted. Changes nothing.
    pub fn check(&self, epoch: u64) -> Result<(), FenceRefusal> {
        match self.next {
            None => Ok(()),
            Some(current) if epoch < current => Err(FenceRefusal::Stale { epoch, current }),
            Some(current) if epoch > current => Err(FenceRefusal::Ahead { epoch, current }),
            Some(_) => Ok(()),
        }
    }

    /// The fence after accepting a commit made at `epoch` (which `check` allowed):
    /// what must be written in the same transaction as the commit's deliveries.
    pub fn after_accepting(&self, epoch: u64) -> EpochFence {
        debug_assert!(self.check(epoch).is_ok());
        EpochFence {
            next: Some(epoch + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_commit_per_epoch_wins_and_the_rest_are_stale() {
        let fence = EpochFence::default();
        assert_eq!(fence.check(0), Ok(()));
        let fence = fence.after_accepting(0);
        assert_eq!(
            fence.check(0),
            Err(FenceRefusal::Stale {
                epoch: 0,
                current: 1
            })
        );
        assert_eq!(fence.check(1), Ok(()));
        assert_eq!(
            fence.check(2),
            Err(FenceRefusal::Ahead {
                epoch: 2,
                current: 1
            })
        );
    }

    #[test]
    fn a_group_first_seen_late_starts_where_its_creator_is() {
        let fence = EpochFence::default();
        assert_eq!(fence.check(7), Ok(()));
        assert_eq!(fence.after_accepting(7).next(), Some(8));
    }
}
