//! A member running a different MLS implementation, through a real node: its
//! MLS is AWS's mls-rs (with the RustCrypto provider); its node client, sealing
//! and inbox handling are ours. It joins a classic-suite group of openmls members
//! (our clients) from their Welcome, reads and sends application messages,
//! commits a self-update and adds an openmls member, and the openmls members
//! accept its commits; the epoch authenticator is the same for everyone at every
//! epoch.
//!
//! What mls-rs needs to join our groups: MLSMessage-framed KeyPackages, our
//! group-name extension (0xff00) declared in its capabilities, encrypted
//! handshake messages (our groups accept only PrivateMessages), and no GREASE.
//! The post-quantum suite does not interoperate: mls-rs has no X-Wing codepoint.

use std::collections::BTreeMap;

use mls_rs::client_builder::{MlsConfig, PaddingMode};
use mls_rs::crypto::{SignaturePublicKey, SignatureSecretKey};
use mls_rs::extension::ExtensionType;
use mls_rs::extension::recommended::LastResortKeyPackageExt;
use mls_rs::group::ReceivedMessage;
use mls_rs::identity::SigningIdentity;
use mls_rs::identity::basic::{BasicCredential, BasicIdentityProvider};
use mls_rs::mls_rules::{DefaultMlsRules, EncryptionOptions};
use mls_rs::{CipherSuite, Client, ExtensionList, Group, MlsMessage};
use mls_rs_crypto_rustcrypto::RustCryptoProvider;
use quicnprotochat_client::app_content::{self, AppContent};
use quicnprotochat_client::message::{Body, ClientMessage, RosterEntry};
use quicnprotochat_client::{CommitBodies, KeyPackageTarget, SessionHandle};
use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::envelope::{
    BodyProtection, HybridKeyPair, HybridPublicKey, open_shared, seal_shared,
};
use quicnprotochat_crypto::mls::{GROUP_NAME_EXTENSION, Suite};
use quicnprotochat_tests::accounts::{device, register};
use quicnprotochat_tests::{Person, TestNode, assert_no_fork, local, pull_shown};
use quicnprotochat_wire::{IdentityKey, Inbound};

/// An mls-rs client whose leaf key is the device's Ed25519 identity key, as our
/// KeyPackage rules require (the basic credential names the signing key).
fn mls_rs_client(identity: &Identity) -> Client<impl MlsConfig + use<>> {
    let public = identity.public_key().to_vec();
    let mut keypair = identity.secret_bytes().to_vec();
    keypair.extend_from_slice(&public);
    let signing = SigningIdentity::new(
        BasicCredential::new(public.clone()).into_credential(),
        SignaturePublicKey::from(public),
    );
    Client::builder()
        .crypto_provider(RustCryptoProvider::default())
        .identity_provider(BasicIdentityProvider::new())
        .extension_types([
            ExtensionType::new(GROUP_NAME_EXTENSION),
            ExtensionType::LAST_RESORT_KEY_PACKAGE,
        ])
        .mls_rules(
            DefaultMlsRules::new()
                .with_encryption_options(EncryptionOptions::new(true, PaddingMode::None)),
        )
        .signing_identity(
            signing,
            SignatureSecretKey::from(keypair),
            CipherSuite::CURVE25519_AES128,
        )
        .build()
}

/// The member whose MLS is mls-rs.
struct Rusty<C: MlsConfig> {
    identity: Identity,
    hybrid: HybridKeyPair,
    session: SessionHandle,
    client: Client<C>,
    group: Option<Group<C>>,
    /// Who is who, as Welcomes and our own adds told us.
    roster: BTreeMap<[u8; 32], RosterEntry>,
    cursor: u64,
}

/// What one envelope was to Rusty.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Joined,
    Text(String, String),
    Commit,
    Receipt,
}

impl<C: MlsConfig> Rusty<C> {
    fn me(&self) -> RosterEntry {
        RosterEntry {
            identity: self.identity.public_key(),
            username: "rusty".into(),
            hybrid_key: self.hybrid.signed_public(&self.identity).to_bytes(),
        }
    }

    fn group(&mut self) -> &mut Group<C> {
        self.group.as_mut().expect("in the group")
    }

    fn epoch_authenticator(&mut self) -> Vec<u8> {
        self.group().epoch_authenticator().unwrap().to_vec()
    }

    /// Publishes one mls-rs KeyPackage and a last-resort one (MLSMessages),
    /// and the hybrid key.
    async fn publish(&self) {
        let package = |extensions: ExtensionList| {
            self.client
                .generate_key_package_message(extensions, ExtensionList::default(), None)
                .unwrap()
                .to_bytes()
                .unwrap()
        };
        let mut last_resort = ExtensionList::new();
        last_resort.set_from(LastResortKeyPackageExt).unwrap();
        self.session
            .upload_key_packages(
                &[package(ExtensionList::default())],
                &package(last_resort),
                &self.hybrid.signed_public(&self.identity).to_bytes(),
            )
            .await
            .unwrap();
    }

    /// Applies what is in the inbox, in order, and acks it.
    async fn pull(&mut self) -> Vec<Got> {
        let envelopes = self.session.fetch(self.cursor, 0).await.unwrap();
        let mut got = Vec::new();
        for env in envelopes {
            let Ok(Inbound::Shared { part, body }) = env.inbound() else {
                panic!("seq {}: not a shared envelope", env.seq);
            };
            let opened = open_shared(&self.hybrid, part, body).unwrap();
            let msg = ClientMessage::decode(&opened.payload).unwrap();
            got.push(self.apply(opened.sender, msg));
            self.cursor = env.seq;
        }
        self.session.ack(self.cursor).await.unwrap();
        got
    }

    fn apply(&mut self, sender: [u8; 32], msg: ClientMessage) -> Got {
        match msg.body {
            Body::Welcome => {
                let welcome = MlsMessage::from_bytes(&msg.mls).unwrap();
                let (group, _) = self.client.join_group(None, &welcome, None).unwrap();
                for e in msg.roster {
                    self.roster.insert(e.identity, e);
                }
                self.group = Some(group);
                Got::Joined
            }
            Body::CommitReceipt { .. } => Got::Receipt,
            Body::Group => {
                let message = MlsMessage::from_bytes(&msg.mls).unwrap();
                for e in msg.roster {
                    self.roster.insert(e.identity, e);
                }
                match self.group().process_incoming_message(message).unwrap() {
                    ReceivedMessage::ApplicationMessage(app) => {
                        let from = self.roster[&sender].username.clone();
                        // The application content format (id, then text) is
                        // ours, above MLS: read with our reader.
                        match app_content::decode(app.data()) {
                            AppContent::Text { text, .. } => Got::Text(from, text),
                            other => panic!("not a text message: {other:?}"),
                        }
                    }
                    ReceivedMessage::Commit(_) => Got::Commit,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }

    /// The other members' ids and hybrid keys, from the roster.
    fn others(&mut self) -> (Vec<IdentityKey>, Vec<HybridPublicKey>) {
        let me = self.identity.public_key();
        let members: Vec<[u8; 32]> = self
            .group()
            .roster()
            .members()
            .iter()
            .map(|m| {
                m.signing_identity.credential.as_basic().unwrap().identifier[..]
                    .try_into()
                    .unwrap()
            })
            .filter(|id| *id != me)
            .collect();
        let keys = members
            .iter()
            .map(|id| HybridPublicKey::verify(&self.roster[id].hybrid_key, id).unwrap())
            .collect();
        (members.into_iter().map(IdentityKey).collect(), keys)
    }

    fn message(&mut self, body: Body, mls: Vec<u8>) -> ClientMessage {
        ClientMessage {
            body,
            group_id: self.group().group_id().to_vec(),
            mls,
            sender_name: "rusty".into(),
            roster: Vec::new(),
        }
    }

    /// Sends `text` to every other member (one upload, a part each).
    async fn send(&mut self, text: &str) {
        let mls = self
            .group()
            .encrypt_application_message(
                &app_content::encode_text(app_content::MessageId::random(), text),
                Vec::new(),
            )
            .unwrap()
            .to_bytes()
            .unwrap();
        let msg = self.message(Body::Group, mls).encode().unwrap();
        let (ids, keys) = self.others();
        let sealed = seal_shared(&self.identity, &msg, 0, BodyProtection::Wrapped, &keys);
        let parts: Vec<(IdentityKey, Vec<u8>)> = ids.into_iter().zip(sealed.parts).collect();
        let gid = self.group().group_id().to_vec();
        let outcomes = self
            .session
            .send_group(&gid, &sealed.body, &parts)
            .await
            .unwrap();
        assert!(outcomes.iter().all(|o| o.outcome.is_ok()), "{outcomes:?}");
    }

    /// Commits through the node's epoch fence (adding `new`'s KeyPackage if
    /// given), then applies the commit.
    async fn commit(&mut self, new: Option<(RosterEntry, Vec<u8>)>) {
        let epoch = self.group().current_epoch();
        let mut builder = self.group().commit_builder();
        if let Some((_, kp)) = &new {
            builder = builder
                .add_member(MlsMessage::from_bytes(kp).unwrap())
                .unwrap();
        }
        let out = builder.build().unwrap();
        let commit_bytes = out.commit_message.to_bytes().unwrap();
        let (ids, keys) = self.others();
        let mut bodies = CommitBodies::default();
        // Like our clients, the commit names the device it adds (who it is, its key).
        let mut commit = self.message(Body::Group, commit_bytes.clone());
        commit.roster = new.iter().map(|(entry, _)| entry.clone()).collect();
        let commit = commit.encode().unwrap();
        let sealed = seal_shared(&self.identity, &commit, 0, BodyProtection::Wrapped, &keys);
        bodies.commit = sealed.body;
        bodies.parts.extend(ids.iter().copied().zip(sealed.parts));
        let mut members: Vec<Vec<u8>> = ids.iter().map(|i| i.0.to_vec()).collect();
        members.push(self.identity.public_key().to_vec());
        if let Some((entry, _)) = &new {
            let mut welcome =
                self.message(Body::Welcome, out.welcome_messages[0].to_bytes().unwrap());
            welcome.roster = self.roster.values().cloned().collect();
            welcome.roster.push(self.me());
            welcome.roster.push(entry.clone());
            let key = HybridPublicKey::verify(&entry.hybrid_key, &entry.identity).unwrap();
            let sealed = seal_shared(
                &self.identity,
                &welcome.encode().unwrap(),
                0,
                BodyProtection::Wrapped,
                &[key],
            );
            bodies.welcome = sealed.body;
            bodies
                .parts
                .extend([(IdentityKey(entry.identity), sealed.parts[0].clone())]);
            members.push(entry.identity.to_vec());
        }
        let receipt = self
            .message(Body::CommitReceipt { epoch }, Vec::new())
            .encode()
            .unwrap();
        let own =
            HybridPublicKey::verify(&self.me().hybrid_key, &self.identity.public_key()).unwrap();
        let sealed = seal_shared(&self.identity, &receipt, 0, BodyProtection::Wrapped, &[own]);
        bodies.receipt = sealed.body;
        bodies.parts.push((
            IdentityKey(self.identity.public_key()),
            sealed.parts[0].clone(),
        ));
        let gid = self.group().group_id().to_vec();
        self.session
            .commit_group(&gid, epoch, &members, &commit_bytes, &bodies)
            .await
            .expect("the node's fence takes mls-rs's commit");
        self.group().apply_pending_commit().unwrap();
        if let Some((entry, _)) = new {
            self.roster.insert(entry.identity, entry);
        }
    }
}

/// An openmls member's epoch authenticator of group "g".
async fn authenticator(p: &Person) -> Vec<u8> {
    p.messenger.group("g").await.unwrap().epoch_authenticator
}

fn has(lines: &[String], text: &str) -> bool {
    lines.iter().any(|l| l.contains(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mls_rs_member_joins_talks_and_commits_in_a_group_of_openmls_members() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let mut alice: Person = node.person("alice").await;
        let mut carol: Person = node.person("carol").await;
        let d = device();
        let (_conn, session) = register(&node, "rusty", "pw", &d).await;
        let mut rusty = Rusty {
            client: mls_rs_client(&d.id),
            identity: d.id,
            hybrid: d.hybrid,
            session,
            group: None,
            roster: BTreeMap::new(),
            cursor: 0,
        };
        rusty.publish().await;

        // alice (openmls) invites rusty (mls-rs) from its KeyPackage.
        alice
            .messenger
            .create_group("g", Suite::Classic)
            .await
            .unwrap();
        alice
            .messenger
            .invite("g", &["rusty".into()])
            .await
            .unwrap();
        assert_eq!(rusty.pull().await, [Got::Joined]);
        assert_eq!(rusty.epoch_authenticator(), authenticator(&alice).await);

        // Application messages both ways.
        alice.messenger.send("g", "hello, rusty").await.unwrap();
        assert_eq!(
            rusty.pull().await,
            [Got::Text("alice".into(), "hello, rusty".into())]
        );
        rusty.send("hello from mls-rs").await;
        let lines = pull_shown(&mut alice.messenger).await;
        assert!(has(&lines, "[g] rusty: hello from mls-rs"), "{lines:?}");

        // rusty's self-update: alice's openmls accepts it.
        rusty.commit(None).await;
        assert_eq!(rusty.pull().await, [Got::Receipt]);
        let lines = pull_shown(&mut alice.messenger).await;
        assert!(has(&lines, "rusty updated their keys"), "{lines:?}");
        assert_eq!(rusty.epoch_authenticator(), authenticator(&alice).await);

        // rusty adds carol (openmls) from her KeyPackage, claimed through the node.
        let claimed = quicnprotochat_tests::accounts::claimer(&node)
            .await
            .fetch_key_packages(&KeyPackageTarget::Username("carol".into()))
            .await
            .unwrap();
        let c = &claimed[0];
        let carol_entry = RosterEntry {
            identity: c.identity_key.0,
            username: "carol".into(),
            hybrid_key: c.hybrid_public_key.clone(),
        };
        rusty
            .commit(Some((carol_entry, c.key_package.clone())))
            .await;
        assert_eq!(rusty.pull().await, [Got::Receipt]);
        let lines = pull_shown(&mut carol.messenger).await;
        assert!(has(&lines, "joined, invited by rusty"), "{lines:?}");
        let lines = pull_shown(&mut alice.messenger).await;
        assert!(has(&lines, "rusty added carol"), "{lines:?}");
        assert_no_fork(&[&alice, &carol], "g").await;
        assert_eq!(rusty.epoch_authenticator(), authenticator(&carol).await);

        // An openmls commit and message reach rusty.
        alice.messenger.update("g").await.unwrap();
        carol.messenger.send("g", "hi all").await.unwrap();
        assert_eq!(
            rusty.pull().await,
            [Got::Commit, Got::Text("carol".into(), "hi all".into())]
        );
        pull_shown(&mut carol.messenger).await;
        assert_no_fork(&[&alice, &carol], "g").await;
        assert_eq!(rusty.epoch_authenticator(), authenticator(&alice).await);
    })
    .await;
    node.stop().await;
}
