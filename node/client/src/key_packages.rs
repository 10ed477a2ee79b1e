//! This device's published KeyPackages: how many, and making a batch of them.
//! Their secrets are saved in the profile before anything is uploaded, so a
//! package the node hands out can always be used.

use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::mls::{MlsError, Suite};

use crate::ClientState;
use crate::state::StateError;

/// One-time KeyPackages uploaded after registering (and on a new device's login).
pub const DEFAULT_KEY_PACKAGES: usize = 100;
/// One-time KeyPackages of the post-quantum suite published with each rotation
/// (its last-resort package serves once they are gone).
pub const PQ_KEY_PACKAGES: usize = 10;
/// Below this many one-time packages left, the client uploads more by itself.
pub const REFILL_BELOW: u64 = 10;
/// One-time packages per upload call.
const PER_CALL: usize = 100;
/// The most one refresh makes (each costs a key generation and a row at the node).
pub const MAX_REFRESH: usize = 1_000;

/// What `refresh-keypackage` prints.
pub fn refreshed_text(count: usize, remaining: u64) -> String {
    format!(
        "uploaded {count} KeyPackages and a new last-resort one; {remaining} one-time packages published"
    )
}

/// Refuses a refresh of more than [`MAX_REFRESH`] packages.
pub fn check_count(count: usize) -> Result<(), KeyPackageError> {
    if count > MAX_REFRESH {
        return Err(KeyPackageError::TooMany(count));
    }
    Ok(())
}

/// Why a batch could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyPackageError {
    /// OpenMLS could not make a package.
    #[error("cannot make a KeyPackage: {0}")]
    Mls(#[from] MlsError),
    /// The profile could not keep their secrets.
    #[error(transparent)]
    State(#[from] StateError),
    /// More packages asked for at once than [`MAX_REFRESH`].
    #[error("{0} KeyPackages at once is too many: at most {MAX_REFRESH}")]
    TooMany(usize),
}

/// KeyPackages made and saved, to upload.
pub(crate) struct KeyPackageBatch {
    calls: Vec<UploadCall>,
}

/// The arguments of one `uploadKeyPackages` call (one suite per call).
pub(crate) struct UploadCall {
    pub one_time: Vec<Vec<u8>>,
    /// Empty: the node keeps the last-resort package it has.
    pub last_resort: Vec<u8>,
    pub hybrid: Vec<u8>,
}

/// How many one-time packages a refill uploads when `remaining` are left
/// (none while there are enough).
pub(crate) fn refill_count(remaining: u64) -> usize {
    if remaining < REFILL_BELOW {
        DEFAULT_KEY_PACKAGES - remaining as usize
    } else {
        0
    }
}

impl KeyPackageBatch {
    /// Makes `count` one-time packages of the classic suite and, with
    /// `rotate`, a new last-resort one and the post-quantum suite's set; saves
    /// their secrets in the profile.
    pub(crate) fn generate(
        state: &ClientState,
        identity: &Identity,
        count: usize,
        rotate: bool,
    ) -> Result<KeyPackageBatch, KeyPackageError> {
        let member = state.mls_member(identity)?;
        let make = |suite, last_resort| member.generate_key_package(suite, last_resort);
        let one_time = (0..count)
            .map(|_| make(Suite::Classic, false))
            .collect::<Result<Vec<_>, _>>()?;
        let last_resort = if rotate {
            make(Suite::Classic, true)?
        } else {
            Vec::new()
        };
        // Post-quantum groups need packages of their own suite: a few one-time
        // ones and a last-resort one, published with every rotation.
        let post_quantum = if rotate {
            let one_time = (0..PQ_KEY_PACKAGES)
                .map(|_| make(Suite::PostQuantum, false))
                .collect::<Result<Vec<_>, _>>()?;
            Some((one_time, make(Suite::PostQuantum, true)?))
        } else {
            None
        };
        state.save_mls(&member)?;
        let hybrid = state.hybrid_key()?.signed_public(identity).to_bytes();
        let mut calls = Vec::new();
        for (i, kps) in one_time.chunks(PER_CALL).enumerate() {
            calls.push(UploadCall {
                one_time: kps.to_vec(),
                last_resort: if i == 0 {
                    last_resort.clone()
                } else {
                    Vec::new()
                },
                hybrid: hybrid.clone(),
            });
        }
        if one_time.is_empty() {
            calls.push(UploadCall {
                one_time: Vec::new(),
                last_resort,
                hybrid: hybrid.clone(),
            });
        }
        if let Some((one_time, last_resort)) = post_quantum {
            calls.push(UploadCall {
                one_time,
                last_resort,
                hybrid,
            });
        }
        Ok(KeyPackageBatch { calls })
    }

    /// The upload calls, in order.
    pub(crate) fn calls(self) -> Vec<UploadCall> {
        self.calls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_of_more_than_the_maximum_is_refused() {
        assert!(check_count(MAX_REFRESH).is_ok());
        assert!(matches!(
            check_count(MAX_REFRESH + 1),
            Err(KeyPackageError::TooMany(_))
        ));
    }

    #[test]
    fn a_refill_tops_up_to_the_default_only_below_the_threshold() {
        assert_eq!(refill_count(REFILL_BELOW), 0);
        assert_eq!(refill_count(50), 0);
        assert_eq!(refill_count(REFILL_BELOW - 1), DEFAULT_KEY_PACKAGES - 9);
        assert_eq!(refill_count(0), DEFAULT_KEY_PACKAGES);
    }
}
