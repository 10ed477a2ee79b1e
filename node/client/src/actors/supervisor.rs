//! The client supervisor: starts the session and receiver actors, keeps the
//! registry of group actors (one per group of the profile, started on first use)
//! and restarts what fails. A restarted actor reloads everything from the client
//! store: nothing it acknowledged lived only in its memory.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use quicnprotochat_crypto::mls::Suite;
use ractor::thread_local::{ThreadLocalActor, ThreadLocalActorSpawner};
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SupervisionEvent,
};
use tokio::sync::broadcast;

use super::group::{GroupActor, GroupArgs, GroupMsg};
use super::receiver::{ReceiverActor, ReceiverArgs, ReceiverMsg};
use super::session::{ConnectionEvent, SessionActor, SessionArgs, SessionMsg};
use super::{NodeAddress, Profile};
use crate::messenger::terms::{MessengerError, validate_group_name};

/// The current session actor, shared by everyone who sends it requests; the
/// supervisor puts a fresh one in when it restarts it.
#[derive(Clone)]
pub(crate) struct SessionSlot(Arc<RwLock<ActorRef<SessionMsg>>>);

impl SessionSlot {
    fn new(actor: ActorRef<SessionMsg>) -> SessionSlot {
        SessionSlot(Arc::new(RwLock::new(actor)))
    }

    pub(crate) fn get(&self) -> ActorRef<SessionMsg> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, actor: ActorRef<SessionMsg>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = actor;
    }
}

type Reply<T> = RpcReplyPort<Result<T, MessengerError>>;

pub(crate) enum SupervisorMsg {
    /// The actor of a group of this profile (`UnknownGroup` if it has none).
    Group {
        gid: Vec<u8>,
        reply: Reply<ActorRef<GroupMsg>>,
    },
    /// Creates a group with this device as its only member.
    Create {
        name: String,
        suite: Suite,
        reply: Reply<Vec<u8>>,
    },
    /// The receiver (for pulls).
    Receiver { reply: Reply<ActorRef<ReceiverMsg>> },
    /// How many group actors are running, and how many have failed so far.
    LiveGroups { reply: Reply<(usize, u64)> },
}

pub(crate) struct SupervisorArgs {
    pub profile: Arc<Profile>,
    pub address: NodeAddress,
    pub events: broadcast::Sender<ConnectionEvent>,
    pub spawner: ThreadLocalActorSpawner,
    /// Filled with the session actor once started.
    pub session: tokio::sync::oneshot::Sender<SessionSlot>,
}

pub(crate) struct SupervisorState {
    profile: Arc<Profile>,
    address: NodeAddress,
    events: broadcast::Sender<ConnectionEvent>,
    spawner: ThreadLocalActorSpawner,
    session: SessionSlot,
    receiver: ActorRef<ReceiverMsg>,
    groups: HashMap<Vec<u8>, ActorRef<GroupMsg>>,
    /// Group actors that failed (each is restarted on next use).
    group_restarts: u64,
}

#[derive(Default)]
pub(crate) struct ClientSupervisor;

async fn spawn_session(
    myself: &ActorRef<SupervisorMsg>,
    profile: &Arc<Profile>,
    address: &NodeAddress,
    events: &broadcast::Sender<ConnectionEvent>,
    spawner: &ThreadLocalActorSpawner,
) -> Result<ActorRef<SessionMsg>, ActorProcessingErr> {
    let (actor, _) = SessionActor::spawn_linked(
        None,
        SessionArgs {
            address: address.clone(),
            profile: profile.clone(),
            events: events.clone(),
        },
        myself.get_cell(),
        spawner.clone(),
    )
    .await?;
    Ok(actor)
}

async fn spawn_receiver(
    myself: &ActorRef<SupervisorMsg>,
    profile: &Arc<Profile>,
    session: &SessionSlot,
) -> Result<ActorRef<ReceiverMsg>, ActorProcessingErr> {
    let (actor, _) = Actor::spawn_linked(
        None,
        ReceiverActor,
        ReceiverArgs {
            profile: profile.clone(),
            session: session.clone(),
            supervisor: myself.clone(),
        },
        myself.get_cell(),
    )
    .await?;
    Ok(actor)
}

impl SupervisorState {
    async fn group(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        gid: Vec<u8>,
    ) -> Result<ActorRef<GroupMsg>, MessengerError> {
        // A stopped actor whose exit the supervisor has not handled yet is
        // replaced now rather than handed out.
        if let Some(g) = self.groups.get(&gid)
            && matches!(
                g.get_status(),
                ActorStatus::Starting | ActorStatus::Running | ActorStatus::Upgrading
            )
        {
            return Ok(g.clone());
        }
        if self.profile.state.group_name(&gid)?.is_none() {
            return Err(MessengerError::UnknownGroup(super::short_hex(&gid)));
        }
        let (actor, _) = Actor::spawn_linked(
            None,
            GroupActor,
            GroupArgs {
                profile: self.profile.clone(),
                session: self.session.clone(),
                group_id: gid.clone(),
            },
            myself.get_cell(),
        )
        .await
        .map_err(|e| MessengerError::ActorFailed(e.to_string()))?;
        self.groups.insert(gid, actor.clone());
        Ok(actor)
    }

    fn create(&self, name: &str, suite: Suite) -> Result<Vec<u8>, MessengerError> {
        validate_group_name(name)?;
        if self.profile.state.group_id(name)?.is_some() {
            return Err(MessengerError::GroupExists(name.to_string()));
        }
        let member = self.profile.state.mls_member(&self.profile.identity)?;
        let group = member.create_group(suite, name)?;
        let gid = group.group_id();
        self.profile
            .state
            .transact(member.provider().storage_provider(), |t| {
                t.set_group(name, &gid)
            })?;
        Ok(gid)
    }

    fn forget(&mut self, who: &ActorCell) {
        self.groups.retain(|_, g| g.get_id() != who.get_id());
    }
}

impl Actor for ClientSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let session = spawn_session(
            &myself,
            &args.profile,
            &args.address,
            &args.events,
            &args.spawner,
        )
        .await?;
        let session = SessionSlot::new(session);
        let receiver = spawn_receiver(&myself, &args.profile, &session).await?;
        let _ = args.session.send(session.clone());
        Ok(SupervisorState {
            profile: args.profile,
            address: args.address,
            events: args.events,
            spawner: args.spawner,
            session,
            receiver,
            groups: HashMap::new(),
            group_restarts: 0,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Children first, the session last: it closes the connection cleanly.
        for (_, g) in state.groups.drain() {
            let _ = g.stop_and_wait(None, None).await;
        }
        let _ = state.receiver.stop_and_wait(None, None).await;
        let session = state.session.get();
        let _ = session.stop_and_wait(None, None).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Group { gid, reply } => {
                let _ = reply.send(state.group(&myself, gid).await);
            }
            SupervisorMsg::Create { name, suite, reply } => {
                let _ = reply.send(state.create(&name, suite));
            }
            SupervisorMsg::Receiver { reply } => {
                let _ = reply.send(Ok(state.receiver.clone()));
            }
            SupervisorMsg::LiveGroups { reply } => {
                let live = state
                    .groups
                    .values()
                    .filter(|g| g.get_status() == ActorStatus::Running)
                    .count();
                let _ = reply.send(Ok((live, state.group_restarts)));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (who, failed) = match &event {
            SupervisionEvent::ActorTerminated(who, _, _) => (who.clone(), None),
            SupervisionEvent::ActorFailed(who, e) => (who.clone(), Some(e.to_string())),
            _ => return Ok(()),
        };
        let session_id = state.session.get().get_id();
        if who.get_id() == state.receiver.get_id() {
            if let Some(e) = failed {
                tracing::warn!(error = %e, "client receiver failed; restarting it");
                state.receiver = spawn_receiver(&myself, &state.profile, &state.session).await?;
            }
        } else if who.get_id() == session_id {
            if let Some(e) = failed {
                tracing::warn!(error = %e, "client session actor failed; restarting it");
                let fresh = spawn_session(
                    &myself,
                    &state.profile,
                    &state.address,
                    &state.events,
                    &state.spawner,
                )
                .await?;
                state.session.replace(fresh);
            }
        } else {
            // A group actor stopped (group forgotten) or failed: the next message
            // for the group starts a fresh one from the store.
            if let Some(e) = failed {
                tracing::warn!(error = %e, "client group actor failed; restarted on next use");
                state.group_restarts += 1;
            }
            state.forget(&who);
        }
        Ok(())
    }
}
