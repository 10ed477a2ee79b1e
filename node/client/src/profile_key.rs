//! Where a profile's key lives: a 32-byte file, owner-only, outside the
//! database. By default `profile.key` beside it in the profile folder (so a copy
//! of the database alone opens nothing); `QPC_PROFILE_KEY_FILE` puts it anywhere
//! else (another volume, a tmpfs filled from a keyring at login).

use std::io::Write;
use std::path::{Path, PathBuf};

use quicnprotochat_crypto::at_rest::{KEY_LEN, ProfileKey};
use quicnprotochat_crypto::private_fs::private_file;

/// The key file's name inside the profile folder.
pub const KEY_FILE: &str = "profile.key";
/// Environment variable naming another key file.
pub const KEY_FILE_ENV: &str = "QPC_PROFILE_KEY_FILE";

/// Why the profile key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("profile key file {path}: {source}")]
    /// The key file could not be read or written.
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    #[error("profile key file {path} must hold exactly {KEY_LEN} bytes")]
    /// The key file is not 32 bytes.
    Length {
        /// The file or folder concerned.
        path: PathBuf,
    },
    #[error(
        "profile key file {path} is missing, but the profile's secrets are sealed with a key: \
         restore the file (or point {KEY_FILE_ENV} at it)"
    )]
    /// The key file is gone but the profile is sealed.
    Missing {
        /// The file or folder concerned.
        path: PathBuf,
    },
}

/// The key file of the profile in `dir`.
pub fn key_file_for(dir: &Path) -> PathBuf {
    std::env::var_os(KEY_FILE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join(KEY_FILE))
}

/// Reads the key at `path`; when there is none and `may_create` (the profile
/// holds no sealed secret yet), makes one (owner-only, synced).
pub fn load_or_create(path: &Path, may_create: bool) -> Result<ProfileKey, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            private_file(path).map_err(io)?;
            let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyFileError::Length {
                path: path.to_owned(),
            })?;
            Ok(ProfileKey::from_bytes(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !may_create {
                return Err(KeyFileError::Missing {
                    path: path.to_owned(),
                });
            }
            let key = ProfileKey::generate();
            private_file(path).map_err(io)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .map_err(io)?;
            f.write_all(&key.to_bytes()[..]).map_err(io)?;
            f.sync_all().map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}
