//! Named places in the writer where a test can make the node process die, to prove
//! that no moment of a commit loses or half-writes anything acknowledged.
//!
//! A kill from outside lands wherever the process happens to be; these points
//! land exactly on the moments that matter: the transaction built but not
//! committed, committed but not yet answered, and half-way through a fan-out.
//! The plan comes from the environment variable [`CRASH_POINT_ENV`], read once,
//! e.g. `QPC_TEST_CRASH_POINT=after-commit:25` (die the 25th time the point is
//! reached). Unset, as in production, a point costs one atomic load.
//!
//! The process dies by `abort`: no destructor, no flush, no reply, like SIGKILL.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a crash point (`NAME:N`).
pub const CRASH_POINT_ENV: &str = "QPC_TEST_CRASH_POINT";

/// A moment inside a store commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Every write of the batch applied to the transaction, before its commit.
    BeforeCommit,
    /// The commit is durable, no caller has been answered yet.
    AfterCommitBeforeReplies,
    /// A shared body is referenced from some of its recipients' inboxes, not yet
    /// from the others.
    MidFanOut,
}

impl CrashPoint {
    /// Every point, for tests that visit them all.
    pub const ALL: [CrashPoint; 3] = [
        CrashPoint::BeforeCommit,
        CrashPoint::AfterCommitBeforeReplies,
        CrashPoint::MidFanOut,
    ];

    /// Its name in [`CRASH_POINT_ENV`].
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::BeforeCommit => "before-commit",
            CrashPoint::AfterCommitBeforeReplies => "after-commit",
            CrashPoint::MidFanOut => "mid-fan-out",
        }
    }

    /// The plan `NAME:N` (N ≥ 1) as a point and its hit count.
    pub fn parse_plan(text: &str) -> Option<(CrashPoint, u64)> {
        let (name, n) = text.split_once(':')?;
        let point = CrashPoint::ALL.into_iter().find(|p| p.name() == name)?;
        let n: u64 = n.parse().ok().filter(|n| *n >= 1)?;
        Some((point, n))
    }
}

static PLAN: OnceLock<Option<(CrashPoint, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

/// Marks that the writer reached `point`; dies there if the plan says so.
pub(crate) fn reached(point: CrashPoint) {
    let plan = PLAN.get_or_init(|| {
        let text = std::env::var(CRASH_POINT_ENV).ok()?;
        let plan = CrashPoint::parse_plan(&text);
        if plan.is_none() {
            tracing::warn!(value = %text, "ignoring an unreadable {CRASH_POINT_ENV}");
        }
        plan
    });
    if let Some((armed, n)) = *plan
        && armed == point
        && HITS.fetch_add(1, Ordering::Relaxed) + 1 >= n
    {
        eprintln!("test crash point {} reached: aborting", point.name());
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_plan_names_a_point_and_a_positive_count() {
        assert_eq!(
            CrashPoint::parse_plan("mid-fan-out:3"),
            Some((CrashPoint::MidFanOut, 3))
        );
        for p in CrashPoint::ALL {
            assert_eq!(
                CrashPoint::parse_plan(&format!("{}:1", p.name())),
                Some((p, 1))
            );
        }
        assert_eq!(CrashPoint::parse_plan("after-commit:0"), None);
        assert_eq!(CrashPoint::parse_plan("after-commit"), None);
        assert_eq!(CrashPoint::parse_plan("nowhere:2"), None);
    }
}
