//! One process owns a profile at a time, and the others learn which.
//!
//! redb refuses a second open of the file with "Database already open. Cannot
//! acquire lock.", which says neither who holds it nor what to do. The owner
//! instead takes an advisory lock on `owner.lock` in the profile folder first
//! and writes its pid there: a second opener reads the pid and is refused with
//! [`StateError::InUse`]. The kernel drops the lock with the process, however it
//! ends, so a stale file never keeps a profile locked.
//!
//! Within the owning process the hold is shared: a daemon holds its profile for
//! its whole life, and the profile's state opened inside it (by its messenger,
//! a login) takes the same hold rather than being refused by it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use super::StateError;

/// Name of the lock file inside a profile folder.
pub const OWNER_FILE: &str = "owner.lock";

/// The held lock; the profile is this process's while it lives.
#[derive(Debug)]
pub struct ProfileOwner {
    _file: File,
}

/// The profiles this process holds, by canonical folder (a few per process; the
/// load generator's hundreds at most, each entry gone with its hold).
static HELD: Mutex<Vec<(PathBuf, Weak<ProfileOwner>)>> = Mutex::new(Vec::new());

impl ProfileOwner {
    /// Takes the profile in `dir` for this process (or shares the hold this
    /// process has already), or says which process has it.
    pub fn take(dir: &Path) -> Result<Arc<ProfileOwner>, StateError> {
        let key = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|(_, hold)| hold.strong_count() > 0);
        if let Some(hold) = held
            .iter()
            .find(|(d, _)| *d == key)
            .and_then(|(_, h)| h.upgrade())
        {
            return Ok(hold);
        }
        let hold = Arc::new(ProfileOwner::lock(dir)?);
        held.push((key, Arc::downgrade(&hold)));
        Ok(hold)
    }

    fn lock(dir: &Path) -> Result<ProfileOwner, StateError> {
        let path = dir.join(OWNER_FILE);
        let failed = |source: std::io::Error| StateError::Store {
            path: path.clone(),
            message: format!("cannot take the profile's lock: {source}"),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(failed)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StateError::InUse {
                    dir: dir.to_owned(),
                    pid: owner_pid(&mut file),
                });
            }
            Err(TryLockError::Error(e)) => return Err(failed(e)),
        }
        file.set_len(0).map_err(failed)?;
        file.seek(SeekFrom::Start(0)).map_err(failed)?;
        writeln!(file, "{}", std::process::id()).map_err(failed)?;
        Ok(ProfileOwner { _file: file })
    }
}

/// The pid the owner wrote (none if it has not written it yet).
fn owner_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The pid of the process that owns the profile in `dir`, if one does.
pub fn current_owner(dir: &Path) -> Option<u32> {
    let mut file = File::open(dir.join(OWNER_FILE)).ok()?;
    match file.try_lock_shared() {
        // Nobody holds it.
        Ok(()) => None,
        Err(TryLockError::WouldBlock) => owner_pid(&mut file),
        Err(TryLockError::Error(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_with_the_first_owners_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = ProfileOwner::take(dir.path()).unwrap();
        // Another process, as far as the kernel's lock can tell.
        match ProfileOwner::lock(dir.path()) {
            Err(StateError::InUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("a second owner was not refused: {other:?}"),
        }
        assert_eq!(current_owner(dir.path()), Some(std::process::id()));
        let shared = ProfileOwner::take(dir.path()).expect("the owning process shares its hold");
        drop(first);
        assert_eq!(current_owner(dir.path()), Some(std::process::id()));
        drop(shared);
        assert_eq!(current_owner(dir.path()), None);
        ProfileOwner::take(dir.path()).expect("the profile is free once its owner is gone");
    }
}
