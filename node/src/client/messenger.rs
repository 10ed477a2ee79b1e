//! Group messaging for one client profile: create groups, invite, send, receive,
//! remove, leave, self-update, all end to end encrypted (MLS inside, a hybrid
//! X-Wing envelope per recipient around it).
//!
//! One `Messenger` owns the profile's MLS state and applies every epoch transition
//! itself, one at a time: incoming envelopes strictly in seq order, each applied
//! and committed to the profile (with the cursor) in one transaction before the
//! inbox is acked; a message from a later epoch is held, durably, until the commit
//! that gets there; our own commits go through the node's epoch fence and are
//! rebuilt after the winning commit when they lose (`STALE_EPOCH`).

use std::collections::BTreeSet;
use std::time::Duration;

use quicnprotochat_actors::auth::NO_KEY_PACKAGES;
use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::envelope::{
    HybridKeyPair, HybridPublicKey, open_sealed_sender, seal_sealed_sender,
};
use quicnprotochat_crypto::mls::{
    CommitOutput, Group, GroupEvent, GroupMember, MlsError, Suite, validate_key_package,
};
use quicnprotochat_wire::{ErrorCode, IdentityKey};

use crate::client::message::{Body, ClientMessage, RosterEntry};
use crate::client::mls_store::RedbMlsStorage;
use crate::client::state::{ClientState, ClientTxn, LineKey, StateError};
use crate::client::{ClientError, KeyDirectory, KeyPackageTarget, SessionHandle};

/// How often an outgoing commit is rebuilt after losing the epoch race.
pub const MAX_COMMIT_ATTEMPTS: u32 = 8;
/// Most messages held for a later epoch; past that they are reported and dropped.
pub const MAX_HELD: usize = 1000;
/// Most bytes of deliveries one commit call carries: well inside the node's
/// Cap'n Proto read limit (twice the larger of its payload limit and 4 MiB).
pub const MAX_COMMIT_BYTES: usize = 6 * 1024 * 1024;
/// Envelopes asked for per fetch.
const FETCH_BATCH: u32 = 256;

/// Why a group operation failed, in words the user can act on.
#[derive(Debug, thiserror::Error)]
pub enum MessengerError {
    #[error("no group named {0:?} on this profile (see `groups`)")]
    UnknownGroup(String),
    #[error("a group named {0:?} exists already on this profile")]
    GroupExists(String),
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("{user} is not a member of {group}")]
    NotAMember { user: String, group: String },
    #[error("{user} is already a member of {group}")]
    AlreadyMember { user: String, group: String },
    #[error(
        "unknown user {user:?}, or no KeyPackage published for this group's ciphersuite ({suite:?})"
    )]
    WrongSuite { user: String, suite: Suite },
    #[error("{user}'s published keys do not verify: {reason}")]
    BadKeys { user: String, reason: String },
    #[error("no hybrid key known for member {0}: cannot seal to it")]
    NoKeyFor(String),
    #[error("the group changed {0} times while committing; try again")]
    CommitRetriesExhausted(u32),
    #[error("the commit's deliveries ({bytes} bytes) exceed what one call may carry")]
    CommitTooLarge { bytes: usize },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("MLS: {0}")]
    Mls(#[from] MlsError),
    #[error("message encoding: {0}")]
    Encoding(#[from] crate::client::message::MessageError),
}

/// One thing to show the user, produced while applying the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The inbox seq of the envelope that produced it.
    pub seq: u64,
    pub group: Option<String>,
    /// `None` for notices about the group rather than messages in it.
    pub sender: Option<String>,
    pub text: String,
    /// The group's epoch after the envelope was applied.
    pub epoch: Option<u64>,
}

impl Line {
    /// `[GROUP] SENDER: TEXT`, or `[GROUP] * NOTICE`.
    pub fn display(&self) -> String {
        let group = self.group.as_deref().unwrap_or("-");
        match &self.sender {
            Some(s) => format!("[{group}] {s}: {}", self.text),
            None => format!("[{group}] * {}", self.text),
        }
    }
}

/// What a group looks like from this profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    pub name: String,
    pub group_id: Vec<u8>,
    pub epoch: u64,
    pub members: Vec<String>,
    pub suite: Option<Suite>,
    pub epoch_authenticator: Vec<u8>,
}

/// The kinds of commit a member makes.
enum Change {
    Add {
        key_packages: Vec<Vec<u8>>,
        added: Vec<RosterEntry>,
    },
    Remove(Vec<[u8; 32]>),
    Update,
    PendingProposals,
}

/// What applying one envelope changes besides the MLS state.
#[derive(Default)]
struct Effects {
    lines: Vec<Line>,
    roster: Vec<RosterEntry>,
    set_group: Option<(String, Vec<u8>)>,
    forget_group: Option<Vec<u8>>,
    hold: Option<Vec<u8>>,
    release: Vec<u64>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn short_hex(id: &[u8]) -> String {
    id.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// A held message: the sealed sender's identity, then the client message.
fn encode_held(sender: &[u8; 32], msg: &[u8]) -> Vec<u8> {
    let mut out = sender.to_vec();
    out.extend_from_slice(msg);
    out
}

fn decode_held(bytes: &[u8]) -> Option<([u8; 32], ClientMessage)> {
    let sender: [u8; 32] = bytes.get(..32)?.try_into().ok()?;
    Some((sender, ClientMessage::decode(&bytes[32..]).ok()?))
}

pub struct Messenger {
    state: ClientState,
    identity: Identity,
    hybrid: HybridKeyPair,
    member: GroupMember<RedbMlsStorage>,
    session: SessionHandle,
    directory: KeyDirectory,
    username: String,
    /// Test hook: behave as if the process died at this point of the next commit.
    die_at: Option<CrashPoint>,
}

/// Where a test makes the next commit stop, as if the process had died there.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The pending commit is saved, nothing was sent.
    BeforeSending,
    /// The node accepted the commit; we never heard.
    AfterAcceptance,
}

impl Messenger {
    /// The messenger of the profile in `state`, acting through `session` (which
    /// must belong to the profile's identity) as `username`.
    pub fn open(
        state: ClientState,
        session: SessionHandle,
        directory: KeyDirectory,
        username: &str,
    ) -> Result<Messenger, MessengerError> {
        let identity = state.identity()?;
        let hybrid = state.hybrid_key()?;
        let member = state.mls_member(&identity)?;
        let me = RosterEntry {
            identity: identity.public_key(),
            username: username.to_string(),
            hybrid_key: hybrid.signed_public(&identity).to_bytes(),
        };
        let m = Messenger {
            state,
            identity,
            hybrid,
            member,
            session,
            directory,
            username: username.to_string(),
            die_at: None,
        };
        m.state.write(|t| t.put_roster(&me))?;
        Ok(m)
    }

    /// Test hook: the next commit stops at `point` and is left pending, as if
    /// the process had died there.
    #[doc(hidden)]
    pub fn die_in_next_commit(&mut self, point: CrashPoint) {
        self.die_at = Some(point);
    }

    /// Continues on a new connection's session (after the old one was lost).
    pub fn reconnected(&mut self, session: SessionHandle, directory: KeyDirectory) {
        self.session = session;
        self.directory = directory;
    }

    /// Whether `e` means the connection to the node is gone (and a new one may
    /// succeed), rather than a refusal or a local failure.
    pub fn is_connection_loss(e: &MessengerError) -> bool {
        matches!(
            e,
            MessengerError::Client(ClientError::Transport(_) | ClientError::Unreachable { .. })
        )
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn identity_key(&self) -> [u8; 32] {
        self.identity.public_key()
    }

    pub fn state(&self) -> &ClientState {
        &self.state
    }

    fn my_entry(&self) -> RosterEntry {
        RosterEntry {
            identity: self.identity.public_key(),
            username: self.username.clone(),
            hybrid_key: self.hybrid.signed_public(&self.identity).to_bytes(),
        }
    }

    fn commit_state(
        &mut self,
        f: impl FnOnce(&ClientTxn<'_>) -> Result<(), redb::Error>,
    ) -> Result<(), MessengerError> {
        Ok(self
            .state
            .transact(self.member.provider().storage_provider(), f)?)
    }

    fn name_of(&self, identity: &[u8]) -> String {
        match self.state.roster_entry(identity) {
            Ok(Some(e)) => e.username,
            _ => short_hex(identity),
        }
    }

    fn load(&self, group_id: &[u8]) -> Result<Group, MessengerError> {
        self.member
            .load_group(group_id)?
            .ok_or_else(|| MessengerError::UnknownGroup(short_hex(group_id)))
    }

    fn group_named(&self, name: &str) -> Result<(Vec<u8>, Group), MessengerError> {
        let gid = self
            .state
            .group_id(name)?
            .ok_or_else(|| MessengerError::UnknownGroup(name.to_string()))?;
        let group = self.load(&gid)?;
        Ok((gid, group))
    }

    /// Seals `msg` to `recipient` with its verified hybrid key.
    fn seal(&self, recipient: &[u8], msg: &[u8]) -> Result<(IdentityKey, Vec<u8>), MessengerError> {
        let entry = self
            .state
            .roster_entry(recipient)?
            .ok_or_else(|| MessengerError::NoKeyFor(short_hex(recipient)))?;
        let key = HybridPublicKey::verify(&entry.hybrid_key, &entry.identity).map_err(|e| {
            MessengerError::BadKeys {
                user: entry.username.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok((
            IdentityKey(entry.identity),
            seal_sealed_sender(&self.identity, &key, msg, now_ms()),
        ))
    }

    fn group_message(&self, body: Body, group_id: &[u8], mls: Vec<u8>) -> ClientMessage {
        ClientMessage {
            body,
            group_id: group_id.to_vec(),
            mls,
            sender_name: self.username.clone(),
            roster: Vec::new(),
        }
    }

    /// Members other than this device.
    fn others(&self, group: &Group) -> Vec<Vec<u8>> {
        let me = self.identity.public_key();
        group
            .members()
            .into_iter()
            .filter(|m| m.as_slice() != me)
            .collect()
    }

    /// Creates a group with this device as its only member.
    pub fn create_group(&mut self, name: &str, suite: Suite) -> Result<Vec<u8>, MessengerError> {
        if name.is_empty() || name.len() > 64 || name.contains(['[', ']', '\n']) {
            return Err(MessengerError::Mls(MlsError::Rejected(
                "group names are 1 to 64 characters without brackets".into(),
            )));
        }
        if self.state.group_id(name)?.is_some() {
            return Err(MessengerError::GroupExists(name.to_string()));
        }
        let group = self.member.create_group(suite, name)?;
        let gid = group.group_id();
        self.commit_state(|t| t.set_group(name, &gid))?;
        Ok(gid)
    }

    /// Adds every device of each user; returns the group's new epoch.
    pub async fn invite(
        &mut self,
        name: &str,
        usernames: &[String],
    ) -> Result<u64, MessengerError> {
        self.pull(Duration::ZERO).await?;
        let (gid, group) = self.group_named(name)?;
        let suite = group.suite().unwrap_or(Suite::Classic);
        let present: BTreeSet<Vec<u8>> = group.members().into_iter().collect();
        let mut key_packages = Vec::new();
        let mut added = Vec::new();
        for user in usernames {
            let claimed = match self
                .directory
                .fetch_key_packages(&KeyPackageTarget::Username(user.clone()), suite)
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
                    group: name.to_string(),
                });
            }
        }
        // One commit carries a Welcome per new device: when that is more than one
        // call may carry, add them in several commits, halving until each fits.
        let mut epoch = None;
        let mut rest: Vec<(Vec<u8>, RosterEntry)> = key_packages.into_iter().zip(added).collect();
        let mut chunk = rest.len();
        while !rest.is_empty() {
            let take = chunk.min(rest.len());
            let (key_packages, added): (Vec<_>, Vec<_>) = rest[..take].iter().cloned().unzip();
            match self
                .commit_change(
                    &gid,
                    Change::Add {
                        key_packages,
                        added,
                    },
                )
                .await
            {
                Ok(e) => {
                    epoch = e;
                    rest.drain(..take);
                }
                Err(MessengerError::CommitTooLarge { .. }) if take > 1 => chunk = take / 2,
                Err(e) => return Err(e),
            }
        }
        Ok(epoch.unwrap_or_default())
    }

    /// Removes every device of each user; returns the group's new epoch.
    pub async fn remove(
        &mut self,
        name: &str,
        usernames: &[String],
    ) -> Result<u64, MessengerError> {
        self.pull(Duration::ZERO).await?;
        let (gid, group) = self.group_named(name)?;
        let mut gone = Vec::new();
        for user in usernames {
            let devices: Vec<[u8; 32]> = group
                .members()
                .iter()
                .filter(|m| self.name_of(m) == *user)
                .filter_map(|m| <[u8; 32]>::try_from(m.as_slice()).ok())
                .collect();
            if devices.is_empty() {
                return Err(MessengerError::NotAMember {
                    user: user.clone(),
                    group: name.to_string(),
                });
            }
            gone.extend(devices);
        }
        let epoch = self.commit_change(&gid, Change::Remove(gone)).await?;
        Ok(epoch.unwrap_or_default())
    }

    /// Refreshes this device's keys in the group; returns the new epoch.
    pub async fn update(&mut self, name: &str) -> Result<u64, MessengerError> {
        self.pull(Duration::ZERO).await?;
        let (gid, _) = self.group_named(name)?;
        let epoch = self.commit_change(&gid, Change::Update).await?;
        Ok(epoch.unwrap_or_default())
    }

    /// Asks the group to remove this device (another member commits it) and
    /// forgets the group here.
    pub async fn leave(&mut self, name: &str) -> Result<(), MessengerError> {
        self.pull(Duration::ZERO).await?;
        let (gid, mut group) = self.group_named(name)?;
        let proposal = group.leave(&self.member)?;
        let msg = self.group_message(Body::Group, &gid, proposal).encode()?;
        let deliveries = self
            .others(&group)
            .iter()
            .map(|m| self.seal(m, &msg))
            .collect::<Result<Vec<_>, _>>()?;
        self.commit_state(|_| Ok(()))?;
        if !deliveries.is_empty() {
            self.session.enqueue_batch(&deliveries).await?;
        }
        self.commit_state(|t| t.forget_group(&gid))?;
        Ok(())
    }

    /// Sends `text` to every other member device; returns the seqs.
    pub async fn send(&mut self, name: &str, text: &str) -> Result<Vec<u64>, MessengerError> {
        self.pull(Duration::ZERO).await?;
        let (gid, mut group) = self.group_named(name)?;
        let ciphertext = group.encrypt(&self.member, text.as_bytes())?;
        // The ratchet moved: persist that before anything leaves, so a crash can
        // never make us reuse a message key.
        self.commit_state(|_| Ok(()))?;
        let msg = self.group_message(Body::Group, &gid, ciphertext).encode()?;
        let deliveries = self
            .others(&group)
            .iter()
            .map(|m| self.seal(m, &msg))
            .collect::<Result<Vec<_>, _>>()?;
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.session.enqueue_batch(&deliveries).await?)
    }

    /// Makes `change` as a commit and offers it to the node's epoch fence; when
    /// another commit won the epoch, applies that one and rebuilds. Returns the new
    /// epoch, or `None` when there turned out to be nothing to commit.
    async fn commit_change(
        &mut self,
        gid: &[u8],
        change: Change,
    ) -> Result<Option<u64>, MessengerError> {
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let mut group = self.load(gid)?;
            let before = self.others(&group);
            let (out, added): (CommitOutput, &[RosterEntry]) = match &change {
                Change::Add {
                    key_packages,
                    added,
                } => (group.add_members(&self.member, key_packages)?, added),
                Change::Remove(ids) => {
                    let ids: Vec<&[u8]> = ids.iter().map(|i| i.as_slice()).collect();
                    (group.remove_members(&self.member, &ids)?, &[])
                }
                Change::Update => (group.self_update(&self.member)?, &[]),
                Change::PendingProposals => match group.commit_pending_proposals(&self.member)? {
                    Some(out) => (out, &[]),
                    None => return Ok(None),
                },
            };
            // The pending commit is durable before it leaves: if we crash once
            // the node accepted it, the receipt in our inbox lets us apply it.
            self.commit_state(|_| Ok(()))?;
            let deliveries = self.commit_deliveries(gid, &before, &out, added)?;
            let bytes: usize = deliveries.iter().map(|(_, d)| d.len() + 64).sum();
            if bytes > MAX_COMMIT_BYTES {
                group.discard_commit(&self.member)?;
                self.commit_state(|_| Ok(()))?;
                return Err(MessengerError::CommitTooLarge { bytes });
            }
            if self.die_at == Some(CrashPoint::BeforeSending) {
                self.die_at = None;
                return Ok(None);
            }
            let members = group.members_after_pending_commit().unwrap_or_default();
            match self
                .session
                .commit(gid, out.epoch, &members, &deliveries)
                .await
            {
                Ok(_) if self.die_at == Some(CrashPoint::AfterAcceptance) => {
                    self.die_at = None;
                    return Ok(None);
                }
                Ok(_) => {
                    group.confirm_commit(&self.member)?;
                    let epoch = group.epoch();
                    self.commit_state(|t| {
                        for e in added {
                            t.put_roster(e)?;
                        }
                        Ok(())
                    })?;
                    return Ok(Some(epoch));
                }
                Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => {
                    group.discard_commit(&self.member)?;
                    self.commit_state(|_| Ok(()))?;
                    self.pull(Duration::ZERO).await?;
                }
                Err(e @ ClientError::Refused(_)) => {
                    group.discard_commit(&self.member)?;
                    self.commit_state(|_| Ok(()))?;
                    return Err(e.into());
                }
                // The node may have accepted it before the connection broke: keep
                // it pending; the next pull applies it from its receipt, or
                // discards it when there is none.
                Err(e) => return Err(e.into()),
            }
        }
        Err(MessengerError::CommitRetriesExhausted(MAX_COMMIT_ATTEMPTS))
    }

    /// The commit for every other member before it (removed ones included, so
    /// they learn it), Welcomes for added devices, and our own receipt.
    fn commit_deliveries(
        &self,
        gid: &[u8],
        before: &[Vec<u8>],
        out: &CommitOutput,
        added: &[RosterEntry],
    ) -> Result<Vec<(IdentityKey, Vec<u8>)>, MessengerError> {
        let mut commit = self.group_message(Body::Group, gid, out.commit.clone());
        commit.roster = added.to_vec();
        let commit = commit.encode()?;
        let mut deliveries = before
            .iter()
            .map(|m| self.seal(m, &commit))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(welcome) = &out.welcome
            && !added.is_empty()
        {
            let mut roster: Vec<RosterEntry> = before
                .iter()
                .filter_map(|m| self.state.roster_entry(m).ok().flatten())
                .collect();
            roster.push(self.my_entry());
            roster.extend(added.iter().cloned());
            let mut msg = self.group_message(Body::Welcome, gid, welcome.clone());
            msg.roster = roster;
            let msg = msg.encode()?;
            for a in added {
                let key = HybridPublicKey::verify(&a.hybrid_key, &a.identity).map_err(|e| {
                    MessengerError::BadKeys {
                        user: a.username.clone(),
                        reason: e.to_string(),
                    }
                })?;
                deliveries.push((
                    IdentityKey(a.identity),
                    seal_sealed_sender(&self.identity, &key, &msg, now_ms()),
                ));
            }
        }
        let receipt = self
            .group_message(Body::CommitReceipt { epoch: out.epoch }, gid, Vec::new())
            .encode()?;
        deliveries.push(self.seal(&self.identity.public_key(), &receipt)?);
        Ok(deliveries)
    }

    /// Applies everything waiting in the inbox, in seq order, acking as it goes;
    /// with `wait`, first waits up to that long for something to arrive. Returns
    /// the lines produced (also kept in the profile until shown).
    pub async fn pull(&mut self, wait: Duration) -> Result<Vec<Line>, MessengerError> {
        let mut cursor = self.state.cursor()?;
        let mut lines = Vec::new();
        let mut wait = wait;
        loop {
            let mut envelopes = if wait.is_zero() {
                self.session.fetch(cursor, FETCH_BATCH).await?
            } else {
                self.session.fetch_wait(cursor, FETCH_BATCH, wait).await?
            };
            wait = Duration::ZERO;
            if envelopes.is_empty() {
                break;
            }
            envelopes.sort_by_key(|e| e.seq);
            for env in envelopes {
                if env.seq <= cursor {
                    continue; // a duplicate: already applied
                }
                lines.extend(self.apply_envelope(env.seq, &env.data)?);
                cursor = env.seq;
            }
            self.session.ack(cursor).await?;
        }
        for (_, gid) in self.state.groups()? {
            let Ok(mut g) = self.load(&gid) else { continue };
            // A pending commit with no receipt after a full pull was never accepted.
            if g.has_pending_commit() {
                g.discard_commit(&self.member)?;
                self.commit_state(|_| Ok(()))?;
            }
            // Someone asked to leave: commit it (the fence picks one committer). The
            // proposal is in the profile, so this also happens after a restart.
            if g.has_pending_proposals() {
                Box::pin(self.commit_change(&gid, Change::PendingProposals)).await?;
            }
        }
        Ok(lines)
    }

    /// Applies one envelope and commits its effects with the cursor.
    fn apply_envelope(&mut self, seq: u64, data: &[u8]) -> Result<Vec<Line>, MessengerError> {
        let mut fx = Effects::default();
        match open_sealed_sender(&self.identity.public_key(), &self.hybrid, data) {
            Err(e) => fx.lines.push(notice(
                seq,
                None,
                format!("message {seq} could not be opened: {e}"),
            )),
            Ok(sealed) => match ClientMessage::decode(&sealed.payload) {
                Err(e) => fx.lines.push(notice(
                    seq,
                    None,
                    format!("message {seq} is malformed: {e}"),
                )),
                Ok(msg) => {
                    self.route(seq, sealed.sender, msg, &sealed.payload, &mut fx)?;
                }
            },
        }
        let lines = fx.lines.clone();
        self.commit_state(|t| {
            for e in &fx.roster {
                t.put_roster(e)?;
            }
            if let Some((name, gid)) = &fx.set_group {
                t.set_group(name, gid)?;
            }
            if let Some(gid) = &fx.forget_group {
                t.forget_group(gid)?;
            }
            if let Some(held) = &fx.hold {
                t.hold(seq, held)?;
            }
            for s in &fx.release {
                t.release(*s)?;
            }
            for (n, line) in fx.lines.iter().enumerate() {
                t.add_line(seq, n as u32, &line.display())?;
            }
            t.set_cursor(seq)
        })?;
        Ok(lines)
    }

    fn route(
        &mut self,
        seq: u64,
        sender: [u8; 32],
        msg: ClientMessage,
        raw: &[u8],
        fx: &mut Effects,
    ) -> Result<(), MessengerError> {
        match msg.body {
            Body::Welcome => self.apply_welcome(seq, &msg, fx),
            Body::CommitReceipt { epoch } => {
                if sender != self.identity.public_key() {
                    return Ok(()); // only we can confirm our commits
                }
                if let Ok(mut group) = self.load(&msg.group_id)
                    && group.epoch() == epoch
                    && group.has_pending_commit()
                {
                    group.confirm_commit(&self.member)?;
                    let name = self.state.group_name(&msg.group_id)?;
                    fx.lines.push(Line {
                        seq,
                        group: name,
                        sender: None,
                        text: format!("your change was applied (epoch {})", group.epoch()),
                        epoch: Some(group.epoch()),
                    });
                    self.release_held(seq, &msg.group_id, fx)?;
                }
                Ok(())
            }
            Body::Group => {
                let Some(name) = self.state.group_name(&msg.group_id)? else {
                    fx.lines.push(notice(
                        seq,
                        None,
                        format!(
                            "a message for a group this profile is not in (from {})",
                            msg.sender_name
                        ),
                    ));
                    return Ok(());
                };
                self.apply_group_message(seq, &name, sender, &msg, raw, fx, true)
            }
        }
    }

    fn apply_welcome(
        &mut self,
        seq: u64,
        msg: &ClientMessage,
        fx: &mut Effects,
    ) -> Result<(), MessengerError> {
        let group = match self.member.join(&msg.mls) {
            Ok(g) => g,
            Err(e) => {
                // Nothing of a failed join is kept (this envelope wrote nothing else).
                self.member.provider().storage_provider().rollback();
                fx.lines.push(notice(
                    seq,
                    None,
                    format!(
                        "an invitation from {} could not be used: {e}",
                        msg.sender_name
                    ),
                ));
                return Ok(());
            }
        };
        let members: BTreeSet<Vec<u8>> = group.members().into_iter().collect();
        for e in &msg.roster {
            if members.contains(e.identity.as_slice())
                && e.identity != self.identity.public_key()
                && HybridPublicKey::verify(&e.hybrid_key, &e.identity).is_ok()
            {
                fx.roster.push(e.clone());
            }
        }
        let wanted = group.name().unwrap_or_else(|| "unnamed".into());
        let mut name = wanted.clone();
        let mut n = 2;
        while self
            .state
            .group_id(&name)?
            .is_some_and(|g| g != group.group_id())
        {
            name = format!("{wanted}-{n}");
            n += 1;
        }
        fx.lines.push(Line {
            seq,
            group: Some(name.clone()),
            sender: None,
            text: format!(
                "joined, invited by {} ({} members, epoch {})",
                msg.sender_name,
                members.len(),
                group.epoch()
            ),
            epoch: Some(group.epoch()),
        });
        fx.set_group = Some((name, group.group_id()));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_group_message(
        &mut self,
        seq: u64,
        name: &str,
        sender: [u8; 32],
        msg: &ClientMessage,
        raw: &[u8],
        fx: &mut Effects,
        may_hold: bool,
    ) -> Result<(), MessengerError> {
        let mut group = self.load(&msg.group_id)?;
        let before: BTreeSet<Vec<u8>> = group.members().into_iter().collect();
        let storage = self.member.provider().storage_provider();
        let checkpoint = storage.checkpoint();
        let event = match group.process(&self.member, &msg.mls) {
            Ok(e) => e,
            Err(e) => {
                // Whatever OpenMLS wrote before refusing is not kept.
                storage.restore(checkpoint);
                fx.lines.push(notice(
                    seq,
                    Some(name),
                    format!("a message from {} was rejected: {e}", self.name_of(&sender)),
                ));
                return Ok(());
            }
        };
        let from = |id: &[u8], me: &Self| me.name_of(id);
        match event {
            GroupEvent::Application {
                sender: mls_sender,
                epoch,
                plaintext,
            } => {
                if mls_sender != sender {
                    fx.lines.push(notice(
                        seq,
                        Some(name),
                        "a message whose envelope and MLS senders differ was dropped".into(),
                    ));
                    return Ok(());
                }
                fx.lines.push(Line {
                    seq,
                    group: Some(name.to_string()),
                    sender: Some(from(&mls_sender, self)),
                    text: String::from_utf8_lossy(&plaintext).into_owned(),
                    epoch: Some(epoch),
                });
            }
            GroupEvent::CommitApplied {
                sender: committer,
                epoch,
                members,
                removed_self,
            } => {
                let after: BTreeSet<Vec<u8>> = members.into_iter().collect();
                // New members' entries are stored with this envelope's other effects.
                let learned: Vec<RosterEntry> = msg
                    .roster
                    .iter()
                    .filter(|e| {
                        after.contains(e.identity.as_slice())
                            && HybridPublicKey::verify(&e.hybrid_key, &e.identity).is_ok()
                    })
                    .cloned()
                    .collect();
                let name_for = |id: &[u8]| match learned.iter().find(|e| e.identity == id) {
                    Some(e) => e.username.clone(),
                    None => self.name_of(id),
                };
                let who = name_for(&committer);
                let text = if removed_self {
                    fx.forget_group = Some(msg.group_id.clone());
                    format!("you were removed from the group by {who}")
                } else {
                    let names = |set: Vec<&Vec<u8>>| {
                        set.iter()
                            .map(|m| name_for(m))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let added: Vec<&Vec<u8>> = after.difference(&before).collect();
                    let removed: Vec<&Vec<u8>> = before.difference(&after).collect();
                    let mut parts = Vec::new();
                    if !added.is_empty() {
                        parts.push(format!("added {}", names(added)));
                    }
                    if !removed.is_empty() {
                        parts.push(format!("removed {}", names(removed)));
                    }
                    if parts.is_empty() {
                        parts.push("updated their keys".into());
                    }
                    format!("{who} {} (epoch {epoch})", parts.join(", "))
                };
                fx.lines.push(Line {
                    seq,
                    group: Some(name.to_string()),
                    sender: None,
                    text,
                    epoch: Some(epoch),
                });
                fx.roster.extend(learned);
                if !removed_self {
                    self.release_held(seq, &msg.group_id, fx)?;
                }
            }
            GroupEvent::ProposalStored { sender } => {
                fx.lines.push(notice(
                    seq,
                    Some(name),
                    format!("{} asked to leave", from(&sender, self)),
                ));
            }
            GroupEvent::NotYet { epoch } => {
                if !may_hold {
                    return Err(MessengerError::Mls(MlsError::Rejected(format!(
                        "held message still from the future epoch {epoch}"
                    ))));
                }
                if self.state.held()?.len() >= MAX_HELD {
                    fx.lines.push(notice(
                        seq,
                        Some(name),
                        format!("a message from epoch {epoch} was dropped: too many messages waiting for their epoch"),
                    ));
                } else {
                    fx.hold = Some(encode_held(&sender, raw));
                }
            }
            GroupEvent::TooOld { epoch } => fx.lines.push(notice(
                seq,
                Some(name),
                format!(
                    "a message from {} (epoch {epoch}) arrived too late to be read",
                    self.name_of(&sender)
                ),
            )),
            GroupEvent::Own { .. } => {}
        }
        Ok(())
    }

    /// Retries, in seq order, the messages of `gid` that waited for a later epoch.
    fn release_held(
        &mut self,
        seq: u64,
        gid: &[u8],
        fx: &mut Effects,
    ) -> Result<(), MessengerError> {
        let Some(name) = self.state.group_name(gid)? else {
            return Ok(());
        };
        for (held_seq, bytes) in self.state.held()? {
            let Some((sender, msg)) = decode_held(&bytes) else {
                fx.release.push(held_seq);
                continue;
            };
            if msg.group_id != gid {
                continue;
            }
            let current = self.load(gid)?.epoch();
            let mut probe = Effects::default();
            match self.apply_group_message(
                seq,
                &name,
                sender,
                &msg,
                &bytes[32..],
                &mut probe,
                false,
            ) {
                Ok(()) => {
                    fx.release.push(held_seq);
                    fx.lines.extend(probe.lines);
                    fx.roster.extend(probe.roster);
                    if probe.forget_group.is_some() {
                        fx.forget_group = probe.forget_group;
                    }
                }
                // Still from a later epoch: keep waiting.
                Err(MessengerError::Mls(MlsError::Rejected(_)))
                    if self.load(gid)?.epoch() == current => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Every group of this profile.
    pub fn groups(&self) -> Result<Vec<GroupSummary>, MessengerError> {
        self.state
            .groups()?
            .into_iter()
            .map(|(name, gid)| self.summary(name, gid))
            .collect()
    }

    /// One group, by name.
    pub fn group(&self, name: &str) -> Result<GroupSummary, MessengerError> {
        let gid = self
            .state
            .group_id(name)?
            .ok_or_else(|| MessengerError::UnknownGroup(name.to_string()))?;
        self.summary(name.to_string(), gid)
    }

    fn summary(&self, name: String, gid: Vec<u8>) -> Result<GroupSummary, MessengerError> {
        let group = self.load(&gid)?;
        Ok(GroupSummary {
            name,
            epoch: group.epoch(),
            members: group.members().iter().map(|m| self.name_of(m)).collect(),
            suite: group.suite(),
            epoch_authenticator: group.epoch_authenticator(),
            group_id: gid,
        })
    }

    /// Lines produced but not yet shown, oldest first.
    pub fn unread(&self) -> Result<Vec<(LineKey, String)>, MessengerError> {
        Ok(self.state.unread()?)
    }

    /// Marks lines as shown.
    pub fn mark_shown(&self, keys: &[LineKey]) -> Result<(), MessengerError> {
        if keys.is_empty() {
            return Ok(());
        }
        Ok(self.state.write(|t| {
            for k in keys {
                t.remove_line(*k)?;
            }
            Ok(())
        })?)
    }
}

fn notice(seq: u64, group: Option<&str>, text: String) -> Line {
    Line {
        seq,
        group: group.map(str::to_string),
        sender: None,
        text,
        epoch: None,
    }
}
