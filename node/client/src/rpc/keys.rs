//! The node's KeyPackage directory: claims and looks, no session needed.

use super::*;

/// Whose KeyPackages to claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPackageTarget {
    /// Every device of this username.
    Username(String),
    /// This one device.
    Device(IdentityKey),
}

/// A claimed KeyPackage, as the node returned it (verify before use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKeyPackage {
    /// The device the package is for.
    pub identity_key: IdentityKey,
    /// The KeyPackage.
    pub key_package: Vec<u8>,
    /// The device's signed hybrid key.
    pub hybrid_public_key: Vec<u8>,
    /// Whether it is the reusable last-resort package.
    pub last_resort: bool,
}

/// The node's KeyPackage directory (no session needed).
#[derive(Clone)]
pub struct KeyDirectory {
    pub(super) node: node::Client,
}

impl KeyDirectory {
    /// Claims one KeyPackage of `suite` per device of a user (or of one device).
    pub async fn fetch_key_packages(
        &self,
        target: &KeyPackageTarget,
        suite: Suite,
    ) -> Result<Vec<ClaimedKeyPackage>, ClientError> {
        let mut req = self.node.fetch_key_package_request();
        req.get().set_ciphersuite(suite.code());
        set_target(req.get().init_target(), target);
        let reply = req.send().promise.await?;
        read_packages(reply.get()?.get_packages()?)
    }

    /// What a claim would serve, consuming nothing: per device, its hybrid key
    /// and last-resort package of `suite`. For checking someone's keys.
    pub async fn peek_key_packages(
        &self,
        target: &KeyPackageTarget,
        suite: Suite,
    ) -> Result<Vec<ClaimedKeyPackage>, ClientError> {
        let mut req = self.node.peek_key_packages_request();
        req.get().set_ciphersuite(suite.code());
        set_target(req.get().init_target(), target);
        let reply = req.send().promise.await?;
        read_packages(reply.get()?.get_packages()?)
    }
}

fn set_target(
    mut out: quicnprotochat_wire::node_capnp::key_package_target::Builder<'_>,
    target: &KeyPackageTarget,
) {
    match target {
        KeyPackageTarget::Username(u) => out.set_username(u),
        KeyPackageTarget::Device(d) => out.set_identity_key(&d.0),
    }
}

fn read_packages(
    list: capnp::struct_list::Reader<
        '_,
        quicnprotochat_wire::node_capnp::claimed_key_package::Owned,
    >,
) -> Result<Vec<ClaimedKeyPackage>, ClientError> {
    list.iter()
        .map(|p| {
            Ok(ClaimedKeyPackage {
                identity_key: IdentityKey::from_wire(p.get_identity_key()?, "identityKey")
                    .map_err(ClientError::Refused)?,
                key_package: p.get_key_package()?.to_vec(),
                hybrid_public_key: p.get_hybrid_public_key()?.to_vec(),
                last_resort: p.get_last_resort(),
            })
        })
        .collect()
}
