//! Owner-only files and folders for what holds secrets at rest.
//!
//! The node's database holds the OPAQUE server setup (the OPRF seed) beside the
//! password records, and a client profile holds the identity key and MLS secrets:
//! readable by another local user, either allows offline attacks (password
//! guessing, impersonation). Both are created owner-only and tightened when an
//! older version (or a careless copy) left them wider.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of folders that hold secrets.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of files that hold secrets.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) owner-only; an existing `dir` is
/// tightened to owner-only. Parents that already exist are left as they are.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)?;
    tighten(dir, PRIVATE_DIR_MODE)
}

/// Creates `file` empty and owner-only if it does not exist; an existing `file`
/// is tightened to owner-only. Its content is untouched.
pub fn private_file(file: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(file)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => tighten(file, PRIVATE_FILE_MODE),
        Err(e) => Err(e),
    }
}

/// Removes group and other permissions from `path` (never adds any).
fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current & !mode != 0 {
        std::fs::set_permissions(path, Permissions::from_mode(current & mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_folders_and_files_are_owner_only() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);
        let file = dir.join("x.redb");
        private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn wide_folders_and_files_are_tightened_and_keep_their_content() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("node.redb");
        std::fs::write(&file, b"content").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        private_dir(&dir).unwrap();
        private_file(&file).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read(&file).unwrap(), b"content");
    }

    #[test]
    fn tightening_never_adds_permissions() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("ro");
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o444)).unwrap();
        private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o400);
    }
}
