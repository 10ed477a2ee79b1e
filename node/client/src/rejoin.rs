//! A device with no state of its account's groups (a new device, or one whose
//! profile was lost) rejoins them by external commit (RFC 9420 §12.4.3.2): the
//! node names the groups the account's devices are in and keeps each group's
//! latest GroupInfo, published by its last committer; from it this device
//! commits itself into the group. It reads everything sent after that commit;
//! what was sent before stays unreadable here, and it is told so.
//!
//! OpenMLS merges an external commit as it makes it, so the joined group stays in
//! this profile's uncommitted overlay until the node accepts the commit, and is
//! only then saved, with its name and members, in one transaction. If the process
//! dies between the node's acceptance and that save, the group has a leaf of
//! this device whose keys are lost; the next look rejoins with the same identity,
//! and the new external commit removes that leaf (same signature key).

use quicnprotochat_crypto::envelope::HybridPublicKey;
use quicnprotochat_crypto::mls::Group;
use quicnprotochat_wire::{ErrorCode, IdentityKey};

use crate::ClientError;
use crate::actors::group::commit::publishable_group_info;
use crate::actors::session::{SessionMsg, is_connection_loss};
use crate::actors::{ask_session, notice, short_hex};
use crate::message::{Body, RosterEntry};
use crate::messenger::{CrashPoint, Line, MAX_COMMIT_ATTEMPTS, Messenger, MessengerError};
use crate::rpc::{CommitBodies, DirectoryEntry};

/// How many looks (pulls) a profile makes for groups to rejoin before it gives
/// up on the ones it could not rejoin yet.
pub const MAX_REJOIN_LOOKS: u32 = 5;

/// What one attempt at rejoining a group came to.
enum Attempt {
    /// In, under this local name.
    Joined(String),
    /// Another commit won the epoch: catch up and try again.
    Stale,
    /// It cannot be rejoined (why), now or later.
    Impossible(String),
    /// Test hook: the process "died" once the node accepted the commit.
    Interrupted,
}

/// What became of one group of the account.
enum GroupRejoin {
    /// Nothing to do, or done: this line tells what happened, if anything.
    Settled(Option<Line>),
    /// Not rejoined yet: the next look tries again.
    NotYet,
}

impl Messenger {
    /// Rejoins the account's groups this profile has no state of: at its first
    /// look it asks the node which groups those are, and keeps that list; each
    /// group leaves the list once rejoined, once it proves impossible, or after
    /// [`MAX_REJOIN_LOOKS`] failed looks (with a line). Only a lost connection
    /// is an error.
    pub(crate) async fn rejoin_groups(&mut self) -> Result<(), MessengerError> {
        let profile = self.profile.clone();
        let state = &profile.state;
        if state.rejoin_to_list()? {
            let listed = ask_session(&self.session.get(), |reply| SessionMsg::AccountGroups {
                reply,
            })
            .await;
            match listed {
                Ok(groups) => state.write(|t| t.rejoin_listed(&groups))?,
                Err(e) if is_connection_loss(&e) => return Err(e.into()),
                Err(e) => {
                    let line = notice(
                        0,
                        None,
                        format!("this account's groups cannot be looked up: {e}"),
                    );
                    state.write(|t| {
                        t.add_local_line(&line)?;
                        t.rejoin_listed(&[])
                    })?;
                }
            }
        }
        for (gid, failed) in state.rejoin_pending()? {
            let outcome = match self.rejoin_group(&gid).await {
                Err(e) if Self::is_connection_loss(&e) => return Err(e),
                Err(e) => {
                    tracing::info!(group = %short_hex(&gid), error = %e, "not rejoined yet");
                    GroupRejoin::NotYet
                }
                Ok(outcome) => outcome,
            };
            state.write(|t| match &outcome {
                GroupRejoin::Settled(line) => {
                    if let Some(line) = line {
                        t.add_local_line(line)?;
                    }
                    t.rejoin_done(&gid)
                }
                GroupRejoin::NotYet if failed + 1 >= MAX_REJOIN_LOOKS => {
                    let line = notice(
                        0,
                        None,
                        format!(
                            "group {} could not be rejoined; a member can invite this device",
                            short_hex(&gid)
                        ),
                    );
                    t.add_local_line(&line)?;
                    t.rejoin_done(&gid)
                }
                GroupRejoin::NotYet => t.rejoin_failed(&gid, failed + 1),
            })?;
        }
        Ok(())
    }

    /// Rejoins one group unless this profile is in it. An error leaves it for
    /// the next look.
    async fn rejoin_group(&mut self, gid: &[u8]) -> Result<GroupRejoin, MessengerError> {
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            // A member may have added this device meanwhile (its Welcome is
            // applied by the pull before this).
            if self.profile.state.group_name(gid)?.is_some() {
                return Ok(GroupRejoin::Settled(None));
            }
            match self.attempt_rejoin(gid).await? {
                Attempt::Joined(name) => {
                    return Ok(GroupRejoin::Settled(Some(notice(
                        0,
                        Some(&name),
                        "rejoined: messages sent before this device joined cannot be read here"
                            .into(),
                    ))));
                }
                Attempt::Interrupted => return Ok(GroupRejoin::NotYet),
                Attempt::Impossible(why) => {
                    return Ok(GroupRejoin::Settled(Some(notice(
                        0,
                        None,
                        format!("group {} cannot be rejoined: {why}", short_hex(gid)),
                    ))));
                }
                Attempt::Stale => {
                    self.catch_up(std::time::Duration::ZERO).await?;
                }
            }
        }
        Ok(GroupRejoin::NotYet)
    }

    /// One external commit into `gid` through the node's epoch fence.
    async fn attempt_rejoin(&mut self, gid: &[u8]) -> Result<Attempt, MessengerError> {
        let session = self.session.get();
        let group_id = gid.to_vec();
        let (info, directory) =
            match ask_session(&session, |reply| SessionMsg::GroupInfo { group_id, reply }).await {
                Ok(found) => found,
                Err(ClientError::Refused(w))
                    if matches!(w.code, ErrorCode::NotFound | ErrorCode::Unauthorized) =>
                {
                    return Ok(Attempt::Impossible(w.detail));
                }
                Err(e) => return Err(e.into()),
            };
        let p = self.profile.clone();
        let member = p.state.mls_member(&p.identity)?;
        let storage = member.provider().storage_provider();
        let (group, out) = match member.join_external(&info) {
            Ok(joined) => joined,
            Err(e) => {
                storage.rollback();
                return Ok(Attempt::Impossible(e.to_string()));
            }
        };
        if group.group_id() != gid {
            storage.rollback();
            return Ok(Attempt::Impossible(
                "the node served another group's GroupInfo".into(),
            ));
        }
        let roster = match members_roster(&group, &directory, &p.me()) {
            Ok(r) => r,
            Err(why) => {
                storage.rollback();
                return Ok(Attempt::Impossible(why));
            }
        };
        let bodies = match self.rejoin_bodies(&group, &roster, &out) {
            Ok(b) => b,
            Err(e) => {
                storage.rollback();
                return Err(e);
            }
        };
        let members = group.members();
        let epoch = out.epoch;
        let group_id = gid.to_vec();
        let answer = ask_session(&session, |reply| SessionMsg::CommitGroup {
            group_id,
            epoch,
            members,
            mls_commit: out.commit,
            bodies,
            reply,
        })
        .await;
        match answer {
            Ok(_) if self.crash_at == Some(CrashPoint::AfterAcceptance) => {
                self.crash_at = None;
                storage.rollback();
                Ok(Attempt::Interrupted)
            }
            Ok(_) => {
                let wanted = group.name().unwrap_or_else(|| "unnamed".into());
                let name = p.state.free_group_name(&wanted, gid)?;
                p.state.transact(storage, |t| {
                    for e in &roster {
                        t.put_roster(e)?;
                    }
                    t.set_group(&name, gid)
                })?;
                Ok(Attempt::Joined(name))
            }
            Err(e) => {
                // Whatever the node did, this attempt's group is not kept: if the
                // node did accept it, the next attempt's commit replaces its leaf.
                storage.rollback();
                match e {
                    e if e.code() == Some(ErrorCode::StaleEpoch) => Ok(Attempt::Stale),
                    ClientError::Refused(w) => Ok(Attempt::Impossible(w.to_string())),
                    e => Err(e.into()),
                }
            }
        }
    }

    /// The external commit for every other member (with this device's own
    /// roster entry: who it is, and its key), and its receipt for this device.
    fn rejoin_bodies(
        &self,
        group: &Group,
        roster: &[RosterEntry],
        out: &quicnprotochat_crypto::mls::CommitOutput,
    ) -> Result<CommitBodies, MessengerError> {
        let p = &self.profile;
        let gid = group.group_id();
        let mut commit = p.group_message(Body::Group, &gid, out.commit.clone());
        commit.roster = vec![p.my_entry()];
        let mut ids = Vec::with_capacity(roster.len());
        let mut keys = Vec::with_capacity(roster.len());
        for e in roster {
            ids.push(IdentityKey(e.identity));
            keys.push(
                HybridPublicKey::verify(&e.hybrid_key, &e.identity).map_err(|err| {
                    MessengerError::BadKeys {
                        user: e.username.clone(),
                        reason: err.to_string(),
                    }
                })?,
            );
        }
        let (commit_body, mut parts) = p.seal_shared_to(group, &ids, &keys, &commit.encode()?);
        let (receipt_body, receipt_parts) = p.seal_receipt(group, out.epoch)?;
        parts.extend(receipt_parts);
        let bytes = commit_body.len() + receipt_body.len();
        Ok(CommitBodies {
            commit: commit_body,
            welcome: Vec::new(),
            receipt: receipt_body,
            parts,
            group_info: publishable_group_info(out, bytes),
        })
    }
}

/// The other members of the joined group as the node's directory names them,
/// each with a hybrid key signed by its own identity: whom the commit is sealed
/// to and how they are called here. A member the directory does not know (a
/// removed device) gets nothing; one whose key does not verify stops the join.
fn members_roster(
    group: &Group,
    directory: &[DirectoryEntry],
    me: &[u8; 32],
) -> Result<Vec<RosterEntry>, String> {
    let mut roster = Vec::new();
    for m in group.members() {
        if m.as_slice() == me {
            continue;
        }
        let Some(entry) = directory.iter().find(|d| d.identity_key.0.as_slice() == m) else {
            continue;
        };
        if HybridPublicKey::verify(&entry.hybrid_public_key, &entry.identity_key.0).is_err() {
            return Err(format!(
                "the directory's key of {} ({}) does not verify",
                entry.username,
                short_hex(&m)
            ));
        }
        roster.push(RosterEntry {
            identity: entry.identity_key.0,
            username: entry.username.clone(),
            hybrid_key: entry.hybrid_public_key.clone(),
        });
    }
    Ok(roster)
}
