//! Group messaging for one client profile: create groups, invite, send, receive,
//! remove, leave, self-update, all end to end encrypted (MLS inside, a hybrid
//! X-Wing envelope per recipient around it).
//!
//! A `Messenger` is the handle an application holds; the work happens in the
//! client's actor tree behind it (`crate::actors`): the session actor
//! owns the connection, the receiver applies the inbox strictly in seq order,
//! one actor per group serializes that group's epoch transitions. Each applied
//! envelope commits to the profile (with the cursor) in one transaction before
//! the inbox is acked; a message from a later epoch is held, durably, until the
//! commit that gets there; our own commits go through the node's epoch fence and,
//! when they lose (`STALE_EPOCH`), are rebuilt after the inbox has been caught up.

use std::sync::Arc;
use std::time::Duration;

use quicnprotochat_crypto::mls::Suite;
use ractor::thread_local::ThreadLocalActorSpawner;
use ractor::{Actor, ActorRef};
use tokio::sync::broadcast;

use crate::actors::group::{Change, CommitOutcome, GroupMsg};
use crate::actors::receiver::ReceiverMsg;
use crate::actors::session::{ConnectionEvent, SessionMsg};
use crate::actors::supervisor::{ClientSupervisor, SessionSlot, SupervisorArgs, SupervisorMsg};
use crate::actors::{NodeAddress, Profile, ask, ask_session};
use crate::message::RosterEntry;
use crate::state::ClientState;
use crate::state::lines::{LineKey, ShownLine};
use crate::{ClientError, KeyPackageTarget};
use quicnprotochat_wire::IdentityKey;

pub mod terms;
pub use terms::{
    CrashPoint, GroupSummary, Line, MAX_COMMIT_ATTEMPTS, MAX_COMMIT_BYTES, MAX_HELD,
    MAX_PROPOSAL_ATTEMPTS, MessengerError, SendReport,
};

/// The handle on one client profile's actor tree.
pub struct Messenger {
    pub(crate) profile: Arc<Profile>,
    supervisor: ActorRef<SupervisorMsg>,
    pub(crate) session: SessionSlot,
    events: broadcast::Sender<ConnectionEvent>,
    /// Test hook: behave as if the process died at this point of the next commit.
    pub(crate) crash_at: Option<CrashPoint>,
    stopped: Option<ractor::concurrency::JoinHandle<()>>,
    /// When the account's devices were last compared with the profile's groups.
    pub(crate) devices_checked: Option<std::time::Instant>,
    /// Whether someone follows the inbox (the profile is kept current).
    followed: std::sync::atomic::AtomicBool,
    /// Reports of the messages this handle's sends queued, until returned.
    sent_reports: std::collections::HashMap<u64, SendReport>,
    /// Test hook: the next message sent is answered as if the connection dropped.
    lose_next_send_answer: bool,
}

impl Messenger {
    /// Starts the actor tree of the profile in `state` (which must hold a login)
    /// and connects it to the node at `address`, resuming the profile's session.
    /// Connection failures are reported here, typed; with `address.fail_fast`
    /// it does not connect here (the messenger works from the profile and
    /// connects with its first request that needs the node).
    pub async fn start(
        state: ClientState,
        address: NodeAddress,
    ) -> Result<Messenger, MessengerError> {
        let username = state
            .saved_login()?
            .map(|l| l.username)
            .ok_or_else(|| ClientError::Session("not logged in on this profile".into()))?;
        let identity = state.identity()?;
        let hybrid = state.hybrid_key()?;
        let profile = Arc::new(Profile {
            state,
            identity,
            hybrid,
            username,
        });
        let fail_fast = address.fail_fast;
        let me: RosterEntry = profile.my_entry();
        profile.state.write(|t| t.put_roster(&me))?;
        let (events, _) = broadcast::channel(64);
        let (slot_tx, slot_rx) = tokio::sync::oneshot::channel();
        let (supervisor, stopped) = Actor::spawn(
            None,
            ClientSupervisor,
            SupervisorArgs {
                profile: profile.clone(),
                address,
                events: events.clone(),
                spawner: ThreadLocalActorSpawner::new(),
                session: slot_tx,
            },
        )
        .await
        .map_err(|e| MessengerError::ActorFailed(e.to_string()))?;
        let session = slot_rx
            .await
            .map_err(|_| MessengerError::ActorStopped("client supervisor"))?;
        let m = Messenger {
            profile,
            supervisor,
            session,
            events,
            crash_at: None,
            stopped: Some(stopped),
            devices_checked: None,
            followed: std::sync::atomic::AtomicBool::new(false),
            sent_reports: std::collections::HashMap::new(),
            lose_next_send_answer: false,
        };
        // A fail-fast (resident) messenger starts from its profile and
        // connects with its first request.
        if fail_fast.is_none() {
            let session = m.session.get();
            if let Err(e) = ask_session(&session, |reply| SessionMsg::Connect { reply }).await {
                // The tree lets go of the profile before the error is told:
                // the caller may open it again at once.
                m.close().await;
                return Err(e.into());
            }
        }
        Ok(m)
    }

    /// Stops the actor tree; the connection is closed cleanly. On return the
    /// profile's file is released (the same profile may be opened again).
    pub async fn close(mut self) {
        self.supervisor.stop(None);
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
        // Each actor lets go of the profile as its task ends, a moment after it
        // reports itself stopped.
        for _ in 0..1000 {
            if Arc::strong_count(&self.profile) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::warn!("client actors still hold the profile after closing");
    }

    /// Whether the inbox is followed (by [`Messenger::follow`]): what arrives
    /// is applied as it comes, so a read need not pull first.
    pub fn is_followed(&self) -> bool {
        self.followed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What happens to the connection (lost, retrying, back), as it happens.
    pub fn connection_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
    }

    /// Test hook: the next message sent goes out, but its answer is lost, as
    /// if the connection had dropped (it stays in the outbox).
    #[doc(hidden)]
    pub fn lose_next_send_answer(&mut self) {
        self.lose_next_send_answer = true;
    }

    /// Test hook: the next commit (or rejoin by external commit) stops at
    /// `point` and is left pending, as if the process had died there.
    #[doc(hidden)]
    pub fn die_in_next_commit(&mut self, point: CrashPoint) {
        self.crash_at = Some(point);
    }

    /// Whether `e` means the connection to the node is gone (and a new one may
    /// succeed), rather than a refusal or a local failure.
    pub fn is_connection_loss(e: &MessengerError) -> bool {
        terms::is_connection_loss(e)
    }

    /// The profile's username, once logged in.
    pub fn username(&self) -> &str {
        &self.profile.username
    }

    /// The device's identity key.
    pub fn identity_key(&self) -> [u8; 32] {
        self.profile.me()
    }

    /// The profile under the actors.
    pub fn state(&self) -> &ClientState {
        &self.profile.state
    }

    /// How many group actors are running now, and how many have failed so far
    /// (each restarted from the profile on its next use).
    pub async fn group_actors(&self) -> Result<(usize, u64), MessengerError> {
        ask(&self.supervisor, "client supervisor", |reply| {
            SupervisorMsg::LiveGroups { reply }
        })
        .await
    }

    /// Test hook: makes the actor of group `name` fail, as a bug would.
    #[doc(hidden)]
    pub async fn crash_group_actor(&self, name: &str) -> Result<(), MessengerError> {
        let group = self.group_actor(name).await?;
        group
            .cast(GroupMsg::Crash)
            .map_err(|_| MessengerError::ActorStopped("group actor"))
    }

    /// The newest `limit` messages of group `name` (received and sent), oldest
    /// first.
    pub fn history(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<crate::state::history::HistoryEntry>, MessengerError> {
        let gid = self
            .profile
            .state
            .group_id(name)?
            .ok_or_else(|| MessengerError::UnknownGroup(name.to_string()))?;
        let mut entries = self.profile.state.history(&gid, limit)?;
        // Ours still in the outbox come last: newer than anything sent.
        let outbox: Vec<_> = self
            .profile
            .state
            .outbox()?
            .into_iter()
            .filter(|o| o.group_id == gid)
            .map(|o| crate::state::history::HistoryEntry {
                at_ms: o.at_ms,
                sender: self.profile.username.clone(),
                text: o.text,
                delivery: match o.failed {
                    None => crate::state::history::Delivery::Pending,
                    Some(why) => crate::state::history::Delivery::Failed(why),
                },
            })
            .collect();
        entries.extend(outbox);
        let skip = entries.len().saturating_sub(limit);
        Ok(entries.split_off(skip))
    }

    async fn group_actor(&self, name: &str) -> Result<ActorRef<GroupMsg>, MessengerError> {
        let gid = self
            .profile
            .state
            .group_id(name)?
            .ok_or_else(|| MessengerError::UnknownGroup(name.to_string()))?;
        ask(&self.supervisor, "client supervisor", |reply| {
            SupervisorMsg::Group { gid, reply }
        })
        .await
    }

    /// Has the receiver long-poll the inbox in a loop and apply what arrives,
    /// telling the returned channel after each batch it applied (an error when a
    /// fetch failed; after a lost connection it keeps trying). Lines produced are
    /// in [`Messenger::unread`]; a [`Messenger::pull`] on each notice also settles
    /// pending commits and proposals. Following stops when the channel is dropped.
    pub async fn follow(
        &self,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<Result<(), MessengerError>>, MessengerError>
    {
        let receiver = ask(&self.supervisor, "client supervisor", |reply| {
            SupervisorMsg::Receiver { reply }
        })
        .await?;
        let (to, notices) = tokio::sync::mpsc::unbounded_channel();
        receiver
            .cast(ReceiverMsg::Follow { to })
            .map_err(|_| MessengerError::ActorStopped("receiver"))?;
        self.followed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(notices)
    }

    /// Has the receiver apply the inbox (waiting up to `wait` for something).
    pub(crate) async fn catch_up(&self, wait: Duration) -> Result<Vec<Line>, MessengerError> {
        let receiver = ask(&self.supervisor, "client supervisor", |reply| {
            SupervisorMsg::Receiver { reply }
        })
        .await?;
        ask(&receiver, "receiver", |reply| ReceiverMsg::Pull {
            wait,
            reply,
        })
        .await
    }

    /// Creates a group with this device as its only member.
    pub async fn create_group(
        &mut self,
        name: &str,
        suite: Suite,
    ) -> Result<Vec<u8>, MessengerError> {
        let name = name.to_string();
        ask(&self.supervisor, "client supervisor", |reply| {
            SupervisorMsg::Create { name, suite, reply }
        })
        .await
    }

    /// Adds every device of each user; returns the group's new epoch.
    pub async fn invite(
        &mut self,
        name: &str,
        usernames: &[String],
    ) -> Result<u64, MessengerError> {
        self.pull(Duration::ZERO).await?;
        self.invite_now(name, usernames).await
    }

    /// [`Self::invite`] without catching up first.
    pub(crate) async fn invite_now(
        &mut self,
        name: &str,
        usernames: &[String],
    ) -> Result<u64, MessengerError> {
        let targets = usernames
            .iter()
            .map(|u| (u.clone(), KeyPackageTarget::Username(u.clone())))
            .collect();
        self.add_now(name, targets).await
    }

    /// Adds these devices of this account to the group (without catching up).
    pub(crate) async fn add_own_devices_now(
        &mut self,
        name: &str,
        devices: &[[u8; 32]],
    ) -> Result<u64, MessengerError> {
        let me = self.username().to_string();
        let targets = devices
            .iter()
            .map(|d| (me.clone(), KeyPackageTarget::Device(IdentityKey(*d))))
            .collect();
        self.add_now(name, targets).await
    }

    async fn add_now(
        &mut self,
        name: &str,
        targets: Vec<(String, KeyPackageTarget)>,
    ) -> Result<u64, MessengerError> {
        let group = self.group_actor(name).await?;
        let (key_packages, added) = ask(&group, "group actor", |reply| GroupMsg::PrepareInvite {
            targets,
            reply,
        })
        .await?;
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
                    &group,
                    Change::Add {
                        key_packages,
                        added,
                    },
                )
                .await
            {
                Ok(e) => {
                    epoch = e.or(epoch);
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
        let group = self.group_actor(name).await?;
        let epoch = self
            .commit_change(&group, Change::RemoveUsers(usernames.to_vec()))
            .await?;
        Ok(epoch.unwrap_or_default())
    }

    /// Removes `device` (one of this account's, just removed from it at the
    /// node) from every group of this profile it is in; returns those groups'
    /// names. Groups this device is not in are left to their members (whose
    /// sends report the device gone). No pull first (the pull's own device
    /// check would remove it unnamed): a commit made behind the group is refused
    /// as stale and redone after catching up.
    pub async fn remove_device_from_groups(
        &mut self,
        device: [u8; 32],
    ) -> Result<Vec<String>, MessengerError> {
        let mut removed = Vec::new();
        for (name, _) in self.profile.state.groups()? {
            let group = self.group_actor(&name).await?;
            if let Some(_epoch) = self
                .commit_change(&group, Change::RemoveDevices(vec![device]))
                .await?
            {
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// Refreshes this device's keys in the group; returns the new epoch.
    pub async fn update(&mut self, name: &str) -> Result<u64, MessengerError> {
        self.pull(Duration::ZERO).await?;
        let group = self.group_actor(name).await?;
        let epoch = self.commit_change(&group, Change::Update).await?;
        Ok(epoch.unwrap_or_default())
    }

    /// Asks the group to remove this device (another member commits it) and
    /// forgets the group here.
    pub async fn leave(&mut self, name: &str) -> Result<(), MessengerError> {
        self.pull(Duration::ZERO).await?;
        let group = self.group_actor(name).await?;
        let crash_at = self.crash_at.take();
        ask(&group, "group actor", |reply| GroupMsg::Leave {
            crash_at,
            reply,
        })
        .await
    }

    /// Sends `text` to every other member device (one upload); reports who got
    /// it and whose inbox did not take it.
    pub async fn send(&mut self, name: &str, text: &str) -> Result<SendReport, MessengerError> {
        let place = Messenger::queue(&self.profile.state, name, text)?;
        // In order: what waited before goes first.
        self.flush_outbox_until(Some(place)).await?;
        self.sent_reports
            .remove(&place)
            .ok_or(MessengerError::ActorStopped("outbox"))
    }

    /// Writes a message for group `name` to the outbox of the profile in
    /// `state` (with a fresh id), without sending it; its place. What `send`
    /// does first, and what a command does alone when the node is down.
    pub fn queue(state: &ClientState, name: &str, text: &str) -> Result<u64, MessengerError> {
        crate::core::check_message_text(text)?;
        let gid = state
            .group_id(name)?
            .ok_or_else(|| MessengerError::UnknownGroup(name.to_string()))?;
        let held = state.outbox_waiting()?;
        if held >= crate::state::outbox::MAX_OUTBOX {
            return Err(MessengerError::OutboxFull(held));
        }
        let id = crate::app_content::MessageId::random();
        let mut place = 0;
        state.write(|t| {
            place = t.queue_outgoing(&gid, id, crate::actors::now_ms(), text)?;
            Ok(())
        })?;
        Ok(place)
    }

    /// Sends what waits in the outbox, oldest first, stopping at the first
    /// connection loss (the rest waits for the next try). A message the node
    /// refuses stays in the outbox, failed; the others go on. Returns how many
    /// went out.
    pub async fn flush_outbox(&mut self) -> Result<usize, MessengerError> {
        self.flush_outbox_until(None).await
    }

    /// [`Messenger::flush_outbox`] up to the message at `last` (the one a
    /// send just queued: its report is kept in `sent_reports`, its failure is
    /// the call's).
    async fn flush_outbox_until(&mut self, last: Option<u64>) -> Result<usize, MessengerError> {
        let waiting: Vec<_> = self
            .profile
            .state
            .outbox()?
            .into_iter()
            .filter(|o| o.failed.is_none() && last.is_none_or(|l| o.place <= l))
            .collect();
        if waiting.is_empty() {
            return Ok(0);
        }
        self.pull(Duration::ZERO).await?;
        let mut sent = 0;
        for o in waiting {
            let name = match self.profile.state.group_name(&o.group_id)? {
                Some(name) => name,
                None => {
                    // The group is gone (left, removed): nothing to send it to.
                    self.profile
                        .state
                        .write(|t| t.send_failed(o.place, "the group is gone"))?;
                    continue;
                }
            };
            let mine = Some(o.place) == last;
            match self.deliver(&name, &o).await {
                Ok(report) => {
                    sent += 1;
                    if mine {
                        self.sent_reports.insert(o.place, report);
                    }
                }
                Err(e) if Self::is_connection_loss(&e) => return Err(e),
                Err(e) => {
                    self.profile
                        .state
                        .write(|t| t.send_failed(o.place, &e.to_string()))?;
                    if mine {
                        return Err(e);
                    }
                }
            }
        }
        Ok(sent)
    }

    /// Sends one message of the outbox.
    async fn deliver(
        &mut self,
        name: &str,
        o: &crate::state::outbox::Outgoing,
    ) -> Result<SendReport, MessengerError> {
        let group = self.group_actor(name).await?;
        let lose_answer = std::mem::take(&mut self.lose_next_send_answer);
        let report = ask(&group, "group actor", |reply| GroupMsg::Send {
            place: o.place,
            id: o.id,
            text: o.text.clone(),
            lose_answer,
            reply,
        })
        .await?;
        // Devices removed from their accounts are still members until someone
        // commits their removal: any member may, and the one who noticed does.
        // The message is sent either way; a failure here waits for the next send.
        if !report.gone.is_empty() {
            let gone = Change::RemoveDevices(report.gone.clone());
            if let Err(e) = self.commit_change(&group, gone).await {
                tracing::info!(group = %name, error = %e, "removed devices not removed yet");
            }
        }
        Ok(report)
    }

    /// Offers `change` to the node's epoch fence through the group's actor; when
    /// another commit won the epoch, catches up on the inbox (the group actor
    /// applies the winner) and asks again. Returns the new epoch, or `None` when
    /// there turned out to be nothing to commit.
    async fn commit_change(
        &mut self,
        group: &ActorRef<GroupMsg>,
        change: Change,
    ) -> Result<Option<u64>, MessengerError> {
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let crash_at = self.crash_at;
            let change = change.clone();
            let outcome = ask(group, "group actor", |reply| GroupMsg::Commit {
                change,
                crash_at,
                reply,
            })
            .await?;
            match outcome {
                CommitOutcome::Applied(epoch) => return Ok(Some(epoch)),
                CommitOutcome::Nothing => return Ok(None),
                CommitOutcome::Interrupted => {
                    self.crash_at = None;
                    return Ok(None);
                }
                CommitOutcome::Stale => {
                    self.catch_up(Duration::ZERO).await?;
                }
            }
        }
        Err(MessengerError::CommitRetriesExhausted(MAX_COMMIT_ATTEMPTS))
    }

    /// Applies everything waiting in the inbox, in seq order, acking as it goes;
    /// with `wait`, first waits up to that long for something to arrive. Returns
    /// the lines produced (also kept in the profile until shown). Then settles
    /// what a full pull decides: a pending commit with no receipt was never
    /// accepted (discarded); proposals someone made (a leave) are committed.
    pub async fn pull(&mut self, wait: Duration) -> Result<Vec<Line>, MessengerError> {
        let lines = self.catch_up(wait).await?;
        for (_, gid) in self.profile.state.groups()? {
            let group = ask(&self.supervisor, "client supervisor", |reply| {
                SupervisorMsg::Group { gid, reply }
            })
            .await?;
            let proposals = ask(&group, "group actor", |reply| GroupMsg::Sweep { reply }).await?;
            // The fence picks one committer; the proposal is in the profile, so
            // this also happens after a restart.
            if proposals {
                match Box::pin(self.commit_change(&group, Change::PendingProposals)).await {
                    Ok(_) => {}
                    // Unreachable node: nothing to count, the next pull retries.
                    Err(e) if Self::is_connection_loss(&e) => return Err(e),
                    // A refusal must not fail every pull (and with it every
                    // other group): counted, and dropped after a few.
                    Err(e) => {
                        let why = e.to_string();
                        ask(&group, "group actor", |reply| GroupMsg::ProposalsFailed {
                            why,
                            reply,
                        })
                        .await?;
                    }
                }
            }
        }
        self.sync_devices().await?;
        self.rejoin_groups().await?;
        Ok(lines)
    }

    /// Every group of this profile.
    pub async fn groups(&self) -> Result<Vec<GroupSummary>, MessengerError> {
        let mut out = Vec::new();
        for (name, _) in self.profile.state.groups()? {
            out.push(self.group(&name).await?);
        }
        Ok(out)
    }

    /// One group, by name.
    pub async fn group(&self, name: &str) -> Result<GroupSummary, MessengerError> {
        let group = self.group_actor(name).await?;
        ask(&group, "group actor", |reply| GroupMsg::Summary { reply }).await
    }

    /// Every device of this profile's account.
    pub async fn devices(&self) -> Result<Vec<IdentityKey>, MessengerError> {
        Ok(ask_session(&self.session.get(), |reply| SessionMsg::Devices { reply }).await?)
    }

    /// What the node knows of this profile's session: account, device count,
    /// when the session ends.
    pub async fn whoami(&self) -> Result<crate::rpc::WhoAmI, MessengerError> {
        Ok(ask_session(&self.session.get(), |reply| SessionMsg::Whoami { reply }).await?)
    }

    /// Tops up this device's one-time KeyPackages at the node when few are
    /// left (what a one-shot `whoami` or `login` does; a resident client does
    /// it on every connection); how many it published.
    pub async fn refill_key_packages(&self) -> Result<usize, MessengerError> {
        let session = self.session.get();
        let remaining =
            ask_session(&session, |reply| SessionMsg::KeyPackageStatus { reply }).await?;
        let count = crate::key_packages::refill_count(remaining);
        if count > 0 {
            self.publish_key_packages(count, false).await?;
        }
        Ok(count)
    }

    /// Publishes `count` one-time KeyPackages (with `rotate`, also new
    /// last-resort ones and the post-quantum set); how many one-time packages
    /// the node then holds.
    pub async fn publish_key_packages(
        &self,
        count: usize,
        rotate: bool,
    ) -> Result<u64, MessengerError> {
        crate::key_packages::check_count(count)?;
        let session = self.session.get();
        let profile = self.profile.clone();
        // Making a hundred packages is CPU work: off the caller's task.
        let batch = tokio::task::spawn_blocking(move || {
            crate::key_packages::KeyPackageBatch::generate(
                &profile.state,
                &profile.identity,
                count,
                rotate,
            )
        })
        .await
        .map_err(|e| MessengerError::ActorFailed(format!("KeyPackage generation: {e}")))??;
        for call in batch.calls() {
            ask_session(&session, |reply| SessionMsg::UploadKeyPackages {
                call,
                reply,
            })
            .await?;
        }
        Ok(ask_session(&session, |reply| SessionMsg::KeyPackageStatus { reply }).await?)
    }

    /// Lines produced but not yet shown, oldest first.
    pub fn unread(&self) -> Result<Vec<(LineKey, ShownLine)>, MessengerError> {
        Ok(self.profile.state.unread()?)
    }

    /// Marks lines as shown.
    pub fn mark_shown(&self, keys: &[LineKey]) -> Result<(), MessengerError> {
        if keys.is_empty() {
            return Ok(());
        }
        Ok(self.profile.state.write(|t| {
            for k in keys {
                t.remove_line(*k)?;
            }
            Ok(())
        })?)
    }
}

impl Drop for Messenger {
    fn drop(&mut self) {
        if self.stopped.is_some() {
            // The session actor lives on a thread of its own: told directly, it
            // closes the connection even if this runtime is going down and the
            // supervisor never gets to stop it.
            self.session.get().stop(None);
            self.supervisor.stop(None);
        }
    }
}
