//! Finds or spawns the one actor that owns a key (an inbox, a group), restarts it
//! from the store after a panic, and lets idle ones retire without losing a message.
//!
//! The invariant: at most one live actor per key. Every message is sent under the
//! registry's lock and counted; the actor marks each one taken as it starts on it
//! ([`Membership::taken`]); an actor retires only under the same lock and only
//! when nothing counted is left in its mailbox, so nothing sent to it is dropped.
//! A failed actor is forgotten by the supervisor; the next message spawns a fresh
//! one, which reloads its state from the store.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use ractor::{Actor, ActorProcessingErr, ActorRef, Message, SupervisionEvent};
use tokio::sync::Mutex;

use crate::error::DeliveryError;

struct Entry<M> {
    actor: ActorRef<M>,
    /// Messages sent to the actor and not yet taken up by it.
    pending: Arc<AtomicU64>,
}

type ActorMap<K, M> = Arc<Mutex<HashMap<K, Entry<M>>>>;

struct Inner<K, M> {
    actors: ActorMap<K, M>,
    supervisor: ActorRef<()>,
    restarts: Arc<AtomicU64>,
    retirements: AtomicU64,
    capacity: Capacity<M>,
    /// Times the registry was at capacity when spawning (also picks where the
    /// next search for idle actors starts).
    pressure: AtomicU64,
}

/// How many actors may live at once, and the message that asks one to retire
/// if it can (sent outside the count, so an actor with nothing else pending may
/// leave).
pub struct Capacity<M> {
    /// Actors alive at once before spawns ask idle ones to retire.
    pub live: usize,
    /// Makes the message that asks an actor to retire if it can.
    pub retire: fn() -> M,
}

/// The registry of one kind of actor, keyed by `K`, taking messages `M`. Cheap to
/// clone.
pub struct Registry<K, M> {
    inner: Arc<Inner<K, M>>,
}

impl<K, M> Clone for Registry<K, M> {
    fn clone(&self) -> Self {
        Registry {
            inner: self.inner.clone(),
        }
    }
}

/// What a spawned actor keeps of its registry: its key, its message count, and
/// the way to ask to retire.
pub struct Membership<K, M> {
    key: K,
    registry: Weak<Inner<K, M>>,
    pending: Arc<AtomicU64>,
}

impl<K: Hash + Eq, M> Membership<K, M> {
    /// The key this actor owns.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Marks one message sent through the registry as taken up.
    pub fn taken(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// Leaves the registry if nothing sent to this actor (`id`) is unprocessed;
    /// the caller then stops. Returns whether it left.
    pub async fn try_retire(&self, id: ractor::ActorId) -> bool {
        let Some(inner) = self.registry.upgrade() else {
            return false;
        };
        let mut actors = inner.actors.lock().await;
        match actors.get(&self.key) {
            Some(e) if e.actor.get_id() == id && e.pending.load(Ordering::Acquire) == 0 => {
                actors.remove(&self.key);
                inner.retirements.fetch_add(1, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }
}

/// Forgets failed actors (and counts them).
struct Supervisor<K, M> {
    what: &'static str,
    _types: std::marker::PhantomData<fn() -> (K, M)>,
}

impl<K, M> Actor for Supervisor<K, M>
where
    K: Hash + Eq + Send + Sync + 'static,
    M: Message,
{
    type Msg = ();
    type State = (ActorMap<K, M>, Arc<AtomicU64>);
    type Arguments = (ActorMap<K, M>, Arc<AtomicU64>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        (actors, restarts): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // In-flight callers of the failed actor saw their reply ports dropped,
        // which they report as retryable.
        if let SupervisionEvent::ActorFailed(cell, reason) = event {
            tracing::warn!(actor = %cell.get_id(), %reason, "{} actor failed; it restarts from the store on next use", self.what);
            restarts.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::telemetry::ACTOR_RESTARTS_TOTAL).increment(1);
            actors
                .lock()
                .await
                .retain(|_, e| e.actor.get_id() != cell.get_id());
        }
        Ok(())
    }
}

impl<K, M> Registry<K, M>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    M: Message,
{
    /// Starts an empty registry and its supervisor; `what` names the actors in
    /// logs. Past `capacity.live` actors, each spawn asks idle ones to retire.
    pub async fn start(
        what: &'static str,
        capacity: Capacity<M>,
    ) -> Result<Registry<K, M>, ractor::SpawnErr> {
        let actors: ActorMap<K, M> = Arc::default();
        let restarts = Arc::new(AtomicU64::new(0));
        let supervisor = Supervisor {
            what,
            _types: std::marker::PhantomData,
        };
        let (supervisor, _) =
            Actor::spawn(None, supervisor, (actors.clone(), restarts.clone())).await?;
        Ok(Registry {
            inner: Arc::new(Inner {
                actors,
                supervisor,
                restarts,
                retirements: AtomicU64::new(0),
                capacity,
                pressure: AtomicU64::new(0),
            }),
        })
    }

    /// How often a spawn found the registry at capacity.
    pub fn pressure(&self) -> u64 {
        self.inner.pressure.load(Ordering::Relaxed)
    }

    /// At capacity: asks some actors with nothing pending to retire (they do
    /// unless they hold something only memory has, like a long-poll waiter). A
    /// share of the live actors per call, searched from a moving start, so the
    /// same busy ones are not asked over and over.
    fn relieve_pressure(&self, actors: &HashMap<K, Entry<M>>) {
        let round = self.inner.pressure.fetch_add(1, Ordering::Relaxed);
        let live = actors.len();
        if live == 0 {
            return;
        }
        let start = (round as usize).wrapping_mul(7919) % live;
        let wanted = (live / 64).max(2);
        actors
            .values()
            .skip(start)
            .chain(actors.values().take(start))
            .filter(|e| e.pending.load(Ordering::Acquire) == 0)
            .take(wanted)
            .for_each(|e| {
                let _ = e.actor.send_message((self.inner.capacity.retire)());
            });
    }

    /// How many actors failed and were replaced.
    pub fn restarts(&self) -> u64 {
        self.inner.restarts.load(Ordering::Relaxed)
    }

    /// How many actors stopped for being idle.
    pub fn retirements(&self) -> u64 {
        self.inner.retirements.load(Ordering::Relaxed)
    }

    /// How many actors are alive.
    pub async fn live_actors(&self) -> usize {
        self.inner.actors.lock().await.len()
    }

    /// Delivers `msg` (counted) to the actor of `key`, spawning `actor` with the
    /// arguments `args` makes when there is none.
    pub async fn send<A>(
        &self,
        key: &K,
        msg: M,
        actor: A,
        args: impl Fn(Membership<K, M>) -> A::Arguments,
    ) -> Result<(), DeliveryError>
    where
        A: Actor<Msg = M> + Clone,
    {
        let mut actors = self.inner.actors.lock().await;
        let mut msg = msg;
        // At most two tries: an actor that died between its failure and the
        // supervisor's cleanup is replaced once.
        for _ in 0..2 {
            let entry = match actors.get(key) {
                Some(e) => e,
                None => {
                    if actors.len() >= self.inner.capacity.live {
                        self.relieve_pressure(&actors);
                    }
                    let pending = Arc::new(AtomicU64::new(0));
                    let membership = Membership {
                        key: key.clone(),
                        registry: Arc::downgrade(&self.inner),
                        pending: pending.clone(),
                    };
                    let (actor, _) = Actor::spawn_linked(
                        None,
                        actor.clone(),
                        args(membership),
                        self.inner.supervisor.get_cell(),
                    )
                    .await
                    .map_err(|_| DeliveryError::Restarting)?;
                    actors
                        .entry(key.clone())
                        .or_insert(Entry { actor, pending })
                }
            };
            entry.pending.fetch_add(1, Ordering::AcqRel);
            match entry.actor.send_message(msg) {
                Ok(()) => return Ok(()),
                Err(ractor::MessagingErr::SendErr(m)) => {
                    entry.pending.fetch_sub(1, Ordering::AcqRel);
                    actors.remove(key);
                    msg = m;
                }
                Err(_) => return Err(DeliveryError::Restarting),
            }
        }
        Err(DeliveryError::Restarting)
    }

    /// Delivers `msg` (not counted as a request) to the actor of `key` if one
    /// is alive; returns whether one was. Nothing is spawned.
    pub async fn send_if_live(&self, key: &K, msg: M) -> bool {
        let actors = self.inner.actors.lock().await;
        actors
            .get(key)
            .is_some_and(|e| e.actor.send_message(msg).is_ok())
    }

    /// Stops every actor and the supervisor (node shutdown).
    pub async fn stop(&self) {
        for (_, e) in self.inner.actors.lock().await.drain() {
            e.actor.stop(Some("node shutdown".into()));
        }
        self.inner.supervisor.stop(Some("node shutdown".into()));
    }
}
