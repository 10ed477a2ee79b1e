//! One MLS group as a member sees it, and every operation on it.
//!
//! Commits we create stay *pending* until the caller confirms them (the delivery
//! service accepted them) or discards them (it answered STALE_EPOCH): our own view
//! only moves forward with the history everyone else sees.

use openmls::prelude::tls_codec::{Deserialize, Serialize};
use openmls::prelude::*;
use openmls_traits::OpenMlsProvider;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};

use super::member::GroupMember;
use super::{GROUP_NAME_EXTENSION, MAX_PAST_EPOCHS, MlsError, Suite, library};

/// A group this member belongs to.
pub struct Group {
    inner: MlsGroup,
}

/// What a commit we created needs sent: the commit to the group, and for added
/// members a Welcome.
#[derive(Debug, Clone)]
pub struct CommitOutput {
    /// The epoch the commit was made in (the delivery service's fence key).
    pub epoch: u64,
    /// The commit, for every member (an `MLSMessage`).
    pub commit: Vec<u8>,
    /// The Welcome for members it adds, if any.
    pub welcome: Option<Vec<u8>>,
    /// The group's GroupInfo once the commit applies (an `MLSMessage`, signed,
    /// with the ratchet tree and the external public key): what the node keeps
    /// so that a device of a member can rejoin by external commit.
    pub group_info: Option<Vec<u8>>,
}

/// What processing one incoming message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// An application message, with the sender's identity key.
    Application {
        /// The sender's identity key.
        sender: Vec<u8>,
        /// The epoch it was sent in.
        epoch: u64,
        /// What it says.
        plaintext: Vec<u8>,
    },
    /// A commit was applied: the group is now at `epoch` with these members.
    /// `removed_self` means this member is no longer in the group.
    CommitApplied {
        /// The committer's identity key.
        sender: Vec<u8>,
        /// The epoch the group is in now.
        epoch: u64,
        /// Every member's identity key after the commit.
        members: Vec<Vec<u8>>,
        /// Whether the commit removed this member.
        removed_self: bool,
    },
    /// A proposal was stored; some member will commit it.
    ProposalStored {
        /// The proposer's identity key.
        sender: Vec<u8>,
    },
    /// The message is from a later epoch than ours: hold it until the commit that
    /// gets us there has been processed.
    NotYet {
        /// The message's epoch.
        epoch: u64,
    },
    /// The message is from an epoch we no longer keep secrets for (or is a
    /// handshake message for an epoch already past): it can never be processed.
    TooOld {
        /// The message's epoch.
        epoch: u64,
    },
    /// Our own message, echoed back by the delivery service.
    Own {
        /// The message's epoch.
        epoch: u64,
    },
}

fn serialize(msg: &MlsMessageOut) -> Result<Vec<u8>, MlsError> {
    msg.tls_serialize_detached().map_err(library)
}

fn identity_of(credential: &Credential) -> Vec<u8> {
    BasicCredential::try_from(credential.clone())
        .map(|c| c.identity().to_vec())
        .unwrap_or_default()
}

fn storage_err(e: impl std::fmt::Debug) -> MlsError {
    MlsError::Storage(format!("{e:?}"))
}

impl Group {
    pub(crate) fn wrap(inner: MlsGroup) -> Group {
        Group { inner }
    }

    /// The OpenMLS group itself, for benchmarks that compare our wrapper with the
    /// library underneath. Not for production code: it bypasses every rule here.
    #[doc(hidden)]
    pub fn openmls_group_mut(&mut self) -> &mut MlsGroup {
        &mut self.inner
    }

    /// The MLS group id.
    pub fn group_id(&self) -> Vec<u8> {
        self.inner.group_id().as_slice().to_vec()
    }

    /// The epoch this member is in.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch().as_u64()
    }

    /// A value all members agree on in one epoch; equal authenticators mean the
    /// same group state (no fork).
    pub fn epoch_authenticator(&self) -> Vec<u8> {
        self.inner.epoch_authenticator().as_slice().to_vec()
    }

    /// The group's suite, if this build speaks it.
    pub fn suite(&self) -> Option<Suite> {
        Suite::from_ciphersuite(self.inner.ciphersuite())
    }

    /// The display name set at creation (carried in the group context).
    pub fn name(&self) -> Option<String> {
        self.inner
            .extensions()
            .unknown(GROUP_NAME_EXTENSION)
            .map(|e| String::from_utf8_lossy(&e.0).into_owned())
    }

    /// Identity keys of the current members, in leaf order.
    pub fn members(&self) -> Vec<Vec<u8>> {
        self.inner
            .members()
            .map(|m| identity_of(&m.credential))
            .collect()
    }

    /// Identity keys of the members once our pending commit applies (`None`
    /// without one): what the delivery service records as who may commit next.
    pub fn members_after_pending_commit(&self) -> Option<Vec<Vec<u8>>> {
        let staged = self.inner.pending_commit()?;
        let removed: Vec<Vec<u8>> = staged
            .remove_proposals()
            .filter_map(|r| self.inner.member(r.remove_proposal().removed()))
            .map(identity_of)
            .collect();
        let mut members: Vec<Vec<u8>> = self
            .members()
            .into_iter()
            .filter(|m| !removed.contains(m))
            .collect();
        members.extend(
            staged
                .add_proposals()
                .map(|a| identity_of(a.add_proposal().key_package().leaf_node().credential())),
        );
        Some(members)
    }

    /// Whether this member is still part of the group.
    pub fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    /// Whether proposals (e.g. someone's leave) wait for a commit.
    pub fn has_pending_proposals(&self) -> bool {
        self.inner.has_pending_proposals()
    }

    /// Whether a commit of ours is made but not yet merged or discarded.
    pub fn has_pending_commit(&self) -> bool {
        self.inner.pending_commit().is_some()
    }

    fn check_ready(&self) -> Result<(), MlsError> {
        if !self.inner.is_active() {
            return Err(MlsError::NotActive);
        }
        if self.has_pending_commit() {
            return Err(MlsError::CommitPending);
        }
        Ok(())
    }

    /// Encrypts an application message for the group.
    pub fn encrypt<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        member: &GroupMember<S>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, MlsError> {
        if !self.inner.is_active() {
            return Err(MlsError::NotActive);
        }
        let msg = self
            .inner
            .create_message(member.provider(), member.signer(), plaintext)
            .map_err(|e| match e {
                CreateMessageError::GroupStateError(MlsGroupStateError::PendingProposal) => {
                    MlsError::ProposalsPending
                }
                CreateMessageError::GroupStateError(_) => MlsError::CommitPending,
                other => library(other),
            })?;
        serialize(&msg)
    }

    /// Adds the owners of `key_packages` (serialized, validated here). Pending
    /// until [`Group::confirm_commit`].
    pub fn add_members<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        member: &GroupMember<S>,
        key_packages: &[Vec<u8>],
    ) -> Result<CommitOutput, MlsError> {
        self.check_ready()?;
        let crypto = member.provider().crypto();
        let kps = key_packages
            .iter()
            .map(|bytes| {
                super::member::parse_key_package(bytes)?
                    .validate(crypto, ProtocolVersion::Mls10)
                    .map_err(|e| MlsError::InvalidKeyPackage(e.to_string()))
            })
            .collect::<Result<Vec<KeyPackage>, MlsError>>()?;
        let epoch = self.epoch();
        let (commit, welcome, group_info) = self
            .inner
            .add_members(member.provider(), member.signer(), &kps)
            .map_err(|e| MlsError::Rejected(e.to_string()))?;
        Ok(CommitOutput {
            epoch,
            commit: serialize(&commit)?,
            welcome: Some(serialize(&welcome)?),
            group_info: group_info.map(|g| serialize(&g.into())).transpose()?,
        })
    }

    /// Removes the members with these identity keys. Pending until confirmed.
    pub fn remove_members<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        member: &GroupMember<S>,
        identity_keys: &[&[u8]],
    ) -> Result<CommitOutput, MlsError> {
        self.check_ready()?;
        let leaves = identity_keys
            .iter()
            .map(|id| {
                self.inner
                    .members()
                    .find(|m| identity_of(&m.credential) == *id)
                    .map(|m| m.index)
                    .ok_or(MlsError::NoSuchMember)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let epoch = self.epoch();
        let (commit, welcome, group_info) = self
            .inner
            .remove_members(member.provider(), member.signer(), &leaves)
            .map_err(|e| MlsError::Rejected(e.to_string()))?;
        Ok(CommitOutput {
            epoch,
            commit: serialize(&commit)?,
            welcome: welcome.as_ref().map(serialize).transpose()?,
            group_info: group_info.map(|g| serialize(&g.into())).transpose()?,
        })
    }

    /// Refreshes this member's leaf key material (post-compromise security).
    /// Pending until confirmed.
    pub fn self_update<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        member: &GroupMember<S>,
    ) -> Result<CommitOutput, MlsError> {
        self.check_ready()?;
        let epoch = self.epoch();
        let bundle = self
            .inner
            .self_update(
                member.provider(),
                member.signer(),
                LeafNodeParameters::default(),
            )
            .map_err(|e| MlsError::Rejected(e.to_string()))?;
        let (commit, welcome, group_info) = bundle.into_messages();
        Ok(CommitOutput {
            epoch,
            commit: serialize(&commit)?,
            welcome: welcome.as_ref().map(serialize).transpose()?,
            group_info: group_info.as_ref().map(serialize).transpose()?,
        })
    }

    /// Asks to leave: returns a proposal that another member must commit.
    pub fn leave<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        member: &GroupMember<S>,
    ) -> Result<Vec<u8>, MlsError> {
        self.check_ready()?;
        let proposal = self
            .inner
            .leave_group(member.provider(), member.signer())
            .map_err(|e| MlsError::Rejected(e.to_string()))?;
        serialize(&proposal)
    }

    /// Forgets the proposals this member made itself (its own leave) that are
    /// still waiting: another member must commit those, never us (OpenMLS
    /// refuses a commit that removes its committer), so left in the store they
    /// would fail every later commit of pending proposals. Returns how many.
    pub fn withdraw_own_proposals<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        member: &GroupMember<S>,
    ) -> Result<usize, MlsError> {
        let own = self.inner.own_leaf_index();
        let refs: Vec<openmls::prelude::hash_ref::ProposalRef> = self
            .inner
            .pending_proposals()
            .filter(|p| matches!(p.sender(), Sender::Member(i) if *i == own))
            .map(|p| p.proposal_reference_ref().clone())
            .collect();
        for r in &refs {
            self.inner
                .remove_pending_proposal(member.provider().storage(), r)
                .map_err(|e| MlsError::Rejected(e.to_string()))?;
        }
        Ok(refs.len())
    }

    /// Forgets every waiting proposal (after committing them failed too often).
    pub fn clear_proposals<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        member: &GroupMember<S>,
    ) -> Result<(), MlsError> {
        self.inner
            .clear_pending_proposals(member.provider().storage())
            .map_err(|e| MlsError::Rejected(e.to_string()))
    }

    /// Commits every stored proposal (e.g. someone's leave), if there are any.
    pub fn commit_pending_proposals<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        member: &GroupMember<S>,
    ) -> Result<Option<CommitOutput>, MlsError> {
        self.check_ready()?;
        if !self.inner.has_pending_proposals() {
            return Ok(None);
        }
        let epoch = self.epoch();
        let (commit, welcome, group_info) = self
            .inner
            .commit_to_pending_proposals(member.provider(), member.signer())
            .map_err(|e| MlsError::Rejected(e.to_string()))?;
        Ok(Some(CommitOutput {
            epoch,
            commit: serialize(&commit)?,
            welcome: welcome.as_ref().map(serialize).transpose()?,
            group_info: group_info.map(|g| serialize(&g.into())).transpose()?,
        }))
    }

    /// Applies our pending commit: the delivery service accepted it.
    pub fn confirm_commit<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        member: &GroupMember<S>,
    ) -> Result<(), MlsError> {
        self.inner
            .merge_pending_commit(member.provider())
            .map_err(|e| MlsError::Rejected(e.to_string()))
    }

    /// Drops our pending commit: another commit won this epoch.
    pub fn discard_commit<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        member: &GroupMember<S>,
    ) -> Result<(), MlsError> {
        self.inner
            .clear_pending_commit(member.provider().storage())
            .map_err(storage_err)
    }

    /// Processes one incoming MLS message (commit, proposal or application).
    pub fn process<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        member: &GroupMember<S>,
        bytes: &[u8],
    ) -> Result<GroupEvent, MlsError> {
        let message = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|e| MlsError::Malformed(e.to_string()))?;
        let protocol: ProtocolMessage = match message.extract() {
            MlsMessageBodyIn::PrivateMessage(m) => m.into(),
            MlsMessageBodyIn::PublicMessage(m) => m.into(),
            _ => return Err(MlsError::Malformed("not a group message".into())),
        };
        if protocol.group_id() != self.inner.group_id() {
            return Err(MlsError::WrongGroup);
        }
        // A removed member holds nothing for later: it can never catch up.
        if !self.inner.is_active() {
            return Err(MlsError::NotActive);
        }
        let current = self.epoch();
        let epoch = protocol.epoch().as_u64();
        if epoch > current {
            return Ok(GroupEvent::NotYet { epoch });
        }
        let is_application = protocol.content_type() == ContentType::Application;
        if epoch < current && (!is_application || current - epoch > MAX_PAST_EPOCHS as u64) {
            return Ok(GroupEvent::TooOld { epoch });
        }
        let processed = self
            .inner
            .process_message(member.provider(), protocol)
            .map_err(|e| MlsError::Rejected(e.to_string()))?;
        let sender = identity_of(processed.credential());
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => Ok(GroupEvent::Application {
                sender,
                epoch,
                plaintext: app.into_bytes(),
            }),
            ProcessedMessageContent::ProposalMessage(proposal) => {
                self.inner
                    .store_pending_proposal(member.provider().storage(), *proposal)
                    .map_err(storage_err)?;
                Ok(GroupEvent::ProposalStored { sender })
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let removed_self = staged.self_removed();
                // Someone else's commit won this epoch: ours can never apply.
                if self.has_pending_commit() {
                    self.discard_commit(member)?;
                }
                self.inner
                    .merge_staged_commit(member.provider(), *staged)
                    .map_err(|e| MlsError::Rejected(e.to_string()))?;
                Ok(GroupEvent::CommitApplied {
                    sender,
                    epoch: self.epoch(),
                    members: if removed_self {
                        Vec::new()
                    } else {
                        self.members()
                    },
                    removed_self,
                })
            }
            ProcessedMessageContent::OwnPrivateMessage => Ok(GroupEvent::Own { epoch }),
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => Err(MlsError::Rejected(
                "external join proposals are not accepted".into(),
            )),
            #[allow(unreachable_patterns)]
            _ => Err(MlsError::Rejected("unsupported message content".into())),
        }
    }
}
