//! Mixed load against a node that is about to die, and the ledger that says what
//! the node promised: every answered seq, every commit's fate, every ack.
//!
//! The cast: two committers (`c0`, `c1`) racing to move one group's epoch, three
//! more members (`r0`..`r2`), and an outsider `d` sending direct enqueues and
//! batches to the three. `c0` also sends group messages (one body, fanned out).
//! Every member long-polls its inbox (`fetchWait`) and acks what it read.
//!
//! [`Ledger::verify`] checks, once everything was read back:
//! - no acknowledged message lost or changed (an answered seq reads the same);
//! - per inbox, the seqs ever read are exactly 1..=n: no gap, no reuse, and no
//!   envelope at or below an answered ack comes back;
//! - per sender and recipient, seqs follow the order of the sends;
//! - every commit reached all its recipients or none: all if it was answered,
//!   none if it was refused, one or the other if the node died first;
//! - at most one commit per (group, epoch), and the epochs are 0..n in a row.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use quicnprotochat_client::{ClientError, CommitBodies, NodeConnection, SessionHandle};
use quicnprotochat_crypto::Identity;
use quicnprotochat_wire::{ErrorCode, IdentityKey};
use rustls::pki_types::CertificateDer;
use tokio::task::JoinHandle;

/// The identities of the load, the same across restarts.
pub(crate) struct Cast {
    /// The group the committers move.
    pub(crate) group: Vec<u8>,
    /// `c0`, `c1`, `r0`, `r1`, `r2`: the group's members, committers first.
    pub(crate) members: Vec<Identity>,
    /// The outsider sending direct messages.
    pub(crate) outsider: Identity,
    /// Pause between two sends of each sender (none: as fast as answered).
    pub(crate) pace: Duration,
    /// Once set, every role ends after its call in flight, so that no commit
    /// is still on its way when the inboxes are read back from a node that
    /// stays up (an aborted call leaves its commit landing mid-read).
    pub(crate) stopping: Cell<bool>,
}

impl Cast {
    /// A cast of its own group `group`.
    pub(crate) fn new(group: &str, pace: Duration) -> Cast {
        Cast {
            group: group.as_bytes().to_vec(),
            members: (0..5).map(|_| Identity::generate()).collect(),
            outsider: Identity::generate(),
            pace,
            stopping: Cell::new(false),
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.get()
    }

    fn key(&self, i: usize) -> IdentityKey {
        IdentityKey(self.members[i].public_key())
    }

    fn name(&self, key: &IdentityKey) -> String {
        let i = (0..5).find(|i| self.key(*i) == *key).expect("a member");
        if i < 2 {
            format!("c{i}")
        } else {
            format!("r{}", i - 2)
        }
    }
}

/// What became of one commit attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Accepted,
    Refused,
    /// Sent, and the node died before answering.
    Unknown,
}

/// One acknowledged message: who sent it (a role), to whom, at which seq, what.
struct Acked {
    source: &'static str,
    to: IdentityKey,
    seq: u64,
    data: Vec<u8>,
}

/// Everything the node answered, and everything the members read.
#[derive(Default)]
pub(crate) struct Ledger {
    acked: Vec<Acked>,
    /// Commit attempts by name (`epoch/committer/attempt`).
    commits: BTreeMap<String, (u64, Fate)>,
    /// Attempts sent and not yet answered, by committer.
    pending: HashMap<usize, String>,
    attempts: u64,
    /// The epoch the committers believe comes next.
    next_epoch: u64,
    /// What each inbox was seen to hold, by seq.
    seen: HashMap<IdentityKey, BTreeMap<u64, Vec<u8>>>,
    /// The highest ack the node answered, per inbox.
    acked_up_to: HashMap<IdentityKey, u64>,
    /// Answers of any kind so far (what the killer waits on).
    pub(crate) answered: u64,
    /// Calls that failed other than by a typed refusal (the node died, or a
    /// connection broke), and roles that could not start.
    pub(crate) errors: u64,
    violations: Vec<String>,
}

/// The figures of a run.
pub(crate) struct Figures {
    pub(crate) acknowledged: usize,
    pub(crate) read: usize,
    pub(crate) commits_accepted: usize,
    pub(crate) commits_unknown: usize,
    pub(crate) commits_refused: usize,
    pub(crate) epochs: u64,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} messages acknowledged, {} envelopes read back; commits: {} accepted, \
             {} cut off by the death of the node, {} refused as stale; {} epochs",
            self.acknowledged,
            self.read,
            self.commits_accepted,
            self.commits_unknown,
            self.commits_refused,
            self.epochs
        )
    }
}

impl Ledger {
    /// Notes that `me` read `seq` holding `data`, having asked for what follows
    /// `after`: every seq skipped must have been read before (an ack whose answer
    /// was lost moves the start), and a seq read twice must read the same.
    fn observe(&mut self, me: IdentityKey, after: u64, seq: u64, data: &[u8]) {
        let acked = self.acked_up_to.get(&me).copied().unwrap_or(0);
        if seq <= acked {
            self.violations.push(format!(
                "{me:?}: seq {seq} read again after an ack up to {acked}"
            ));
        }
        let seen = self.seen.entry(me).or_default();
        if let Some(missing) = (after + 1..seq).find(|s| !seen.contains_key(s)) {
            self.violations.push(format!(
                "{me:?}: seq {seq} read after {after}, {missing} never seen"
            ));
        }
        match seen.get(&seq) {
            Some(before) if before != data => self
                .violations
                .push(format!("{me:?}: seq {seq} read with two contents")),
            Some(_) => {}
            None => {
                seen.insert(seq, data.to_vec());
            }
        }
    }

    /// Commits whose answer never came were sent: their fate is unknown.
    pub(crate) fn node_died(&mut self) {
        for (_, name) in self.pending.drain() {
            if let Some(c) = self.commits.get_mut(&name) {
                c.1 = Fate::Unknown;
            }
        }
    }

    /// Checks every promise (see the module); panics naming the first broken one.
    pub(crate) fn verify(&self, cast: &Cast) -> Figures {
        assert!(self.violations.is_empty(), "{:#?}", self.violations);
        for (to, seen) in &self.seen {
            let seqs: Vec<u64> = seen.keys().copied().collect();
            let want: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, want, "{}: seqs not 1..=n", cast.name(to));
        }
        let mut last: HashMap<(&str, IdentityKey), u64> = HashMap::new();
        for a in &self.acked {
            let read = self.seen.get(&a.to).and_then(|s| s.get(&a.seq));
            assert_eq!(
                read,
                Some(&a.data),
                "acknowledged seq {} of {} lost or changed",
                a.seq,
                cast.name(&a.to)
            );
            let prev = last.insert((a.source, a.to), a.seq).unwrap_or(0);
            assert!(
                a.seq > prev,
                "{} to {}: seq {} answered after {prev}",
                a.source,
                cast.name(&a.to),
                a.seq
            );
        }
        // Who read which commit body, by attempt name.
        let mut reached: HashMap<&str, Vec<IdentityKey>> = HashMap::new();
        for (to, seen) in &self.seen {
            for data in seen.values() {
                let text = std::str::from_utf8(data).unwrap_or("");
                if let Some((kind, name)) = text.split_once('|')
                    && matches!(kind, "commit" | "welcome" | "receipt")
                {
                    reached.entry(name).or_default().push(*to);
                }
            }
        }
        let mut by_epoch: BTreeMap<u64, &str> = BTreeMap::new();
        for (name, (epoch, fate)) in &self.commits {
            let got = reached.remove(name.as_str()).unwrap_or_default();
            let all = got.len() == cast.members.len();
            match fate {
                Fate::Accepted => assert!(all, "accepted commit {name} reached only {got:?}"),
                Fate::Refused => assert!(got.is_empty(), "refused commit {name} reached {got:?}"),
                Fate::Unknown => assert!(
                    all || got.is_empty(),
                    "commit {name} (node died) reached {} of {}",
                    got.len(),
                    cast.members.len()
                ),
            }
            if all && let Some(other) = by_epoch.insert(*epoch, name) {
                panic!("two commits at epoch {epoch}: {other} and {name}");
            }
        }
        assert!(reached.is_empty(), "bodies of no attempt: {reached:?}");
        let epochs: Vec<u64> = by_epoch.keys().copied().collect();
        assert_eq!(
            epochs,
            (0..epochs.len() as u64).collect::<Vec<_>>(),
            "epochs in a row"
        );
        let count = |f: Fate| self.commits.values().filter(|c| c.1 == f).count();
        Figures {
            acknowledged: self.acked.len(),
            read: self.seen.values().map(BTreeMap::len).sum(),
            commits_accepted: count(Fate::Accepted),
            commits_unknown: count(Fate::Unknown),
            commits_refused: count(Fate::Refused),
            epochs: epochs.len() as u64,
        }
    }
}

type Shared = Rc<RefCell<Ledger>>;

/// Waits `pace` (not even a timer tick when zero).
async fn pause(pace: Duration) {
    if !pace.is_zero() {
        tokio::time::sleep(pace).await;
    }
}

/// A session of `who`, with the connection it runs on (kept for as long as the
/// session is used).
async fn session(
    addr: SocketAddr,
    pinned: &CertificateDer<'static>,
    who: &Identity,
) -> Option<(NodeConnection, SessionHandle)> {
    let conn = NodeConnection::connect(addr, pinned.clone()).await.ok()?;
    let s = conn.authenticate(who, None).await.ok()?;
    Some((conn, s))
}

/// Starts every role of the load against the node at `addr`; `segment` tells the
/// payloads of one life of the node from the next.
pub(crate) fn start(
    addr: SocketAddr,
    pinned: &CertificateDer<'static>,
    cast: &Rc<Cast>,
    ledger: &Shared,
    segment: u32,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for m in 0..cast.members.len() {
        tasks.push(tokio::task::spawn_local(read_and_ack(
            addr,
            pinned.clone(),
            cast.clone(),
            ledger.clone(),
            m,
        )));
    }
    for c in 0..2 {
        tasks.push(tokio::task::spawn_local(commit(
            addr,
            pinned.clone(),
            cast.clone(),
            ledger.clone(),
            c,
        )));
    }
    tasks.push(tokio::task::spawn_local(send_group(
        addr,
        pinned.clone(),
        cast.clone(),
        ledger.clone(),
        segment,
    )));
    tasks.push(tokio::task::spawn_local(send_direct(
        addr,
        pinned.clone(),
        cast.clone(),
        ledger.clone(),
        segment,
    )));
    tasks
}

/// Member `m` long-polls its inbox from its last answered ack and acks each page.
async fn read_and_ack(
    addr: SocketAddr,
    pinned: CertificateDer<'static>,
    cast: Rc<Cast>,
    ledger: Shared,
    m: usize,
) {
    let me = cast.key(m);
    let Some((_conn, s)) = session(addr, &pinned, &cast.members[m]).await else {
        ledger.borrow_mut().errors += 1;
        return;
    };
    let mut after = ledger.borrow().acked_up_to.get(&me).copied().unwrap_or(0);
    while !cast.stopping() {
        let Ok(page) = s.fetch_wait(after, 64, Duration::from_secs(2)).await else {
            ledger.borrow_mut().errors += 1;
            return;
        };
        let Some(last) = page.last().map(|e| e.seq) else {
            continue;
        };
        {
            let mut l = ledger.borrow_mut();
            l.answered += 1;
            let mut prev = after;
            for e in &page {
                l.observe(me, prev, e.seq, &e.data);
                prev = e.seq;
            }
        }
        after = last;
        if s.ack(last).await.is_err() {
            ledger.borrow_mut().errors += 1;
            return;
        }
        let mut l = ledger.borrow_mut();
        l.answered += 1;
        let up_to = l.acked_up_to.entry(me).or_default();
        *up_to = (*up_to).max(last);
    }
}

/// Committer `c` moves the group's epoch, racing the other committer.
async fn commit(
    addr: SocketAddr,
    pinned: CertificateDer<'static>,
    cast: Rc<Cast>,
    ledger: Shared,
    c: usize,
) {
    let Some((_conn, s)) = session(addr, &pinned, &cast.members[c]).await else {
        ledger.borrow_mut().errors += 1;
        return;
    };
    let members: Vec<Vec<u8>> = cast
        .members
        .iter()
        .map(|m| m.public_key().to_vec())
        .collect();
    while !cast.stopping() {
        let (epoch, name) = {
            let mut l = ledger.borrow_mut();
            l.attempts += 1;
            let epoch = l.next_epoch;
            let name = format!("{epoch}/c{c}/{}", l.attempts);
            l.commits.insert(name.clone(), (epoch, Fate::Refused));
            l.pending.insert(c, name.clone());
            (epoch, name)
        };
        let bodies = CommitBodies {
            commit: format!("commit|{name}").into_bytes(),
            welcome: if epoch == 0 {
                format!("welcome|{name}").into_bytes()
            } else {
                Vec::new()
            },
            receipt: format!("receipt|{name}").into_bytes(),
            ..CommitBodies::default()
        };
        let answer = s
            .commit_group(
                &cast.group,
                epoch,
                &members,
                &crate::common::mls_commit(&cast.group, epoch),
                &bodies,
            )
            .await;
        let node_died = {
            let mut l = ledger.borrow_mut();
            match answer {
                Ok(_) => {
                    l.pending.remove(&c);
                    l.answered += 1;
                    l.commits.insert(name, (epoch, Fate::Accepted));
                    l.next_epoch = l.next_epoch.max(epoch + 1);
                    false
                }
                Err(ClientError::Refused(e)) => {
                    l.pending.remove(&c);
                    l.answered += 1;
                    if e.code != ErrorCode::StaleEpoch {
                        l.violations.push(format!("commit {name} refused: {e}"));
                    }
                    l.next_epoch = l.next_epoch.max(epoch + 1);
                    false
                }
                Err(_) => {
                    // The attempt stays pending: its fate is unknown.
                    l.errors += 1;
                    true
                }
            }
        };
        if node_died {
            return;
        }
        pause(cast.pace).await;
    }
}

/// `c0` sends group messages: one body, a copy per other member.
async fn send_group(
    addr: SocketAddr,
    pinned: CertificateDer<'static>,
    cast: Rc<Cast>,
    ledger: Shared,
    segment: u32,
) {
    let Some((_conn, s)) = session(addr, &pinned, &cast.members[0]).await else {
        ledger.borrow_mut().errors += 1;
        return;
    };
    for i in (0u32..).take_while(|_| !cast.stopping()) {
        let body = format!("group|{segment}|{i}").into_bytes();
        let answer = s.send_group(&cast.group, &body, &[]).await.map(|outcomes| {
            outcomes
                .into_iter()
                .filter_map(|o| Some((o.recipient, o.outcome.ok()?, body.clone())))
                .collect()
        });
        if !settle_send(&ledger, "group", answer).await {
            return;
        }
        pause(cast.pace).await;
    }
}

/// The outsider sends direct messages to `r0`..`r2`: single enqueues and
/// all-or-none batches, alternating.
async fn send_direct(
    addr: SocketAddr,
    pinned: CertificateDer<'static>,
    cast: Rc<Cast>,
    ledger: Shared,
    segment: u32,
) {
    let Some((_conn, s)) = session(addr, &pinned, &cast.outsider).await else {
        ledger.borrow_mut().errors += 1;
        return;
    };
    for i in (0u32..).take_while(|_| !cast.stopping()) {
        let payload = |to: usize| format!("direct|{segment}|{i}|r{to}").into_bytes();
        let deliveries: Vec<(IdentityKey, Vec<u8>)> = if i % 2 == 0 {
            let to = (i as usize / 2) % 3;
            vec![(cast.key(2 + to), payload(to))]
        } else {
            (0..3).map(|to| (cast.key(2 + to), payload(to))).collect()
        };
        let answer = if deliveries.len() == 1 {
            s.enqueue(&deliveries[0].0, &deliveries[0].1)
                .await
                .map(|seq| vec![seq])
        } else {
            s.enqueue_batch(&deliveries).await
        };
        let answer = answer.map(|seqs| {
            deliveries
                .into_iter()
                .zip(seqs)
                .map(|((to, data), seq)| (to, seq, data))
                .collect()
        });
        if !settle_send(&ledger, "direct", answer).await {
            return;
        }
        pause(cast.pace).await;
    }
}

/// Notes the answer to one of `source`'s sends: what the node acknowledged
/// (recipient, seq, data); after a refusal (not a group yet, a full inbox) a
/// short wait; a failed call (the node died) counts as an error, and the sender
/// stops (`false`).
async fn settle_send(
    ledger: &Shared,
    source: &'static str,
    answer: Result<Vec<(IdentityKey, u64, Vec<u8>)>, ClientError>,
) -> bool {
    match answer {
        Ok(acked) => {
            let mut l = ledger.borrow_mut();
            l.answered += 1;
            for (to, seq, data) in acked {
                l.acked.push(Acked {
                    source,
                    to,
                    seq,
                    data,
                });
            }
        }
        Err(ClientError::Refused(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
        Err(_) => {
            ledger.borrow_mut().errors += 1;
            return false;
        }
    }
    true
}

/// Reads every inbox to its end on a node that stays up, checking each envelope.
pub(crate) async fn read_back(
    addr: SocketAddr,
    pinned: &CertificateDer<'static>,
    cast: &Cast,
    ledger: &Shared,
) {
    for (m, who) in cast.members.iter().enumerate() {
        let me = cast.key(m);
        let (_conn, s) = session(addr, pinned, who).await.expect("the node is up");
        // From 0: nothing at or below an answered ack may come back.
        let mut after = 0;
        loop {
            let page = s.fetch(after, 0).await.expect("fetch");
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            let mut l = ledger.borrow_mut();
            let mut prev = after.max(l.acked_up_to.get(&me).copied().unwrap_or(0));
            for e in &page {
                l.observe(me, prev, e.seq, &e.data);
                prev = e.seq;
            }
            after = last;
        }
    }
}
