//! One client's MLS side: its credential, signer and storage, and the operations
//! that do not need a group yet (KeyPackages, creating and joining groups).

use openmls::prelude::tls_codec::{Deserialize, Serialize};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};

use super::group::{CommitOutput, Group};
use super::provider::MlsProvider;
use super::{GROUP_NAME_EXTENSION, MAX_PAST_EPOCHS, MlsError, Suite, library};
use crate::identity::{Identity, KEY_LEN};

/// A client's MLS identity and storage.
pub struct GroupMember<S> {
    provider: MlsProvider<S>,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    identity_key: [u8; KEY_LEN],
}

/// What every leaf we create supports: both suites and our group-name extension.
fn capabilities() -> Capabilities {
    let suites: Vec<Ciphersuite> = Suite::ALL.iter().map(|s| s.ciphersuite()).collect();
    Capabilities::new(
        None,
        Some(&suites),
        Some(&[
            ExtensionType::Unknown(GROUP_NAME_EXTENSION),
            ExtensionType::LastResort,
        ]),
        None,
        Some(&[CredentialType::Basic]),
    )
}

pub(crate) fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .max_past_epochs(MAX_PAST_EPOCHS)
        .use_ratchet_tree_extension(true)
        .build()
}

impl<S: StorageProvider<CURRENT_VERSION>> GroupMember<S> {
    /// The MLS side of `identity`: its Ed25519 key is both the basic credential
    /// (identity = public key) and the leaf signature key.
    pub fn new(identity: &Identity, storage: S) -> Result<GroupMember<S>, MlsError> {
        let provider = MlsProvider::new(storage);
        let public = identity.public_key();
        let signer = SignatureKeyPair::from_raw(
            SignatureScheme::ED25519,
            identity.secret_bytes().to_vec(),
            public.to_vec(),
        );
        signer
            .store(provider.storage())
            .map_err(|e| MlsError::Storage(format!("{e:?}")))?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(public.to_vec()).into(),
            signature_key: public.to_vec().into(),
        };
        Ok(GroupMember {
            provider,
            signer,
            credential,
            identity_key: public,
        })
    }

    /// The crypto and storage provider this member's groups use.
    pub fn provider(&self) -> &MlsProvider<S> {
        &self.provider
    }

    /// The leaf signer (for benchmarks that call OpenMLS directly).
    #[doc(hidden)]
    pub fn signer(&self) -> &SignatureKeyPair {
        &self.signer
    }

    /// The identity key this member signs with.
    pub fn identity_key(&self) -> [u8; KEY_LEN] {
        self.identity_key
    }

    /// A fresh KeyPackage for `suite`, serialized. Its private parts stay in the
    /// storage until a Welcome consumes them (a last-resort one is never consumed).
    pub fn generate_key_package(
        &self,
        suite: Suite,
        last_resort: bool,
    ) -> Result<Vec<u8>, MlsError> {
        let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities());
        if last_resort {
            builder = builder.mark_as_last_resort();
        }
        let bundle = builder
            .build(
                suite.ciphersuite(),
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .map_err(library)?;
        // RFC 9420 §6: a KeyPackage travels as an MLSMessage.
        MlsMessageOut::from(bundle.key_package().clone())
            .tls_serialize_detached()
            .map_err(library)
    }

    /// Creates a group of one with a fresh random id and the given display name.
    pub fn create_group(&self, suite: Suite, name: &str) -> Result<Group, MlsError> {
        let extensions = Extensions::single(Extension::Unknown(
            GROUP_NAME_EXTENSION,
            UnknownExtension(name.as_bytes().to_vec()),
        ))
        .map_err(library)?;
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(suite.ciphersuite())
            .capabilities(capabilities())
            .max_past_epochs(MAX_PAST_EPOCHS)
            .use_ratchet_tree_extension(true)
            .with_group_context_extensions(extensions)
            .build();
        let group = MlsGroup::new(
            &self.provider,
            &self.signer,
            &config,
            self.credential.clone(),
        )
        .map_err(library)?;
        Ok(Group::wrap(group))
    }

    /// Joins the group a Welcome invites us to (the ratchet tree travels inside).
    pub fn join(&self, welcome: &[u8]) -> Result<Group, MlsError> {
        let message = MlsMessageIn::tls_deserialize_exact(welcome)
            .map_err(|e| MlsError::Malformed(e.to_string()))?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err(MlsError::Malformed("not a Welcome".into()));
        };
        let staged = StagedWelcome::new_from_welcome(&self.provider, &join_config(), welcome, None)
            .map_err(|e| MlsError::Rejected(e.to_string()))?;
        let group = staged
            .into_group(&self.provider)
            .map_err(|e| MlsError::Rejected(e.to_string()))?;
        Ok(Group::wrap(group))
    }

    /// Joins a group by external commit (RFC 9420 §12.4.3.2) from its published
    /// GroupInfo (an `MLSMessage` carrying the ratchet tree and the external
    /// public key). A leaf of ours already in the group (same signature key: a
    /// device that lost its state) is removed by the same commit.
    ///
    /// Unlike our other commits, OpenMLS merges this one at once: the group it
    /// returns is already in the new epoch. The caller keeps it only once the
    /// delivery service accepted the commit (and forgets it otherwise); the
    /// returned output's `epoch` is the epoch the commit was made in.
    pub fn join_external(&self, group_info: &[u8]) -> Result<(Group, CommitOutput), MlsError> {
        let message = MlsMessageIn::tls_deserialize_exact(group_info)
            .map_err(|e| MlsError::Malformed(e.to_string()))?;
        let MlsMessageBodyIn::GroupInfo(info) = message.extract() else {
            return Err(MlsError::Malformed("not a GroupInfo".into()));
        };
        let epoch = info.epoch().as_u64();
        let (group, bundle) = MlsGroup::external_commit_builder()
            .with_config(join_config())
            .build_group(&self.provider, info, self.credential.clone())
            .map_err(|e| MlsError::Rejected(e.to_string()))?
            .leaf_node_parameters(
                LeafNodeParameters::builder()
                    .with_capabilities(capabilities())
                    .build(),
            )
            .load_psks(self.provider.storage())
            .map_err(|e| MlsError::Rejected(e.to_string()))?
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                |_| true,
            )
            .map_err(|e| MlsError::Rejected(e.to_string()))?
            .finalize(&self.provider)
            .map_err(|e| MlsError::Rejected(e.to_string()))?;
        let (commit, _, group_info) = bundle.into_messages();
        let out = CommitOutput {
            epoch,
            commit: commit.tls_serialize_detached().map_err(library)?,
            welcome: None,
            group_info: group_info
                .map(|g| g.tls_serialize_detached())
                .transpose()
                .map_err(library)?,
        };
        Ok((Group::wrap(group), out))
    }

    /// Loads a group from storage.
    pub fn load_group(&self, group_id: &[u8]) -> Result<Option<Group>, MlsError> {
        MlsGroup::load(self.provider.storage(), &GroupId::from_slice(group_id))
            .map(|g| g.map(Group::wrap))
            .map_err(|e| MlsError::Storage(format!("{e:?}")))
    }
}

/// What a KeyPackage says once it has been validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedKeyPackage {
    /// The identity key in its credential (also its signature key).
    pub identity_key: Vec<u8>,
    /// Its ciphersuite.
    pub suite: Suite,
    /// Whether it carries the last-resort extension (reusable).
    pub last_resort: bool,
}

/// The first four bytes of a KeyPackage framed as an `MLSMessage`: protocol
/// version mls10, wire format `mls_key_package` (RFC 9420 §6).
const KEY_PACKAGE_MESSAGE_HEADER: [u8; 4] = [0, 1, 0, 5];

/// A KeyPackage as an `MLSMessage` (RFC 9420 §6), whether `bytes` is one already
/// or a bare `KeyPackage` (as this project sent them before adopting the
/// standard framing): the two differ only by the 4-byte message header.
pub fn key_package_message(bytes: &[u8]) -> Vec<u8> {
    if bytes.starts_with(&KEY_PACKAGE_MESSAGE_HEADER) {
        return bytes.to_vec();
    }
    let mut framed = Vec::with_capacity(bytes.len() + 4);
    framed.extend_from_slice(&KEY_PACKAGE_MESSAGE_HEADER);
    framed.extend_from_slice(bytes);
    framed
}

/// Parses a KeyPackage framed as an `MLSMessage`, or bare (see
/// [`key_package_message`]). A bare package cannot start with the message
/// header: its second field is its ciphersuite, and suite 5 is not one we speak.
pub(crate) fn parse_key_package(bytes: &[u8]) -> Result<KeyPackageIn, MlsError> {
    let malformed = |e: String| MlsError::InvalidKeyPackage(format!("malformed: {e}"));
    if bytes.starts_with(&KEY_PACKAGE_MESSAGE_HEADER) {
        return match MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|e| malformed(e.to_string()))?
            .extract()
        {
            MlsMessageBodyIn::KeyPackage(kp) => Ok(kp),
            _ => Err(malformed("not a KeyPackage".into())),
        };
    }
    KeyPackageIn::tls_deserialize_exact(bytes).map_err(|e| malformed(e.to_string()))
}

/// Parses and validates a KeyPackage, framed as an `MLSMessage` or bare
/// (signature, supported suite, lifetime, and that its credential names the key
/// that signs it).
pub fn validate_key_package(bytes: &[u8]) -> Result<ValidatedKeyPackage, MlsError> {
    let kp_in = parse_key_package(bytes)?;
    let crypto = openmls_rust_crypto::RustCrypto::default();
    let kp = kp_in
        .validate(&crypto, ProtocolVersion::Mls10)
        .map_err(|e| MlsError::InvalidKeyPackage(e.to_string()))?;
    let suite = Suite::from_ciphersuite(kp.ciphersuite())
        .ok_or_else(|| MlsError::InvalidKeyPackage("unsupported ciphersuite".into()))?;
    let leaf = kp.leaf_node();
    let credential = BasicCredential::try_from(leaf.credential().clone())
        .map_err(|_| MlsError::InvalidKeyPackage("not a basic credential".into()))?;
    if credential.identity() != leaf.signature_key().as_slice() {
        return Err(MlsError::InvalidKeyPackage(
            "credential does not name its signature key".into(),
        ));
    }
    Ok(ValidatedKeyPackage {
        identity_key: credential.identity().to_vec(),
        suite,
        last_resort: kp.last_resort(),
    })
}
