//! Entry points for the MLS working group's interoperability vectors (RFC 9420
//! test vectors, `mlswg/mls-implementations`), built only with the
//! `test-vectors` feature (which turns on OpenMLS' `test-utils`).
//!
//! A passive-client vector hands the joiner its KeyPackage's private keys and the
//! external PSKs, sends handshake messages as PublicMessages, passes the ratchet
//! tree beside the Welcome, and has leaves whose lifetimes expired long ago. Our
//! production join refuses all of that, rightly: so the vector join is its own
//! entry point taking those settings, and everything after the join (processing
//! proposals and commits, the epoch authenticator) is the production path,
//! [`Group::process`].

use openmls::prelude::tls_codec::Deserialize;
use openmls::prelude::*;
use openmls::schedule::PreSharedKeyId;
use openmls_traits::OpenMlsProvider;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};
use openmls_traits::types::HpkePrivateKey;

use super::group::Group;
use super::member::GroupMember;
use super::{MAX_PAST_EPOCHS, MlsError, library};

/// What a passive-client vector gives its joiner.
pub struct VectorJoiner<'a> {
    /// Its KeyPackage, as an `MLSMessage`.
    pub key_package: &'a [u8],
    /// The KeyPackage's HPKE init private key.
    pub init_priv: &'a [u8],
    /// Its leaf's HPKE encryption private key.
    pub encryption_priv: &'a [u8],
    /// The Welcome, as an `MLSMessage`.
    pub welcome: &'a [u8],
    /// The ratchet tree, when the Welcome does not carry it.
    pub ratchet_tree: Option<&'a [u8]>,
    /// External PSKs the group uses: (id, secret).
    pub external_psks: &'a [(Vec<u8>, Vec<u8>)],
}

impl<S: StorageProvider<CURRENT_VERSION>> GroupMember<S> {
    /// Joins the group of a passive-client vector with the vectors' settings:
    /// the given KeyPackage private keys and PSKs stored, mixed wire formats
    /// accepted, the tree passed separately, leaf lifetimes not checked.
    pub fn join_vector(&self, v: &VectorJoiner<'_>) -> Result<Group, MlsError> {
        let provider = self.provider();
        for (id, secret) in v.external_psks {
            PreSharedKeyId::external(id.clone(), Vec::new())
                .store(provider, secret)
                .map_err(library)?;
        }
        // Not validated: the vectors' lifetimes expired long ago. The Welcome's
        // processing checks what the group relies on.
        let MlsMessageBodyIn::KeyPackage(kp) = MlsMessageIn::tls_deserialize_exact(v.key_package)
            .map_err(|e| MlsError::Malformed(e.to_string()))?
            .extract()
        else {
            return Err(MlsError::Malformed("not a KeyPackage".into()));
        };
        let kp: KeyPackage = kp.into();
        let bundle = KeyPackageBundle::new(
            kp.clone(),
            HpkePrivateKey::from(v.init_priv.to_vec()),
            HpkePrivateKey::from(v.encryption_priv.to_vec()).into(),
        );
        let hash_ref = kp.hash_ref(provider.crypto()).map_err(library)?;
        provider
            .storage()
            .write_key_package(&hash_ref, &bundle)
            .map_err(|e| MlsError::Storage(format!("{e:?}")))?;

        let MlsMessageBodyIn::Welcome(welcome) = MlsMessageIn::tls_deserialize_exact(v.welcome)
            .map_err(|e| MlsError::Malformed(e.to_string()))?
            .extract()
        else {
            return Err(MlsError::Malformed("not a Welcome".into()));
        };
        let config = MlsGroupJoinConfig::builder()
            .max_past_epochs(MAX_PAST_EPOCHS)
            .use_ratchet_tree_extension(true)
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .number_of_resumption_psks(16)
            .build();
        let mut join = StagedWelcome::build_from_welcome(provider, &config, welcome)
            .map_err(|e| MlsError::Rejected(e.to_string()))?
            .skip_lifetime_validation();
        if let Some(tree) = v.ratchet_tree {
            join = join.with_ratchet_tree(
                RatchetTreeIn::tls_deserialize_exact(tree)
                    .map_err(|e| MlsError::Malformed(e.to_string()))?,
            );
        }
        let group = join
            .build()
            .map_err(|e| MlsError::Rejected(e.to_string()))?
            .into_group(provider)
            .map_err(|e| MlsError::Rejected(e.to_string()))?;
        Ok(Group::wrap(group))
    }
}
