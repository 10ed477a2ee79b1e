//! Accounts and devices for tests of the Authentication Service: a device with
//! its MLS side and hybrid key, registered and logged in through a real node.

use openmls_memory_storage::MemoryStorage;
use quicnprotochat_client::{NodeConnection, SessionHandle};
use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::envelope::HybridKeyPair;
use quicnprotochat_crypto::mls::{GroupMember, Suite};
use quicnprotochat_wire::IdentityKey;

use crate::TestNode;

/// A device: identity, MLS side (for KeyPackages) and hybrid key.
pub struct Device {
    /// Its identity.
    pub id: Identity,
    /// Its MLS side, which makes its KeyPackages.
    pub mls: GroupMember<MemoryStorage>,
    /// Its hybrid (X-Wing) key pair.
    pub hybrid: HybridKeyPair,
}

/// A fresh device.
pub fn device() -> Device {
    let id = Identity::generate();
    let mls = GroupMember::new(&id, MemoryStorage::default()).unwrap();
    Device {
        hybrid: HybridKeyPair::generate(1),
        mls,
        id,
    }
}

impl Device {
    /// Its identity key, as the wire carries it.
    pub fn key(&self) -> IdentityKey {
        IdentityKey(self.id.public_key())
    }

    /// Publishes `one_time` packages, a last-resort one and the hybrid key.
    pub async fn publish(&self, s: &SessionHandle, one_time: usize) {
        let kps: Vec<Vec<u8>> = (0..one_time)
            .map(|_| {
                self.mls
                    .generate_key_package(Suite::Classic, false)
                    .unwrap()
            })
            .collect();
        let lr = self.mls.generate_key_package(Suite::Classic, true).unwrap();
        s.upload_key_packages(&kps, &lr, &self.hybrid.signed_public(&self.id).to_bytes())
            .await
            .unwrap();
    }
}

/// Registers `name` with `d` as its first device and logs it in. Must run on a
/// `LocalSet`.
pub async fn register(
    node: &TestNode,
    name: &str,
    password: &str,
    d: &Device,
) -> (NodeConnection, SessionHandle) {
    node.connect()
        .await
        .unwrap()
        .register(name, password.as_bytes(), &d.id, None)
        .await
        .unwrap();
    log_in(node, name, password, d).await
}

/// Logs `d` in to the existing account `name` on `node`.
pub async fn log_in(
    node: &TestNode,
    name: &str,
    password: &str,
    d: &Device,
) -> (NodeConnection, SessionHandle) {
    let conn = node.connect().await.unwrap();
    let logged = conn
        .login(name, password.as_bytes(), &d.id, None)
        .await
        .unwrap();
    (conn, logged.session)
}

/// `n` connections of one fresh registered device, each with a live session
/// (one password login, then resumes, which no login limit counts): the node
/// serves KeyPackages to registered devices only. Must run on a `LocalSet`.
pub async fn claimers(node: &TestNode, n: usize) -> Vec<NodeConnection> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!("claimer{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let d = device();
    node.connect()
        .await
        .unwrap()
        .register(&name, b"pw", &d.id, None)
        .await
        .unwrap();
    let first = node.connect().await.unwrap();
    let token = first.login(&name, b"pw", &d.id, None).await.unwrap().token;
    let mut out = vec![first];
    while out.len() < n {
        let conn = node.connect().await.unwrap();
        conn.resume(&token, None).await.unwrap();
        out.push(conn);
    }
    out.truncate(n);
    out
}

/// One connection of a fresh registered device with a live session (see
/// [`claimers`]). Must run on a `LocalSet`.
pub async fn claimer(node: &TestNode) -> NodeConnection {
    claimers(node, 1).await.pop().expect("one")
}
