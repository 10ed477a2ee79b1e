//! What the directory tells a device about the members of a group it rejoins:
//! each member device's account name and signed hybrid key, as the node holds
//! them. The same trust as a KeyPackage claim by username: the node vouches for
//! which device belongs to which account; each hybrid key is signed by its
//! device's identity key, which the client checks.

use std::collections::BTreeSet;

use quicnprotochat_wire::IdentityKey;

use super::{AuthError, AuthService};

/// One member device as the directory knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEntry {
    /// The device.
    pub identity_key: IdentityKey,
    /// Its account's name (empty: a device without an account).
    pub username: String,
    /// Its signed hybrid public key (empty: it published none).
    pub hybrid_public_key: Vec<u8>,
}

impl AuthService {
    /// The account name of each of `devices` the directory knows, without
    /// their hybrid keys (nothing read from the store): what a client checks a
    /// claimed name against.
    pub fn member_names(&self, devices: &BTreeSet<[u8; 32]>) -> Vec<MemberEntry> {
        let names = self.devices.read().expect("lock");
        devices
            .iter()
            .filter_map(|d| {
                let key = IdentityKey(*d);
                Some(MemberEntry {
                    identity_key: key,
                    username: names.get(&key)?.clone(),
                    hybrid_public_key: Vec::new(),
                })
            })
            .collect()
    }

    /// The directory's entry of each of `devices` (removed devices are left out:
    /// they get nothing sealed to them any more).
    pub async fn member_entries(
        &self,
        devices: &BTreeSet<[u8; 32]>,
    ) -> Result<Vec<MemberEntry>, AuthError> {
        let mut hybrid = self
            .store
            .hybrid_keys(devices.iter().copied().collect())
            .await?;
        let names = self.devices.read().expect("lock");
        let mut out = Vec::with_capacity(devices.len());
        for d in devices {
            let key = IdentityKey(*d);
            let username = match names.get(&key) {
                Some(u) => u.clone(),
                None if self.accounts_exist() => continue,
                None => String::new(),
            };
            out.push(MemberEntry {
                identity_key: key,
                username,
                hybrid_public_key: hybrid.remove(d).unwrap_or_default(),
            });
        }
        Ok(out)
    }
}
