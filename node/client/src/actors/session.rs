//! The session actor: the one QUIC connection of the client and its Cap'n Proto
//! session. capnp-rpc is `!Send`, so it is a thread-local actor on a thread of its
//! own; everything else talks to it through its `ActorRef` (which is `Send`).
//!
//! Requests run concurrently on that thread (a long-poll never holds up a send).
//! A request whose connection broke fails with a transport error (it may or may
//! not have reached the node: callers decide what that means); the next request
//! reconnects and resumes the profile's session, with backoff, for up to the
//! address's `reconnect_patience`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quicnprotochat_crypto::mls::Suite;
use quicnprotochat_wire::{Envelope, ErrorCode, IdentityKey};
use ractor::thread_local::ThreadLocalActor;
use ractor::{ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::broadcast;

use super::{NodeAddress, Profile};
use crate::rpc::{CommitBodies, SendOutcome, WhoAmI};
use crate::{
    ClaimedKeyPackage, ClientError, DirectoryEntry, KeyDirectory, KeyPackageTarget, NodeConnection,
    SessionHandle,
};

/// Longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// First wait after a failed reconnection attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// What happened to the connection, for whoever shows it to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// The connection broke.
    Lost,
    /// The next attempt comes after `delay`.
    Retrying {
        /// How long until the next try.
        delay: Duration,
    },
    /// Connected and resumed again.
    Reconnected,
}

type Reply<T> = RpcReplyPort<Result<T, ClientError>>;

pub(crate) enum SessionMsg {
    /// Connects (once, no retries) unless connected; the first thing a client does.
    Connect {
        reply: Reply<()>,
    },
    Fetch {
        after: u64,
        limit: u32,
        /// Zero: answer at once; otherwise long-poll up to this long.
        wait: Duration,
        reply: Reply<Vec<Envelope>>,
    },
    Ack {
        up_to: u64,
        reply: Reply<()>,
    },
    /// How many one-time KeyPackages the node has left of this device's.
    KeyPackageStatus {
        reply: Reply<u64>,
    },
    /// Publishes one call's worth of KeyPackages.
    UploadKeyPackages {
        call: crate::key_packages::UploadCall,
        reply: Reply<()>,
    },
    /// Has the node push the inbox after `after` to `to` (see
    /// [`SessionHandle::subscribe`]).
    Subscribe {
        after: u64,
        to: tokio::sync::mpsc::Sender<crate::Pushed>,
        reply: Reply<()>,
    },
    SendGroup {
        group_id: Vec<u8>,
        body: Vec<u8>,
        recipients: Vec<(IdentityKey, Vec<u8>)>,
        reply: Reply<Vec<SendOutcome>>,
    },
    CommitGroup {
        group_id: Vec<u8>,
        epoch: u64,
        members: Vec<Vec<u8>>,
        mls_commit: Vec<u8>,
        bodies: CommitBodies,
        reply: Reply<u32>,
    },
    FetchKeyPackages {
        target: KeyPackageTarget,
        suite: Suite,
        reply: Reply<Vec<ClaimedKeyPackage>>,
    },
    /// Every device of the account.
    Devices {
        reply: Reply<Vec<IdentityKey>>,
    },
    /// What the node knows of this session (account, devices, expiry).
    Whoami {
        reply: Reply<WhoAmI>,
    },
    /// The groups the account's devices are in.
    AccountGroups {
        reply: Reply<Vec<Vec<u8>>>,
    },
    /// A group's latest GroupInfo and its members' directory entries.
    GroupInfo {
        group_id: Vec<u8>,
        reply: Reply<(Vec<u8>, Vec<DirectoryEntry>)>,
    },
    /// The directory entries of those of `keys` in the group now.
    GroupMembers {
        group_id: Vec<u8>,
        keys: Vec<[u8; 32]>,
        reply: Reply<Vec<DirectoryEntry>>,
    },
    /// A request saw connection `generation` break.
    Lost {
        generation: u64,
    },
}

pub(crate) struct SessionArgs {
    pub address: NodeAddress,
    pub profile: Arc<Profile>,
    pub events: broadcast::Sender<ConnectionEvent>,
}

struct Live {
    conn: NodeConnection,
    session: SessionHandle,
    directory: KeyDirectory,
}

pub(crate) struct SessionState {
    address: NodeAddress,
    profile: Arc<Profile>,
    events: broadcast::Sender<ConnectionEvent>,
    live: Option<Live>,
    generation: u64,
    ever_connected: bool,
    /// Fail-fast mode: when the next attempt is due, and the wait after it.
    next_try: Option<Instant>,
    backoff: Duration,
}

#[derive(Default)]
pub(crate) struct SessionActor;

/// Whether `e` means the connection is gone (a new one may work), rather than a
/// refusal or a local failure.
pub(crate) fn is_connection_loss(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Transport(_) | ClientError::Unreachable { .. }
    )
}

/// Connects and resumes the profile's remembered session.
async fn connect_once(address: &NodeAddress, profile: &Profile) -> Result<Live, ClientError> {
    let login = profile
        .state
        .saved_login()
        .map_err(|e| ClientError::Session(e.to_string()))?
        .filter(|l| !l.token.is_empty())
        .ok_or_else(|| ClientError::Session("not logged in on this profile".into()))?;
    let conn = match &address.endpoint {
        Some(endpoint) => NodeConnection::connect_via(endpoint, address.addr).await?,
        None => NodeConnection::connect(address.addr, address.trust.clone()).await?,
    };
    let session = match conn
        .resume(&login.token, address.auth_token.as_deref())
        .await
    {
        Ok((session, _)) => session,
        Err(e) if e.code() == Some(ErrorCode::Unauthorized) => {
            return Err(ClientError::Session(format!(
                "the session of {} has ended: log in again",
                login.username
            )));
        }
        Err(e) => return Err(e),
    };
    let directory = conn.key_directory();
    Ok(Live {
        conn,
        session,
        directory,
    })
}

impl SessionState {
    /// Makes sure a connection is up: the first one is tried once; after a loss,
    /// attempts repeat with backoff for up to the patience.
    async fn ensure_connected(&mut self) -> Result<(), ClientError> {
        if self.live.is_some() {
            return Ok(());
        }
        if let Some(first_backoff) = self.address.fail_fast {
            return self.try_once(first_backoff).await;
        }
        let patience = if self.ever_connected {
            self.address.reconnect_patience
        } else {
            Duration::ZERO
        };
        let deadline = Instant::now() + patience;
        let mut delay = FIRST_BACKOFF;
        loop {
            match self.attempt().await {
                Ok(live) => {
                    self.live = Some(live);
                    self.generation += 1;
                    if self.ever_connected {
                        let _ = self.events.send(ConnectionEvent::Reconnected);
                    }
                    self.ever_connected = true;
                    return Ok(());
                }
                Err(e) if is_connection_loss(&e) && Instant::now() + delay <= deadline => {
                    let _ = self.events.send(ConnectionEvent::Retrying { delay });
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One connection attempt, bounded by `connect_within`.
    async fn attempt(&self) -> Result<Live, ClientError> {
        let connect = connect_once(&self.address, &self.profile);
        match self.address.connect_within {
            None => connect.await,
            Some(limit) => tokio::time::timeout(limit, connect)
                .await
                .unwrap_or_else(|_| {
                    Err(ClientError::Unreachable {
                        addr: self.address.addr,
                        reason: format!("no answer within {} ms", limit.as_millis()),
                    })
                }),
        }
    }

    /// Fail-fast mode: one attempt if one is due, none otherwise.
    async fn try_once(&mut self, first_backoff: Duration) -> Result<(), ClientError> {
        let now = Instant::now();
        if let Some(at) = self.next_try
            && now < at
        {
            return Err(ClientError::Unreachable {
                addr: self.address.addr,
                reason: format!(
                    "the node is unreachable; the next try is in {} s",
                    (at - now).as_secs_f64().ceil() as u64
                ),
            });
        }
        match self.attempt().await {
            Ok(live) => {
                self.live = Some(live);
                self.generation += 1;
                // Told even for the first connection: a resident client
                // starts without one and shows when it has one.
                let _ = self.events.send(ConnectionEvent::Reconnected);
                self.ever_connected = true;
                self.next_try = None;
                self.backoff = first_backoff;
                Ok(())
            }
            Err(e) if is_connection_loss(&e) => {
                let delay = match self.next_try {
                    None => first_backoff,
                    Some(_) => self.backoff,
                };
                self.next_try = Some(Instant::now() + delay);
                self.backoff = (delay * 2).min(MAX_BACKOFF.max(first_backoff));
                let _ = self.events.send(ConnectionEvent::Retrying { delay });
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `call` on the live session, concurrently with other requests; a
    /// connection loss it sees is reported back to the actor.
    async fn run<T, F, Fut>(&mut self, myself: &ActorRef<SessionMsg>, reply: Reply<T>, call: F)
    where
        T: Send + 'static,
        F: FnOnce(SessionHandle, KeyDirectory) -> Fut,
        Fut: Future<Output = Result<T, ClientError>> + 'static,
    {
        if let Err(e) = self.ensure_connected().await {
            let _ = reply.send(Err(e));
            return;
        }
        let live = self.live.as_ref().expect("connected above");
        let fut = call(live.session.clone(), live.directory.clone());
        let generation = self.generation;
        let myself = myself.clone();
        tokio::task::spawn_local(async move {
            let result = fut.await;
            if matches!(&result, Err(e) if is_connection_loss(e)) {
                let _ = myself.cast(SessionMsg::Lost { generation });
            }
            let _ = reply.send(result);
        });
    }
}

impl ThreadLocalActor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        Ok(SessionState {
            address: args.address,
            profile: args.profile,
            events: args.events,
            live: None,
            generation: 0,
            ever_connected: false,
            next_try: None,
            backoff: FIRST_BACKOFF,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        // A clean close, so the node ends the connection now rather than at its
        // idle timeout.
        if let Some(live) = state.live.take() {
            live.conn.close().await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Connect { reply } => {
                let _ = reply.send(state.ensure_connected().await);
            }
            SessionMsg::Fetch {
                after,
                limit,
                wait,
                reply,
            } => {
                state
                    .run(&myself, reply, move |s, _| async move {
                        if wait.is_zero() {
                            s.fetch(after, limit).await
                        } else {
                            s.fetch_wait(after, limit, wait).await
                        }
                    })
                    .await
            }
            SessionMsg::Ack { up_to, reply } => {
                state
                    .run(
                        &myself,
                        reply,
                        move |s, _| async move { s.ack(up_to).await },
                    )
                    .await
            }
            SessionMsg::KeyPackageStatus { reply } => {
                state
                    .run(&myself, reply, move |s, _| async move {
                        Ok(s.key_package_status().await?.0)
                    })
                    .await
            }
            SessionMsg::UploadKeyPackages { call, reply } => {
                state
                    .run(&myself, reply, move |s, _| async move {
                        s.upload_key_packages(&call.one_time, &call.last_resort, &call.hybrid)
                            .await
                    })
                    .await
            }
            SessionMsg::Subscribe { after, to, reply } => {
                state
                    .run(&myself, reply, move |s, _| async move {
                        s.subscribe(after, to).await
                    })
                    .await
            }
            SessionMsg::SendGroup {
                group_id,
                body,
                recipients,
                reply,
            } => {
                state
                    .run(&myself, reply, move |s, _| async move {
                        s.send_group(&group_id, &body, &recipients).await
                    })
                    .await
            }
            SessionMsg::CommitGroup {
                group_id,
                epoch,
                members,
                mls_commit,
                bodies,
                reply,
            } => {
                state
                    .run(&myself, reply, move |s, _| async move {
                        s.commit_group(&group_id, epoch, &members, &mls_commit, &bodies)
                            .await
                    })
                    .await
            }
            SessionMsg::FetchKeyPackages {
                target,
                suite,
                reply,
            } => {
                state
                    .run(&myself, reply, move |_, d| async move {
                        d.fetch_key_packages(&target, suite).await
                    })
                    .await
            }
            SessionMsg::Devices { reply } => {
                state
                    .run(&myself, reply, move |s, _| async move { s.devices().await })
                    .await
            }
            SessionMsg::Whoami { reply } => {
                state
                    .run(&myself, reply, move |s, _| async move { s.whoami().await })
                    .await
            }
            SessionMsg::AccountGroups { reply } => {
                state
                    .run(&myself, reply, move |s, _| async move {
                        s.account_groups().await
                    })
                    .await
            }
            SessionMsg::GroupInfo { group_id, reply } => {
                state
                    .run(&myself, reply, move |s, _| async move {
                        s.group_info(&group_id).await
                    })
                    .await
            }
            SessionMsg::GroupMembers {
                group_id,
                keys,
                reply,
            } => {
                state
                    .run(&myself, reply, move |s, _| async move {
                        s.group_members(&group_id, &keys).await
                    })
                    .await
            }
            SessionMsg::Lost { generation } => {
                if generation == state.generation && state.live.take().is_some() {
                    let _ = state.events.send(ConnectionEvent::Lost);
                }
            }
        }
        Ok(())
    }
}
