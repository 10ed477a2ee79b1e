//! A profile's groups follow its account's devices: a device that joins the
//! account is added to every group of this profile, one that leaves it is
//! removed from them. Every device of the account does this on its pulls; the
//! node's epoch fence lets one commit of each change win, and the others then
//! find nothing left to do.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::actors::ask_session;
use crate::actors::session::SessionMsg;
use crate::messenger::{Messenger, MessengerError};

/// How often a long-running client looks at its account's devices again (a
/// command-line client looks once per command).
pub const DEVICE_CHECK_EVERY: Duration = Duration::from_secs(10);

/// What changed in the account since the profile last settled its groups.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeviceChange {
    /// Devices new to the account (never this one).
    pub added: BTreeSet<[u8; 32]>,
    /// Devices gone from it.
    pub removed: BTreeSet<[u8; 32]>,
}

impl DeviceChange {
    /// From the devices known before to the account's devices `now`. Nothing
    /// known yet (a new profile, or one from before this rule) is a first look:
    /// it records, it does not act.
    pub fn between(known: &BTreeSet<[u8; 32]>, now: &BTreeSet<[u8; 32]>, me: &[u8; 32]) -> Self {
        if known.is_empty() {
            return DeviceChange::default();
        }
        DeviceChange {
            added: now
                .difference(known)
                .filter(|d| *d != me)
                .copied()
                .collect(),
            removed: known
                .difference(now)
                .filter(|d| *d != me)
                .copied()
                .collect(),
        }
    }
}

impl Messenger {
    /// Compares the account's devices with what the profile last settled, and
    /// adds or removes devices in every group of this profile accordingly. A
    /// change that cannot be made yet (the new device has published no
    /// KeyPackage for a group's suite, a refusal) is tried again at the next
    /// look; only a lost connection is an error.
    pub(crate) async fn sync_devices(&mut self) -> Result<(), MessengerError> {
        if self
            .devices_checked
            .is_some_and(|t| t.elapsed() < DEVICE_CHECK_EVERY)
        {
            return Ok(());
        }
        let now =
            match ask_session(&self.session.get(), |reply| SessionMsg::Devices { reply }).await {
                Ok(keys) => keys.into_iter().map(|k| k.0).collect::<BTreeSet<_>>(),
                Err(e) if crate::actors::session::is_connection_loss(&e) => {
                    return Err(e.into());
                }
                // A node without the call, or a session without an account.
                Err(_) => return Ok(()),
            };
        self.devices_checked = Some(Instant::now());
        let known = self.profile.state.known_devices()?;
        let change = DeviceChange::between(&known, &now, &self.identity_key());
        let mut settled = true;
        if !change.added.is_empty() {
            let added: Vec<[u8; 32]> = change.added.iter().copied().collect();
            for (name, _) in self.profile.state.groups()? {
                match self.add_own_devices_now(&name, &added).await {
                    Ok(_) | Err(MessengerError::AlreadyMember { .. }) => {}
                    Err(e) if Self::is_connection_loss(&e) => return Err(e),
                    Err(e) => {
                        tracing::info!(group = %name, error = %e, "new device not added yet");
                        settled = false;
                    }
                }
            }
        }
        for device in &change.removed {
            match self.remove_device_from_groups(*device).await {
                Ok(_) => {}
                Err(e) if Self::is_connection_loss(&e) => return Err(e),
                Err(e) => {
                    tracing::info!(error = %e, "removed device not removed from groups yet");
                    settled = false;
                }
            }
        }
        if settled && known != now {
            self.profile.state.write(|t| t.set_known_devices(&now))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ns: &[u8]) -> BTreeSet<[u8; 32]> {
        ns.iter().map(|n| [*n; 32]).collect()
    }

    #[test]
    fn a_first_look_records_and_later_looks_name_what_changed_never_this_device() {
        let me = [1; 32];
        assert_eq!(
            DeviceChange::between(&set(&[]), &set(&[1, 2]), &me),
            DeviceChange::default()
        );
        assert_eq!(
            DeviceChange::between(&set(&[1, 2]), &set(&[1, 3]), &me),
            DeviceChange {
                added: set(&[3]),
                removed: set(&[2]),
            }
        );
        assert_eq!(
            DeviceChange::between(&set(&[1, 2]), &set(&[2]), &me),
            DeviceChange::default(),
            "this device is never added or removed by itself"
        );
    }
}
