//! Deterministic simulation of one node and several MLS clients in a single
//! seeded run, over the node's pure cores (the inbox state machine and the epoch
//! fence, as the actors use them) and real MLS (openmls) in the clients.
//!
//! Virtual time; a network that delays, drops and duplicates every request and
//! reply; a node that commits its writes in batches and crashes now and then,
//! losing what was not yet committed (and the answers it had not sent). Clients
//! resend what was not answered (the same bytes), long-poll their inbox, ack what
//! they applied, send messages and race to commit. After the faults stop, the
//! run drains and checks:
//! - per inbox, the client applies seqs 1, 2, 3… in order: no gap, no reorder;
//! - at least once: every message a client sent is shown to every other member,
//!   or reported to it as unreadable;
//! - nothing is shown twice (resends and duplicates included);
//! - one commit per epoch, and every member ends on the same epoch
//!   authenticator.
//!
//! The seed decides every choice; a failure prints it, and `QPC_SIM_SEED=N`
//! replays that run (MLS key material differs from run to run, the schedule
//! does not). `QPC_SIM_SEEDS=N` runs seeds 1..=N (CI: 8).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use openmls_memory_storage::MemoryStorage;
use quicnprotochat_actors::core::epoch::{EpochFence, FenceRefusal};
use quicnprotochat_actors::core::inbox::{AckPlan, InboxLimits, InboxMeta, InboxState};
use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::mls::{Group, GroupEvent, GroupMember, Suite};
use quicnprotochat_tests::Rng;

const MEMBERS: usize = 4;
const LIMITS: InboxLimits = InboxLimits {
    queue_limit: 10_000,
    max_payload: 1 << 20,
};
/// Virtual milliseconds of faults, then of calm to drain.
const FAULTY_MS: u64 = 6_000;
const CALM_MS: u64 = 30_000;
/// A client resends a call unanswered for this long.
const RESEND_MS: u64 = 400;

/// What an inbox holds.
#[derive(Clone, Debug)]
enum Stored {
    /// An MLS message of the group (application or commit), as its sender made it.
    Group(Vec<u8>),
    /// The node's receipt for the committer's own accepted commit.
    Receipt { epoch: u64 },
}

#[derive(Clone, Debug)]
enum Request {
    Send { body: Vec<u8> },
    Commit { epoch: u64, commit: Vec<u8> },
    Fetch { after: u64 },
    Ack { up_to: u64 },
}

#[derive(Clone, Debug)]
enum Answer {
    Sent,
    Committed,
    Stale,
    Fetched {
        after: u64,
        envelopes: Vec<(u64, Stored)>,
    },
    Acked,
}

#[derive(Clone, Debug)]
enum Event {
    /// A request of client `from`, call `call`, reaching the node.
    ToNode {
        from: usize,
        call: u64,
        request: Request,
    },
    /// An answer reaching client `to`.
    ToClient {
        to: usize,
        call: u64,
        answer: Answer,
    },
    /// The node commits its batch of writes and sends their answers.
    NodeCommits,
    /// The node dies and restarts.
    NodeCrashes,
    /// Client `who` does something.
    ClientTurn { who: usize },
}

/// A write of the open batch, lost if the node crashes before it commits.
enum Write {
    Append {
        inbox: usize,
        seq: u64,
        item: Stored,
    },
    Ack {
        inbox: usize,
        up_to: u64,
    },
    Fence {
        next: u64,
        members: BTreeSet<[u8; 32]>,
    },
}

/// The node: the inbox core and the epoch fence over a store that is only what
/// the last commit wrote.
struct Node {
    keys: Vec<[u8; 32]>,
    inboxes: Vec<InboxState>,
    fence: EpochFence,
    /// The store: per inbox its messages and marks; the fence.
    stored: Vec<BTreeMap<u64, Stored>>,
    meta: Vec<InboxMeta>,
    stored_fence: (Option<u64>, BTreeSet<[u8; 32]>),
    batch: Vec<Write>,
    /// Answers promised once the batch commits: (client, call, answer).
    waiting: Vec<(usize, u64, Answer)>,
    crashes: u64,
}

impl Node {
    fn new(keys: Vec<[u8; 32]>, fence: EpochFence) -> Node {
        let stored_fence = (fence.next(), fence.members().clone());
        Node {
            inboxes: keys
                .iter()
                .map(|_| InboxState::recovered(InboxMeta::default()))
                .collect(),
            stored: keys.iter().map(|_| BTreeMap::new()).collect(),
            meta: keys.iter().map(|_| InboxMeta::default()).collect(),
            keys,
            fence,
            stored_fence,
            batch: Vec::new(),
            waiting: Vec::new(),
            crashes: 0,
        }
    }

    fn append(&mut self, inbox: usize, item: Stored) {
        let seq = self.inboxes[inbox].admit(1, LIMITS).expect("room");
        self.batch.push(Write::Append { inbox, seq, item });
    }

    /// Handles one request; returns an answer to send at once, if any (reads
    /// and refusals), or keeps it until the batch commits.
    fn handle(&mut self, from: usize, call: u64, request: Request) -> Option<Answer> {
        match request {
            Request::Send { body } => {
                for m in (0..self.keys.len()).filter(|m| *m != from) {
                    self.append(m, Stored::Group(body.clone()));
                }
                self.waiting.push((from, call, Answer::Sent));
                None
            }
            Request::Commit { epoch, commit } => match self.fence.check(epoch, &self.keys[from]) {
                Err(FenceRefusal::Stale { .. }) => Some(Answer::Stale),
                Err(other) => panic!("the simulation makes no such commit: {other}"),
                Ok(()) => {
                    let members = self.fence.members().clone();
                    self.fence = self.fence.after_accepting(epoch, members.clone());
                    for m in (0..self.keys.len()).filter(|m| *m != from) {
                        self.append(m, Stored::Group(commit.clone()));
                    }
                    self.append(from, Stored::Receipt { epoch });
                    self.batch.push(Write::Fence {
                        next: epoch + 1,
                        members,
                    });
                    self.waiting.push((from, call, Answer::Committed));
                    None
                }
            },
            Request::Fetch { after } => {
                let from_seq = after.max(self.meta[from].acked) + 1;
                let envelopes = self.stored[from]
                    .range(from_seq..)
                    .take(8)
                    .map(|(s, i)| (*s, i.clone()))
                    .collect();
                Some(Answer::Fetched { after, envelopes })
            }
            Request::Ack { up_to } => {
                match self.inboxes[from].ack(up_to).expect("acks what it read") {
                    AckPlan::Done => Some(Answer::Acked),
                    AckPlan::Delete(_) | AckPlan::AfterInFlight => {
                        self.batch.push(Write::Ack { inbox: from, up_to });
                        self.waiting.push((from, call, Answer::Acked));
                        None
                    }
                }
            }
        }
    }

    /// Commits the batch: the store takes every write, and the answers go out.
    fn commit(&mut self) -> Vec<(usize, u64, Answer)> {
        for w in self.batch.drain(..) {
            match w {
                Write::Append { inbox, seq, item } => {
                    self.stored[inbox].insert(seq, item);
                    self.meta[inbox].last_seq = seq;
                    self.inboxes[inbox].mark_durable(seq);
                }
                Write::Ack { inbox, up_to } => {
                    let m = &mut self.meta[inbox];
                    m.acked = m.acked.max(up_to.min(m.last_seq));
                    let acked = m.acked;
                    self.stored[inbox].retain(|s, _| *s > acked);
                    self.inboxes[inbox].mark_ack_durable(up_to);
                }
                Write::Fence { next, members } => self.stored_fence = (Some(next), members),
            }
        }
        std::mem::take(&mut self.waiting)
    }

    /// Dies and restarts from the store: the open batch and its answers are lost.
    fn crash(&mut self) {
        self.crashes += 1;
        self.batch.clear();
        self.waiting.clear();
        self.inboxes = self
            .meta
            .iter()
            .map(|m| InboxState::recovered(*m))
            .collect();
        self.fence = EpochFence::recovered(self.stored_fence.0, self.stored_fence.1.clone());
    }
}

/// A client: an MLS member with its inbox cursor and its calls in flight.
struct Client {
    member: GroupMember<MemoryStorage>,
    group: Group,
    /// The highest seq of its inbox applied.
    cursor: u64,
    /// Calls not yet answered: call → (request, when to resend).
    calls: BTreeMap<u64, (Request, u64)>,
    /// The epoch of this client's commit the node has not yet settled.
    pending_commit: Option<u64>,
    fetching: bool,
    /// Digests of the group messages applied: a duplicate is ignored.
    applied: HashSet<[u8; 32]>,
    /// (sender, text) shown, in order.
    shown: Vec<(usize, String)>,
    /// Messages reported as unreadable (too old: their epoch's keys are gone).
    reported: usize,
    sent: Vec<String>,
}

struct Sim {
    rng: Rng,
    now: u64,
    /// (time, order) → event: the order breaks ties in arrival order.
    queue: BTreeMap<(u64, u64), Event>,
    order: u64,
    node: Node,
    clients: Vec<Client>,
    keys: Vec<[u8; 32]>,
    next_call: u64,
    faults: bool,
    /// Accepted commits: epoch → committer.
    accepted: BTreeMap<u64, usize>,
    violations: Vec<String>,
    stats: BTreeMap<&'static str, u64>,
}

impl Sim {
    fn at(&mut self, delay: u64, event: Event) {
        self.order += 1;
        self.queue.insert((self.now + delay, self.order), event);
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    /// Over the network: maybe lost, maybe twice, after a random delay.
    fn transmit(&mut self, event: Event) {
        if self.faults && self.rng.chance(10) {
            self.count("lost on the network");
            return;
        }
        let copies = if self.faults && self.rng.chance(10) {
            self.count("duplicated on the network");
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = 1 + self.rng.below(if self.faults { 120 } else { 20 });
            self.at(delay, event.clone());
        }
    }

    fn call(&mut self, who: usize, request: Request) {
        self.next_call += 1;
        let call = self.next_call;
        self.clients[who]
            .calls
            .insert(call, (request.clone(), self.now + RESEND_MS));
        self.transmit(Event::ToNode {
            from: who,
            call,
            request,
        });
    }

    fn step(&mut self) -> bool {
        let Some(((time, _), event)) = self.queue.pop_first() else {
            return false;
        };
        self.now = time;
        match event {
            Event::ToNode {
                from,
                call,
                request,
            } => {
                if let Some(answer) = self.node.handle(from, call, request) {
                    self.transmit(Event::ToClient {
                        to: from,
                        call,
                        answer,
                    });
                }
            }
            Event::NodeCommits => {
                for (to, call, answer) in self.node.commit() {
                    self.transmit(Event::ToClient { to, call, answer });
                }
                let next = 5 + self.rng.below(10);
                self.at(next, Event::NodeCommits);
            }
            Event::NodeCrashes => {
                if self.faults {
                    self.node.crash();
                    let next = 500 + self.rng.below(1500);
                    self.at(next, Event::NodeCrashes);
                }
            }
            Event::ToClient { to, call, answer } => self.answered(to, call, answer),
            Event::ClientTurn { who } => {
                self.turn(who);
                let pause = if self.faults {
                    20 + self.rng.below(80)
                } else {
                    20
                };
                self.at(pause, Event::ClientTurn { who });
            }
        }
        true
    }

    /// Client `who` acts: resends what is overdue, fetches, and now and then
    /// sends a message or commits.
    fn turn(&mut self, who: usize) {
        let overdue: Vec<(u64, Request)> = self.clients[who]
            .calls
            .iter()
            .filter(|(_, (_, due))| *due <= self.now)
            .map(|(c, (r, _))| (*c, r.clone()))
            .collect();
        for (call, request) in overdue {
            self.count("resends");
            self.clients[who].calls.remove(&call);
            if matches!(request, Request::Fetch { .. }) {
                self.clients[who].fetching = false;
                continue; // a fresh fetch follows
            }
            self.call(who, request);
        }
        if !self.clients[who].fetching {
            self.clients[who].fetching = true;
            let after = self.clients[who].cursor;
            self.call(who, Request::Fetch { after });
        }
        // Like the messenger, a client sends one thing at a time: the next
        // message is made once the node took the last one (so its generations
        // reach the node in order, resends included).
        let sending = self.clients[who]
            .calls
            .values()
            .any(|(r, _)| matches!(r, Request::Send { .. }));
        if !self.faults || sending || self.clients[who].pending_commit.is_some() {
            return;
        }
        let choice = self.rng.below(10);
        let c = &mut self.clients[who];
        match choice {
            0..=3 => {
                let text = format!("m{} from {who}", c.sent.len());
                let body = c.group.encrypt(&c.member, text.as_bytes()).unwrap();
                c.sent.push(text);
                self.call(who, Request::Send { body });
            }
            4 => {
                let out = c.group.self_update(&c.member).unwrap();
                c.pending_commit = Some(out.epoch);
                self.call(
                    who,
                    Request::Commit {
                        epoch: out.epoch,
                        commit: out.commit,
                    },
                );
            }
            _ => {}
        }
    }

    fn answered(&mut self, who: usize, call: u64, answer: Answer) {
        // An answer to a call already answered (a duplicate) changes nothing.
        let Some((request, _)) = self.clients[who].calls.remove(&call) else {
            self.count("answers ignored as repeated");
            return;
        };
        match answer {
            Answer::Sent | Answer::Acked => {}
            Answer::Committed => {
                let Request::Commit { epoch, .. } = request else {
                    unreachable!()
                };
                self.settle_own_commit(who, epoch);
            }
            // Another commit took the epoch, or this one did and its answer was
            // lost: the inbox tells which (the other's commit, or the receipt).
            Answer::Stale => self.count("commits answered stale"),
            Answer::Fetched { after, envelopes } => {
                self.clients[who].fetching = false;
                if after != self.clients[who].cursor {
                    return; // an old fetch's answer
                }
                for (seq, item) in envelopes {
                    let cursor = self.clients[who].cursor;
                    if seq != cursor + 1 {
                        self.violations.push(format!(
                            "client {who}: seq {seq} after {cursor} (gap or reorder)"
                        ));
                        return;
                    }
                    self.apply(who, item);
                    self.clients[who].cursor = seq;
                }
                let up_to = self.clients[who].cursor;
                if up_to > after {
                    self.call(who, Request::Ack { up_to });
                }
            }
        }
    }

    fn settle_own_commit(&mut self, who: usize, epoch: u64) {
        let c = &mut self.clients[who];
        if c.pending_commit == Some(epoch) {
            c.group.confirm_commit(&c.member).unwrap();
            c.pending_commit = None;
            if let Some(other) = self.accepted.insert(epoch, who)
                && other != who
            {
                self.violations
                    .push(format!("two commits at epoch {epoch}: {other} and {who}"));
            }
        }
    }

    fn apply(&mut self, who: usize, item: Stored) {
        match item {
            Stored::Receipt { epoch } => self.settle_own_commit(who, epoch),
            Stored::Group(bytes) => {
                let digest = quicnprotochat_crypto::digest(&bytes);
                if !self.clients[who].applied.insert(digest) {
                    self.count("duplicates ignored by clients");
                    return;
                }
                let c = &mut self.clients[who];
                let had_pending = c.pending_commit.take();
                match c.group.process(&c.member, &bytes) {
                    Ok(GroupEvent::Application {
                        sender, plaintext, ..
                    }) => {
                        let from = self.keys.iter().position(|k| *k == sender[..]).unwrap();
                        let text = String::from_utf8(plaintext).unwrap();
                        if c.shown.contains(&(from, text.clone())) {
                            self.violations
                                .push(format!("client {who} shown {text:?} twice"));
                        }
                        c.shown.push((from, text));
                        c.pending_commit = had_pending;
                    }
                    Ok(GroupEvent::CommitApplied { sender, epoch, .. }) => {
                        // Someone else's commit won: ours (if any) was discarded.
                        let from = self.keys.iter().position(|k| *k == sender[..]).unwrap();
                        if let Some(other) = self.accepted.insert(epoch - 1, from)
                            && other != from
                        {
                            self.violations.push(format!(
                                "two commits at epoch {}: {other} and {from}",
                                epoch - 1
                            ));
                        }
                    }
                    Ok(GroupEvent::TooOld { .. }) => {
                        // Readable only by its time's keys: reported, not shown.
                        let c = &mut self.clients[who];
                        c.reported += 1;
                        c.pending_commit = had_pending;
                        self.count("messages reported too old");
                    }
                    other => {
                        self.violations
                            .push(format!("client {who}: unexpected {other:?}"));
                        self.clients[who].pending_commit = had_pending;
                    }
                }
            }
        }
    }
}

fn run(seed: u64) -> BTreeMap<&'static str, u64> {
    let mut rng = Rng::seeded(seed);
    // The group, made before the run: member 0 created it and added the rest.
    let people: Vec<(Identity, GroupMember<MemoryStorage>)> = (0..MEMBERS)
        .map(|_| {
            let id = Identity::generate();
            let m = GroupMember::new(&id, MemoryStorage::default()).unwrap();
            (id, m)
        })
        .collect();
    let keys: Vec<[u8; 32]> = people.iter().map(|(id, _)| id.public_key()).collect();
    let mut first = people[0].1.create_group(Suite::Classic, "sim").unwrap();
    let kps: Vec<Vec<u8>> = people[1..]
        .iter()
        .map(|(_, m)| m.generate_key_package(Suite::Classic, false).unwrap())
        .collect();
    let out = first.add_members(&people[0].1, &kps).unwrap();
    first.confirm_commit(&people[0].1).unwrap();
    let welcome = out.welcome.unwrap();
    let mut groups = vec![first];
    for (_, m) in &people[1..] {
        groups.push(m.join(&welcome).unwrap());
    }
    let fence = EpochFence::recovered(Some(groups[0].epoch()), keys.iter().copied().collect());
    let clients = people
        .into_iter()
        .zip(groups)
        .map(|((_, member), group)| Client {
            member,
            group,
            cursor: 0,
            calls: BTreeMap::new(),
            pending_commit: None,
            fetching: false,
            applied: HashSet::new(),
            shown: Vec::new(),
            reported: 0,
            sent: Vec::new(),
        })
        .collect();
    let mut sim = Sim {
        rng: Rng::new(rng.next()),
        now: 0,
        queue: BTreeMap::new(),
        order: 0,
        node: Node::new(keys.clone(), fence),
        clients,
        keys,
        next_call: 0,
        faults: true,
        accepted: BTreeMap::new(),
        violations: Vec::new(),
        stats: BTreeMap::new(),
    };
    sim.at(5, Event::NodeCommits);
    sim.at(300 + rng.below(1000), Event::NodeCrashes);
    for who in 0..MEMBERS {
        sim.at(rng.below(50), Event::ClientTurn { who });
    }
    while sim.now < FAULTY_MS + CALM_MS && sim.step() {
        if sim.now >= FAULTY_MS {
            sim.faults = false;
        }
        assert!(
            sim.violations.is_empty(),
            "seed {seed}: {:#?}",
            sim.violations
        );
    }
    let s = &sim;
    for (who, c) in s.clients.iter().enumerate() {
        assert!(
            c.calls
                .values()
                .all(|(r, _)| matches!(r, Request::Fetch { .. })),
            "seed {seed}: client {who} has calls unanswered after the calm: {:?}",
            c.calls
        );
        assert_eq!(
            c.pending_commit, None,
            "seed {seed}: client {who}'s commit unsettled"
        );
        assert_eq!(
            (c.group.epoch(), c.group.epoch_authenticator()),
            (
                s.clients[0].group.epoch(),
                s.clients[0].group.epoch_authenticator()
            ),
            "seed {seed}: client {who} forked"
        );
        for (from, other) in s.clients.iter().enumerate().filter(|(f, _)| *f != who) {
            let shown = c.shown.iter().filter(|(f, _)| *f == from).count();
            let reported = c.reported;
            for text in &other.sent {
                assert!(
                    c.shown.contains(&(from, text.clone())) || reported > 0,
                    "seed {seed}: client {who} never got {text:?} from {from}"
                );
            }
            assert!(shown <= other.sent.len());
        }
        let shown_or_reported = c.shown.len() + c.reported;
        let sent_to_me: usize = s
            .clients
            .iter()
            .enumerate()
            .filter(|(f, _)| *f != who)
            .map(|(_, o)| o.sent.len())
            .sum();
        assert_eq!(
            shown_or_reported, sent_to_me,
            "seed {seed}: client {who}: every message shown or reported, exactly once"
        );
    }
    let epochs: Vec<u64> = s.accepted.keys().copied().collect();
    let start = epochs.first().copied().unwrap_or(0);
    assert_eq!(
        epochs,
        (start..start + epochs.len() as u64).collect::<Vec<_>>(),
        "seed {seed}: one commit per epoch, in a row"
    );
    let mut stats = sim.stats.clone();
    stats.insert("node crashes", sim.node.crashes);
    stats.insert("epochs", epochs.len() as u64);
    stats.insert(
        "messages sent",
        sim.clients.iter().map(|c| c.sent.len() as u64).sum(),
    );
    stats
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("QPC_SIM_SEED") {
        return vec![s.parse().expect("QPC_SIM_SEED is a number")];
    }
    let n: u64 = std::env::var("QPC_SIM_SEEDS")
        .map(|s| s.parse().expect("QPC_SIM_SEEDS is a number"))
        .unwrap_or(8);
    (1..=n).collect()
}

#[test]
fn a_seeded_run_of_faults_delivers_at_least_once_in_order_shows_nothing_twice_and_never_forks() {
    let mut total: BTreeMap<&'static str, u64> = BTreeMap::new();
    for seed in seeds() {
        println!("seed {seed} (replay: QPC_SIM_SEED={seed})");
        for (k, v) in run(seed) {
            *total.entry(k).or_default() += v;
        }
    }
    println!("{total:#?}");
    assert!(total["node crashes"] > 0 && total["epochs"] > 0);
}
