//! Our own changes to the group: claiming and checking the KeyPackages of devices
//! to add, and one attempt at a commit through the node's epoch fence (made
//! pending and saved before it leaves, then confirmed or discarded by the answer).

use super::*;
use quicnprotochat_wire::limits::MAX_GROUP_INFO;

/// The GroupInfo a commit publishes for devices of members to rejoin from,
/// when the node keeps one that large and the call has room for it beside its
/// `bytes` of bodies (else none: the group cannot be rejoined by external commit
/// until a later commit publishes one).
pub(crate) fn publishable_group_info(out: &CommitOutput, bytes: usize) -> Vec<u8> {
    match &out.group_info {
        Some(info) if info.len() <= MAX_GROUP_INFO && bytes + info.len() <= MAX_COMMIT_BYTES => {
            info.clone()
        }
        _ => Vec::new(),
    }
}

impl GroupState {
    pub(super) async fn prepare_invite(
        &mut self,
        targets: Vec<(String, KeyPackageTarget)>,
    ) -> Result<(Vec<Vec<u8>>, Vec<RosterEntry>), MessengerError> {
        let group = self.load()?;
        let group_name = self.name()?;
        let suite = group
            .suite()
            .unwrap_or(quicnprotochat_crypto::mls::Suite::Classic);
        let present: BTreeSet<Vec<u8>> = group.members().into_iter().collect();
        let mut key_packages = Vec::new();
        let mut added = Vec::new();
        for (user, target) in targets {
            let user = &user;
            let claimed =
                match ask_session(&self.session.get(), |reply| SessionMsg::FetchKeyPackages {
                    target,
                    suite,
                    reply,
                })
                .await
                {
                    Err(ClientError::Refused(w)) if w.code == ErrorCode::NotFound => {
                        return Err(if w.detail == NO_KEY_PACKAGES {
                            MessengerError::WrongSuite {
                                user: user.clone(),
                                suite,
                            }
                        } else {
                            MessengerError::UnknownUser(user.clone())
                        });
                    }
                    other => other?,
                };
            let mut fresh = 0;
            for c in claimed {
                if present.contains(c.identity_key.0.as_slice()) {
                    continue;
                }
                let bad = |reason: String| MessengerError::BadKeys {
                    user: user.clone(),
                    reason,
                };
                HybridPublicKey::verify(&c.hybrid_public_key, &c.identity_key.0)
                    .map_err(|e| bad(e.to_string()))?;
                let kp = validate_key_package(&c.key_package).map_err(|e| bad(e.to_string()))?;
                if kp.identity_key != c.identity_key.0 {
                    return Err(bad("KeyPackage of another device".into()));
                }
                if kp.suite != suite {
                    return Err(MessengerError::WrongSuite {
                        user: user.clone(),
                        suite,
                    });
                }
                key_packages.push(c.key_package);
                added.push(RosterEntry {
                    identity: c.identity_key.0,
                    username: user.clone(),
                    hybrid_key: c.hybrid_public_key,
                });
                fresh += 1;
            }
            if fresh == 0 {
                return Err(MessengerError::AlreadyMember {
                    user: user.clone(),
                    group: group_name.clone(),
                });
            }
        }
        Ok((key_packages, added))
    }

    /// One attempt at committing `change` through the node's epoch fence.
    pub(super) async fn commit(
        &mut self,
        change: &Change,
        crash_at: Option<CrashPoint>,
    ) -> Result<CommitOutcome, MessengerError> {
        let mut group = self.load()?;
        let before = self.profile.others(&group);
        let (out, added): (CommitOutput, &[RosterEntry]) = match change {
            Change::Add {
                key_packages,
                added,
            } => (group.add_members(&self.member, key_packages)?, added),
            Change::RemoveUsers(users) => {
                crate::actors::names::confirm_unnamed(
                    &self.profile,
                    &self.session.get(),
                    &self.gid,
                    &group.members(),
                )
                .await?;
                let mut gone = Vec::new();
                for user in users {
                    let devices: Vec<Vec<u8>> = group
                        .members()
                        .into_iter()
                        .filter(|m| self.profile.name_of(m) == *user)
                        .collect();
                    if devices.is_empty() {
                        return Err(MessengerError::NotAMember {
                            user: user.clone(),
                            group: self.name()?,
                        });
                    }
                    gone.extend(devices);
                }
                let ids: Vec<&[u8]> = gone.iter().map(|i| i.as_slice()).collect();
                (group.remove_members(&self.member, &ids)?, &[])
            }
            Change::RemoveDevices(devices) => {
                let present = group.members();
                let ids: Vec<&[u8]> = devices
                    .iter()
                    .map(|d| d.as_slice())
                    .filter(|d| present.iter().any(|m| m.as_slice() == *d))
                    .collect();
                if ids.is_empty() {
                    return Ok(CommitOutcome::Nothing);
                }
                (group.remove_members(&self.member, &ids)?, &[])
            }
            Change::Update => (group.self_update(&self.member)?, &[]),
            Change::PendingProposals => match group.commit_pending_proposals(&self.member)? {
                Some(out) => (out, &[]),
                None => return Ok(CommitOutcome::Nothing),
            },
        };
        // The pending commit is durable before it leaves: if we crash once the
        // node accepted it, the receipt in our inbox lets us apply it.
        self.save(|_| Ok(()))?;
        let bodies = self.commit_bodies(&group, &before, &out, added)?;
        let bytes: usize = bodies.commit.len()
            + bodies.welcome.len()
            + bodies.receipt.len()
            + bodies
                .parts
                .iter()
                .map(|(_, p)| p.len() + 48)
                .sum::<usize>();
        if bytes > MAX_COMMIT_BYTES {
            group.discard_commit(&self.member)?;
            self.save(|_| Ok(()))?;
            return Err(MessengerError::CommitTooLarge { bytes });
        }
        let mut bodies = bodies;
        bodies.group_info = publishable_group_info(&out, bytes);
        if crash_at == Some(CrashPoint::BeforeSending) {
            return Ok(CommitOutcome::Interrupted);
        }
        let members = group.members_after_pending_commit().unwrap_or_default();
        let group_id = self.gid.clone();
        let epoch = out.epoch;
        let mls_commit = out.commit.clone();
        let answer = ask_session(&self.session.get(), |reply| SessionMsg::CommitGroup {
            group_id,
            epoch,
            members,
            mls_commit,
            bodies,
            reply,
        })
        .await;
        if answer.is_ok() && crash_at == Some(CrashPoint::AfterAcceptance) {
            return Ok(CommitOutcome::Interrupted);
        }
        let mut protocol = self.protocol(&group)?;
        let node_answer = match &answer {
            Ok(_) => NodeAnswer::Accepted,
            Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => NodeAnswer::Stale,
            Err(ClientError::Refused(_)) => NodeAnswer::Refused,
            Err(_) => NodeAnswer::Lost,
        };
        match protocol.answer(node_answer) {
            PendingAction::Confirm => {
                group.confirm_commit(&self.member)?;
                let epoch = group.epoch();
                let gid = self.gid.clone();
                self.save(|t| {
                    for e in added {
                        t.put_roster(e)?;
                    }
                    if matches!(change, Change::PendingProposals) {
                        t.proposals_settled(&gid)?;
                    }
                    Ok(())
                })?;
                Ok(CommitOutcome::Applied(epoch))
            }
            PendingAction::Discard => {
                group.discard_commit(&self.member)?;
                self.save(|_| Ok(()))?;
                match answer {
                    Err(e) if node_answer == NodeAnswer::Refused => Err(e.into()),
                    _ => Ok(CommitOutcome::Stale),
                }
            }
            // The node may have accepted it before the connection broke: keep it
            // pending; the next pull applies it from its receipt, or discards it
            // when there is none.
            PendingAction::Keep | PendingAction::None => match answer {
                Err(e) => Err(e.into()),
                Ok(_) => Ok(CommitOutcome::Nothing),
            },
        }
    }

    /// The commit's bodies: the commit for every other member before it
    /// (removed ones included, so they learn it), a Welcome for added devices,
    /// our own receipt; each uploaded once, with per-recipient parts where the
    /// group's suite needs them.
    fn commit_bodies(
        &self,
        group: &Group,
        before: &[Vec<u8>],
        out: &CommitOutput,
        added: &[RosterEntry],
    ) -> Result<CommitBodies, MessengerError> {
        let p = &self.profile;
        let mut bodies = CommitBodies::default();
        let mut commit = p.group_message(Body::Group, &self.gid, out.commit.clone());
        commit.roster = added.to_vec();
        if !before.is_empty() {
            let (body, parts) = p.seal_for_group(group, before, &commit.encode()?)?;
            bodies.commit = body;
            bodies.parts.extend(parts);
        }
        if let Some(welcome) = &out.welcome
            && !added.is_empty()
        {
            let mut roster: Vec<RosterEntry> = before
                .iter()
                .filter_map(|m| p.state.roster_entry(m).ok().flatten())
                .collect();
            roster.push(p.my_entry());
            roster.extend(added.iter().cloned());
            let mut msg = p.group_message(Body::Welcome, &self.gid, welcome.clone());
            msg.roster = roster;
            let mut keys = Vec::with_capacity(added.len());
            for a in added {
                keys.push(
                    HybridPublicKey::verify(&a.hybrid_key, &a.identity).map_err(|e| {
                        MessengerError::BadKeys {
                            user: a.username.clone(),
                            reason: e.to_string(),
                        }
                    })?,
                );
            }
            let ids: Vec<IdentityKey> = added.iter().map(|a| IdentityKey(a.identity)).collect();
            let (body, parts) = p.seal_shared_to(group, &ids, &keys, &msg.encode()?);
            bodies.welcome = body;
            bodies.parts.extend(parts);
        }
        let (body, parts) = p.seal_receipt(group, out.epoch)?;
        bodies.receipt = body;
        bodies.parts.extend(parts);
        Ok(bodies)
    }
}
