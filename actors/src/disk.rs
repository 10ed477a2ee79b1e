//! The node's disk high-water mark. Below `min_free_disk_bytes` of free space
//! on the file system of its store, the node refuses, with `STORAGE_FULL`, what
//! only adds data for good: new accounts and devices, new groups, KeyPackage
//! uploads. It keeps taking messages, acks and the commits of existing groups:
//! a conversation needs them, an ack frees space, and an inbox is bounded by its
//! queue limit. So the disk does not fill up to the point where the store's own
//! writes fail and the writer refuses everything.
//!
//! Free space is read with `statvfs` (what an unprivileged writer may use), at
//! most once a second; a store in PostgreSQL is on another machine's disk, and
//! is not watched here.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quicnprotochat_wire::{ErrorCode, WireError};

/// How long one reading of the free space stands.
const READ_EVERY: Duration = Duration::from_secs(1);

/// Name of the gauge of the store's free disk space, in bytes.
pub const DISK_FREE_BYTES: &str = "qpc_disk_free_bytes";

/// Whether the store's disk has room for data that stays. Cheap to clone.
#[derive(Clone, Default)]
pub struct DiskRoom(Option<Arc<Watched>>);

struct Watched {
    path: PathBuf,
    min_free: u64,
    /// The last reading: when, and the free bytes (`None`: unreadable).
    last: Mutex<Option<(Instant, Option<u64>)>>,
}

impl DiskRoom {
    /// Watches the file system holding `path`: below `min_free` free bytes it
    /// has no room. `min_free` 0 watches nothing.
    pub fn watch(path: impl Into<PathBuf>, min_free: u64) -> DiskRoom {
        if min_free == 0 {
            return DiskRoom(None);
        }
        DiskRoom(Some(Arc::new(Watched {
            path: path.into(),
            min_free,
            last: Mutex::new(None),
        })))
    }

    /// Reads the free space if the last reading is stale: called every few
    /// seconds by the node, so that the gauge stays current while nothing new
    /// is asked for.
    pub fn refresh(&self) {
        if let Some(w) = &self.0 {
            w.free_bytes();
        }
    }

    /// `STORAGE_FULL` when the disk is below its high-water mark; `what` says
    /// what was refused. A disk whose free space cannot be read is taken to
    /// have room (the store's own writes then say what is wrong).
    pub fn check(&self, what: &str) -> Result<(), WireError> {
        let Some(w) = &self.0 else {
            return Ok(());
        };
        match w.free_bytes() {
            Some(free) if free < w.min_free => {
                // The figures go to the operator's log, not to callers (some
                // of which have not even proven a password yet).
                tracing::warn!(
                    free_mib = free >> 20,
                    mark_mib = w.min_free >> 20,
                    refused = what,
                    "the disk is below its high-water mark"
                );
                Err(WireError::new(
                    ErrorCode::StorageFull,
                    format!("{what} refused: the node's disk is nearly full"),
                ))
            }
            _ => Ok(()),
        }
    }
}

impl Watched {
    fn free_bytes(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, free)) = *last
            && at.elapsed() < READ_EVERY
        {
            return free;
        }
        let free = match rustix::fs::statvfs(&self.path) {
            Ok(s) => Some(s.f_bavail.saturating_mul(s.f_frsize)),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the disk's free space");
                None
            }
        };
        if let Some(f) = free {
            metrics::gauge!(DISK_FREE_BYTES).set(f as f64);
        }
        *last = Some((Instant::now(), free));
        free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_below_its_mark_refuses_with_storage_full_and_one_above_it_does_not() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(DiskRoom::watch(dir.path(), 1).check("a new group"), Ok(()));
        let full = DiskRoom::watch(dir.path(), u64::MAX).check("a new group");
        let e = full.expect_err("no disk has that much free");
        assert_eq!(e.code, ErrorCode::StorageFull);
        assert!(e.detail.starts_with("a new group refused"), "{e}");
        assert_eq!(DiskRoom::watch(dir.path(), 0).check("x"), Ok(()));
        assert_eq!(DiskRoom::default().check("x"), Ok(()));
    }
}
